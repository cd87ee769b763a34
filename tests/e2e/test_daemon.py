"""`fpgw run` as a real subprocess: systemd notify protocol, SIGTERM, and SIGKILL mid-download + restart.

The simulated terminals run in the test process; the daemon polls them over loopback like real ones.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.config import DeviceEntry, config_dict, write_toml
from tests.support.fleet import sim_spec, truth_keys
from tests.support.gateway import diff, stored_keys
from tests.support.wait import wait_until


class Daemon:
    """`fpgw run` in a subprocess with a fake systemd notify socket."""

    def __init__(self, config_path: Path, tmp_path: Path, name: str = "notify") -> None:
        self.sock_path = tmp_path / f"{name}.sock"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.sock_path))
        self.sock.settimeout(0.2)
        self.messages: list[str] = []
        env = dict(os.environ, NOTIFY_SOCKET=str(self.sock_path), WATCHDOG_USEC="2000000")
        env.pop("WATCHDOG_PID", None)
        self.log_path = tmp_path / f"{name}.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "--config", str(config_path),
                                      "--log-format", "journal", "--log-level", "debug", "run"],
                                     stdout=self._log, stderr=subprocess.STDOUT, env=env)

    def read_notify(self, want: str, timeout_s: float = 30.0) -> str:
        """Wait for a notify datagram containing ``want``."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for m in self.messages:
                if want in m:
                    return m
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except TimeoutError:
                if self.proc.poll() is not None:
                    break
        raise AssertionError(f"no {want!r} from the daemon; got {self.messages}; log:\n{self.log()}")

    def terminate(self, timeout_s: float = 30.0) -> int:
        """SIGTERM and wait; the log tail goes into the failure message if it does not exit."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGABRT)  # faulthandler dumps every thread's stack into the log
            self.proc.wait(10)
            tail = self.log()[-12000:]
            raise AssertionError(f"daemon did not stop within {timeout_s} s; log tail:\n{tail}") from None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()
        self.sock.close()




@pytest.mark.timeout(120)
def test_fpgw_run_notifies_systemd_polls_and_stops_cleanly_on_sigterm(fleet, db_url: str, tmp_path: Path) -> None:
    tcp = fleet.add(sim_spec("D-TCP", records=300, seed=51))
    udp = fleet.add(sim_spec("D-UDP", record_layout=16, user_layout=28, records=200, seed=52))
    doc = config_dict(db_url, [DeviceEntry("tcp", tcp), DeviceEntry("udp", udp, "udp")], interval_s=5)
    daemon = Daemon(write_toml(doc, tmp_path / "config.toml"), tmp_path)
    try:
        daemon.read_notify("READY=1")
        truth = tmp_path / "truth.jsonl"
        wait_until(lambda: stored_keys(db_url) == truth_keys(truth), 30, "first polls to store every punch")
        tcp.add_punches(4)
        udp.add_punches(3)
        wait_until(lambda: stored_keys(db_url) == truth_keys(truth), 30, "the next scheduled polls")
        daemon.read_notify("WATCHDOG=1")
        assert daemon.read_notify("STATUS=2/2 perangkat OK").startswith("STATUS=2/2 perangkat OK, poll terakhir ")
        assert daemon.terminate() == 0, daemon.log()
        daemon.read_notify("STOPPING=1", timeout_s=2)
    finally:
        daemon.close()
    assert tcp.enabled and udp.enabled
    assert stored_keys(db_url) == truth_keys(tmp_path / "truth.jsonl")
    log = daemon.log()
    # journald format: priority prefix, device/serial context on poll lines, no secrets.
    assert "<6>event=\"gateway started\"" in log or "<6>event=gateway" in log, log[:2000]
    assert "device=tcp serial=D-TCP" in log


@pytest.mark.timeout(180)
def test_gateway_killed_mid_download_and_restarted_loses_and_duplicates_nothing(
        fleet, db_url: str, tmp_path: Path) -> None:
    # A big log on a slow terminal: the download takes seconds, so the kill lands in the middle of it.
    big = fleet.add(sim_spec("D-BIG", records=20000, users=80, seed=61, faults={"slow": 0.05}))
    small = fleet.add(sim_spec("D-SMALL", records=150, seed=62))
    doc = config_dict(db_url, [DeviceEntry("big", big), DeviceEntry("small", small)], interval_s=5,
                      polling={"timeout_s": 10})
    config_path = write_toml(doc, tmp_path / "config.toml")
    truth = tmp_path / "truth.jsonl"

    first = Daemon(config_path, tmp_path, "first")
    try:
        first.read_notify("READY=1")
        # The terminal is disabled (keypad locked) only while its log downloads.
        wait_until(lambda: not big.enabled, 30, "the big download to start")
        first.proc.send_signal(signal.SIGKILL)
        assert first.proc.wait(10) == -signal.SIGKILL
    finally:
        first.close()
    killed_mid_download = stored_keys(db_url, ["D-BIG"])
    assert sum(killed_mid_download.values()) < 20000  # the kill really interrupted that poll

    big.clear_fault("slow")
    big.add_punches(6)
    small.add_punches(2)
    second = Daemon(config_path, tmp_path, "second")
    try:
        second.read_notify("READY=1")
        wait_until(lambda: stored_keys(db_url) == truth_keys(truth), 60, "the restarted daemon to catch up")
        wait_until(lambda: big.enabled and small.enabled, 10, "terminals enabled again")
        assert second.terminate() == 0, second.log()
    finally:
        second.close()
    expected = truth_keys(truth)
    assert stored_keys(db_url) == expected, diff(expected, stored_keys(db_url))
    assert big.enabled and small.enabled

"""`fpgw run` as a real subprocess with a mixed fleet: polled ZK terminals and pushing terminals. The daemon is
SIGKILLed while the push terminals upload a backlog and keep punching; restarted, it ends with every punch exactly
once (SQLite and PostgreSQL). A terminal pushing with a serial no device has (a replacement) is recorded, not
stored, and loses nothing: added to the config, its punches arrive."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.cli.main import main
from gateway.store import schema as s
from simulators.push.terminal import PushSpec, PushTerminal
from simulators.zk import Fleet
from simulators.zk.truth import TruthWriter
from tests.support.config import DeviceEntry, config_dict, write_toml
from tests.support.fleet import sim_spec, truth_keys
from tests.support.gateway import diff, stored_keys, table_rows
from tests.support.wait import wait_until


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stored_count(db_url: str, serials: list[str]) -> int:
    """Punches stored from these terminals (0 while the daemon has not created the tables yet)."""
    try:
        return sum(stored_keys(db_url, serials).values())
    except Exception:  # the first daemon is still migrating an empty database
        return 0


def start_daemon(config_path: Path, log_path: Path) -> subprocess.Popen[bytes]:
    with log_path.open("ab") as log:
        return subprocess.Popen([sys.executable, "-m", "gateway.cli", "--config", str(config_path),
                                 "--log-format", "json", "--log-level", "debug", "run"],
                                stdout=log, stderr=subprocess.STDOUT)


def stop(proc: subprocess.Popen[bytes], sig: int) -> int:
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        return proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(10)


@pytest.mark.timeout(240)
def test_mixed_fleet_through_fpgw_run_killed_mid_upload_and_restarted_is_exactly_once(
        fleet: Fleet, db_url: str, tmp_path: Path, truth_path: Path) -> None:
    polled = fleet.add(sim_spec("ZK-A", records=120, seed=71))
    port = free_port()
    doc = config_dict(db_url, [DeviceEntry("zk-a", polled)], interval_s=5)
    doc["push"] = {"listen": "127.0.0.1", "port": port, "delay_s": 2, "error_delay_s": 10}
    doc["devices"] += [{"id": "push-a", "driver": "push", "serial": "PSH-A"},
                       {"id": "push-b", "driver": "push", "serial": "PSH-B"}]
    config_path = write_toml(doc, tmp_path / "config.toml")
    # The push terminals write the same ground-truth file as the ZK fleet (appends, one line per punch).
    truth = TruthWriter(truth_path)
    server = f"http://127.0.0.1:{port}"
    big = PushTerminal(PushSpec(serial="PSH-A", server=server, records=3000, batch_size=20, seed=72, max_wait_s=0.3,
                                timeout_s=3), truth)
    small = PushTerminal(PushSpec(serial="PSH-B", server=server, records=10, aspx=True, crlf=True, seed=73,
                                  max_wait_s=0.3, timeout_s=3), truth)
    stranger = PushTerminal(PushSpec(serial="PSH-NEW", server=server, records=5, seed=74, max_wait_s=0.3,
                                     timeout_s=3), truth)
    log_path = tmp_path / "daemon.log"
    terminals = (big, small, stranger)
    for t in terminals:
        t.start()
    try:
        first = start_daemon(config_path, log_path)
        try:
            wait_until(lambda: stored_count(db_url, ["PSH-A"]) >= 200, 60, "the backlog uploading")
        finally:
            assert stop(first, signal.SIGKILL) == -signal.SIGKILL
        killed_at = sum(stored_keys(db_url, ["PSH-A"]).values())
        assert killed_at < 3000 and big.pending > 0  # the kill really interrupted the upload
        # Server down: the terminals keep punching (and fail to upload).
        small.punch(1, at="2026-11-30 07:45:00", user_id="31")
        small.punch(1, at="2026-11-30 07:45:01", user_id="31")
        big.punch(1, at="2026-11-30 07:46:00", user_id="32")
        polled.add_punches(3)
        wait_until(lambda: big.stats.failed_calls >= 2 and small.stats.failed_calls >= 2, 30, "calls failing")

        second = start_daemon(config_path, log_path)
        try:
            known = ["ZK-A", "PSH-A", "PSH-B"]
            try:
                wait_until(lambda: stored_keys(db_url, known) == truth_keys(truth_path, known), 90,
                           "the restarted daemon to have every punch of the configured terminals")
            except AssertionError:
                raise AssertionError(diff(truth_keys(truth_path, known), stored_keys(db_url, known))) from None
            wait_until(lambda: any(r["key"] == "push_unknown:psh-new" for r in table_rows(db_url, s.kv)), 30,
                       "the unknown terminal recorded")
            assert stranger.pending == 5 and sum(stored_keys(db_url, ["PSH-NEW"]).values()) == 0
        finally:
            assert stop(second, signal.SIGTERM) == 0, log_path.read_text()[-4000:]
        # One command adds the stranger; after the restart its punches (kept on the terminal) arrive.
        assert main(["-c", str(config_path), "devices", "add-push", "PSH-NEW", "--id", "push-new"]) == 0
        third = start_daemon(config_path, log_path)
        try:
            wait_until(lambda: stranger.pending == 0, 60, "the added terminal's backlog")
        finally:
            assert stop(third, signal.SIGTERM) == 0, log_path.read_text()[-4000:]
    finally:
        for t in terminals:
            t.stop()
        truth.close()
    expected = truth_keys(truth_path)
    stored = stored_keys(db_url)
    assert stored == expected, diff(expected, stored)

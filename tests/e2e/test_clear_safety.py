"""End-to-end clear safety against the simulator (issue 8): rolling terminals and terminals left locked.

A terminal that overwrites its oldest record when full keeps its record count, so the daemon reads a full
log every poll and loses nothing between polls; `fpgw devices clear` killed (SIGKILL) while it held the
keypad locked leaves a durable mark, and the daemon's next session with that terminal enables it again.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.config import DeviceEntry, config_dict, make_config, write_toml
from tests.support.fleet import sim_spec, truth_keys
from tests.support.gateway import RunningGateway, diff, stored_keys


@pytest.mark.timeout(120)
def test_a_full_rolling_terminal_loses_nothing_between_polls(fleet: Any, db_url: str, tmp_path: Path) -> None:
    a = fleet.add(sim_spec("ROLL-A", records=60, records_cap=60, overwrite_oldest=True, seed=31))
    config = make_config(db_url, [DeviceEntry("a", a)], tmp_path)
    with RunningGateway(config) as gw:
        assert gw.poll("a").new_punches == 60
        for _ in range(4):
            a.add_punches(10)  # each overwrites the oldest record: the count stays at 60
            assert a.record_count == 60
            o = gw.poll("a")
            assert o.ok and o.mode == "full" and o.new_punches == 10, (o.mode, o.new_punches)
        assert a.enabled
    truth = truth_keys(tmp_path / "truth.jsonl", [a.serial])
    stored = stored_keys(db_url, [a.serial])
    assert stored == truth, diff(truth, stored)
    assert sum(truth.values()) == 100


@pytest.mark.timeout(120)
def test_a_clear_killed_while_the_keypad_is_locked_is_undone_by_the_next_daemon_poll(
        fleet: Any, db_url: str, tmp_path: Path) -> None:
    a = fleet.add(sim_spec("LOCK-A", records=400, seed=32))
    entries = [DeviceEntry("a", a)]
    config = make_config(db_url, entries, tmp_path)
    with RunningGateway(config) as gw:
        assert gw.poll("a").new_punches == 400  # the daemon knows the count: its next poll is count-only
    path = write_toml(config_dict(db_url, entries), tmp_path / "config.toml")
    # Slow replies give the test time to see the disable and kill the command while the keypad is locked.
    a.set_fault("slow", 0.25)
    log_path = tmp_path / "clear.log"
    with log_path.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "--config", str(path), "devices", "clear",
                                 "a", "--yes"], stdout=out, stderr=subprocess.STDOUT, env=dict(os.environ))
        try:
            deadline = time.monotonic() + 60
            while a.enabled and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.005)
            assert not a.enabled, f"the clear never locked the keypad:\n{log_path.read_text()}"
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.kill()
            proc.wait(30)  # reaped: its pid is gone, so its disable mark is stale
    a.clear_fault("slow")
    assert not a.enabled and a.record_count == 400  # "Working...": nobody can punch
    with RunningGateway(config) as gw:
        o = gw.poll("a")
        assert o.ok and o.mode == "count" and not o.terminal_disabled
        assert a.enabled, "the daemon did not re-enable the terminal left locked by the killed clear"
        assert "disabled" not in gw.problems("a")
        a.add_punches(2)
        assert gw.poll("a").new_punches == 2
    truth = truth_keys(tmp_path / "truth.jsonl", [a.serial])
    stored = stored_keys(db_url, [a.serial])
    assert stored == truth, diff(truth, stored)

"""`fpgw enrol` from a shell and the running daemon never work on the same terminal at once: both take the
terminal's lock file (gateway.devicelock). A command waits (--wait) while the daemon's hold (its daily backup,
run_exclusive) or a poll has the terminal, then refuses without touching it; a daemon poll is skipped and its
hold waits while a command has it. Deterministic: holders block on Events the test releases; nothing races the
daemon's schedule (the scheduler is driven by hand, its dispatcher never starts)."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from gateway.config import DeviceConfig, load_config
from gateway.devicelock import DeviceLocks
from gateway.models import PollOutcome
from gateway.polling.scheduler import PollScheduler, build_scheduler
from gateway.store import schema as s
from gateway.store.db import create_db_engine
from tests.support.cli import run_cli
from tests.support.config import DeviceEntry, config_dict, write_toml
from tests.support.fleet import sim_spec

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("restore_logging")]


@pytest.fixture
def setup(tmp_path: Path, fleet: Any, capsys: pytest.CaptureFixture[str]) -> tuple[Path, Any]:
    dev = fleet.add(sim_spec("LOCK-1", users=5, records=0, templates_per_user=1))
    state = tmp_path / "state"
    state.mkdir()
    doc = config_dict(f"sqlite:///{tmp_path / 'c.db'}", [DeviceEntry("gate", dev)],
                      enrol={"key_file": str(tmp_path / "enrol.key"), "daily": False})
    doc["site"]["state_dir"] = str(state)
    path = write_toml(doc, tmp_path / "config.toml")
    code, out, err = run_cli(capsys, "--config", str(path), "enrol", "new-key", "-o", str(tmp_path / "enrol.key"))
    assert code == 0, (out, err)
    return path, dev


def scheduler(path: Path, poll: Any) -> PollScheduler:
    config = load_config(path)
    return PollScheduler(config, build_scheduler(config), poll, stop_event=threading.Event())


def backups(path: Path) -> list[Any]:
    engine = create_db_engine(load_config(path).database.url, pool_size=1)
    try:
        with engine.connect() as conn:
            return list(conn.execute(s.enrol_snapshot.select()))
    finally:
        engine.dispose()


def test_a_command_refuses_while_the_daemon_holds_the_terminal_and_runs_once_it_let_go(
        setup: tuple[Path, Any], capsys: pytest.CaptureFixture[str]) -> None:
    path, _ = setup
    ps = scheduler(path, lambda d: pytest.fail("no poll in this test"))
    in_job, release = threading.Event(), threading.Event()

    def daily_backup() -> str:
        in_job.set()
        assert release.wait(20)
        return "done"

    holder = threading.Thread(target=ps.run_exclusive, args=("gate", daily_backup))
    holder.start()
    try:
        assert in_job.wait(10)
        code, out, err = run_cli(capsys, "--config", str(path), "enrol", "backup", "gate", "--wait", "0.3")
        assert code == 1 and "NOT BACKED UP" in out and "held by another fpgw process" in out, (out, err)
        assert "another fpgw process holds this terminal" in err
        code, out, err = run_cli(capsys, "--config", str(path), "enrol", "restore", "gate", "--from", "gate",
                                 "--wait", "0.2")
        assert code != 0 and "held by another fpgw process" in err, (out, err)
        assert backups(path) == []  # nothing read or stored while the daemon held it
    finally:
        release.set()
        holder.join(10)
    code, out, err = run_cli(capsys, "--config", str(path), "enrol", "backup", "gate", "--wait", "5")
    assert code == 0 and "gate: ok" in out, (out, err)
    assert len(backups(path)) == 1


def test_while_a_command_holds_the_terminal_polls_are_skipped_and_the_daily_hold_waits(
        setup: tuple[Path, Any]) -> None:
    path, _ = setup
    polled: list[str] = []

    def poll(device: DeviceConfig) -> PollOutcome:
        polled.append(device.id)
        now = datetime.now(UTC)
        return PollOutcome(device.id, now, now, True)

    ps = scheduler(path, poll)
    command = DeviceLocks(load_config(path).site.state_dir).try_hold("gate")  # as `fpgw enrol` takes it
    assert command is not None and command.path is not None
    assert ps.run_device("gate", manual=True) is None and polled == []
    assert ps.run_exclusive("gate", lambda: "backup", wait_s=0.3) is None  # gave up: the command kept it
    assert not ps.states["gate"].held and ps.states["gate"].running_since is None
    command.release()
    assert ps.run_device("gate", manual=True) is not None and polled == ["gate"]
    assert ps.run_exclusive("gate", lambda: "backup", wait_s=1) == "backup"


def test_a_waiting_holder_gets_the_lock_when_it_is_let_go(tmp_path: Path) -> None:
    locks = DeviceLocks(tmp_path)
    first = locks.try_hold("gate")
    assert first is not None and first.path is not None and locks.try_hold("gate") is None
    assert locks.try_hold("annex") is not None  # one lock per terminal
    released = threading.Event()

    def release_first() -> None:
        first.release()
        released.set()

    def let_go() -> None:  # called once the waiter found it held
        threading.Thread(target=release_first).start()

    second = locks.hold("gate", 20, on_wait=let_go)
    assert released.is_set() and second is not None and second.path == first.path
    second.release()
    # Without a state directory nothing is shared and nothing locked (a command still runs).
    nowhere = DeviceLocks(tmp_path / "missing")
    a, b = nowhere.try_hold("gate"), nowhere.try_hold("gate")
    assert a is not None and b is not None and a.path is None and not (tmp_path / "missing").exists()

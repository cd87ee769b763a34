"""DevicePoller decisions over drivers/fake.py: count-only vs full, users, serial change, errors, clock."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select

from drivers.base import AuthRejected, Busy, DeviceUser, ProtocolError, Unreachable
from drivers.fake import FakeDevice, FakeDriver, make_punch
from gateway.config import Config, parse_config
from gateway.polling.poller import DevicePoller
from gateway.store import schema as s
from gateway.store.db import create_db_engine, upgrade
from gateway.store.punches import Store
from tests.support.clock import FakeClock

BASE = datetime(2026, 11, 20, 7, 0)


def wib_now() -> datetime:
    """The wall clock of a correctly set terminal in WIB (naive, like a device clock)."""
    return datetime.now(ZoneInfo("Asia/Jakarta")).replace(tzinfo=None, microsecond=0)


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Any]:
    engine = create_db_engine(f"sqlite:///{tmp_path / 'fpgw.db'}")
    upgrade(engine)
    yield engine, tmp_path
    engine.dispose()


def build(setup: Any, device: FakeDevice | None = None, *, health: dict[str, Any] | None = None,
          polling: dict[str, Any] | None = None, employees: str | None = None) -> tuple[DevicePoller, FakeDriver,
                                                                                      Config, FakeClock]:
    engine, tmp_path = setup
    doc: dict[str, Any] = {"site": {"office_code": "1801.01.02"},
                           "polling": {"full_reconcile_s": 3600, **(polling or {})},
                           "devices": [{"id": "lobby", "address": "10.0.0.1"}], "health": health or {}}
    if employees:
        doc["employees"] = {"mapping_csv": employees}
    config = parse_config(doc, base_dir=tmp_path)
    store = Store(engine, "1801.01.02")
    store.sync_devices(config.devices)
    driver = FakeDriver(device or FakeDevice(serial="SN1", users=[DeviceUser(1, "1001", "Budi")],
                                             punches=[make_punch("1001", BASE + timedelta(minutes=i))
                                                      for i in range(20)]))
    clock = FakeClock()
    poller = DevicePoller(config, store, driver_factory=lambda dev: driver, now=clock)
    return poller, driver, config, clock


def runs(setup: Any) -> list[tuple[str, str, int]]:
    engine, _ = setup
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(select(s.poll_runs.c.outcome, s.poll_runs.c.mode,
                                                      s.poll_runs.c.new_records).order_by(s.poll_runs.c.id))]


@pytest.mark.timeout(30)
def test_log_is_downloaded_only_when_the_count_changes_or_reconcile_is_due(setup: Any) -> None:
    poller, driver, config, clock = build(setup)
    dev = config.device("lobby")
    first = poller.poll_once(dev)
    assert (first.ok, first.mode, first.new_punches, first.records_read) == (True, "full", 20, 20)
    driver.calls.clear()
    second = poller.poll_once(dev)
    assert (second.mode, second.new_punches) == ("count", 0)
    assert "read_punches" not in driver.calls and "read_users" not in driver.calls
    driver.add_punches([make_punch("1001", BASE + timedelta(hours=3))])
    third = poller.poll_once(dev)  # the log grew: only the new record is read (a tail read)
    assert (third.mode, third.new_punches, third.records_read) == ("tail", 1, 1)
    assert "read_punches_after" in driver.calls and "read_punches" not in driver.calls
    clock.now += timedelta(seconds=3601)  # full reconcile due even though nothing changed
    fourth = poller.poll_once(dev)
    assert (fourth.mode, fourth.new_punches, fourth.records_read) == ("full", 0, 21)
    assert runs(setup) == [("ok", "full", 20), ("unchanged", "count", 0), ("ok", "tail", 1), ("ok", "full", 0)]
    assert driver.sessions_opened == driver.sessions_closed == 4 and driver.device.enabled


@pytest.mark.timeout(30)
def test_users_are_read_once_then_only_when_their_count_changes(setup: Any) -> None:
    poller, driver, config, _ = build(setup)
    dev = config.device("lobby")
    poller.poll_once(dev)
    poller.poll_once(dev)
    assert driver.calls.count("read_users") == 1
    driver.device.users.append(DeviceUser(2, "1002", "Sari"))
    poller.poll_once(dev)
    assert driver.calls.count("read_users") == 2
    engine, _ = setup
    with engine.connect() as conn:
        assert sorted(r[0] for r in conn.execute(select(s.device_users.c.user_id))) == ["1001", "1002"]


@pytest.mark.timeout(30)
def test_user_table_failure_does_not_lose_the_punches(setup: Any) -> None:
    poller, driver, config, _ = build(setup)
    driver.fail("read_users", ProtocolError("bad user chunk"))
    o = poller.poll_once(config.device("lobby"))
    assert o.ok and o.new_punches == 20 and "user table not read" in (o.error or "")
    poller.poll_once(config.device("lobby"))
    assert driver.calls.count("read_users") == 2  # retried on the next poll


@pytest.mark.timeout(30)
def test_replaced_device_is_read_fully_under_its_new_serial(setup: Any) -> None:
    poller, driver, config, _ = build(setup)
    dev = config.device("lobby")
    poller.poll_once(dev)
    with driver.lock:
        driver.device.serial = "SN2"
        driver.device.punches = driver.device.punches[:20]  # same count, different terminal
    o = poller.poll_once(dev)
    assert (o.serial, o.previous_serial, o.mode, o.new_punches) == ("SN2", "SN1", "full", 20)


@pytest.mark.timeout(30)
@pytest.mark.parametrize(("op", "error", "kind"), [
    ("connect", Unreachable("timed out"), "unreachable"),
    ("connect", AuthRejected("comm key rejected"), "auth_rejected"),
    ("counts", ProtocolError("short reply"), "protocol_error"),
    ("read_punches", ProtocolError("corrupt chunk"), "protocol_error"),
    ("read_punches", RuntimeError("a bug"), "bug"),
])
def test_failures_become_classified_outcomes_and_are_recorded(setup: Any, op: str, error: Exception,
                                                              kind: str) -> None:
    poller, driver, config, _ = build(setup)
    driver.fail(op, error)
    o = poller.poll_once(config.device("lobby"))
    assert not o.ok and o.error_kind == kind and str(error) in (o.error or "")
    assert runs(setup)[-1][0] == kind
    assert driver.sessions_opened == driver.sessions_closed and driver.device.enabled
    assert poller.poll_once(config.device("lobby")).ok  # the next tick is the retry


@pytest.mark.timeout(30)
def test_failed_outcome_carries_whether_it_is_transient_and_the_devices_retry_after(setup: Any) -> None:
    poller, driver, config, _ = build(setup)
    driver.fail("connect", AuthRejected("comm key rejected"))
    o = poller.poll_once(config.device("lobby"))
    assert (o.error_kind, o.transient, o.retry_after_s) == ("auth_rejected", False, None)
    driver.fail("counts", Busy("enrolling", retry_after=45.0))
    o = poller.poll_once(config.device("lobby"))
    assert (o.error_kind, o.transient, o.retry_after_s) == ("busy", True, 45.0)


@pytest.mark.timeout(30)
def test_observers_are_called_and_a_broken_one_does_not_break_polling(setup: Any) -> None:
    seen: list[Any] = []

    def broken(_o: Any) -> None:
        raise ValueError("observer bug")

    poller, _driver, config, _ = build(setup)
    poller.observers = [broken, seen.append]
    o = poller.poll_once(config.device("lobby"))
    assert o.ok and seen == [o]


@pytest.mark.timeout(30)
def test_stop_requested_abandons_before_touching_the_device(setup: Any) -> None:
    poller, driver, config, _ = build(setup)
    poller.stop_event.set()
    o = poller.poll_once(config.device("lobby"))
    assert (o.ok, o.error_kind) == (False, "abandoned")
    assert driver.calls == []


@pytest.mark.timeout(30)
def test_clock_skew_is_measured_and_corrected_when_configured(setup: Any) -> None:
    device = FakeDevice(serial="SN1", frozen_time=wib_now() + timedelta(minutes=10))
    poller, driver, config, _ = build(setup, device, health={"clock_correct": True, "clock_correct_above_s": 60},
                                      polling={"clock_check_s": 0})  # every poll reads the clock
    o = poller.poll_once(config.device("lobby"))
    assert o.clock_skew_s is not None and 590 < o.clock_skew_s < 610
    assert o.clock_corrected and "set_time" in driver.calls
    again = poller.poll_once(config.device("lobby"))
    assert again.clock_skew_s is not None and abs(again.clock_skew_s) < 5 and not again.clock_corrected


@pytest.mark.timeout(30)
def test_clock_is_left_alone_by_default(setup: Any) -> None:
    device = FakeDevice(serial="SN1", frozen_time=wib_now() - timedelta(minutes=5))
    poller, driver, config, _ = build(setup, device)
    o = poller.poll_once(config.device("lobby"))
    assert o.clock_skew_s is not None and -310 < o.clock_skew_s < -290
    assert not o.clock_corrected and "set_time" not in driver.calls


@pytest.mark.timeout(30)
def test_flag_counts_cover_only_new_punches(setup: Any, tmp_path: Path) -> None:
    csv_path = tmp_path / "employees.csv"
    csv_path.write_text("device_user_id,employee_id\n1001,198501012010011001\n", encoding="utf-8")
    device = FakeDevice(serial="SN1", punches=[make_punch("1001", BASE), make_punch("7777", BASE),
                                               make_punch("1001", "2026-02-31 08:00:00")])
    poller, driver, config, _ = build(setup, device, employees=str(csv_path))
    o = poller.poll_once(config.device("lobby"))
    assert o.flag_counts == {"unmapped_user": 1, "impossible_date": 1}
    driver.add_punches([make_punch("1001", BASE + timedelta(hours=1))])
    assert poller.poll_once(config.device("lobby")).flag_counts == {}


@pytest.mark.timeout(30)
def test_database_outage_fails_the_poll_without_losing_punches(setup: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from sqlalchemy.exc import OperationalError

    poller, driver, config, _ = build(setup)
    real_save = poller.store.save_poll

    def down(*_a: Any, **_kw: Any) -> Any:
        raise OperationalError("INSERT ...", {}, Exception("disk I/O error"))

    monkeypatch.setattr(poller.store, "save_poll", down)
    first = poller.poll_once(config.device("lobby"))
    assert not first.ok and first.error_kind == "storage" and "disk I/O error" in (first.error or "")
    assert driver.device.enabled
    monkeypatch.setattr(poller.store, "save_poll", real_save)
    back = poller.poll_once(config.device("lobby"))
    # The failed poll advanced nothing, so the next one reads the whole log again.
    assert back.ok and back.mode == "full" and back.new_punches == 20


# -- rolling (overwrite-oldest) logs and terminals left disabled (issue 8, items 3 and 4) --------------------

def test_a_full_log_is_downloaded_every_poll_because_a_rolling_log_keeps_its_count(setup: Any) -> None:
    device = FakeDevice(serial="SN1", users=[DeviceUser(1, "1001", "Budi")], records_cap=20,
                        punches=[make_punch("1001", BASE + timedelta(minutes=i)) for i in range(20)])
    poller, driver, config, _ = build(setup, device)
    assert poller.poll_once(config.devices[0]).new_punches == 20
    # The terminal overwrites its oldest record with each new punch: the count stays 20.
    for k in range(3):
        with driver.lock:
            device.punches.pop(0)
            device.punches.append(make_punch("1001", BASE + timedelta(hours=1, minutes=k)))
        o = poller.poll_once(config.devices[0])
        assert o.mode == "full" and o.counts is not None and o.counts.records == 20 and o.new_punches == 1
    # Below capacity, an unchanged count still means a cheap count-only poll.
    with driver.lock:
        device.punches.pop(0)
    poller.poll_once(config.devices[0])
    assert poller.poll_once(config.devices[0]).mode == "count"


def test_a_terminal_left_disabled_by_an_earlier_process_is_re_enabled_at_the_next_session(setup: Any) -> None:
    from gateway.health.tracker import HealthTracker
    from gateway.polling.clear import process_owner

    poller, driver, config, _ = build(setup)
    dev = config.devices[0]
    assert poller.poll_once(dev).ok
    store = poller.store
    # What a process killed while it held the keypad locked leaves behind (here: this process, earlier).
    store.mark_disabling("lobby", process_owner())
    driver.device.enabled = False
    driver.calls.clear()
    tracker = HealthTracker(config)
    driver.fail("enable_device", Unreachable("no answer to ENABLEDEVICE"))
    o = poller.poll_once(dev)
    assert not o.ok and o.terminal_disabled
    assert [t.problem for t in tracker.record(o) if t.event == "start"] == ["disabled"]
    assert store.disable_marks("lobby")  # kept: the next session tries again
    o = poller.poll_once(dev)
    assert o.ok and o.mode == "count" and not o.terminal_disabled
    assert driver.calls.count("enable_device") == 2 and driver.device.enabled
    assert store.disable_marks("lobby") == []
    assert [(t.problem, t.event) for t in tracker.record(o) if t.problem == "disabled"] == [("disabled", "end")]
    # A download (here a tail read: the log grew) marks before it and unmarks after a clean session.
    driver.add_punches([make_punch("1001", BASE + timedelta(days=1))])
    driver.calls.clear()
    assert poller.poll_once(dev).mode == "tail"
    assert store.disable_marks("lobby") == [] and "enable_device" not in driver.calls


def test_a_fresh_disable_mark_of_another_live_process_is_left_alone() -> None:
    """The daemon must not unlock a keypad that a running `fpgw devices clear` holds locked right now."""
    import os
    from datetime import UTC

    from gateway.polling.clear import process_owner, stale_marks

    now = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)
    me = process_owner()
    host = me.split(":", 1)[0]
    live_other = f"{host}:{os.getppid()}"
    dead = f"{host}:{2**22 + 12345}"  # above the default pid_max: no such process
    marks = [(me, now), (live_other, now), ("otherhost:42", now), (dead, now),
             ("otherhost:43", now - timedelta(seconds=601))]
    assert stale_marks(marks, now, 600) == [me, dead, "otherhost:43"]


def test_a_poll_does_not_download_while_another_live_process_holds_the_keypad_locked(setup: Any) -> None:
    """Its download would end with ENABLEDEVICE, unlocking the keypad in the middle of the other's clear."""
    poller, driver, config, _ = build(setup)
    dev = config.devices[0]
    assert poller.poll_once(dev).new_punches == 20
    poller.store.mark_disabling("lobby", "otherhost:4242")  # fresh, another host: maybe clearing right now
    driver.add_punches([make_punch("1001", BASE + timedelta(days=1))])
    driver.calls.clear()
    o = poller.poll_once(dev)
    assert not o.ok and o.error_kind == "busy" and "read_punches" not in driver.calls
    assert "enable_device" not in driver.calls
    assert poller.store.device_state("lobby").last_record_count == 20  # the new count is not taken as read
    poller.store.clear_disable_marks("lobby", ["otherhost:4242"])
    assert poller.poll_once(dev).new_punches == 1


def test_a_full_log_that_turned_over_completely_between_polls_is_warned_about(setup: Any) -> None:
    from structlog.testing import capture_logs

    device = FakeDevice(serial="SN1", users=[DeviceUser(1, "1001", "Budi")], records_cap=20,
                        punches=[make_punch("1001", BASE + timedelta(minutes=i)) for i in range(20)])
    poller, driver, config, _ = build(setup, device)
    poller.poll_once(config.devices[0])
    with driver.lock:
        device.punches[:] = [make_punch("1001", BASE + timedelta(days=1, minutes=i)) for i in range(20)]
    with capture_logs() as logs:
        assert poller.poll_once(config.devices[0]).new_punches == 20
    assert any("turned over completely" in e["event"] and e["log_level"] == "warning" for e in logs)


def test_make_durable_checkpoints_the_sqlite_write_ahead_log(setup: Any) -> None:
    """Item 7 (power loss): on SQLite the clear path syncs the WAL with a FULL checkpoint first."""
    from sqlalchemy import event

    engine, _ = setup
    statements: list[str] = []
    event.listen(engine, "connect", lambda dbapi, _rec: dbapi.set_trace_callback(statements.append))
    engine.dispose()  # new connections: traced from the start
    poller, _, config, _ = build(setup)
    assert poller.poll_once(config.devices[0]).new_punches == 20
    statements.clear()
    assert poller.store.make_durable() == "checkpoint"
    assert statements == ["PRAGMA wal_checkpoint(FULL)"]


def test_an_unreliable_counter_makes_every_poll_a_full_read(setup: Any) -> None:
    # Some face terminals answer the size query with 4 zero bytes: the driver then counts by downloading, and
    # an unchanged count says nothing (the log may have rolled over), so the poller reads it all every time.
    device = FakeDevice(serial="SN1", users=[DeviceUser(1, "1001", "Budi")], counts_unreliable="4-byte answer",
                        punches=[make_punch("1001", BASE + timedelta(minutes=i)) for i in range(5)])
    poller, driver, config, _ = build(setup, device)
    assert poller.poll_once(config.devices[0]).new_punches == 5
    with driver.lock:
        device.punches.pop(0)
        device.punches.append(make_punch("1001", BASE + timedelta(hours=1)))
    o = poller.poll_once(config.devices[0])
    assert o.mode == "full" and o.counts is not None and o.counts.unreliable and o.new_punches == 1

"""End-to-end: simulator faults -> the real daemon (Gateway in-process) -> alerts at a local webhook receiver.

Each problem must produce exactly one start alert and one recovery alert, and a gateway restart on
the same database must not repeat either. Polls are requested with poll_now; time-based rules use the
monitor's public ``sweep(now)`` with an explicit instant instead of waiting for hours.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from gateway.store import schema as s
from gateway.store.health import HealthRepo
from tests.support.config import DeviceEntry, make_config
from tests.support.fleet import sim_spec
from tests.support.gateway import RunningGateway, table_rows
from tests.support.webhook import WebhookReceiver, count


@pytest.fixture
def hook():
    with WebhookReceiver() as h:
        yield h


def health_config(db_url: str, entries: list[DeviceEntry], tmp_path: Path, hook: WebhookReceiver,
                  monkeypatch: pytest.MonkeyPatch, health: dict[str, Any] | None = None,
                  polling: dict[str, Any] | None = None) -> Any:
    monkeypatch.setenv("T_HOOK", hook.url)
    return make_config(db_url, entries, tmp_path, polling=polling,
                       health={"offline_after_failures": 2, "offline_after_s": 1, **(health or {})},
                       alerts={"webhooks_env": "T_HOOK", "reminder_s": 0})


def settle(gw: RunningGateway) -> None:
    """Wait until polls (with their observers) are done and every alert due was delivered."""
    assert not gw.gateway.polls.wait_idle(30)
    monitor = gw.gateway.ctx.health
    assert monitor.router.wait_idle(20)


def poll(gw: RunningGateway, device_id: str = "a") -> Any:
    outcome = gw.poll(device_id)
    settle(gw)
    return outcome


def poll_until_ok(gw: RunningGateway, device_id: str = "a", tries: int = 3) -> Any:
    """Poll a device that just came back; its first connect may still be reset (simulator leaving a fault)."""
    for _ in range(tries):
        outcome = poll(gw, device_id)
        if outcome.ok:
            return outcome
    raise AssertionError(f"device {device_id} still failing after {tries} polls: {outcome.error_kind} {outcome.error}")


def alerts_in_db(db_url: str) -> list[tuple[str, str]]:
    return [(r["problem"], r["event"]) for r in table_rows(db_url, s.alerts)]


@pytest.mark.timeout(120)
def test_offline_alerts_once_recovers_once_and_never_repeats_across_restarts(
        fleet, hook: WebhookReceiver, db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a = fleet.add(sim_spec("HL-OFF", records=50))
    config = health_config(db_url, [DeviceEntry("a", a)], tmp_path, hook, monkeypatch)
    with RunningGateway(config) as gw:
        assert poll(gw).ok
        a.set_fault("offline")
        assert poll(gw).error_kind == "unreachable"
        assert hook.events() == []  # one failure: not offline yet (hysteresis)
        assert poll(gw).error_kind == "unreachable"
        hook.wait_for(lambda r: count(r, "offline", "start") == 1)
        status = gw.gateway.ctx.health.snapshot()["a"]
        assert status.state == "offline" and "offline" in status.problems
    # Restart while still offline: the problem is remembered, nothing is re-sent.
    with RunningGateway(config) as gw:
        assert poll(gw).error_kind == "unreachable"
        gw.gateway.ctx.health.sweep()
        settle(gw)
        assert hook.events() == [("offline", "start")]
        a.clear_fault("offline")
        poll_until_ok(gw)
        got = hook.wait_for(lambda r: count(r, "offline", "end") == 1)
    end = next(d for d in got if d["event"] == "end")
    assert end["severity"] == "critical" and end["duration_s"] > 0 and end["check"] == []
    # And once more: recovered state is remembered too.
    with RunningGateway(config) as gw:
        assert poll(gw).ok
        gw.gateway.ctx.health.sweep()
        settle(gw)
    assert hook.events() == [("offline", "start"), ("offline", "end")]
    assert alerts_in_db(db_url) == [("offline", "start"), ("offline", "end")]
    [row] = table_rows(db_url, s.device_health)
    assert row["state"] == "online" and row["problems"] == "{}"


# fault, value, expected problem, how to recover
FAULTS = [
    ("wrong_comm_key", True, "auth_rejected"),
    ("clock_skew", 3600, "clock_skew"),
    ("clock_reset", True, "clock_reset"),
    ("storage_full", True, "storage"),
    ("port_closed", True, "offline"),
]


@pytest.mark.timeout(90)
@pytest.mark.parametrize("fault,value,problem", FAULTS, ids=[f[0] for f in FAULTS])
def test_simulator_fault_gives_one_start_and_one_end_alert(
        fault: str, value: Any, problem: str, fleet, hook: WebhookReceiver, sqlite_url: str, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    a = fleet.add(sim_spec(f"HL-{fault[:10].upper()}", records=40))
    # Every poll reads the clock (clock_check_s = 0): the clock faults must show at the very next poll.
    config = health_config(sqlite_url, [DeviceEntry("a", a)], tmp_path, hook, monkeypatch,
                           polling={"clock_check_s": 0})
    with RunningGateway(config) as gw:
        assert poll(gw).ok
        a.set_fault(fault, value)
        poll(gw)
        poll(gw)  # a second bad poll: still exactly one start (and offline needs two failures)
        # Offline also needs offline_after_s without a good poll: a refused connect fails at once.
        gw.gateway.ctx.health.sweep(datetime.now(UTC) + timedelta(seconds=5))
        settle(gw)
        got = hook.wait_for(lambda r: count(r, problem, "start") == 1)
        start = next(d for d in got if d["problem"] == problem)
        assert start["device"]["serial"] == a.serial and start["office"]["code"] == "1801.01.02"
        assert start["check"], "a start alert says what to check"
        a.clear_fault(fault)
        if fault == "clock_reset":
            a.set_fault("clock_skew", 0)  # the simulator's clock runs on from 2000: bring it back to now
        poll_until_ok(gw)
        hook.wait_for(lambda r: count(r, problem, "end") == 1)
    with RunningGateway(config) as gw:
        poll(gw)
    assert hook.events() == [(problem, "start"), (problem, "end")], hook.events()


@pytest.mark.timeout(90)
def test_log_cleared_and_replaced_are_single_notices(fleet, hook: WebhookReceiver, sqlite_url: str, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    a = fleet.add(sim_spec("HL-NOTICE", records=60))
    config = health_config(sqlite_url, [DeviceEntry("a", a)], tmp_path, hook, monkeypatch)
    with RunningGateway(config) as gw:
        assert poll(gw).ok
        a.set_fault("log_cleared")
        assert poll(gw).ok
        poll(gw)
        hook.wait_for(lambda r: count(r, "log_shrank", "notice") == 1)
        a.set_fault("replaced", "HL-NEW-1")
        assert poll(gw).serial == "HL-NEW-1"
        got = hook.wait_for(lambda r: count(r, "replaced", "notice") == 1)
    with RunningGateway(config) as gw:
        poll(gw)
    assert hook.events() == [("log_shrank", "notice"), ("replaced", "notice")]
    replaced = next(d for d in got if d["problem"] == "replaced")
    assert replaced["seen"] == {"previous_serial": "HL-NOTICE", "serial": "HL-NEW-1"}


@pytest.mark.timeout(90)
def test_silent_device_during_working_hours_and_its_end(fleet, hook: WebhookReceiver, sqlite_url: str,
                                                        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a = fleet.add(sim_spec("HL-SILENT", records=30))
    config = health_config(sqlite_url, [DeviceEntry("a", a)], tmp_path, hook, monkeypatch,
                           health={"silent_after_s": 3600,
                                   "working_hours": {"start": "00:00", "end": "23:59", "days": [1, 2, 3, 4, 5, 6, 7]}})
    with RunningGateway(config) as gw:
        assert poll(gw).ok
        monitor = gw.gateway.ctx.health
        now = datetime.now(UTC)
        assert monitor.sweep(now + timedelta(minutes=30)) == []
        [t] = monitor.sweep(now + timedelta(hours=2))
        assert (t.problem, t.event) == ("silent", "start")
        hook.wait_for(lambda r: count(r, "silent", "start") == 1)
        a.add_punches(2)
        assert poll(gw).new_punches == 2
        hook.wait_for(lambda r: count(r, "silent", "end") == 1)
    # After a restart the silent clock runs on from the last new punch (not from the restart).
    with RunningGateway(config) as gw:
        monitor = gw.gateway.ctx.health
        later = datetime.now(UTC)
        assert monitor.sweep(later + timedelta(minutes=50)) == []
        assert [(t.problem, t.event) for t in monitor.sweep(later + timedelta(minutes=65))] == [("silent", "start")]
        hook.wait_for(lambda r: count(r, "silent", "start") == 2)
    assert hook.events() == [("silent", "start"), ("silent", "end"), ("silent", "start")]


@pytest.mark.timeout(120)
def test_hung_poll_is_reported_while_it_runs(fleet, hook: WebhookReceiver, sqlite_url: str, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    a = fleet.add(sim_spec("HL-HANG", records=30))
    config = health_config(sqlite_url, [DeviceEntry("a", a, extra={"timeout_s": 3})], tmp_path, hook, monkeypatch,
                           polling={"poll_deadline_s": 5})
    with RunningGateway(config) as gw:
        assert poll(gw).ok
        monitor = gw.gateway.ctx.health
        # A poll stuck where no socket timeout or driver deadline reaches (here: the database read at its start;
        # in the field a wedged library call). A slow terminal no longer does it: the driver ends its session
        # at the deadline.
        release = threading.Event()
        store = gw.gateway.poller.store
        real_state = store.device_state

        def stuck(device_id: str) -> Any:
            if device_id == "a":
                release.wait(30)
            return real_state(device_id)

        monkeypatch.setattr(store, "device_state", stuck)
        started = datetime.now(UTC)
        assert gw.gateway.ctx.poll_now is not None and gw.gateway.ctx.poll_now("a")
        # Sweep while the poll is still in flight, once it is past the deadline.
        transitions = []
        while not transitions and (datetime.now(UTC) - started).total_seconds() < 30:
            time.sleep(0.25)
            transitions = monitor.sweep()
        assert [(t.problem, t.event) for t in transitions] == [("poll_hang", "start")]
        assert gw.gateway.polls.in_flight() == ["a"], "detected while the poll still runs"
        monkeypatch.setattr(store, "device_state", real_state)
        release.set()
        outcome = gw.recorder.wait_for("a", started, 60)
        assert outcome.error_kind == "timeout"
        settle(gw)
        poll_until_ok(gw)
        hook.wait_for(lambda r: count(r, "poll_hang", "end") == 1)
    assert hook.events() == [("poll_hang", "start"), ("poll_hang", "end")]


@pytest.mark.timeout(90)
def test_muted_device_records_but_does_not_send_and_unmute_sends_open_state_once(
        fleet, hook: WebhookReceiver, sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a = fleet.add(sim_spec("HL-MUTE", records=30))
    config = health_config(sqlite_url, [DeviceEntry("a", a)], tmp_path, hook, monkeypatch)
    with RunningGateway(config) as gw:
        assert poll(gw).ok
        monitor = gw.gateway.ctx.health
        repo = HealthRepo(gw.gateway.engine, "1801.01.02")
        repo.set_mute("a", datetime.now(UTC) + timedelta(hours=2), "ganti kabel")
        monitor.sweep()
        a.set_fault("wrong_comm_key", True)
        poll(gw)
        assert hook.events() == []
        rows = table_rows(sqlite_url, s.alerts)
        assert [(r["problem"], r["event"], r["muted"]) for r in rows] == [("auth_rejected", "start", True)]
        repo.set_mute("a", None)  # what `fpgw devices unmute a` does
        monitor.sweep()
        settle(gw)
        got = hook.wait_for(lambda r: len(r) == 1)
        monitor.sweep()
        settle(gw)
    assert hook.events() == [("auth_rejected", "reminder")]
    assert "maintenance mute ended" in got[0]["message"]


@pytest.mark.timeout(90)
def test_mute_expiry_sends_the_open_problem_once(fleet, hook: WebhookReceiver, sqlite_url: str, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    a = fleet.add(sim_spec("HL-MUTE2", records=30, faults={"storage_full": True}))
    config = health_config(sqlite_url, [DeviceEntry("a", a)], tmp_path, hook, monkeypatch)
    with RunningGateway(config) as gw:
        monitor = gw.gateway.ctx.health
        HealthRepo(gw.gateway.engine, "1801.01.02").set_mute("a", datetime.now(UTC) + timedelta(hours=1), "servis")
        monitor.sweep()
        poll(gw)
        assert table_rows(sqlite_url, s.alerts)[0]["muted"] is True
        monitor.sweep(datetime.now(UTC) + timedelta(minutes=59))
        settle(gw)
        assert hook.events() == []
        monitor.sweep(datetime.now(UTC) + timedelta(minutes=61))  # the mute ran out
        got = hook.wait_for(lambda r: len(r) == 1)
        monitor.sweep(datetime.now(UTC) + timedelta(minutes=62))
        settle(gw)
    assert hook.events() == [("storage", "reminder")] and got[0]["severity"] == "critical"


@pytest.mark.timeout(90)
def test_clock_correction_is_announced_once_instead_of_a_skew_problem(
        fleet, hook: WebhookReceiver, sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a = fleet.add(sim_spec("HL-CLOCK", records=30, faults={"clock_skew": 3600}))
    config = health_config(sqlite_url, [DeviceEntry("a", a)], tmp_path, hook, monkeypatch,
                           health={"clock_correct": True, "clock_correct_above_s": 60})
    with RunningGateway(config) as gw:
        first = poll(gw)
        assert first.ok and first.clock_corrected
        got = hook.wait_for(lambda r: count(r, "clock_corrected", "notice") == 1)
        second = poll(gw)
        assert second.ok and not second.clock_corrected and abs(second.clock_skew_s or 0) < 60
    assert hook.events() == [("clock_corrected", "notice")]
    assert got[0]["severity"] == "info" and "ahead" in got[0]["detail"]


@pytest.mark.timeout(90)
def test_mute_that_ran_out_while_stopped_is_honoured_at_start(
        fleet, hook: WebhookReceiver, sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a = fleet.add(sim_spec("HL-MUTE3", records=30, faults={"wrong_comm_key": True}))
    config = health_config(sqlite_url, [DeviceEntry("a", a)], tmp_path, hook, monkeypatch)
    with RunningGateway(config) as gw:
        repo = HealthRepo(gw.gateway.engine, "1801.01.02")
        repo.set_mute("a", datetime.now(UTC) + timedelta(hours=1), "servis")
        gw.gateway.ctx.health.sweep()
        poll(gw)
        repo.set_mute("a", datetime.now(UTC) - timedelta(minutes=1))  # as if the hour passed while stopped
    assert hook.events() == []
    with RunningGateway(config) as gw:
        got = hook.wait_for(lambda r: len(r) == 1)
        gw.gateway.ctx.health.sweep()
        settle(gw)
    assert hook.events() == [("auth_rejected", "reminder")] and "mute ended" in got[0]["message"]
    assert all(r["muted_until"] is None for r in table_rows(sqlite_url, s.device_health))


@pytest.mark.timeout(90)
def test_reminder_while_a_problem_lasts(fleet, hook: WebhookReceiver, sqlite_url: str, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    a = fleet.add(sim_spec("HL-REMIND", records=30, faults={"clock_skew": 3600}))
    monkeypatch.setenv("T_HOOK", hook.url)
    config = make_config(sqlite_url, [DeviceEntry("a", a)], tmp_path,
                         alerts={"webhooks_env": "T_HOOK", "reminder_s": "6h"},
                         health={"silent_after_s": "30d"})  # only the skew problem in this test
    with RunningGateway(config) as gw:
        monitor = gw.gateway.ctx.health
        poll(gw)
        hook.wait_for(lambda r: count(r, "clock_skew", "start") == 1)
        now = datetime.now(UTC)
        assert monitor.sweep(now + timedelta(hours=5)) == []
        assert [(t.problem, t.event) for t in monitor.sweep(now + timedelta(hours=6, minutes=1))] == \
            [("clock_skew", "reminder")]
        assert monitor.sweep(now + timedelta(hours=7)) == []
        got = hook.wait_for(lambda r: count(r, "clock_skew", "reminder") == 1)
    reminder = got[-1]
    assert "for 6.0 h" in reminder["message"] and reminder["check"]


@pytest.mark.timeout(90)
def test_firmware_change_is_one_info_notice(fleet, hook: WebhookReceiver, sqlite_url: str, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    a = fleet.add(sim_spec("HL-FW", records=30))
    # The driver re-reads the firmware text with the device clock (polling.clock_check_s; 0 = every poll);
    # between clock checks it reports the text cached for the serial (docs/health.md, firmware_changed).
    config = health_config(sqlite_url, [DeviceEntry("a", a)], tmp_path, hook, monkeypatch,
                           polling={"clock_check_s": 0})
    with RunningGateway(config) as gw:
        assert poll(gw).ok
        # No simulator fault for this: the device's spec is what it reports, so change it in place.
        a.spec.firmware = "Ver 6.70 Feb 02 2026"
        assert poll(gw).info.firmware == "Ver 6.70 Feb 02 2026"
        poll(gw)
        got = hook.wait_for(lambda r: count(r, "firmware_changed", "notice") == 1)
    assert hook.events() == [("firmware_changed", "notice")]
    assert got[0]["severity"] == "info"
    assert got[0]["seen"] == {"previous_firmware": "Ver 6.60 Apr 28 2017", "firmware": "Ver 6.70 Feb 02 2026"}


@pytest.mark.timeout(90)
def test_repeated_broken_transfers_raise_protocol_error(fleet, hook: WebhookReceiver, sqlite_url: str,
                                                        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a = fleet.add(sim_spec("HL-PROTO", records=300))
    config = health_config(sqlite_url, [DeviceEntry("a", a)], tmp_path, hook, monkeypatch)
    with RunningGateway(config) as gw:
        assert poll(gw).ok
        a.set_fault("corrupt_chunk", True)
        kinds = []
        for _ in range(2):
            a.add_punches(3)  # something new, so the poll downloads the log and meets the corruption
            kinds.append(poll(gw).error_kind)
        assert kinds == ["protocol_error", "protocol_error"]
        hook.wait_for(lambda r: count(r, "protocol_error", "start") == 1)
        a.clear_fault("corrupt_chunk")
        assert poll_until_ok(gw).new_punches == 6  # nothing lost: the next good poll reads it all
        hook.wait_for(lambda r: count(r, "protocol_error", "end") == 1)
    assert hook.events() == [("protocol_error", "start"), ("protocol_error", "end")]


@pytest.mark.timeout(90)
def test_identity_mismatch_until_the_config_is_fixed(fleet, hook: WebhookReceiver, sqlite_url: str, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    a = fleet.add(sim_spec("HL-IDENT", records=20))
    wrong = health_config(sqlite_url, [DeviceEntry("a", a, serial="HL-OTHER")], tmp_path, hook, monkeypatch)
    with RunningGateway(wrong) as gw:
        assert poll(gw).error_kind == "identity_mismatch"
        poll(gw)
        got = hook.wait_for(lambda r: count(r, "identity_mismatch", "start") == 1)
    assert any("serial" in c for c in got[0]["check"])
    fixed = health_config(sqlite_url, [DeviceEntry("a", a, serial="HL-IDENT")], tmp_path, hook, monkeypatch)
    with RunningGateway(fixed) as gw:
        assert poll(gw).ok
        hook.wait_for(lambda r: count(r, "identity_mismatch", "end") == 1)
    assert hook.events() == [("identity_mismatch", "start"), ("identity_mismatch", "end")]

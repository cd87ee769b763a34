"""HealthTracker (pure): hysteresis, every problem, reminders, notices, with explicit time (no sleeping)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from drivers.base import Counts, DeviceInfo
from gateway.config import Config, parse_config
from gateway.health.tracker import HealthTracker, Transition, working_seconds
from gateway.models import PollOutcome

pytestmark = pytest.mark.timeout(30)

# Monday 2026-11-23 09:00 WIB = 02:00 UTC.
T0 = datetime(2026, 11, 23, 2, 0, tzinfo=UTC)


def make_config(health: dict[str, Any] | None = None, alerts: dict[str, Any] | None = None,
                interval_s: float = 60) -> Config:
    return parse_config({
        "site": {"office_code": "1801.01", "office_name": "Dinas Uji", "timezone": "Asia/Jakarta"},
        "polling": {"interval_s": interval_s, "poll_deadline_s": 120},
        "devices": [{"id": "lobby", "address": "127.0.0.1"}],
        "health": health or {},
        "alerts": alerts or {"reminder_s": 0},
    })


def ok(at: datetime, *, records: int = 100, cap: int = 1000, users: int = 10, ucap: int = 100,
       skew: float | None = 0.0, new: int = 0, device_time: datetime | None = None, **kw: Any) -> PollOutcome:
    info = DeviceInfo(serial=kw.pop("serial", "SN1"), firmware=kw.pop("firmware", "Ver 6.60"),
                      device_time=device_time or datetime(2026, 11, 23, 9, 0))
    return PollOutcome(device_id="lobby", started_at=at - timedelta(seconds=1), finished_at=at, ok=True,
                       mode="count", serial=info.serial, info=info,
                       counts=Counts(records=records, users=users, records_cap=cap, users_cap=ucap),
                       clock_skew_s=skew, new_punches=new, **kw)


def fail(at: datetime, kind: str = "unreachable") -> PollOutcome:
    return PollOutcome(device_id="lobby", started_at=at - timedelta(seconds=1), finished_at=at, ok=False,
                       error_kind=kind, error=f"{kind} (test)")


def events(ts: list[Transition]) -> list[tuple[str, str]]:
    return [(t.problem, t.event) for t in ts]


def test_device_goes_offline_after_three_failures_and_ten_minutes() -> None:
    tr = HealthTracker(make_config({"offline_after_failures": 3, "offline_after_s": 600}))
    assert tr.record(ok(T0)) == []
    assert tr.health("lobby").state == "online"
    # Three failures within a minute: not yet offline (time window not reached).
    out = []
    for i in range(1, 4):
        out += tr.record(fail(T0 + timedelta(seconds=20 * i)))
    assert out == [] and tr.health("lobby").state == "online"
    # Ten minutes after the last good poll the sweep declares it offline, once.
    assert tr.sweep(T0 + timedelta(seconds=599)) == []
    out = tr.sweep(T0 + timedelta(seconds=601))
    assert events(out) == [("offline", "start")]
    assert out[0].severity == "critical" and "3 polls" in out[0].detail
    assert tr.health("lobby").state == "offline"
    # No second start while it stays offline.
    assert tr.record(fail(T0 + timedelta(seconds=700))) == []
    assert tr.sweep(T0 + timedelta(seconds=900)) == []


def test_time_alone_is_not_enough_for_offline() -> None:
    tr = HealthTracker(make_config({"offline_after_failures": 3, "offline_after_s": 600}))
    tr.record(ok(T0))
    tr.record(fail(T0 + timedelta(seconds=10)))
    tr.record(fail(T0 + timedelta(seconds=20)))
    assert tr.sweep(T0 + timedelta(hours=2)) == []  # two failures only, however long
    assert events(tr.record(fail(T0 + timedelta(hours=2, seconds=1)))) == [("offline", "start")]


def test_back_online_on_first_good_poll_with_duration() -> None:
    tr = HealthTracker(make_config({"offline_after_failures": 2, "offline_after_s": 60}))
    tr.record(ok(T0))
    tr.record(fail(T0 + timedelta(seconds=30)))
    assert events(tr.record(fail(T0 + timedelta(seconds=90)))) == [("offline", "start")]
    out = tr.record(ok(T0 + timedelta(seconds=390)))
    assert events(out) == [("offline", "end")]
    assert out[0].duration_s == pytest.approx(300)
    assert tr.health("lobby").state == "online" and tr.health("lobby").consecutive_failures == 0


def test_offline_window_defaults_to_three_intervals() -> None:
    tr = HealthTracker(make_config({"offline_after_failures": 1}, interval_s=100))
    assert tr.offline_window_s("lobby") == 300
    tr.record(ok(T0))
    assert tr.record(fail(T0 + timedelta(seconds=299))) == []
    assert events(tr.sweep(T0 + timedelta(seconds=301))) == [("offline", "start")]


def test_never_seen_device_goes_offline_from_first_failure() -> None:
    tr = HealthTracker(make_config({"offline_after_failures": 2, "offline_after_s": 60}))
    tr.record(fail(T0))
    tr.record(fail(T0 + timedelta(seconds=30)))
    assert tr.health("lobby").state == "unknown"
    assert events(tr.sweep(T0 + timedelta(seconds=61))) == [("offline", "start")]


def test_comm_key_rejected_is_its_own_problem_not_offline() -> None:
    tr = HealthTracker(make_config({"offline_after_failures": 1, "offline_after_s": 60}))
    tr.record(ok(T0))
    out = tr.record(fail(T0 + timedelta(seconds=10), "auth_rejected"))
    assert events(out) == [("auth_rejected", "start")]
    assert tr.record(fail(T0 + timedelta(seconds=100), "auth_rejected")) == []
    assert tr.sweep(T0 + timedelta(hours=1)) == []
    assert tr.health("lobby").state == "online"
    assert events(tr.record(ok(T0 + timedelta(hours=1)))) == [("auth_rejected", "end")]


def test_identity_mismatch_starts_and_ends() -> None:
    tr = HealthTracker(make_config())
    assert events(tr.record(fail(T0, "identity_mismatch"))) == [("identity_mismatch", "start")]
    assert events(tr.record(ok(T0 + timedelta(minutes=5)))) == [("identity_mismatch", "end")]


def test_protocol_errors_need_repeated_failures() -> None:
    tr = HealthTracker(make_config({"offline_after_failures": 3}))
    tr.record(ok(T0))
    assert tr.record(fail(T0 + timedelta(seconds=1), "protocol_error")) == []
    assert tr.record(fail(T0 + timedelta(seconds=2), "protocol_error")) == []
    assert events(tr.record(fail(T0 + timedelta(seconds=3), "protocol_error"))) == [("protocol_error", "start")]
    assert events(tr.record(ok(T0 + timedelta(seconds=4)))) == [("protocol_error", "end")]


def test_clock_skew_beyond_threshold_and_back() -> None:
    tr = HealthTracker(make_config({"clock_skew_warn_s": 120}))
    assert tr.record(ok(T0, skew=100)) == []
    out = tr.record(ok(T0 + timedelta(minutes=1), skew=-600))
    assert events(out) == [("clock_skew", "start")] and "behind" in out[0].detail
    assert tr.record(ok(T0 + timedelta(minutes=2), skew=-650)) == []  # still open: no repeat
    assert events(tr.record(ok(T0 + timedelta(minutes=3), skew=5))) == [("clock_skew", "end")]


def test_clock_correction_is_a_notice_and_closes_skew() -> None:
    tr = HealthTracker(make_config({"clock_skew_warn_s": 120}))
    tr.record(ok(T0, skew=900))
    out = tr.record(ok(T0 + timedelta(minutes=1), skew=900, clock_corrected=True))
    assert sorted(events(out)) == [("clock_corrected", "notice"), ("clock_skew", "end")]


def test_clock_reset_from_year_2000_or_flagged_punches() -> None:
    tr = HealthTracker(make_config())
    out = tr.record(ok(T0, skew=-8e8, device_time=datetime(2000, 1, 1, 0, 5)))
    assert events(out) == [("clock_reset", "start")]  # no separate clock_skew alert for a reset RTC
    assert events(tr.record(ok(T0 + timedelta(minutes=1)))) == [("clock_reset", "end")]
    out = tr.record(ok(T0 + timedelta(minutes=2), new=3, flag_counts={"impossible_date": 2}))
    assert events(out) == [("clock_reset", "start")] and "2 impossible_date" in out[0].detail


def test_storage_warning_escalates_to_critical_then_ends() -> None:
    tr = HealthTracker(make_config({"capacity_warn_ratio": 0.8, "capacity_critical_ratio": 0.95}))
    assert tr.record(ok(T0, records=700)) == []
    out = tr.record(ok(T0 + timedelta(minutes=1), records=850))
    assert events(out) == [("storage", "start")] and out[0].severity == "warning"
    assert tr.record(ok(T0 + timedelta(minutes=2), records=860)) == []
    out = tr.record(ok(T0 + timedelta(minutes=3), records=960))
    assert events(out) == [("storage", "escalate")] and out[0].severity == "critical"
    out = tr.record(ok(T0 + timedelta(minutes=4), records=10))
    assert events(out) == [("storage", "end")]


def test_user_storage_counts_too() -> None:
    tr = HealthTracker(make_config())
    out = tr.record(ok(T0, users=99, ucap=100))
    assert events(out) == [("storage", "start")] and out[0].severity == "critical" and "users" in out[0].detail


def test_silent_device_counts_only_working_hours() -> None:
    # 2 h of working time; working hours 07:00-16:00 WIB Mon-Fri.
    tr = HealthTracker(make_config({"silent_after_s": 7200,
                                    "working_hours": {"start": "07:00", "end": "16:00", "days": [1, 2, 3, 4, 5]}}))
    fri_1500 = datetime(2026, 11, 27, 8, 0, tzinfo=UTC)  # Friday 15:00 WIB
    tr.record(ok(fri_1500, new=5))
    # Friday 15:00 -> Monday 07:59: only 1 h of working time passed (Fri 15-16); weekend does not count.
    mon_0759 = datetime(2026, 11, 30, 0, 59, tzinfo=UTC)
    assert tr.sweep(mon_0759) == []
    out = tr.sweep(mon_0759 + timedelta(minutes=2))
    assert events(out) == [("silent", "start")]
    assert events(tr.record(ok(mon_0759 + timedelta(minutes=10), new=1))) == [("silent", "end")]


def test_offline_device_is_not_called_silent() -> None:
    tr = HealthTracker(make_config({"silent_after_s": 3600, "offline_after_failures": 1, "offline_after_s": 60}))
    tr.record(ok(T0))
    assert events(tr.record(fail(T0 + timedelta(seconds=61)))) == [("offline", "start")]
    assert tr.sweep(T0 + timedelta(hours=5)) == []  # five working hours without punches, but offline


def test_replaced_log_shrank_firmware_are_notices_that_expire() -> None:
    tr = HealthTracker(make_config(), notice_window_s=3600)
    tr.record(ok(T0, records=500))
    out = tr.record(ok(T0 + timedelta(minutes=1), records=20, previous_record_count=500, previous_firmware="Ver 6.60",
                       firmware="Ver 6.70"))
    assert sorted(events(out)) == [("firmware_changed", "notice"), ("log_shrank", "notice")]
    out = tr.record(ok(T0 + timedelta(minutes=2), serial="SN2", previous_serial="SN1", records=5,
                       previous_record_count=20))
    assert events(out) == [("replaced", "notice")]  # a new device's smaller log is not "shrank"
    assert set(tr.health("lobby").problems) == {"firmware_changed", "log_shrank", "replaced"}
    assert tr.sweep(T0 + timedelta(minutes=30)) == []
    assert tr.sweep(T0 + timedelta(hours=2)) == []  # expired silently: no end alert
    assert tr.health("lobby").problems == {}


def test_hung_poll_caught_by_sweep_and_ends_when_it_reports() -> None:
    tr = HealthTracker(make_config())  # poll_deadline_s = 120
    tr.record(ok(T0))
    tr.poll_started("lobby", T0 + timedelta(minutes=1))
    assert tr.sweep(T0 + timedelta(minutes=2)) == []
    out = tr.sweep(T0 + timedelta(minutes=3, seconds=1))
    assert events(out) == [("poll_hang", "start")]
    assert tr.sweep(T0 + timedelta(minutes=4)) == []
    assert events(tr.record(ok(T0 + timedelta(minutes=5)))) == [("poll_hang", "end")]


def test_poll_past_deadline_opens_poll_hang_but_shutdown_abandon_is_ignored() -> None:
    tr = HealthTracker(make_config({"offline_after_failures": 1, "offline_after_s": 1}))
    tr.record(ok(T0))
    assert tr.record(fail(T0 + timedelta(minutes=1), "abandoned")) == []
    assert tr.health("lobby").consecutive_failures == 0
    assert events(tr.record(fail(T0 + timedelta(minutes=2), "timeout"))) == [("poll_hang", "start")]
    assert tr.record(fail(T0 + timedelta(minutes=3), "timeout")) == []  # slow is not offline
    assert events(tr.record(ok(T0 + timedelta(minutes=4)))) == [("poll_hang", "end")]


def test_reminder_after_reminder_interval_while_open() -> None:
    tr = HealthTracker(make_config({"clock_skew_warn_s": 60}, alerts={"reminder_s": 3600}))
    tr.record(ok(T0, skew=500))
    assert tr.sweep(T0 + timedelta(minutes=59)) == []
    out = tr.sweep(T0 + timedelta(minutes=61))
    assert events(out) == [("clock_skew", "reminder")] and out[0].duration_s == pytest.approx(3660)
    assert tr.sweep(T0 + timedelta(minutes=90)) == []
    assert events(tr.sweep(T0 + timedelta(minutes=122))) == [("clock_skew", "reminder")]


def test_problems_coexist_and_state_survives_reload() -> None:
    cfg = make_config({"clock_skew_warn_s": 60, "offline_after_failures": 1, "offline_after_s": 60})
    tr = HealthTracker(cfg)
    tr.record(ok(T0, skew=500, records=990))
    assert set(tr.health("lobby").problems) == {"clock_skew", "storage"}
    # A restarted tracker loaded with the saved state does not re-alert the same problems.
    saved = tr.snapshot()["lobby"]
    tr2 = HealthTracker(cfg)
    tr2.load(saved)
    assert tr2.record(ok(T0 + timedelta(minutes=1), skew=500, records=990)) == []


def test_working_seconds_across_days() -> None:
    from zoneinfo import ZoneInfo

    from gateway.config import WorkingHoursConfig

    wh = WorkingHoursConfig()  # 06:30-17:30 Mon-Fri
    tz = ZoneInfo("Asia/Jakarta")
    mon = datetime(2026, 11, 23, 0, 0, tzinfo=tz)
    assert working_seconds(mon, mon + timedelta(days=7), wh, tz) == 5 * 11 * 3600
    assert working_seconds(mon + timedelta(hours=20), mon + timedelta(hours=30), wh, tz) == 0


def test_an_unreliable_record_counter_is_a_problem_until_it_answers_sensibly_again() -> None:
    tr = HealthTracker(make_config())
    tr.record(ok(T0))
    bad = replace(ok(T0 + timedelta(minutes=1)), counts=Counts(records=100, users=10, unreliable="4-byte answer"))
    out = tr.record(bad)
    assert events(out) == [("counts_unreliable", "start")] and "4-byte answer" in out[0].detail
    assert events(tr.record(replace(bad, finished_at=T0 + timedelta(minutes=2)))) == []  # once, not every poll
    assert events(tr.record(ok(T0 + timedelta(minutes=3)))) == [("counts_unreliable", "end")]


def test_user_drop_opens_once_stays_open_and_ends_when_the_count_is_back() -> None:
    tr = HealthTracker(make_config())
    assert events(tr.record(ok(T0, users=300, ucap=1000))) == []
    # Reset to factory settings: 300 -> 0 users between two polls.
    out = tr.record(ok(T0 + timedelta(minutes=1), users=0, ucap=1000))
    assert events(out) == [("user_drop", "start")] and out[0].severity == "critical"
    assert out[0].seen == {"before": 300, "now": 0} and "300" in out[0].detail
    # Still low (a few users re-enrolled by hand): no second alert, the reference stays 300.
    assert tr.record(ok(T0 + timedelta(minutes=2), users=5, ucap=1000)) == []
    assert tr.health("lobby").problems["user_drop"].seen == {"before": 300, "now": 5}
    # A restore brings the count back: the problem ends.
    assert events(tr.record(ok(T0 + timedelta(minutes=3), users=298, ucap=1000))) == [("user_drop", "end")]
    # Gradual deletes and counts that cannot be trusted never open it.
    for i, users in enumerate((290, 280, 270)):
        assert tr.record(ok(T0 + timedelta(minutes=4 + i), users=users, ucap=1000)) == []
    unreliable = ok(T0 + timedelta(minutes=9), users=0, ucap=1000)
    assert unreliable.counts is not None
    out = tr.record(replace(unreliable, counts=replace(unreliable.counts, unreliable="4 bytes")))
    assert "user_drop" not in [t.problem for t in out]


def test_user_drop_acknowledged_by_the_operator_and_seeded_across_restarts() -> None:
    tr = HealthTracker(make_config())
    tr.seed_user_counts({"lobby": 120})  # the count stored before a restart
    out = tr.record(ok(T0, users=10, ucap=1000))
    assert events(out) == [("user_drop", "start")]
    # An acknowledgement older than the problem does not close it; a newer one does, once.
    assert tr.acknowledge_user_drop("lobby", T0 - timedelta(hours=1), T0 + timedelta(minutes=1)) == []
    out = tr.acknowledge_user_drop("lobby", T0 + timedelta(seconds=30), T0 + timedelta(minutes=1))
    assert events(out) == [("user_drop", "end")]
    assert tr.acknowledge_user_drop("lobby", T0 + timedelta(seconds=30), T0 + timedelta(minutes=2)) == []
    # The accepted count is the new reference: the next poll at 10 users is quiet.
    assert tr.record(ok(T0 + timedelta(minutes=3), users=10, ucap=1000)) == []
    assert tr.devices_with_problem("user_drop") == []

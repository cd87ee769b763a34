"""PollScheduler: cold start then spread slots, a bounded pool that never starves a terminal (longest-waiting first,
missed cycles counted, one warning per state change), back-off, coalesced manual polls, stop.

The schedule is driven by explicit calls (``dispatch`` + ``run_claimed_here``) on a fake clock: no thread races
the daemon's own schedule and nothing is timed.
"""

from __future__ import annotations

import itertools
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from gateway.config import Config, DeviceConfig, parse_config
from gateway.health.tracker import HealthTracker
from gateway.models import PollOutcome
from gateway.polling.scheduler import PollScheduler, backoff_s, build_scheduler
from tests.support.clock import FakeClock


def make_config(tmp_path: Path, n: int = 3, **polling: Any) -> Config:
    return parse_config({"site": {"office_code": "X"},
                         "polling": {"interval_s": 60, "backoff_max_s": 600, **polling},
                         "devices": [{"id": f"d{i}", "address": f"10.0.0.{i + 1}"} for i in range(n)]
                         + [{"id": "off", "address": "10.0.0.99", "enabled": False}]},
                        base_dir=tmp_path)


class ScriptedPoll:
    """Poll function returning scripted ok/failed outcomes; can block to simulate a long poll.

    Every outcome is recorded in ``health`` (as the health monitor's poll observer does in the daemon):
    the scheduler's back-off reads the failure count from there.
    """

    def __init__(self, clock: FakeClock, health: HealthTracker) -> None:
        self.clock = clock
        self.health = health
        self.results: list[bool | PollOutcome] = []
        self.calls: list[str] = []
        self.gate: threading.Event | None = None
        self.entered = threading.Event()

    def __call__(self, device: DeviceConfig) -> PollOutcome:
        self.calls.append(device.id)
        self.entered.set()
        if self.gate is not None:
            self.gate.wait(10)
        ok = self.results.pop(0) if self.results else True
        outcome = ok if isinstance(ok, PollOutcome) else PollOutcome(
            device_id=device.id, started_at=self.clock.now, finished_at=self.clock.now, ok=ok,
            error_kind=None if ok else "unreachable", error=None if ok else "timed out")
        self.health.record(outcome)
        return outcome


@pytest.fixture
def parts(tmp_path: Path) -> Any:
    config = make_config(tmp_path)
    clock = FakeClock(datetime(2026, 11, 23, 1, 0, tzinfo=UTC))
    poll = ScriptedPoll(clock, HealthTracker(config))
    scheduler = build_scheduler(config)
    ps = PollScheduler(config, scheduler, poll, stop_event=threading.Event(), failures=poll.health, now=clock)
    return config, clock, poll, scheduler, ps


@pytest.mark.timeout(10)
def test_failing_device_is_backed_off_by_skipping_ticks_then_resumes(parts: Any) -> None:
    _config, clock, poll, _scheduler, ps = parts
    poll.results = [False, False, False, False, False, False, False, False, True]
    polled_at: list[int] = []
    for minute in range(0, 60):  # one scheduler tick per minute (the interval)
        clock.now = datetime(2026, 11, 23, 1, 0, tzinfo=UTC) + timedelta(minutes=minute)
        before = len(poll.calls)
        ps.run_device("d0")
        if len(poll.calls) > before:
            polled_at.append(minute)
    # Waits after each failure: 1x, 1.5x, 2.25x, 3.4x, 5.1x, 7.6x, then capped at backoff_max_s (10 min).
    gaps = [b - a for a, b in itertools.pairwise(polled_at)]
    assert gaps[:8] == [1, 2, 3, 4, 6, 8, 10, 10]
    assert polled_at[8] == sum(gaps[:8])  # the 9th poll succeeds...
    assert gaps[8:] == [1] * len(gaps[8:])  # ...and normal polling resumes at once
    assert poll.health.consecutive_failures("d0") == 0  # the one failure count (health's) is reset


def test_backoff_grows_to_the_cap_jumps_there_for_operator_problems_and_honours_retry_after() -> None:
    assert [round(backoff_s(60, n, 600)) for n in range(1, 9)] == [60, 90, 135, 202, 304, 456, 600, 600]
    assert backoff_s(60, 1, 600, transient=False) == 600  # wrong comm key: will not fix itself, probe slowly
    assert backoff_s(60, 1, 600, retry_after_s=240) == 240  # Busy: not asked again before it said
    assert backoff_s(60, 4, 600, retry_after_s=30) == 60 * 1.5 ** 3  # never sooner than the back-off
    assert backoff_s(60, 1, 600, retry_after_s=86400) == 600  # capped
    assert backoff_s(900, 3, 600) == 900  # the cap is never below the device's own interval


@pytest.mark.timeout(10)
def test_operator_problem_is_probed_at_the_cap_and_busy_after_its_retry_after(parts: Any) -> None:
    _config, clock, poll, _scheduler, ps = parts
    t0 = clock.now

    def failed(kind: str, **kw: Any) -> PollOutcome:
        return PollOutcome(device_id="d0", started_at=clock.now, finished_at=clock.now, ok=False, error_kind=kind,
                           **kw)

    poll.results = [failed("auth_rejected", transient=False), True, failed("busy", retry_after_s=300)]
    polled_at: list[int] = []
    for minute in range(0, 25):
        clock.now = t0 + timedelta(minutes=minute)
        before = len(poll.calls)
        ps.run_device("d0")
        if len(poll.calls) > before:
            polled_at.append(minute)
    # Rejected at 0: next probe at the 10 min cap (ok); busy at 11 asking for 5 min: next at 16, then every minute.
    assert polled_at[:4] == [0, 10, 11, 16]
    assert polled_at[4:] == list(range(17, 25))


@pytest.mark.timeout(10)
def test_manual_poll_ignores_backoff(parts: Any) -> None:
    _config, _clock, poll, _scheduler, ps = parts
    poll.results = [False, False]
    ps.run_device("d1")
    ps.run_device("d1")  # same instant: backed off, skipped
    assert poll.calls == ["d1"]
    ps.run_device("d1", manual=True)
    assert poll.calls == ["d1", "d1"]


@pytest.mark.timeout(10)
def test_poll_now_during_a_running_poll_is_coalesced_into_one_more_poll(parts: Any) -> None:
    _config, _clock, poll, scheduler, ps = parts
    poll.gate = threading.Event()
    worker = threading.Thread(target=ps.run_device, args=("d2",), name="test-poll")
    worker.start()
    assert poll.entered.wait(5)
    assert ps.poll_now("d2") and ps.poll_now("d2") and ps.poll_now("d2")
    ps.run_device("d2")  # a scheduled tick arriving meanwhile does nothing either
    poll.gate.set()
    worker.join(5)
    assert poll.calls == ["d2", "d2"]  # the running poll + exactly one queued behind it
    assert scheduler.get_jobs() == []  # nothing else was queued in the scheduler
    assert ps.in_flight() == []


@pytest.mark.timeout(10)
def test_poll_now_when_idle_runs_first_once_and_unknown_devices_are_refused(parts: Any) -> None:
    _config, clock, _poll, scheduler, ps = parts
    ps.add_jobs()
    clock.advance(5)  # every device due (cold start)
    assert ps.poll_now("d2") and ps.poll_now("d2")  # the second request is the same one
    ps.pool_size = 1
    ps.dispatch()
    assert ps.run_claimed_here() == ["d2"]  # ahead of the longer-waiting scheduled ones, and only once
    assert scheduler.get_jobs() == []  # device polls are not APScheduler jobs
    assert not ps.poll_now("nope") and not ps.poll_now("off")
    ps.stop_event.set()
    assert not ps.poll_now("d1")


@pytest.mark.timeout(10)
def test_nothing_polls_once_stopping(parts: Any) -> None:
    _config, _clock, poll, _scheduler, ps = parts
    ps.stop_event.set()
    assert ps.run_device("d0", manual=True) is None
    assert poll.calls == []


def _drive(clock: FakeClock, ps: PollScheduler, seconds: float, step_s: float = 1.0) -> list[str]:
    """Advance the fake clock in steps, dispatching and running what is due at each; returns the polls."""
    polled: list[str] = []
    end = clock.now + timedelta(seconds=seconds)
    while clock.now < end:
        ps.dispatch()
        polled += ps.run_claimed_here()
        clock.advance(step_s)
    return polled


@pytest.mark.timeout(10)
def test_cold_start_reads_every_device_at_once_then_each_polls_in_its_own_slot(tmp_path: Path) -> None:
    config = make_config(tmp_path, n=6, pool_size=2)
    clock = FakeClock(datetime(2026, 11, 23, 1, 0, tzinfo=UTC))
    poll = ScriptedPoll(clock, HealthTracker(config))
    ps = PollScheduler(config, build_scheduler(config), poll, stop_event=threading.Event(), now=clock)
    ps.add_jobs()
    clock.advance(2)
    ps.dispatch()
    assert ps.run_claimed_here() == ["d0", "d1"]  # pool of 2: never more handed out at once
    ps.dispatch()
    assert ps.run_claimed_here() == ["d2", "d3"]
    ps.dispatch()
    assert ps.run_claimed_here() == ["d4", "d5"]
    assert ps.stats.cold_start_s is not None
    # Steady state: one poll per device per interval, at distinct slots spread over the minute (no herd).
    starts: dict[str, list[datetime]] = {}
    t0 = clock.now
    for _ in range(5 * 60):
        ps.dispatch()
        for dev in ps.run_claimed_here():
            starts.setdefault(dev, []).append(clock.now)
        clock.advance(1)
    # 4 or 5 in these 5 minutes: a device whose slot came less than half an interval after its first read
    # waited for the slot after (never two polls closer than half an interval).
    assert all(len(v) in (4, 5) for v in starts.values()), {k: len(v) for k, v in starts.items()}
    for v in starts.values():
        assert all(b - a == timedelta(seconds=60) for a, b in itertools.pairwise(v))
    seconds_in_minute = sorted(int((v[-1] - t0).total_seconds()) % 60 for v in starts.values())
    assert len(set(seconds_in_minute)) == 6  # six different slots
    assert max(b - a for a, b in itertools.pairwise(seconds_in_minute)) < 30  # spread, not bunched
    assert ps.stats.missed_cycles == 0


class SlowPoll(ScriptedPoll):
    """Each poll moves the fake clock on by ``took_s`` (a pool of 1 then has room for 60/took_s polls a minute)."""

    took_s = 30.0

    def __call__(self, device: DeviceConfig) -> PollOutcome:
        outcome = super().__call__(device)
        self.clock.advance(self.took_s)
        return outcome


@pytest.mark.timeout(10)
def test_past_capacity_every_device_still_gets_its_turn_misses_are_counted_and_warned_once(tmp_path: Path) -> None:
    config = make_config(tmp_path, n=3, pool_size=1)
    clock = FakeClock(datetime(2026, 11, 23, 1, 0, tzinfo=UTC))
    poll = SlowPoll(clock, HealthTracker(config))
    ps = PollScheduler(config, build_scheduler(config), poll, stop_event=threading.Event(), now=clock)
    ps.add_jobs()
    with capture_logs() as logs:
        # 3 devices every 60 s need 3 polls a minute; one worker at 30 s per poll manages 2.
        polled = _drive(clock, ps, 20 * 60)
        behind = [e for e in logs if e["event"].startswith("polling cannot keep up")]
        assert len(behind) == 1, "warned once per state change, not per missed poll"
        assert behind[0]["polls_needed_per_min"] == 3 and behind[0]["pool_size"] == 1
        assert behind[0]["pool_size_needed"] >= 2  # the figure that would do
        counts = {d: polled.count(d) for d in ("d0", "d1", "d2")}
        assert max(counts.values()) - min(counts.values()) <= 1, counts  # longest-waiting first: nobody starves
        assert ps.stats.missed_cycles > 0
        assert sum(st.missed_cycles for st in ps.states.values()) == (ps.stats.missed_cycles
                                                                       + ps.stats.missed_in_cold_start)
        # Polls get quick again: polling catches up and says so once.
        poll.took_s = 1.0
        missed = ps.stats.missed_cycles
        _drive(clock, ps, 10 * 60)
        assert ps.stats.missed_cycles - missed <= 3  # the backlog clears within the first interval
    back = [e for e in logs if e["event"].startswith("polling keeps up")]
    assert len(back) == 1
    assert len([e for e in logs if e["event"].startswith("polling cannot keep up")]) == 1


@pytest.mark.timeout(10)
def test_a_paused_device_is_not_scheduled_but_polls_on_request(parts: Any) -> None:
    _config, clock, _poll, _scheduler, ps = parts
    ps.add_jobs()
    for d in ("d0", "d1"):
        ps.pause(d)
    polled = _drive(clock, ps, 3 * 60)
    assert set(polled) == {"d2"}
    assert ps.poll_now("d0")
    assert "d0" in _drive(clock, ps, 2)
    assert "d1" not in _drive(clock, ps, 3 * 60)


@pytest.mark.timeout(10)
def test_storage_errors_are_counted_by_kind_without_backing_the_device_off(parts: Any) -> None:
    _config, clock, poll, _scheduler, ps = parts
    poll.results = [PollOutcome(device_id="d0", started_at=clock.now, finished_at=clock.now, ok=False,
                                error_kind="storage", error="database error: database is locked")]
    ps.run_device("d0")
    assert ps.stats.outcomes["storage"] == 1 and ps.stats.locked == 1
    assert ps.run_device("d0") is not None  # the terminal is fine: no back-off for the database's fault
    with capture_logs() as logs:
        ps.stop(1)
    summary = [e for e in logs if e["event"] == "polling summary"]
    assert summary and summary[0]["storage_errors"] == 1 and summary[0]["locked_errors"] == 1


class SlowFirstReads(ScriptedPoll):
    """First reads take 30 s each (whole logs), later polls 1 s."""

    def __call__(self, device: DeviceConfig) -> PollOutcome:
        first = device.id not in self.calls
        outcome = super().__call__(device)
        self.clock.advance(30.0 if first else 1.0)
        return outcome


@pytest.mark.timeout(10)
def test_slots_missed_during_a_slow_cold_start_are_counted_apart_and_do_not_warn(tmp_path: Path) -> None:
    config = make_config(tmp_path, n=4, pool_size=1)
    clock = FakeClock(datetime(2026, 11, 23, 1, 0, tzinfo=UTC))
    poll = SlowFirstReads(clock, HealthTracker(config))
    ps = PollScheduler(config, build_scheduler(config), poll, stop_event=threading.Event(), now=clock)
    ps.add_jobs()
    with capture_logs() as logs:
        polled = _drive(clock, ps, 10 * 60)
    assert polled[:4] == ["d0", "d1", "d2", "d3"]  # the cold start reads everyone first (2 min with 1 worker)
    assert ps.stats.missed_in_cold_start > 0  # d0's and d1's slots passed meanwhile: counted...
    assert ps.stats.missed_cycles == 0  # ...apart, and once every terminal was read, none was missed
    assert not [e for e in logs if e["event"].startswith("polling cannot keep up")]
    cold = [e["seconds"] for e in logs if e["event"] == "first read of every terminal done"]
    assert len(cold) == 1 and 120 <= cold[0] <= 125  # 4 reads of 30 s (+ the 1 s steps of _drive)

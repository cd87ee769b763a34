"""PollScheduler: staggered jobs, backoff by skipping ticks, coalesced manual polls, stop."""

from __future__ import annotations

import itertools
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from gateway.config import Config, DeviceConfig, parse_config
from gateway.health.tracker import HealthTracker
from gateway.models import PollOutcome
from gateway.polling.scheduler import PollScheduler, backoff_s, build_scheduler, poll_job_id
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
def test_one_staggered_job_per_enabled_device_with_safe_options(parts: Any) -> None:
    _config, _clock, _poll, scheduler, ps = parts
    ps.add_jobs()
    jobs = {j.id: j for j in scheduler.get_jobs()}
    assert set(jobs) == {poll_job_id("d0"), poll_job_id("d1"), poll_job_id("d2")}  # not the disabled one
    starts = sorted(j.trigger.start_date for j in jobs.values())
    assert starts[1] - starts[0] == starts[2] - starts[1] == timedelta(seconds=20)  # 60 s / 3 devices
    for j in jobs.values():
        assert (j.max_instances, j.coalesce, j.misfire_grace_time, j.executor) == (1, True, 60, "default")
        assert j.trigger.interval == timedelta(seconds=60)


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
def test_poll_now_when_idle_queues_one_job_and_unknown_devices_are_refused(parts: Any) -> None:
    _config, _clock, _poll, scheduler, ps = parts
    scheduler.start(paused=True)  # as in gateway.app: running, so requests go to the real job store
    try:
        assert ps.poll_now("d0") and ps.poll_now("d0")
        assert [j.id for j in scheduler.get_jobs()] == ["poll-now:d0"]  # the second request replaced the first
        assert not ps.poll_now("nope") and not ps.poll_now("off")
        ps.stop_event.set()
        assert not ps.poll_now("d1")
    finally:
        scheduler.shutdown(wait=True)


@pytest.mark.timeout(10)
def test_nothing_polls_once_stopping(parts: Any) -> None:
    _config, _clock, poll, _scheduler, ps = parts
    ps.stop_event.set()
    assert ps.run_device("d0", manual=True) is None
    assert poll.calls == []

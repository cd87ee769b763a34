"""An in-process Gateway that the test drives, and views of its database.

``RunningGateway`` pauses the daemon's own periodic polls by default, so the test alone decides when a
device is polled (``poll`` / ``poll_all`` through the public poll_now): a scheduled poll can never run
across a change the test makes to a simulated terminal. ``scheduled=True`` keeps the schedule for the
tests that are about it. Everything goes through public surfaces: gateway.app.Gateway (poll_now + poll
observers, its poll scheduler), and the database tables.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import create_engine, select

from gateway.app import Gateway
from gateway.config import Config
from gateway.models import PollOutcome
from gateway.services import HealthView
from gateway.store import schema as s
from tests.support.fleet import PunchKey


class Recorder:
    """Poll observer: remembers every outcome and lets a test wait for the next poll of a device."""

    def __init__(self) -> None:
        self.outcomes: list[PollOutcome] = []
        self._cond = threading.Condition()

    def __call__(self, outcome: PollOutcome) -> None:
        with self._cond:
            self.outcomes.append(outcome)
            self._cond.notify_all()

    def wait_for(self, device_id: str, after: datetime, timeout_s: float = 30.0) -> PollOutcome:
        """The first outcome of ``device_id`` whose poll started at/after ``after``."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while True:
                for o in self.outcomes:
                    if o.device_id == device_id and o.started_at >= after:
                        return o
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no poll of {device_id} finished within {timeout_s} s")
                self._cond.wait(left)


class RunningGateway:
    """A started in-process Gateway with a Recorder attached; periodic polls paused unless ``scheduled``."""

    def __init__(self, config: Config, *, scheduled: bool = False, **kw: Any) -> None:
        self.gateway = Gateway(config, **kw)
        self.recorder = Recorder()
        self.gateway.ctx.poll_observers.append(self.recorder)
        if not scheduled:
            # Planned in Gateway.__init__, dispatched after start(): paused here, scheduled polls never run.
            for device_id in self.gateway.polls.device_ids():
                self.gateway.polls.pause(device_id)

    def __enter__(self) -> RunningGateway:
        self.gateway.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.gateway.stop()

    def poll(self, device_id: str, timeout_s: float = 30.0) -> PollOutcome:
        """Request a poll now and wait for a poll that started after the request."""
        when = datetime.now(UTC)
        assert self.gateway.ctx.poll_now is not None
        assert self.gateway.ctx.poll_now(device_id)
        return self.recorder.wait_for(device_id, when, timeout_s)

    def problems(self, device_id: str) -> set[str]:
        """Names of the device's open health problems (the health monitor's snapshot)."""
        return set(self._health().snapshot()[device_id].problems)

    def _health(self) -> HealthView:
        health = self.gateway.ctx.health
        assert health is not None, "the health monitor is not running"
        return health

    def poll_all(self, device_ids: Iterable[str], timeout_s: float = 60.0) -> dict[str, PollOutcome]:
        """Request polls of several devices at once, wait for all."""
        when = datetime.now(UTC)
        ids = list(device_ids)
        for i in ids:
            assert self.gateway.ctx.poll_now is not None and self.gateway.ctx.poll_now(i)
        return {i: self.recorder.wait_for(i, when, timeout_s) for i in ids}


def stored_keys(db_url: str, serials: Iterable[str] | None = None) -> Counter[PunchKey]:
    """Multiset of (serial, user_id, time, state, verify) from the punches table (compare with truth_keys)."""
    engine = create_engine(db_url)
    try:
        p = s.punches.c
        with engine.connect() as conn:
            rows = conn.execute(select(p.device_serial, p.device_user_id, p.device_time, p.state, p.verify)).all()
    finally:
        engine.dispose()
    wanted = set(serials) if serials is not None else None
    return Counter((r[0], r[1], r[2], int(r[3]), int(r[4])) for r in rows if wanted is None or r[0] in wanted)


def diff(expected: Counter[PunchKey], actual: Counter[PunchKey]) -> str:
    """Short description of a multiset difference for assertion messages."""
    missing = expected - actual
    extra = actual - expected
    return (f"{sum(missing.values())} missing (e.g. {list(missing)[:3]}), "
            f"{sum(extra.values())} unexpected (e.g. {list(extra)[:3]})")


def clear_runs(db_url: str) -> list[Any]:
    """poll_runs rows of terminal clears (by `fpgw devices clear` or the clear_when_full_ratio policy)."""
    return [r for r in table_rows(db_url, s.poll_runs) if r["outcome"] == "cleared"]


def shrank_alerts(db_url: str) -> list[Any]:
    """Alert rows of logs that shrank without fpgw clearing them (keypad clears)."""
    return [a for a in table_rows(db_url, s.alerts) if a["problem"] == "log_shrank"]


def table_rows(db_url: str, table: Any, *where: Any) -> list[Any]:
    """All rows of a table (optionally filtered)."""
    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            q = select(table)
            for w in where:
                q = q.where(w)
            return list(conn.execute(q).mappings())
    finally:
        engine.dispose()

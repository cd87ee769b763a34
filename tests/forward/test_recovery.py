"""After an outage the forwarder notices the link is back within forward.outage_retry_max_s, not after an hour.

Runs are explicit ``run_once`` calls on a settable clock; the scheduler is a recorder standing in for
APScheduler's ``modify_job``, so nothing sleeps and nothing races a real schedule.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.config import Config
from gateway.forward.forwarder import Forwarder
from gateway.store.db import create_db_engine, upgrade
from gateway.store.outbox import Outbox
from gateway.store.punches import Store
from tests.support.central import make_forwarder
from tests.support.clock import FakeClock
from tests.support.config import forward_config
from tests.support.punches import punch_batch, store_punches

pytestmark = pytest.mark.timeout(60)
OFFICE = "1801.01"


@dataclass
class Link:
    """The office's link to the central: ``mode`` is up | down | timeout | http503 | http401."""

    mode: str = "down"
    requests: int = 0

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.requests += 1
        if self.mode == "down":
            raise httpx.ConnectError("connection refused", request=request)
        if self.mode == "timeout":
            raise httpx.ReadTimeout("timed out", request=request)
        if self.mode == "http503":
            return httpx.Response(503, text="<html>service unavailable</html>")
        if self.mode == "http401":
            return httpx.Response(401, json={"error": "bad_token", "message": "the token is not valid"})
        if request.url.path.endswith("/health"):
            return httpx.Response(200, json={"office_code": OFFICE, "devices": 0})
        doc = json.loads(request.content)
        return httpx.Response(200, json={"results": [{"index": i, "status": "accepted", "duplicate": False}
                                                     for i in range(len(doc["punches"]))]})


@dataclass
class SchedulerRecorder:
    """Records what the forwarder asks of the scheduler (only modify_job matters here)."""

    moved: list[tuple[str, datetime]] = field(default_factory=list)

    def modify_job(self, job_id: str, **changes: Any) -> None:
        self.moved.append((job_id, changes["next_run_time"]))


@dataclass
class Office:
    config: Config
    engine: Any
    link: Link
    clock: FakeClock
    scheduler: SchedulerRecorder
    fwd: Forwarder


@pytest.fixture
def office(db_url: str, tmp_path: Path) -> Iterator[Office]:
    # The shipped defaults of the back-off (5 s doubling up to an hour, outages capped at 60 s).
    config = forward_config(tmp_path, db_url, backoff_initial_s=5, backoff_max_s=3600)
    assert config.forward.outage_retry_max_s == 60
    engine = create_db_engine(db_url, pool_size=4)
    upgrade(engine)
    store = Store(engine, OFFICE)
    store.sync_devices(config.devices)
    store_punches(store, punch_batch(25))
    link, clock, scheduler = Link(), FakeClock(datetime.now(UTC) + timedelta(seconds=5)), SchedulerRecorder()
    fwd = make_forwarder(config, engine, transport=httpx.MockTransport(link.handler), rng=random.Random(3),
                         now=clock, scheduler=scheduler, health_every_s=3600)
    try:
        yield Office(config, engine, link, clock, scheduler, fwd)
    finally:
        fwd.stop(1)
        engine.dispose()


def _fail_until_the_backoff_is_saturated(office: Office, tries: int = 25) -> list[float]:
    """Run at each retry time ``tries`` times while the link fails; the waits the forwarder chose."""
    waits = []
    for _ in range(tries):
        before = office.link.requests
        report = office.fwd.run_once()
        assert report.error and office.link.requests > before  # a real try each time, not a skipped run
        assert office.fwd.retry_at is not None
        waits.append((office.fwd.retry_at - office.clock()).total_seconds())
        office.clock.now = office.fwd.retry_at
    return waits


@pytest.mark.parametrize("mode", ["down", "timeout", "http503"])
def test_a_long_outage_is_retried_at_least_every_outage_retry_max_s_and_recovery_is_seen_then(
        office: Office, mode: str) -> None:
    office.link.mode = mode
    waits = _fail_until_the_backoff_is_saturated(office)
    # 25 failures would mean up to an hour between tries; during an outage never more than 60 s, still jittered.
    assert max(waits) <= 60 and max(waits[-10:]) > 30 and len(set(waits)) > 10
    rows = Outbox(office.engine, "").claim_batch(100, office.clock() + timedelta(seconds=60))
    assert len(rows) == 25  # every waiting punch is due again within the cap too, not only the forwarder
    office.link.mode = "up"  # the link comes back right after a failed try...
    office.clock.now = office.fwd.retry_at  # ...and the very next run (at most 60 s later) sends everything
    report = office.fwd.run_once()
    assert report.accepted == 25 and report.error is None and Outbox(office.engine, "").stats().depth == 0


def test_each_outage_failure_moves_the_scheduled_run_to_the_retry_time(office: Office) -> None:
    office.link.mode = "down"
    office.fwd.run_once()
    assert office.scheduler.moved == [("forward", office.fwd.retry_at)]
    # Waiting for that time: the runs in between skip without asking the scheduler for anything.
    office.fwd.run_once()
    assert len(office.scheduler.moved) == 1
    office.clock.now = office.fwd.retry_at
    office.link.mode = "up"
    assert office.fwd.run_once().accepted == 25
    assert len(office.scheduler.moved) == 1  # back to the plain interval


def test_refusals_still_back_off_up_to_backoff_max_s(office: Office) -> None:
    office.link.mode = "http401"  # a revoked token: retrying every minute would change nothing
    waits = _fail_until_the_backoff_is_saturated(office)
    assert max(waits) > 600 and max(waits) <= 3600
    assert office.scheduler.moved == []


def test_outage_retry_max_s_is_a_setting(db_url: str, tmp_path: Path) -> None:
    config = forward_config(tmp_path, db_url, backoff_initial_s=5, backoff_max_s=3600, outage_retry_max_s="2m")
    assert config.forward.outage_retry_max_s == 120

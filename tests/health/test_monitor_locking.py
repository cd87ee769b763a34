"""The health monitor never holds its lock across a database write (issue 14): a poll thread whose health write
is slow does not hold up other devices' polls reporting in, and the changes still reach the database in order.

Deterministic: the slow write blocks on an Event the test releases; nothing is timed.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from apscheduler.schedulers.background import BackgroundScheduler
from prometheus_client import CollectorRegistry

from gateway.config import parse_config
from gateway.health.monitor import HealthMonitor
from gateway.models import DeviceHealth, PollOutcome
from gateway.services import AppContext
from gateway.store.central import CentralStore
from gateway.store.db import StorageUnavailable, create_db_engine, upgrade
from gateway.store.health import HealthRepo
from gateway.store.outbox import Outbox
from gateway.store.punches import Store

T0 = datetime(2026, 11, 3, 1, 0, tzinfo=UTC)
WAIT_S = 10.0


class GatedRepo(HealthRepo):
    """A HealthRepo whose ``record`` blocks (until released) while a chosen device's rows are in the batch."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.gate_device: str | None = None
        self.entered = threading.Event()
        self.release = threading.Event()
        self.fail_next = False
        self.recorded: list[list[tuple[str, str]]] = []

    def record(self, healths: Iterable[DeviceHealth], alerts: Sequence[dict[str, Any]]) -> list[int]:
        healths = list(healths)
        if self.gate_device is not None and any(h.device_id == self.gate_device for h in healths):
            self.gate_device = None
            self.entered.set()
            assert self.release.wait(WAIT_S), "test never released the slow write"
        if self.fail_next:
            self.fail_next = False
            raise StorageUnavailable("INSERT", {}, sqlite3.OperationalError("database is locked"))
        self.recorded.append([(a["device_id"], a["event"]) for a in alerts])
        return super().record(healths, alerts)


@pytest.fixture
def monitor(tmp_path: Path) -> Iterator[tuple[HealthMonitor, GatedRepo]]:
    url = f"sqlite:///{tmp_path / 'h.db'}"
    config = parse_config({"site": {"office_code": "T"}, "database": {"url": url},
                           "devices": [{"id": d, "address": f"127.0.0.{i + 1}"} for i, d in enumerate("abc")],
                           "health": {"offline_after_failures": 1, "offline_after_s": 60},
                           "alerts": {"reminder_s": 0}})
    engine = create_db_engine(url)
    upgrade(engine)
    store = Store(engine, "T")
    store.sync_devices(config.devices)
    repo = GatedRepo(engine, "T")
    ctx = AppContext(config=config, store=store, health_repo=repo, outbox=Outbox(engine, "T"),
                     central_store=CentralStore(engine), scheduler=BackgroundScheduler(),
                     metrics_registry=CollectorRegistry())
    mon = HealthMonitor(ctx, clock=lambda: T0)
    for d in ("a", "b", "c"):  # each answered once: the offline window counts from there
        mon.observe(PollOutcome(device_id=d, started_at=T0 - timedelta(seconds=1), finished_at=T0, ok=True))
    repo.recorded.clear()
    try:
        yield mon, repo
    finally:
        repo.release.set()
        engine.dispose()


def _failed(device: str, at: datetime) -> PollOutcome:
    return PollOutcome(device_id=device, started_at=at - timedelta(seconds=1), finished_at=at, ok=False,
                       error_kind="unreachable", error="timed out")


def test_a_slow_health_write_does_not_block_other_devices_reporting(
        monitor: tuple[HealthMonitor, GatedRepo]) -> None:
    mon, repo = monitor
    repo.gate_device = "a"
    # Device a's failure opens "offline" (1 failure, window passed): its write blocks in the repository.
    slow = threading.Thread(target=mon.observe, args=(_failed("a", T0 + timedelta(seconds=120)),))
    slow.start()
    try:
        assert repo.entered.wait(WAIT_S)
        # While a's write hangs, b and c report from their own poll threads and return.
        others = [threading.Thread(target=mon.observe, args=(_failed(d, T0 + timedelta(seconds=121)),))
                  for d in ("b", "c")]
        for t in others:
            t.start()
        for t in others:
            t.join(WAIT_S)
        assert not any(t.is_alive() for t in others), "observe of other devices waited for a's database write"
        # The model already knows (the back-off reads it) and the lock is free for readers.
        assert mon.consecutive_failures("b") == 1
        assert mon.snapshot()["c"].state == "offline"
    finally:
        repo.release.set()
        slow.join(WAIT_S)
    assert not slow.is_alive()
    # a's writer stored b's and c's queued changes after its own, in order; each start recorded once.
    events = [e for batch in repo.recorded for e in batch]
    assert events[0] == ("a", "start")
    assert sorted(events) == [("a", "start"), ("b", "start"), ("c", "start")]
    stored = {h.device_id: h for h in repo.load_health()}
    assert {d: stored[d].state for d in ("a", "b", "c")} == {"a": "offline", "b": "offline", "c": "offline"}


def test_a_failed_health_write_is_kept_and_stored_by_the_next_caller(
        monitor: tuple[HealthMonitor, GatedRepo]) -> None:
    mon, repo = monitor
    repo.fail_next = True
    mon.observe(_failed("a", T0 + timedelta(seconds=120)))
    assert repo.recorded == []
    assert [p.name for p in mon.gateway.snapshot()] == ["database_locked"]
    # The next device's report writes both, a's first: nothing lost, nothing logged twice.
    mon.observe(_failed("b", T0 + timedelta(seconds=121)))
    assert [e for batch in repo.recorded for e in batch] == [("a", "start"), ("b", "start")]
    assert {h.device_id for h in repo.load_health()} >= {"a", "b"}

"""Benchmark: what health monitoring costs a poll, a sweep, a status page and a /metrics scrape.

Where it sits: a standalone script over a temporary SQLite database (no devices needed); it prints
figures and ratios against a baseline measured in the same run, and asserts nothing about timing. Run:

    .venv/bin/python benchmarks/bench_health.py                 # 200 devices
    .venv/bin/python benchmarks/bench_health.py --devices 1000

Baseline: Store.save_poll of a "nothing new" poll, the write every poll already does. Compared with it:
(1) HealthTracker.record (pure, per outcome), (2) HealthMonitor.observe for a steady device (no
transition, so no database work), (3) observe when every poll is a transition (health row + alert row
written in one transaction), (4) one sweep over all devices, (5) the /status document, (6) a /metrics scrape.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import structlog
from apscheduler.schedulers.background import BackgroundScheduler
from prometheus_client import CollectorRegistry, generate_latest

from drivers.base import Counts, DeviceInfo
from gateway.config import parse_config
from gateway.health.monitor import HealthMonitor
from gateway.health.tracker import HealthTracker
from gateway.models import PollOutcome
from gateway.services import AppContext
from gateway.store.central import CentralStore
from gateway.store.db import create_db_engine, upgrade
from gateway.store.health import HealthRepo
from gateway.store.outbox import Outbox
from gateway.store.punches import Store
from gateway.web import metrics
from gateway.web.status import StatusView


def per_call(fn: Callable[[int], Any], n: int, repeat: int = 3) -> float:
    """Median over ``repeat`` runs of the mean seconds per call of fn(i) for i in range(n)."""
    runs = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        for i in range(n):
            fn(i)
        runs.append((time.perf_counter() - t0) / n)
    return statistics.median(runs)


def outcome(device_id: str, at: datetime, skew: float = 0.0) -> PollOutcome:
    info = DeviceInfo(serial=f"SN-{device_id}", firmware="Ver 6.60", device_time=at.replace(tzinfo=None))
    return PollOutcome(device_id=device_id, started_at=at - timedelta(seconds=0.05), finished_at=at, ok=True,
                       mode="count", serial=info.serial, info=info,
                       counts=Counts(records=5000, users=300, records_cap=100_000, users_cap=3000),
                       previous_record_count=5000, previous_firmware="Ver 6.60", clock_skew_s=skew)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devices", type=int, default=200)
    ap.add_argument("--polls", type=int, default=2000, help="outcomes per figure")
    args = ap.parse_args()
    # The transition case logs one line per alert by design; keep the output to the figures.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    logging.disable(logging.WARNING)

    devices = [{"id": f"d{i:04d}", "address": f"10.0.{i // 250}.{i % 250 + 1}"} for i in range(args.devices)]
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'bench.db'}"
        config = parse_config({"site": {"office_code": "BENCH"}, "database": {"url": url}, "devices": devices,
                               "health": {"clock_skew_warn_s": 60}, "alerts": {"reminder_s": 0},
                               "polling": {"interval_s": 300}})
        engine = create_db_engine(url)
        upgrade(engine)
        store = Store(engine, "BENCH")
        store.sync_devices(config.devices)
        ids = [d.id for d in config.devices]
        now = datetime.now(UTC)
        for i, dev in enumerate(ids):  # one good poll each, so rows are realistic
            store.save_poll(outcome(dev, now + timedelta(milliseconds=i)))

        base = per_call(lambda i: store.save_poll(outcome(ids[i % len(ids)], now + timedelta(seconds=1 + i))),
                        args.polls)

        tracker = HealthTracker(config)
        for dev in ids:
            tracker.record(outcome(dev, now))
        pure = per_call(lambda i: tracker.record(outcome(ids[i % len(ids)], now + timedelta(seconds=2 + i))),
                        args.polls)

        ctx = AppContext(config=config, store=store, health_repo=HealthRepo(engine, config.site.office_code),
                         outbox=Outbox(engine, config.site.office_code), central_store=CentralStore(engine),
                         scheduler=BackgroundScheduler(), metrics_registry=CollectorRegistry())
        monitor = HealthMonitor(ctx)
        ctx.health = monitor
        for svc in metrics.services(ctx):
            svc.start()
        monitor.start()
        try:
            for dev in ids:
                monitor.observe(outcome(dev, now))
            steady = per_call(lambda i: monitor.observe(outcome(ids[i % len(ids)], now + timedelta(seconds=3 + i))),
                              args.polls)
            # Skew flaps over/under the limit on every poll: a start or end transition each time.
            flap = per_call(lambda i: monitor.observe(outcome(ids[i % len(ids)], now + timedelta(seconds=4 + i),
                                                              skew=600.0 if (i // len(ids)) % 2 == 0 else 0.0)),
                            max(args.polls // 4, len(ids)), repeat=1)
            sweep = per_call(lambda i: monitor.sweep(now + timedelta(minutes=10 + i)), 20)
            view = StatusView(ctx)
            status = per_call(lambda i: view.document(), 10)
            page = per_call(lambda i: view.page(view.document()), 10)
            scrape = per_call(lambda i: generate_latest(ctx.metrics_registry), 10)  # type: ignore[arg-type]
        finally:
            monitor.stop(5)
            engine.dispose()

    print(f"\nHealth monitoring cost, {args.devices} devices, SQLite on local disk (mean per call, median of runs)")
    print(f"{'what':<58} {'ms':>9} {'x baseline':>11}")
    rows = [
        ("baseline: Store.save_poll, 'nothing new' poll", base),
        ("(1) HealthTracker.record (pure)", pure),
        ("(2) HealthMonitor.observe, steady device (no transition)", steady),
        ("(3) HealthMonitor.observe, transition every poll (DB+alert)", flap),
        (f"(4) sweep over {args.devices} devices", sweep),
        (f"(5) /status document, {args.devices} devices", status),
        (f"(5b) status page HTML, {args.devices} devices", page),
        (f"(6) /metrics scrape, {args.devices} devices", scrape),
    ]
    for name, secs in rows:
        print(f"{name:<58} {secs * 1000:>9.3f} {secs / base:>10.2f}x")


if __name__ == "__main__":
    main()

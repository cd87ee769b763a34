"""Forwarding throughput end to end: office outbox (SQLite) -> HTTP on loopback -> central API -> central store.

Measures punches/s drained by the real Forwarder into a real CentralApi served by uvicorn, with batching
(forward.batch_size, default 500) against one punch per request, both measured in the same run on the
same machine. The central store is PostgreSQL when --pg-url or GW_TEST_PG_URL is given (a fresh
database is created and dropped), else a SQLite file.

    .venv/bin/python benchmarks/bench_forward.py [--punches 20000] [--baseline-punches 1000] [--pg-url URL]
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import structlog
from sqlalchemy import func, select
from sqlalchemy.engine import make_url

from gateway.central.api import CentralApi
from gateway.central.tokens import add_token
from gateway.config import CentralConfig, parse_config
from gateway.store import schema as s
from gateway.store.central import CentralStore
from gateway.store.db import create_db_engine, upgrade
from gateway.store.outbox import Outbox
from gateway.store.punches import Store
from gateway.web.server import ThreadedServer
from tests.support.central import make_forwarder
from tests.support.pg import fresh_database
from tests.support.punches import make_punch, store_punches

OFFICE = "1801.01"


def office_db(path: Path, n: int, serial: str) -> tuple[str, int]:
    """A gateway SQLite database with n punches waiting in the outbox."""
    url = f"sqlite:///{path}"
    engine = create_db_engine(url)
    upgrade(engine)
    store = Store(engine, OFFICE)
    cfg = parse_config({"site": {"office_code": OFFICE}, "database": {"url": url},
                        "devices": [{"id": "lobby", "address": "127.0.0.1"}]})
    store.sync_devices(cfg.devices)
    base = datetime(2026, 1, 5, 7, 0)
    rng = random.Random(serial)
    for start in range(0, n, 5000):
        items = []
        for i in range(start, min(n, start + 5000)):
            items.append(make_punch(str(rng.randint(1, 3000)), base + timedelta(seconds=37 * i), office_code=OFFICE,
                                    serial=serial, state=i % 2, employee_id=f"1980{i:010d}", uid=i % 3000))
        store_punches(store, items)
    depth = Outbox(engine, "").stats().depth
    engine.dispose()
    return url, depth


def drain(office_url: str, central_url: str, token_file: Path, batch_size: int) -> tuple[int, float, int]:
    """(punches forwarded, seconds, requests) for one complete drain."""
    cfg = parse_config({"site": {"office_code": OFFICE}, "database": {"url": office_url},
                        "devices": [{"id": "lobby", "address": "127.0.0.1"}],
                        "forward": {"url": central_url, "token_file": str(token_file), "batch_size": batch_size,
                                    "timeout_s": 60}})
    engine = create_db_engine(office_url)
    fwd = make_forwarder(cfg, engine, health_every_s=1e9)
    fwd._next_health_at = datetime.now(UTC) + timedelta(days=1)  # measure punches only
    try:
        t0 = time.perf_counter()
        report = fwd.run_once()
        elapsed = time.perf_counter() - t0
        left = Outbox(engine, "").stats().depth
    finally:
        fwd.stop(5)
        engine.dispose()
    if report.error or left:
        raise SystemExit(f"drain failed: error={report.error} left={left}")
    return report.accepted, elapsed, report.requests


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--punches", type=int, default=20000, help="punches forwarded with batching")
    ap.add_argument("--baseline-punches", type=int, default=1000, help="punches forwarded one per request")
    ap.add_argument("--batch-size", type=int, default=500)
    ap.add_argument("--pg-url", default=os.environ.get("GW_TEST_PG_URL", ""), help="PostgreSQL server for the centre")
    args = ap.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(30))  # warnings and up only

    tmp = Path(tempfile.mkdtemp(prefix="fpgw-bench-"))
    with ExitStack() as stack:
        if args.pg_url:
            central_db = stack.enter_context(fresh_database(args.pg_url, prefix="fpgw_bench"))
        else:
            central_db = f"sqlite:///{tmp / 'central.db'}"
        engine = create_db_engine(central_db, pool_size=8)
        upgrade(engine)
        token_file = tmp / "gw.token"
        token_file.write_text(add_token(tmp / "gateways.toml", "office", [OFFICE], "gateway"))
        add_token(tmp / "api.toml", "bkd", None, "api")
        api = CentralApi(CentralConfig(enabled=True, gateway_tokens_file=tmp / "gateways.toml",
                                       api_tokens_file=tmp / "api.toml", max_batch=10000), CentralStore(engine))
        batched_db, n1 = office_db(tmp / "office-batched.db", args.punches, "BENCH-BATCHED")
        single_db, n2 = office_db(tmp / "office-single.db", args.baseline_punches, "BENCH-SINGLE")
        with ThreadedServer(api.app()) as server:
            sent1, t1, req1 = drain(batched_db, server.url, token_file, args.batch_size)
            sent2, t2, req2 = drain(single_db, server.url, token_file, 1)
        with engine.connect() as conn:
            stored = conn.execute(select(func.count()).select_from(s.punches)).scalar_one()
        engine.dispose()
    assert sent1 == n1 and sent2 == n2 and stored == n1 + n2, (sent1, n1, sent2, n2, stored)
    rate1, rate2 = sent1 / t1, sent2 / t2
    print(f"central store:           {make_url(central_db).get_backend_name()}")
    print(f"batched  (batch {args.batch_size:>5}):  {sent1:>7} punches in {t1:7.2f} s, {req1:>5} requests -> "
          f"{rate1:9.0f} punches/s")
    print(f"baseline (1 per request): {sent2:>7} punches in {t2:7.2f} s, {req2:>5} requests -> "
          f"{rate2:9.0f} punches/s")
    print(f"speed-up from batching:   {rate1 / rate2:.1f}x")
    print(f"central store holds {stored} punches (= {n1} + {n2}, each exactly once)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

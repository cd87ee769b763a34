"""Benchmark: punches stored per second on SQLite and PostgreSQL (gateway.store.punches).

Where it sits: a standalone script over the real store code; prints figures and ratios, asserts
nothing about timing. Baseline measured in the same run: row-by-row inserts (one INSERT ... ON
CONFLICT DO NOTHING per punch, same single transaction) -- what a naive gateway does. Then the
store's batch insert (multi-VALUES on SQLite, one array per column on PostgreSQL), and a re-insert
pass where every punch is a duplicate (the steady-state "full reconcile" case).

    .venv/bin/python benchmarks/bench_store.py                 # 20,000 punches
    GW_TEST_PG_URL=postgresql+psycopg://postgres@127.0.0.1:5432/postgres .venv/bin/python benchmarks/bench_store.py
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import Engine

from gateway.logs import setup_logging
from gateway.models import Punch
from gateway.store.db import create_db_engine, upgrade, writer
from gateway.store.punches import PUNCH_KEY, insert_ignore, insert_punches, punch_row
from gateway.store.schema import punches as punches_table
from tests.support.pg import fresh_database
from tests.support.punches import make_punch


def make_punches(n: int, serial: str) -> list[Punch]:
    """n distinct punches of 300 users, one every 7 s, like a busy terminal's log."""
    base = datetime(2026, 1, 5, 6, 30)
    out = []
    for i in range(n):
        out.append(make_punch(str(198001012005011000 + i % 300), base + timedelta(seconds=7 * i), serial=serial,
                              state=i % 2, state_name="check_in" if i % 2 == 0 else "check_out",
                              verify_name="fingerprint", uid=1 + i % 300))
    return out


def row_by_row(engine: Engine, punches: list[Punch]) -> int:
    """Baseline: one statement per punch inside one transaction."""
    now = datetime.now(UTC)
    new = 0
    with writer(engine).begin() as conn:
        stmt = insert_ignore(conn, punches_table, PUNCH_KEY).returning(punches_table.c.id)
        for p in punches:
            new += len(conn.execute(stmt, punch_row(p, now)).all())
    return new


def batched(engine: Engine, punches: list[Punch]) -> int:
    """The store's path (what Store.save_poll runs)."""
    with writer(engine).begin() as conn:
        return len(insert_punches(conn, punches, received_at=datetime.now(UTC)))


def timed(fn: Callable[[], int]) -> tuple[float, int]:
    t0 = time.perf_counter()
    n = fn()
    return time.perf_counter() - t0, n


def bench(label: str, url: str, n: int, baseline_n: int) -> None:
    engine = create_db_engine(url)
    try:
        upgrade(engine)
        base_p = make_punches(baseline_n, f"{label}-BASE")
        main_p = make_punches(n, f"{label}-MAIN")
        t_row, new_row = timed(lambda: row_by_row(engine, base_p))
        t_batch, new_batch = timed(lambda: batched(engine, main_p))
        t_dup, new_dup = timed(lambda: batched(engine, main_p))
        assert (new_row, new_batch, new_dup) == (baseline_n, n, 0), (new_row, new_batch, new_dup)
        rate_row, rate_batch, rate_dup = baseline_n / t_row, n / t_batch, n / t_dup
        print(f"{label:<10} row-by-row baseline : {rate_row:>9,.0f} punches/s  ({baseline_n:,} in {t_row:.2f} s)")
        print(f"{label:<10} batch insert        : {rate_batch:>9,.0f} punches/s  ({n:,} in {t_batch:.2f} s)"
              f"  = {rate_batch / rate_row:.1f}x baseline")
        print(f"{label:<10} re-insert, all dups : {rate_dup:>9,.0f} punches/s  ({n:,} in {t_dup:.2f} s, 0 new)"
              f"  = {rate_dup / rate_row:.1f}x baseline")
    finally:
        engine.dispose()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=20000, help="punches per batch pass (default 20000)")
    ap.add_argument("--baseline-n", type=int, default=5000, help="punches for the row-by-row baseline")
    args = ap.parse_args()
    setup_logging("console", "warning")
    print(f"fpgw store benchmark: {args.n:,} punches per pass (baseline {args.baseline_n:,})\n")
    with tempfile.TemporaryDirectory() as tmp:
        bench("sqlite", f"sqlite:///{Path(tmp) / 'bench.db'}", args.n, args.baseline_n)
    pg = os.environ.get("GW_TEST_PG_URL")
    if not pg:
        print("postgresql SKIPPED: set GW_TEST_PG_URL=postgresql+psycopg://user@host:port/db to include it")
        return
    with fresh_database(pg, prefix="fpgw_bench") as url:
        bench("postgresql", url, args.n, args.baseline_n)


if __name__ == "__main__":
    main()

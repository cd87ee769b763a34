"""Benchmark: the pull API's queries on a big punches table, partitioned by month against unpartitioned (PostgreSQL).

Where it sits: a standalone script over the real read path (gateway.store.central.CentralStore.feed and
iter_punches: what GET /api/v1/punches, the recap and `fpgw export` run) on two databases of the same server,
filled with the same generated punches in the same run: one at the head revision (punches partitioned by month,
migration 0011_partitions) and one at 0010_dashboard_accounts (the unpartitioned table: the baseline). The fill
is generated in SQL (INSERT ... SELECT generate_series: tens of millions of rows through the Python ingest would
take hours on the shared machine); rows are in time order, ``ofc`` offices with ``users`` staff each, as a
regency's or a province's central receives them. Scale is printed.

    .venv/bin/python benchmarks/bench_partitions.py                  # 5,000,000 rows over 12 months
    .venv/bin/python benchmarks/bench_partitions.py --rows 20000000  # as far as the machine allows
    .venv/bin/python benchmarks/bench_partitions.py --quick          # tiny sizes, no verdicts
    GW_TEST_PG_URL=postgresql+psycopg://postgres@127.0.0.1:5432/postgres .venv/bin/python benchmarks/bench_partitions.py

Without GW_TEST_PG_URL the script starts a throwaway local cluster (tests.support.pg) when PostgreSQL server
binaries exist, else prints a note and measures nothing. Rows (partitioned, and the ratio to unpartitioned):
feed page of 1,000 at a recent cursor (goal <= 50 ms and <= 2x unpartitioned), one office's day (goal <= 100
ms), the whole nation's day (every page; figure per 1,000 rows), the maintenance run and migration 0011 of the
filled unpartitioned table (figures).
"""

from __future__ import annotations

import os
import random
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack
from datetime import date, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.harness import Report, bench_args
from gateway.logs import setup_logging
from gateway.store import partitions as parts
from gateway.store.central import CentralStore, PunchQuery
from gateway.store.db import Engine, _alembic_config, create_db_engine, upgrade, writer
from tests.support import pg

FIRST_MONTH = date(2025, 12, 1)
MONTHS = 12
OFFICES = 500


def _fill_sql(rows: int, offices: int) -> str:
    """Rows in time order over MONTHS months from FIRST_MONTH: office, terminal and user spread like a tier's."""
    seconds = (parts.add_months(FIRST_MONTH, MONTHS) - FIRST_MONTH).days * 86400
    return f"""
        INSERT INTO punches (office_code, device_id, device_serial, device_user_id, device_time, local_time, utc_time,
                             timezone, state, state_name, verify, verify_name, uid, workcode, raw_time, employee_id,
                             flags, received_at, source, occurrence)
        SELECT 'O' || lpad(mod(g, {offices})::text, 4, '0'), 'dev' || mod(g, 3),
               'SN' || mod(g, {offices}) || '-' || mod(g, 3),
               mod(g, 997)::text, to_char(t, 'YYYY-MM-DD HH24:MI:SS'), t, (t - interval '7 hours') AT TIME ZONE 'UTC',
               'Asia/Jakarta', 0, 'check_in', 1, 'finger', 0, 0, -1, 'NIP' || mod(g, 997), '',
               (t - interval '7 hours') AT TIME ZONE 'UTC', 'forward', 0
        FROM (SELECT g, timestamp '{FIRST_MONTH:%Y-%m-%d}' + (g::bigint * {seconds} / {rows}) * interval '1 second' AS t
              FROM generate_series(1, {rows}) g) s
        ORDER BY g
        ON CONFLICT DO NOTHING"""


def build(url: str, revision: str | None, rows: int, offices: int) -> tuple[Engine, float]:
    """A database at ``revision`` (None = head) filled with the generated rows; (engine, fill seconds)."""
    from alembic import command

    engine = create_db_engine(url, pool_size=2)
    if revision is None:
        upgrade(engine)
        # Every month of the fill gets its partition first (as the maintenance job keeps them ahead).
        parts.ensure_partitions(engine, today=FIRST_MONTH, months_ahead=MONTHS)
    else:
        with writer(engine).begin() as conn:
            command.upgrade(_alembic_config(conn), revision)
    t0 = time.perf_counter()
    with writer(engine).begin() as conn:
        conn.exec_driver_sql(_fill_sql(rows, offices))
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("VACUUM ANALYZE punches")
    return engine, time.perf_counter() - t0


def timed_pair(fns: dict[str, Callable[[], object]], repeat: int) -> dict[str, float]:
    """Median seconds of each function over ``repeat`` runs, the functions taking turns (after one warm-up each),
    so that the shared machine's load falls on both tables alike."""
    for fn in fns.values():
        fn()
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeat):
        for key, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            samples[key].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in samples.items()}


def measure(engines: dict[str, Engine], rows: int, offices: int, repeat: int) -> dict[str, dict[str, float]]:
    """Seconds of each pull query on each database (same queries, same arguments, taking turns)."""
    stores = {k: CentralStore(e) for k, e in engines.items()}
    rng = random.Random(15)
    cursors = [rows - rng.randrange(1000, max(1001, rows // 100)) for _ in range(repeat + 1)]
    day = parts.add_months(FIRST_MONTH, MONTHS - 2) + timedelta(days=9)
    office_day = PunchQuery(office_code=f"O{rng.randrange(offices):04d}", date_from=day, date_to=day)
    nation_day = PunchQuery(date_from=day, date_to=day)
    out: dict[str, dict[str, float]] = {k: {} for k in engines}

    def feed_pages(store: CentralStore) -> Callable[[], object]:
        turn = iter(cursors * 2)
        return lambda: store.feed(PunchQuery(), next(turn), 1000)

    for name, make, times in (
            ("feed_page", feed_pages, repeat),
            ("office_day", lambda st: (lambda: list(st.iter_punches(office_day))), repeat),
            ("nation_day", lambda st: (lambda: list(st.iter_punches(nation_day))), max(1, repeat // 3))):
        for key, seconds in timed_pair({k: make(st) for k, st in stores.items()}, times).items():
            out[key][name] = seconds
    for key, st in stores.items():
        out[key]["nation_day_rows"] = float(len(list(st.iter_punches(nation_day))))
    return out


def main() -> int:
    args = bench_args(__doc__, extra=lambda ap: (
        ap.add_argument("--rows", type=int, help="rows in each table (default 5,000,000; --quick 20,000)"),
        ap.add_argument("--offices", type=int, default=OFFICES, help="offices the rows are spread over")))
    setup_logging("console", "warning")
    rows = args.rows or (20_000 if args.quick else 5_000_000)
    repeat = 3 if args.quick else 15
    report = Report("bench_partitions", quick=args.quick)
    with ExitStack() as stack:
        server = os.environ.get(pg.URL_ENV)
        if not server:
            try:
                server, stop = pg.start_server()
            except pg.PgUnavailable as exc:
                report.note(f"PostgreSQL rows skipped: {exc}")
                report.finish(args.json)
                print("feed page: skipped (no PostgreSQL)")
                return 0
            stack.callback(stop)
        report.note(f"scale: {rows:,} rows in each table, {args.offices} offices, {MONTHS} months from "
                    f"{FIRST_MONTH:%Y-%m}; the machine is shared, compare the ratios")
        engines: dict[str, Engine] = {}
        for label, revision in (("partitioned", None), ("unpartitioned", "0010_dashboard_accounts")):
            url = stack.enter_context(pg.fresh_database(server, prefix="fpgw_bench"))
            engine, fill_s = build(url, revision, rows, args.offices)
            stack.callback(engine.dispose)
            engines[label] = engine
            report.figure(f"fill_{label}", f"fill {label} table ({rows:,} rows, SQL-generated)", measured=fill_s,
                          unit="s")
        results = measure(engines, rows, args.offices, repeat)
        t0 = time.perf_counter()
        parts.maintain(engines["partitioned"], today=parts.add_months(FIRST_MONTH, MONTHS - 1), months_ahead=3)
        report.figure("maintain", "maintenance run (months ahead, default partition empty)",
                      measured=time.perf_counter() - t0, unit="s")
        # The real migration of an existing table (docs/scale-out.md "Migrating an existing central").
        t0 = time.perf_counter()
        upgrade(engines["unpartitioned"])
        took = time.perf_counter() - t0
        report.figure("migrate", f"migration 0011_partitions of the unpartitioned table ({rows:,} rows)",
                      measured=took, unit="s", detail=f"{rows / max(took, 1e-9):,.0f} rows/s")
        p, u = results["partitioned"], results["unpartitioned"]
        ms = 1000.0
        report.at_most("feed_page", "feed page of 1,000 at a recent cursor (partitioned)",
                       measured=p["feed_page"] * ms, goal=50, unit="ms",
                       detail=f"unpartitioned {u['feed_page'] * ms:.1f} ms")
        report.at_most("feed_ratio", "feed page: partitioned / unpartitioned",
                       measured=p["feed_page"] / u["feed_page"], goal=2.0, unit="x")
        report.at_most("office_day", "one office's day, every page (partitioned)", measured=p["office_day"] * ms,
                       goal=100, unit="ms", detail=f"unpartitioned {u['office_day'] * ms:.1f} ms")
        report.figure("office_day_ratio", "one office's day: partitioned / unpartitioned",
                      measured=p["office_day"] / u["office_day"], unit="x")
        per_k = 1000.0 / max(p["nation_day_rows"], 1)
        report.figure("nation_day", f"whole nation's day, every page ({p['nation_day_rows']:.0f} rows, partitioned)",
                      measured=p["nation_day"] * ms, unit="ms",
                      detail=f"{p['nation_day'] * ms * per_k:.2f} ms per 1,000 rows; unpartitioned "
                             f"{u['nation_day'] * ms:.1f} ms")
        report.figure("nation_day_ratio", "whole nation's day: partitioned / unpartitioned",
                      measured=p["nation_day"] / u["nation_day"], unit="x")
        report.finish(args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())

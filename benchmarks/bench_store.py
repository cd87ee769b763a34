"""Benchmark: Store.save_poll on SQLite and PostgreSQL - new punches, a full reconcile, many pollers at once.

Where it sits: a standalone script over the real store code (gateway.store.punches.Store.save_poll: punches +
outbox rows + device row + poll_runs row in one transaction); prints figures and ratios, asserts nothing about
timing. The baseline is measured in the same run: the same save_poll with the punch insert it had before issue
14 (SQLAlchemy executemany with per-row parameter processing; a copy is kept below, not in the product).

    .venv/bin/python benchmarks/bench_store.py                  # 100k punches; 256 threads
    .venv/bin/python benchmarks/bench_store.py --quick          # tiny sizes, no verdicts
    GW_TEST_PG_URL=postgresql+psycopg://postgres@127.0.0.1:5432/postgres .venv/bin/python benchmarks/bench_store.py

Rows, per engine: new punches/s with N in one poll and in 1,000-punch polls (goal >= 50,000/s each),
duplicates/s when a full reconcile re-stores N already-stored punches (goal >= 200,000/s); and the same new
punches on a database at the schema before migration 0007_punch_indexes against today's (figures). SQLite only: T
threads each saving small polls at once, through the store's writer and through the old unserialized
writer: "database is locked" errors (goal 0) and polls saved per second.
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import Engine, text
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.engine import Connection

from benchmarks.harness import Report, bench_args
from drivers.base import Counts, DeviceInfo
from gateway.config import parse_config
from gateway.logs import setup_logging
from gateway.models import PollOutcome, Punch
from gateway.store import db as store_db
from gateway.store import punches as store_punches
from gateway.store import schema as s
from gateway.store.db import StorageError, create_db_engine, upgrade
from gateway.store.punches import PUNCH_KEY, Store, insert_ignore, punch_row
from tests.support.pg import fresh_database
from tests.support.punches import make_punch

OFFICE = "1801.01.02"
PunchKey = tuple[str, str, str, int]


# -- the baseline: save_poll's punch insert before issue 14 (SQLAlchemy, per-row parameter processing) ------

def old_insert_punch_rows(conn: Connection, punches: Iterable[Punch], *, received_at: datetime,
                          source: str = "poll", outbox_at: datetime | None = None,
                          trust_stored_read: bool = False) -> list[tuple[int, PunchKey]]:
    """The pre-issue-14 insert: SQLite multi-VALUES through insertmanyvalues, PostgreSQL unnest arrays, then
    the outbox rows by executemany (as save_poll did). ``trust_stored_read`` is today's (ignored here)."""
    rows = (_old_pg if conn.dialect.name == "postgresql" else _old_sqlite)(conn, punches, received_at, source)
    if outbox_at is not None and rows:
        conn.execute(s.outbox.insert(), [{"punch_id": r[0], "state": "pending", "attempts": 0,
                                          "next_attempt_at": outbox_at, "created_at": outbox_at} for r in rows])
    return rows


def _old_sqlite(conn: Connection, punches: Iterable[Punch], received_at: datetime,
                source: str) -> list[tuple[int, PunchKey]]:
    new_rows: list[tuple[int, PunchKey]] = []
    batch: list[dict[str, Any]] = []
    c = s.punches.c

    def flush() -> None:
        if not batch:
            return
        stmt = insert_ignore(conn, s.punches, PUNCH_KEY).returning(c.id, c.device_serial, c.device_user_id,
                                                                    c.device_time, c.occurrence)
        new_rows.extend((r[0], (r[1], r[2], r[3], r[4])) for r in conn.execute(stmt, batch))
        batch.clear()

    for p in punches:
        batch.append(punch_row(p, received_at, source))
        if len(batch) >= 500:
            flush()
    flush()
    return new_rows


def _old_pg(conn: Connection, punches: Iterable[Punch], received_at: datetime,
            source: str) -> list[tuple[int, PunchKey]]:
    dialect = pg_dialect.dialect()
    names = list(store_punches.PUNCH_COLUMNS)
    casts = ", ".join(f"CAST(:{n} AS {s.punches.c[n].type.compile(dialect=dialect)}[])" for n in names)
    stmt = text(f"INSERT INTO punches ({', '.join(names)}) SELECT * FROM unnest({casts}) "
                f"ON CONFLICT ({', '.join(PUNCH_KEY)}) DO NOTHING "
                "RETURNING id, device_serial, device_user_id, device_time, occurrence")
    new_rows: list[tuple[int, PunchKey]] = []
    batch: list[dict[str, Any]] = []

    def flush() -> None:
        if not batch:
            return
        params = {name: [row[name] for row in batch] for name in batch[0]}
        new_rows.extend((r[0], (r[1], r[2], r[3], r[4])) for r in conn.execute(stmt, params))
        batch.clear()

    for p in punches:
        batch.append(punch_row(p, received_at, source))
        if len(batch) >= 2000:
            flush()
    flush()
    return new_rows


@contextmanager
def old_insert() -> Iterator[None]:
    """save_poll with the baseline insert (restored afterwards)."""
    fast = store_punches._insert_punch_rows
    store_punches._insert_punch_rows = old_insert_punch_rows  # type: ignore[assignment]
    try:
        yield
    finally:
        store_punches._insert_punch_rows = fast


@contextmanager
def lock_only_writer() -> Iterator[None]:
    """The alternative to group commit, for comparison: each save_poll in its own transaction under the
    writer lock (restored afterwards)."""
    run = store_db.Writer.run

    def inline(self: store_db.Writer, work: Callable[[Connection], Any]) -> Any:
        with self.begin() as conn:
            return work(conn)

    store_db.Writer.run = inline  # type: ignore[method-assign]
    try:
        yield
    finally:
        store_db.Writer.run = run  # type: ignore[method-assign]


@contextmanager
def unserialized_writer() -> Iterator[None]:
    """Write transactions as before issue 14: BEGIN IMMEDIATE only, no in-process writer (restored afterwards)."""
    lock = store_db._write_lock
    store_db._write_lock = lambda engine: None  # type: ignore[assignment,return-value]
    try:
        yield
    finally:
        store_db._write_lock = lock


# -- workload -------------------------------------------------------------------------------------------

def make_punches(n: int, serial: str, device_id: str, start: int = 0) -> list[Punch]:
    """n distinct punches of 300 users, one every 7 s, like a busy terminal's log; each user mapped to an employee
    id (NIP), as on a gateway that feeds the BKD (an unmapped punch has employee_id NULL, which indexes cheaper)."""
    base = datetime(2026, 1, 5, 6, 30)
    return [make_punch(str(198001012005011000 + i % 300), base + timedelta(seconds=7 * i), serial=serial,
                       device_id=device_id, office_code=OFFICE, state=i % 2,
                       state_name="check_in" if i % 2 == 0 else "check_out", verify_name="fingerprint",
                       uid=1 + i % 300, employee_id=f"NIP{198001012005011000 + i % 300}")
            for i in range(start, start + n)]


def outcome(device_id: str, serial: str, records: int) -> PollOutcome:
    now = datetime.now(UTC)
    return PollOutcome(device_id=device_id, started_at=now - timedelta(seconds=1), finished_at=now, ok=True,
                       mode="full", serial=serial, info=DeviceInfo(serial, "Ver 6.60", "ZEM560"),
                       counts=Counts(records=records, users=300, records_cap=200000, users_cap=3000),
                       records_read=records)


def new_store(engine: Engine, devices: list[str]) -> Store:
    store = Store(engine, OFFICE)
    config = parse_config({"site": {"office_code": OFFICE},
                           "devices": [{"id": d, "address": f"10.0.{i // 250}.{i % 250 + 1}"}
                                       for i, d in enumerate(devices)]}, base_dir=Path.cwd())
    store.sync_devices(config.devices)
    return store


def save_polls(store: Store, device: str, serial: str, polls: list[list[Punch]], expect_new: bool) -> float:
    """Seconds to save the polls one after the other (forward=True: outbox rows as the daemon writes them)."""
    total = 0
    t0 = time.perf_counter()
    for batch in polls:
        total += len(batch)
        result = store.save_poll(outcome(device, serial, total), batch, forward=True, address=("10.0.0.1", 4370))
        expected = len(batch) if expect_new else 0
        if result.new_punches != expected:
            raise RuntimeError(f"{device}: {result.new_punches} new punches, expected {expected}")
    return time.perf_counter() - t0


def rate(n: int, seconds: float) -> float:
    return n / seconds if seconds > 0 else float("inf")


#: The last schema before migration 0007_punch_indexes (punch key user-before-time, five indexes, outbox FK).
OLD_SCHEMA = "0006_quarantine"


def migrate_to(engine: Engine, revision: str | None) -> None:
    """The database at ``revision`` (None: at head, as the daemon leaves it)."""
    if revision is None:
        upgrade(engine)
        return
    from alembic import command

    with store_db.writer(engine).begin() as conn:
        command.upgrade(store_db._alembic_config(conn), revision)


def bench_new_punches(url: str, n: int, poll_size: int, polls: int, revision: str | None) -> tuple[float, float]:
    """Seconds for N new punches in one poll and for polls x poll_size new punches, on a database at ``revision``
    holding N punches of another terminal first (an index grows as the table does)."""
    engine = create_db_engine(url)
    try:
        migrate_to(engine, revision)
        store = new_store(engine, ["fill", "big", "small"])
        save_polls(store, "fill", "SN-fill", [make_punches(n, "SN-fill", "fill")], True)
        t_big = save_polls(store, "big", "SN-big", [make_punches(n, "SN-big", "big")], True)
        small = [make_punches(poll_size, "SN-small", "small", start=k * poll_size) for k in range(polls)]
        t_small = save_polls(store, "small", "SN-small", small, True)
        return t_big, t_small
    finally:
        engine.dispose()


def bench_schema(report: Report, label: str, urls: tuple[str, str], n: int, poll_size: int, polls: int) -> None:
    """The same save_poll (today's code) on the schema before 0007_punch_indexes and on today's, same workload."""
    old = bench_new_punches(urls[0], n, poll_size, polls, OLD_SCHEMA)
    new = bench_new_punches(urls[1], n, poll_size, polls, None)
    for i, (what, count) in enumerate(((f"{n:,} in one poll", n), (f"{polls} polls of {poll_size:,}",
                                                                    poll_size * polls))):
        report.figure(f"{label}.schema.{('one_poll', 'small_polls')[i]}", f"{label}: new punches/s, {what}, "
                      f"schema {OLD_SCHEMA} -> today's", measured=rate(count, new[i]), unit="punches/s",
                      detail=f"{OLD_SCHEMA}: {rate(count, old[i]):,.0f}/s; {old[i] / new[i]:.2f}x")


def bench_engine(report: Report, label: str, url: str, n: int, poll_size: int, polls: int) -> None:
    engine = create_db_engine(url)
    try:
        upgrade(engine)
        store = new_store(engine, ["big-old", "big-new", "small-old", "small-new"])
        big = {d: make_punches(n, f"{label}-{d}", d) for d in ("big-old", "big-new")}
        small = {d: [make_punches(poll_size, f"{label}-{d}", d, start=k * poll_size) for k in range(polls)]
                 for d in ("small-old", "small-new")}
        with old_insert():
            t_big_old = save_polls(store, "big-old", f"{label}-big-old", [big["big-old"]], True)
            t_small_old = save_polls(store, "small-old", f"{label}-small-old", small["small-old"], True)
            t_dup_old = save_polls(store, "big-old", f"{label}-big-old", [big["big-old"]], False)
        t_big = save_polls(store, "big-new", f"{label}-big-new", [big["big-new"]], True)
        t_small = save_polls(store, "small-new", f"{label}-small-new", small["small-new"], True)
        t_dup = save_polls(store, "big-new", f"{label}-big-new", [big["big-new"]], False)
        # A mixed reconcile: the stored log plus 1% new at its end.
        extra = make_punches(n // 100 or 1, f"{label}-big-new", "big-new", start=n)
        t0 = time.perf_counter()
        mixed = store.save_poll(outcome("big-new", f"{label}-big-new", n + len(extra)), big["big-new"] + extra,
                                forward=True)
        t_mixed = time.perf_counter() - t0
        if mixed.new_punches != len(extra):
            raise RuntimeError(f"mixed reconcile stored {mixed.new_punches}, expected {len(extra)}")
        small_n = poll_size * polls
        for key, what, fast, old, count in (
                (f"{label}.new.one_poll", f"{label}: new punches/s, {n:,} in one poll", t_big, t_big_old, n),
                (f"{label}.new.small_polls", f"{label}: new punches/s, {polls} polls of {poll_size:,}",
                 t_small, t_small_old, small_n)):
            report.at_least(key, what, measured=rate(count, fast), goal=50_000, unit="punches/s",
                            detail=f"baseline {rate(count, old):,.0f}/s; {old / fast:.1f}x")
        report.at_least(f"{label}.duplicates", f"{label}: duplicates/s, reconcile of {n:,} stored punches",
                        measured=rate(n, t_dup), goal=200_000, unit="punches/s",
                        detail=f"baseline {rate(n, t_dup_old):,.0f}/s; {t_dup_old / t_dup:.1f}x")
        report.figure(f"{label}.mixed", f"{label}: reconcile of {n:,} stored + {len(extra):,} new",
                      measured=rate(n + len(extra), t_mixed), unit="punches/s")
    finally:
        engine.dispose()


def bench_concurrent(report: Report, url: str, threads: int, polls_each: int, poll_size: int,
                     label: str) -> None:
    """``threads`` pollers, each saving ``polls_each`` polls of ``poll_size`` new punches, all at once."""
    engine = create_db_engine(url, pool_size=64)  # what the daemon gives 60+ polling workers
    try:
        upgrade(engine)
        devices = [f"t{i}" for i in range(threads)]
        store = new_store(engine, devices)
        locked: list[str] = []
        other: list[str] = []
        start = threading.Barrier(threads + 1)

        def work(i: int) -> None:
            device = devices[i]
            batches = [make_punches(poll_size, f"SN-{label}-{device}", device, start=k * poll_size)
                       for k in range(polls_each)]
            start.wait()
            for k, batch in enumerate(batches):
                try:
                    store.save_poll(outcome(device, f"SN-{label}-{device}", (k + 1) * poll_size), batch, forward=True)
                except StorageError as exc:
                    (locked if "database is locked" in str(exc) else other).append(str(exc.orig)[:80])
                except Exception as exc:  # the pool's own timeout when the connections are all held
                    other.append(f"{type(exc).__name__}: {str(exc)[:80]}")

        pool = [threading.Thread(target=work, args=(i,), name=f"bench-poller-{i}") for i in range(threads)]
        for t in pool:
            t.start()
        start.wait()
        t0 = time.perf_counter()
        for t in pool:
            t.join()
        elapsed = time.perf_counter() - t0
        saved = threads * polls_each - len(locked) - len(other)
        if label == "lock":
            report.figure("sqlite.concurrent.lock.polls_per_s", f"sqlite: polls saved/s with {threads} threads "
                          "(writer lock only, no group commit: comparison)", measured=rate(saved, elapsed),
                          unit="polls/s", detail=f"{saved} saved in {elapsed:.1f} s; errors: {len(locked)} locked, "
                          f"{len(other)} other")
            return
        if label == "writer":
            report.at_most("sqlite.concurrent.locked", f"sqlite: {threads} threads saving polls at once, "
                           "\"database is locked\" errors", measured=len(locked), goal=0, unit="errors",
                           detail=f"{len(other)} other errors; {threads}x{polls_each} polls of {poll_size}")
        else:
            report.figure("sqlite.concurrent.locked.baseline", "sqlite: the same without the writer (baseline), "
                          "\"database is locked\" errors", measured=len(locked), unit="errors",
                          detail=f"{len(other)} other errors{': ' + other[0] if other else ''}")
        report.figure(f"sqlite.concurrent.{label}.polls_per_s", f"sqlite: polls saved/s with {threads} threads "
                      f"({'the store: group commit' if label == 'writer' else 'baseline, no writer'})",
                      measured=rate(saved, elapsed), unit="polls/s", detail=f"{saved} saved in {elapsed:.1f} s")
    finally:
        engine.dispose()


def main() -> None:
    def extra(ap: Any) -> None:
        ap.add_argument("-n", type=int, default=None, help="punches in the one-poll and reconcile rows (100000)")
        ap.add_argument("--poll-size", type=int, default=None, help="punches per small poll (1000)")
        ap.add_argument("--polls", type=int, default=None, help="small polls per pass (50)")
        ap.add_argument("--threads", type=int, default=None, help="concurrent pollers on SQLite (256)")
        ap.add_argument("--concurrent-poll-size", type=int, default=None,
                        help="punches per poll of each concurrent poller (500; 2 polls each)")

    args = bench_args(__doc__, extra=extra)
    n = args.n or (2_000 if args.quick else 100_000)
    poll_size = args.poll_size or (100 if args.quick else 1_000)
    polls = args.polls or (3 if args.quick else 50)
    threads = args.threads or (16 if args.quick else 256)
    concurrent_size = args.concurrent_poll_size or (10 if args.quick else 500)
    setup_logging("console", "warning")
    report = Report("bench_store", quick=args.quick)
    print(f"fpgw store benchmark: {n:,} punches; {polls} polls of {poll_size:,}; {threads} threads x 2 polls of "
          f"{concurrent_size:,} (compare ratios: absolute figures vary with the machine's load)")
    with tempfile.TemporaryDirectory() as tmp:
        bench_engine(report, "sqlite", f"sqlite:///{Path(tmp) / 'bench.db'}", n, poll_size, polls)
        bench_schema(report, "sqlite", (f"sqlite:///{Path(tmp) / 'old-schema.db'}",
                                        f"sqlite:///{Path(tmp) / 'new-schema.db'}"), n, poll_size, polls)
        bench_concurrent(report, f"sqlite:///{Path(tmp) / 'writer.db'}", threads, 2, concurrent_size, "writer")
        with lock_only_writer():
            bench_concurrent(report, f"sqlite:///{Path(tmp) / 'lock.db'}", threads, 2, concurrent_size, "lock")
        with unserialized_writer():
            bench_concurrent(report, f"sqlite:///{Path(tmp) / 'nowriter.db'}", threads, 2, concurrent_size, "baseline")
    pg = os.environ.get("GW_TEST_PG_URL")
    if pg:
        with fresh_database(pg, prefix="fpgw_bench") as url:
            bench_engine(report, "postgresql", url, n, poll_size, polls)
        with fresh_database(pg, prefix="fpgw_bench") as old_url, fresh_database(pg, prefix="fpgw_bench") as new_url:
            bench_schema(report, "postgresql", (old_url, new_url), n, poll_size, polls)
    else:
        report.note("postgresql SKIPPED: set GW_TEST_PG_URL=postgresql+psycopg://user@host:port/db to include it")
    report.finish(args.json)


if __name__ == "__main__":
    main()

"""Benchmark: the usage figures and the monthly BKD report for a whole regency, on SQLite and PostgreSQL.

Where it sits: a standalone script over the real code (gateway.central.usage.collect: the per-day aggregates of
gateway.store.usage, and gateway.central.report.build_report in xlsx, pdf and html) on a central database
filled through the real ingest path (CentralStore.ingest_punches / ingest_health). The baseline is measured in
the same run: the same working-day employee figures computed in Python from every punch, streamed with
CentralStore.iter_punches (what the figures would cost without aggregating in SQL).

    .venv/bin/python benchmarks/bench_report.py              # 300 offices, 1,000 terminals, 3 months
    .venv/bin/python benchmarks/bench_report.py --quick      # tiny sizes, no verdicts
    GW_TEST_PG_URL=postgresql+psycopg://postgres@127.0.0.1:5432/postgres .venv/bin/python benchmarks/bench_report.py

Rows, per engine: usage figures over the 3 months (goal <= 5 s), the monthly report per format (goal <= 15 s
each), and the speed-up of the SQL aggregates over per-punch Python (goal >= 3x).
"""

from __future__ import annotations

import os
import random
import sys
import tempfile
import time
from collections import defaultdict
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.harness import Report, bench_args
from gateway.central.report import build_report
from gateway.central.usage import WorkRules, collect, month_range, working_days
from gateway.logs import setup_logging
from gateway.store.central import CentralStore, PunchQuery
from gateway.store.db import create_db_engine, upgrade
from tests.support.pg import fresh_database
from tests.support.punches import make_punch
from tests.support.regency import known_since

MONTHS = ("2026-09", "2026-10", "2026-11")
NOW = datetime(2026, 12, 2, 1, 0, tzinfo=UTC)


def fill(store: CentralStore, offices: int, terminals: int, employees: int, months: tuple[str, ...]) -> int:
    """A regency: ``offices`` offices sharing ``terminals`` terminals, ``employees`` per office punching in and
    out on most working days of ``months`` (some terminals offline, some unused). Returns the punches stored."""
    rng = random.Random(14)
    rules = WorkRules()
    days = [d for m in months for d in working_days(*month_range(m), rules)]
    per_office: dict[int, list[int]] = defaultdict(list)
    for t in range(terminals):
        per_office[t % offices].append(t)
    stored = 0
    for o in range(offices):
        code = f"18{o:04d}"
        devices = per_office[o]
        batch: list[Any] = []
        for d in days:
            for e in range(employees):
                if rng.random() < 0.1:  # absent
                    continue
                t = devices[e % max(1, len(devices) - 1)] if len(devices) > 1 else devices[0]
                for hh, mm in ((7, rng.randrange(0, 60)), (16, rng.randrange(0, 60))):
                    if hh == 16 and rng.random() < 0.05:  # forgot to punch out
                        continue
                    batch.append(make_punch(str(e), datetime(d.year, d.month, d.day, hh, mm), office_code=code,
                                            device_id=f"t{t}", serial=f"SN{t}", employee_id=f"NIP{o}-{e}"))
        for i in range(0, len(batch), 5000):
            chunk = batch[i:i + 5000]
            answer, _ = store.ingest_punches(gateway=f"gw-{code}", office_code=code, batch_id=f"{code}-{i}",
                                             digest=f"{code}-{i}", punches=chunk, rejected={},
                                             meta={"office_name": f"Dinas {o}"})
            stored += answer["new"]
        health = []
        for k, t in enumerate(devices):
            state = "offline" if t % 17 == 0 else "online"
            health.append({"device_id": f"t{t}", "serial": f"SN{t}", "name": f"Terminal {t}",
                           "health": {"state": state, "state_since": datetime(2026, 11, 20, tzinfo=UTC),
                                      "problems": {}}})
            if k == len(devices) - 1 and len(devices) > 2:
                health[-1]["name"] = f"Terminal {t} (spare)"  # the spare gets no punches: unused
        store.ingest_health(gateway=f"gw-{code}", office_code=code, devices=health)
    return stored


def python_figures(store: CentralStore, start: date, end: date, rules: WorkRules) -> int:
    """The baseline: employees per office and working day, computed in Python from every punch."""
    work = {d.isoformat() for d in working_days(start, end, rules)}
    seen: set[tuple[str, str, str]] = set()
    for p in store.iter_punches(PunchQuery(date_from=start, date_to=end)):
        day = p["device_time"][:10]
        if day in work and not p["flags"]:
            seen.add((p["office_code"], day, p["employee_id"] or "pin:" + p["device_user_id"]))
    return len(seen)


def timed(fn: Any) -> tuple[float, Any]:
    t0 = time.perf_counter()
    value = fn()
    return time.perf_counter() - t0, value


def bench_engine(report: Report, name: str, url: str, offices: int, terminals: int, employees: int,
                 months: tuple[str, ...], quick: bool) -> None:
    engine = create_db_engine(url, pool_size=2)
    try:
        upgrade(engine)
        store = CentralStore(engine)
        fill_s, stored = timed(lambda: fill(store, offices, terminals, employees, months))
        known_since(engine, datetime(2026, 1, 1, tzinfo=UTC))  # the regency has reported all year
        report.figure(f"report.{name}.fill_s", f"{name}: filling {stored:,} punches through ingest", fill_s, "s",
                      detail=f"{offices} offices, {terminals} terminals, {len(months)} months")
        rules = WorkRules()
        start, end = month_range(months[0])[0], month_range(months[-1])[1]
        usage_s, fig = timed(lambda: collect(engine, start, end, rules, now=NOW))
        report.at_most(f"report.{name}.usage_3m_s", f"{name}: usage figures, {len(months)} months, whole regency",
                       measured=usage_s, goal=5.0, unit="s",
                       detail=f"{len(fig.offices)} offices, {len(fig.terminals)} terminals, {stored:,} punches")
        base_s, _ = timed(lambda: python_figures(store, start, end, rules))
        report.figure(f"report.{name}.python_baseline_s", f"{name}: the same per-day employees in Python per punch",
                      base_s, "s", detail="CentralStore.iter_punches + a set per (office, day, employee)")
        report.at_least(f"report.{name}.sql_vs_python", f"{name}: per-punch Python / SQL aggregates",
                        measured=base_s / usage_s if usage_s else 0.0, goal=3.0, unit="x",
                        detail="the SQL figures compute more (full days, terminals, employees) and are still faster")
        for fmt in ("xlsx", "pdf", "html"):
            seconds, data = timed(lambda fmt=fmt: build_report(engine, months[-1], fmt, now=NOW))  # type: ignore[misc]
            report.at_most(f"report.{name}.month.{fmt}_s", f"{name}: monthly report {months[-1]} as {fmt}",
                           measured=seconds, goal=15.0, unit="s", detail=f"{len(data):,} bytes")
        one_s, _ = timed(lambda: build_report(engine, months[-1], "html", "180000", now=NOW))
        report.figure(f"report.{name}.month.office_html_s", f"{name}: one office's monthly report as html", one_s, "s")
    finally:
        engine.dispose()


def main() -> None:
    def extra(ap: Any) -> None:
        ap.add_argument("--offices", type=int, default=None, help="offices (300)")
        ap.add_argument("--terminals", type=int, default=None, help="terminals (1000)")
        ap.add_argument("--employees", type=int, default=None, help="employees per office (25)")

    args = bench_args(__doc__, extra=extra)
    offices = args.offices or (4 if args.quick else 300)
    terminals = args.terminals or (9 if args.quick else 1000)
    employees = args.employees or (5 if args.quick else 25)
    months = MONTHS[-1:] if args.quick else MONTHS
    setup_logging("console", "warning")
    report = Report("bench_report", quick=args.quick)
    print(f"fpgw report benchmark: {offices} offices, {terminals} terminals, {employees} employees per office, "
          f"{len(months)} month(s) (compare ratios: absolute figures vary with the machine's load)")
    with tempfile.TemporaryDirectory() as tmp:
        bench_engine(report, "sqlite", f"sqlite:///{Path(tmp) / 'central.db'}", offices, terminals, employees,
                     months, args.quick)
    pg = os.environ.get("GW_TEST_PG_URL")
    if pg:
        with fresh_database(pg, prefix="fpgw_bench") as url:
            bench_engine(report, "postgresql", url, offices, terminals, employees, months, args.quick)
    else:
        report.note("postgresql SKIPPED: set GW_TEST_PG_URL=postgresql+psycopg://user@host:port/db to include it")
    report.finish(args.json)


if __name__ == "__main__":
    main()

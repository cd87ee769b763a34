"""Benchmark: the regency dashboard of the central for 300 offices, 1,000 terminals and 3 months of punches.

Where it sits: a standalone script. It fills a central database (SQLite file, and PostgreSQL when GW_TEST_PG_URL
names a server the benchmark may create databases on): device health and gateways through the real ingest
(CentralStore.ingest_health, which also records each terminal's history), 3 months of punches and of terminal
history written in bulk. Then it serves the real app (JSON API + dashboard routes) on uvicorn on loopback and times
pages over HTTP with a signed-in session, as a browser gets them. It prints figures and asserts nothing. Run:

    .venv/bin/python benchmarks/bench_dashboard.py             # 300 offices, 1000 terminals, 90 days
    .venv/bin/python benchmarks/bench_dashboard.py --quick     # 12 offices, 40 terminals, 7 days

Baseline: GET /api/v1/gateways over the same server (one small query, JSON), measured in the same run.
Goals: the dashboard (whole regency, and filtered) answers in <= 300 ms at p95; an office account's page and a
terminal's history too; the pages read no punches (statements on the punches table while pages are served = 0).
The pages carry the usage figures (attendance, unused terminals, weekly trend): the usage snapshot is computed
first (UsageFigures.refresh, the job the central runs every 15 min: figure, seconds over the last 6 weeks),
then the pages and an office's trend chart (/usage/{office}.svg) are timed; last, the dashboard is timed again
while a refresh runs in another thread (figure: what a page costs when it lands during the job).
"""

from __future__ import annotations

import logging
import os
import random
import re
import statistics
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx
import structlog
from sqlalchemy import event, update
from starlette.applications import Starlette

from benchmarks.harness import Report, bench_args, migrated_database
from gateway.central.api import CentralApi
from gateway.central.auth import hash_password
from gateway.central.dashboard import Dashboard
from gateway.central.tokens import TokenFile, add_token
from gateway.config import CentralConfig
from gateway.store import schema as s
from gateway.store.accounts import AccountRepo
from gateway.store.central import CentralStore
from gateway.store.db import create_db_engine
from gateway.web.server import start_listener

PASSWORD = "bench-password-long"
#: A statement reading the punches table (not a column such as gateways.punches_received).
PUNCH_TABLE = re.compile(r"\b(FROM|JOIN)\s+punches\b", re.IGNORECASE)
GOAL_MS = 300.0


def extra(ap: Any) -> None:
    ap.add_argument("--offices", type=int, default=300)
    ap.add_argument("--terminals", type=int, default=1000)
    ap.add_argument("--days", type=int, default=90, help="days of punches and history")
    ap.add_argument("--employees", type=int, default=12, help="employees punching per terminal and working day")
    ap.add_argument("--requests", type=int, default=30, help="timed requests per page")


def office_code(i: int) -> str:
    return f"1801.{i:03d}"


def fill(engine: Any, store: CentralStore, args: Any, rng: random.Random) -> dict[str, Any]:
    """Health through the real ingest, then punches and history in bulk; the facts the pages should show."""
    now = datetime.now(UTC)
    per_office = [args.terminals // args.offices + (1 if i < args.terminals % args.offices else 0)
                  for i in range(args.offices)]
    offline = 0
    for o, n in enumerate(per_office):
        devices = []
        for t in range(n):
            down = rng.random() < 0.05
            offline += down
            problems: dict[str, Any] = {}
            if down:
                problems["offline"] = {"severity": "critical", "since": (now - timedelta(hours=3)).isoformat(),
                                       "detail": "no answer", "last_alert_at": (now - timedelta(hours=2)).isoformat()}
            if rng.random() < 0.1:
                problems["clock_skew"] = {"severity": "warning", "since": (now - timedelta(days=2)).isoformat(),
                                          "detail": "clock +300 s"}
            devices.append({
                "device_id": f"t{t}", "name": f"Terminal {t}", "location": "lobi",
                "address": f"10.{o // 250}.{o % 250}.{t}",
                "port": 4370, "transport": "tcp", "serial": f"SN{o:03d}{t:02d}", "enabled": True,
                "last_seen_at": now, "last_ok_at": now, "last_record_count": rng.randint(100, 90000),
                "records_cap": 100000, "last_punch_at": now - timedelta(minutes=rng.randint(1, 600)),
                "clock_skew_s": rng.uniform(-30, 30),
                "health": {"state": "offline" if down else "online", "state_since": now - timedelta(hours=3),
                           "consecutive_failures": 3 if down else 0, "problems": problems}})
        store.ingest_health(gateway=f"gw-{o}", office_code=office_code(o), devices=devices,
                            meta={"office_name": f"Dinas {o}", "hostname": f"gw{o}", "version": "bench"})
    silent = max(1, args.offices // 30)
    with engine.begin() as conn:
        conn.execute(update(s.gateways).where(s.gateways.c.name.in_([f"gw-{o}" for o in range(silent)]))
                     .values(last_seen_at=now - timedelta(hours=6)))
    # Three months of history: a short outage every ~10 days per terminal.
    history = []
    for o, n in enumerate(per_office):
        for t in range(n):
            for d in range(0, args.days, 10):
                start = now - timedelta(days=args.days - d, hours=rng.randint(0, 12))
                for at, state in ((start, "offline"), (start + timedelta(minutes=rng.randint(5, 600)), "online")):
                    history.append({"office_code": office_code(o), "device_id": f"t{t}", "at": at, "kind": "state",
                                    "name": state, "severity": None, "detail": "", "recorded_at": at})
    with engine.begin() as conn:
        for i in range(0, len(history), 20000):
            conn.execute(s.device_events.insert(), history[i:i + 20000])
    # Punches: each terminal's employees, arrival and leave on working days.
    punches = 0
    rows: list[dict[str, Any]] = []

    def flush() -> None:
        with engine.begin() as conn:
            conn.execute(s.punches.insert(), rows)
        rows.clear()

    for o, n in enumerate(per_office):
        for t in range(n):
            for d in range(args.days):
                day = (now - timedelta(days=args.days - d)).replace(hour=0, minute=0, second=0, microsecond=0)
                if day.weekday() >= 5:
                    continue
                for e in range(args.employees):
                    for hour in (0, 9):  # 07:xx and 16:xx WIB
                        utc = day + timedelta(hours=hour, minutes=rng.randint(0, 59), seconds=e)
                        local = (utc + timedelta(hours=7)).replace(tzinfo=None)
                        rows.append({
                            "office_code": office_code(o), "device_id": f"t{t}", "device_serial": f"SN{o:03d}{t:02d}",
                            "device_user_id": str(e), "device_time": local.strftime("%Y-%m-%d %H:%M:%S"),
                            "local_time": local, "utc_time": utc, "timezone": "Asia/Jakarta", "state": 0 if hour == 0
                            else 1, "state_name": "check_in" if hour == 0 else "check_out", "verify": 1,
                            "verify_name": "finger", "uid": e, "workcode": 0, "raw_time": -1,
                            "employee_id": f"NIP{o:03d}{t:02d}{e:03d}", "flags": "", "received_at": utc,
                            "source": "forward", "occurrence": 0})
                        punches += 1
                if len(rows) >= 20000:
                    flush()
    if rows:
        flush()
    return {"punches": punches, "offline": offline, "silent": silent, "events": len(history)}


def timed(client: httpx.Client, path: str, n: int, **kw: Any) -> tuple[float, float, int]:
    """(p50 ms, p95 ms, bytes) of n GETs after two warm-ups."""
    for _ in range(2):
        r = client.get(path, **kw)
        assert r.status_code == 200, (path, r.status_code, r.text[:200])
    times = []
    size = 0
    for _ in range(n):
        t0 = time.perf_counter()
        r = client.get(path, **kw)
        times.append((time.perf_counter() - t0) * 1000)
        assert r.status_code == 200, (path, r.status_code)
        size = len(r.content)
    times.sort()
    return statistics.median(times), times[min(len(times) - 1, int(len(times) * 0.95))], size


def login(client: httpx.Client, name: str) -> None:
    page = client.get("/login").text
    csrf = re.search(r'name="csrf" value="([^"]+)"', page)
    assert csrf
    r = client.post("/login", data={"csrf": csrf.group(1), "username": name, "password": PASSWORD, "next": "/"})
    assert r.status_code == 303, r.text[:300]


def run(kind: str, args: Any, report: Report, tmp: Path) -> None:
    rng = random.Random(7)
    with migrated_database(kind, tmp / "dashboard.db") as url:
        engine = create_db_engine(url, pool_size=8)
        try:
            store = CentralStore(engine)
            t0 = time.perf_counter()
            facts = fill(engine, store, args, rng)
            fill_s = time.perf_counter() - t0
            gw_file, api_file = tmp / f"gw-{kind}.toml", tmp / f"api-{kind}.toml"
            add_token(gw_file, "gw", [office_code(0)], "gateway")
            bkd = add_token(api_file, "bkd", None, "api")
            AccountRepo(engine).add("bkd", hash_password(PASSWORD), None)
            AccountRepo(engine).add("tu", hash_password(PASSWORD), office_code(args.offices - 1))
            config = CentralConfig(enabled=True, gateway_tokens_file=gw_file, api_tokens_file=api_file)
            api = CentralApi(config, store, gateway_tokens=TokenFile(gw_file, "gateway"),
                             api_tokens=TokenFile(api_file, "api"))
            dash = Dashboard(store, api_tokens=api.api_tokens, silent_after_s=config.gateway_silent_after_s)
            app = Starlette(routes=[*api.routes(), *dash.routes()])
            t0 = time.perf_counter()
            snapshot = dash.usage.refresh()
            refresh_s = time.perf_counter() - t0
            unused = sum(u.unused for u in snapshot.terminals.values())
            server = start_listener(app, what="bench server", section="http", listen="127.0.0.1", port=0,
                                    tls_cert_file=None, tls_key_file=None, thread_name="bench-http")
            punch_reads = 0

            def count(conn: Any, cursor: Any, statement: str, *a: Any) -> None:
                nonlocal punch_reads
                if PUNCH_TABLE.search(statement):
                    punch_reads += 1

            try:
                base = f"http://127.0.0.1:{server.port}"
                with httpx.Client(base_url=base, timeout=30, follow_redirects=False) as bkd_client, \
                        httpx.Client(base_url=base, timeout=30, follow_redirects=False) as office_client:
                    login(bkd_client, "bkd")
                    login(office_client, "tu")
                    n = args.requests
                    b50, b95, _ = timed(bkd_client, "/api/v1/gateways", n, headers={"Authorization": f"Bearer {bkd}"})
                    event.listen(engine, "before_cursor_execute", count)
                    d50, d95, size = timed(bkd_client, "/", n)
                    f50, f95, _ = timed(bkd_client, "/?problem=any", n)
                    o50, o95, _ = timed(office_client, "/", n)
                    h50, h95, _ = timed(bkd_client, f"/terminal/{office_code(0)}/t0", n)
                    c50, c95, _ = timed(bkd_client, f"/usage/{office_code(args.offices - 1)}.svg", n)
                    event.remove(engine, "before_cursor_execute", count)
                    # A page that lands while the job computes (same process: they share the GIL and the pool).
                    busy = threading.Event()
                    busy.set()

                    def refresh_loop() -> None:
                        while busy.is_set():
                            dash.usage.refresh()

                    worker = threading.Thread(target=refresh_loop, name="bench-usage-refresh", daemon=True)
                    worker.start()
                    try:
                        r50, r95, _ = timed(bkd_client, "/", n)
                    finally:
                        busy.clear()
                        worker.join(120)
            finally:
                server.stop(5)
        finally:
            engine.dispose()
    size_note = (f"{args.offices} offices, {args.terminals} terminals, {facts['punches']} punches over {args.days} "
                 f"days, {facts['events']} history events")
    report.figure(f"{kind}.fill_s", f"{kind}: fill the central ({size_note})", fill_s, "s")
    report.figure(f"{kind}.baseline_p95", f"{kind}: baseline GET /api/v1/gateways p95", b95, "ms",
                  f"p50 {b50:.1f} ms")
    report.at_most(f"{kind}.dashboard_p95", f"{kind}: dashboard / (whole regency) p95", measured=d95, goal=GOAL_MS,
                   unit="ms", detail=f"p50 {d50:.1f} ms, {size // 1024} KiB, {d95 / b95:.1f}x baseline, "
                                     f"{facts['offline']} offline, {facts['silent']} silent")
    report.at_most(f"{kind}.filtered_p95", f"{kind}: dashboard ?problem=any p95", measured=f95, goal=GOAL_MS,
                   unit="ms", detail=f"p50 {f50:.1f} ms")
    report.at_most(f"{kind}.office_p95", f"{kind}: office account's dashboard p95", measured=o95, goal=GOAL_MS,
                   unit="ms", detail=f"p50 {o50:.1f} ms")
    report.at_most(f"{kind}.history_p95", f"{kind}: terminal history page p95", measured=h95, goal=GOAL_MS,
                   unit="ms", detail=f"p50 {h50:.1f} ms")
    report.at_most(f"{kind}.chart_p95", f"{kind}: an office's weekly trend chart /usage/{{office}}.svg p95",
                   measured=c95, goal=GOAL_MS, unit="ms", detail=f"p50 {c50:.1f} ms")
    report.at_most(f"{kind}.punch_reads", f"{kind}: statements on punches while pages are served",
                   measured=punch_reads, goal=0, unit="")
    report.figure(f"{kind}.usage_refresh_s", f"{kind}: usage snapshot computed off the request path "
                  f"({snapshot.start} .. {snapshot.end}, {snapshot.working_days} working days)", refresh_s, "s",
                  f"{len(snapshot.offices)} offices, {unused} unused terminals; refreshed every 15 min")
    report.figure(f"{kind}.dashboard_during_refresh_p95", f"{kind}: dashboard / p95 while a usage refresh runs",
                  r95, "ms", f"p50 {r50:.1f} ms, {r95 / d95:.1f}x the quiet p95")


def main() -> None:
    args = bench_args(__doc__, extra)
    if args.quick:
        args.offices, args.terminals, args.days, args.employees, args.requests = 12, 40, 7, 3, 5
    logging.disable(logging.WARNING)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    report = Report("bench_dashboard", quick=args.quick)
    with tempfile.TemporaryDirectory() as tmp:
        run("sqlite", args, report, Path(tmp))
        if os.environ.get("GW_TEST_PG_URL"):
            run("postgresql", args, report, Path(tmp))
        else:
            report.note("PostgreSQL rows skipped: set GW_TEST_PG_URL to a server the benchmark may create databases on")
    report.finish(args.json)


if __name__ == "__main__":
    main()

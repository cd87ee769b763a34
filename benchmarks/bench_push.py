"""Benchmark: uploads and punches per second one gateway's push receiver absorbs from many pushing terminals.

Where it sits: a standalone script. It runs the real daemon in-process (gateway.app.Gateway with push
terminals configured: the push receiver on loopback, the health monitor and metrics as observers, SQLite in
a temporary directory) and drives it with one client thread per terminal, all starting at once: a regency's
morning peak. Each terminal makes its handshake, then ``--uploads`` ATTLOG uploads of ``--punches`` lines
each (Realtime=1 terminals send one punch per upload), each after a command poll (getrequest with INFO), with
``Connection: close`` as terminals do.

Baseline in the same run: the same batches saved straight through Store.save_poll (no HTTP, no parsing), one
thread, on a fresh database: the ratio shows what the receiver costs on top of the store. Run:

    .venv/bin/python benchmarks/bench_push.py                    # 300 terminals x 5 uploads of 1 punch
    .venv/bin/python benchmarks/bench_push.py --punches 20       # batches after an outage

Goals (issue 10): every upload of the peak accepted (none refused) at a rate well above a morning peak
(300 terminals x ~100 punches in 30 minutes is ~17 uploads/s; goal 50/s), and a p95 upload time far below
a terminal's HTTP timeout. PostgreSQL is not measured by this script (the store's own benchmark covers it).
"""

from __future__ import annotations

import http.client
import logging
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import structlog

from benchmarks.harness import Report, bench_args
from drivers.base import DeviceInfo, RawPunch
from gateway.app import Gateway
from gateway.config import Config, parse_config
from gateway.models import PollOutcome
from gateway.polling.normalize import DeviceContext, normalize_punches
from gateway.store.db import create_db_engine, upgrade
from gateway.store.punches import Store

OFFICE = "1801.01.02"


def config(db: Path, terminals: int) -> Config:
    return parse_config({
        "site": {"office_code": OFFICE, "state_dir": str(db.parent)},
        "database": {"url": f"sqlite:///{db}"},
        "http": {"enabled": False},
        "logging": {"level": "warning"},
        "push": {"listen": "127.0.0.1", "port": 0, "max_connections": 2000},
        "devices": [{"id": f"t{i:04d}", "driver": "push", "serial": f"BEN{i:05d}"} for i in range(terminals)],
    }, base_dir=db.parent)


def lines(terminal: int, upload: int, punches: int) -> list[tuple[str, str]]:
    """(PIN, time) of one upload: distinct per terminal, upload and line."""
    start = datetime(2026, 11, 30, 7, 0) + timedelta(seconds=upload * punches)
    return [(str(1000 + terminal % 50), (start + timedelta(seconds=k)).strftime("%Y-%m-%d %H:%M:%S"))
            for k in range(punches)]


def call(port: int, method: str, path: str, body: bytes | None = None) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request(method, path, body=body, headers={"User-Agent": "iClock Proxy/1.09", "Connection": "close"})
        resp = conn.getresponse()
        return resp.status, resp.read().decode(errors="replace")
    finally:
        conn.close()


def run_peak(port: int, terminals: int, uploads: int, punches: int) -> tuple[float, list[float], int]:
    """(wall seconds, upload latencies, refused uploads) with every terminal starting at once."""
    start = threading.Barrier(terminals + 1)
    latencies: list[float] = []
    refused = [0]
    lock = threading.Lock()

    def terminal(i: int) -> None:
        serial = f"BEN{i:05d}"
        start.wait()
        status, text = call(port, "GET", f"/iclock/cdata?SN={serial}&options=all&pushver=2.4.1")
        if status != 200 or not text.startswith("GET OPTION FROM:"):
            with lock:
                refused[0] += 1
        for u in range(uploads):
            # A command poll between uploads, as terminals make every Delay seconds (with their INFO counts).
            status, text = call(port, "GET", f"/iclock/getrequest?SN={serial}&INFO=Ver%202.0.12,10,20,{u},1.2.3.4")
            if status != 200:
                with lock:
                    refused[0] += 1
            body = "".join(f"{pin}\t{t}\t0\t1\t0\t0\t0\n" for pin, t in lines(i, u, punches)).encode()
            t0 = time.perf_counter()
            status, text = call(port, "POST", f"/iclock/cdata?SN={serial}&table=ATTLOG&Stamp=9999", body)
            took = time.perf_counter() - t0
            with lock:
                latencies.append(took)
                if status != 200 or text != f"OK: {punches}":
                    refused[0] += 1

    with ThreadPoolExecutor(max_workers=terminals) as pool:
        futures = [pool.submit(terminal, i) for i in range(terminals)]
        start.wait()
        t0 = time.perf_counter()
        for f in futures:
            f.result()
        wall = time.perf_counter() - t0
    return wall, latencies, refused[0]


def baseline(db: Path, cfg: Config, terminals: int, uploads: int, punches: int) -> float:
    """Seconds to save the same batches straight through Store.save_poll (one thread)."""
    engine = create_db_engine(f"sqlite:///{db}", pool_size=2)
    upgrade(engine)
    store = Store(engine, OFFICE)
    store.sync_devices(cfg.devices)
    t0 = time.perf_counter()
    for i in range(terminals):
        dev = cfg.devices[i]
        ctx = DeviceContext(office_code=OFFICE, device_id=dev.id, serial=dev.serial or "", timezone=dev.timezone)
        for u in range(uploads):
            raw = [RawPunch(user_id=pin, time_text=t, local_time=datetime.strptime(t, "%Y-%m-%d %H:%M:%S"), state=0,
                            verify=1) for pin, t in lines(i, u, punches)]
            now = datetime.now(UTC)
            outcome = PollOutcome(device_id=dev.id, started_at=now, finished_at=now, ok=True, mode="full",
                                  serial=dev.serial, info=DeviceInfo(serial=dev.serial or ""))
            store.save_poll(outcome, normalize_punches(raw, ctx, now=now))
    took = time.perf_counter() - t0
    engine.dispose()
    return took


def main() -> None:
    args = bench_args(__doc__, extra=lambda ap: (
        ap.add_argument("--terminals", type=int, default=300, help="pushing terminals (default 300)"),
        ap.add_argument("--uploads", type=int, default=5, help="uploads per terminal (default 5)"),
        ap.add_argument("--punches", type=int, default=1, help="punches per upload (default 1: realtime)")))
    terminals, uploads, punches = (10, 2, args.punches) if args.quick else (args.terminals, args.uploads, args.punches)
    logging.disable(logging.WARNING)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    report = Report("bench_push", quick=args.quick)
    total_uploads = terminals * uploads
    with tempfile.TemporaryDirectory() as tmp:
        cfg = config(Path(tmp) / "fpgw.db", terminals)
        base_s = baseline(Path(tmp) / "baseline.db", cfg, terminals, uploads, punches)
        gateway = Gateway(cfg)
        gateway.start()
        try:
            port = next(getattr(s, "port", None) for s in gateway.services if s.name == "push")
            assert isinstance(port, int)
            wall, latencies, refused = run_peak(port, terminals, uploads, punches)
        finally:
            gateway.stop()
        engine = create_db_engine(f"sqlite:///{Path(tmp) / 'fpgw.db'}", pool_size=1)
        from sqlalchemy import func, select

        from gateway.store import schema as s
        with engine.connect() as conn:
            stored = int(conn.execute(select(func.count()).select_from(s.punches)).scalar_one())
        engine.dispose()
    p95 = statistics.quantiles(latencies, n=20)[-1] if len(latencies) >= 2 else (latencies or [0.0])[0]
    sizes = f"{terminals} terminals x {uploads} uploads x {punches} punch(es), all at once, SQLite"
    report.at_most("push.peak.refused", "requests refused during the peak", measured=refused, goal=0, unit="",
                   detail=sizes)
    report.at_least("push.peak.uploads_per_s", "uploads accepted per second", measured=total_uploads / wall, goal=50,
                    unit="/s", detail=f"{total_uploads} uploads in {wall:.1f} s")
    report.figure("push.peak.punches_per_s", "punches stored per second through the receiver",
                  measured=total_uploads * punches / wall, unit="/s", detail=f"{stored} punches stored")
    report.at_most("push.peak.p95_upload_s", "p95 time of one upload (request to OK)", measured=p95, goal=5.0,
                   unit="s", detail=f"median {statistics.median(latencies):.3f} s" if latencies else "")
    report.figure("push.baseline.save_poll_per_s", "baseline: the same batches through Store.save_poll alone",
                  measured=total_uploads / base_s, unit="/s", detail="one thread, no HTTP")
    report.figure("push.receiver_vs_store", "receiver throughput / store-alone throughput",
                  measured=(total_uploads / wall) / (total_uploads / base_s), unit="x",
                  detail="below 1: the HTTP + parsing + health cost on top of the store")
    if stored != total_uploads * punches:
        report.note(f"stored {stored} punches, expected {total_uploads * punches}: exactly-once broken?")
    report.note("PostgreSQL not measured here (bench_store.py measures the store on PostgreSQL)")
    report.finish(args.json)


if __name__ == "__main__":
    main()

"""Forwarding into the real central daemon over loopback: many gateways at once, and one request at a time.

The central is `fpgw run` in central mode in its own process (the daemon's HTTP server: uvicorn/h11 in a
thread, the central API, the central store), over PostgreSQL (GW_TEST_PG_URL: a fresh database, dropped
afterwards; the rows are skipped with a note without it) and over SQLite.

(a) fleet: --gateways simulated office gateways at once, each with its own token, office, terminal serial
    and keep-alive connection, each sending --batches batches of --batch-size punches one request after the
    other. The requests are the forwarder's own documents (gateway.wire.punch_batch, gzip-compressed as
    gateway.forward.forwarder sends them) over httpx; building them is not timed. -> punches/s ingested.
(b) one at a time: the real Forwarder with batch_size 1 drains an office outbox (SQLite) over one reused
    connection -> median milliseconds per request (HTTP round trip incl. the central's transaction) and
    punches/s of the whole drain (incl. the office's own bookkeeping per punch).
(c) baseline, same run: the same daemon started with the code before issue 14: ingest as INSERT statements
    of at most 100 rows (a copy of the old CentralStore.ingest_punches, below) and Nagle's algorithm left on
    for accepted connections (no TCP_NODELAY).
(d) PostgreSQL, same run: today's code with the feed-order trigger as before migration 0007_punch_indexes
    (every punch insert takes the lock exclusively: ingests store and commit one at a time) -> the gain of
    the shared guard.

    .venv/bin/python benchmarks/bench_forward.py [--quick] [--gateways 300] [--batches 2] [--batch-size 500]
        [--single 300] [--skip-baseline] [--skip-sqlite] [--json PATH]
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from benchmarks import load  # noqa: E402
from benchmarks.harness import Report, bench_args  # noqa: E402
from benchmarks.load import Daemon, stored_punches, write_gateway_tokens  # noqa: E402

GOAL_FLEET_PER_S = 20_000
#: One request at a time on loopback: well under the 40 ms delayed-ACK stall, far above a bare round trip.
GOAL_SINGLE_MEDIAN_MS = 10.0


# --------------------------------------------------------------------------------------------------
# The central daemon, as a subprocess (benchmarks/load.py)
# --------------------------------------------------------------------------------------------------

@contextmanager
def central_daemon(tmp: Path, name: str, db_url: str, gateway_tokens: Path, *, max_connections: int,
                   baseline: bool) -> Iterator[Daemon]:
    """`fpgw run` in central mode (``baseline``: with the pre-issue-14 ingest and Nagle on), stopped after."""
    serve = [str(Path(__file__).resolve()), *(["--baseline"] if baseline else [])]
    with load.central_daemon(tmp, name, db_url, gateway_tokens, max_connections=max_connections,
                             serve=serve) as daemon:
        yield daemon


def serve_central(argv: list[str]) -> int:
    """The daemon process: ``--serve-central CONFIG [--baseline]``."""
    if "--baseline" in argv:
        install_baseline()
    return load.serve_central(argv[0])


# --------------------------------------------------------------------------------------------------
# (c) The code before issue 14, for the baseline daemon
# --------------------------------------------------------------------------------------------------

def install_baseline() -> None:
    """Put the old ingest (100-row INSERT statements) and Nagle-on accepted connections into this process."""
    from gateway.store.central import CentralStore
    from gateway.web import server

    def nagle_on(transport: Any) -> None:
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 0)  # asyncio turned it on; undo that

    server.set_nodelay = nagle_on  # type: ignore[assignment]
    CentralStore.ingest_punches = old_ingest_punches  # type: ignore[method-assign]


def old_ingest_punches(self: Any, *, gateway: str, office_code: str, batch_id: str, digest: str,
                       punches: Sequence[Any], rejected: Mapping[int, str], remote_addr: str | None = None,
                       meta: Mapping[str, Any] | None = None, alert_office: str = "",
                       replace_receipt: bool = False, forward: bool = False) -> tuple[dict[str, Any], bool]:
    """CentralStore.ingest_punches as it was before issue 14 (commit 49c6aa4), verbatim but for imports and
    today's helper signatures (serial claims per office, keys led by the office: issue 15's tiers); the
    baseline central never forwards upstream (``forward`` is ignored)."""
    from sqlalchemy import delete, select

    from gateway.store import schema as s
    from gateway.store.central import _bound_elsewhere, ingest_answer
    from gateway.store.punches import PUNCH_KEY, insert_ignore, punch_row
    from gateway.store.schema import utcnow

    ingest_chunk = 100
    now = utcnow()
    c = s.punches.c
    b = s.ingest_batches.c
    punches, rejected = list(punches), dict(rejected)
    with self._writer.begin() as conn:
        if replace_receipt:
            conn.execute(delete(s.ingest_batches).where(b.gateway == gateway, b.batch_id == batch_id))
        owners = self._bind_serials(conn, {p.device_serial: office_code for p in punches if p is not None},
                                    f"gateway:{gateway}", now)
        refused: dict[str, int] = {}
        for i, p in enumerate(punches):
            if p is not None and owners[p.device_serial] != office_code:
                rejected[i] = _bound_elsewhere(p.device_serial, owners[p.device_serial])
                refused[p.device_serial] = refused.get(p.device_serial, 0) + 1
                punches[i] = None
        for serial, n in refused.items():
            self._alert_foreign_serial(conn, serial, owners[serial], office_code, gateway, now, alert_office,
                                       what=f"{n} punch(es)")
        new_keys: set[tuple[str, str, str, str, int]] = set()
        rows = [punch_row(p, now, "forward") for p in punches if p is not None]
        for i in range(0, len(rows), ingest_chunk):
            stmt = insert_ignore(conn, s.punches, PUNCH_KEY).returning(c.office_code, c.device_serial,
                                                                       c.device_user_id, c.device_time, c.occurrence)
            new_keys.update((r[0], r[1], r[2], r[3], r[4]) for r in conn.execute(stmt, rows[i:i + ingest_chunk]))
        answer = ingest_answer(batch_id, office_code, punches, rejected, new_keys)
        n_new = answer["new"]
        stored = conn.execute(insert_ignore(conn, s.ingest_batches, ("gateway", "batch_id")).returning(b.batch_id),
                              {"gateway": gateway, "batch_id": batch_id, "digest": digest, "received_at": now,
                               "punch_count": len(punches), "new_count": n_new,
                               "rejected_count": len(rejected), "response": json.dumps(answer)}).first()
        if stored is None:
            prior = conn.execute(select(b.response).where(b.gateway == gateway, b.batch_id == batch_id)
                                 ).scalar_one()
            return json.loads(prior), True
        self._touch_gateway(conn, gateway, office_code, now, remote_addr, meta, batch=True, received=n_new)
    return answer, False


# --------------------------------------------------------------------------------------------------
# (a) Many gateways at once
# --------------------------------------------------------------------------------------------------

def office_codes(n: int) -> list[str]:
    return [f"1801.{i + 1:03d}" for i in range(n)]


def fleet_bodies(offices: Sequence[str], batches: int, size: int, seed: int) -> list[list[bytes]]:
    """Per gateway, its request bodies as the forwarder sends them (wire documents, gzipped when large)."""
    from gateway import __version__, wire
    from tests.support.punches import make_punch

    base = datetime(2026, 1, 5, 7, 0) + timedelta(days=seed)
    out = []
    for g, office in enumerate(offices):
        serial = f"BENCH{seed}-{g:04d}"
        bodies = []
        for b in range(batches):
            punches = [wire.encode_punch(make_punch(str(u % 3000), base + timedelta(seconds=b * size + u),
                                                    office_code=office, serial=serial, employee_id=f"19{u:012d}",
                                                    uid=u % 3000))
                       for u in range(b * size, (b + 1) * size)]
            meta = wire.gateway_meta(office_code=office, office_name=None, hostname=f"gw-{office}",
                                     version=__version__, outbox_depth=(batches - b) * size, oldest_unforwarded_s=60.0)
            bodies.append(load.forward_body(punches, meta))
        out.append(bodies)
    return out


async def _gateway(client: httpx.AsyncClient, url: str, bodies: Sequence[bytes], start: asyncio.Event) -> int:
    await start.wait()
    new = 0
    for body in bodies:
        resp = await client.post(f"{url}/api/v1/ingest/punches", content=body, headers=load.body_headers(body))
        if resp.status_code != 200:
            raise RuntimeError(f"HTTP {resp.status_code}: {resp.text[:300]}")
        new += int(resp.json()["new"])
    return new


async def _fleet(url: str, tokens: Sequence[str], bodies: Sequence[Sequence[bytes]]) -> tuple[int, float]:
    start = asyncio.Event()
    clients = [load.sender_client(t, 300) for t in tokens]
    try:
        # Connect every gateway first (a cheap request each), so the timing is the batches alone.
        await asyncio.gather(*(c.get(f"{url}/api/v1/openapi.json") for c in clients))
        tasks = [asyncio.ensure_future(_gateway(c, url, b, start)) for c, b in zip(clients, bodies, strict=True)]
        await asyncio.sleep(0)
        t0 = time.perf_counter()
        start.set()
        news = await asyncio.gather(*tasks)
        return sum(news), time.perf_counter() - t0
    finally:
        await asyncio.gather(*(c.aclose() for c in clients))


def run_fleet(url: str, tokens: Sequence[str], bodies: Sequence[Sequence[bytes]]) -> tuple[int, float]:
    """(new punches the central answered, seconds) for every gateway sending all its batches at once."""
    return asyncio.run(_fleet(url, tokens, bodies))


# --------------------------------------------------------------------------------------------------
# (b) One request at a time, real Forwarder
# --------------------------------------------------------------------------------------------------

class TimedTransport(httpx.HTTPTransport):
    """The forwarder's transport (TCP_NODELAY, keep-alive) that also records each request's duration."""

    def __init__(self) -> None:
        super().__init__(socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)])
        self.durations: list[float] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        t0 = time.perf_counter()
        resp = super().handle_request(request)
        resp.read()
        self.durations.append(time.perf_counter() - t0)
        return resp


def office_db(path: Path, office: str, serial: str, n: int) -> str:
    """An office gateway database with n punches waiting in the outbox."""
    from gateway.config import parse_config
    from gateway.store.db import create_db_engine, upgrade
    from gateway.store.punches import Store
    from tests.support.punches import make_punch, store_punches

    url = f"sqlite:///{path}"
    engine = create_db_engine(url)
    upgrade(engine)
    store = Store(engine, office)
    store.sync_devices(parse_config({"site": {"office_code": office}, "database": {"url": url},
                                     "devices": [{"id": "lobby", "address": "127.0.0.1"}]}).devices)
    base = datetime(2026, 2, 2, 7, 0)
    store_punches(store, [make_punch(str(i % 500), base + timedelta(seconds=31 * i), office_code=office,
                                     serial=serial, uid=i % 500) for i in range(n)])
    engine.dispose()
    return url


def run_single(url: str, office_url: str, office: str, token: str, tmp: Path) -> tuple[int, float, list[float]]:
    """(punches, seconds, per-request seconds) for the real Forwarder draining with batch_size 1."""
    from gateway.config import parse_config
    from gateway.forward.forwarder import Forwarder
    from gateway.store.db import create_db_engine
    from gateway.store.outbox import Outbox

    token_file = tmp / f"token-{office}"
    token_file.write_text(token)
    cfg = parse_config({"site": {"office_code": office}, "database": {"url": office_url},
                        "devices": [{"id": "lobby", "address": "127.0.0.1"}],
                        "forward": {"url": url, "token_file": str(token_file), "batch_size": 1, "timeout_s": 60}})
    engine = create_db_engine(office_url)
    transport = TimedTransport()
    fwd = Forwarder(cfg, Outbox(engine, office), transport=transport, health_every_s=1e9)
    fwd._next_health_at = datetime.now(UTC) + timedelta(days=1)  # punches only
    try:
        t0 = time.perf_counter()
        report = fwd.run_once()
        elapsed = time.perf_counter() - t0
        left = Outbox(engine, office).stats().depth
    finally:
        fwd.stop(5)
        engine.dispose()
    if report.error or left:
        raise SystemExit(f"single drain failed: error={report.error} left={left}")
    return report.accepted, elapsed, transport.durations


# --------------------------------------------------------------------------------------------------
# Databases and the run
# --------------------------------------------------------------------------------------------------

@contextmanager
def central_database(kind: str, tmp: Path, name: str, *, exclusive_guard: bool = False) -> Iterator[str]:
    """A fresh, migrated central database: PostgreSQL (GW_TEST_PG_URL) or a SQLite file. ``exclusive_guard``
    (PostgreSQL): the feed-order trigger as before migration 0007, every punch insert taking the lock exclusively
    (ingests one at a time), the rest of today's code unchanged."""
    from sqlalchemy import text

    from gateway.store.central import FEED_LOCK_KEY
    from gateway.store.db import create_db_engine, upgrade

    with ExitStack() as stack:
        if kind == "postgresql":
            from tests.support.pg import fresh_database

            url = stack.enter_context(fresh_database(os.environ["GW_TEST_PG_URL"], prefix="fpgw_bench"))
        else:
            url = f"sqlite:///{tmp / (name + '.db')}"
        engine = create_db_engine(url, pool_size=1)
        upgrade(engine)  # before the daemon starts: its start is then the same for both variants
        if exclusive_guard:
            with engine.begin() as conn:
                conn.execute(text("CREATE OR REPLACE FUNCTION fpgw_punches_feed_order() RETURNS trigger "
                                  f"LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_advisory_xact_lock({FEED_LOCK_KEY}); "
                                  "RETURN NULL; END $$"))
        engine.dispose()
        yield url


def measure(kind: str, args: Any, report: Report, tmp: Path) -> None:
    gateways, batches, size = args.gateways, args.batches, args.batch_size
    offices = office_codes(gateways)
    single_office = "1801.999"
    tokens_file = tmp / f"gateways-{kind}.toml"
    tokens = write_gateway_tokens(tokens_file, [*offices, single_office])
    fleet_tokens, single_token = tokens[:-1], tokens[-1]
    variants = ["new"] if args.skip_baseline else ["new", "exclusive", "baseline"] if kind == "postgresql" \
        else ["new", "baseline"]
    fleet: dict[str, tuple[int, float]] = {}
    single: dict[str, tuple[int, float, list[float]]] = {}
    for seed, variant in enumerate(variants):
        bodies = fleet_bodies(offices, batches, size, seed)
        single_db = office_db(tmp / f"office-{kind}-{variant}.db", single_office, f"SINGLE-{variant}", args.single)
        name = f"central-{kind}-{variant}"
        with central_database(kind, tmp, name, exclusive_guard=variant == "exclusive") as db_url, \
                central_daemon(tmp, name, db_url, tokens_file, max_connections=gateways + 100,
                               baseline=variant == "baseline") as daemon:
            try:
                single[variant] = run_single(daemon.url, single_db, single_office, single_token, tmp)
                new, secs = run_fleet(daemon.url, fleet_tokens, bodies)
            except (RuntimeError, httpx.HTTPError) as exc:
                log = daemon.log.read_text(errors="replace")
                if variant == "baseline":  # the old code failing under this load is a finding, not a crash
                    cause = log.rsplit('"exc_value": "', 1)[-1].split('"', 1)[0] if '"exc_value"' in log else ""
                    report.note(f"{kind}: the baseline daemon (old code) failed under this load: {exc} {cause}")
                    continue
                raise SystemExit(f"{kind} {variant}: {exc}\nthe daemon's log ends with:\n{log[-4000:]}") from None
            stored = stored_punches(db_url)
        expected = gateways * batches * size
        if new != expected or stored != expected + args.single:
            raise SystemExit(f"{kind} {variant}: {new} new of {expected} sent, {stored} stored "
                             f"(expected {expected + args.single}): punches lost or duplicated")
        fleet[variant] = (new, secs)
    detail = f"{gateways} gateways x {batches} batches x {size} punches"
    rate = fleet["new"][0] / fleet["new"][1]
    base = f"; baseline (100-row INSERTs, Nagle on) {fleet['baseline'][0] / fleet['baseline'][1]:,.0f}/s" \
        if "baseline" in fleet else ""
    if kind == "postgresql":
        report.at_least(f"forward.fleet.{kind}", f"central ingest, {gateways} gateways at once, {kind}",
                        measured=rate, goal=GOAL_FLEET_PER_S, unit="punches/s", detail=detail + base)
    else:
        report.figure(f"forward.fleet.{kind}", f"central ingest, {gateways} gateways at once, {kind}",
                      measured=rate, unit="punches/s", detail=detail + base)
    if "baseline" in fleet:
        report.figure(f"forward.fleet.{kind}.vs_baseline", f"central ingest vs the 100-row path, {kind}",
                      measured=rate / (fleet["baseline"][0] / fleet["baseline"][1]), unit="x", detail=detail)
    if "exclusive" in fleet:
        exclusive = fleet["exclusive"][0] / fleet["exclusive"][1]
        report.figure(f"forward.fleet.{kind}.vs_exclusive_guard", f"central ingest vs ingests one at a time "
                      f"(feed-order lock exclusive, as before migration 0007), {kind}", measured=rate / exclusive,
                      unit="x", detail=f"exclusive guard {exclusive:,.0f} punches/s; {detail}")
    n, secs, durations = single["new"]
    median_ms = statistics.median(durations) * 1000
    base = ""
    if "baseline" in single:
        bn, bsecs, bdur = single["baseline"]
        base = f"; baseline (Nagle on) median {statistics.median(bdur) * 1000:.1f} ms, {bn / bsecs:,.0f} punches/s"
    report.at_most(f"forward.single.{kind}.median_ms",
                   f"one punch per request, reused connection, median per request, {kind}",
                   measured=median_ms, goal=GOAL_SINGLE_MEDIAN_MS, unit="ms",
                   detail=f"{n} requests, real Forwarder, batch_size 1{base}")
    report.figure(f"forward.single.{kind}.rate", f"one punch per request, whole drain, {kind}",
                  measured=n / secs, unit="punches/s",
                  detail=f"{n} punches in {secs:.2f} s, incl. the office's own outbox bookkeeping")


def main() -> int:
    if len(sys.argv) > 2 and sys.argv[1] == "--serve-central":
        return serve_central(sys.argv[2:])
    args = bench_args(__doc__, extra=lambda ap: (
        ap.add_argument("--gateways", type=int, default=300, help="gateways forwarding at once"),
        ap.add_argument("--batches", type=int, default=2, help="batches each gateway sends"),
        ap.add_argument("--batch-size", type=int, default=500, help="punches per batch (forward.batch_size)"),
        ap.add_argument("--single", type=int, default=300, help="punches sent one per request"),
        ap.add_argument("--skip-baseline", action="store_true", help="only the current code"),
        ap.add_argument("--skip-sqlite", action="store_true", help="only PostgreSQL")))
    if args.quick:
        args.gateways, args.batches, args.batch_size, args.single = 5, 2, 20, 10
    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(30))  # warnings and up only
    report = Report("bench_forward", quick=args.quick)
    kinds = []
    if os.environ.get("GW_TEST_PG_URL"):
        kinds.append("postgresql")
    else:
        report.note("PostgreSQL rows skipped: set GW_TEST_PG_URL to a server the benchmark may create databases on")
    if not args.skip_sqlite:
        kinds.append("sqlite")
    with tempfile.TemporaryDirectory(prefix="fpgw-bench-forward-") as tmp:
        for kind in kinds:
            measure(kind, args, report, Path(tmp))
    report.note("machine shared with other jobs: compare ratios within one run")
    report.finish(args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

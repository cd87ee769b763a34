"""National load: one upper-tier central on PostgreSQL absorbing hundreds of regency tiers' morning peak.

The central is the real daemon, `fpgw run` with ``[central] enabled`` in its own process (benchmarks/load.py,
as bench_forward), on a fresh PostgreSQL database (GW_TEST_PG_URL; without it a throwaway local cluster
from tests/support/pg.py, or the rows are skipped with a note). --tiers regency tiers (514: Indonesia's
regencies and cities) forward to it over loopback from --procs sender processes (asyncio, one kept-alive
connection per tier), so generating the load stays off the server's core as far as 2 cores allow; the
senders' own CPU share is reported.

The national morning (issue 15's figures, not a fitted model of attendance): three hours of UTC, one per
time zone's 07:00-08:00 local (WIT = Asia/Jayapura 22:00-23:00 UTC, WITA = Asia/Makassar 23:00-00:00,
WIB = Asia/Jakarta 00:00-01:00); a flat --sustained rate (1,500 punches/s) from every zone by its share of
civil servants (WIB 75 %, WITA 18 %, WIT 7 %) and, at 07:25 local in each zone, a burst of --burst-s
seconds that lifts the national rate to --burst (10,000/s) in the WIB hour and by the zone's share of that
rise in the other two. Time is compressed: the flat parts by --compress (3 h in 10800/compress s), the
bursts not (a burst is about its height and length); rates are the real ones, so the population is scaled:
every punch is one employee's check-in, and the run prints how many employees that is.

Each tier behaves like the forwarder: its outbox fills as the schedule says, a run every --interval s (a
random phase per tier) sends what arrived since the last run in batches of --batch-size, one request after
the other, with the forwarder's documents (gateway.wire via load.forward_body, gzipped like it); a timeout,
refused connection or 5xx is retried whole after gateway.forward.forwarder.full_jitter (the outage back-off;
the forwarder's halving of a batch answered 5xx is not simulated);
--resend of the accepted batches are sent again as if the answer had been lost (must be replayed, never
stored twice). Bodies are built before the clock starts (a run's batches are cut at its planned time: a
late run sends them as planned, where the real forwarder would merge a backlog into full batches).
Each tier holds a regency token (``1801.*``, docs/tiers.md) and its batches mix the punches of its --offices
offices, each under its own office code (``"tier": true``); --office-tokens runs today's office-gateway
format instead (one token per tier for office <regency>.00).

Measured: accepted punches/s over the peak and the highest 5-s window, batch latency p50/p95/p99, backlog
(generated - accepted) at the end of the peak and its maximum, how long each burst and the whole peak take to
drain, delay of a punch from its tier's outbox to the central, database size per million punches
(pg_total_relation_size), the pull API paging one office's day and the nation's day to the end of the cursor
feed, and exactly once (rows in the database = punches generated, per office). Baseline, same run: every
tier sending --capacity-batches full batches at once, as fast as the central takes them (its capacity).

    .venv/bin/python benchmarks/bench_national.py [--quick] [--tiers 514] [--sustained 1500] [--burst 10000]
        [--compress 30] [--burst-s 30] [--interval 30] [--batch-size 500] [--procs 2] [--json PATH]
"""

from __future__ import annotations

import asyncio
import bisect
import json
import math
import multiprocessing as mp
import os
import pickle
import random
import resource
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from benchmarks import load  # noqa: E402
from benchmarks.harness import Report, bench_args, migrated_database  # noqa: E402

#: The issue's national figures.
GOAL_SUSTAINED_PER_S = 1500.0
GOAL_BURST_PER_S = 10_000.0
#: A batch answered within this keeps a burst's 2-4 batches per tier well inside one forwarder interval and
#: far from forward.timeout_s (30 s), past which the forwarder would resend (double work for the central).
GOAL_BATCH_P95_S = 2.0
#: The BKD's interactive look at one office's day.
GOAL_OFFICE_DAY_S = 1.0
#: The nation's day (16 million punches, issue 15) pulled within an hour.
NATION_DAY_PUNCHES = 16_000_000
GOAL_NATION_PULL_PER_S = NATION_DAY_PUNCHES / 3600
#: Rows a year at national scale (issue 15), for the storage projection.
NATION_ROWS_A_YEAR = 6e9
#: The day whose morning is replayed (a Monday); the capacity baseline's punches are dated the day after.
DAY = date(2026, 11, 23)
#: Bursts start at this local time in each zone.
BURST_LOCAL = (7, 25)


@dataclass(frozen=True)
class Zone:
    """One Indonesian time zone: its share of the civil servants and the province codes (BPS) in it."""

    name: str
    tz: str
    utc_offset_h: int
    share: float
    provinces: tuple[str, ...]


ZONES = (
    Zone("WIT", "Asia/Jayapura", 9, 0.07, ("81", "82", "91", "92", "93", "94", "95", "96")),
    Zone("WITA", "Asia/Makassar", 8, 0.18, ("51", "52", "53", "63", "64", "65", "71", "72", "73", "74", "75", "76")),
    Zone("WIB", "Asia/Jakarta", 7, 0.75, ("11", "12", "13", "14", "15", "16", "17", "18", "19", "21", "31", "32",
                                          "33", "34", "35", "36", "61", "62")),
)


@dataclass(frozen=True)
class Tier:
    """A regency tier forwarding to the national central."""

    index: int
    zone: int
    code: str  # regency code, e.g. "1801"
    devices: int
    #: Offices under it (<code>.01 ...); 0: today's format, one office <code>.00 and a one-office token.
    offices: int = 0

    def office_of(self, seq: int) -> str:
        """The office of the tier's punch number ``seq`` (its terminal's office: seq % devices, round robin)."""
        if not self.offices:
            return f"{self.code}.00"
        return f"{self.code}.{(seq % self.devices) % self.offices + 1:02d}"

    @property
    def token_scope(self) -> list[str]:
        """Its gateway token's offices: a regency token (``1801.*``) or today's one office."""
        return [f"{self.code}.*"] if self.offices else [self.office_of(0)]


@dataclass(frozen=True)
class Segment:
    """A stretch of the replay with constant rates: replay seconds [start, end), per-zone punches/s."""

    start: float
    end: float
    nominal_start: datetime  # UTC instant the replay's ``start`` stands for
    nominal_per_s: float  # nominal seconds per replay second (the compression)
    rates: tuple[float, ...]
    burst_zone: int | None = None


def make_tiers(n: int, devices: int, offices: int) -> list[Tier]:
    """``n`` tiers split over the zones by share, regency codes <province><nn> cycling over each zone's provinces."""
    counts = [max(1, round(n * z.share)) for z in ZONES]
    counts[-1] = max(1, n - sum(counts[:-1]))
    tiers = []
    for zi, (zone, count) in enumerate(zip(ZONES, counts, strict=True)):
        for k in range(count):
            prov = zone.provinces[k % len(zone.provinces)]
            tiers.append(Tier(len(tiers), zi, f"{prov}{k // len(zone.provinces) + 1:02d}", devices, offices))
    return tiers


def make_schedule(sustained: float, burst: float, compress: float, burst_s: float) -> list[Segment]:
    """The replayed national morning: per zone hour a flat part, a burst at 07:25 local, a flat part."""
    segments: list[Segment] = []
    t = 0.0
    top = max(z.share for z in ZONES)
    flat = tuple(sustained * z.share for z in ZONES)
    for zi, zone in enumerate(ZONES):  # WIT's hour first (it is 07:00 there first)
        hour = datetime(DAY.year, DAY.month, DAY.day, 7, tzinfo=UTC) - timedelta(hours=zone.utc_offset_h)
        burst_at = hour + timedelta(minutes=BURST_LOCAL[1])
        extra = max(0.0, burst - sustained) * zone.share / top
        lifted = tuple(r + (extra if i == zi else 0.0) for i, r in enumerate(flat))
        before = (burst_at - hour).total_seconds()
        after = 3600 - before - burst_s
        for nominal, length, per_s, rates, bz in ((hour, before / compress, compress, flat, None),
                                                  (burst_at, burst_s, 1.0, lifted, zi),
                                                  (burst_at + timedelta(seconds=burst_s), after / compress,
                                                   compress, flat, None)):
            segments.append(Segment(t, t + length, nominal, per_s, rates, bz))
            t += length
    return segments


def make_arrivals(segments: Sequence[Segment], tiers: Sequence[Tier], rng: random.Random) -> list[list[float]]:
    """Per tier, the replay instants its punches reach its outbox (sorted): each zone's rate spread uniformly
    over the segment and over the zone's tiers."""
    by_zone = [[t.index for t in tiers if t.zone == zi] for zi in range(len(ZONES))]
    out: list[list[float]] = [[] for _ in tiers]
    carry = [0.0] * len(ZONES)
    for seg in segments:
        for zi, rate in enumerate(seg.rates):
            exact = rate * (seg.end - seg.start) + carry[zi]
            n = int(exact)
            carry[zi] = exact - n
            members = by_zone[zi]
            for _ in range(n):
                out[members[rng.randrange(len(members))]].append(seg.start + rng.random() * (seg.end - seg.start))
    for times in out:
        times.sort()
    return out


def nominal_time(segments: Sequence[Segment], starts: Sequence[float], t: float) -> datetime:
    """The UTC instant replay time ``t`` stands for."""
    seg = segments[max(0, bisect.bisect_right(starts, t) - 1)]
    return seg.nominal_start + timedelta(seconds=(t - seg.start) * seg.nominal_per_s)


# --------------------------------------------------------------------------------------------------
# What one tier sends: its forwarder runs, cut into batches
# --------------------------------------------------------------------------------------------------

@dataclass
class Batch:
    """One request body and the tier's punches it carries (indexes lo..hi-1 into the tier's arrivals)."""

    lo: int
    hi: int
    body: bytes


@dataclass
class TierPlan:
    """A tier's token and its forwarder runs: (planned replay time, batches)."""

    tier: int
    token: str
    runs: list[tuple[float, list[Batch]]] = field(default_factory=list)


def plan_tier(tier: Tier, token: str, arrivals: Sequence[float], segments: Sequence[Segment], *, interval: float,
              phase: float, end: float, batch_size: int, day_shift: int = 0) -> TierPlan:
    """Build the tier's request bodies: a run at phase + k * interval sends what arrived since the last run."""
    from gateway import __version__, wire

    zone = ZONES[tier.zone]
    offset = timedelta(hours=zone.utc_offset_h)
    starts = [s.start for s in segments]
    plan = TierPlan(tier.index, token)
    sent = 0
    run_at = phase
    while sent < len(arrivals):
        upto = bisect.bisect_right(arrivals, run_at) if run_at < end else len(arrivals)
        batches = []
        for lo in range(sent, upto, batch_size):
            hi = min(upto, lo + batch_size)
            punches = []
            for seq in range(lo, hi):
                utc = nominal_time(segments, starts, arrivals[seq]).replace(microsecond=0) + timedelta(days=day_shift)
                local = (utc + offset).replace(tzinfo=None)
                device = seq % tier.devices
                punches.append(wire.encode_punch({
                    "office_code": tier.office_of(seq), "device_id": f"t{device:02d}",
                    "device_serial": f"NAT{tier.index:04d}{device:02d}{'B' if day_shift else ''}",
                    "device_user_id": str(seq), "device_time": local.strftime("%Y-%m-%d %H:%M:%S"),
                    "local_time": local, "utc_time": utc, "timezone": zone.tz, "state": 0,
                    "state_name": "check_in", "verify": 1, "verify_name": "finger", "uid": seq % 60000 + 1,
                    "workcode": 0, "raw_time": -1, "employee_id": f"19{tier.index:04d}{seq:012d}", "flags": ""}))
            oldest = arrivals[lo]
            # A regency central says it is a tier and names its own code (docs/tiers.md).
            meta = wire.gateway_meta(office_code=tier.code if tier.offices else tier.office_of(0),
                                     office_name=f"Regency {tier.code}", hostname=f"regency-{tier.code}",
                                     version=__version__, outbox_depth=upto - lo,
                                     oldest_unforwarded_s=max(0.0, run_at - oldest),
                                     **({"tier": True} if tier.offices else {}))
            batches.append(Batch(lo, hi, load.forward_body(punches, meta)))
        if batches:
            plan.runs.append((run_at, batches))
        sent = upto
        run_at += interval
    return plan


# --------------------------------------------------------------------------------------------------
# Sender processes
# --------------------------------------------------------------------------------------------------

@dataclass
class SenderSettings:
    url: str
    timeout_s: float
    resend: float
    stop_after_s: float
    seed: int


@dataclass
class SenderResult:
    """What one sender process saw (replay seconds from the common start)."""

    #: (tier, lo, hi, first accepted at, new, duplicates)
    accepted: list[tuple[int, int, int, float, int, int]] = field(default_factory=list)
    #: (sent at, seconds, HTTP status or -1 timeout / -2 transport error) of every attempt of a planned batch
    attempts: list[tuple[float, float, int]] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    resends: int = 0
    #: Resends that got no answer (timeout, connection lost): not judged.
    resends_unanswered: int = 0
    replayed: int = 0
    cpu_s: float = 0.0
    loop_lag_max_s: float = 0.0
    build_s: float = 0.0


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def _send_tier(client: httpx.AsyncClient, plan: TierPlan, cfg: SenderSettings, t0: float,
                     res: SenderResult, rng: random.Random) -> None:
    from gateway.config import ForwardConfig
    from gateway.forward.forwarder import INGEST_PUNCHES, full_jitter

    fwd = ForwardConfig()
    ceiling = min(fwd.backoff_max_s, fwd.outage_retry_max_s)
    failures = 0
    for planned, batches in plan.runs:
        wait = t0 + planned - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        for batch in batches:
            headers = load.body_headers(batch.body)
            while True:
                now = time.monotonic()
                if now - t0 > cfg.stop_after_s:
                    return
                try:
                    resp = await client.post(f"{cfg.url}{INGEST_PUNCHES}", content=batch.body, headers=headers)
                    status = resp.status_code
                except httpx.TimeoutException:
                    status = -1
                except httpx.TransportError:
                    status = -2
                done = time.monotonic()
                res.attempts.append((now - t0, done - now, status))
                if status == 200:
                    answer = resp.json()
                    res.accepted.append((plan.tier, batch.lo, batch.hi, done - t0, int(answer["new"]),
                                         int(answer["duplicates"])))
                    failures = 0
                    if rng.random() < cfg.resend:  # the answer "lost": the forwarder sends the batch again
                        try:
                            again = await client.post(f"{cfg.url}{INGEST_PUNCHES}", content=batch.body,
                                                      headers=headers)
                        except httpx.TransportError:  # timeouts included: the batch is in already, nothing to do
                            res.resends_unanswered += 1
                        else:
                            res.resends += 1
                            res.replayed += again.status_code == 200 and again.headers.get("x-fpgw-replayed") == "1"
                    break
                if 0 < status < 500 and status != 429:
                    res.refused.append(f"HTTP {status} {resp.text[:200]}")
                    break
                failures += 1
                await asyncio.sleep(full_jitter(rng, fwd.backoff_initial_s, ceiling, failures))


async def _loop_lag(res: SenderResult, stop: asyncio.Event) -> None:
    while not stop.is_set():
        t = time.monotonic()
        await asyncio.sleep(0.1)
        res.loop_lag_max_s = max(res.loop_lag_max_s, time.monotonic() - t - 0.1)


async def _send_all(plans: Sequence[TierPlan], cfg: SenderSettings, t0: float, res: SenderResult) -> None:
    rng = random.Random(cfg.seed)
    clients = [load.sender_client(p.token, cfg.timeout_s) for p in plans]
    stop = asyncio.Event()
    lag = asyncio.ensure_future(_loop_lag(res, stop))
    try:
        await asyncio.gather(*(_send_tier(c, p, cfg, t0, res, rng) for c, p in zip(clients, plans, strict=True)))
    finally:
        stop.set()
        await lag
        await asyncio.gather(*(c.aclose() for c in clients))


def sender_process(build: list[tuple[Tier, str, list[float], float]], plan_kw: dict[str, Any],
                   cfg: SenderSettings, ready: Any, go: Any, start_at: Any, out: str) -> None:
    """A sender process: build its tiers' bodies, say ready, wait for the common start, send, write results."""
    res = SenderResult()
    c0 = time.perf_counter()
    plans = [plan_tier(tier, token, arrivals, phase=phase, **plan_kw) for tier, token, arrivals, phase in build]
    res.build_s = time.perf_counter() - c0
    ready.release()
    go.wait()
    t0 = start_at.value
    cpu0 = _cpu()
    asyncio.run(_send_all(plans, cfg, t0, res))
    res.cpu_s = _cpu() - cpu0
    Path(out).write_bytes(pickle.dumps(res))


def run_senders(tiers: Sequence[Tier], tokens: Sequence[str], arrivals: Sequence[list[float]],
                phases: Sequence[float], plan_kw: dict[str, Any], cfg: SenderSettings, procs: int,
                tmp: Path, tag: str) -> tuple[list[SenderResult], float, float]:
    """Fork ``procs`` sender processes over the tiers; (their results, seconds they took to build, wall of the
    sending from the common start)."""
    ctx = mp.get_context("fork")
    ready, go, start_at = ctx.Semaphore(0), ctx.Event(), ctx.Value("d", 0.0)
    groups = [list(range(i, len(tiers), procs)) for i in range(procs)]
    outs = [str(tmp / f"senders-{tag}-{i}.pickle") for i in range(procs)]
    workers = []
    b0 = time.perf_counter()
    for i, group in enumerate(groups):
        build = [(tiers[k], tokens[k], arrivals[k], phases[k]) for k in group]
        w = ctx.Process(target=sender_process, args=(build, plan_kw, SenderSettings(**{**cfg.__dict__,
                        "seed": cfg.seed + i}), ready, go, start_at, outs[i]), daemon=True)
        w.start()
        workers.append(w)
    try:
        for _ in workers:
            while not ready.acquire(timeout=1.0):
                dead = [w for w in workers if not w.is_alive()]
                if dead:
                    raise SystemExit(f"a sender process died while building its bodies (exit {dead[0].exitcode})")
        built = time.perf_counter() - b0
        start_at.value = time.monotonic() + 0.5
        go.set()
        for w in workers:
            w.join(cfg.stop_after_s + 120)
        wall = time.monotonic() - start_at.value
        if any(w.exitcode != 0 for w in workers):
            raise SystemExit(f"a sender process failed: exit codes {[w.exitcode for w in workers]}")
    finally:
        for w in workers:
            if w.is_alive():
                w.kill()
                w.join(10)
    return [pickle.loads(Path(o).read_bytes()) for o in outs], built, wall


# --------------------------------------------------------------------------------------------------
# Database and pull API
# --------------------------------------------------------------------------------------------------

def db_facts(db_url: str) -> dict[str, Any]:
    """Row counts per office and day, and the sizes of the punches and receipts tables and the database."""
    from sqlalchemy import text

    from gateway.store.db import create_db_engine

    engine = create_db_engine(db_url, pool_size=1)
    try:
        with engine.connect() as conn:
            counts = {(r[0], r[1]): int(r[2]) for r in conn.execute(text(
                "SELECT office_code, CAST(local_time AS date), count(*) FROM punches GROUP BY 1, 2"))}
            sizes = conn.execute(text(
                "SELECT pg_total_relation_size('punches'), pg_total_relation_size('ingest_batches'), "
                "pg_database_size(current_database())")).one()
    finally:
        engine.dispose()
    return {"counts": counts, "punches_bytes": int(sizes[0]), "receipts_bytes": int(sizes[1]),
            "database_bytes": int(sizes[2])}


def pull_day(url: str, token: str, day: date, office: str | None) -> tuple[int, int, float]:
    """Page GET /api/v1/punches for one day (one office or all) to the end of the cursor feed:
    (rows, pages, seconds)."""
    params: dict[str, str] = {"date": day.isoformat(), "limit": "10000"}
    if office:
        params["office"] = office
    rows = pages = 0
    t0 = time.perf_counter()
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=600) as client:
        while True:
            resp = client.get("/api/v1/punches", params=params)
            if resp.status_code != 200:
                raise SystemExit(f"pull API answered {resp.status_code}: {resp.text[:300]}")
            doc = resp.json()
            rows += int(doc["count"])
            pages += 1
            if not doc["has_more"]:
                break
            params["cursor"] = doc["next_cursor"]
    return rows, pages, time.perf_counter() - t0


# --------------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------------

def pct(values: Sequence[float], q: float) -> float:
    """The q-quantile (0..1) of ``values`` (nearest rank); 0 for none."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def measure(args: Any, report: Report, server_url: str, tmp: Path) -> None:
    rng = random.Random(args.seed)
    tiers = make_tiers(args.tiers, args.devices, 0 if args.office_tokens else args.offices)
    segments = make_schedule(args.sustained, args.burst, args.compress, args.burst_s)
    end = segments[-1].end
    arrivals = make_arrivals(segments, tiers, rng)
    generated = sum(len(a) for a in arrivals)
    phases = [rng.uniform(0, args.interval) for _ in tiers]
    by_zone = Counter(tiers[i].zone for i, a in enumerate(arrivals) for _ in range(len(a)))
    uncompressed = sum(sum(s.rates) * (s.end - s.start) * s.nominal_per_s for s in segments)
    report.note(f"schedule: 3 h of national peak (22:00-01:00 UTC) replayed in {end:.0f} s: flat parts compressed "
                f"{args.compress:g}x, bursts ({args.burst_s:g} s at 07:25 local) not; {generated:,} punches, each one "
                f"employee's check-in (the whole 3 h at these rates: {uncompressed:,.0f}), "
                + ", ".join(f"{z.name} {by_zone[zi]:,}" for zi, z in enumerate(ZONES))
                + f"; {len(tiers)} tiers, "
                + ("one-office tokens" if args.office_tokens else f"regency tokens, {args.offices} offices each")
                + f", forwarder interval {args.interval:g} s, batches of {args.batch_size}")
    if args.sustained < GOAL_SUSTAINED_PER_S or args.burst < GOAL_BURST_PER_S:
        report.note(f"rates scaled down from the national figures: sustained {args.sustained:g}/s, burst "
                    f"{args.burst:g}/s (goals stay the national ones)")
    tokens_file = tmp / "tiers.toml"
    tokens = load.write_gateway_tokens(tokens_file, [t.code for t in tiers], [t.token_scope for t in tiers])
    os.environ["GW_TEST_PG_URL"] = server_url  # migrated_database takes the server from there
    with migrated_database("postgresql", tmp / "unused.db") as db_url, \
            load.central_daemon(tmp, "national", db_url, tokens_file, max_connections=len(tiers) + 100) as daemon:
        cfg = SenderSettings(url=daemon.url, timeout_s=args.timeout, resend=args.resend,
                             stop_after_s=end + args.interval + args.drain_limit, seed=args.seed)
        plan_kw = {"segments": segments, "interval": args.interval, "end": end, "batch_size": args.batch_size}
        cpu_daemon0, busy0 = load.process_cpu_s(daemon.proc.pid), load.machine_busy_s()
        results, built, wall = run_senders(tiers, tokens, arrivals, phases, plan_kw, cfg, args.procs, tmp, "peak")
        cpu_daemon = load.process_cpu_s(daemon.proc.pid) - cpu_daemon0
        busy1 = load.machine_busy_s()
        facts = db_facts(db_url)
        summarize_peak(args, report, tiers, segments, arrivals, results, built, wall, cpu_daemon,
                       (busy1[0] - busy0[0], busy1[1] - busy0[1]), facts)
        pull(args, report, daemon, tiers, arrivals, db_url)
        if args.capacity_batches:
            capacity(args, report, tiers, tokens, segments, cfg, tmp, generated)
        events: Counter[str] = Counter()
        for line in daemon.log.read_text(errors="replace").splitlines():
            try:
                events[json.loads(line).get("event", "?")] += 1
            except ValueError:
                events[line[:80]] += 1
        if events:
            report.note("the central's log (warnings and up): " + "; ".join(f"{n} x {e}" for e, n in
                                                                              events.most_common(5)))
        final = load.stored_punches(db_url)
        expected = generated + (len(tiers) * args.capacity_batches * args.batch_size if args.capacity_batches else 0)
        if final != expected:
            raise SystemExit(f"exactly once: {final:,} rows in the database after the capacity run, {expected:,} "
                             "punches sent: lost or duplicated")


def office_counts(tiers: Sequence[Tier], arrivals: Sequence[list[float]]) -> dict[str, int]:
    """Punches generated per office."""
    counts: Counter[str] = Counter()
    for t in tiers:
        for seq in range(len(arrivals[t.index])):
            counts[t.office_of(seq)] += 1
    return dict(counts)


def summarize_peak(args: Any, report: Report, tiers: Sequence[Tier], segments: Sequence[Segment],
                   arrivals: Sequence[list[float]], results: Sequence[SenderResult], built: float, wall: float,
                   cpu_daemon: float, busy: tuple[float, float], facts: dict[str, Any]) -> None:
    end = segments[-1].end
    interval = args.interval
    generated = sum(len(a) for a in arrivals)
    accepted = [a for r in results for a in r.accepted]
    attempts = [a for r in results for a in r.attempts]
    refused = [x for r in results for x in r.refused]
    # -- exactly once ---------------------------------------------------------------------------
    per_office = office_counts(tiers, arrivals)
    stored = {office: n for (office, day), n in facts["counts"].items() if day == DAY}
    sent = sum(hi - lo for _, lo, hi, *_ in accepted)
    new = sum(a[4] for a in accepted)
    resends = sum(r.resends for r in results)
    replayed = sum(r.replayed for r in results)
    unanswered = sum(r.resends_unanswered for r in results)
    if refused:
        raise SystemExit(f"the central refused batches ({len(refused)}), e.g. {refused[0]}")
    if sum(stored.values()) != new or new != sent or replayed != resends:
        raise SystemExit(f"exactly once: {sum(stored.values()):,} rows stored, {new:,} answered new, {sent:,} punches "
                         f"acknowledged, {replayed} of {resends} resends replayed")
    if sent == generated and stored != per_office:
        wrong = sorted(o for o in per_office if stored.get(o) != per_office[o])
        raise SystemExit(f"exactly once: the rows of {len(wrong)} offices differ from what was generated, e.g. "
                         f"{wrong[0]}: {stored.get(wrong[0])} stored, {per_office[wrong[0]]} generated")
    report.at_most("national.exactly_once.missing", "punches generated but not in the database after the drain",
                   measured=generated - sum(stored.values()), goal=0, unit="punches",
                   detail=f"{sum(stored.values()):,} of {generated:,} stored, every office's count equal; "
                          f"{resends} batches resent (answer lost), {replayed} replayed, 0 stored twice"
                          + (f"; {unanswered} resends got no answer" if unanswered else ""))
    # -- rates ----------------------------------------------------------------------------------
    done_times = sorted((a[3], a[2] - a[1]) for a in accepted)
    times_done = [t for t, _ in done_times]
    cum = [0]
    for _, n in done_times:
        cum.append(cum[-1] + n)

    def accepted_by(t: float) -> int:
        return cum[bisect.bisect_right(times_done, t)]

    all_arrivals = sorted(x for a in arrivals for x in a)

    def generated_by(t: float) -> int:
        return bisect.bisect_right(all_arrivals, t)

    window = accepted_by(end + interval) - accepted_by(interval)
    sustained = window / end
    offered = generated / end
    report.at_least("national.ingest.sustained", "accepted punches/s over the peak (window shifted by one "
                    "forwarder interval)", measured=sustained, goal=GOAL_SUSTAINED_PER_S, unit="punches/s",
                    detail=f"offered {offered:,.0f}/s on average (flat {args.sustained:,.0f}/s + bursts); "
                           f"{end:.0f} s of peak")
    peak_acc = max((accepted_by(t + 5) - accepted_by(t)) / 5 for t in range(0, int(end + interval)))
    peak_gen = max((generated_by(t + 5) - generated_by(t)) / 5 for t in range(0, int(end)))
    report.figure("national.ingest.peak_5s", "accepted punches/s, highest 5-s window", measured=peak_acc,
                  unit="punches/s", detail=f"offered: highest 5-s window {peak_gen:,.0f}/s")
    # -- backlog and drains ---------------------------------------------------------------------
    backlog_end = generated_by(end) - accepted_by(end)
    backlog_max = max(generated_by(t) - accepted_by(t) for t in range(0, int(end) + 1))
    natural = args.sustained * interval
    report.at_most("national.backlog.end_of_peak", "backlog (generated - accepted) at the end of the peak",
                   measured=backlog_end, goal=natural, unit="punches",
                   detail=f"goal: one forwarder interval of the sustained rate (the punches waiting for their "
                          f"tier's next run); highest during the peak {backlog_max:,}")
    last = max(times_done) if times_done else float("inf")
    drain = last - end if sent == generated else float("inf")
    report.at_most("national.drain_after_peak_s", "last punch accepted, seconds after the end of the peak",
                   measured=min(drain, 1e9), goal=2 * interval, unit="s",
                   detail=f"goal: 2 forwarder intervals; {generated - sent:,} never accepted" if sent != generated
                   else "goal: 2 forwarder intervals (each tier's next run sends its rest)")
    first_arrival = {(a[0], a[1]): arrivals[a[0]][a[1]] for a in accepted}
    for seg in segments:
        if seg.burst_zone is None:
            continue
        zone = ZONES[seg.burst_zone]
        late = [a[3] for a in accepted if first_arrival[(a[0], a[1])] <= seg.end]
        lag = max(late) - seg.end if late else float("inf")
        rate = sum(seg.rates)
        key = f"national.burst.{zone.name.lower()}.drain_s"
        what = f"{zone.name} burst ({rate:,.0f}/s for {args.burst_s:g} s): everything up to its end accepted after"
        if zone.share == max(z.share for z in ZONES):
            report.at_most(key, what, measured=lag, goal=2 * interval, unit="s",
                           detail="goal: 2 forwarder intervals")
        else:
            report.figure(key, what, measured=lag, unit="s")
    # -- latency and delay ----------------------------------------------------------------------
    ok = [d for _, d, s in attempts if s == 200]
    failed = Counter("timeout" if s == -1 else "transport" if s == -2 else f"HTTP {s}" for _, _, s in attempts
                     if s != 200)
    report.figure("national.batch.p50_s", "batch latency p50", measured=pct(ok, 0.5), unit="s",
                  detail=f"{len(ok):,} batches accepted")
    report.at_most("national.batch.p95_s", "batch latency p95 (request to answer, one tier's batch)",
                   measured=pct(ok, 0.95), goal=GOAL_BATCH_P95_S, unit="s",
                   detail=f"p99 {pct(ok, 0.99):.2f} s, max {max(ok, default=0):.2f} s; failed attempts retried: "
                          + (", ".join(f"{k} {v}" for k, v in sorted(failed.items())) or "none"))
    # A burst's batches go out during it and up to one interval after (the tiers' next runs).
    windows = [(seg.start, seg.end + interval) for seg in segments if seg.burst_zone is not None]
    in_burst = [d for t, d, st in attempts if st == 200 and any(a <= t < b for a, b in windows)]
    flat = [d for t, d, st in attempts if st == 200 and not any(a <= t < b for a, b in windows)]
    slow = Counter(int(t // 10) * 10 for t, d, st in attempts if st == 200 and d > 1.0)
    if slow:
        report.note("batches slower than 1 s, by 10-s stretch of the replay (start s: count), busiest first: "
                    + ", ".join(f"{t}: {n}" for t, n in slow.most_common(8))
                    + "; bursts at " + ", ".join(f"{a:.0f}-{b:.0f}" for a, b in windows))
    report.figure("national.batch.flat_p95_s", "batch latency p95 outside the bursts", measured=pct(flat, 0.95),
                  unit="s", detail=f"{len(flat):,} batches, p50 {pct(flat, 0.5):.2f} s")
    report.figure("national.batch.burst_p95_s", "batch latency p95 during a burst and one interval after it",
                  measured=pct(in_burst, 0.95), unit="s", detail=f"{len(in_burst):,} batches, p50 "
                                                                 f"{pct(in_burst, 0.5):.2f} s")
    delays = [a[3] - x for a in accepted for x in arrivals[a[0]][a[1]:a[2]]]
    report.figure("national.delay.p95_s", "delay of a punch from its tier's outbox to the central, p95",
                  measured=pct(delays, 0.95), unit="s",
                  detail=f"p50 {pct(delays, 0.5):.1f} s, max {max(delays, default=0):.1f} s "
                         f"(a forwarder interval of {interval:g} s is the floor)")
    # -- storage --------------------------------------------------------------------------------
    rows = sum(stored.values())
    if rows:
        per_m = facts["punches_bytes"] / rows * 1e6 / 2**20
        report.figure("national.db.punches_mib_per_million", "punches table (rows, indexes, TOAST) per million "
                      "punches", measured=per_m, unit="MiB",
                      detail=f"{facts['punches_bytes'] / 2**20:,.0f} MiB for {rows:,}; receipts "
                             f"{facts['receipts_bytes'] / rows * 1e6 / 2**20:,.1f} MiB per million; database "
                             f"{facts['database_bytes'] / 2**20:,.0f} MiB")
        report.figure("national.db.year_tib", "punches table for a year at national scale (6 billion rows)",
                      measured=per_m * NATION_ROWS_A_YEAR / 1e6 / 2**20, unit="TiB",
                      detail="projected linearly from the row above; receipts pruned")
    # -- who used the CPU -----------------------------------------------------------------------
    cores = os.cpu_count() or 1
    gen_cpu = sum(r.cpu_s for r in results)
    report.figure("national.cpu.senders_pct", "senders' own CPU during the replay, % of the machine",
                  measured=100 * gen_cpu / (wall * cores), unit="%",
                  detail=f"{args.procs} processes, {gen_cpu:.1f} CPU s in {wall:.0f} s; bodies built beforehand in "
                         f"{built:.1f} s; event loop lag max {max(r.loop_lag_max_s for r in results):.2f} s")
    report.figure("national.cpu.central_pct", "central daemon's CPU during the replay, % of the machine",
                  measured=100 * cpu_daemon / (wall * cores), unit="%",
                  detail=f"{cpu_daemon:.1f} CPU s; PostgreSQL not included; whole machine busy "
                         f"{100 * busy[0] / busy[1] if busy[1] else 0:.0f} % (other jobs included)")


def feed_plan(db_url: str, office: str | None) -> str:
    """How PostgreSQL runs the first page of the feed for DAY (one office or all): the plan's nodes, the index
    each one uses, and the rows it read and threw away (EXPLAIN ANALYZE of the statement CentralStore.feed runs)."""

    from sqlalchemy import select

    from gateway.store import schema as s
    from gateway.store.central import FEED_COLUMNS, PunchQuery
    from gateway.store.db import create_db_engine
    from gateway.store.punches import where_punches

    p = s.punches.c
    q = where_punches(select(p.id, *(p[k] for k in FEED_COLUMNS)).where(p.id > 0),
                      PunchQuery(office_code=office, date_from=DAY, date_to=DAY)).order_by(p.id).limit(10000)
    engine = create_db_engine(db_url, pool_size=1)
    try:
        with engine.connect() as conn:
            compiled = q.compile(dialect=conn.dialect)
            plan = conn.exec_driver_sql(f"EXPLAIN (ANALYZE, FORMAT JSON) {compiled}", compiled.params).scalar_one()
    finally:
        engine.dispose()
    plan = json.loads(plan) if isinstance(plan, str) else plan
    parts = []

    def walk(node: dict[str, Any]) -> None:
        what = node["Node Type"] + (f" using {node['Index Name']}" if node.get("Index Name") else "")
        removed = node.get("Rows Removed by Filter")
        parts.append(f"{what} ({node.get('Actual Rows', 0):,} rows"
                     + (f", {removed:,} read and filtered out" if removed else "") + ")")
        for child in node.get("Plans", ()):
            walk(child)

    walk(plan[0]["Plan"])
    return " > ".join(parts) + f"; {plan[0].get('Execution Time', 0):.0f} ms"


def pull(args: Any, report: Report, daemon: load.Daemon, tiers: Sequence[Tier],
         arrivals: Sequence[list[float]], db_url: str) -> None:
    per_office = office_counts(tiers, arrivals)
    zone_of = {t.office_of(seq): t.zone for t in tiers for seq in range(min(len(arrivals[t.index]), t.devices))}
    biggest = sorted(per_office, key=lambda o: -per_office[o])
    picks: list[str] = []
    for zi in range(len(ZONES)):  # the largest office of each zone, then the next largest overall
        picks += [o for o in biggest if zone_of.get(o) == zi][:1]
    picks += [o for o in biggest if o not in picks][:max(0, args.pull_offices - len(picks))]
    times = []
    for office in picks:
        rows, pages, secs = pull_day(daemon.url, daemon.api_token, DAY, office)
        if rows != per_office[office]:
            raise SystemExit(f"pull API: office {office} day has {rows} punches, {per_office[office]} sent")
        times.append((secs, rows, pages))
    worst = max(times)
    office_plan = feed_plan(db_url, picks[0])
    report.note(f"pull API plan of an office's day, first page ({picks[0]}): {office_plan}")
    report.note(f"pull API plan of the nation's day, first page: {feed_plan(db_url, None)}")
    report.at_most("national.pull.office_day_s", "pull API, one office's day paged to the end of the feed, slowest",
                   measured=worst[0], goal=GOAL_OFFICE_DAY_S, unit="s",
                   detail=f"{len(times)} offices, median {statistics.median(s for s, _, _ in times):.2f} s; slowest "
                          f"{worst[1]:,} punches in {worst[2]} pages (limit 10,000)")
    total = sum(len(a) for a in arrivals)
    rows, pages, secs = pull_day(daemon.url, daemon.api_token, DAY, None)
    if rows != total:
        raise SystemExit(f"pull API: the nation's day has {rows} punches, {total} sent")
    report.at_least("national.pull.nation_day_per_s", "pull API, the nation's day paged to the end of the feed",
                    measured=rows / secs, goal=GOAL_NATION_PULL_PER_S, unit="punches/s",
                    detail=f"{rows:,} punches, {pages} pages in {secs:.1f} s; goal: 16 million within an hour")


def capacity(args: Any, report: Report, tiers: Sequence[Tier], tokens: Sequence[str], segments: Sequence[Segment],
             cfg: SenderSettings, tmp: Path, generated: int) -> None:
    """Baseline, same run and daemon: every tier sends full batches back to back at once (the day after)."""
    n = args.capacity_batches * args.batch_size
    arrivals = [[i * 1e-6 for i in range(n)] for _ in tiers]
    plan_kw = {"segments": segments, "interval": 1e9, "end": 0.0, "batch_size": args.batch_size, "day_shift": 1}
    blast = SenderSettings(**{**cfg.__dict__, "resend": 0.0, "stop_after_s": 600.0})
    results, _, _ = run_senders(tiers, tokens, arrivals, [0.0] * len(tiers), plan_kw, blast, args.procs, tmp, "cap")
    accepted = [a for r in results for a in r.accepted]
    first = min(a[0] for r in results for a in r.attempts)
    last = max(a[3] for a in accepted)
    got = sum(a[2] - a[1] for a in accepted)
    if got != n * len(tiers) or sum(a[4] for a in accepted) != got:
        raise SystemExit(f"capacity run: {got:,} of {n * len(tiers):,} accepted")
    rate = got / (last - first)
    report.figure("national.capacity.per_s", "baseline: central capacity, every tier sending full batches at once",
                  measured=rate, unit="punches/s",
                  detail=f"{len(tiers)} tiers x {args.capacity_batches} x {args.batch_size}, on top of the "
                         f"{generated:,} rows of the peak")
    report.figure("national.capacity.vs_sustained", "capacity / the national sustained rate (1,500/s)",
                  measured=rate / GOAL_SUSTAINED_PER_S, unit="x")
    report.figure("national.capacity.vs_burst", "capacity / the national burst rate (10,000/s)",
                  measured=rate / GOAL_BURST_PER_S, unit="x",
                  detail="below 1: a burst is absorbed as a backlog that drains after it")


def main() -> int:
    args = bench_args(__doc__, extra=lambda ap: (
        ap.add_argument("--tiers", type=int, default=514, help="regency tiers forwarding at once"),
        ap.add_argument("--sustained", type=float, default=GOAL_SUSTAINED_PER_S, help="flat national punches/s"),
        ap.add_argument("--burst", type=float, default=GOAL_BURST_PER_S, help="national punches/s in WIB's burst"),
        ap.add_argument("--compress", type=float, default=30.0, help="time compression of the flat parts"),
        ap.add_argument("--burst-s", type=float, default=30.0, help="length of each burst (not compressed)"),
        ap.add_argument("--interval", type=float, default=30.0, help="forward.interval_s of the tiers"),
        ap.add_argument("--batch-size", type=int, default=500, help="forward.batch_size of the tiers"),
        ap.add_argument("--timeout", type=float, default=30.0, help="forward.timeout_s of the tiers"),
        ap.add_argument("--devices", type=int, default=40, help="terminals per tier"),
        ap.add_argument("--offices", type=int, default=20, help="offices per tier (regency tokens)"),
        ap.add_argument("--office-tokens", action="store_true",
                        help="today's format: each tier a gateway with a one-office token (no regency tokens)"),
        ap.add_argument("--procs", type=int, default=2, help="sender processes"),
        ap.add_argument("--resend", type=float, default=0.01, help="share of accepted batches sent again"),
        ap.add_argument("--drain-limit", type=float, default=300.0, help="seconds after the peak before giving up"),
        ap.add_argument("--pull-offices", type=int, default=5, help="offices whose day is pulled"),
        ap.add_argument("--capacity-batches", type=int, default=2, help="full batches per tier in the baseline "
                        "(0: skip it)"),
        ap.add_argument("--seed", type=int, default=15)))
    if args.quick:
        args.tiers, args.sustained, args.burst, args.compress, args.burst_s = 6, 40.0, 200.0, 1800.0, 2.0
        args.interval, args.batch_size, args.devices, args.offices, args.procs, args.resend = 1.5, 50, 4, 2, 2, 0.2
        args.drain_limit, args.pull_offices, args.capacity_batches = 30.0, 2, 2
    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(30))  # warnings and up only
    report = Report("bench_national", quick=args.quick)
    with load.postgres_server(report.notes) as server, \
            tempfile.TemporaryDirectory(prefix="fpgw-bench-national-") as tmp:
        if server is not None:
            measure(args, report, server, Path(tmp))
    report.note("machine shared with other jobs: compare ratios within one run")
    report.finish(args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

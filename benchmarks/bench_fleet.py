"""Benchmark: one real `fpgw run` polling a simulated fleet (default 1,000 terminals every 60 s) on this machine.

Where it sits: a standalone script; the product runs as it does in production, in separate processes:
``fpgw-sim --fleet`` serves every terminal on its own 127.x.y.z address (punch rate 0.5/min each) and
``fpgw run`` polls them into a fresh SQLite database. The script samples the gateway's CPU and RSS from
/proc, stops it with SIGTERM after the cold start plus ``--cycles`` intervals, then reads ``poll_runs``
and the gateway's own log. Run:

    .venv/bin/python benchmarks/bench_fleet.py                    # 1,000 terminals, 60 s, 5 cycles (~7 min)
    .venv/bin/python benchmarks/bench_fleet.py --quick            # 20 terminals, 5 s interval, 2 cycles

Rows: cold start (time until every terminal was read once; baseline: the same number of polls at the
measured steady poll rate), the worst per-terminal gap between two polls against the interval (goal
<= 1.5 x interval: every terminal polled every cycle), polls that missed a cycle, errors by kind
(goal 0; "database is locked" counted apart: poll_runs does not hold them, the database refused the
write, so they are counted from the gateway's end-of-run polling summary), CPU as % of the whole machine
(goal < 70 %) and the gateway's peak RSS (goal <= 300 MB).
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import itertools

from benchmarks.harness import Report, bench_args

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def proc_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def proc_threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    return 0


def write_fleet(path: Path, n: int, base_host: str, records: int, rate: float) -> None:
    path.write_text(f"""[fleet]
host = "{base_host}"
port = 4370
per_device = "host"
control_port = 0
log_level = "WARNING"

[defaults]
users = 50
records = {records}
punches_per_minute = {rate}

[[devices]]
serial = "FLEET"
count = {n}
""", encoding="utf-8")


def write_config(path: Path, n: int, base_host: str, db: Path, interval_s: float, http_port: int,
                 pool_size: int | None) -> None:
    a, b, c, d = (int(x) for x in base_host.split("."))
    base = (a << 24) | (b << 16) | (c << 8) | d
    lines = ["[site]", 'office_code = "FLEET"', 'timezone = "Asia/Jakarta"', "",
             "[database]", f'url = "sqlite:///{db}"', "",
             "[polling]", f"interval_s = {interval_s:g}", "timeout_s = 5"]
    if pool_size:
        lines.append(f"pool_size = {pool_size}")
    lines += ["", "[logging]", 'format = "json"', 'level = "info"', "",
              "[http]", f"port = {http_port}", ""]
    for i in range(n):
        ip = base + i
        addr = f"{ip >> 24 & 255}.{ip >> 16 & 255}.{ip >> 8 & 255}.{ip & 255}"
        lines += ["[[devices]]", f'id = "t{i:04d}"', f'address = "{addr}"', 'transport = "tcp"', ""]
    path.write_text("\n".join(lines), encoding="utf-8")


def wait_serving(sim: subprocess.Popen[str], timeout_s: float) -> None:
    """Block until fpgw-sim printed its "serving" line."""
    assert sim.stdout is not None
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        line = sim.stdout.readline()
        if not line:
            raise RuntimeError(f"fpgw-sim exited early (status {sim.poll()})")
        if "serving" in line:
            return
    raise RuntimeError("fpgw-sim did not start in time")


def read_runs(db: Path) -> list[tuple[str, float, float, str, str | None]]:
    """(device id, started epoch s, finished epoch s, outcome, error) of every poll run."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        rows = con.execute("SELECT d.device_id, r.started_at, r.finished_at, r.outcome, r.error FROM poll_runs r "
                           "JOIN devices d ON d.pk = r.device_pk ORDER BY r.started_at").fetchall()
    finally:
        con.close()

    def ts(text: str) -> float:
        return datetime.fromisoformat(text).timestamp()

    return [(d, ts(s), ts(f) if f else ts(s), o, e) for d, s, f, o, e in rows]


def read_summary(log_path: Path) -> dict[str, object]:
    """The gateway's end-of-run "polling summary" log line (gateway.polling.scheduler), and log counts."""
    summary: dict[str, object] = {}
    locked_lines = 0
    for line in log_path.read_text(encoding="utf-8", errors="replace").splitlines():
        if "database is locked" in line:
            locked_lines += 1
        if '"polling summary"' in line:
            try:
                summary = json.loads(line)
            except ValueError:
                pass
    summary["locked_log_lines"] = locked_lines
    return summary


def main() -> None:
    args = bench_args(__doc__, extra=lambda ap: (
        ap.add_argument("--devices", type=int, default=None, help="terminals (default 1000; quick 20)"),
        ap.add_argument("--interval", type=float, default=None, help="poll interval s (default 60; quick 5)"),
        ap.add_argument("--cycles", type=int, default=None, help="intervals after the cold start (5; quick 2)"),
        ap.add_argument("--records", type=int, default=200, help="records on each terminal at start"),
        ap.add_argument("--pool-size", type=int, default=None, help="polling.pool_size (default: fpgw's)"),
        ap.add_argument("--keep", action="store_true", help="keep the temporary folder (printed)")))
    n = args.devices or (20 if args.quick else 1000)
    interval = args.interval or (5.0 if args.quick else 60.0)
    cycles = args.cycles or (2 if args.quick else 5)
    report = Report("bench_fleet", quick=args.quick)
    # A random 127.x.0.1 base so two runs (or another helper's simulator) on one machine do not collide.
    base_host = f"127.{random.randint(64, 250)}.{random.randint(0, 200)}.1"
    tmp = Path(tempfile.mkdtemp(prefix="fpgw-fleet-"))
    db, cfg, fleet_file, log_path = tmp / "fleet.db", tmp / "fpgw.toml", tmp / "fleet.toml", tmp / "fpgw.log"
    write_fleet(fleet_file, n, base_host, args.records, 0.5)
    write_config(cfg, n, base_host, db, interval, free_port(), args.pool_size)
    sim = subprocess.Popen([str(BIN / "fpgw-sim"), "--fleet", str(fleet_file)], cwd=tmp, stdout=subprocess.PIPE,
                           stderr=subprocess.DEVNULL, text=True)
    gw: subprocess.Popen[bytes] | None = None
    samples: list[tuple[float, float, float]] = []  # (monotonic, cpu s, rss MB)
    threads_peak = 0
    try:
        wait_serving(sim, 120)
        with log_path.open("wb") as log_file:
            t_start = time.monotonic()
            wall_start = time.time()
            gw = subprocess.Popen([str(BIN / "fpgw"), "--config", str(cfg), "run"], cwd=tmp,
                                  stdout=log_file, stderr=subprocess.STDOUT)
            cold_s: float | None = None
            end_at: float | None = None
            limit = t_start + max(600.0, interval * (cycles + 6))
            while time.monotonic() < limit and gw.poll() is None:
                time.sleep(1.0)
                now = time.monotonic()
                samples.append((now, proc_cpu_s(gw.pid), proc_rss_mb(gw.pid)))
                threads_peak = max(threads_peak, proc_threads(gw.pid))
                if cold_s is None and db.exists() and int(now - t_start) % 3 == 0:
                    try:
                        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
                        polled = con.execute("SELECT COUNT(DISTINCT device_pk) FROM poll_runs").fetchone()[0]
                        con.close()
                    except sqlite3.Error:
                        polled = 0
                    if polled >= n:
                        cold_s = now - t_start
                        end_at = now + interval * cycles
                if end_at is not None and now >= end_at:
                    break
            if gw.poll() is None:
                gw.send_signal(signal.SIGTERM)
                gw.wait(90)
    finally:
        if gw is not None and gw.poll() is None:
            gw.kill()
            gw.wait()
        sim.terminate()
        try:
            sim.wait(20)
        except subprocess.TimeoutExpired:
            sim.kill()
            sim.wait()

    runs = read_runs(db)
    summary = read_summary(log_path)
    by_device: dict[str, list[float]] = {}
    for dev, started, _fin, _o, _e in runs:
        by_device.setdefault(dev, []).append(started)
    first = [min(v) - wall_start for v in by_device.values()]
    # Cold start from the database: when the last terminal's first poll finished (the sampling loop above
    # only looks every few seconds).
    first_done = {}
    for dev, _s, fin, _o, _e in runs:
        first_done[dev] = min(first_done.get(dev, fin), fin)
    cold = (max(first_done.values()) - wall_start) if len(first_done) >= n else float("nan")
    durations = sorted(f - s for _d, s, f, _o, _e in runs if f >= s)
    # Steady state: from the moment every terminal was read once to the end.
    steady_from = wall_start + (cold_s or 0.0)
    gaps: list[float] = []
    for starts in by_device.values():
        starts.sort()
        gaps += [b - a for a, b in itertools.pairwise(starts) if a >= steady_from - interval]
    steady_polls = [r for r in runs if r[1] >= steady_from]
    steady_span = max((r[1] for r in runs), default=steady_from) - steady_from
    errors = Counter(o for _d, _s, _f, o, _e in runs if o not in ("ok", "unchanged", "abandoned", "cleared"))
    has_summary = "event" in summary
    # An fpgw without the summary line: missed cycles unknown, database errors counted from its log lines.
    missed = float(summary.get("missed_cycles", 0) or 0) if has_summary else float("nan")  # type: ignore[arg-type]
    storage = int(summary.get("storage_errors" if has_summary else "locked_log_lines", 0) or 0)  # type: ignore[call-overload]
    locked = int(summary.get("locked_errors", summary.get("locked_log_lines", 0)) or 0)  # type: ignore[call-overload]
    steady_samples = [s for s in samples if s[0] >= t_start + (cold_s or 0)]
    cpu_pct = ((steady_samples[-1][1] - steady_samples[0][1]) / (steady_samples[-1][0] - steady_samples[0][0])
               / (os.cpu_count() or 1) * 100) if len(steady_samples) > 2 else float("nan")
    cold_cpu = [s for s in samples if s[0] < t_start + (cold_s or 0)]
    cold_cpu_pct = ((cold_cpu[-1][1] - cold_cpu[0][1]) / (cold_cpu[-1][0] - cold_cpu[0][0])
                    / (os.cpu_count() or 1) * 100) if len(cold_cpu) > 2 else float("nan")
    rss_peak = max((s[2] for s in samples), default=0.0)
    rate = len(steady_polls) / steady_span * 60 if steady_span > 0 else float("nan")

    size = f"{n} terminals, interval {interval:g} s, {cycles} cycles, {args.records} records each"
    report.figure("fleet.polled_terminals", "terminals read at least once", len(by_device), "",
                  detail=f"of {n}; {size}")
    report.at_most("fleet.cold_start_s", "cold start: every terminal read once", measured=cold,
                   goal=interval, unit="s", detail=f"first poll of the last terminal at {max(first, default=0):.0f} s"
                   f"; CPU {cold_cpu_pct:.0f} % of the machine meanwhile")
    report.figure("fleet.steady_rate", "steady polls per minute", rate, "/min",
                  detail=f"{len(steady_polls)} polls in {steady_span:.0f} s; needed {n * 60 / interval:.0f}/min")
    if durations:
        mean_d = sum(durations) / len(durations)
        report.figure("fleet.poll_s", "poll duration, median", durations[len(durations) // 2], "s",
                      detail=f"p95 {durations[int(len(durations) * 0.95)]:.2f} s, max {durations[-1]:.2f} s, "
                      f"mean {mean_d:.3f} s")
        # Little's law: polls in flight on average = polls per second x seconds per poll.
        report.figure("fleet.busy_workers", "poll workers busy on average (rate x mean duration)",
                      n / interval * mean_d, "", detail=f"pool_size {args.pool_size or 'default'}")
    report.at_most("fleet.max_gap_ratio", "worst gap between two polls of one terminal / interval",
                   measured=max(gaps, default=float("nan")) / interval, goal=1.5, unit="x",
                   detail=f"{len(gaps)} gaps; p99 {sorted(gaps)[int(len(gaps) * 0.99)] / interval if gaps else 0:.2f}x")
    report.at_most("fleet.missed_cycles", "slots passed without a poll of their terminal (missed cycles)",
                   measured=missed, goal=0, unit="",
                   detail=f"gateway's polling summary; {summary.get('missed_in_cold_start', '?')} more while the "
                   "cold start read the others")
    report.at_most("fleet.errors", "failed polls recorded in poll_runs", measured=sum(errors.values()), goal=0,
                   unit="", detail=", ".join(f"{k} {v}" for k, v in errors.most_common()) or "none")
    report.at_most("fleet.storage_errors", "polls whose database write failed (not in poll_runs)",
                   measured=storage, goal=0, unit="", detail=f"'database is locked': {locked}")
    report.at_most("fleet.cpu_pct", "gateway CPU, steady state, % of the machine", measured=cpu_pct, goal=70,
                   unit="%", detail=f"{os.cpu_count()} CPUs; machine shared with other work")
    report.at_most("fleet.rss_peak_mb", "gateway peak RSS", measured=rss_peak, goal=300, unit="MB",
                   detail=f"threads peak {threads_peak}")
    if not summary.get("event"):
        report.note("the gateway wrote no 'polling summary' line (older fpgw?): missed cycles and database errors "
                    "are counted from log lines only")
    if args.keep:
        report.note(f"kept {tmp}")
    else:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    report.finish(args.json)


if __name__ == "__main__":
    main()

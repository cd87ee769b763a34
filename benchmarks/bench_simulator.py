"""Benchmark of the device simulator with the real client (pyzk 0.9).

1. Download speed: pyzk pulls 10k / 100k / 200k-record logs over TCP and UDP. Two figures
   each: the wire transfer alone (pyzk's public ``read_with_buffer``) and the whole
   ``get_attendance`` (which includes pyzk's own per-record parsing, quadratic in 0.9).
2. Fleet capacity: one ``fpgw-sim`` process serves N devices (default 1,000) on
   127.0.x.y addresses; pyzk connects + ``read_sizes`` to every one of them (sequentially
   and from a thread pool); reports the times and the simulator process's RSS.

Figures only (the simulator has no goal of its own; it must simply be faster than what it tests), as a
table and JSON through benchmarks/harness.py. Run: ``.venv/bin/python benchmarks/bench_simulator.py``
(``--quick``: 1k/5k-record logs and at most 20 devices, to prove it runs).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from zk import ZK

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.harness import Report, bench_args  # noqa: E402
from simulators.zk import DeviceSpec, Fleet  # noqa: E402


def rss_mb(pid: int | str = "self") -> float:
    """Resident set size of a process in MiB (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def bench_downloads(quick: bool, report: Report) -> None:
    print("== pyzk 0.9 log downloads (40-byte records, 300 users) ==")
    print(f"{'records':>8} {'transport':>9} {'wire s':>8} {'wire rec/s':>12} {'get_attendance s':>17} "
          f"{'rec/s':>10}")
    with Fleet() as fleet:
        for n in (1_000, 5_000) if quick else (10_000, 100_000, 200_000):
            dev = fleet.add(DeviceSpec(serial=f"BENCH{n}", users=300, records=n, records_cap=n))
            dev.dataset("attlog")  # built once per log version; do not time the first build
            for udp in (False, True):
                conn = ZK(dev.host, port=dev.port, timeout=60, force_udp=udp, ommit_ping=True).connect()
                conn.read_sizes()
                t0 = time.perf_counter()
                _data, size = conn.read_with_buffer(13)
                wire = time.perf_counter() - t0
                assert size == 4 + 40 * n
                t0 = time.perf_counter()
                atts = conn.get_attendance()
                full = time.perf_counter() - t0
                assert len(atts) == n
                full_txt, rate_txt = f"{full:.2f}", f"{n / full:,.0f}"
                report.figure(f"sim.pyzk_get_attendance.{'udp' if udp else 'tcp'}.{n}",
                              f"pyzk get_attendance of {n:,} records ({'UDP' if udp else 'TCP'})", full, "s",
                              detail=f"its own parsing; the wire transfer alone {wire:.2f} s")
                conn.disconnect()
                report.figure(f"sim.wire.{'udp' if udp else 'tcp'}.{n}",
                              f"simulator serves {n:,} records ({'UDP' if udp else 'TCP'}, pyzk read_with_buffer)",
                              n / wire, "records/s")
                print(f"{n:>8} {'udp' if udp else 'tcp':>9} {wire:>8.2f} {n / wire:>12,.0f} "
                      f"{full_txt:>17} {rate_txt:>10}", flush=True)


def bench_fleet(n_devices: int, records: int, workers: int, report: Report) -> None:
    print(f"\n== one simulator process, {n_devices} devices on 127.0.x.y, {records} records "
          f"+ 50 users each ==")
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "simulators.cli", "--devices", str(n_devices), "--host", "127.0.1.1",
         "--port", "4370", "--records", str(records), "--users", "50", "--no-control",
         "--log-level", "WARNING"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if "serving" not in line:
            print("simulator failed to start:", line, proc.stderr.read() if proc.stderr else "")
            return
        startup = time.perf_counter() - t0
        rss_idle = rss_mb(proc.pid)
        print(f"startup (generate + bind {n_devices} devices): {startup:.1f} s; RSS idle {rss_idle:.0f} MiB "
              f"({rss_idle * 1024 / n_devices:.0f} KiB per device)")
        report.figure("sim.fleet.startup_s", f"start {n_devices} devices in one process", startup, "s")
        report.figure("sim.fleet.rss_idle_mb", f"simulator RSS idle, {n_devices} devices", rss_idle, "MiB")

        import ipaddress

        hosts = [str(ipaddress.IPv4Address("127.0.1.1") + i) for i in range(n_devices)]

        def probe(host: str, udp: bool) -> int:
            conn = ZK(host, port=4370, timeout=10, force_udp=udp, ommit_ping=True).connect()
            conn.read_sizes()
            n = conn.records
            conn.disconnect()
            return n

        for udp in (False, True):
            name = "udp" if udp else "tcp"
            t0 = time.perf_counter()
            seq = [probe(h, udp) for h in hosts]
            t_seq = time.perf_counter() - t0
            assert seq == [records] * n_devices
            t0 = time.perf_counter()
            with ThreadPoolExecutor(workers) as pool:
                par = list(pool.map(probe, hosts, [udp] * len(hosts)))
            t_par = time.perf_counter() - t0
            assert par == [records] * n_devices
            print(f"{name}: connect+read_sizes+disconnect all {n_devices}: sequential {t_seq:.1f} s "
                  f"({n_devices / t_seq:,.0f} devices/s); {workers} client threads {t_par:.1f} s "
                  f"({n_devices / t_par:,.0f} devices/s, x{t_seq / t_par:.1f})", flush=True)
            report.figure(f"sim.fleet.probe_{name}", f"connect + read_sizes to all {n_devices} ({name.upper()}, "
                          f"{workers} client threads)", n_devices / t_par, "devices/s",
                          detail=f"sequential {n_devices / t_seq:,.0f}/s")
        print(f"simulator RSS after connect/read_sizes sweeps: {rss_mb(proc.pid):.0f} MiB")

        def download(host: str) -> int:
            conn = ZK(host, port=4370, timeout=30, ommit_ping=True).connect()
            n = len(conn.get_attendance())
            conn.disconnect()
            return n

        t0 = time.perf_counter()
        with ThreadPoolExecutor(workers) as pool:
            got = list(pool.map(download, hosts))
        t_dl = time.perf_counter() - t0
        assert got == [records] * n_devices
        print(f"tcp: full get_attendance (users + log) of all {n_devices} devices, {workers} client threads: "
              f"{t_dl:.1f} s ({n_devices * records / t_dl:,.0f} records/s); "
              f"simulator RSS after: {rss_mb(proc.pid):.0f} MiB", flush=True)
        report.figure("sim.fleet.download_all", f"pyzk downloads all {n_devices} logs ({workers} client threads)",
                      n_devices * records / t_dl, "records/s")
        report.figure("sim.fleet.rss_after_mb", "simulator RSS after serving every log", rss_mb(proc.pid), "MiB")
    finally:
        proc.terminate()
        proc.communicate(timeout=60)


def main() -> None:
    def extra(ap: argparse.ArgumentParser) -> None:
        ap.add_argument("--devices", type=int, default=1000)
        ap.add_argument("--fleet-records", type=int, default=2000)
        ap.add_argument("--workers", type=int, default=32)
        ap.add_argument("--skip-downloads", action="store_true")

    args = bench_args(__doc__, extra)
    report = Report("bench_simulator", quick=args.quick)
    devices = min(args.devices, 20) if args.quick else args.devices
    records = min(args.fleet_records, 200) if args.quick else args.fleet_records
    print(f"cpus={os.cpu_count()} python={sys.version.split()[0]}")
    if not args.skip_downloads:
        bench_downloads(args.quick, report)
    bench_fleet(devices, records, args.workers, report)
    report.finish(args.json)


if __name__ == "__main__":
    main()

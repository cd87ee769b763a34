"""Benchmark: ZkDriver vs pyzk's get_attendance, and the cost of a "nothing new" poll.

Where it sits: a standalone script over the in-process simulator (simulators.zk) on loopback; it
prints figures and ratios, asserts nothing about timing. Run:

    .venv/bin/python benchmarks/bench_driver.py            # 10k, 50k, 100k records
    .venv/bin/python benchmarks/bench_driver.py --sizes 10000 --repeat 1

(1) download + decode of the whole log: ZkDriver.read_punches (linear decoder, no user download for
    16/40-byte layouts) vs pyzk 0.9 ZK.get_attendance (re-downloads the user table and re-slices the
    buffer for every record, so its decode is quadratic), same simulated device, TCP.
(2) a poll when nothing changed (connect + counts) vs a full download, over TCP and UDP.
(3) a whole-log UDP download with the simulator dropping 0 %, 2 % and 5 % of datagrams (both
    directions, seeded): time, requests re-sent, ratio to the lossless run; and, for contrast, how
    often pyzk's own read_with_buffer (no re-requests) gets the same log through.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from zk import ZK

from drivers.zk import ZkDriver, ZkParams
from drivers.zk.records import decode_attendance
from simulators.zk import DeviceSpec, Fleet


def timed(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    """Median wall time of ``repeat`` runs, and the last result."""
    times = []
    result = None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def zkdriver_download(dev: Any, transport: str) -> list[Any]:
    drv = ZkDriver(ZkParams(dev.host, dev.port, transport=transport, timeout_s=30))  # type: ignore[arg-type]
    with drv.connect() as s:
        return s.read_punches()


def zkdriver_poll(dev: Any, transport: str) -> int:
    drv = ZkDriver(ZkParams(dev.host, dev.port, transport=transport, timeout_s=30))  # type: ignore[arg-type]
    with drv.connect() as s:
        return s.counts().records


def zkdriver_lossy(dev: Any) -> tuple[list[Any], int]:
    """One UDP download; returns the punches and how many requests had to be re-sent."""
    drv = ZkDriver(ZkParams(dev.host, dev.port, transport="udp", timeout_s=5))
    with drv.connect() as s:
        punches = s.read_punches()
    return punches, drv.stats.udp.resends


def pyzk_udp_ok(dev: Any, expected: int, tries: int) -> int:
    """How many of ``tries`` plain pyzk UDP reads (connect, sizes, 1503/1504) return the whole log."""
    ok = 0
    for _ in range(tries):
        try:
            conn = ZK(dev.host, port=dev.port, timeout=1, force_udp=True, ommit_ping=True).connect()
            try:
                conn.read_sizes()
                data, _ = conn.read_with_buffer(13)
                ok += len(data) == expected
            finally:
                conn.disconnect()
        except Exception:  # any failure counts as a failed read here
            pass
    return ok


def pyzk_download(dev: Any, transport: str) -> list[Any]:
    conn = ZK(dev.host, port=dev.port, timeout=60, force_udp=transport == "udp", ommit_ping=True).connect()
    try:
        return conn.get_attendance()
    finally:
        conn.disconnect()


def raw_dataset(dev: Any) -> tuple[bytes, int]:
    """The attendance dataset as pyzk downloads it (to time the decoders alone)."""
    conn = ZK(dev.host, port=dev.port, timeout=60, ommit_ping=True).connect()
    try:
        conn.read_sizes()
        data, _ = conn.read_with_buffer(13)
        return bytes(data), conn.records
    finally:
        conn.disconnect()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 50_000, 100_000])
    ap.add_argument("--repeat", type=int, default=3, help="runs per figure (median); pyzk runs once")
    ap.add_argument("--users", type=int, default=500)
    ap.add_argument("--pyzk-limit-s", type=float, default=300.0,
                    help="skip pyzk for bigger logs once one run took longer than this")
    ap.add_argument("--loss-records", type=int, default=10_000, help="log size for the UDP loss runs (3)")
    ap.add_argument("--losses", type=float, nargs="+", default=[0.0, 0.02, 0.05])
    ap.add_argument("--loss-repeat", type=int, default=5, help="downloads per loss level (median time)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp, Fleet(truth_path=Path(tmp) / "truth.jsonl") as fleet:
        pyzk_skip = False
        for n in args.sizes:
            dev = fleet.add(DeviceSpec(serial=f"BENCH{n}", records=n, users=args.users, record_layout=40,
                                       user_layout=72, records_cap=max(n, 200_000), seed=7))
            row: dict[str, Any] = {"n": n}
            row["drv_tcp"], punches = timed(lambda d=dev: zkdriver_download(d, "tcp"), args.repeat)
            assert len(punches) == n
            row["drv_udp"], punches = timed(lambda d=dev: zkdriver_download(d, "udp"), args.repeat)
            assert len(punches) == n
            row["poll_tcp"], _ = timed(lambda d=dev: zkdriver_poll(d, "tcp"), args.repeat)
            row["poll_udp"], _ = timed(lambda d=dev: zkdriver_poll(d, "udp"), args.repeat)
            data, count = raw_dataset(dev)
            row["parse"], _ = timed(lambda d=data, c=count: decode_attendance(d, c), args.repeat)
            if pyzk_skip:
                row["pyzk_tcp"] = None
            else:
                row["pyzk_tcp"], att = timed(lambda d=dev: pyzk_download(d, "tcp"), 1)
                assert len(att) == n
                pyzk_skip = row["pyzk_tcp"] > args.pyzk_limit_s
            rows.append(row)
            print(f"  measured {n} records", file=sys.stderr, flush=True)
            fleet.remove(dev.serial)

        loss_rows: list[dict[str, Any]] = []
        n = args.loss_records
        for loss in args.losses:
            dev = fleet.add(DeviceSpec(serial=f"LOSS{int(loss * 1000)}", records=n, users=args.users,
                                       record_layout=40, user_layout=72, records_cap=max(n, 200_000), seed=7))
            dev.set_fault("udp_loss", loss)
            times, resends = [], []
            for _ in range(args.loss_repeat):
                t0 = time.perf_counter()
                punches, resent = zkdriver_lossy(dev)
                times.append(time.perf_counter() - t0)
                resends.append(resent)
                assert len(punches) == n
            expected = 4 + 40 * n
            loss_rows.append({"loss": loss, "time": statistics.median(times), "max": max(times),
                              "resends": statistics.mean(resends), "pyzk_ok": pyzk_udp_ok(dev, expected, 5)})
            print(f"  measured udp loss {loss:.0%}", file=sys.stderr, flush=True)
            fleet.remove(dev.serial)

    print("\n(1) whole-log download + decode, 40-byte records, 500 users, loopback TCP (median s)")
    print(f"{'records':>9} {'ZkDriver':>10} {'pyzk get_attendance':>20} {'pyzk/ZkDriver':>14} "
          f"{'decode only':>12} {'µs/record':>10}")
    for r in rows:
        py = r["pyzk_tcp"]
        py_text = f"{py:.3f}" if py else "skipped"
        ratio = f"{py / r['drv_tcp']:.1f}x" if py else "-"
        print(f"{r['n']:>9} {r['drv_tcp']:>10.3f} {py_text:>20} {ratio:>14} {r['parse']:>12.4f} "
              f"{r['parse'] / r['n'] * 1e6:>10.2f}")
    if len(rows) > 1:
        a, b = rows[0], rows[-1]
        k = b["n"] / a["n"]
        print(f"growth {a['n']} -> {b['n']} records (x{k:.0f}): ZkDriver x{b['drv_tcp'] / a['drv_tcp']:.1f}"
              + (f", pyzk x{b['pyzk_tcp'] / a['pyzk_tcp']:.1f}" if b["pyzk_tcp"] and a["pyzk_tcp"] else ""))

    print("\n(2) poll cost: nothing changed (connect + counts) vs full download, ZkDriver (median s)")
    print(f"{'records':>9} {'poll tcp':>9} {'full tcp':>9} {'ratio':>7} {'poll udp':>9} {'full udp':>9} {'ratio':>7}")
    for r in rows:
        print(f"{r['n']:>9} {r['poll_tcp']:>9.4f} {r['drv_tcp']:>9.3f} {r['drv_tcp'] / r['poll_tcp']:>6.0f}x "
              f"{r['poll_udp']:>9.4f} {r['drv_udp']:>9.3f} {r['drv_udp'] / r['poll_udp']:>6.0f}x")

    print(f"\n(3) UDP download of {args.loss_records} records with datagram loss (both directions), "
          f"ZkDriver, {args.loss_repeat} downloads each")
    print(f"{'loss':>5} {'median s':>9} {'max s':>7} {'x lossless':>11} {'re-sent/download':>17} "
          f"{'pyzk read_with_buffer ok':>25}")
    base = loss_rows[0]["time"] if loss_rows else 0.0
    for r in loss_rows:
        print(f"{r['loss']:>5.0%} {r['time']:>9.3f} {r['max']:>7.3f} {r['time'] / base:>10.1f}x "
              f"{r['resends']:>17.1f} {r['pyzk_ok']:>21}/5")


if __name__ == "__main__":
    main()

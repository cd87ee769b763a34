"""Benchmark: one poll end to end through gateway.polling.poller (driver -> normalize -> store), simulator on loopback.

Where it sits: complements benchmarks/bench_driver.py (driver only) by timing what the daemon really
does per poll: the first poll of a device (full download, every punch new), a poll when nothing
changed (connect + info + counts, no download: the steady state), and a full reconcile (download
again, every punch a duplicate). Prints figures and ratios; asserts nothing about timing.

    .venv/bin/python benchmarks/bench_poll.py                  # 20,000 records, SQLite
    .venv/bin/python benchmarks/bench_poll.py --records 50000 --transport udp
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway.config import parse_config
from gateway.logs import setup_logging
from gateway.polling.poller import DevicePoller
from gateway.store.db import create_db_engine, upgrade
from gateway.store.punches import Store
from simulators.zk import DeviceSpec, Fleet


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=20000)
    ap.add_argument("--transport", choices=("tcp", "udp"), default="tcp")
    ap.add_argument("--repeat", type=int, default=5, help="polls per steady-state measurement")
    args = ap.parse_args()
    setup_logging("console", "warning")
    with tempfile.TemporaryDirectory() as tmp, Fleet(truth_path=Path(tmp) / "truth.jsonl") as fleet:
        dev = fleet.add(DeviceSpec(serial="BENCH1", host="127.0.0.1", port=0, tcp=True, udp=True, record_layout=40,
                                   user_layout=72, users=300, records=args.records, seed=3))
        config = parse_config({"site": {"office_code": "1801.01.02"},
                               "database": {"url": f"sqlite:///{Path(tmp) / 'bench.db'}"},
                               "polling": {"full_reconcile_s": 60},
                               "devices": [{"id": "bench", "address": dev.host, "port": dev.port,
                                            "transport": args.transport}]}, base_dir=Path(tmp))
        engine = create_db_engine(config.database.url)
        upgrade(engine)
        store = Store(engine, config.site.office_code)
        store.sync_devices(config.devices)
        clock_shift = [0.0]
        poller = DevicePoller(config, store, now=lambda: datetime.now(UTC) + timedelta(seconds=clock_shift[0]))
        device = config.device("bench")

        t0 = time.perf_counter()
        first = poller.poll_once(device)
        t_first = time.perf_counter() - t0
        assert first.ok and first.new_punches == args.records, (first.error_kind, first.error)

        steady = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            o = poller.poll_once(device)
            steady.append(time.perf_counter() - t0)
            assert o.ok and o.mode == "count"
        reconcile = []
        for _ in range(max(1, args.repeat // 2)):
            clock_shift[0] += 61  # make the periodic full reconcile due
            t0 = time.perf_counter()
            o = poller.poll_once(device)
            reconcile.append(time.perf_counter() - t0)
            assert o.ok and o.mode == "full" and o.new_punches == 0
        engine.dispose()

    t_steady, t_rec = statistics.median(steady), statistics.median(reconcile)
    print(f"fpgw poll benchmark: {args.records:,} records, {args.transport.upper()}, SQLite, through DevicePoller\n")
    print(f"first poll (download + normalize + store, all new) : {t_first:8.3f} s"
          f"  ({args.records / t_first:,.0f} punches/s)")
    print(f"full reconcile (download again, all duplicates)    : {t_rec:8.3f} s  (median of {len(reconcile)})")
    print(f"poll when nothing changed (counts only)            : {t_steady:8.3f} s  (median of {len(steady)})")
    print(f"\nnothing-changed poll is {t_rec / t_steady:,.0f}x cheaper than a full reconcile "
          f"and {t_first / t_steady:,.0f}x cheaper than the first poll")


if __name__ == "__main__":
    main()

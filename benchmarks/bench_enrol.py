"""Benchmark: enrolment backup and restore of a 3,000-user terminal (2 templates each), and how long the keypad
stays locked for each.

Where it sits: a standalone script over the in-process simulator (simulators.zk) on loopback and a fresh
database, reporting through benchmarks/harness.py. It runs the code the daemon and `fpgw enrol` run:
``gateway.enrol.backup.backup_device`` (ZkDriver read of users + templates, sealing every template, one
store transaction) and ``gateway.enrol.restore.restore`` (open, write users, upload templates, read back
and compare) to a blank terminal. Run:

    .venv/bin/python benchmarks/bench_enrol.py              # 3,000 users x 2 templates, TCP and UDP
    .venv/bin/python benchmarks/bench_enrol.py --quick      # 100 users: proves the script runs

Rows: backup and restore wall time per transport; the time the simulated terminal spent disabled (keypad
locked) during each, measured on the terminal's side (``SimDevice.set_disabled``); and, as the baseline of
the same run, pyzk 0.9's own ``get_users`` + ``get_templates`` on the same terminal (a read with no
checks, no sealing and no storing): the backup's cost over a bare read. Incremental backups: a full backup of
a terminal that answers big tables buffered, then 10 new users (2 fingers each), then the incremental backup
(``backup_device(incremental=True)``: user table, counts, the table's announced size, command 88 for the new
users, the rest carried over sealed): wall time and keypad time of each, and their ratios. SQLite always;
PostgreSQL when GW_TEST_PG_URL is set (skipped with a note otherwise).
"""

from __future__ import annotations

import gc
import logging
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from zk import ZK

from benchmarks.harness import Report, bench_args, migrated_database
from gateway.config import parse_config
from gateway.enrol.backup import backup_device
from gateway.enrol.crypto import Keyring, load_key, new_key_text
from gateway.enrol.restore import restore
from gateway.store.db import create_db_engine
from gateway.store.enrol import EnrolRepo
from simulators.zk import DeviceSpec, Fleet, SimDevice


class KeypadClock:
    """Total seconds a simulated terminal spends disabled, from its own set_disabled calls."""

    def __init__(self, dev: SimDevice) -> None:
        self.total = 0.0
        self._since: float | None = None
        self._lock = threading.Lock()
        original = dev.set_disabled

        def set_disabled(disabled: bool) -> None:
            with self._lock:
                now = time.perf_counter()
                if disabled and self._since is None:
                    self._since = now
                elif not disabled and self._since is not None:
                    self.total += now - self._since
                    self._since = None
            original(disabled)

        dev.set_disabled = set_disabled  # type: ignore[method-assign]

    def reset(self) -> None:
        with self._lock:
            self.total, self._since = 0.0, None


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    gc.collect()
    t0 = time.perf_counter()
    result = fn()
    return time.perf_counter() - t0, result


def pyzk_read(dev: SimDevice, transport: str) -> int:
    conn = ZK(dev.host, port=dev.port, timeout=120, ommit_ping=True, force_udp=transport == "udp").connect()
    try:
        conn.get_users()
        return len(conn.get_templates())
    finally:
        conn.disconnect()


def measure(kind: str, transport: str, users: int, report: Report, tmp: Path, key: Keyring) -> None:
    with Fleet() as fleet, migrated_database(kind, tmp / f"enrol-{time.monotonic_ns()}.db") as url:
        old = fleet.add(DeviceSpec(serial=f"BENCH-OLD-{transport}", host="127.0.0.1", port=0, users=users,
                                   users_cap=max(5000, users), records=0, templates_per_user=2,
                                   templates_cap=max(3000, 2 * users), seed=5))
        new = fleet.add(DeviceSpec(serial=f"BENCH-NEW-{transport}", host="127.0.0.1", port=0, users=0,
                                   users_cap=max(5000, users), records=0, templates_cap=max(3000, 2 * users),
                                   seed=6))
        config = parse_config({
            "site": {"office_code": "9999.01", "timezone": "Asia/Jakarta"},
            "database": {"url": url},
            "devices": [{"id": "old", "address": "127.0.0.1", "port": old.port, "transport": transport,
                         "timeout_s": 30},
                        {"id": "new", "address": "127.0.0.1", "port": new.port, "transport": transport,
                         "timeout_s": 30}],
        }, base_dir=tmp)
        engine = create_db_engine(url, pool_size=2)
        try:
            repo = EnrolRepo(engine)
            old_keypad, new_keypad = KeypadClock(old), KeypadClock(new)
            pyzk_s, read = timed(lambda: pyzk_read(old, transport))
            assert read == 2 * users, read
            old_keypad.reset()
            backup_s, result = timed(lambda: backup_device(config.device("old"), repo, key, actor="bench",
                                                           timeout_s=600))
            assert result.ok and result.templates == 2 * users, result
            backup_keypad = old_keypad.total
            restore_s, rep = timed(lambda: restore(config.device("new"), "old", repo, key, actor="bench",
                                                   timeout_s=1200))
            assert rep.count("restored") == users, [o for o in rep.outcomes if o.status != "restored"][:3]
            restore_keypad = new_keypad.total
        finally:
            engine.dispose()
    size = f"{users} users x 2 templates, {transport}, {kind}"
    key_prefix = f"enrol.{transport}.{kind}.{users}"
    report.at_most(f"{key_prefix}.backup_s", f"backup ({size}), wall", measured=backup_s, goal=60.0, unit="s",
                   detail=f"pyzk get_users+get_templates alone: {pyzk_s:.2f} s (x{backup_s / pyzk_s:.1f})")
    report.figure(f"{key_prefix}.backup_keypad_s", f"keypad locked during the backup ({size})",
                  measured=backup_keypad, unit="s", detail=f"{backup_keypad / backup_s:.0%} of the backup")
    report.at_most(f"{key_prefix}.restore_s", f"restore to a blank terminal, read back included ({size}), wall",
                   measured=restore_s, goal=120.0, unit="s")
    report.figure(f"{key_prefix}.restore_keypad_s", f"keypad locked during the restore ({size})",
                  measured=restore_keypad, unit="s", detail=f"{restore_keypad / restore_s:.0%} of the restore")


def measure_incremental(kind: str, transport: str, users: int, changed: int, report: Report, tmp: Path,
                        key: Keyring) -> None:
    """Full backup, then ``changed`` new users (2 fingers each), then an incremental backup: wall time and keypad
    time of each, on a terminal that answers big tables buffered (as real ones do: the incremental backup learns
    the template table's size without reading it)."""
    import random

    from simulators.zk.protocol import User
    from simulators.zk.templates import StoredTemplate, make_template

    with Fleet() as fleet, migrated_database(kind, tmp / f"enrol-inc-{time.monotonic_ns()}.db") as url:
        dev = fleet.add(DeviceSpec(serial=f"BENCH-INC-{transport}", host="127.0.0.1", port=0, users=users,
                                   users_cap=max(5000, users + changed), records=0, templates_per_user=2,
                                   templates_cap=max(3000, 2 * (users + changed)), seed=7, tcp_buffered=True))
        config = parse_config({
            "site": {"office_code": "9999.01", "timezone": "Asia/Jakarta"},
            "database": {"url": url},
            "devices": [{"id": "inc", "address": "127.0.0.1", "port": dev.port, "transport": transport,
                         "timeout_s": 30}],
        }, base_dir=tmp)
        engine = create_db_engine(url, pool_size=2)
        try:
            repo = EnrolRepo(engine)
            keypad = KeypadClock(dev)
            full_s, full = timed(lambda: backup_device(config.device("inc"), repo, key, actor="bench",
                                                       timeout_s=600, incremental=True))
            assert full.ok and not full.incremental and full.templates == 2 * users, full
            full_keypad = keypad.total
            rng = random.Random(11)
            for n in range(changed):
                uid = 60000 + n
                assert dev.save_upload([User(uid, str(900000 + n), f"new {n}")],
                                       [StoredTemplate(uid, f, 1, make_template(rng, 10)) for f in (0, 1)]) is None
            keypad.reset()
            inc_s, inc = timed(lambda: backup_device(config.device("inc"), repo, key, actor="bench",
                                                     timeout_s=600, incremental=True))
            assert inc.ok and inc.templates == 2 * (users + changed), inc
            assert inc.incremental and inc.templates_read == 2 * changed, inc
            inc_keypad = keypad.total
        finally:
            engine.dispose()
    size = f"{users} users x 2 templates, {changed} new, {transport}, {kind}"
    key_prefix = f"enrol.{transport}.{kind}.{users}.incremental"
    report.figure(f"{key_prefix}.full_s", f"full backup ({users} users x 2 templates, {transport}, {kind}), wall",
                  measured=full_s, unit="s", detail=f"keypad locked {full_keypad:.2f} s")
    report.figure(f"{key_prefix}.incremental_s", f"incremental backup ({size}), wall", measured=inc_s, unit="s",
                  detail=f"keypad locked {inc_keypad:.3f} s; {inc.templates_read} templates read, "
                         f"{inc.templates - inc.templates_read} carried over")
    # Wall time on loopback is mostly storing the complete backup (every user row, 6,000 carried-over sealed
    # templates copied in the database), which an incremental backup does as well: a figure. What it saves is
    # terminal time, which the keypad ratio measures (and, on a real 10/100 link, the table's transfer).
    report.figure(f"{key_prefix}.speedup", f"incremental backup vs full backup, wall ({size})",
                  measured=full_s / inc_s, unit="x")
    report.at_least(f"{key_prefix}.keypad_ratio", f"keypad locked: full backup / incremental backup ({size})",
                    measured=full_keypad / max(inc_keypad, 1e-6), goal=5.0, unit="x")


def main() -> None:
    args = bench_args(__doc__, extra=lambda ap: (
        ap.add_argument("--users", type=int, default=3000, help="users on the terminal (2 templates each)"),
        ap.add_argument("--transports", default="tcp,udp", help="comma-separated: tcp, udp")))
    if args.quick:
        args.users = 100
    logging.basicConfig(level=logging.WARNING)
    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(30))
    report = Report("bench_enrol", quick=args.quick)
    kinds = ["sqlite"]
    if os.environ.get("GW_TEST_PG_URL"):
        kinds.append("postgresql")
    else:
        report.note("PostgreSQL rows skipped: set GW_TEST_PG_URL to a server the benchmark may create databases on")
    with tempfile.TemporaryDirectory(prefix="fpgw-bench-enrol-") as tmp:
        key_path = Path(tmp) / "enrol.key"
        key_path.write_text(new_key_text())
        key_path.chmod(0o600)
        key = Keyring(load_key(key_path))
        for kind in kinds:
            for transport in args.transports.split(","):
                measure(kind, transport.strip(), args.users, report, Path(tmp), key)
                # --quick: a 100-user table is worth sparing for one new user only (PER_USER_READ_BYTES).
                measure_incremental(kind, transport.strip(), args.users, 1 if args.quick else 10, report,
                                    Path(tmp), key)
    report.note("machine shared with other jobs: compare ratios within one run")
    report.finish(args.json)


if __name__ == "__main__":
    main()

"""`fpgw central partitions list|maintain|archive|verify|restore`: the monthly punch partitions (PostgreSQL).

    list     -> gateway.store.partitions.list_partitions: months, the default partition, rows and size
    maintain -> gateway.store.partitions.maintain: what the daemon's job does ([retention]), once, now
    archive  -> gateway.store.partitions.archive_partition: export + verify (+ drop) chosen months
    verify   -> gateway.store.partitions.verify_archive: an archive file against its manifest
    restore  -> gateway.store.partitions.restore_archive: load an archived month back
"""

from __future__ import annotations

import argparse
import json
import re
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.cli.common import CliError, config_of, open_engine

if TYPE_CHECKING:
    from gateway.store.db import Engine

_MONTH = re.compile(r"^(\d{4})-(\d{2})$")


def register(csub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `central partitions` and its actions."""
    p = csub.add_parser("partitions", help="monthly partitions of the punches table (PostgreSQL): list, maintain, "
                                           "archive",
                        description="On PostgreSQL the punches table is partitioned by month (device time). The "
                                    "daemon's maintenance job ([retention]) keeps months ahead and, when "
                                    "configured, archives old months; these commands show and do the same by "
                                    "hand. See docs/scale-out.md.")
    psub = p.add_subparsers(dest="partitions_command", metavar="ACTION", required=True)
    q = psub.add_parser("list", help="every partition with its rows and size",
                        description="Every month partition in order, then the default partition (rows no month "
                                    "partition covers: months not created yet, impossible device clocks).")
    q.add_argument("--exact", action="store_true",
                   help="count the rows (reads every partition) instead of PostgreSQL's estimate")
    q.add_argument("--json", action="store_true", help="machine-readable output")
    q.set_defaults(func=cmd_list, one_shot=True)
    q = psub.add_parser("maintain", help="create months ahead, move default rows, archive as [retention] says",
                        description="One run of the daemon's maintenance job: partitions for this month and "
                                    "retention.months_ahead after it, rows of the default partition moved into "
                                    "their month, and, when retention.archive_after_months is set, older months "
                                    "archived to retention.archive_dir, verified and dropped.")
    q.add_argument("--months-ahead", type=int, metavar="N",
                   help="create this many months ahead (default: retention.months_ahead)")
    q.add_argument("--no-archive", action="store_true",
                   help="only create partitions and move default rows, archive nothing")
    q.set_defaults(func=cmd_maintain, one_shot=True)
    q = psub.add_parser("archive", help="export months to CSV.gz + manifest, verify, then drop them",
                        description="Write each month to DIR/punches_YYYY_MM.csv.gz with a .manifest.json "
                                    "(rows, SHA-256), read the file back and count it, then detach and drop the "
                                    "month. A month whose archive fails, or holding punches not yet forwarded, "
                                    "is kept.")
    q.add_argument("months", nargs="*", metavar="MONTH",
                   help="months to archive, as YYYY-MM or partition names (punches_YYYY_MM)")
    q.add_argument("--older-than-months", type=int, metavar="N",
                   help="every month that ended at least N months before this month began (instead of MONTH)")
    q.add_argument("--dir", type=Path, help="archive folder (default: retention.archive_dir)")
    q.add_argument("--keep", action="store_true", help="write and verify the archive but keep the partition")
    q.set_defaults(func=cmd_archive, one_shot=True)
    q = psub.add_parser("verify", help="check archive files against their manifests",
                        description="Recompute each archive file's SHA-256 and row count and compare them with "
                                    "its manifest. Needs no database.")
    q.add_argument("manifests", nargs="+", type=Path, metavar="MANIFEST",
                   help="punches_YYYY_MM.manifest.json files")
    q.set_defaults(func=cmd_verify, one_shot=True, needs_config=False)
    q = psub.add_parser("restore", help="load an archived month back into punches (same ids)",
                        description="Verify the archive, then insert its rows into punches with their original "
                                    "ids; rows already stored are skipped (punch key). BKD clients whose feed "
                                    "cursor is past those ids do not receive them again. With archiving on, the "
                                    "month is archived again by the next run: turn it off first.")
    q.add_argument("manifest", type=Path, metavar="MANIFEST", help="the month's .manifest.json file")
    q.set_defaults(func=cmd_restore, one_shot=True)


def _size_text(n: int) -> str:
    size, unit = float(n), "B"
    for bigger in ("kB", "MB", "GB", "TB"):
        if size < 1024:
            break
        size, unit = size / 1024, bigger
    return f"{n} B" if unit == "B" else f"{size:.1f} {unit}"


def _engine(args: argparse.Namespace) -> Engine:
    from gateway.store.partitions import is_partitioned

    engine = open_engine(config_of(args), pool_size=2, migrate=True)
    if not is_partitioned(engine):
        engine.dispose()
        raise CliError("the punches table is not partitioned here: partitions exist on PostgreSQL only "
                       "(a SQLite database keeps one table)")
    return engine


def cmd_list(args: argparse.Namespace) -> int:
    """Print the partitions."""
    from gateway.store.partitions import list_partitions

    engine = _engine(args)
    try:
        items = list_partitions(engine, exact=args.exact)
    finally:
        engine.dispose()
    if args.json:
        print(json.dumps([{"name": p.name, "month": p.month.isoformat() if p.month else None, "rows": p.rows,
                           "exact": p.exact, "bytes": p.bytes} for p in items]))
        return 0
    print(f"{'PARTITION':<20} {'MONTH':<8} {'ROWS':>14} {'SIZE':>10}")
    for p in items:
        rows = str(p.rows) if p.rows >= 0 else "?"
        print(f"{p.name:<20} {p.month.strftime('%Y-%m') if p.month else 'default':<8} "
              f"{rows if p.exact else '~' + rows:>14} {_size_text(p.bytes):>10}")
    return 0


def cmd_maintain(args: argparse.Namespace) -> int:
    """One maintenance run."""
    from gateway.store.partitions import maintain

    cfg = config_of(args).retention
    ahead = args.months_ahead if args.months_ahead is not None else cfg.months_ahead
    if not 1 <= ahead <= 24:
        raise CliError("--months-ahead: 1 to 24")
    engine = _engine(args)
    try:
        result = maintain(engine, today=datetime.now(UTC).date(), months_ahead=ahead,
                          archive_after_months=0 if args.no_archive else cfg.archive_after_months,
                          archive_dir=cfg.archive_dir)
    finally:
        engine.dispose()
    for name in result.created:
        moved = result.moved.get(name, 0)
        print(f"created {name}" + (f" ({moved} rows moved from the default partition)" if moved else ""))
    for done in result.archived:
        print(f"archived {done.partition}: {done.rows} rows -> {done.file} (dropped)")
    for name, reason in result.refused.items():
        print(f"kept {name}: {reason}")
    if not (result.created or result.archived or result.refused):
        print("nothing to do")
    return 1 if result.refused else 0


def _partition_of(text: str) -> str:
    from gateway.store.partitions import partition_name

    m = _MONTH.match(text)
    if m and 1 <= int(m[2]) <= 12:
        return partition_name(date(int(m[1]), int(m[2]), 1))
    if re.fullmatch(r"punches_\d{4}_\d{2}", text):
        return text
    raise CliError(f"MONTH {text!r}: write YYYY-MM (e.g. 2024-03) or punches_YYYY_MM")


def cmd_archive(args: argparse.Namespace) -> int:
    """Archive (and drop) months."""
    from gateway.store.partitions import ArchiveFailed, archivable, archive_partition

    if bool(args.months) == (args.older_than_months is not None):
        raise CliError("name the MONTHs or give --older-than-months, one of the two")
    if args.older_than_months is not None and args.older_than_months < 2:
        raise CliError("--older-than-months: at least 2 (the previous month still receives late punches)")
    names = [_partition_of(m) for m in args.months]
    directory = args.dir or config_of(args).retention.archive_dir
    engine = _engine(args)
    failed = 0
    try:
        if args.older_than_months is not None:
            names = archivable(engine, today=datetime.now(UTC).date(), after_months=args.older_than_months)
            if not names:
                print(f"no month ended {args.older_than_months} months ago or earlier")
        for name in names:
            try:
                done = archive_partition(engine, name, directory, drop=not args.keep)
            except ArchiveFailed as exc:
                failed += 1
                print(f"kept {name}: {exc}")
                continue
            print(f"archived {name}: {done.rows} rows -> {done.file}, sha256 {done.sha256}"
                  + (" (dropped)" if done.dropped else " (partition kept)"))
    finally:
        engine.dispose()
    return 1 if failed else 0


def cmd_verify(args: argparse.Namespace) -> int:
    """Verify archive files."""
    from gateway.store.partitions import ArchiveFailed, verify_archive

    bad = 0
    for path in args.manifests:
        try:
            manifest = verify_archive(path)
        except ArchiveFailed as exc:
            bad += 1
            print(f"BAD {exc}")
            continue
        print(f"ok  {path}: {manifest['rows']} rows of {manifest['partition']}, sha256 {manifest['sha256']}")
    return 1 if bad else 0


def cmd_restore(args: argparse.Namespace) -> int:
    """Load an archive back."""
    from gateway.store.partitions import ArchiveFailed, restore_archive

    engine = _engine(args)
    try:
        rows, inserted = restore_archive(engine, args.manifest)
    except ArchiveFailed as exc:
        raise CliError(str(exc)) from None
    finally:
        engine.dispose()
    print(f"restored {args.manifest}: {inserted} of {rows} rows inserted ({rows - inserted} were already stored)")
    return 0

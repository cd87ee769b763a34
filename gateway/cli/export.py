"""`fpgw export`: punches, a daily recap or a completeness report from the local database, as JSON, CSV or XLSX.

    export -> gateway.store.central.CentralStore.iter_punches (this database: one office, or every office on a
              central server) -> gateway.central.export writers -> FILE.part, renamed to FILE when complete / stdout
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import BinaryIO

from gateway.cli.common import CliError, config_of, open_engine, parse_date


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `export`."""
    p = subparsers.add_parser(
        "export", help="export punches, a daily recap or a completeness report from the local database",
        description="Export stored punches (or --recap / --completeness) as JSON, CSV or XLSX. Dates are the "
                    "office's local dates, both ends included.")
    p.add_argument("--from", dest="date_from", type=parse_date, metavar="YYYY-MM-DD", help="first local date")
    p.add_argument("--to", dest="date_to", type=parse_date, metavar="YYYY-MM-DD", help="last local date")
    p.add_argument("--office", help="only this office code")
    p.add_argument("--device", help="only this device id")
    p.add_argument("--employee", help="only this employee id (NIP)")
    p.add_argument("--format", choices=("json", "csv", "xlsx"), default=None,
                   help="output format (default: from the --output extension, else csv)")
    p.add_argument("--output", "-o", metavar="FILE", help="write here instead of standard output")
    kind = p.add_mutually_exclusive_group()
    kind.add_argument("--recap", action="store_true", help="daily recap: first in, last out, punches per employee")
    kind.add_argument("--completeness", action="store_true", help="which devices reported on which days")
    p.set_defaults(func=cmd_export, one_shot=True)


def cmd_export(args: argparse.Namespace) -> int:
    """Write punches / recap / completeness to a file or stdout."""
    from gateway.central import export
    from gateway.store.central import FEED_COLUMNS, CentralStore, PunchQuery

    config = config_of(args)
    fmt = args.format
    if fmt is None:
        suffix = Path(args.output).suffix.lower().lstrip(".") if args.output else ""
        fmt = suffix if suffix in export.FORMATS else "csv"
    if fmt == "xlsx" and not args.output and sys.stdout.isatty():
        raise CliError("an XLSX file is binary: give --output FILE.xlsx")
    if (args.recap or args.completeness) and not (args.date_from and args.date_to):
        raise CliError("--recap and --completeness need --from and --to")
    if args.date_from and args.date_to and args.date_from > args.date_to:
        raise CliError("--from is after --to")
    out_path = Path(args.output) if args.output else None
    part = out_path.with_name(out_path.name + ".part") if out_path else None
    if out_path and not out_path.parent.is_dir():
        raise CliError(f"--output: folder {str(out_path.parent)!r} does not exist")
    engine = open_engine(config, pool_size=2, migrate=True)
    try:
        store = CentralStore(engine)
        q = PunchQuery(office_code=args.office, device_id=args.device, employee_id=args.employee,
                       date_from=args.date_from, date_to=args.date_to)
        # Rows stream from the database to the file: a regency-wide month never sits in memory.
        fp: BinaryIO = part.open("wb") if part else sys.stdout.buffer
        try:
            if args.recap:
                what = "recap rows"
                n = export.write(export.daily_recap(store.iter_punches(q)), fmt, export.RECAP_COLUMNS, fp,
                                 sheet="recap", extra={"from": args.date_from, "to": args.date_to})
            elif args.completeness:
                what = "devices"
                report = export.completeness(store.iter_punches(q), store.devices(None, args.office),
                                             args.date_from, args.date_to, tuple(config.health.working_hours.days))
                n = len(report["devices"])
                if fmt == "json":
                    fp.write(json.dumps(export.jsonable(report), ensure_ascii=False).encode())
                else:
                    rows, columns = export.completeness_table(report)
                    export.write(rows, fmt, columns, fp, sheet="completeness")
            else:
                what = "punches"
                n = export.write(store.iter_punches(q), fmt, FEED_COLUMNS, fp, extra=lambda count: {"count": count})
        finally:
            if part:
                fp.close()
            else:
                fp.flush()
    except BaseException:
        if part:
            part.unlink(missing_ok=True)
        raise
    finally:
        engine.dispose()
    if out_path and part:
        # Complete files only: a failed export never leaves a half-written file under the real name.
        os.replace(part, out_path)
        print(f"{n} {what} written to {out_path} ({fmt})", file=sys.stderr)
    return 0

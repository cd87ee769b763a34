"""`fpgw punches`: query the stored punches of this gateway as a table, CSV, JSON or XLSX.

    punches -> gateway.store.punches.iter_punches(PunchQuery) -> stdout / --output FILE (streamed row by row)

The format follows --format, else the --output file's extension (.csv, .json, .xlsx), else a table. A format
that contradicts the extension (text into an .xlsx) is refused before anything is written. Days are office
days (site.timezone): --today is the office's today, not the machine's.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO
from zoneinfo import ZoneInfo

from gateway.cli.common import EXIT_OK, CliError, config_of, open_engine, options_after_command, parse_date, print_table

FORMATS = ("table", "csv", "json", "xlsx")
#: The format an --output file's extension implies.
_BY_EXTENSION = {".csv": "csv", ".json": "json", ".xlsx": "xlsx"}


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `punches`."""
    p = subparsers.add_parser("punches", parents=[options_after_command()], help="query stored punches",
                              description="Stored punches of this gateway, oldest first. Days are office days "
                                          "(site.timezone).")
    p.add_argument("--from", dest="date_from", type=parse_date, metavar="YYYY-MM-DD", help="first day (office time)")
    p.add_argument("--to", dest="date_to", type=parse_date, metavar="YYYY-MM-DD", help="last day, inclusive")
    p.add_argument("--today", action="store_true", help="only today in the office's time zone (not the machine's)")
    p.add_argument("--device", help="device id (see `fpgw devices`)")
    p.add_argument("--employee", help="employee id (NIP)")
    p.add_argument("--user", help="user id as shown on the device (PIN)")
    p.add_argument("--limit", type=int, help="at most this many rows")
    p.add_argument("--format", choices=FORMATS, default=None,
                   help="output format (default: from the --output extension .csv/.json/.xlsx, else table)")
    p.add_argument("--output", "-o", metavar="FILE", help="write to FILE instead of standard output")
    p.set_defaults(func=cmd_punches, one_shot=True)


def output_format(fmt: str | None, output: str | None) -> str:
    """The format to write: --format, else the --output extension's, else table; refuses a contradiction."""
    implied = _BY_EXTENSION.get(Path(output).suffix.lower()) if output else None
    if fmt is None:
        return implied or "table"
    if implied and implied != fmt:
        raise CliError(f"--format {fmt} does not match {output} (a .{implied} file); use --format {implied} "
                       f"or another file name")
    if fmt == "xlsx" and not output:
        raise CliError("--format xlsx needs --output FILE.xlsx (a workbook is not written to a terminal)")
    return fmt


def cmd_punches(args: argparse.Namespace) -> int:
    """Stored punches as a table, CSV, JSON or XLSX."""
    from gateway.store.health import device_overview
    from gateway.store.punches import PUNCH_FIELDS, PunchQuery, iter_punches

    config = config_of(args)
    fmt = output_format(args.format, args.output)
    if args.today:
        if args.date_from or args.date_to:
            raise CliError("--today cannot be combined with --from/--to")
        args.date_from = args.date_to = datetime.now(ZoneInfo(config.site.timezone)).date()
    if args.date_from and args.date_to and args.date_to < args.date_from:
        raise CliError("--to is before --from")
    if args.limit is not None and args.limit < 1:
        raise CliError("--limit must be at least 1")
    query = PunchQuery(date_from=args.date_from, date_to=args.date_to, device_id=args.device,
                       employee_id=args.employee, device_user_id=args.user, limit=args.limit)
    engine = open_engine(config, pool_size=1, migrate=False)
    n = 0
    try:
        if args.device and not any(d.id == args.device for d in config.devices):
            # A device removed from the config keeps its punches: still a valid choice while the database knows it.
            stored = {r["device_id"] for r in device_overview(engine, config.site.office_code, include_disabled=True)}
            if args.device not in stored:
                known = sorted({d.id for d in config.devices} | stored)
                raise CliError(f"unknown device {args.device!r} (devices: {', '.join(known) or 'none'})")
        rows = iter_punches(engine, query)
        if fmt == "xlsx":
            n = _write_xlsx(rows, args.output, list(PUNCH_FIELDS))
        else:
            # Closed in the finally below (a context manager cannot wrap "maybe stdout").
            try:
                out: TextIO = (open(args.output, "w", encoding="utf-8", newline="")  # noqa: SIM115
                               if args.output else sys.stdout)
            except OSError as exc:
                raise CliError(f"cannot write {args.output}: {exc.strerror or exc}") from None
            try:
                n = _write_text(rows, fmt, out)
            finally:
                if out is not sys.stdout:
                    out.close()
    finally:
        engine.dispose()
    if args.output or fmt == "table":
        print(f"{n} punch(es)" + (f" written to {args.output}" if args.output else ""), file=sys.stderr)
    return EXIT_OK


def _write_text(rows: Iterable[dict[str, Any]], fmt: str, out: TextIO) -> int:
    from gateway.store.punches import PUNCH_FIELDS

    n = 0
    if fmt == "csv":
        writer = csv.DictWriter(out, fieldnames=list(PUNCH_FIELDS))
        writer.writeheader()
        for row in rows:
            writer.writerow(row)
            n += 1
    elif fmt == "json":
        out.write("[")
        for row in rows:
            out.write(("," if n else "") + "\n  " + json.dumps(row, ensure_ascii=False))
            n += 1
        out.write("\n]\n" if n else "]\n")
    else:
        cols = ["device_id", "device_user_id", "employee_id", "device_time", "state_name", "verify_name", "flags"]
        table = [[str(r[c] if r[c] not in (None, "") else "-") for c in cols] for r in rows]
        n = len(table)
        print_table([c.upper() for c in cols], table, out)
    return n


def _write_xlsx(rows: Iterable[dict[str, Any]], output: str, columns: list[str]) -> int:
    """The workbook is written next to the target and renamed: a failed run leaves no half-written .xlsx."""
    from gateway.central.export import write_xlsx

    target = Path(output)
    part = target.with_name(target.name + ".part")
    try:
        with part.open("wb") as fp:
            n = write_xlsx(rows, columns, fp, "punches")
        part.replace(target)
    except OSError as exc:
        part.unlink(missing_ok=True)
        raise CliError(f"cannot write {output}: {exc.strerror or exc}") from None
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    return n

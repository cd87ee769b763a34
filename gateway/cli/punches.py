"""`fpgw punches`: query the stored punches of this gateway as a table, CSV or JSON.

    punches -> gateway.store.punches.iter_punches(PunchFilter) -> stdout / --output FILE (streamed row by row)
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from typing import TextIO

from gateway.cli.common import EXIT_OK, CliError, config_of, open_engine, options_after_command, parse_date, print_table


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `punches`."""
    p = subparsers.add_parser("punches", parents=[options_after_command()], help="query stored punches")
    p.add_argument("--from", dest="date_from", type=parse_date, metavar="YYYY-MM-DD", help="first day (office time)")
    p.add_argument("--to", dest="date_to", type=parse_date, metavar="YYYY-MM-DD", help="last day, inclusive")
    p.add_argument("--device", help="device id")
    p.add_argument("--employee", help="employee id (NIP)")
    p.add_argument("--user", help="user id as shown on the device (PIN)")
    p.add_argument("--limit", type=int, help="at most this many rows")
    p.add_argument("--format", choices=("table", "csv", "json"), default="table")
    p.add_argument("--output", "-o", metavar="FILE", help="write to FILE instead of standard output")
    p.set_defaults(func=cmd_punches, one_shot=True)


def cmd_punches(args: argparse.Namespace) -> int:
    """Stored punches as a table, CSV or JSON."""
    from gateway.store.punches import PUNCH_FIELDS, PunchFilter, iter_punches

    config = config_of(args)
    if args.date_from and args.date_to and args.date_to < args.date_from:
        raise CliError("--to is before --from")
    flt = PunchFilter(date_from=args.date_from, date_to=args.date_to,
                      device_id=args.device, employee_id=args.employee, device_user_id=args.user, limit=args.limit)
    engine = open_engine(config, pool_size=1, migrate=False)
    # Closed in the finally below (a context manager cannot wrap "maybe stdout").
    out: TextIO = open(args.output, "w", encoding="utf-8", newline="") if args.output else sys.stdout  # noqa: SIM115
    n = 0
    try:
        rows = iter_punches(engine, flt)
        if args.format == "csv":
            writer = csv.DictWriter(out, fieldnames=list(PUNCH_FIELDS))
            writer.writeheader()
            for row in rows:
                writer.writerow(row)
                n += 1
        elif args.format == "json":
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
    finally:
        engine.dispose()
        if out is not sys.stdout:
            out.close()
    if args.output or args.format == "table":
        print(f"{n} punch(es)" + (f" written to {args.output}" if args.output else ""), file=sys.stderr)
    return EXIT_OK

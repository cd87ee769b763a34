"""`fpgw report`: the daily device report (punches, silent and offline days per device) for a range of days.

    report -> gateway.health.report.build_report(HealthRepo, config, days) -> render_text / render_csv /
              render_json -> stdout / --output FILE
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from gateway.cli.common import EXIT_OK, CliError, config_of, known_device, open_health, parse_date


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `report`."""
    p = subparsers.add_parser("report", help="daily device report: punches, silent and offline days per device")
    p.add_argument("--from", dest="day_from", type=parse_date, metavar="YYYY-MM-DD",
                   help="first day (default: 6 days before --to)")
    p.add_argument("--to", dest="day_to", type=parse_date, metavar="YYYY-MM-DD", help="last day (default: today)")
    p.add_argument("--device", action="append", metavar="DEVICE", help="only these devices (repeatable)")
    p.add_argument("--format", choices=("text", "csv", "json"), default="text", help="output format (default: text)")
    p.add_argument("--output", "-o", metavar="FILE", help="write to FILE instead of stdout")
    p.set_defaults(func=cmd_report, one_shot=True)


def cmd_report(args: argparse.Namespace) -> int:
    """Daily device report."""
    from gateway.health.report import build_report, render_csv, render_json, render_text

    config = config_of(args)
    engine, repo = open_health(config)
    try:
        today = datetime.now(ZoneInfo(config.site.timezone)).date()
        day_to = args.day_to or today
        day_from = args.day_from or day_to - timedelta(days=6)
        if day_to < day_from:
            raise CliError(f"--to {day_to} is before --from {day_from}")
        if (day_to - day_from).days > 366:
            raise CliError("at most one year per report")
        unknown = [d for d in args.device or [] if not known_device(config, d)]
        if unknown:
            raise CliError(f"unknown device(s): {', '.join(unknown)}")
        rows = build_report(repo, config, day_from, day_to, device_ids=args.device)
    finally:
        engine.dispose()
    text = render_csv(rows) if args.format == "csv" else render_json(rows, config, day_from, day_to) \
        if args.format == "json" else render_text(rows, config)
    if args.output:
        with open(args.output, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
        print(f"report written to {args.output} ({len(rows)} rows)", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return EXIT_OK

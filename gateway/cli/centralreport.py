"""`fpgw central report|headcount|holidays`: BKD's monthly report and the figures behind its usage numbers.

    report    -> gateway.central.report.build_report (xlsx / pdf / html file)
    headcount -> gateway.central.usage.parse_headcount_csv -> gateway.store.usage.UsageRepo.save_headcounts
    holidays  -> gateway.central.usage.parse_holidays_csv / UsageRepo.save_holidays, remove_holidays
Registered inside the `central` group by gateway.cli.central. docs/bkd-report.md explains the numbers.
"""

from __future__ import annotations

import argparse
import sys
from datetime import date, timedelta
from pathlib import Path
from typing import cast

from gateway.cli.common import CliError, config_of, open_engine, parse_date, print_table

FORMATS = ("xlsx", "pdf", "html")


def register(csub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `report`, `headcount` and `holidays` to the `central` group."""
    q = csub.add_parser(
        "report", help="monthly BKD report: offices ranked, broken and unused terminals (xlsx, pdf, html)",
        description="Write the monthly report of the regency (or one office): offices ranked by terminal "
                    "availability and usage, broken terminals and how long they were down, unused terminals, "
                    "problems never fixed, silent offices, with the numbers behind every chart. "
                    "See docs/bkd-report.md.")
    q.add_argument("--month", help="the month, YYYY-MM (default: last month)")
    q.add_argument("--format", choices=FORMATS, help="file format (default: from --output's suffix, else xlsx)")
    q.add_argument("--office", help="only this office (code)")
    q.add_argument("--output", "-o", help="file to write ('-' = standard output; default: "
                                          "fpgw-report-<month>[-<office>].<format> here)")
    q.set_defaults(func=cmd_report, one_shot=True)

    q = csub.add_parser("headcount", help="employees per office (the basis of the attendance rate)",
                        description="BKD's employee count per office: the attendance rate compares the employees "
                                    "who punched on a working day with it.")
    hsub = q.add_subparsers(dest="headcount_command", metavar="ACTION", required=True)
    a = hsub.add_parser("import", help="import a CSV with columns office_code,employees[,as_of]",
                        description="Import a CSV (UTF-8, comma or semicolon) with the header "
                                    "office_code,employees[,as_of]. Every line is checked first: one bad line "
                                    "and nothing is imported (each problem is listed with its line number). A "
                                    "figure counts from its as_of date (without one: for every month) until a "
                                    "later one; importing the same office and date again replaces it.")
    a.add_argument("file", type=Path, help="the CSV file")
    a.add_argument("--dry-run", action="store_true", help="only check the file")
    a.set_defaults(func=cmd_headcount_import, one_shot=True)
    a = hsub.add_parser("list", help="the stored headcounts")
    a.set_defaults(func=cmd_headcount_list, one_shot=True)

    q = csub.add_parser("holidays", help="the regency's holidays (not working days)",
                        description="Holidays are taken out of the working days (Monday-Friday by default, "
                                    "[health.working_hours] days) of every usage figure.")
    dsub = q.add_subparsers(dest="holidays_command", metavar="ACTION", required=True)
    a = dsub.add_parser("list", help="the stored holidays")
    a.add_argument("--year", type=int, help="only this year")
    a.set_defaults(func=cmd_holidays_list, one_shot=True)
    a = dsub.add_parser("add", help="add (or rename) one holiday")
    a.add_argument("day", type=parse_date, help="YYYY-MM-DD")
    a.add_argument("name", nargs="?", default="", help="e.g. 'Hari Raya Natal'")
    a.set_defaults(func=cmd_holidays_add, one_shot=True)
    a = dsub.add_parser("remove", help="remove one holiday")
    a.add_argument("day", type=parse_date, help="YYYY-MM-DD")
    a.set_defaults(func=cmd_holidays_remove, one_shot=True)
    a = dsub.add_parser("import", help="import a CSV with columns date[,name]",
                        description="Import a CSV (UTF-8, comma or semicolon) with the header date[,name]; one bad "
                                    "line and nothing is imported. Days already stored are renamed.")
    a.add_argument("file", type=Path, help="the CSV file")
    a.set_defaults(func=cmd_holidays_import, one_shot=True)


def _last_month(today: date) -> str:
    previous = today.replace(day=1) - timedelta(days=1)
    return f"{previous:%Y-%m}"


def cmd_report(args: argparse.Namespace) -> int:
    """Write the monthly report."""
    from gateway.central.report import Format, build_report
    from gateway.central.usage import WorkRules, month_range

    month = args.month or _last_month(date.today())
    try:
        month_range(month)
    except ValueError as exc:
        raise CliError(f"--month: {exc}") from None
    suffix = Path(args.output).suffix.lower().lstrip(".") if args.output and args.output != "-" else ""
    fmt = args.format or (suffix if suffix in FORMATS else "xlsx")
    if suffix and suffix != fmt:
        raise CliError(f"--output {args.output} ends in .{suffix} but the format is {fmt}: use a .{fmt} file name "
                       f"or --format {suffix if suffix in FORMATS else fmt}")
    office = (args.office or "").strip() or None
    if office is not None and len(office) > 32:
        raise CliError("--office: an office code of at most 32 characters")
    config = config_of(args)
    engine = open_engine(config, pool_size=2, migrate=True)
    try:
        data = build_report(engine, month, cast(Format, fmt), office, rules=WorkRules.from_config(config))
    finally:
        engine.dispose()
    if args.output == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
        return 0
    out = Path(args.output or f"fpgw-report-{month}{'-' + office if office else ''}.{fmt}")
    try:
        out.write_bytes(data)
    except OSError as exc:
        raise CliError(f"cannot write {out}: {exc.strerror or exc}") from None
    print(f"report for {month}{' office ' + office if office else ''} written to {out} ({len(data):,} bytes)",
          file=sys.stderr)
    return 0


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror or exc}") from None


def cmd_headcount_import(args: argparse.Namespace) -> int:
    """Check and import a headcount CSV."""
    from gateway.central.usage import HeadcountFileError, parse_headcount_csv
    from gateway.store.usage import UNDATED, UsageRepo

    try:
        rows = parse_headcount_csv(_read(args.file), args.file.name)
    except HeadcountFileError as exc:
        for problem in exc.problems:
            print(f"{args.file}: {problem}", file=sys.stderr)
        raise CliError(f"{args.file}: {len(exc.problems)} problem(s); nothing imported") from None
    config = config_of(args)
    engine = open_engine(config, pool_size=2, migrate=not args.dry_run)
    try:
        repo = UsageRepo(engine)
        known = {g["office_code"] for g in repo.gateways()} | set(repo.offices_with_punches())
        if not args.dry_run:
            repo.save_headcounts(rows)
    finally:
        engine.dispose()
    unknown = sorted({r.office_code for r in rows} - known)
    if unknown:
        print(f"note: no gateway or punch from office(s) {', '.join(unknown[:10])}"
              + (f" and {len(unknown) - 10} more" if len(unknown) > 10 else "")
              + " yet (check the codes; they count as silent offices in the report)", file=sys.stderr)
    dated = sum(1 for r in rows if r.as_of != UNDATED)
    print(f"{len(rows)} headcount(s) {'checked' if args.dry_run else 'imported'} ({dated} dated, "
          f"{len(rows) - dated} without as_of)")
    return 0


def cmd_headcount_list(args: argparse.Namespace) -> int:
    """Print the stored headcounts."""
    from gateway.store.usage import UNDATED, UsageRepo

    engine = open_engine(config_of(args), pool_size=1, migrate=True)
    try:
        rows = UsageRepo(engine).headcounts()
    finally:
        engine.dispose()
    if not rows:
        print("no headcount imported yet (fpgw central headcount import FILE.csv)")
        return 0
    print_table(["office", "as_of", "employees", "source"],
                [[r.office_code, "-" if r.as_of == UNDATED else r.as_of.isoformat(), str(r.employees), r.source]
                 for r in rows], sys.stdout)
    return 0


def cmd_holidays_list(args: argparse.Namespace) -> int:
    """Print the stored holidays."""
    from gateway.store.usage import UsageRepo

    start = date(args.year, 1, 1) if args.year else None
    end = date(args.year, 12, 31) if args.year else None
    engine = open_engine(config_of(args), pool_size=1, migrate=True)
    try:
        days = UsageRepo(engine).holidays(start, end)
    finally:
        engine.dispose()
    if not days:
        print("no holiday stored" + (f" for {args.year}" if args.year else ""))
        return 0
    print_table(["date", "weekday", "name"], [[d.isoformat(), f"{d:%a}", n] for d, n in days.items()], sys.stdout)
    return 0


def _save_holidays(args: argparse.Namespace, days: list[tuple[date, str]]) -> int:
    from gateway.store.usage import UsageRepo

    engine = open_engine(config_of(args), pool_size=1, migrate=True)
    try:
        return UsageRepo(engine).save_holidays(days)
    finally:
        engine.dispose()


def cmd_holidays_add(args: argparse.Namespace) -> int:
    """Add or rename one holiday."""
    _save_holidays(args, [(args.day, args.name)])
    print(f"holiday {args.day} {args.name}".rstrip() + " stored")
    return 0


def cmd_holidays_remove(args: argparse.Namespace) -> int:
    """Remove one holiday."""
    from gateway.store.usage import UsageRepo

    engine = open_engine(config_of(args), pool_size=1, migrate=True)
    try:
        removed = UsageRepo(engine).remove_holidays([args.day])
    finally:
        engine.dispose()
    if not removed:
        raise CliError(f"{args.day} is not a stored holiday")
    print(f"holiday {args.day} removed")
    return 0


def cmd_holidays_import(args: argparse.Namespace) -> int:
    """Check and import a holidays CSV."""
    from gateway.central.usage import HolidayFileError, parse_holidays_csv

    try:
        days = parse_holidays_csv(_read(args.file))
    except HolidayFileError as exc:
        for problem in exc.problems:
            print(f"{args.file}: {problem}", file=sys.stderr)
        raise CliError(f"{args.file}: {len(exc.problems)} problem(s); nothing imported") from None
    n = _save_holidays(args, days)
    print(f"{n} holiday(s) imported")
    return 0

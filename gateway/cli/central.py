"""`fpgw export`, `fpgw forward ...` and `fpgw central ...`: forwarding and BKD tooling on the command line.

    gateway.cli.main.build_parser() --register(sub)--> these subcommands
    export   -> CentralStore (local DB) -> gateway.central.export writers -> file / stdout
    forward  -> gateway.store.outbox (status, rejected rows, requeue) / gateway.forward.forwarder (one run now)
    central  -> gateway.central.tokens token files (mint, list)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import date
from pathlib import Path
from typing import Any, BinaryIO

from gateway.config import Config
from gateway.humanize import duration_text


def _date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {text!r}") from None


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add `export`, `forward` and `central` to the fpgw parser."""
    p = subparsers.add_parser(
        "export", help="export punches, a daily recap or a completeness report from the local database",
        description="Export stored punches (or --recap / --completeness) as JSON, CSV or XLSX. Dates are the "
                    "office's local dates, both ends included.")
    p.add_argument("--from", dest="date_from", type=_date, metavar="YYYY-MM-DD", help="first local date")
    p.add_argument("--to", dest="date_to", type=_date, metavar="YYYY-MM-DD", help="last local date")
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

    f = subparsers.add_parser("forward", help="forwarding to the central (BKD) server: status and repair")
    fsub = f.add_subparsers(dest="forward_command", metavar="COMMAND", required=True)
    q = fsub.add_parser("status", help="outbox depth, oldest unforwarded punch, rejected punches")
    q.add_argument("--json", action="store_true", help="machine-readable output")
    q.set_defaults(func=cmd_forward_status, one_shot=True)
    q = fsub.add_parser("retry-rejected", help="put punches the upstream refused back in the queue")
    q.add_argument("punch_ids", nargs="*", type=int, metavar="PUNCH_ID", help="only these (default: all)")
    q.set_defaults(func=cmd_forward_retry, one_shot=True)
    q = fsub.add_parser("now", help="forward once now (even during a backoff) and print what happened")
    q.set_defaults(func=cmd_forward_now, one_shot=True)

    c = subparsers.add_parser("central", help="central (BKD) server: API tokens")
    csub = c.add_subparsers(dest="central_command", metavar="COMMAND", required=True)
    q = csub.add_parser("add-token", help="mint a token, store its hash, print the token once",
                        description="Mint a bearer token and append its SHA-256 hash to the token file. The token "
                                    "itself is printed once and stored nowhere: give it to the office (gateway "
                                    "token) or BKD client (API token) now.")
    q.add_argument("--kind", choices=("gateway", "api"), default="api",
                   help="gateway: an office gateway forwarding here (exactly one office); api: a BKD client")
    q.add_argument("--name", required=True, help="who holds it, e.g. 'dinas-pendidikan-gw' or 'bkd-payroll'")
    q.add_argument("--offices", default="*",
                   help="comma-separated office codes it may act for; '*' = every office (api tokens only)")
    q.add_argument("--file", type=Path, help="token file (default: central.gateway_tokens_file / api_tokens_file)")
    q.set_defaults(func=cmd_add_token, one_shot=True)
    q = csub.add_parser("gateways", help="office gateways that forward here: last contact, backlog, punches")
    q.add_argument("--json", action="store_true", help="machine-readable output")
    q.set_defaults(func=cmd_gateways, one_shot=True)
    q = csub.add_parser("list-tokens", help="names and office scopes of the tokens (never the tokens)")
    q.add_argument("--kind", choices=("gateway", "api"), default="api")
    q.add_argument("--file", type=Path)
    q.set_defaults(func=cmd_list_tokens, one_shot=True)


def _fail(message: str) -> Exception:
    from gateway.cli.main import CliError

    return CliError(message)


def _engine(config: Config) -> Any:
    from gateway.store.db import create_db_engine, upgrade

    engine = create_db_engine(config.database.url, pool_size=2)
    if config.database.auto_migrate:
        upgrade(engine)
    return engine


# -- export ----------------------------------------------------------------------------------------

def cmd_export(args: argparse.Namespace) -> int:
    """Write punches / recap / completeness to a file or stdout."""
    from gateway.central import export
    from gateway.store.central import FEED_COLUMNS, CentralStore, PunchQuery

    config: Config = args.loaded_config
    fmt = args.format
    if fmt is None:
        suffix = Path(args.output).suffix.lower().lstrip(".") if args.output else ""
        fmt = suffix if suffix in export.FORMATS else "csv"
    if fmt == "xlsx" and not args.output and sys.stdout.isatty():
        raise _fail("an XLSX file is binary: give --output FILE.xlsx")
    if (args.recap or args.completeness) and not (args.date_from and args.date_to):
        raise _fail("--recap and --completeness need --from and --to")
    if args.date_from and args.date_to and args.date_from > args.date_to:
        raise _fail("--from is after --to")
    out_path = Path(args.output) if args.output else None
    part = out_path.with_name(out_path.name + ".part") if out_path else None
    if out_path and not out_path.parent.is_dir():
        raise _fail(f"--output: folder {str(out_path.parent)!r} does not exist")
    engine = _engine(config)
    try:
        store = CentralStore(engine)
        q = PunchQuery(office=args.office, device=args.device, employee=args.employee, date_from=args.date_from,
                       date_to=args.date_to)
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


# -- forward ---------------------------------------------------------------------------------------

def cmd_forward_status(args: argparse.Namespace) -> int:
    """Print outbox depth, oldest age and rejected rows; exit 1 when the backlog is past alert_after_s."""
    from gateway.store import outbox

    config: Config = args.loaded_config
    engine = _engine(config)
    try:
        stats = outbox.outbox_stats(engine)
        rejected = outbox.rejected_rows(engine, 20)
    finally:
        engine.dispose()
    late = stats.oldest_age_s is not None and stats.oldest_age_s > config.forward.alert_after_s
    if args.json:
        print(json.dumps({"upstream": config.forward.url or None, "depth": stats.depth,
                          "oldest_age_s": stats.oldest_age_s, "rejected": stats.rejected, "late": late,
                          "rejected_examples": [{k: (v.isoformat() if hasattr(v, "isoformat") else v)
                                                 for k, v in r.items()} for r in rejected]}))
        return 1 if late else 0
    print(f"upstream:        {config.forward.url or '(forwarding off: [forward] url is empty)'}")
    print(f"waiting:         {stats.depth} punch(es)")
    if stats.oldest_age_s is not None:
        print(f"oldest waiting:  {duration_text(stats.oldest_age_s)}" + ("  (LATE: past forward.alert_after_s)" if late
                                                                  else ""))
    print(f"rejected:        {stats.rejected} punch(es)" + ("  -> fix the cause, then `fpgw forward retry-rejected`"
                                                             if stats.rejected else ""))
    for r in rejected:
        print(f"  #{r['punch_id']} {r['device_id']} {r['device_user_id']} {r['device_time']}: {r['last_error']}")
    return 1 if late else 0


def cmd_forward_retry(args: argparse.Namespace) -> int:
    """Requeue rejected punches."""
    from gateway.store import outbox

    engine = _engine(args.loaded_config)
    try:
        n = outbox.retry_rejected(engine, args.punch_ids or None)
    finally:
        engine.dispose()
    print(f"{n} rejected punch(es) queued again; the daemon sends them on its next forwarding run")
    return 0


def cmd_forward_now(args: argparse.Namespace) -> int:
    """Run one forwarding pass now."""
    from gateway.forward.forwarder import Forwarder

    config: Config = args.loaded_config
    if not config.forward.url:
        raise _fail("forwarding is off: set [forward] url and token_env/token_file")
    engine = _engine(config)
    fwd = Forwarder(config, engine)
    try:
        report = fwd.run_once()
    finally:
        fwd.stop(5)
        engine.dispose()
    print(f"sent {report.sent}, accepted {report.accepted} ({report.duplicates} already there), "
          f"rejected {report.rejected}, kept {report.kept}" + (f"; upstream problem: {fwd.last_error}"
                                                             if report.error else ""))
    return 1 if report.error else 0


# -- central ---------------------------------------------------------------------------------------

def _token_file(args: argparse.Namespace) -> Path:
    if args.file:
        return Path(args.file)
    config: Config = args.loaded_config
    path = config.central.gateway_tokens_file if args.kind == "gateway" else config.central.api_tokens_file
    if path is None:
        raise _fail(f"no token file: set [central] {'gateway' if args.kind == 'gateway' else 'api'}_tokens_file "
                    "or pass --file")
    return path


def cmd_add_token(args: argparse.Namespace) -> int:
    """Mint and store a token."""
    from gateway.central.tokens import TokenFileError, add_token

    offices = [o.strip() for o in args.offices.split(",") if o.strip()]
    offices_arg = None if offices == ["*"] or not offices else offices
    path = _token_file(args)
    try:
        token = add_token(path, args.name, offices_arg, args.kind)
    except TokenFileError as exc:
        raise _fail(str(exc)) from None
    print(token)
    print(f"token {args.name!r} ({args.kind}, offices: {', '.join(offices_arg) if offices_arg else 'all'}) added to "
          f"{path}. This is the only time the token is shown; the running server picks it up automatically.",
          file=sys.stderr)
    return 0


def cmd_list_tokens(args: argparse.Namespace) -> int:
    """List token names and scopes."""
    from gateway.central.tokens import TokenFileError, load_tokens

    path = _token_file(args)
    try:
        tokens = load_tokens(path, args.kind)
    except TokenFileError as exc:
        raise _fail(str(exc)) from None
    for t in tokens:
        print(f"{t.name}\t{','.join(sorted(t.offices)) if t.offices else '*'}")
    return 0


def cmd_gateways(args: argparse.Namespace) -> int:
    """List the gateways known to this central instance."""
    from gateway.central import export
    from gateway.store.central import CentralStore
    from gateway.store.schema import utcnow

    config: Config = args.loaded_config
    silent_after_s = config.central.gateway_silent_after_s
    engine = _engine(config)
    try:
        rows = CentralStore(engine).gateways(silent_after_s=silent_after_s)
    finally:
        engine.dispose()
    if args.json:
        print(json.dumps(export.jsonable(rows)))
        return 0
    if not rows:
        print("no gateway has forwarded here yet")
        return 0
    now = utcnow()
    print(f"{'gateway':<24} {'office':<14} {'last contact':>13} {'status':<7} {'backlog':>8} {'oldest':>9} "
          f"{'punches':>9}")
    for g in rows:
        oldest = duration_text(g["oldest_unforwarded_s"]) if g["oldest_unforwarded_s"] is not None else "-"
        depth = g["outbox_depth"] if g["outbox_depth"] is not None else "-"
        ago = duration_text((now - g["last_seen_at"]).total_seconds()) + " ago"
        status = "SILENT" if g["silent"] else "ok"
        print(f"{g['name']:<24} {g['office_code']:<14} {ago:>13} {status:<7} {depth!s:>8} {oldest:>9} "
              f"{g['punches_received']:>9}")
    silent = sum(1 for g in rows if g["silent"])
    if silent:
        print(f"\n{silent} gateway(s) SILENT: no contact for more than {duration_text(silent_after_s)} "
              "(central.gateway_silent_after_s). At the office check: is the server powered on, is the internet "
              "link up, `systemctl status fpgw`, `fpgw forward status`.")
    return 0

"""`fpgw central add-token|list-tokens|gateways|rebind-device`: tooling of the central (BKD) server.

    add-token     -> gateway.central.api.add_token: mint, append the SHA-256 hash to the token file, print once
    list-tokens   -> gateway.central.api.load_tokens: names and office scopes, never the tokens
    gateways      -> gateway.store.central.CentralStore.gateways: last contact, backlog, punches per gateway
    rebind-device -> gateway.store.central.CentralStore.rebind_device: move a terminal's serial to another office
    report, headcount, holidays -> gateway.cli.centralreport (the monthly BKD report and its figures)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from gateway.cli import centralreport, users
from gateway.cli.common import CliError, config_of, open_engine
from gateway.humanize import duration_text


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `central` and its actions."""
    c = subparsers.add_parser("central", help="central (BKD) server: tokens, gateways, monthly report")
    csub = c.add_subparsers(dest="central_command", metavar="COMMAND", required=True)
    q = csub.add_parser("add-token", help="mint a token, store its hash, print the token once",
                        description="Mint a bearer token and append its SHA-256 hash to the token file. The token "
                                    "itself is printed once and stored nowhere: give it to the office (gateway "
                                    "token) or BKD client (API token) now.")
    q.add_argument("--kind", choices=("gateway", "api"), default="api",
                   help="gateway: an office gateway (one office) or a lower tier (its offices, e.g. "
                        "'1801.*') forwarding here; api: a BKD client")
    q.add_argument("--name", required=True, help="who holds it, e.g. 'dinas-pendidikan-gw' or 'bkd-payroll'")
    q.add_argument("--offices", default="*",
                   help="comma-separated office codes or patterns it may act for ('1801.*' = every office "
                        "under 1801, '*' only as the last segment); '*' alone = every office (api tokens only)")
    q.add_argument("--file", type=Path, help="token file (default: central.gateway_tokens_file / api_tokens_file)")
    q.set_defaults(func=cmd_add_token, one_shot=True)
    q = csub.add_parser("gateways", help="office gateways that forward here: last contact, backlog, punches")
    q.add_argument("--json", action="store_true", help="machine-readable output")
    q.set_defaults(func=cmd_gateways, one_shot=True)
    q = csub.add_parser("rebind-device", help="bind a terminal's serial to another office (moved/replaced terminal)",
                        description="Every device serial belongs to the office whose gateway first reported it; "
                                    "punches and health for it from any other office are rejected "
                                    "(serial_bound_elsewhere) and alerted. When a terminal really moved to "
                                    "another office, bind its serial there; the office then retries its "
                                    "rejected punches. Punches already stored stay with the office that sent "
                                    "them. Without --office: show the binding.")
    q.add_argument("serial", help="the terminal's serial number, as in the alert")
    q.add_argument("--office", help="office code to bind it to (omit to show the current binding)")
    q.add_argument("--note", help="why (kept with the binding), e.g. 'moved from Dinas X, ticket 123'")
    q.add_argument("--by", help="who does it (kept with the binding; default: the login name)")
    q.set_defaults(func=cmd_rebind_device, one_shot=True)
    q = csub.add_parser("list-tokens", help="names and office scopes of the tokens (never the tokens)")
    q.add_argument("--kind", choices=("gateway", "api"), default="api",
                   help="gateway tokens (offices forwarding here) or API tokens (BKD clients); default: api")
    q.add_argument("--file", type=Path, help="token file (default: the one the central config names)")
    q.set_defaults(func=cmd_list_tokens, one_shot=True)
    users.register(csub)
    centralreport.register(csub)  # report, headcount, holidays


def _token_file(args: argparse.Namespace) -> Path:
    if args.file:
        return Path(args.file)
    config = config_of(args)
    path = config.central.gateway_tokens_file if args.kind == "gateway" else config.central.api_tokens_file
    if path is None:
        raise CliError(f"no token file: set [central] {'gateway' if args.kind == 'gateway' else 'api'}_tokens_file "
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
        raise CliError(str(exc)) from None
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
        raise CliError(str(exc)) from None
    for t in tokens:
        print(f"{t.name}\t{','.join(t.offices.entries) if t.offices else '*'}")
    return 0


def cmd_gateways(args: argparse.Namespace) -> int:
    """List the gateways known to this central instance."""
    from gateway.central import export
    from gateway.store.central import CentralStore
    from gateway.store.schema import utcnow

    config = config_of(args)
    silent_after_s = config.central.gateway_silent_after_s
    engine = open_engine(config, pool_size=2, migrate=True)
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


def cmd_rebind_device(args: argparse.Namespace) -> int:
    """Show or change the office a device serial is bound to."""
    import getpass

    from gateway.store.central import CentralStore

    serial, office = args.serial.strip(), (args.office or "").strip()
    if not serial or len(serial) > 64:
        raise CliError("SERIAL: 1 to 64 characters")
    if args.office is not None and (not office or len(office) > 32):
        raise CliError("--office: an office code of 1 to 32 characters")
    config = config_of(args)
    engine = open_engine(config, pool_size=2, migrate=True)
    try:
        store = CentralStore(engine)
        if args.office is None:
            rows = store.bindings(serial)
            if not rows:
                print(f"serial {serial} is not bound to any office yet (the first office to report it gets it)")
                return 0
            b = rows[0]
            print(f"serial {serial}: office {b['office_code']} since {b['bound_at']:%Y-%m-%d %H:%M} UTC "
                  f"(by {b['bound_by']})" + (f", before: office {b['previous_office_code']}"
                                              if b["previous_office_code"] else "")
                  + (f"; note: {b['note']}" if b["note"] else ""))
            return 0
        try:
            by = args.by or getpass.getuser()
        except Exception:  # no login name in a bare container
            by = "unknown"
        previous, _ = store.rebind_device(serial, office, by=by, note=args.note)
    finally:
        engine.dispose()
    if previous == office:
        print(f"serial {serial} was already bound to office {office}; recorded again")
    else:
        print(f"serial {serial} is now bound to office {office} (was: {previous or 'unbound'}). The office's gateway "
              "may now retry its rejected punches (`fpgw forward status` at the office shows them); punches already "
              "stored stay with the office that sent them.")
    return 0

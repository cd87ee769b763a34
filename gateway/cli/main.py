"""`fpgw` command line: run the daemon, poll once, look at devices and punches, check config, migrate, demo.

Entry point of the console script (pyproject: fpgw = gateway.cli.main:main). Every subcommand loads the
config (--config, $FPGW_CONFIG, /etc/fpgw/config.toml), sets up logging and calls into gateway.app /
gateway.polling.poller / gateway.store. Other areas add subcommands through gateway.cli.monitor.register and
gateway.cli.central.register. Exit codes: 0 ok, 2 configuration error, 1 any other failure.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterable, Sequence
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, TextIO
from zoneinfo import ZoneInfo

from gateway import __version__
from gateway.config import Config, ConfigError, load_config
from gateway.logs import FORMATS, LEVELS, setup_logging

DEFAULT_CONFIG = "/etc/fpgw/config.toml"
EXIT_OK, EXIT_FAILURE, EXIT_CONFIG = 0, 1, 2


class CliError(Exception):
    """A failure to report to the operator as one line (exit code 1)."""


def default_config_path() -> str:
    """$FPGW_CONFIG, else the systemd credential, else /etc/fpgw/config.toml."""
    env = os.environ.get("FPGW_CONFIG")
    if env:
        return env
    creds = os.environ.get("CREDENTIALS_DIRECTORY")
    if creds and (Path(creds) / "config.toml").is_file():
        return str(Path(creds) / "config.toml")
    return DEFAULT_CONFIG


def repo_file(*parts: str) -> Path | None:
    """A file shipped next to the packages (config.example.toml, systemd/fpgw.service), if present."""
    here = Path(__file__).resolve().parent.parent  # the gateway package
    for base in (here / "data", here.parent):
        candidate = base.joinpath(*parts)
        if candidate.is_file():
            return candidate
    return None


# -------------------------------------------------------------------------------------------------
# Parser
# -------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The full `fpgw` parser (including other areas' subcommands)."""
    parser = argparse.ArgumentParser(
        prog="fpgw", description="Fingerprint gateway: polls attendance terminals into one durable punch log.")
    parser.add_argument("--version", action="version", version=f"fpgw {__version__}")
    parser.add_argument("-c", "--config", default=None, metavar="PATH",
                        help=f"config file (default: $FPGW_CONFIG or {DEFAULT_CONFIG})")
    parser.add_argument("--log-format", choices=FORMATS, default=None,
                        help="log format (default: logging.format from the config, else auto)")
    parser.add_argument("--log-level", choices=LEVELS, default=None,
                        help="log level (default: logging.level for `run`, warning for one-shot commands)")
    # The same options are accepted after the command too (`fpgw devices --config x.toml`).
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-c", "--config", default=argparse.SUPPRESS, metavar="PATH", help=argparse.SUPPRESS)
    common.add_argument("--log-format", choices=FORMATS, default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    common.add_argument("--log-level", choices=LEVELS, default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    add = sub.add_parser

    def add_parser(name: str, **kw: Any) -> argparse.ArgumentParser:
        return add(name, parents=[common], **kw)

    sub.add_parser = add_parser  # type: ignore[method-assign]

    p = sub.add_parser("run", help="run the gateway daemon (what systemd starts)")
    p.set_defaults(func=cmd_run, one_shot=False)

    p = sub.add_parser("poll", help="poll devices once now and print what was found")
    p.add_argument("devices", nargs="*", metavar="DEVICE", help="device ids (see `fpgw devices`)")
    p.add_argument("--all", action="store_true", help="poll every enabled device")
    p.set_defaults(func=cmd_poll, one_shot=True)

    p = sub.add_parser("devices", help="list devices with their health, last punch and counts")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--include-removed", action="store_true", help="also devices no longer in the config")
    p.set_defaults(func=cmd_devices, one_shot=True)

    p = sub.add_parser("punches", help="query stored punches")
    p.add_argument("--from", dest="date_from", type=_date, metavar="YYYY-MM-DD", help="first day (office time)")
    p.add_argument("--to", dest="date_to", type=_date, metavar="YYYY-MM-DD", help="last day, inclusive")
    p.add_argument("--device", help="device id")
    p.add_argument("--employee", help="employee id (NIP)")
    p.add_argument("--user", help="user id as shown on the device (PIN)")
    p.add_argument("--limit", type=int, help="at most this many rows")
    p.add_argument("--format", choices=("table", "csv", "json"), default="table")
    p.add_argument("--output", "-o", metavar="FILE", help="write to FILE instead of standard output")
    p.set_defaults(func=cmd_punches, one_shot=True)

    p = sub.add_parser("check-config", help="validate the config file and print what was understood")
    p.set_defaults(func=cmd_check_config, one_shot=True)

    p = sub.add_parser("db", help="database schema: upgrade or show the current revision")
    dbsub = p.add_subparsers(dest="db_command", metavar="ACTION")
    dbsub.required = True
    q = dbsub.add_parser("upgrade", parents=[common], help="apply pending migrations (safe to run any time)")
    q.set_defaults(func=cmd_db_upgrade, one_shot=True)
    q = dbsub.add_parser("current", parents=[common], help="show the schema revision of the database and of this fpgw")
    q.set_defaults(func=cmd_db_current, one_shot=True)

    p = sub.add_parser("demo", help="run the real daemon against a simulated office (no hardware needed)")
    p.add_argument("--dir", default="demo-office",
                   help="folder for the demo config and database (default: %(default)s)")
    p.add_argument("--duration", type=float, default=None, metavar="SECONDS", help="stop after this long")
    p.add_argument("--interval", type=float, default=15.0, metavar="SECONDS", help="poll interval (default: 15)")
    p.add_argument("--http-port", type=int, default=8470, help="status page port when gateway.web.status is enabled")
    p.add_argument("--keep", action="store_true",
                   help="keep the previous run's database (default: start a fresh office every run)")
    p.set_defaults(func=cmd_demo, one_shot=False, needs_config=False)

    p = sub.add_parser("print-config-example", help="print the fully commented example config")
    p.set_defaults(func=cmd_print_config_example, one_shot=True, needs_config=False)

    p = sub.add_parser("install-unit", help="install the systemd unit for this installation")
    p.add_argument("--output", default="/etc/systemd/system/fpgw.service", help="where to write (default: %(default)s)")
    p.add_argument("--stdout", action="store_true", help="print the unit instead of writing it")
    p.add_argument("--no-reload", action="store_true", help="do not run `systemctl daemon-reload`")
    p.set_defaults(func=cmd_install_unit, one_shot=True, needs_config=False)

    from gateway.cli import central as cli_central
    from gateway.cli import clear as cli_clear
    from gateway.cli import monitor as cli_monitor

    sub.add_parser = add  # type: ignore[method-assign]  # other areas' commands keep their own options
    cli_monitor.register(sub)
    cli_clear.register(sub)  # after cli_monitor: adds `clear` to the same `devices` actions
    cli_central.register(sub)
    return parser


def _date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {text!r}") from None


# -------------------------------------------------------------------------------------------------
# Main
# -------------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Console-script entry point."""
    parser = build_parser()
    args = parser.parse_args(argv)
    config: Config | None = None
    if getattr(args, "needs_config", True):
        path = args.config or default_config_path()
        try:
            config = load_config(path)
        except ConfigError as exc:
            _print_config_error(exc, path)
            return EXIT_CONFIG
    one_shot = getattr(args, "one_shot", True)
    fmt = args.log_format or (config.logging.format if config else "auto")
    level = args.log_level or ("warning" if one_shot else (config.logging.level if config else "info"))
    setup_logging(fmt, level)
    args.loaded_config = config
    try:
        result = args.func(args)
    except ConfigError as exc:
        _print_config_error(exc, args.config or "")
        return EXIT_CONFIG
    except CliError as exc:
        print(f"fpgw: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `fpgw punches | head`: the reader left; not an error worth a traceback.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK
    except Exception as exc:
        from gateway.store.db import DatabaseError

        if isinstance(exc, DatabaseError):
            print(f"fpgw: database: {exc}", file=sys.stderr)
            return EXIT_FAILURE
        from sqlalchemy.exc import OperationalError

        if isinstance(exc, OperationalError):
            print(f"fpgw: cannot use the database: {exc.orig or exc}", file=sys.stderr)
            return EXIT_FAILURE
        raise
    return int(result or 0)


def _print_config_error(exc: ConfigError, path: str) -> None:
    where = exc.source or path
    print(f"fpgw: invalid configuration in {where}:" if where else "fpgw: invalid configuration:", file=sys.stderr)
    for problem in exc.problems:
        print(f"  - {problem}", file=sys.stderr)
    if any(p.startswith("cannot read") for p in exc.problems):
        print("  (start from `fpgw print-config-example`, or pass --config PATH / set FPGW_CONFIG)",
              file=sys.stderr)


def _config(args: argparse.Namespace) -> Config:
    config = args.loaded_config
    assert config is not None
    return config


# -------------------------------------------------------------------------------------------------
# Commands
# -------------------------------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    """Run the daemon until SIGTERM/SIGINT."""
    from gateway.app import Gateway

    gateway = Gateway(_config(args))
    return gateway.run_forever()


def _open_store(config: Config) -> tuple[Any, Any]:
    from gateway.store.db import create_db_engine, upgrade
    from gateway.store.punches import Store

    engine = create_db_engine(config.database.url, pool_size=2)
    if config.database.auto_migrate:
        upgrade(engine)
    store = Store(engine, config.site.office_code)
    return engine, store


def cmd_poll(args: argparse.Namespace) -> int:
    """Poll the named devices (or all) once, sequentially, and print one line each."""
    from gateway.polling.poller import DevicePoller

    config = _config(args)
    enabled = [d for d in config.devices if d.enabled]
    if args.all or not args.devices:
        if not args.all and not args.devices:
            raise CliError("name the devices to poll, or use --all (devices: "
                           + (", ".join(d.id for d in config.devices) or "none configured") + ")")
        chosen = enabled
    else:
        known = {d.id: d for d in config.devices}
        unknown = [i for i in args.devices if i not in known]
        if unknown:
            raise CliError(f"unknown device id(s): {', '.join(unknown)} (configured: {', '.join(known) or 'none'})")
        chosen = [known[i] for i in args.devices]
    engine, store = _open_store(config)
    try:
        store.sync_devices(config.devices)
        poller = DevicePoller(config, store)
        failed = 0
        for dev in chosen:
            o = poller.poll_once(dev)
            if o.ok:
                counts = o.counts
                cap = f"/{counts.records_cap}" if counts and counts.records_cap else ""
                skew = f" clock_skew={o.clock_skew_s:+.0f}s" if o.clock_skew_s is not None else ""
                print(f"{dev.id}: ok serial={o.serial} mode={o.mode} records={counts.records if counts else '?'}{cap}"
                      f" read={o.records_read} new={o.new_punches}{skew} ({o.duration_s:.1f}s)")
                if o.previous_serial:
                    print(f"  note: serial changed from {o.previous_serial} (terminal replaced?)")
                if o.flag_counts:
                    print("  flagged: " + ", ".join(f"{k}={v}" for k, v in sorted(o.flag_counts.items())))
            else:
                failed += 1
                print(f"{dev.id}: FAILED {o.error_kind}: {o.error} ({o.duration_s:.1f}s)")
    finally:
        engine.dispose()
    return EXIT_FAILURE if failed else EXIT_OK


def _local(text: str | None, zone: ZoneInfo) -> str:
    if not text:
        return "-"
    dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return dt.astimezone(zone).strftime("%Y-%m-%d %H:%M")


def cmd_devices(args: argparse.Namespace) -> int:
    """Device table (or JSON) with health from the monitor's device_health table."""
    from gateway.store.db import create_db_engine
    from gateway.store.health import device_overview

    config = _config(args)
    engine = create_db_engine(config.database.url, pool_size=1)
    try:
        rows = device_overview(engine, config.site.office_code, include_disabled=args.include_removed)
    finally:
        engine.dispose()
    configured = {d.id for d in config.devices}
    for d in config.devices:
        if d.id not in {r["device_id"] for r in rows}:
            # Configured but never seen by the daemon yet (sync happens at start).
            rows.append({"device_id": d.id, "name": d.name, "address": d.address, "port": d.port,
                         "transport": d.transport, "serial": d.serial, "state": "unknown", "problems": [],
                         "last_seen_at": None, "last_punch_at": None, "records": None, "records_cap": None,
                         "clock_skew_s": None, "last_poll_outcome": None, "enabled": d.enabled})
    if args.json:
        json.dump(rows, sys.stdout, indent=2, ensure_ascii=False)
        sys.stdout.write("\n")
        return EXIT_OK
    zone = ZoneInfo(config.site.timezone)
    table = []
    for r in rows:
        records = "-" if r["records"] is None else str(r["records"])
        if r.get("records_cap"):
            records += f"/{r['records_cap']}"
        skew = "-" if r["clock_skew_s"] is None else f"{r['clock_skew_s']:+.0f}s"
        problems = ",".join(r["problems"]) or "-"
        muted = r.get("muted_until")
        if muted and datetime.fromisoformat(muted.replace("Z", "+00:00")) > datetime.now(UTC):
            problems = ("" if problems == "-" else problems + ",") + "muted"
        if r.get("last_poll_outcome") not in (None, "ok", "unchanged", "cleared"):
            problems = problems if problems != "-" else f"last poll: {r['last_poll_outcome']}"
        name = r["device_id"] + ("" if r["device_id"] in configured else " (removed)")
        table.append([name, r["name"] or "", f"{r['address']}:{r['port']}/{r['transport']}", r["serial"] or "-",
                      r["state"], problems, _local(r["last_seen_at"], zone), _local(r["last_punch_at"], zone),
                      records, skew])
    headers = ["ID", "NAME", "ADDRESS", "SERIAL", "STATE", "PROBLEMS", "LAST SEEN", "LAST PUNCH", "RECORDS", "SKEW"]
    _print_table(headers, table, sys.stdout)
    print(f"\n(times in {config.site.timezone}; state comes from the health monitor, \"unknown\" until it has run)")
    return EXIT_OK


def _print_table(headers: list[str], rows: Iterable[list[str]], out: TextIO) -> None:
    rows = [[str(c) for c in r] for r in rows]
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
    out.write("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip() + "\n")
    for r in rows:
        out.write("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() + "\n")


def cmd_punches(args: argparse.Namespace) -> int:
    """Stored punches as a table, CSV or JSON."""
    from gateway.store.db import create_db_engine
    from gateway.store.punches import PUNCH_FIELDS, PunchFilter, iter_punches

    config = _config(args)
    if args.date_from and args.date_to and args.date_to < args.date_from:
        raise CliError("--to is before --from")
    flt = PunchFilter(date_from=args.date_from, date_to=args.date_to, timezone=config.site.timezone,
                      device_id=args.device, employee_id=args.employee, device_user_id=args.user, limit=args.limit)
    engine = create_db_engine(config.database.url, pool_size=1)
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
            _print_table([c.upper() for c in cols], table, out)
    finally:
        engine.dispose()
        if out is not sys.stdout:
            out.close()
    if args.output or args.format == "table":
        print(f"{n} punch(es)" + (f" written to {args.output}" if args.output else ""), file=sys.stderr)
    return EXIT_OK


def cmd_check_config(args: argparse.Namespace) -> int:
    """Print a short summary of the validated config."""
    from gateway.app import safe_url

    c = _config(args)
    print(f"config OK: {c.source}")
    print(f"  office      {c.site.office_code} {c.site.office_name!r} ({c.site.timezone})")
    print(f"  database    {safe_url(c.database.url)} (auto_migrate={'on' if c.database.auto_migrate else 'off'})")
    p = c.polling
    print(f"  polling     every {p.interval_s:g} s, pool {p.pool_size}, full reconcile every {p.full_reconcile_s:g} s, "
          f"backoff up to {p.backoff_max_s:g} s")
    print(f"  devices     {len(c.devices)} ({sum(1 for d in c.devices if d.enabled)} enabled)")
    for d in c.devices:
        extras = []
        if d.comm_key:
            extras.append("comm key set")
        if d.serial:
            extras.append(f"serial pinned {d.serial}")
        if d.quirks:
            extras.append("quirks " + ",".join(f"{k}={v}" for k, v in d.quirks.items()))
        if not d.enabled:
            extras.append("DISABLED")
        print(f"    - {d.id:<16} {d.transport}://{d.address}:{d.port} every {d.interval_s:g} s, {d.timezone}"
              + (f" ({'; '.join(extras)})" if extras else ""))
    print(f"  employees   {c.employees.mapping_csv or 'no PIN->NIP mapping'}")
    print(f"  alerts      {len(c.alerts.urls)} apprise URL(s), {len(c.alerts.webhooks)} webhook(s)")
    http = f"http://{c.http.listen}:{c.http.port}/" if c.http.enabled else "off"
    print(f"  http        {http}")
    print(f"  forward     {c.forward.url or 'off'}")
    print(f"  central     {'on' if c.central.enabled else 'off'}")
    return EXIT_OK


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    """Apply pending migrations."""
    from gateway.store.db import create_db_engine, upgrade

    engine = create_db_engine(_config(args).database.url, pool_size=1)
    try:
        before, after = upgrade(engine)
    finally:
        engine.dispose()
    print(f"database already at {after}" if before == after else f"database upgraded: {before or 'empty'} -> {after}")
    return EXIT_OK


def cmd_db_current(args: argparse.Namespace) -> int:
    """Show the schema revision."""
    from gateway.store.db import create_db_engine, current_revision, head_revision

    engine = create_db_engine(_config(args).database.url, pool_size=1)
    try:
        now = current_revision(engine)
    finally:
        engine.dispose()
    head = head_revision()
    state = "up to date" if now == head else "needs `fpgw db upgrade`"
    print(f"database: {now or 'empty'}  code: {head}  ({state})")
    return EXIT_OK if now == head else EXIT_FAILURE


def cmd_demo(args: argparse.Namespace) -> int:
    """Simulated office + real daemon."""
    from gateway.demo import run_demo

    return run_demo(Path(args.dir), duration_s=args.duration, interval_s=args.interval, http_port=args.http_port,
                    log_format=args.log_format, log_level=args.log_level or "info", keep=args.keep)


def cmd_print_config_example(args: argparse.Namespace) -> int:
    """The commented example config on stdout."""
    path = repo_file("config.example.toml")
    if path is None:
        raise CliError("config.example.toml is not part of this installation")
    sys.stdout.write(path.read_text(encoding="utf-8"))
    return EXIT_OK


def render_unit(executable: str | None = None) -> str:
    """The systemd unit with ExecStart pointing at this installation's fpgw."""
    path = repo_file("systemd", "fpgw.service")
    if path is None:
        raise CliError("systemd/fpgw.service is not part of this installation")
    # The venv path as typed, not resolved: resolving would point at the base interpreter.
    exe = executable or str(Path(sys.executable).parent / "fpgw")
    text = path.read_text(encoding="utf-8")
    return text.replace("/opt/fpgw/bin/fpgw", exe)


def cmd_install_unit(args: argparse.Namespace) -> int:
    """Write the unit and reload systemd."""
    text = render_unit()
    if args.stdout:
        sys.stdout.write(text)
        return EXIT_OK
    out = Path(args.output)
    try:
        out.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise CliError(f"cannot write {out}: {exc.strerror or exc} (run as root, or use --stdout)") from None
    print(f"wrote {out}")
    if not args.no_reload and shutil.which("systemctl"):
        subprocess.run(["systemctl", "daemon-reload"], check=False)
    print("next: put the config in /etc/fpgw/config.toml (chmod 600), then `systemctl enable --now fpgw`")
    return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())


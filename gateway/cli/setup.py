"""Setting up and checking an installation: `fpgw check-config`, `db upgrade|current`, `demo`,
`print-config-example`, `install-unit`.

    check-config          -> the Config main() loaded and validated -> a short summary
    db upgrade|current    -> gateway.store.db (Alembic): apply pending migrations / compare revisions
    demo                  -> gateway.demo.run_demo: the real daemon against a simulated office (no config needed)
    print-config-example  -> config.example.toml as shipped (repo_file) -> stdout
    install-unit          -> systemd/fpgw.service with ExecStart pointing at this fpgw -> file + daemon-reload

One module because these are the steps of one task (install, configure, migrate, check) and follow each other
in `fpgw --help` in this order.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

from gateway.cli.common import EXIT_FAILURE, EXIT_OK, CliError, config_of, open_engine, options_after_command, repo_file
from gateway.config import SOAP_DRIVER


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `check-config`, `db`, `demo`, `print-config-example` and `install-unit`."""
    p = subparsers.add_parser("check-config", parents=[options_after_command()],
                              help="validate the config file and print what was understood")
    p.set_defaults(func=cmd_check_config, one_shot=True)

    p = subparsers.add_parser("db", parents=[options_after_command()],
                              help="database schema: upgrade or show the current revision")
    dbsub = p.add_subparsers(dest="db_command", metavar="ACTION")
    dbsub.required = True
    q = dbsub.add_parser("upgrade", parents=[options_after_command()],
                         help="apply pending migrations (safe to run any time)")
    q.set_defaults(func=cmd_db_upgrade, one_shot=True)
    q = dbsub.add_parser("current", parents=[options_after_command()],
                         help="show the schema revision of the database and of this fpgw")
    q.set_defaults(func=cmd_db_current, one_shot=True)

    p = subparsers.add_parser("demo", parents=[options_after_command()],
                              help="run the real daemon against a simulated office (no hardware needed)")
    p.add_argument("--dir", default="demo-office",
                   help="folder for the demo config and database (default: %(default)s)")
    p.add_argument("--duration", type=float, default=None, metavar="SECONDS", help="stop after this long")
    p.add_argument("--interval", type=float, default=15.0, metavar="SECONDS", help="poll interval (default: 15)")
    p.add_argument("--http-port", type=int, default=8470, help="port of the demo gateway's status page")
    p.add_argument("--keep", action="store_true",
                   help="keep the previous run's database (default: start a fresh office every run)")
    p.set_defaults(func=cmd_demo, one_shot=False, needs_config=False)

    p = subparsers.add_parser("print-config-example", parents=[options_after_command()],
                              help="print the fully commented example config")
    p.set_defaults(func=cmd_print_config_example, one_shot=True, needs_config=False)

    p = subparsers.add_parser("install-unit", parents=[options_after_command()],
                              help="install the systemd unit for this installation")
    p.add_argument("--output", default="/etc/systemd/system/fpgw.service", help="where to write (default: %(default)s)")
    p.add_argument("--stdout", action="store_true", help="print the unit instead of writing it")
    p.add_argument("--no-reload", action="store_true", help="do not run `systemctl daemon-reload`")
    p.set_defaults(func=cmd_install_unit, one_shot=True, needs_config=False)


# -- check-config ----------------------------------------------------------------------------------

def cmd_check_config(args: argparse.Namespace) -> int:
    """Print a short summary of the validated config."""
    from gateway.store.db import safe_url

    c = config_of(args)
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
        where = f"push terminal (calls the gateway), serial {d.serial}" if d.pushes else \
            f"{d.transport}://{d.address}:{d.port} every {d.interval_s:g} s"
        if d.serial_line is not None:
            where = f"serial clock on {d.address} ({d.port} baud, {d.serial_line.line_format} lines)"
        elif d.driver == SOAP_DRIVER:
            where = f"SOAP web service http://{d.address}:{d.port}/iWsService every {d.interval_s:g} s"
        if d.pushes:
            extras = [e for e in extras if not e.startswith("serial")] + (["push key set"] if d.push_key else [])
        print(f"    - {d.id:<16} {where}, {d.timezone}" + (f" ({'; '.join(extras)})" if extras else ""))
    print(f"  employees   {c.employees.mapping_csv or 'no PIN->NIP mapping'}")
    print(f"  alerts      {len(c.alerts.urls)} apprise URL(s), {len(c.alerts.webhooks)} webhook(s)")
    scheme = "https" if c.http.tls_cert_file else "http"
    http = f"{scheme}://{c.http.listen}:{c.http.port}/" if c.http.enabled else "off"
    print(f"  http        {http}")
    if any(d.pushes for d in c.devices):
        scheme = "https" if c.push.tls_cert_file else "http"
        print(f"  push        {f'{scheme}://{c.push.listen}:{c.push.port}/iclock/' if c.push.enabled else 'off'}")
    print(f"  forward     {c.forward.url or 'off'}")
    print(f"  central     {'on' if c.central.enabled else 'off'}")
    return EXIT_OK


# -- db --------------------------------------------------------------------------------------------

def cmd_db_upgrade(args: argparse.Namespace) -> int:
    """Apply pending migrations."""
    from gateway.store.db import upgrade

    engine = open_engine(config_of(args), pool_size=1, migrate=False)
    try:
        before, after = upgrade(engine)
    finally:
        engine.dispose()
    print(f"database already at {after}" if before == after else f"database upgraded: {before or 'empty'} -> {after}")
    return EXIT_OK


def cmd_db_current(args: argparse.Namespace) -> int:
    """Show the schema revision."""
    from gateway.store.db import current_revision, head_revision

    engine = open_engine(config_of(args), pool_size=1, migrate=False)
    try:
        now = current_revision(engine)
    finally:
        engine.dispose()
    head = head_revision()
    state = "up to date" if now == head else "needs `fpgw db upgrade`"
    print(f"database: {now or 'empty'}  code: {head}  ({state})")
    return EXIT_OK if now == head else EXIT_FAILURE


# -- demo ------------------------------------------------------------------------------------------

def cmd_demo(args: argparse.Namespace) -> int:
    """Simulated office + real daemon."""
    from gateway.demo import run_demo

    return run_demo(Path(args.dir), duration_s=args.duration, interval_s=args.interval, http_port=args.http_port,
                    log_format=args.log_format, log_level=args.log_level or "info", keep=args.keep)


# -- print-config-example, install-unit ------------------------------------------------------------

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
    if not args.no_reload:
        systemctl = shutil.which("systemctl")
        if systemctl is None:
            raise CliError("systemctl not found: systemd has not read the new unit (run `systemctl daemon-reload` "
                           "where systemd runs, or pass --no-reload)")
        try:
            done = subprocess.run([systemctl, "daemon-reload"], capture_output=True, text=True, timeout=120,
                                  check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise CliError(f"`systemctl daemon-reload` failed: {exc}; systemd still has the old unit") from None
        if done.returncode != 0:
            reason = (done.stderr or done.stdout).strip().splitlines()
            raise CliError(f"`systemctl daemon-reload` failed (exit {done.returncode})"
                           + (f": {reason[-1]}" if reason else "") + "; systemd still has the old unit "
                           "(run it as root, then `systemctl enable --now fpgw`)")
        print("systemd reloaded (systemctl daemon-reload)")
    print("next: put the config in /etc/fpgw/config.toml (chmod 600), then `systemctl enable --now fpgw`")
    return EXIT_OK

"""`fpgw` command line: builds the parser from the command groups, loads the config, sets up logging and
dispatches; turns failures into one line on stderr and an exit code.

Entry point of the console script (pyproject: fpgw = gateway.cli.main:main) and of `python -m gateway.cli`.

    argv -> build_parser() (global options + each group's register(subparsers))
         -> load_config(--config, $FPGW_CONFIG, credential, /etc/fpgw/config.toml) -> setup_logging
         -> args.func(args): a cmd_* of gateway.cli.<group>

Every group module registers its commands and imports only gateway.cli.common, never this module.
Exit codes: 0 ok, 2 configuration error (and argparse usage errors), 1 any other failure, 130 interrupted.

A command that sets ``exit_without_teardown`` (`fpgw poll`) ends its process through end_process() when main()
runs as the process's entry point: the interpreter's own teardown of a 100k-punch poll's objects took longer
than a tenth of the first poll's wall (issue 14).
"""

from __future__ import annotations

import argparse
import atexit
import os
import sys
import threading
from collections.abc import Sequence

from gateway import __version__
from gateway.cli import alerts, central, daemon, devices, enrol, export, forward, importcmd, punches, report, setup
from gateway.cli.common import (
    DEFAULT_CONFIG,
    EXIT_CONFIG,
    EXIT_FAILURE,
    EXIT_OK,
    CliError,
    default_config_path,
    print_config_error,
)
from gateway.config import Config, ConfigError, load_config
from gateway.logs import FORMATS, LEVELS, register_secrets, setup_logging

# Each group adds its commands; this order is the order of `fpgw --help`.
REGISTER = (daemon.register, devices.register, punches.register, setup.register, alerts.register, report.register,
            export.register, forward.register, central.register, importcmd.register, enrol.register)


def build_parser() -> argparse.ArgumentParser:
    """The full `fpgw` parser: global options, then every group's commands."""
    parser = argparse.ArgumentParser(
        prog="fpgw", description="Fingerprint gateway: polls attendance terminals into one durable punch log.")
    parser.add_argument("--version", action="version", version=f"fpgw {__version__}")
    parser.add_argument("-c", "--config", default=None, metavar="PATH",
                        help=f"config file (default: $FPGW_CONFIG or {DEFAULT_CONFIG})")
    parser.add_argument("--log-format", choices=FORMATS, default=None,
                        help="log format (default: logging.format from the config, else auto)")
    parser.add_argument("--log-level", choices=LEVELS, default=None,
                        help="log level (default: logging.level for `run`, warning for one-shot commands)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for register in REGISTER:
        register(sub)
    describe_commands(parser)
    return parser


def describe_commands(parser: argparse.ArgumentParser) -> None:
    """`fpgw X --help` opens with the line `fpgw --help` shows for X when X has no longer description."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            for name, command in action.choices.items():
                if not command.description and helps.get(name):
                    command.description = str(helps[name])[:1].upper() + str(helps[name])[1:] + "."
                describe_commands(command)


def main(argv: Sequence[str] | None = None) -> int:
    """Console-script entry point (``argv`` None: this process's own command line; tests pass a list).

    Called with ``argv`` None for a command that sets ``exit_without_teardown``, it does not return: the
    process ends through end_process() once the command is done.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    # The command may leave things for the operating system to free (see end_process).
    args.process_ends_after = argv is None and getattr(args, "exit_without_teardown", False)
    code = _run(args)
    if args.process_ends_after:
        end_process(code)
    return code


def end_process(code: int) -> int:
    """End this process with ``code`` like a normal exit, but without the interpreter freeing every object.

    Why: after `fpgw poll` of a 100k-record log, Python's own shutdown spent 0.25-0.3 s freeing the poll's
    objects one by one (the punches, their datetimes and texts; benchmarks/bench_poll.py, issue 14), memory
    the operating system takes back at once anyway. Everything a normal exit does that has an effect outside
    the process still happens, in the same order: other non-daemon threads are waited for (if any is alive,
    this returns and the interpreter exits normally), the atexit handlers run (logging.shutdown flushes and
    closes the log handlers), stdout and stderr are flushed. The command itself closed its database (the
    store's writer thread is idle then: every write was waited for before the command returned). Returns
    ``code`` only when it cannot end the process this way.
    """
    current = threading.current_thread()
    if any(t is not current and not t.daemon and t.is_alive() for t in threading.enumerate()):
        return code
    atexit._run_exitfuncs()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        return code  # the interpreter's exit reports a failed flush (exit status 120)
    os._exit(code)


def _run(args: argparse.Namespace) -> int:
    """Load the configuration and logging, then run the command ``args`` chose; its exit code."""
    config: Config | None = None
    if getattr(args, "needs_config", True):
        path = args.config or default_config_path()
        try:
            config = load_config(path)
        except ConfigError as exc:
            print_config_error(exc, path)
            return EXIT_CONFIG
    one_shot = getattr(args, "one_shot", True)
    fmt = args.log_format or (config.logging.format if config else "auto")
    level = args.log_level or ("warning" if one_shot else (config.logging.level if config else "info"))
    setup_logging(fmt, level, timezone=config.site.timezone if config else None)
    if config is not None:
        register_secrets(config.secrets())
    args.loaded_config = config
    try:
        result = args.func(args)
    except ConfigError as exc:
        print_config_error(exc, args.config or "")
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
        from gateway.store.db import StorageUnavailable, storage_error_text

        if isinstance(exc, StorageUnavailable):
            print(f"fpgw: cannot use the database: {storage_error_text(exc)}", file=sys.stderr)
            return EXIT_FAILURE
        raise
    return int(result or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

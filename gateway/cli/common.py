"""What the `fpgw` command groups share: the error type, exit codes, config lookup, opening the database,
argparse value types and table printing.

    gateway.cli.main (parse, load config, dispatch) --args--> gateway.cli.<group>.cmd_* --uses--> this module

Imports nothing from gateway.cli, so every group module (and main) can import it without a cycle. Heavy
imports (SQLAlchemy, the stores) stay inside the functions: `fpgw --help` should not pay for them.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Iterable
from datetime import date, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from gateway.config import Config, ConfigError
from gateway.logs import FORMATS, LEVELS

if TYPE_CHECKING:
    from gateway.store.db import Engine
    from gateway.store.health import HealthRepo
    from gateway.store.punches import Store

DEFAULT_CONFIG = "/etc/fpgw/config.toml"
EXIT_OK, EXIT_FAILURE, EXIT_CONFIG = 0, 1, 2
#: `fpgw run` cannot listen (HTTP or push port taken, certificate unusable): a restart would fail the same way,
#: so systemd/fpgw.service lists it in RestartPreventExitStatus= (78 is sysexits' EX_CONFIG).
EXIT_CANNOT_LISTEN = 78


class CliError(Exception):
    """A failure to report to the operator as one line (exit code 1)."""


# -- config ----------------------------------------------------------------------------------------

def default_config_path() -> str:
    """$FPGW_CONFIG, else the systemd credential, else /etc/fpgw/config.toml."""
    env = os.environ.get("FPGW_CONFIG")
    if env:
        return env
    creds = os.environ.get("CREDENTIALS_DIRECTORY")
    if creds and (Path(creds) / "config.toml").is_file():
        return str(Path(creds) / "config.toml")
    return DEFAULT_CONFIG


def print_config_error(exc: ConfigError, path: str) -> None:
    """Every problem of an invalid config on stderr, one per line (the command then exits 2)."""
    where = exc.source or path
    print(f"fpgw: invalid configuration in {where}:" if where else "fpgw: invalid configuration:", file=sys.stderr)
    for problem in exc.problems:
        print(f"  - {problem}", file=sys.stderr)
    if any(p.startswith("cannot read") for p in exc.problems):
        print("  (start from `fpgw print-config-example`, or pass --config PATH / set FPGW_CONFIG)",
              file=sys.stderr)


def config_of(args: argparse.Namespace) -> Config:
    """The config main() loaded for this command (every command that does not set needs_config=False)."""
    config: Config | None = args.loaded_config
    assert config is not None
    return config


def known_device(config: Config, device_id: str) -> bool:
    """Whether the config names this device."""
    return any(d.id == device_id for d in config.devices)


def repo_file(*parts: str) -> Path | None:
    """A file shipped next to the packages (config.example.toml, systemd/fpgw.service), if present."""
    here = Path(__file__).resolve().parent.parent  # the gateway package
    for base in (here / "data", here.parent):
        candidate = base.joinpath(*parts)
        if candidate.is_file():
            return candidate
    return None


def options_after_command() -> argparse.ArgumentParser:
    """The global options again, hidden from help, for `parents=[...]` of a command's parser: `fpgw devices
    --config x.toml` then works like `fpgw --config x.toml devices`. SUPPRESS defaults: given only before the
    command, the top-level value stays. Only the commands that always took them use it (run, poll, devices,
    punches, check-config, db and its actions, demo, print-config-example, install-unit); adding it elsewhere
    would change what the CLI accepts."""
    options = argparse.ArgumentParser(add_help=False)
    options.add_argument("-c", "--config", default=argparse.SUPPRESS, metavar="PATH", help=argparse.SUPPRESS)
    options.add_argument("--log-format", choices=FORMATS, default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    options.add_argument("--log-level", choices=LEVELS, default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return options


# -- database --------------------------------------------------------------------------------------

def open_engine(config: Config, *, pool_size: int, migrate: bool) -> Engine:
    """An engine on the configured database; with `migrate`, first applies pending migrations when
    database.auto_migrate is on (listings pass False and never change the schema; so does `db`, which
    migrates or reports the revision itself)."""
    from gateway.store.db import create_db_engine, upgrade

    engine = create_db_engine(config.database.url, pool_size=pool_size)
    if migrate and config.database.auto_migrate:
        try:
            upgrade(engine)
        except BaseException:
            engine.dispose()
            raise
    return engine


def open_store(config: Config) -> tuple[Engine, Store]:
    """Engine (migrated if allowed) and the punch store of this office, for commands that poll devices."""
    from gateway.store.punches import Store

    engine = open_engine(config, pool_size=2, migrate=True)
    return engine, Store(engine, config.site.office_code)


def open_health(config: Config) -> tuple[Engine, HealthRepo]:
    """Engine (migrated if allowed) and the health repository the daemon's monitor writes."""
    from gateway.store.health import HealthRepo

    engine = open_engine(config, pool_size=1, migrate=True)
    return engine, HealthRepo(engine, config.site.office_code)


# -- argparse value types --------------------------------------------------------------------------

_DURATION = re.compile(r"^\s*(?:(\d+)\s*d)?\s*(?:(\d+)\s*h)?\s*(?:(\d+)\s*m(?:in)?)?\s*(?:(\d+)\s*s)?\s*$", re.I)


def parse_date(text: str) -> date:
    """YYYY-MM-DD -> date (argparse type)."""
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {text!r}") from None


def parse_duration(text: str) -> timedelta:
    """"2h", "30m", "1d", "1h30m", "90s" or plain seconds -> timedelta (argparse type)."""
    if text.strip().isdigit():
        return timedelta(seconds=int(text))
    m = _DURATION.match(text)
    if not m or not any(m.groups()):
        raise argparse.ArgumentTypeError(f"not a duration like 2h, 30m, 1d or 1h30m: {text!r}")
    d, h, mi, s = (int(x) if x else 0 for x in m.groups())
    value = timedelta(days=d, hours=h, minutes=mi, seconds=s)
    if value <= timedelta(0):
        raise argparse.ArgumentTypeError("the duration must be longer than 0")
    return value


# -- output ----------------------------------------------------------------------------------------

def print_table(headers: list[str], rows: Iterable[list[str]], out: TextIO) -> None:
    """Left-aligned columns two spaces apart, as wide as their widest cell; no trailing blanks."""
    cells = [[str(c) for c in r] for r in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    out.write("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip() + "\n")
    for r in cells:
        out.write("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() + "\n")

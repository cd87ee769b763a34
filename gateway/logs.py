"""Logging setup: structlog for our own lines, the same renderer for every library's stdlib records.

Called once by gateway.cli.main before anything logs. Formats: ``journal`` (logfmt with a ``<N>`` syslog
priority prefix and no timestamp, so ``journalctl -p warning`` works), ``json`` (one object per
line), ``console`` (readable, for a terminal). ``auto`` picks journal when stderr is the journal
($JOURNAL_STREAM matches stderr's dev:inode), console on a TTY, JSON otherwise. Per-poll context
(``device=<id> serial=<sn>``) is bound inside each poll job with ``bound_contextvars``.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any, TextIO

import structlog

#: Libraries whose records we route through structlog, with the level that keeps them useful.
_LIBRARY_LEVELS = {
    "apscheduler": logging.INFO,
    # "Running job ..." / "Job ... executed successfully" on every run: pure noise for office IT.
    "apscheduler.executors": logging.WARNING,
    "apscheduler.scheduler": logging.WARNING,
    "sqlalchemy": logging.WARNING,
    "sqlalchemy.engine": logging.WARNING,
    "alembic": logging.WARNING,
    "urllib3": logging.WARNING,
    "httpx": logging.WARNING,
    "httpcore": logging.WARNING,
    "uvicorn": logging.INFO,
    "uvicorn.access": logging.WARNING,
    "apprise": logging.WARNING,
    "drivers": logging.INFO,
    "simulators": logging.WARNING,
    "asyncio": logging.WARNING,
}

_SYSLOG_PRIORITY = {"critical": 2, "error": 3, "exception": 3, "warning": 4, "warn": 4, "info": 6,
                    "debug": 7, "notset": 7}

FORMATS = ("auto", "console", "json", "journal")
LEVELS = ("debug", "info", "warning", "error")


def stderr_is_journal(stream: TextIO | None = None) -> bool:
    """True when stderr is connected to journald (systemd.exec(5): compare $JOURNAL_STREAM with fstat)."""
    value = os.environ.get("JOURNAL_STREAM", "")
    if ":" not in value:
        return False
    stream = stream or sys.stderr
    try:
        st = os.fstat(stream.fileno())
        dev, ino = value.split(":", 1)
        return st.st_dev == int(dev) and st.st_ino == int(ino)
    except (OSError, ValueError, AttributeError):
        return False


def resolve_format(fmt: str, stream: TextIO | None = None) -> str:
    """Turn ``auto`` into journal / console / json for the given stream (stderr by default)."""
    if fmt != "auto":
        return fmt
    stream = stream or sys.stderr
    if stderr_is_journal(stream):
        return "journal"
    try:
        if stream.isatty():
            return "console"
    except (AttributeError, ValueError):
        pass
    return "json"


def _add_priority_prefix(_logger: Any, _name: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    event_dict["_prio"] = _SYSLOG_PRIORITY.get(str(event_dict.get("level", "info")).lower(), 6)
    return event_dict


class _JournalRenderer:
    """logfmt with a ``<N>`` prefix journald turns into PRIORITY; event first so lines read well."""

    def __init__(self) -> None:
        self._logfmt = structlog.processors.LogfmtRenderer(key_order=["event", "device", "serial"],
                                                           drop_missing=True)

    def __call__(self, logger: Any, name: str, event_dict: dict[str, Any]) -> str:
        prio = event_dict.pop("_prio", 6)
        event_dict.pop("level", None)  # the prefix carries it
        exc = event_dict.pop("exception", None)
        lines = str(self._logfmt(logger, name, event_dict)).splitlines() or [""]
        if exc:
            # A readable traceback under the line; each line prefixed so journald keeps the priority.
            lines += str(exc).splitlines()
        return "\n".join(f"<{prio}>{line}" for line in lines)


class _CurrentStderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at emit time (like logging.lastResort).

    Why: `fpgw` commands run in-process (tests, `fpgw demo` after another command) must not keep
    writing into a stderr object that was replaced and closed since logging was set up.
    """

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, _value: TextIO) -> None:
        pass


class _DropMaxInstances(logging.Filter):
    """APScheduler warns on every skipped tick of an overrunning poll; gateway.polling.scheduler logs it once."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "maximum number of running instances reached" not in record.getMessage()


def setup_logging(fmt: str = "auto", level: str = "info", *, stream: TextIO | None = None) -> str:
    """Configure structlog and the stdlib root logger; returns the format actually used."""
    handler: logging.Handler = logging.StreamHandler(stream) if stream is not None else _CurrentStderrHandler()
    fmt = resolve_format(fmt, stream or sys.stderr)
    numeric = getattr(logging, level.upper(), logging.INFO)

    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.ExtraAdder(),
        structlog.processors.StackInfoRenderer(),
    ]
    if fmt != "journal":
        # journald stamps every line itself.
        shared.append(structlog.processors.TimeStamper(fmt="iso", utc=True))

    renderer: Any
    final: list[Any]
    if fmt == "journal":
        final = [_add_priority_prefix, structlog.processors.format_exc_info, _JournalRenderer()]
    elif fmt == "json":
        final = [structlog.processors.dict_tracebacks, structlog.processors.JSONRenderer()]
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=_colors_ok(stream or sys.stderr))
        final = [renderer]

    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        # Not cached: tests (and `fpgw demo` after a CLI command) may reconfigure; the cost is negligible here.
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *final],
    )
    handler.setFormatter(formatter)
    root = logging.getLogger()
    _remove_our_handlers(root)
    handler._fpgw = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(numeric)
    for name, lib_level in _LIBRARY_LEVELS.items():
        # --log-level debug opens our own loggers, not SQLAlchemy's statement echo.
        logging.getLogger(name).setLevel(max(lib_level, numeric) if name != "drivers" else numeric)
    aps = logging.getLogger("apscheduler.scheduler")
    if not any(isinstance(f, _DropMaxInstances) for f in aps.filters):
        aps.addFilter(_DropMaxInstances())
    logging.captureWarnings(True)
    return fmt


def _remove_our_handlers(root: logging.Logger) -> None:
    for old in list(root.handlers):
        if getattr(old, "_fpgw", False):
            root.removeHandler(old)


def reset_logging() -> None:
    """Undo setup_logging (tests and in-process callers of the CLI): our handler off, structlog defaults."""
    _remove_our_handlers(logging.getLogger())
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()


def _colors_ok(stream: TextIO) -> bool:
    if os.environ.get("NO_COLOR"):
        return False
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False

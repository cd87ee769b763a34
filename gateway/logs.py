"""Logging setup: structlog for our own lines, the same renderer for every library's stdlib records.

Called once by gateway.cli.main before anything logs. Formats: ``journal`` (logfmt with a ``<N>`` syslog
priority prefix and no timestamp, so ``journalctl -p warning`` works), ``json`` (one object per
line), ``console`` (readable, for a terminal). ``auto`` picks journal when stderr is the journal
($JOURNAL_STREAM matches stderr's dev:inode), console on a TTY, JSON otherwise. Per-poll context
(``device=<id> serial=<sn>``) is bound inside each poll job with ``bound_contextvars``.

Secrets never reach a log line: every rendered line (ours and every library's, tracebacks included) passes
through redact() before it is written. It blanks ``Authorization`` headers and bearer tokens, ``token=`` /
``comm_key=`` / ``password=`` style values (query strings, reprs, JSON keys), and the exact secrets the
composition root registered from the config (register_secret: forward token, status token, alert URLs, comm
keys). Tracebacks are rendered without local variables (a request's scope or a driver's parameters there
carry tokens and keys).
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
from collections.abc import Iterable
from datetime import datetime
from typing import Any, TextIO
from zoneinfo import ZoneInfo

import structlog
import structlog.tracebacks

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
#: What a secret is replaced with in log lines.
REDACTED = "[REDACTED]"
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


# -- redaction ---------------------------------------------------------------------------------------------

# An Authorization header's whole value, scheme included: "Authorization: Bearer x", 'authorization': 'Token x',
# (b'authorization', b'Basic x') in an ASGI scope, "proxy-authorization=...".
_AUTH_HEADER = re.compile(r"(?i)(?<![a-z0-9_-])((?:proxy-)?authorization\\?[\"']?\s*[:=,]\s*(?:b(?=[\"']))?\\?[\"']?)"
                          r"(?!\[REDACTED\])([^\"'\\\r\n]+)")
# "Bearer x" / "Basic x" anywhere else (an error message quoting a header).
_AUTH_SCHEME = re.compile(r"(?i)\b(bearer|basic)(\s+)(?!\[REDACTED\])([A-Za-z0-9._~+/=\-]{4,})")
# A named secret followed by its value: token=x, 'api_token': 'x', "comm_key": 123, status_token='x',
# ?token=x&...  The value stops at a quote, space, comma, '&', ')' or '}'.
_SECRET_KEYS = (r"(?:[a-z0-9_]*_)?token|x-api-key|api[_-]?key|comm[_-]?key|commkey|password|passwd|secret|pwd")
_KEY_VALUE = re.compile(r"(?i)(?<![a-z0-9_])(" + _SECRET_KEYS + r")(\\?[\"']?\s*[:=]\s*(?:b(?=[\"']))?\\?[\"']?)"
                        r"(?!\[REDACTED\])([^\s\"'\\,&)}\]]+)")
# user:password@ in URLs (database, proxy, webhook URLs).
_URL_PASSWORD = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^/\s:@\"']+:)([^@\s/\"']+)(@)")

_secrets_lock = threading.Lock()
_secrets: frozenset[str] = frozenset()
_numbers: frozenset[str] = frozenset()
_numeric_secrets: re.Pattern[str] | None = None


def register_secret(*values: object) -> None:
    """Remember exact secret values (tokens, alert URLs, comm keys) to blank in every later log line.

    Strings shorter than 6 characters are ignored (too likely to blank ordinary text); integers (comm keys)
    of 4 or more digits are blanked only as whole numbers.
    """
    global _secrets, _numbers, _numeric_secrets
    with _secrets_lock:
        texts, numbers = set(_secrets), set(_numbers)
        for v in values:
            if v is None or isinstance(v, bool):
                continue
            if isinstance(v, int):
                if abs(v) >= 1000:
                    numbers.add(str(abs(v)))
                continue
            s = str(v).strip()
            if len(s) >= 6:
                texts.add(s)
        _secrets, _numbers = frozenset(texts), frozenset(numbers)
        _numeric_secrets = (re.compile(r"(?<!\d)(?:" + "|".join(sorted(numbers)) + r")(?!\d)")
                            if numbers else None)


def register_secrets(values: Iterable[object]) -> None:
    """register_secret for each value."""
    register_secret(*values)


def redact(text: str) -> str:
    """``text`` with credentials blanked (see the module docstring)."""
    if not text:
        return text
    for s in sorted(_secrets, key=len, reverse=True):
        if s in text:
            text = text.replace(s, REDACTED)
    if _numeric_secrets is not None:
        text = _numeric_secrets.sub(REDACTED, text)
    text = _AUTH_HEADER.sub(lambda m: m.group(1) + REDACTED, text)
    text = _AUTH_SCHEME.sub(lambda m: m.group(1) + m.group(2) + REDACTED, text)
    text = _KEY_VALUE.sub(lambda m: m.group(1) + m.group(2) + REDACTED, text)
    return _URL_PASSWORD.sub(lambda m: m.group(1) + REDACTED + m.group(3), text)


class _Redacting:
    """Wraps the final renderer: whatever it produced (line, traceback, JSON) is redacted as text."""

    def __init__(self, renderer: Any) -> None:
        self.renderer = renderer

    def __call__(self, logger: Any, name: str, event_dict: dict[str, Any]) -> str:
        return redact(str(self.renderer(logger, name, event_dict)))


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


def _drop_colour_codes(_logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
    """uvicorn passes an ANSI-coloured copy of each message as ``extra={"color_message": ...}``; ExtraAdder would
    copy it, escape codes included, into every file and journal line."""
    event.pop("color_message", None)
    return event


class _OfficeTimeStamper:
    """``timestamp`` in the office's time with its offset (2026-12-01T08:00:03.120+07:00): what the people reading
    the log live by, and still one exact instant."""

    def __init__(self, zone: ZoneInfo) -> None:
        self.zone = zone

    def __call__(self, _logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
        event["timestamp"] = datetime.now(self.zone).isoformat(timespec="milliseconds")
        return event


def setup_logging(fmt: str = "auto", level: str = "info", *, stream: TextIO | None = None,
                  timezone: str | None = None) -> str:
    """Configure structlog and the stdlib root logger; returns the format actually used. ``timezone`` (the
    office's, site.timezone) stamps lines in office time; without it (no config yet) they are stamped in UTC."""
    handler: logging.Handler = logging.StreamHandler(stream) if stream is not None else _CurrentStderrHandler()
    fmt = resolve_format(fmt, stream or sys.stderr)
    numeric = getattr(logging, level.upper(), logging.INFO)

    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.ExtraAdder(),
        _drop_colour_codes,
        structlog.processors.StackInfoRenderer(),
    ]
    if fmt != "journal":
        # journald stamps every line itself.
        shared.append(_OfficeTimeStamper(ZoneInfo(timezone)) if timezone
                      else structlog.processors.TimeStamper(fmt="iso", utc=True))

    renderer: Any
    final: list[Any]
    if fmt == "journal":
        final = [_add_priority_prefix, structlog.processors.format_exc_info, _Redacting(_JournalRenderer())]
    elif fmt == "json":
        # No local variables in tracebacks: a request's scope (headers) or a driver's parameters live there.
        tracebacks = structlog.processors.ExceptionRenderer(
            structlog.tracebacks.ExceptionDictTransformer(show_locals=False))
        final = [tracebacks, _Redacting(structlog.processors.JSONRenderer())]
    else:
        # plain_traceback: rich's default shows every frame's locals.
        renderer = structlog.dev.ConsoleRenderer(colors=_colors_ok(stream or sys.stderr),
                                                 exception_formatter=structlog.dev.plain_traceback)
        final = [_Redacting(renderer)]

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

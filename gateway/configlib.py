"""Small typed reader for TOML tables that collects every problem with the key path that caused it.

Used by gateway.config to turn the operator's TOML into frozen dataclasses at start: each error names
the exact key (``devices[2].port``) and says what is wrong, and all errors are reported together so an
office IT person fixes the file in one go instead of one restart per typo.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError


class ConfigError(Exception):
    """The configuration is invalid. ``problems`` lists every problem as ``key: what is wrong``."""

    def __init__(self, problems: list[str], source: str = "") -> None:
        self.problems = problems
        self.source = source
        head = f"invalid configuration{f' in {source}' if source else ''}"
        super().__init__(head + ":\n" + "\n".join(f"  - {p}" for p in problems))


_MISSING = object()
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|min|h|d)?\s*$")
_DURATION_UNITS = {None: 1.0, "ms": 0.001, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0}


class Reader:
    """Reads one TOML table; remembers which keys were used so unknown keys can be reported."""

    def __init__(self, data: Any, path: str, problems: list[str]) -> None:
        self.path = path
        self.problems = problems
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            self._problem("", f"must be a table, got {_describe(data)}")
            data = {}
        self.data: Mapping[str, Any] = data
        self.used: set[str] = set()

    # -- helpers ---------------------------------------------------------------------------------
    def key(self, name: str) -> str:
        """Full dotted path of ``name`` for messages."""
        return f"{self.path}.{name}" if self.path else name

    def _problem(self, name: str, message: str) -> None:
        where = self.key(name) if name else (self.path or "(top level)")
        self.problems.append(f"{where}: {message}")

    def problem(self, name: str, message: str) -> None:
        """Record a problem found by caller-side validation."""
        self._problem(name, message)

    def _get(self, name: str, default: Any) -> Any:
        self.used.add(name)
        return self.data.get(name, default)

    # -- typed getters ---------------------------------------------------------------------------
    def text(self, name: str, default: Any = _MISSING, *, allow_empty: bool = True,
            choices: Iterable[str] | None = None) -> Any:
        """A string; required when no default is given."""
        value = self._get(name, default)
        if value is _MISSING:
            self._problem(name, "is required")
            return ""
        if value is None or value == default:
            return value
        if not isinstance(value, str):
            self._problem(name, f"must be a string, got {_describe(value)}")
            return default if default is not _MISSING else ""
        if not allow_empty and not value.strip():
            self._problem(name, "must not be empty")
        if choices is not None:
            options = list(choices)
            if value not in options:
                self._problem(name, f"must be one of {', '.join(repr(o) for o in options)}, got {value!r}")
                return default if default is not _MISSING else options[0]
        return value

    def integer(self, name: str, default: Any = _MISSING, *, min: int | None = None,
            max: int | None = None) -> Any:
        """An integer within optional bounds."""
        value = self._get(name, default)
        if value is _MISSING:
            self._problem(name, "is required")
            return 0
        if value is None or (value is default and not isinstance(value, bool)):
            return value
        if isinstance(value, bool) or not isinstance(value, int):
            self._problem(name, f"must be an integer, got {_describe(value)}")
            return default if default is not _MISSING else 0
        if (min is not None and value < min) or (max is not None and value > max):
            self._problem(name, f"must be between {min} and {max}, got {value}"
                          if min is not None and max is not None
                          else f"must be {'>= ' + str(min) if min is not None else '<= ' + str(max)}, got {value}")
        return value

    def number(self, name: str, default: Any = _MISSING, *, min: float | None = None,
              max: float | None = None) -> Any:
        """A number (int or float) within optional bounds."""
        value = self._get(name, default)
        if value is _MISSING:
            self._problem(name, "is required")
            return 0.0
        if value is None or value is default:
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self._problem(name, f"must be a number, got {_describe(value)}")
            return default if default is not _MISSING else 0.0
        if (min is not None and value < min) or (max is not None and value > max):
            self._problem(name, f"must be between {min} and {max}, got {value}")
        return float(value)

    def duration_s(self, name: str, default: Any = _MISSING, *, min: float = 0.0) -> Any:
        """Seconds, as a number or a string with a unit: ``300``, ``"5m"``, ``"1.5h"``, ``"2d"``."""
        value = self._get(name, default)
        if value is _MISSING:
            self._problem(name, "is required")
            return 0.0
        if value is None or value is default:
            return value
        seconds: float | None = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            seconds = float(value)
        elif isinstance(value, str) and (m := _DURATION.match(value)):
            seconds = float(m.group(1)) * _DURATION_UNITS[m.group(2)]
        if seconds is None:
            self._problem(name, f"must be a duration in seconds or like \"90s\", \"5m\", \"2h\", got {value!r}")
            return default if default is not _MISSING else 0.0
        if seconds < min:
            self._problem(name, f"must be at least {min:g} seconds, got {value!r}")
        return seconds

    def flag(self, name: str, default: Any = _MISSING) -> Any:
        """true/false."""
        value = self._get(name, default)
        if value is _MISSING:
            self._problem(name, "is required")
            return False
        if value is default:
            return value
        if not isinstance(value, bool):
            self._problem(name, f"must be true or false, got {_describe(value)}")
            return default if default is not _MISSING else False
        return value

    def timezone(self, name: str, default: Any = _MISSING) -> Any:
        """An IANA zone name such as Asia/Jakarta (WIB), Asia/Makassar (WITA), Asia/Jayapura (WIT)."""
        value = self.text(name, default)
        if value is None or value == "" or (value is default and default is None):
            return value
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            self._problem(name, f"unknown time zone {value!r} (use an IANA name such as "
                                "\"Asia/Jakarta\" for WIB, \"Asia/Makassar\" for WITA, \"Asia/Jayapura\" for WIT)")
            return "UTC"
        return value

    def table(self, name: str) -> Reader:
        """A sub-table as its own Reader (missing table = empty)."""
        return Reader(self._get(name, {}), self.key(name), self.problems)

    def tables(self, name: str) -> list[Reader]:
        """An array of tables (``[[name]]``)."""
        value = self._get(name, [])
        if not isinstance(value, list):
            self._problem(name, f"must be an array of tables ([[{name}]]), got {_describe(value)}")
            return []
        return [Reader(item, f"{self.key(name)}[{i}]", self.problems) for i, item in enumerate(value)]

    def raw(self, name: str, default: Any = None) -> Any:
        """The value unchecked (caller validates)."""
        return self._get(name, default)

    def secret(self, name: str, *, env_key: str | None = None, file_key: str | None = None,
               base_dir: Path | None = None, allow_inline: bool = False) -> str | None:
        """A secret read from an environment variable (``<name>_env``) or a file (``<name>_file``).

        Secrets are never written in the main config file (it gets copied around and pasted into
        chats); inline values are refused unless ``allow_inline``. Returns None when none is set.
        """
        env_key = env_key or f"{name}_env"
        file_key = file_key or f"{name}_file"
        env_name = self.text(env_key, None)
        file_name = self.text(file_key, None)
        inline = self._get(name, None)
        if inline is not None and not allow_inline:
            self._problem(name, f"secrets are not written inline; set {self.key(env_key)} (an environment "
                                f"variable name) or {self.key(file_key)} (a file readable only by the service)")
        if env_name and file_name:
            self._problem(env_key, f"set only one of {env_key} and {file_key}")
        if env_name:
            value = os.environ.get(env_name)
            if value is None:
                self._problem(env_key, f"environment variable {env_name} is not set")
                return None
            return value.strip()
        if file_name:
            path = Path(os.path.expandvars(file_name))
            if not path.is_absolute() and base_dir is not None:
                path = base_dir / path
            try:
                return path.read_text(encoding="utf-8").strip()
            except OSError as exc:
                self._problem(file_key, f"cannot read secret file {str(path)!r}: {exc.strerror or exc}")
                return None
        if inline is not None and allow_inline:
            return str(inline)
        return None

    def done(self) -> None:
        """Report keys that were never read: almost always a typo."""
        for key in self.data:
            if key not in self.used:
                self._problem(key, "unknown key (check the spelling against config.example.toml)")


def _describe(value: Any) -> str:
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return f"{type(value).__name__} {value!r}"

"""Line formats of serial time clocks: one text line -> one RawPunch, or the reason it is not one.

    drivers.serial.framing --FramedLine.text--> LineParser.parse --> RawPunch (+ optional machine number)
                                                                 \\-> Rejected(reason)  (the caller quarantines)

A format is a regular expression with named groups (or a small ``{field}`` template compiled into one) plus a
strftime-like time layout. Groups: ``user`` (required); the time as ``datetime``, or ``date`` + ``time``
(joined by one space before the layout applies), or ``time`` alone with the date taken from date-change
records (Acroprint), or the numbers ``year month day hour minute second``; optional ``state``, ``verify``,
``workcode``, ``device`` (the clock's machine number). Layout directives: %Y %y %m %d %H %M %S %%.

Presets for the formats of docs/serial.md (fact sheet other-protocols.md §2.3 and §3.4):
``zk_attlog`` (ZK ATTLOG text: PIN TAB time TAB status TAB verify [TAB workcode ...]), ``giga_tms`` (Giga TMS
TR320/TR40xx), ``acroprint`` (AcroComm), ``ct101`` (CT101 CSV). Only the ZK layout is confirmed by two
sources; the others come from one manual each and are unverified on hardware.

A time that has the right shape but is not a calendar date (Feb 31, hour 25: a clock with a broken RTC) is
kept as text with ``local_time=None``, like every other driver, so it is stored and flagged, never dropped.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta

from drivers.base import RawPunch

#: Named groups a pattern may use.
FIELDS = frozenset({"user", "datetime", "date", "time", "year", "month", "day", "hour", "minute", "second",
                    "state", "verify", "workcode", "device"})
_COMPONENTS = ("year", "month", "day", "hour", "minute", "second")
#: Verify code stored when the line carries none (gateway.models.VERIFY_NAMES: "other").
VERIFY_UNKNOWN = 200
#: Numbers in a line longer than this many digits are refused (no column holds them).
MAX_DIGITS = 9
#: Longest user id (the punches column holds 64).
USER_MAX = 64
_LAYOUT_DIRECTIVES = {"Y": r"(?P<year>\d{4})", "y": r"(?P<year2>\d{2})", "m": r"(?P<month>\d{1,2})",
                      "d": r"(?P<day>\d{1,2})", "H": r"(?P<hour>\d{1,2})", "M": r"(?P<minute>\d{1,2})",
                      "S": r"(?P<second>\d{1,2})"}


class LineFormatError(ValueError):
    """A configured format cannot work (checked when the config loads)."""


@dataclass(frozen=True, slots=True)
class Rejected:
    """A line that is not a punch, with a one-line reason."""

    reason: str


@dataclass(frozen=True, slots=True)
class ParsedLine:
    """A punch read from a line, and the clock's machine number when the line has one."""

    punch: RawPunch
    device: str | None = None


@dataclass(frozen=True, slots=True)
class DateRecord:
    """A date-change record (Acroprint): later time-only records belong to this date."""

    day: date


@dataclass(frozen=True)
class LineFormat:
    """A compiled line format (build with ``line_format``)."""

    name: str
    pattern: re.Pattern[str]
    #: The time layout as configured (strftime-like) and compiled.
    layout: str
    layout_re: re.Pattern[str] | None
    #: Raw state text -> state code; empty: the state is the number in the line.
    states: Mapping[str, int] = field(default_factory=dict)
    #: Date-change records (group ``date``), matched before ``pattern``; their date layout.
    date_record: re.Pattern[str] | None = None
    date_layout_re: re.Pattern[str] | None = None


def compile_layout(layout: str) -> re.Pattern[str]:
    """A strftime-like layout as an anchored regex with named number groups; LineFormatError if unusable."""
    out: list[str] = []
    i, seen = 0, set[str]()
    while i < len(layout):
        ch = layout[i]
        if ch != "%":
            out.append(r"\s+" if ch == " " else re.escape(ch))
            i += 1
            continue
        if i + 1 >= len(layout):
            raise LineFormatError(f"time format {layout!r} ends with a lone '%'")
        d = layout[i + 1]
        i += 2
        if d == "%":
            out.append("%")
            continue
        if d not in _LAYOUT_DIRECTIVES:
            raise LineFormatError(f"time format {layout!r}: %{d} is not supported (use %Y %y %m %d %H %M %S %%)")
        if d in seen or (d in "Yy" and seen & {"Y", "y"}):
            raise LineFormatError(f"time format {layout!r} names %{d} twice")
        seen.add(d)
        out.append(_LAYOUT_DIRECTIVES[d])
    return re.compile(r"\s*" + "".join(out) + r"\s*\Z")


def _layout_fields(layout_re: re.Pattern[str]) -> set[str]:
    return {"year" if g == "year2" else g for g in layout_re.groupindex}


def template_to_pattern(template: str) -> str:
    """``{user}\\t{datetime}\\t{state}`` -> an anchored regex; ``{*}`` skips one field of any text."""
    parts = re.split(r"(\{[^{}]*\})", template)
    out = []
    used: set[str] = set()
    for part in parts:
        if part.startswith("{") and part.endswith("}"):
            name = part[1:-1].strip()
            if name == "*":
                out.append(r".*?")
                continue
            if name not in FIELDS:
                raise LineFormatError(f"template field {{{name}}} is unknown (known: {', '.join(sorted(FIELDS))}, *)")
            if name in used:
                raise LineFormatError(f"template names {{{name}}} twice")
            used.add(name)
            sub = r"\d+" if name in ("state", "verify", "workcode") else r".+?"
            out.append(f"(?P<{name}>{sub})")
        elif "{" in part or "}" in part:
            raise LineFormatError(f"template {template!r}: unbalanced '{{' or '}}'")
        else:
            out.append(re.escape(part))
    return r"^\s*" + "".join(out) + r"\s*$"


def line_format(name: str, pattern: str, layout: str = "", *, states: Mapping[str, int] | None = None,
                date_record: str | None = None, date_layout: str = "") -> LineFormat:
    """Compile and check a format: the groups it needs are there, the layout fits them."""
    try:
        compiled = re.compile(pattern)
    except re.error as exc:
        raise LineFormatError(f"line pattern is not a valid regular expression: {exc}") from None
    groups = set(compiled.groupindex)
    unknown = groups - FIELDS
    if unknown:
        raise LineFormatError(f"line pattern has unknown group(s) {', '.join(sorted(unknown))} "
                              f"(known: {', '.join(sorted(FIELDS))})")
    if "user" not in groups:
        raise LineFormatError("line pattern needs a (?P<user>...) group (the user id)")
    layout_re = compile_layout(layout) if layout else None
    have = _layout_fields(layout_re) if layout_re else set()
    if "datetime" in groups or ("date" in groups and "time" in groups):
        if not {"year", "month", "day", "hour", "minute"} <= have:
            raise LineFormatError(f"time format {layout!r} must give %Y (or %y), %m, %d, %H and %M")
    elif "time" in groups:
        if date_record is None:
            raise LineFormatError("a (?P<time>...) group without a date needs (?P<date>...) too, or a datetime group")
        if not {"hour", "minute"} <= have or have & {"year", "month", "day"}:
            raise LineFormatError(f"time format {layout!r} must give %H and %M (and no date) for a time-only group")
    elif set(_COMPONENTS[:5]) <= groups:
        pass
    else:
        raise LineFormatError("line pattern needs the time: a datetime group, date + time groups, or the groups "
                              "year, month, day, hour, minute (second optional)")
    date_re = re.compile(date_record) if date_record else None
    date_layout_re = compile_layout(date_layout) if date_layout else None
    return LineFormat(name=name, pattern=compiled, layout=layout, layout_re=layout_re, states=dict(states or {}),
                      date_record=date_re, date_layout_re=date_layout_re)


#: Presets by name (docs/serial.md shows a sample line of each).
PRESETS: dict[str, Callable[[], LineFormat]] = {
    # PIN \t YYYY-MM-DD HH:MM:SS \t status \t verify [\t workcode [\t reserved ...]] (ATTLOG, PUSH doc [A1]).
    "zk_attlog": lambda: line_format(
        "zk_attlog", r"^\s*(?P<user>[^\t]+?)\s*\t(?P<datetime>[^\t]+)\t\s*(?P<state>\d+)\s*\t\s*(?P<verify>\d+)\s*"
                     r"(?:\t\s*(?P<workcode>\d+)\s*)?(?:\t[^\t]*)*$", "%Y-%m-%d %H:%M:%S"),
    # Event(1-4) \t DD-MM-YYYY \t hh:mm:ss \t 'ID \t shift \t machine  (Giga TMS TR320/TR40xx manual [R6]).
    # Events 1-4 are the clock's four function keys; read as in, out, break out, break in (unverified).
    "giga_tms": lambda: line_format(
        "giga_tms", r"^\s*(?P<state>[1-4])\t(?P<date>\d{2}-\d{2}-\d{4})\t(?P<time>\d{2}:\d{2}:\d{2})\t'?"
                    r"(?P<user>[^\t']+?)\s*(?:\t[^\t]*(?:\t\s*(?P<device>\d+)\s*)?)?$", "%d-%m-%Y %H:%M:%S",
        states={"1": 0, "2": 1, "3": 2, "4": 3}),
    # HHMMSS,S,BADGE,F,X4,X3,X2,X1,X0[,S,D1...]; date change: HHMMSS,S,YYYYMMDD,D  (AcroComm manual [R7]).
    # F (the function key) is taken as the state; S, X4..X0 are not used (meanings unverified).
    "acroprint": lambda: line_format(
        "acroprint", r"^\s*(?P<time>\d{6}),[^,]*,(?P<user>[^,]+?),\s*(?P<state>\d+)\s*,[^,]*,[^,]*,[^,]*,[^,]*,"
                     r"[^,]*(?:,.*)?$", "%H%M%S",
        date_record=r"^\s*\d{6},[^,]*,(?P<date>\d{8}),D\s*$", date_layout="%Y%m%d"),
    # site, clock, in/out, employee, workcode, h, m, s, month, day, year[, verify]  (CT101 punch file [R8]).
    "ct101": lambda: line_format(
        "ct101", r"^\s*\d+\s*,\s*(?P<device>\d+)\s*,\s*(?P<state>\d+)\s*,\s*(?P<user>[^,\s]+)\s*,\s*"
                 r"(?P<workcode>\d+)\s*,\s*(?P<hour>\d{1,2})\s*,\s*(?P<minute>\d{1,2})\s*,\s*(?P<second>\d{1,2})\s*,"
                 r"\s*(?P<month>\d{1,2})\s*,\s*(?P<day>\d{1,2})\s*,\s*(?P<year>\d{4})\s*(?:,\s*(?P<verify>\d+)\s*)?$"),
}


def preset(name: str) -> LineFormat:
    """The named preset; LineFormatError listing the names when unknown."""
    try:
        return PRESETS[name]()
    except KeyError:
        raise LineFormatError(f"unknown line format {name!r} (presets: {', '.join(PRESETS)})") from None


def _time_text(y: int, mo: int, d: int, h: int, mi: int, s: int) -> tuple[str, datetime | None]:
    text = f"{y:04d}-{mo:02d}-{d:02d} {h:02d}:{mi:02d}:{s:02d}"
    try:
        return text, datetime(y, mo, d, h, mi, s)
    except ValueError:
        return text, None  # stored and flagged impossible_date by the gateway, never dropped


class LineParser:
    """Reads lines of one format from one clock (stateful only for date-change records)."""

    def __init__(self, fmt: LineFormat, *, now: Callable[[], datetime] = datetime.now) -> None:
        self.format = fmt
        #: Device-local naive "now" (for time-only records before any date record).
        self.now = now
        self.current_date: date | None = None

    def parse(self, text: str) -> ParsedLine | DateRecord | Rejected:
        """One line -> a punch, a date-change record, or the reason it is neither. Never raises."""
        fmt = self.format
        if fmt.date_record is not None:
            m = fmt.date_record.match(text)
            if m is not None:
                return self._date_record(m.group("date"))
        m = fmt.pattern.match(text)
        if m is None:
            return Rejected(f"does not match the {fmt.name} line format")
        g = m.groupdict()
        user = (g.get("user") or "").strip()
        if not user:
            return Rejected("empty user id")
        if len(user) > USER_MAX:
            return Rejected(f"user id longer than {USER_MAX} characters")
        when = self._when(g)
        if isinstance(when, Rejected):
            return when
        numbers: dict[str, int] = {}
        for name in ("state", "verify", "workcode"):
            raw = (g.get(name) or "").strip()
            if not raw:
                continue
            if name == "state" and fmt.states:
                if raw not in fmt.states:
                    return Rejected(f"state {raw!r} is not one this format knows ({', '.join(fmt.states)})")
                numbers[name] = fmt.states[raw]
                continue
            if not raw.isdigit() or not raw.isascii():
                return Rejected(f"{name} {raw[:20]!r} is not a number")
            if len(raw) > MAX_DIGITS:
                return Rejected(f"{name} {raw[:20]!r} has more than {MAX_DIGITS} digits")
            numbers[name] = int(raw)
        text_time, local = when
        device = (g.get("device") or "").strip() or None
        return ParsedLine(RawPunch(user_id=user, time_text=text_time, local_time=local,
                                   state=numbers.get("state", 0), verify=numbers.get("verify", VERIFY_UNKNOWN),
                                   workcode=numbers.get("workcode", 0)), device)

    def _date_record(self, value: str) -> DateRecord | Rejected:
        lay = self.format.date_layout_re
        m = lay.match(value) if lay is not None else None
        if m is None:
            return Rejected(f"date record {value[:20]!r} does not fit its layout")
        try:
            day = date(int(m.group("year")), int(m.group("month")), int(m.group("day")))
        except ValueError:
            return Rejected(f"date record {value[:20]!r} is not a calendar date")
        self.current_date = day
        return DateRecord(day)

    def _when(self, g: dict[str, str | None]) -> tuple[str, datetime | None] | Rejected:
        fmt = self.format
        if g.get("datetime") is not None or (g.get("date") is not None and g.get("time") is not None):
            value = g["datetime"] if g.get("datetime") is not None else f"{g['date']} {g['time']}"
            assert value is not None and fmt.layout_re is not None
            m = fmt.layout_re.match(value)
            if m is None:
                return Rejected(f"time {value[:40]!r} does not fit the time format {fmt.layout!r}")
            return self._from_groups(m.groupdict())
        if g.get("time") is not None:
            assert fmt.layout_re is not None
            m = fmt.layout_re.match(g["time"] or "")
            if m is None:
                return Rejected(f"time {(g['time'] or '')[:40]!r} does not fit the time format {fmt.layout!r}")
            parts = m.groupdict()
            h, mi, s = int(parts["hour"]), int(parts["minute"]), int(parts.get("second") or 0)
            day = self.current_date
            if day is None:
                # No date record seen since the reader started: a live line is minutes old, so today's date,
                # or yesterday's for a time far ahead of the clock now (a punch at 23:59 read after midnight).
                now = self.now()
                day = now.date()
                if 0 <= h < 24 and 0 <= mi < 60 and 0 <= s < 60 \
                        and datetime.combine(day, time(h, mi, s)) - now > timedelta(hours=12):
                    day -= timedelta(days=1)
            return _time_text(day.year, day.month, day.day, h, mi, s)
        return self._from_groups(g)

    @staticmethod
    def _from_groups(g: Mapping[str, str | None]) -> tuple[str, datetime | None] | Rejected:
        values: dict[str, int] = {}
        for name in ("year", "year2", *_COMPONENTS[1:]):
            raw = g.get(name)
            if raw is None:
                continue
            raw = raw.strip()
            if not raw.isdigit() or not raw.isascii() or len(raw) > 4:
                return Rejected(f"{name} {raw[:10]!r} is not a number")
            values[name] = int(raw)
        if "year2" in values:
            values["year"] = 2000 + values["year2"]
        missing = [n for n in _COMPONENTS[:5] if n not in values]
        if missing:
            return Rejected(f"no {missing[0]} in the line")
        return _time_text(values["year"], values["month"], values["day"], values["hour"], values["minute"],
                          values.get("second", 0))


def configured_format(name: str, *, pattern: str = "", template: str = "", time_format: str = "") -> LineFormat:
    """The format a device's config names: a preset, or ``custom`` with a pattern or a template and a time
    format. LineFormatError with one line when the combination cannot work."""
    if name != "custom":
        if pattern or template or time_format:
            raise LineFormatError(f"line_format {name!r} is a preset with its own layout; for line_pattern, "
                                  "line_template or time_format set line_format = \"custom\"")
        return preset(name)
    if bool(pattern) == bool(template):
        raise LineFormatError("line_format = \"custom\" needs exactly one of line_pattern (a regular expression with "
                              "named groups) or line_template (e.g. \"{user}\\t{datetime}\\t{state}\\t{verify}\")")
    return line_format("custom", pattern or template_to_pattern(template), time_format)

"""Usage and availability figures of the regency: what BKD's monthly report and dashboard show.

    gateway.central.report / dashboard --> collect(engine, start, end, rules) --> UsageRepo (aggregates per day)
                                                                             --> CentralStore (devices, gateways)
                                       <-- Figures (offices ranked, terminals, problems, weekly trend)
The SQL (one row per office / terminal / employee and day) is gateway.store.usage; everything here is
arithmetic over those rows and the device-health snapshot, so the rules below are testable without a database.
docs/bkd-report.md explains every number for BKD staff.

Rules:
- Working day: an ISO weekday in ``WorkRules.workdays`` (Monday-Friday by default, [health.working_hours]
  days) that is not in the holidays table, up to today (a month in progress counts the days so far).
- Employee: the NIP a punch was mapped to (employee_id), else the terminal PIN. Arrival: a trusted punch
  before the midday boundary (the middle of [health.working_hours] start..end, 12:00 by default); leave: one
  at or after it. A *full day* has both.
- Basis (employees the office should have): the headcount BKD uploaded (newest dated on or before the last
  day), but never fewer than the employees seen punching in the period (a smaller headcount is out of date
  and is flagged); without an upload, the employees seen. Attendance rate = employees punching per working
  day / basis; full-day share = full days / (basis x working days); both are within 0..1.
- Unused terminal: reported online (by a gateway that is not silent) but fewer than ``UNUSED_PUNCHES_PER_DAY``
  punches per working day.
- Down time: only what the central knows. Gateways forward the *current* health of each terminal, not its
  history. Where the central records each terminal's state changes as reports arrive (the dashboard's
  ``device_events`` table), down time is every offline / never-answered stretch in the month. Without that
  history it is the outage still open at the last report (offline or never answered since ``state_since``),
  clipped to the month: an outage that began and ended between two looks is not counted. "Days with
  punches" (from the punch history itself) is shown beside it for that reason.
- Never fixed: a problem (or the outage) open since before the month began and still open at the last
  report; an office whose gateway has been silent since before the month began.
"""

from __future__ import annotations

import csv
import io
import re
from collections import defaultdict
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from gateway.models import NOTICES
from gateway.store.schema import utcnow
from gateway.store.usage import UNDATED, Headcount, UsageRepo

if TYPE_CHECKING:
    from gateway.config import Config
    from gateway.store.db import Engine

#: Fewer punches than this per working day (on average over the period) on a terminal reported online:
#: "installed but unused" (less than one employee arriving and leaving a day).
UNUSED_PUNCHES_PER_DAY = 2.0
#: A gateway without contact for longer than this is silent (the central's default gateway_silent_after_s).
DEFAULT_SILENT_AFTER_S = 7200.0
#: Largest employee count a headcount line may give (a typo guard; the biggest SKPD has a few thousand).
MAX_HEADCOUNT = 100_000
_MONTH = re.compile(r"(\d{4})-(\d{2})", re.ASCII)


@dataclass(frozen=True)
class WorkRules:
    """When people are expected to punch: the working-days rule and the office time zone."""

    #: ISO weekdays that are working days (1 = Monday).
    workdays: tuple[int, ...] = (1, 2, 3, 4, 5)
    day_start: time = time(6, 30)
    day_end: time = time(17, 30)
    #: Zone of the month's boundaries for down time (the central's [site] timezone).
    timezone: str = "Asia/Jakarta"
    #: A gateway silent this long counts as silent (the central's [central] gateway_silent_after_s).
    silent_after_s: float = DEFAULT_SILENT_AFTER_S

    @property
    def midday(self) -> time:
        """The boundary between arrival and leave punches: the middle of the working hours."""
        start = self.day_start.hour * 3600 + self.day_start.minute * 60 + self.day_start.second
        end = self.day_end.hour * 3600 + self.day_end.minute * 60 + self.day_end.second
        middle = (start + end) // 2 if end > start else 12 * 3600
        return time(middle // 3600, middle % 3600 // 60, middle % 60)

    @classmethod
    def from_config(cls, config: Config) -> WorkRules:
        """The rules of a loaded config ([health.working_hours], [site] timezone, [central])."""
        wh = config.health.working_hours
        return cls(workdays=tuple(wh.days), day_start=wh.start, day_end=wh.end, timezone=config.site.timezone,
                   silent_after_s=config.central.gateway_silent_after_s)


def month_range(month: str) -> tuple[date, date]:
    """First and last day of a month given as 'YYYY-MM'; ValueError when it is not one."""
    m = _MONTH.fullmatch(month.strip())
    if not m or not 1 <= int(m.group(2)) <= 12 or not 2000 <= int(m.group(1)) <= 9998:
        raise ValueError(f"not a month like 2026-11: {month!r}")
    first = date(int(m.group(1)), int(m.group(2)), 1)
    nxt = date(first.year + first.month // 12, first.month % 12 + 1, 1)
    return first, nxt - timedelta(days=1)


def working_days(start: date, end: date, rules: WorkRules, holidays: Collection[date] = ()) -> list[date]:
    """Every working day of [start, end]: a working weekday that is not a holiday."""
    out = []
    day = start
    while day <= end:
        if day.isoweekday() in rules.workdays and day not in holidays:
            out.append(day)
        day += timedelta(days=1)
    return out


def week_of(day: date) -> date:
    """The Monday of a day's ISO week (the trend's unit)."""
    return day - timedelta(days=day.isoweekday() - 1)


# --------------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------------

@dataclass
class OfficeUsage:
    """One office's usage over the period."""

    office_code: str
    office_name: str = ""
    working_days: int = 0
    #: Headcount BKD uploaded (None: none), and the employees seen punching in the period.
    headcount: int | None = None
    employees_seen: int = 0
    #: The attendance rate's basis: max(headcount, employees_seen); 0 = nothing known.
    basis: int = 0
    #: "headcount", "seen" (no upload) or "seen>headcount" (the upload is smaller than who punched).
    basis_source: str = "seen"
    #: Sum over working days of the employees who punched, and of those with a full day.
    employee_days: int = 0
    full_days: int = 0
    punches: int = 0
    #: Working days without a single punch at the office.
    days_without_punches: int = 0
    #: Monday of the week -> (employee days, working days that week).
    weekly: dict[date, tuple[int, int]] = field(default_factory=dict)

    @property
    def employees_per_day(self) -> float:
        """Average employees punching per working day."""
        return self.employee_days / self.working_days if self.working_days else 0.0

    @property
    def attendance_rate(self) -> float | None:
        """Employees punching per working day / basis (0..1); None without a basis or a working day."""
        if not self.basis or not self.working_days:
            return None
        return min(1.0, self.employee_days / (self.basis * self.working_days))

    @property
    def full_day_share(self) -> float | None:
        """Share of (employee, working day) pairs with both an arrival and a leave punch (0..1)."""
        if not self.basis or not self.working_days:
            return None
        return min(1.0, self.full_days / (self.basis * self.working_days))

    def weekly_rate(self) -> dict[date, float | None]:
        """Attendance rate per week."""
        return {w: (min(1.0, n / (self.basis * d)) if self.basis and d else None)
                for w, (n, d) in sorted(self.weekly.items())}


@dataclass
class EmployeeUsage:
    """One employee of one office: working days with a punch and with a full day."""

    office_code: str
    employee: str
    days_punched: int
    full_days: int
    working_days: int

    @property
    def full_day_share(self) -> float:
        """Share of the working days with both an arrival and a leave punch (0..1)."""
        return min(1.0, self.full_days / self.working_days) if self.working_days else 0.0


@dataclass
class OpenProblem:
    """A problem a terminal (or an office's gateway) reported and has not fixed."""

    office_code: str
    device_id: str
    problem: str
    severity: str
    since: datetime | None
    detail: str = ""

    def days_open(self, at: datetime) -> float:
        """Days from ``since`` to ``at``."""
        return max(0.0, (at - self.since).total_seconds() / 86400) if self.since else 0.0


@dataclass
class TerminalFigures:
    """One terminal: usage over the period and what is known of its down time."""

    office_code: str
    device_id: str
    name: str = ""
    serial: str = ""
    #: Last reported state: online, offline or unknown (never answered); "unreported" when the central has
    #: no health report for it (only punches).
    state: str = "unreported"
    state_since: datetime | None = None
    last_seen_at: datetime | None = None
    last_punch_at: datetime | None = None
    punches: int = 0
    days_with_punches: int = 0
    working_days: int = 0
    #: Largest number of distinct employees on one working day.
    max_employees_per_day: int = 0
    #: When the central first heard of it (its period starts then when that is within the period).
    first_reported_at: datetime | None = None
    #: Known down time in the period (seconds) and the period's length up to the report (seconds).
    down_s: float = 0.0
    period_s: float = 0.0
    #: The office's gateway was silent: the terminal's state is not known for this long (seconds).
    unreported_s: float = 0.0
    problems: list[OpenProblem] = field(default_factory=list)
    unused: bool = False

    @property
    def punches_per_day(self) -> float:
        """Punches per working day."""
        return self.punches / self.working_days if self.working_days else 0.0

    @property
    def availability(self) -> float | None:
        """Share of the period not known to be down (0..1); None when nothing is known (silent, future)."""
        known = self.period_s - self.unreported_s
        if self.period_s <= 0 or known <= 0 or self.state == "unreported":
            return None
        return max(0.0, min(1.0, 1.0 - self.down_s / self.period_s))

    @property
    def broken(self) -> bool:
        """Down at the last report (offline, or never answered) or down for part of the period."""
        return self.state in ("offline", "unknown") or self.down_s > 0


@dataclass
class OfficeFigures:
    """One office: usage, its terminals, its gateway."""

    usage: OfficeUsage
    terminals: list[TerminalFigures] = field(default_factory=list)
    gateway_last_seen: datetime | None = None
    #: No gateway contact for longer than WorkRules.silent_after_s at the end of the period (or never).
    silent: bool = False
    rank: int = 0

    @property
    def office_code(self) -> str:
        """The office's code."""
        return self.usage.office_code

    @property
    def availability(self) -> float | None:
        """Mean availability of the terminals whose availability is known."""
        known = [a for a in (t.availability for t in self.terminals) if a is not None]
        return sum(known) / len(known) if known else None

    @property
    def score(self) -> float | None:
        """The ranking score: the mean of availability and attendance rate (whichever are known)."""
        parts = [v for v in (self.availability, self.usage.attendance_rate) if v is not None]
        return sum(parts) / len(parts) if parts else None


@dataclass
class Figures:
    """Everything the monthly report shows, for [start, end]."""

    start: date
    end: date
    #: The days counted: up to today for a month in progress.
    counted_until: date
    rules: WorkRules
    working_days: list[date]
    holidays: dict[date, str]
    offices: list[OfficeFigures]
    never_fixed: list[OpenProblem]
    employees: list[EmployeeUsage]
    generated_at: datetime

    @property
    def terminals(self) -> list[TerminalFigures]:
        """Every terminal, office by office."""
        return [t for o in self.offices for t in o.terminals]

    @property
    def empty(self) -> bool:
        """Nothing to report: no punch, no terminal, no gateway for the period."""
        return not any(o.usage.punches or o.terminals or o.gateway_last_seen for o in self.offices)

    def weekly_rate(self) -> dict[date, float | None]:
        """The regency's attendance rate per week (employee days / basis x working days, over every office)."""
        num: dict[date, int] = defaultdict(int)
        den: dict[date, int] = defaultdict(int)
        for o in self.offices:
            for w, (n, d) in o.usage.weekly.items():
                num[w] += n
                den[w] += o.usage.basis * d
        return {w: (min(1.0, num[w] / den[w]) if den[w] else None) for w in sorted(set(num) | set(den))}


def _instant(value: Any) -> datetime | None:
    """An aware instant from a stored value (a datetime or ISO text in the problems JSON)."""
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return None


def collect(engine: Engine, start: date, end: date, rules: WorkRules | None = None, *,
            office: str | None = None, now: datetime | None = None) -> Figures:
    """Every figure for the local days [start, end] (one office, or the regency), from the central database."""
    rules = rules or WorkRules()
    now = now or utcnow()
    zone = ZoneInfo(rules.timezone)
    today = now.astimezone(zone).date()
    counted_until = min(end, today)
    repo = UsageRepo(engine)
    holidays = repo.holidays(start, end)
    days = working_days(start, counted_until, rules, holidays) if counted_until >= start else []
    scope = {office} if office else None
    midday = rules.midday
    agg = repo.aggregates(days, midday=midday, offices=scope)
    headcounts = repo.headcounts_at(end, scope)
    devices = repo.terminals(scope)
    gateways = repo.gateways(scope)
    period_start = datetime.combine(start, time(0), zone).astimezone(UTC)
    period_end = min(datetime.combine(end + timedelta(days=1), time(0), zone).astimezone(UTC), now)
    history = repo.state_history(scope, period_end)
    return compute(start=start, end=end, counted_until=counted_until, rules=rules, days=days, holidays=holidays,
                   office_days=agg.office_days, employee_days=agg.employee_days, terminal_days=agg.terminal_days,
                   headcounts=headcounts, devices=devices, gateways=gateways, period=(period_start, period_end),
                   now=now, only_office=office, state_history=history)


def compute(*, start: date, end: date, counted_until: date, rules: WorkRules, days: Sequence[date],
            holidays: Mapping[date, str], office_days: Iterable[Any], employee_days: Iterable[Any],
            terminal_days: Iterable[Any], headcounts: Mapping[str, Headcount], devices: Iterable[Mapping[str, Any]],
            gateways: Iterable[Mapping[str, Any]], period: tuple[datetime, datetime], now: datetime,
            only_office: str | None = None,
            state_history: Mapping[tuple[str, str], Sequence[tuple[datetime, str]]] | None = None) -> Figures:
    """The figures from the aggregated rows (pure: no database). With ``state_history`` (each terminal's state
    changes, oldest first) a terminal's down time is every offline / never-answered stretch in the period;
    without it only the outage still open at the last report."""
    work = set(days)
    offices: dict[str, OfficeFigures] = {}

    def office_of(code: str) -> OfficeFigures:
        if code not in offices:
            offices[code] = OfficeFigures(OfficeUsage(code, working_days=len(days),
                                                      weekly={w: (0, 0) for w in (week_of(d) for d in days)}))
            for d in days:
                n, k = offices[code].usage.weekly[week_of(d)]
                offices[code].usage.weekly[week_of(d)] = (n, k + 1)
        return offices[code]

    period_start, period_end = period
    if period_end <= period_start:  # a month still to come: nothing is known about it yet
        devices, gateways, headcounts = [], [], {}
    for g in gateways:
        first = _instant(g.get("first_seen_at"))
        if first is not None and first >= period_end:
            continue  # the gateway first reported after the period: it says nothing about it
        o = office_of(g["office_code"])
        o.usage.office_name = o.usage.office_name or (g.get("office_name") or "")
        seen = _instant(g.get("last_seen_at"))
        if seen and (o.gateway_last_seen is None or seen > o.gateway_last_seen):
            o.gateway_last_seen = seen
    for code in headcounts:
        office_of(code)
    punched_days: dict[str, set[date]] = defaultdict(set)
    for r in office_days:
        if r.day not in work:
            continue
        u = office_of(r.office_code).usage
        u.employee_days += r.employees
        u.full_days += r.full_days
        u.punches += r.punches
        punched_days[r.office_code].add(r.day)
        n, k = u.weekly[week_of(r.day)]
        u.weekly[week_of(r.day)] = (n + r.employees, k)
    employees: list[EmployeeUsage] = []
    for e in employee_days:
        office_of(e.office_code).usage.employees_seen += 1
        employees.append(EmployeeUsage(e.office_code, e.employee, e.days_punched, e.full_days, len(days)))

    # Terminals: every device the gateways reported before the period ended (its period starts when the
    # central first heard of it), plus any that only appears in punches.
    period_s = max(0.0, (period_end - period_start).total_seconds())
    terminals: dict[tuple[str, str], TerminalFigures] = {}
    for d in devices:
        known_from = _instant(d.get("created_at"))
        if known_from is not None and known_from >= period_end:
            continue
        t = TerminalFigures(d["office_code"], d["device_id"], name=d.get("name") or "", serial=d.get("serial") or "",
                            state=d.get("state") or "unknown", state_since=_instant(d.get("state_since")),
                            last_seen_at=_instant(d.get("last_seen_at")),
                            last_punch_at=_instant(d.get("last_punch_at")), working_days=len(days),
                            first_reported_at=known_from,
                            period_s=max(0.0, (period_end - max(period_start, known_from or period_start))
                                         .total_seconds()))
        for name, p in sorted((d.get("problems") or {}).items()):
            if name in NOTICES or not isinstance(p, dict):
                continue
            t.problems.append(OpenProblem(t.office_code, t.device_id, name, str(p.get("severity") or ""),
                                          _instant(p.get("since")), str(p.get("detail") or "")))
        terminals[(t.office_code, t.device_id)] = t
    for r in terminal_days:
        if r.day not in work:
            continue
        key = (r.office_code, r.device_id)
        if key not in terminals:
            terminals[key] = TerminalFigures(r.office_code, r.device_id, working_days=len(days), period_s=period_s)
        t = terminals[key]
        t.punches += r.punches
        t.days_with_punches += 1
        t.max_employees_per_day = max(t.max_employees_per_day, r.employees)
    for t in terminals.values():
        office_of(t.office_code).terminals.append(t)

    never_fixed: list[OpenProblem] = []
    for code, o in offices.items():
        u = o.usage
        hc = headcounts.get(code)
        u.headcount = hc.employees if hc else None
        if hc is None:
            u.basis, u.basis_source = u.employees_seen, "seen"
        elif hc.employees >= u.employees_seen:
            u.basis, u.basis_source = hc.employees, "headcount"
        else:
            u.basis, u.basis_source = u.employees_seen, "seen>headcount"
        u.days_without_punches = len(work - punched_days[code])
        silent_from = None
        if o.gateway_last_seen is None or (period_end - o.gateway_last_seen).total_seconds() > rules.silent_after_s:
            o.silent = True
            silent_from = max(period_start, o.gateway_last_seen) if o.gateway_last_seen else period_start
            if o.gateway_last_seen is None or o.gateway_last_seen < period_start:
                never_fixed.append(OpenProblem(code, "", "gateway_silent", "critical", o.gateway_last_seen,
                                               "no contact from the office's gateway since before the month"))
        for t in o.terminals:
            t.unreported_s = max(0.0, (period_end - silent_from).total_seconds()) if silent_from else 0.0
            # Down time is known up to the last report; while the gateway is silent nothing is known.
            known_from = max(period_start, t.first_reported_at or period_start)
            known_until = min(period_end, silent_from) if silent_from else period_end
            changes = (state_history or {}).get((code, t.device_id))
            if changes:
                t.down_s = _down_seconds(changes, known_from, known_until)
            elif t.state in ("offline", "unknown"):
                down_from = max(known_from, t.state_since or period_start)
                t.down_s = max(0.0, (known_until - down_from).total_seconds())
            if t.state in ("offline", "unknown") and (t.state_since is None or t.state_since <= period_start):
                never_fixed.append(OpenProblem(code, t.device_id, "offline" if t.state == "offline"
                                               else "never_answered", "critical", t.state_since,
                                               f"{t.state} since before the month"))
            for p in t.problems:
                if p.since is not None and p.since <= period_start and p.problem != "offline":
                    never_fixed.append(p)
            # A silent office's terminals are not known to be online: not "unused", just unreported.
            t.unused = (t.state == "online" and not o.silent and t.working_days > 0
                        and t.punches_per_day < UNUSED_PUNCHES_PER_DAY)
    if only_office:
        offices = {k: v for k, v in offices.items() if k == only_office}
        never_fixed = [p for p in never_fixed if p.office_code == only_office]
        employees = [e for e in employees if e.office_code == only_office]
    ranked = sorted(offices.values(), key=lambda o: (o.score is None, -(o.score or 0.0), o.office_code))
    for i, o in enumerate(ranked, 1):
        o.rank = i
        o.terminals.sort(key=lambda t: t.device_id)
    never_fixed.sort(key=lambda p: (p.office_code, p.device_id, p.problem))
    return Figures(start=start, end=end, counted_until=counted_until, rules=rules, working_days=list(days),
                   holidays=dict(holidays), offices=ranked, never_fixed=never_fixed, employees=employees,
                   generated_at=now)


def _down_seconds(changes: Sequence[tuple[datetime, str]], start: datetime, end: datetime) -> float:
    """Seconds of [start, end) a terminal spent offline or never answering, from its state changes (oldest
    first; before the first one its state is not known and not counted)."""
    down = 0.0
    for i, (at, state) in enumerate(changes):
        until = changes[i + 1][0] if i + 1 < len(changes) else end
        if state in ("offline", "unknown"):
            lo, hi = max(at, start), min(until, end)
            down += max(0.0, (hi - lo).total_seconds())
    return down


# --------------------------------------------------------------------------------------------------
# Headcount CSV (`fpgw central headcount import FILE.csv`)
# --------------------------------------------------------------------------------------------------

class HeadcountFileError(ValueError):
    """A headcount file that cannot be imported; ``problems`` holds one line per problem (nothing is imported)."""

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__("; ".join(problems[:3]) + (f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""))
        self.problems = list(problems)


_OFFICE_CODE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-/]{0,31}", re.ASCII)


def _csv_table(data: bytes, error: type[HeadcountFileError], header_hint: str) -> tuple[list[str], Any]:
    """The lower-cased header and a csv reader over the rest of an uploaded sheet (UTF-8 with or without BOM,
    comma or semicolon: whichever the header uses more); ``error`` is raised for text that is no CSV."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise error([f"not UTF-8 text (byte {exc.start}); save the sheet as 'CSV UTF-8'"]) from None
    lines = text.splitlines()
    if not lines or not lines[0].strip():
        raise error([f"empty file: the first line must be the header {header_hint}"])
    delimiter = ";" if lines[0].count(";") > lines[0].count(",") else ","
    reader = csv.reader(io.StringIO(text), delimiter=delimiter)
    return [h.strip().lower() for h in next(reader)], reader


def _data_rows(reader: Any, header: list[str], problems: list[str]) -> Iterator[tuple[int, list[str]]]:
    """(line number, cells) of each non-blank row; a row with another column count goes to ``problems``."""
    for row in reader:
        line = reader.line_num
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            problems.append(f"line {line}: {len(row)} columns, the header has {len(header)}")
            continue
        yield line, row


def parse_headcount_csv(data: bytes, source: str = "upload") -> list[Headcount]:
    """The headcounts of a CSV with columns office_code,employees[,as_of] (comma or semicolon separated,
    UTF-8 with or without BOM); raises HeadcountFileError with every bad line, so a file is imported whole or
    not at all."""
    header, reader = _csv_table(data, HeadcountFileError, "office_code,employees[,as_of]")
    problems: list[str] = []
    missing = [c for c in ("office_code", "employees") if c not in header]
    unknown = [h for h in header if h not in ("office_code", "employees", "as_of")]
    if missing or unknown:
        raise HeadcountFileError(["line 1: the header must be office_code,employees[,as_of]"
                                  + (f"; missing {', '.join(missing)}" if missing else "")
                                  + (f"; unknown column {', '.join(map(repr, unknown))}" if unknown else "")])
    col = {name: header.index(name) for name in header}
    out: list[Headcount] = []
    seen: dict[tuple[str, date], int] = {}
    for line, row in _data_rows(reader, header, problems):
        code = row[col["office_code"]].strip()
        count_text = row[col["employees"]].strip()
        as_of_text = row[col["as_of"]].strip() if "as_of" in col else ""
        bad = []
        if not _OFFICE_CODE.fullmatch(code):
            bad.append(f"office_code {code[:40]!r} is not an office code (1-32 letters, digits, '.', '-', '_', '/')")
        count: int | None = None
        if not count_text.isascii() or not count_text.isdigit():
            bad.append(f"employees {count_text[:20]!r} is not a whole number")
        else:
            count = int(count_text)
            if count > MAX_HEADCOUNT:
                bad.append(f"employees {count} is more than {MAX_HEADCOUNT}")
        as_of = UNDATED
        if as_of_text:
            try:
                as_of = date.fromisoformat(as_of_text)
            except ValueError:
                bad.append(f"as_of {as_of_text[:20]!r} is not a date like 2026-11-01")
        if bad:
            problems.append(f"line {line}: " + "; ".join(bad))
            continue
        assert count is not None
        if (code, as_of) in seen:
            problems.append(f"line {line}: office {code} "
                            + (f"as_of {as_of}" if as_of != UNDATED else "without as_of")
                            + f" is already on line {seen[(code, as_of)]}")
            continue
        seen[(code, as_of)] = line
        out.append(Headcount(code, as_of, count, f"{source}:{line}"))
    if problems:
        raise HeadcountFileError(problems)
    if not out:
        raise HeadcountFileError(["no data line after the header"])
    return out


__all__ = ["UNUSED_PUNCHES_PER_DAY", "EmployeeUsage", "Figures", "HeadcountFileError", "OfficeFigures",
           "OfficeUsage", "OpenProblem", "TerminalFigures", "WorkRules", "collect", "compute", "month_range",
           "parse_headcount_csv", "week_of", "working_days"]


def parse_holidays_csv(data: bytes) -> list[tuple[date, str]]:
    """Holidays from a CSV with columns date[,name] (comma or semicolon, UTF-8); raises HeadcountFileError-like
    HolidayFileError with every bad line, so a file is imported whole or not at all."""
    header, reader = _csv_table(data, HolidayFileError, "date,name")
    if "date" not in header or any(h not in ("date", "name") for h in header):
        raise HolidayFileError(["line 1: the header must be date[,name]"])
    problems: list[str] = []
    out: dict[date, str] = {}
    for line, row in _data_rows(reader, header, problems):
        values = dict(zip(header, (c.strip() for c in row), strict=True))
        try:
            day = date.fromisoformat(values["date"])
        except ValueError:
            problems.append(f"line {line}: date {values['date'][:20]!r} is not a date like 2026-12-25")
            continue
        if day in out:
            problems.append(f"line {line}: {day} is listed twice")
            continue
        out[day] = values.get("name", "")[:200]
    if problems:
        raise HolidayFileError(problems)
    return sorted(out.items())


class HolidayFileError(HeadcountFileError):
    """A holiday file that cannot be imported (``problems``: one line per problem; nothing is imported)."""

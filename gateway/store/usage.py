"""Usage queries of the central: punches aggregated per office / terminal / employee and day, headcounts, holidays.

    gateway.central.usage (figures, rules) --> UsageRepo (this module: the SQL) --> punches, office_headcount, holidays
    gateway.central.report / `fpgw central report|headcount|holidays` --> gateway.central.usage

Everything is aggregated in the database, never returned punch by punch: ONE grouped query gives a row per
office, day, employee and terminal (first and last clock time, punch count), streamed back in order and
folded into the per office-day, per employee and per terminal-day views in one pass. A punch's day is its
office-local date, the first ten characters of its device time (the same day as every punch query,
gateway.store.central); ``local_time`` bounds the range and a ``utc_time`` range one day wider on each side
lets the database use its utc_time indexes. Punches whose time cannot be trusted (flags future, rtc_reset,
impossible_date) are left out of every usage figure.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy import Engine, Subquery, Table, and_, delete, func, literal, select
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.engine import Connection

from gateway.store import schema as s
from gateway.store.db import writer
from gateway.store.schema import utcnow

#: as_of of a headcount uploaded without a date: it counts for every period until a dated one replaces it.
UNDATED = date(1970, 1, 1)
#: Flags that make a punch's time untrustworthy (the same set as gateway.central.export.UNTRUSTED_FLAGS).
UNTRUSTED_FLAGS = ("future", "rtc_reset", "impossible_date")


@dataclass(frozen=True, slots=True)
class OfficeDay:
    """One office on one day: employees who punched, how many of them punched both ways, punches."""

    office_code: str
    day: date
    #: Distinct employees with at least one trusted punch (NIP when mapped, else the terminal PIN).
    employees: int
    #: Of those, employees with a punch before and a punch at or after the midday boundary.
    full_days: int
    punches: int


@dataclass(frozen=True, slots=True)
class TerminalDay:
    """One terminal on one day: trusted punches and distinct employees."""

    office_code: str
    device_id: str
    day: date
    punches: int
    employees: int


@dataclass(frozen=True, slots=True)
class EmployeeDays:
    """One employee of one office over the given days: days with a punch, days with both an arrival and a leave."""

    office_code: str
    employee: str
    days_punched: int
    full_days: int


@dataclass
class Aggregates:
    """The three per-day views of one query (UsageRepo.aggregates)."""

    office_days: list[OfficeDay] = field(default_factory=list)
    employee_days: list[EmployeeDays] = field(default_factory=list)
    terminal_days: list[TerminalDay] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Headcount:
    """An office's employee count as BKD uploaded it, counting from ``as_of``."""

    office_code: str
    as_of: date
    employees: int
    source: str = ""


def _day_text(d: date) -> str:
    return d.isoformat()


class UsageRepo:
    """The usage queries over the central's engine (read-only, except headcounts and holidays)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    # -- punches, aggregated ---------------------------------------------------------------------
    @staticmethod
    def _trusted(days: Sequence[date], offices: Collection[str] | None) -> Subquery:
        """Trusted punches of exactly these local days (and offices) as (office_code, device_id, day, employee,
        clock): the rows every aggregate below groups (a subquery, so the grouped expressions are plain columns
        to PostgreSQL)."""
        p = s.punches.c
        first, last = min(days), max(days)
        q = select(p.office_code, p.device_id, func.substr(p.device_time, 1, 10).label("day"),
                   func.coalesce(p.employee_id, literal("pin:") + p.device_user_id).label("employee"),
                   func.substr(p.device_time, 12, 8).label("clock")).where(
            p.local_time >= datetime.combine(first, time(0)),
            p.local_time < datetime.combine(last + timedelta(days=1), time(0)),
            # Every zone is within a day of UTC: this wider instant range only lets the index narrow the scan.
            p.utc_time >= datetime.combine(first - timedelta(days=1), time(0), UTC),
            p.utc_time < datetime.combine(last + timedelta(days=2), time(0), UTC),
            func.substr(p.device_time, 1, 10).in_([_day_text(d) for d in sorted(set(days))]),
            *(~p.flags.contains(flag) for flag in UNTRUSTED_FLAGS),
        )
        if offices is not None:
            q = q.where(p.office_code.in_(sorted(offices)))
        return q.subquery("trusted")

    def aggregates(self, days: Sequence[date], *, midday: time, offices: Collection[str] | None = None
                   ) -> Aggregates:
        """Per office and day, per office and employee, per terminal and day, over ``days``: ONE grouped query.

        The database groups the trusted punches by (office, day, employee, terminal) with the count and the
        first and last clock time; those rows stream back in that order and are folded here into the three
        views (one pass, memory for the results only). An employee's day is full when their first punch of
        the day at any terminal of the office is before ``midday`` and their last one at or after it.
        """
        out = Aggregates()
        if not days:
            return out
        t = self._trusted(days, offices)
        q = (select(t.c.office_code, t.c.day, t.c.employee, t.c.device_id, func.count().label("punches"),
                    func.min(t.c.clock).label("first"), func.max(t.c.clock).label("last"))
             .group_by(t.c.office_code, t.c.day, t.c.employee, t.c.device_id)
             .order_by(t.c.office_code, t.c.day, t.c.employee, t.c.device_id))
        boundary = midday.strftime("%H:%M:%S")
        office_day: dict[tuple[str, str], list[int]] = {}
        employee: dict[tuple[str, str], list[int]] = {}
        terminal: dict[tuple[str, str, str], list[int]] = {}
        current: tuple[str, str, str] | None = None
        first = last = ""
        punches = 0

        def close() -> None:
            # One (office, day, employee) is complete: count it for its office-day and for the employee.
            assert current is not None
            full = 1 if first < boundary <= last else 0
            od = office_day.setdefault((current[0], current[1]), [0, 0, 0])
            od[0] += 1
            od[1] += full
            od[2] += punches
            ed = employee.setdefault((current[0], current[2]), [0, 0])
            ed[0] += 1
            ed[1] += full

        with self.engine.connect() as conn:
            result = conn.execution_options(stream_results=True, yield_per=5000).execute(q)
            # Unpacked like tuples: attribute access on hundreds of thousands of rows costs more than the SQL.
            for office, day, who, device, n, row_first, row_last in result:
                key = (office, day, who)
                if key != current:
                    if current is not None:
                        close()
                    current, first, last, punches = key, row_first, row_last, 0
                else:
                    first, last = min(first, row_first), max(last, row_last)
                punches += n
                td = terminal.get((office, device, day))
                if td is None:
                    terminal[(office, device, day)] = [n, 1]
                else:
                    td[0] += n
                    td[1] += 1  # rows are unique per employee within a terminal and day
            if current is not None:
                close()
        out.office_days = [OfficeDay(o, date.fromisoformat(d), *v) for (o, d), v in sorted(office_day.items())]
        out.employee_days = [EmployeeDays(o, e, *v) for (o, e), v in sorted(employee.items())]
        out.terminal_days = [TerminalDay(o, dev, date.fromisoformat(d), *v)
                             for (o, dev, d), v in sorted(terminal.items())]
        return out

    def offices_with_punches(self) -> list[str]:
        """Every office code that has punches at all (cheap: the office_code index)."""
        with self.engine.connect() as conn:
            return list(conn.execute(select(s.punches.c.office_code).distinct()).scalars())

    # -- the health snapshot ------------------------------------------------------------------------
    def terminals(self, offices: Collection[str] | None = None) -> list[dict[str, Any]]:
        """Every terminal the gateways reported, with its last reported health (``problems`` as a dict) and
        when the central first heard of it (``created_at``)."""
        d, h = s.devices.c, s.device_health.c
        q = (select(d.office_code, d.device_id, d.name, d.serial, d.created_at, d.last_seen_at, d.last_punch_at,
                    h.state, h.state_since, h.problems)
             .select_from(s.devices.outerjoin(s.device_health, h.device_pk == d.pk))
             .order_by(d.office_code, d.device_id))
        if offices is not None:
            q = q.where(d.office_code.in_(sorted(offices)))
        with self.engine.connect() as conn:
            rows = [dict(r) for r in conn.execute(q).mappings()]
        for r in rows:
            try:
                problems = json.loads(r["problems"]) if r["problems"] else {}
            except ValueError:
                problems = {}  # a damaged row shows no problems rather than failing the report
            r["problems"] = problems if isinstance(problems, dict) else {}
        return rows

    def state_history(self, offices: Collection[str] | None, until: datetime
                      ) -> dict[tuple[str, str], list[tuple[datetime, str]]]:
        """Each terminal's state changes before ``until`` ((at, state) oldest first), from the ``device_events``
        history the central records as health reports arrive (gateway.store.device_events). A terminal with no
        rows (history starts with migration 0010) is missing: the caller falls back to its health snapshot."""
        with self.engine.connect() as conn:
            e = s.device_events.c
            q = (select(e.office_code, e.device_id, e.at, e.name).where(e.kind == "state", e.at < until)
                 .order_by(e.office_code, e.device_id, e.at))
            if offices is not None:
                q = q.where(e.office_code.in_(sorted(offices)))
            out: dict[tuple[str, str], list[tuple[datetime, str]]] = {}
            for office, device, at, state in conn.execute(q):
                out.setdefault((office, device), []).append((at, state))
        return out

    def gateways(self, offices: Collection[str] | None = None) -> list[dict[str, Any]]:
        """Every office gateway: office, name it reports, first and last contact."""
        g = s.gateways.c
        q = select(g.name, g.office_code, g.office_name, g.first_seen_at, g.last_seen_at).order_by(g.office_code)
        if offices is not None:
            q = q.where(g.office_code.in_(sorted(offices)))
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(q).mappings()]

    # -- headcounts -------------------------------------------------------------------------------
    def headcounts_at(self, at: date, offices: Collection[str] | None = None) -> dict[str, Headcount]:
        """Each office's employee count valid on ``at``: its newest figure dated on or before that day."""
        h = s.office_headcount.c
        newest = (select(h.office_code, func.max(h.as_of).label("as_of")).where(h.as_of <= at)
                  .group_by(h.office_code).subquery())
        q = (select(h.office_code, h.as_of, h.employees, h.source)
             .join(newest, and_(newest.c.office_code == h.office_code, newest.c.as_of == h.as_of)))
        if offices is not None:
            q = q.where(h.office_code.in_(sorted(offices)))
        with self.engine.connect() as conn:
            return {r.office_code: Headcount(r.office_code, r.as_of, int(r.employees), r.source)
                    for r in conn.execute(q)}

    def headcounts(self) -> list[Headcount]:
        """Every stored headcount, by office and date."""
        h = s.office_headcount.c
        with self.engine.connect() as conn:
            return [Headcount(r.office_code, r.as_of, int(r.employees), r.source)
                    for r in conn.execute(select(h.office_code, h.as_of, h.employees, h.source)
                                          .order_by(h.office_code, h.as_of))]

    def save_headcounts(self, rows: Iterable[Headcount]) -> int:
        """Insert or replace (same office and as_of) headcounts in ONE transaction; returns how many."""
        now = utcnow()
        values = [{"office_code": r.office_code, "as_of": r.as_of, "employees": r.employees,
                   "source": r.source[:300], "imported_at": now} for r in rows]
        if not values:
            return 0
        with writer(self.engine).begin() as conn:
            conn.execute(_upsert(conn, s.office_headcount, ("office_code", "as_of"),
                                 ("employees", "source", "imported_at")), values)
        return len(values)

    # -- holidays -----------------------------------------------------------------------------------
    def holidays(self, start: date | None = None, end: date | None = None) -> dict[date, str]:
        """Holidays (day -> name) within [start, end] (either open)."""
        c = s.holidays.c
        q = select(c.day, c.name).order_by(c.day)
        if start is not None:
            q = q.where(c.day >= start)
        if end is not None:
            q = q.where(c.day <= end)
        with self.engine.connect() as conn:
            return {r.day: r.name for r in conn.execute(q)}

    def save_holidays(self, days: Iterable[tuple[date, str]]) -> int:
        """Insert or rename holidays in ONE transaction; returns how many."""
        now = utcnow()
        values = [{"day": d, "name": name[:200], "created_at": now} for d, name in days]
        if not values:
            return 0
        with writer(self.engine).begin() as conn:
            conn.execute(_upsert(conn, s.holidays, ("day",), ("name",)), values)
        return len(values)

    def remove_holidays(self, days: Iterable[date]) -> int:
        """Forget these holidays; returns how many were stored."""
        wanted = sorted(set(days))
        if not wanted:
            return 0
        with writer(self.engine).begin() as conn:
            return int(conn.execute(delete(s.holidays).where(s.holidays.c.day.in_(wanted))).rowcount or 0)


def _upsert(conn: Connection, table: Table, keys: Sequence[str], updates: Sequence[str]) -> Any:
    """``INSERT ... ON CONFLICT (keys) DO UPDATE SET updates`` for the connection's dialect."""
    dialect = pg_dialect if conn.dialect.name == "postgresql" else sqlite_dialect
    stmt = dialect.insert(table)
    return stmt.on_conflict_do_update(index_elements=list(keys),
                                      set_={u: getattr(stmt.excluded, u) for u in updates})


__all__ = ["UNDATED", "Aggregates", "EmployeeDays", "Headcount", "OfficeDay", "TerminalDay", "UsageRepo"]

"""Usage queries of the central: punches aggregated per office / terminal / employee and day, headcounts, holidays.

    gateway.central.usage (figures, rules) --> UsageRepo (this module: the SQL) --> punches, office_headcount, holidays
    gateway.central.report / `fpgw central report|headcount|holidays` --> gateway.central.usage

Everything is aggregated in the database, one row per office (or terminal, or employee) and day, never one
per punch: three months of a regency (300 offices, 1,000 terminals, about a million punches) come back as
tens of thousands of rows. A punch's day is its office-local date, the first ten characters of its device
time (the same day as every punch query, gateway.store.central); ``local_time`` bounds the range and a
``utc_time`` range one day wider on each side lets the database use its utc_time indexes. Punches whose time
cannot be trusted (flags future, rtc_reset, impossible_date) are left out of every usage figure.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy import Engine, Subquery, Table, and_, case, delete, func, literal, select
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

    def office_days(self, days: Sequence[date], *, midday: time, offices: Collection[str] | None = None
                    ) -> list[OfficeDay]:
        """Per office and day of ``days``: distinct employees, those with arrival and leave, punches."""
        if not days:
            return []
        inner = self._per_employee_day(days, midday, offices)
        q = (select(inner.c.office_code, inner.c.day, func.count().label("employees"),
                    func.sum(inner.c.full).label("full_days"), func.sum(inner.c.punches).label("punches"))
             .group_by(inner.c.office_code, inner.c.day).order_by(inner.c.office_code, inner.c.day))
        with self.engine.connect() as conn:
            return [OfficeDay(r.office_code, date.fromisoformat(r.day), int(r.employees), int(r.full_days or 0),
                              int(r.punches or 0)) for r in conn.execute(q)]

    def employee_days(self, days: Sequence[date], *, midday: time, offices: Collection[str] | None = None
                      ) -> list[EmployeeDays]:
        """Per office and employee over ``days``: days with a punch and days with arrival and leave."""
        if not days:
            return []
        inner = self._per_employee_day(days, midday, offices)
        q = (select(inner.c.office_code, inner.c.employee, func.count().label("days_punched"),
                    func.sum(inner.c.full).label("full_days"))
             .group_by(inner.c.office_code, inner.c.employee).order_by(inner.c.office_code, inner.c.employee))
        with self.engine.connect() as conn:
            return [EmployeeDays(r.office_code, r.employee, int(r.days_punched), int(r.full_days or 0))
                    for r in conn.execute(q)]

    def _per_employee_day(self, days: Sequence[date], midday: time, offices: Collection[str] | None) -> Subquery:
        """One row per (office, day, employee): full = 1 with a punch before and one at/after ``midday``."""
        t = self._trusted(days, offices)
        boundary = midday.strftime("%H:%M:%S")
        arrived = func.max(case((t.c.clock < boundary, 1), else_=0))
        left = func.max(case((t.c.clock >= boundary, 1), else_=0))
        return (select(t.c.office_code, t.c.day, t.c.employee,
                       case((and_(arrived == 1, left == 1), 1), else_=0).label("full"),
                       func.count().label("punches"))
                .group_by(t.c.office_code, t.c.day, t.c.employee).subquery("employee_day"))

    def terminal_days(self, days: Sequence[date], *, offices: Collection[str] | None = None) -> list[TerminalDay]:
        """Per terminal (office, device id) and day of ``days``: trusted punches and distinct employees."""
        if not days:
            return []
        t = self._trusted(days, offices)
        q = (select(t.c.office_code, t.c.device_id, t.c.day, func.count().label("punches"),
                    func.count(func.distinct(t.c.employee)).label("employees"))
             .group_by(t.c.office_code, t.c.device_id, t.c.day)
             .order_by(t.c.office_code, t.c.device_id, t.c.day))
        with self.engine.connect() as conn:
            return [TerminalDay(r.office_code, r.device_id, date.fromisoformat(r.day), int(r.punches),
                                int(r.employees)) for r in conn.execute(q)]

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


__all__ = ["UNDATED", "EmployeeDays", "Headcount", "OfficeDay", "TerminalDay", "UsageRepo"]

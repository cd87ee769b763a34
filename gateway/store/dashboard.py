"""The regency dashboard's reads at the central: one row per terminal with just what the page shows.

    gateway.central.dashboard --DashboardRepo.terminals(offices)--> devices JOIN device_health (no punches)
CentralStore.devices serves the JSON API with every column; the dashboard asks for the dozen it renders, as plain
tuples, so a page for 1,000 terminals converts a third of the timestamps (the page's time goes there on SQLite).
"""

from __future__ import annotations

import json
from collections.abc import Collection
from typing import Any, NamedTuple

from sqlalchemy import Engine, select

from gateway.store import schema as s
from gateway.store.punches import in_scope
from gateway.wire import OfficeScope


class TerminalRow(NamedTuple):
    """One terminal as the dashboard shows it (``problems`` parsed; {} when unreadable)."""

    office_code: str
    device_id: str
    name: str
    location: str
    serial: str | None
    state: str
    state_since: Any
    problems: dict[str, Any]
    last_punch_at: Any
    records: int | None
    records_cap: int | None
    clock_skew_s: float | None


class DashboardRepo:
    """Read-only queries of the dashboard over one engine."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def terminals(self, offices: OfficeScope | Collection[str] | None = None, office: str | None = None,
                  device_id: str | None = None) -> list[TerminalRow]:
        """Enabled terminals of these offices (None = all), optionally one office or one terminal."""
        d, h = s.devices.c, s.device_health.c
        q = (select(d.office_code, d.device_id, d.name, d.location, d.serial, h.state, h.state_since, h.problems,
                    d.last_punch_at, d.last_record_count, d.records_cap, d.clock_skew_s)
             .select_from(s.devices.outerjoin(s.device_health, h.device_pk == d.pk))
             .where(d.enabled.is_(True)))
        if offices is not None:
            q = q.where(in_scope(d.office_code, offices))
        if office is not None:
            q = q.where(d.office_code == office)
        if device_id is not None:
            q = q.where(d.device_id == device_id)
        with self.engine.connect() as conn:
            rows = conn.execute(q).all()
        out = []
        for r in rows:
            try:
                problems = json.loads(r[7]) if r[7] else {}
            except ValueError:
                problems = {}
            out.append(TerminalRow(r[0], r[1], r[2] or r[1], r[3] or "", r[4], r[5] or "unknown", r[6],
                                   problems if isinstance(problems, dict) else {}, r[8], r[9], r[10], r[11]))
        return out

"""A terminal's history at the central: state changes, problems and alerts, recorded as health reports arrive.

    gateway.store.central.CentralStore.ingest_health --record_health_changes(conn, ...)--> device_events
    gateway.central.dashboard (terminal page) --DeviceEventRepo.events / outages--> the history table
Office gateways forward only each terminal's current health; comparing it with the stored one inside the ingest
transaction gives the changes, so the history needs no scan of punches and no help from the gateways.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy.engine import Connection

from gateway.store import schema as s


@dataclass(frozen=True)
class DeviceEvent:
    """One entry of a terminal's history."""

    at: datetime
    kind: str
    name: str
    severity: str | None
    detail: str


@dataclass(frozen=True)
class Outage:
    """One offline period of a terminal; ``until`` None = still offline."""

    since: datetime
    until: datetime | None

    def seconds(self, now: datetime) -> float:
        """How long it lasted (so far)."""
        return ((self.until or now) - self.since).total_seconds()


def _instant(value: Any, fallback: datetime) -> datetime:
    """An aware datetime from a stored/forwarded value (ISO text or datetime); ``fallback`` when unusable."""
    if isinstance(value, datetime):
        return value if value.tzinfo else fallback
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return fallback
        if parsed.tzinfo is None:
            return fallback
        try:
            return parsed.astimezone(UTC)
        except (OverflowError, ValueError):  # year 1 with a positive offset: not a moment anyone reported
            return fallback
    return fallback


def _text(value: Any, limit: int) -> str:
    """Forwarded free text made storable: a string, cut to the column, without NUL or lone surrogates
    (PostgreSQL refuses both; the problems JSON a gateway sends may hold anything)."""
    text = "" if value is None else str(value)
    return text[:limit].replace("\x00", "").encode("utf-8", "replace").decode("utf-8")


def _problems(text: Any) -> dict[str, Any]:
    if isinstance(text, dict):
        return text
    try:
        value = json.loads(text) if text else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def record_health_changes(conn: Connection, office_code: str, device_id: str, previous: Any,
                         health: Mapping[str, Any], now: datetime) -> None:
    """Append what changed between the stored health row ``previous`` (state, problems; None for a new terminal)
    and the new ``health`` values, inside the caller's (ingest) transaction."""
    rows: list[dict[str, Any]] = []

    def add(at: datetime, kind: str, name: str, severity: Any = None, detail: Any = "") -> None:
        rows.append({"office_code": office_code, "device_id": device_id, "at": min(at, now), "kind": kind,
                     "name": _text(name, 32), "severity": _text(severity, 16) or None,
                     "detail": _text(detail, 500), "recorded_at": now})

    old_state = previous.state if previous is not None else None
    state = health.get("state") or "unknown"
    if state != old_state:
        add(_instant(health.get("state_since"), now), "state", state,
            detail=(health.get("last_error") or health.get("last_error_kind")) if state == "offline" else "")
    old = _problems(previous.problems) if previous is not None else {}
    new = _problems(health.get("problems"))
    for name, p in new.items():
        p = p if isinstance(p, dict) else {}
        before = old.get(name) if isinstance(old.get(name), dict) else None
        if before is None:
            add(_instant(p.get("since"), now), "problem_start", name, p.get("severity"), p.get("detail"))
        alerted = p.get("last_alert_at")
        if alerted and alerted != (before or {}).get("last_alert_at"):
            add(_instant(alerted, now), "alert", name, p.get("severity"), p.get("detail"))
    for name in old.keys() - new.keys():
        p = old[name] if isinstance(old[name], dict) else {}
        add(now, "problem_end", name, p.get("severity"))
    if rows:
        conn.execute(s.device_events.insert(), rows)


class DeviceEventRepo:
    """Reads a terminal's history."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def events(self, office_code: str, device_id: str, *, limit: int = 500) -> list[DeviceEvent]:
        """The newest ``limit`` events of one terminal, newest first."""
        e = s.device_events.c
        with self.engine.connect() as conn:
            rows = conn.execute(select(e.at, e.kind, e.name, e.severity, e.detail)
                                .where(e.office_code == office_code, e.device_id == device_id)
                                .order_by(e.at.desc(), e.id.desc()).limit(limit)).all()
        return [DeviceEvent(r.at, r.kind, r.name, r.severity, r.detail) for r in rows]


def outages(events: list[DeviceEvent]) -> list[Outage]:
    """Offline periods from a terminal's state events (any order), newest first."""
    outs: list[Outage] = []
    since: datetime | None = None
    for ev in sorted((e for e in events if e.kind == "state"), key=lambda e: e.at):
        if ev.name == "offline" and since is None:
            since = ev.at
        elif ev.name != "offline" and since is not None:
            outs.append(Outage(since, ev.at))
            since = None
    if since is not None:
        outs.append(Outage(since, None))
    return outs[::-1]

"""Read-only queries for people: the device overview and the punch log (CLI, status page, reports).

Sits beside gateway.store.punches (which does the daemon's writes); both are the only SQL in the gateway.
Health columns come from the device_health table written by gateway.health.monitor; when it has no row
for a device the state is "unknown". Results are plain dicts of JSON-friendly values.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Engine, func, select

from gateway.store import schema as s


def _iso(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z") if value else None


def _problems(text: str | None) -> list[str]:
    if not text:
        return []
    try:
        data = json.loads(text)
    except ValueError:
        return ["?"]
    if isinstance(data, dict):
        return sorted(str(k) for k in data)
    if isinstance(data, list):
        return sorted(str(k) for k in data)
    return []


def device_overview(engine: Engine, office_code: str | None = None, *, include_disabled: bool = False
                    ) -> list[dict[str, Any]]:
    """One dict per device: identity, address, health state and problems, last seen/punch, counts, skew."""
    d, h, r = s.devices.c, s.device_health.c, s.poll_runs.c
    last_run = (select(r.device_pk, func.max(r.id).label("run_id")).group_by(r.device_pk).subquery())
    q = (select(d.pk, d.office_code, d.device_id, d.name, d.location, d.address, d.port, d.transport, d.serial,
                d.firmware, d.platform, d.enabled, d.last_seen_at, d.last_ok_at, d.last_full_read_at,
                d.last_record_count, d.records_cap, d.last_user_count, d.users_cap, d.last_punch_at,
                d.last_new_punch_at, d.clock_skew_s, h.state, h.state_since, h.problems, h.last_error_kind,
                h.last_error, h.consecutive_failures, h.muted_until,
                r.outcome.label("last_poll_outcome"), r.started_at.label("last_poll_at"),
                r.error.label("last_poll_error"))
         .select_from(s.devices.outerjoin(s.device_health, h.device_pk == d.pk)
                      .outerjoin(last_run, last_run.c.device_pk == d.pk)
                      .outerjoin(s.poll_runs, r.id == last_run.c.run_id))
         .order_by(d.office_code, d.device_id))
    if office_code is not None:
        q = q.where(d.office_code == office_code)
    if not include_disabled:
        q = q.where(d.enabled.is_(True))
    out: list[dict[str, Any]] = []
    with engine.connect() as conn:
        for row in conn.execute(q).mappings():
            out.append({
                "office_code": row["office_code"], "device_id": row["device_id"], "name": row["name"],
                "location": row["location"], "address": row["address"], "port": row["port"],
                "transport": row["transport"], "serial": row["serial"], "firmware": row["firmware"],
                "platform": row["platform"], "enabled": bool(row["enabled"]),
                "state": row["state"] or "unknown", "state_since": _iso(row["state_since"]),
                "problems": _problems(row["problems"]), "last_error_kind": row["last_error_kind"],
                "last_error": row["last_error"], "consecutive_failures": row["consecutive_failures"],
                "muted_until": _iso(row["muted_until"]),
                "last_seen_at": _iso(row["last_seen_at"]), "last_ok_at": _iso(row["last_ok_at"]),
                "last_full_read_at": _iso(row["last_full_read_at"]),
                "last_punch_at": _iso(row["last_punch_at"]), "last_new_punch_at": _iso(row["last_new_punch_at"]),
                "records": row["last_record_count"], "records_cap": row["records_cap"],
                "users": row["last_user_count"], "users_cap": row["users_cap"],
                "clock_skew_s": None if row["clock_skew_s"] is None else round(row["clock_skew_s"], 1),
                "last_poll_outcome": row["last_poll_outcome"], "last_poll_at": _iso(row["last_poll_at"]),
                "last_poll_error": row["last_poll_error"],
            })
    return out


@dataclass(frozen=True)
class PunchFilter:
    """What `fpgw punches` (and other readers) select. Dates are whole days in ``timezone``."""

    date_from: date | None = None
    date_to: date | None = None
    timezone: str = "Asia/Jakarta"
    device_id: str | None = None
    employee_id: str | None = None
    device_user_id: str | None = None
    office_code: str | None = None
    limit: int | None = None


PUNCH_FIELDS = ("id", "office_code", "device_id", "device_serial", "device_user_id", "employee_id", "device_time",
                "utc_time", "timezone", "state", "state_name", "verify", "verify_name", "flags", "received_at")


def iter_punches(engine: Engine, flt: PunchFilter, *, chunk: int = 2000) -> Iterator[dict[str, Any]]:
    """Punches matching the filter, oldest first (by instant, then arrival); streams in chunks."""
    p = s.punches.c
    q = select(*(getattr(p, f) for f in PUNCH_FIELDS))
    zone = ZoneInfo(flt.timezone)
    if flt.date_from is not None:
        q = q.where(p.utc_time >= datetime.combine(flt.date_from, time(0), zone))
    if flt.date_to is not None:
        q = q.where(p.utc_time < datetime.combine(flt.date_to + timedelta(days=1), time(0), zone))
    if flt.device_id:
        q = q.where(p.device_id == flt.device_id)
    if flt.employee_id:
        q = q.where(p.employee_id == flt.employee_id)
    if flt.device_user_id:
        q = q.where(p.device_user_id == flt.device_user_id)
    if flt.office_code:
        q = q.where(p.office_code == flt.office_code)
    # Punches with an impossible date have no instant: they sort last (and only appear without a date filter).
    q = q.order_by(p.utc_time.is_(None), p.utc_time, p.id)
    if flt.limit:
        q = q.limit(flt.limit)
    with engine.connect() as conn:
        result = conn.execution_options(stream_results=True, yield_per=chunk).execute(q)
        for row in result.mappings():
            item = dict(row)
            item["utc_time"] = _iso(item["utc_time"])
            item["received_at"] = _iso(item["received_at"])
            yield item


def punch_count(engine: Engine) -> int:
    """Total punches stored."""
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(s.punches)).scalar_one())

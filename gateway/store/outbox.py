"""Office side of forwarding: the outbox queries the forwarder, the status page and the CLI use.

    Store.save_poll(forward=True) --outbox rows--> claim_batch() --> forwarder --> upstream
                                                   settle()  <-- per-punch accepted / rejected / kept
The outbox is the only coupling between polling and forwarding: polls insert rows in the punch
transaction, the forwarder deletes them once the upstream accepted them. Nothing here blocks a poll
for longer than one short write transaction.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from sqlalchemy import Engine, and_, delete, func, select, update
from sqlalchemy.engine import Connection

from gateway.store import schema as s
from gateway.store.db import writer
from gateway.store.schema import utcnow

#: Problems the forwarder raises through the alerts table.
PROBLEM_REJECTED = "forward_rejected"
PROBLEM_BACKLOG = "forward_backlog"


class OutboxStats(NamedTuple):
    """Outbox depth (pending rows), age of the oldest pending row in seconds, and rejected rows."""

    depth: int
    oldest_age_s: float | None
    rejected: int


@dataclass(frozen=True, slots=True)
class OutboxItem:
    """One claimed outbox row with the punch to send."""

    punch_id: int
    attempts: int
    punch: dict[str, Any]


def outbox_stats(engine: Engine, now: datetime | None = None) -> OutboxStats:
    """(depth, oldest_age_s, rejected) of the outbox; oldest_age_s is None when nothing is pending."""
    o = s.outbox.c
    now = now or utcnow()
    with engine.connect() as conn:
        depth, oldest = conn.execute(select(func.count(), func.min(o.created_at))
                                     .where(o.state == "pending")).one()
        rejected = conn.execute(select(func.count()).where(o.state == "rejected")).scalar_one()
    age = max(0.0, (now - oldest).total_seconds()) if oldest is not None else None
    return OutboxStats(int(depth), age, int(rejected))


def punch_payload(row: Mapping[str, Any]) -> dict[str, Any]:
    """The wire form of a stored punch (the ingest API's punch object)."""
    local, utc = row["local_time"], row["utc_time"]
    return {
        "office_code": row["office_code"], "device_id": row["device_id"], "device_serial": row["device_serial"],
        "device_user_id": row["device_user_id"], "device_time": row["device_time"],
        "local_time": local.isoformat(timespec="seconds") if local is not None else None,
        "utc_time": utc.isoformat(timespec="seconds").replace("+00:00", "Z") if utc is not None else None,
        "timezone": row["timezone"], "state": row["state"], "state_name": row["state_name"],
        "verify": row["verify"], "verify_name": row["verify_name"], "uid": row["uid"],
        "workcode": row["workcode"], "raw_time": row["raw_time"], "employee_id": row["employee_id"],
        "flags": [f for f in (row["flags"] or "").split(",") if f],
    }


_PUNCH_COLUMNS = ("office_code", "device_id", "device_serial", "device_user_id", "device_time", "local_time",
                  "utc_time", "timezone", "state", "state_name", "verify", "verify_name", "uid", "workcode",
                  "raw_time", "employee_id", "flags")


def claim_batch(engine: Engine, limit: int, now: datetime | None = None) -> list[OutboxItem]:
    """The oldest pending rows due now (at most ``limit``), with their punches.

    Only one forwarder job runs at a time (max_instances=1), so reading is claiming; rows stay in the
    outbox until settle() records the upstream's answer, hence a crash mid-send only means a resend.
    """
    o, p = s.outbox.c, s.punches.c
    now = now or utcnow()
    cols = [p[name] for name in _PUNCH_COLUMNS]
    with engine.connect() as conn:
        rows = conn.execute(
            select(o.punch_id, o.attempts, *cols).join(s.punches, p.id == o.punch_id)
            .where(o.state == "pending", o.next_attempt_at <= now)
            .order_by(o.punch_id).limit(limit)).mappings().all()
    return [OutboxItem(r["punch_id"], r["attempts"], punch_payload(r)) for r in rows]


def settle(engine: Engine, *, accepted: Iterable[int] = (), rejected: Mapping[int, str] | None = None,
           kept: Mapping[int, datetime] | None = None, error: str | None = None,
           alerts: Sequence[Mapping[str, Any]] = ()) -> None:
    """Record one upstream answer in ONE transaction: delete accepted rows, set rejected rows aside
    with their reason, push kept rows to their next attempt, and insert the alerts to send."""
    o = s.outbox.c
    accepted = list(accepted)
    with writer(engine).begin() as conn:
        for i in range(0, len(accepted), 500):
            conn.execute(delete(s.outbox).where(o.punch_id.in_(accepted[i:i + 500])))
        for pid, reason in (rejected or {}).items():
            conn.execute(update(s.outbox).where(o.punch_id == pid)
                         .values(state="rejected", attempts=o.attempts + 1, last_error=reason[:2000]))
        for pid, at in (kept or {}).items():
            # Only pending rows: a row set aside earlier in the same run keeps its rejection reason.
            conn.execute(update(s.outbox).where(o.punch_id == pid, o.state == "pending")
                         .values(attempts=o.attempts + 1, next_attempt_at=at,
                                 last_error=(error or "kept by upstream")[:2000]))
        for alert in alerts:
            insert_alert(conn, **alert)


def insert_alert(conn: Connection, *, office_code: str, problem: str, event: str, severity: str, title: str,
                 message: str, details: Mapping[str, Any] | None = None, checks: Sequence[str] = (),
                 office_name: str = "", extra: Mapping[str, Any] | None = None, at: datetime | None = None) -> None:
    """Queue a gateway-wide alert (no device) for the alert sender.

    ``details`` holds the alert document in the same shape as gateway.health.alerts' device alerts (title,
    message with what to check, office, problem, event, severity, seen), so webhooks get one format.
    ``extra`` adds or replaces top-level keys of that document (the central's silent-gateway alerts name
    the office of the gateway there, while the row belongs to the central's own office_code, which is
    what its alert sender delivers).
    """
    now = at or utcnow()
    seen = dict(details or {})
    full = message + ("\nWhat to check:\n" + "\n".join(f"- {c}" for c in checks) if checks else "")
    doc = {"office": {"code": office_code, "name": office_name}, "device": None, "problem": problem, "event": event,
           "severity": severity, "at": now.isoformat(), "detail": message, "seen": seen, "check": list(checks),
           "reason": seen.get("reason"), "title": title[:300], "message": full, **(extra or {})}
    conn.execute(s.alerts.insert().values(
        created_at=now, office_code=office_code, device_id=None, device_serial=None, problem=problem,
        event=event, severity=severity, title=title[:300], message=full,
        details=json.dumps(doc, default=str), muted=False, attempts=0))


def add_alert(engine: Engine, **alert: Any) -> None:
    """insert_alert in its own transaction."""
    with writer(engine).begin() as conn:
        insert_alert(conn, **alert)


def last_alert_event(engine: Engine, problem: str, *, reason: str | None = None,
                     since: datetime | None = None) -> tuple[str, datetime] | None:
    """(event, created_at) of the newest alert row for ``problem`` (and ``reason`` in its details)."""
    a = s.alerts.c
    q = select(a.event, a.created_at, a.details).where(a.problem == problem)
    if since is not None:
        q = q.where(a.created_at >= since)
    with engine.connect() as conn:
        for event, created, details in conn.execute(q.order_by(a.id.desc()).limit(200)):
            if reason is None:
                return event, created
            try:
                if json.loads(details).get("reason") == reason:
                    return event, created
            except ValueError:
                continue
    return None


def rejected_rows(engine: Engine, limit: int = 100) -> list[dict[str, Any]]:
    """Rejected outbox rows with their punch and the upstream's reason (newest first)."""
    o, p = s.outbox.c, s.punches.c
    with engine.connect() as conn:
        rows = conn.execute(
            select(o.punch_id, o.attempts, o.last_error, o.created_at, p.device_id, p.device_serial,
                   p.device_user_id, p.device_time).join(s.punches, p.id == o.punch_id)
            .where(o.state == "rejected").order_by(o.punch_id.desc()).limit(limit)).mappings().all()
    return [dict(r) for r in rows]


def retry_rejected(engine: Engine, punch_ids: Iterable[int] | None = None) -> int:
    """Put rejected rows back in the queue (after the cause was fixed); returns how many."""
    o = s.outbox.c
    cond = o.state == "rejected"
    ids = list(punch_ids) if punch_ids is not None else None
    if ids is not None:
        cond = and_(cond, o.punch_id.in_(ids))
    with writer(engine).begin() as conn:
        result = conn.execute(update(s.outbox).where(cond)
                              .values(state="pending", attempts=0, next_attempt_at=utcnow()))
        return int(result.rowcount or 0)


def health_snapshot(engine: Engine, office_code: str) -> list[dict[str, Any]]:
    """This office's devices with their health rows, in the ingest API's device-health form."""
    d, h = s.devices.c, s.device_health.c
    with engine.connect() as conn:
        rows = conn.execute(
            select(s.devices, h.state.label("h_state"), h.state_since, h.consecutive_failures,
                   h.last_failure_at, h.last_error_kind, h.last_error, h.problems, h.muted_until, h.mute_reason)
            .select_from(s.devices.outerjoin(s.device_health, h.device_pk == d.pk))
            .where(d.office_code == office_code).order_by(d.device_id)).mappings().all()
    out = []
    for r in rows:
        try:
            problems = json.loads(r["problems"]) if r["problems"] else {}
        except ValueError:
            problems = {}
        out.append({
            "device_id": r["device_id"], "name": r["name"], "location": r["location"], "address": r["address"],
            "port": r["port"], "transport": r["transport"], "serial": r["serial"], "firmware": r["firmware"],
            "platform": r["platform"], "device_name": r["device_name"], "mac": r["mac"], "enabled": r["enabled"],
            "last_seen_at": _iso(r["last_seen_at"]), "last_ok_at": _iso(r["last_ok_at"]),
            "last_full_read_at": _iso(r["last_full_read_at"]), "last_record_count": r["last_record_count"],
            "last_user_count": r["last_user_count"], "records_cap": r["records_cap"], "users_cap": r["users_cap"],
            "last_punch_at": _iso(r["last_punch_at"]), "last_new_punch_at": _iso(r["last_new_punch_at"]),
            "clock_skew_s": r["clock_skew_s"],
            "health": {
                "state": r["h_state"] or "unknown", "state_since": _iso(r["state_since"]),
                "consecutive_failures": r["consecutive_failures"] or 0,
                "last_failure_at": _iso(r["last_failure_at"]), "last_error_kind": r["last_error_kind"],
                "last_error": r["last_error"], "problems": problems if isinstance(problems, dict) else {},
                "muted_until": _iso(r["muted_until"]), "mute_reason": r["mute_reason"],
            },
        })
    return out


def _iso(value: datetime | None) -> str | None:
    return value.isoformat(timespec="seconds").replace("+00:00", "Z") if value is not None else None


def next_attempt(now: datetime, delay_s: float) -> datetime:
    """now + delay (one place so callers agree on the arithmetic)."""
    return now + timedelta(seconds=delay_s)

"""SQL for device health, alert history, mutes, status and the daily report (device_health, alerts tables).

    gateway.health.monitor --DeviceHealth, alerts--> HealthRepo.record()   gateway.health.alerts --> mark_*
    gateway.web.status / gateway.web.metrics / gateway.health.report / fpgw alerts|mute --> the read methods here
    forwarder / central silent watch --> insert_alert() / add_alert() (gateway-wide alerts, no device)
    forwarder --> device_health_snapshot() (what gateway.wire.encode_device sends to the central)
Writes use ``writer(engine)`` (BEGIN IMMEDIATE on SQLite); every method is one short transaction.
The daily report counts punches per device-local day (device_time's date); for a device in the
office's zone (the default) that is the office-local day every other punch query uses.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, func, select, update
from sqlalchemy.engine import Connection

from gateway.models import DeviceHealth, problems_from_json
from gateway.store import schema as s
from gateway.store.db import writer
from gateway.store.schema import utcnow


@dataclass(frozen=True, slots=True)
class AlertRow:
    """One row of the alert history."""

    id: int
    created_at: datetime
    office_code: str
    device_id: str | None
    device_serial: str | None
    problem: str
    event: str
    severity: str
    title: str
    message: str
    details: dict[str, Any]
    muted: bool
    delivered_at: datetime | None
    attempts: int
    last_error: str | None


@dataclass(frozen=True, slots=True)
class DeviceRow:
    """What the devices table says about a device (for status, metrics, report)."""

    pk: int
    device_id: str
    name: str
    location: str
    address: str
    port: int
    serial: str | None
    firmware: str | None
    enabled: bool
    last_seen_at: datetime | None
    last_ok_at: datetime | None
    last_record_count: int | None
    last_user_count: int | None
    records_cap: int | None
    users_cap: int | None
    last_punch_at: datetime | None
    last_new_punch_at: datetime | None
    clock_skew_s: float | None
    muted_until: datetime | None
    mute_reason: str | None
    #: When the gateway first knew the device (the report shows no data before).
    created_at: datetime


class HealthRepo:
    """Health, alert and mute storage for one office."""

    def __init__(self, engine: Engine, office_code: str) -> None:
        self.engine = engine
        self.office_code = office_code
        self._writer = writer(engine)

    # -- devices -------------------------------------------------------------------------------------
    def _pk(self, conn: Connection, device_id: str) -> int:
        d = s.devices.c
        pk = conn.execute(select(d.pk).where(d.office_code == self.office_code, d.device_id == device_id)).scalar()
        if pk is None:
            raise KeyError(device_id)
        return int(pk)

    def devices(self) -> list[DeviceRow]:
        """Every device of the office with its last known values and mute state, ordered by id."""
        d, h = s.devices.c, s.device_health.c
        q = (select(d.pk, d.device_id, d.name, d.location, d.address, d.port, d.serial, d.firmware, d.enabled,
                    d.last_seen_at, d.last_ok_at, d.last_record_count, d.last_user_count, d.records_cap,
                    d.users_cap, d.last_punch_at, d.last_new_punch_at, d.clock_skew_s, h.muted_until,
                    h.mute_reason, d.created_at)
             .select_from(s.devices.outerjoin(s.device_health, h.device_pk == d.pk))
             .where(d.office_code == self.office_code).order_by(d.device_id))
        with self.engine.connect() as conn:
            return [DeviceRow(*tuple(row)) for row in conn.execute(q)]

    # -- health --------------------------------------------------------------------------------------
    def load_health(self) -> list[DeviceHealth]:
        """Persisted health of every device that has some (restored into the tracker at start)."""
        d, h = s.devices.c, s.device_health.c
        q = (select(d.device_id, h.state, h.state_since, h.consecutive_failures, h.failing_since, h.last_ok_at,
                    h.last_failure_at, h.last_error_kind, h.last_error, h.problems, h.last_new_punch_at,
                    d.last_seen_at, d.clock_skew_s, d.last_new_punch_at.label("store_new_punch_at"))
             .select_from(s.device_health.join(s.devices, h.device_pk == d.pk))
             .where(d.office_code == self.office_code))
        out = []
        with self.engine.connect() as conn:
            for r in conn.execute(q):
                try:
                    problems = problems_from_json(json.loads(r.problems or "{}"))
                except (ValueError, KeyError, TypeError):
                    problems = {}  # a damaged row must not stop the daemon; the next poll rebuilds it
                out.append(DeviceHealth(
                    device_id=r.device_id, state=r.state, state_since=r.state_since,
                    consecutive_failures=r.consecutive_failures, failing_since=r.failing_since,
                    last_ok_at=r.last_ok_at, last_seen_at=r.last_seen_at, last_failure_at=r.last_failure_at,
                    last_error_kind=r.last_error_kind, last_error=r.last_error, problems=problems,
                    last_new_punch_at=max((x for x in (r.last_new_punch_at, r.store_new_punch_at) if x is not None),
                                          default=None),
                    clock_skew_s=r.clock_skew_s))
        return out

    def record(self, healths: Iterable[DeviceHealth], alerts: Sequence[dict[str, Any]]) -> list[int]:
        """Upsert health rows and insert alert rows in ONE transaction; returns the alert ids in order."""
        now = utcnow()
        h = s.device_health.c
        ids: list[int] = []
        with self._writer.begin() as conn:
            for dh in healths:
                try:
                    pk = self._pk(conn, dh.device_id)
                except KeyError:
                    continue  # not (yet) in the devices table: nothing to attach health to
                values = {
                    "state": dh.state, "state_since": dh.state_since,
                    "consecutive_failures": dh.consecutive_failures, "failing_since": dh.failing_since,
                    "last_ok_at": dh.last_ok_at, "last_failure_at": dh.last_failure_at,
                    "last_error_kind": dh.last_error_kind, "last_error": dh.last_error,
                    "problems": json.dumps({n: p.to_json() for n, p in dh.problems.items()}, sort_keys=True),
                    "last_new_punch_at": dh.last_new_punch_at, "updated_at": now,
                }
                done = conn.execute(update(s.device_health).where(h.device_pk == pk).values(**values)).rowcount
                if not done:
                    conn.execute(s.device_health.insert().values(device_pk=pk, **values))
            for a in alerts:
                ids.append(int(conn.execute(s.alerts.insert().values(
                    created_at=a["created_at"], office_code=self.office_code, device_id=a["device_id"],
                    device_serial=a["device_serial"], problem=a["problem"], event=a["event"],
                    severity=a["severity"], title=a["title"][:300], message=a["message"],
                    details=json.dumps(a["details"], default=str, sort_keys=True), muted=a["muted"],
                    delivered_at=a.get("delivered_at"), attempts=0).returning(s.alerts.c.id)).scalar_one()))
        return ids

    # -- mutes -----------------------------------------------------------------------------------------
    def set_mute(self, device_id: str, until: datetime | None, reason: str | None = None) -> None:
        """Mute a device's alerts until ``until`` (None unmutes). KeyError for an unknown device."""
        now = utcnow()
        h = s.device_health.c
        with self._writer.begin() as conn:
            pk = self._pk(conn, device_id)
            values = {"muted_until": until, "mute_reason": (reason or None) if until else None, "updated_at": now}
            if not conn.execute(update(s.device_health).where(h.device_pk == pk).values(**values)).rowcount:
                conn.execute(s.device_health.insert().values(device_pk=pk, state="unknown", state_since=now,
                                                             consecutive_failures=0, problems="{}", **values))

    def mutes(self) -> dict[str, tuple[datetime, str | None]]:
        """device_id -> (muted_until, reason) for devices with a mute set (expired ones included)."""
        d, h = s.devices.c, s.device_health.c
        q = (select(d.device_id, h.muted_until, h.mute_reason)
             .select_from(s.device_health.join(s.devices, h.device_pk == d.pk))
             .where(d.office_code == self.office_code, h.muted_until.is_not(None)))
        with self.engine.connect() as conn:
            return {r.device_id: (r.muted_until, r.mute_reason) for r in conn.execute(q)}

    # -- alerts ---------------------------------------------------------------------------------------
    def mark_delivered(self, alert_id: int, at: datetime, attempts: int) -> None:
        """The alert reached every channel."""
        with self._writer.begin() as conn:
            conn.execute(update(s.alerts).where(s.alerts.c.id == alert_id)
                         .values(delivered_at=at, attempts=attempts, last_error=None))

    def mark_failed(self, alert_id: int, attempts: int, error: str) -> None:
        """A delivery attempt failed (the alert stays pending while attempts < max)."""
        with self._writer.begin() as conn:
            conn.execute(update(s.alerts).where(s.alerts.c.id == alert_id)
                         .values(attempts=attempts, last_error=error[:1000]))

    def pending_alerts(self, max_attempts: int) -> list[AlertRow]:
        """Alerts not muted, not delivered and not given up on, oldest first."""
        a = s.alerts.c
        return self._alerts(select(s.alerts).where(
            a.office_code == self.office_code, a.delivered_at.is_(None), a.muted.is_(False),
            a.attempts < max_attempts).order_by(a.id))

    def alert(self, alert_id: int) -> AlertRow | None:
        """One alert by id."""
        rows = self._alerts(select(s.alerts).where(s.alerts.c.id == alert_id))
        return rows[0] if rows else None

    def list_alerts(self, *, device_id: str | None = None, since: datetime | None = None, limit: int = 200,
                    problems: Sequence[str] | None = None) -> list[AlertRow]:
        """Alert history, newest first."""
        a = s.alerts.c
        q = select(s.alerts).where(a.office_code == self.office_code)
        if device_id:
            q = q.where(a.device_id == device_id)
        if since:
            q = q.where(a.created_at >= since)
        if problems:
            q = q.where(a.problem.in_(list(problems)))
        return self._alerts(q.order_by(a.id.desc()).limit(limit))

    def _alerts(self, q: Any) -> list[AlertRow]:
        with self.engine.connect() as conn:
            return [AlertRow(id=r.id, created_at=r.created_at, office_code=r.office_code, device_id=r.device_id,
                             device_serial=r.device_serial, problem=r.problem, event=r.event, severity=r.severity,
                             title=r.title, message=r.message, details=_json(r.details), muted=bool(r.muted),
                             delivered_at=r.delivered_at, attempts=r.attempts, last_error=r.last_error)
                    for r in conn.execute(q)]

    # -- the gateway's own health (gateway.health.gateway) ---------------------------------------------
    def add_gateway_alert(self, **alert: Any) -> None:
        """Queue a gateway-wide alert of this office (insert_alert) in its own transaction."""
        add_alert(self.engine, office_code=self.office_code, **alert)

    def probe_write(self) -> None:
        """Take the write lock and read one row, then roll back: raises StorageError while the database is
        locked or unreachable (it cannot prove free space: nothing is allocated)."""
        with self._writer.connect() as conn, conn.begin() as tx:
            conn.execute(select(func.count()).select_from(s.devices))
            tx.rollback()

    def database_disk_usage(self) -> tuple[int, int] | None:
        """(free, total) bytes of the filesystem holding a SQLite database file; None for PostgreSQL (its
        disk is the server's) or an in-memory database. Raises OSError when the folder cannot be read."""
        url = self.engine.url
        if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
            return None
        usage = shutil.disk_usage(Path(url.database).resolve().parent)
        return usage.free, usage.total

    # -- outbox (owned by forwarding; read-only gauges here) ---------------------------------------------
    def outbox_depth(self) -> tuple[int, datetime | None]:
        """(pending outbox rows, created_at of the oldest one)."""
        o = s.outbox.c
        with self.engine.connect() as conn:
            row = conn.execute(select(func.count(), func.min(o.created_at)).where(o.state == "pending")).one()
        oldest = row[1]
        if isinstance(oldest, str):  # SQLite aggregate loses the column type
            oldest = s.UtcDateTime().process_result_value(datetime.fromisoformat(oldest), self.engine.dialect)
        return int(row[0]), oldest

    # -- report ---------------------------------------------------------------------------------------
    def punches_per_day(self, day_from: str, day_to: str) -> dict[tuple[str, str], tuple[int, str, str]]:
        """(device_id, "YYYY-MM-DD" device-local day) -> (punches, first "HH:MM:SS", last "HH:MM:SS")."""
        p = s.punches.c
        day = func.substr(p.device_time, 1, 10)
        q = (select(p.device_id, day.label("day"), func.count(), func.min(p.device_time), func.max(p.device_time))
             .where(p.office_code == self.office_code, p.device_time >= day_from,
                    p.device_time < day_to + "~")  # "~" sorts after any "YYYY-MM-DD HH:MM:SS" of day_to
             .group_by(p.device_id, day))
        with self.engine.connect() as conn:
            return {(r[0], r[1]): (int(r[2]), r[3][11:], r[4][11:]) for r in conn.execute(q)}


def _json(text: str | None) -> dict[str, Any]:
    try:
        value = json.loads(text or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


# -- gateway-wide alerts (forwarding, silent gateways) and the health snapshot -------------------------

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


def device_health_snapshot(engine: Engine, office_code: str | None) -> list[dict[str, Any]]:
    """This office's devices (None: every office's, a tier's report) with their health rows (``h_state``;
    ``problems`` as a dict): what the forwarder sends the central through gateway.wire.encode_device."""
    d, h = s.devices.c, s.device_health.c
    q = (select(s.devices, h.state.label("h_state"), h.state_since, h.consecutive_failures,
                h.last_failure_at, h.last_error_kind, h.last_error, h.problems, h.muted_until, h.mute_reason)
         .select_from(s.devices.outerjoin(s.device_health, h.device_pk == d.pk)))
    if office_code is not None:
        q = q.where(d.office_code == office_code)
    with engine.connect() as conn:
        rows = conn.execute(q.order_by(d.office_code, d.device_id)).mappings().all()
    out = []
    for r in rows:
        item = dict(r)
        try:
            problems = json.loads(r["problems"]) if r["problems"] else {}
        except ValueError:
            problems = {}
        item["problems"] = problems if isinstance(problems, dict) else {}
        out.append(item)
    return out


# -- device overview (`fpgw devices`) -----------------------------------------------------------------

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

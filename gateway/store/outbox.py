"""Office side of forwarding: the outbox queries the forwarder, the status page and the CLI use.

    Store.save_poll(forward=True) --outbox rows--> Outbox.claim_batch() --> forwarder --> upstream
                                                   Outbox.settle()  <-- per-punch accepted / rejected / kept
The outbox is the only coupling between polling and forwarding: polls insert rows in the punch
transaction (at a central that is a tier, so does its ingest: gateway.store.central), the forwarder
deletes them once the upstream accepted them. Nothing here blocks a poll for longer than one short
write transaction.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, NamedTuple

import structlog
from sqlalchemy import Engine, and_, delete, func, select, update

from gateway.store import schema as s
from gateway.store.db import writer
from gateway.store.health import add_alert, device_health_snapshot, insert_alert, last_alert_event
from gateway.store.schema import utcnow

log = structlog.get_logger(__name__)


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
    #: The stored punch (punches-table columns); gateway.wire.encode_punch gives its wire form.
    punch: dict[str, Any]


_PUNCH_COLUMNS = ("office_code", "device_id", "device_serial", "device_user_id", "device_time", "local_time",
                  "utc_time", "timezone", "state", "state_name", "verify", "verify_name", "uid", "workcode",
                  "raw_time", "employee_id", "flags", "occurrence")


class Outbox:
    """The office's outbox queue, plus the gateway-wide alerts and the health snapshot the forwarder needs:
    the forwarder's one repository (it reads nothing else of the database)."""

    def __init__(self, engine: Engine, office_code: str) -> None:
        self.engine = engine
        self.office_code = office_code

    def stats(self, now: datetime | None = None) -> OutboxStats:
        """(depth, oldest_age_s, rejected) of the outbox; oldest_age_s is None when nothing is pending."""
        o = s.outbox.c
        now = now or utcnow()
        with self.engine.connect() as conn:
            depth, oldest = conn.execute(select(func.count(), func.min(o.created_at))
                                         .where(o.state == "pending")).one()
            rejected = conn.execute(select(func.count()).where(o.state == "rejected")).scalar_one()
        age = max(0.0, (now - oldest).total_seconds()) if oldest is not None else None
        return OutboxStats(int(depth), age, int(rejected))



    def claim_batch(self, limit: int, now: datetime | None = None) -> list[OutboxItem]:
        """The oldest pending rows due now (at most ``limit``), with their punches.

        Only one forwarder job runs at a time (max_instances=1), so reading is claiming; rows stay in the
        outbox until settle() records the upstream's answer, hence a crash mid-send only means a resend.
        """
        o, p = s.outbox.c, s.punches.c
        now = now or utcnow()
        cols = [p[name] for name in _PUNCH_COLUMNS]
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(o.punch_id, o.attempts, p.id.label("stored_id"), *cols)
                .outerjoin(s.punches, p.id == o.punch_id)
                .where(o.state == "pending", o.next_attempt_at <= now)
                .order_by(o.punch_id).limit(limit)).mappings().all()
        orphans = [r["punch_id"] for r in rows if r["stored_id"] is None]
        if orphans:
            self._drop_orphans(orphans)
        return [OutboxItem(r["punch_id"], r["attempts"], {k: r[k] for k in _PUNCH_COLUMNS})
                for r in rows if r["stored_id"] is not None]

    def _drop_orphans(self, punch_ids: list[int]) -> None:
        """Drop outbox rows whose punch is gone, so they neither block nor count as a backlog forever.

        The outbox has no foreign key (migration 0007_punch_indexes): fpgw never deletes punches, but an
        operator can (a restore, a hand repair), and there is nothing left to send for such a row.
        """
        o = s.outbox.c
        with writer(self.engine).begin() as conn:
            # Re-checked in the write transaction: only rows whose punch is still missing.
            conn.execute(delete(s.outbox).where(o.punch_id.in_(punch_ids),
                                                ~select(s.punches.c.id).where(s.punches.c.id == o.punch_id).exists()))
        log.warning("outbox rows without their punch dropped (punches deleted outside fpgw)", rows=len(punch_ids))



    def settle(self, *, accepted: Iterable[int] = (), rejected: Mapping[int, str] | None = None,
               kept: Mapping[int, datetime] | None = None, error: str | None = None,
               alerts: Sequence[Mapping[str, Any]] = ()) -> None:
        """Record one upstream answer in ONE transaction: delete accepted rows, set rejected rows aside
        with their reason, push kept rows to their next attempt, and insert the alerts to send."""
        o = s.outbox.c
        accepted = list(accepted)
        with writer(self.engine).begin() as conn:
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



    def rejected(self, limit: int = 100) -> list[dict[str, Any]]:
        """Rejected outbox rows with their punch and the upstream's reason (newest first)."""
        o, p = s.outbox.c, s.punches.c
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(o.punch_id, o.attempts, o.last_error, o.created_at, p.device_id, p.device_serial,
                       p.device_user_id, p.device_time).join(s.punches, p.id == o.punch_id)
                .where(o.state == "rejected").order_by(o.punch_id.desc()).limit(limit)).mappings().all()
        return [dict(r) for r in rows]



    def retry_rejected(self, punch_ids: Iterable[int] | None = None) -> int:
        """Put rejected rows back in the queue (after the cause was fixed); returns how many."""
        o = s.outbox.c
        cond = o.state == "rejected"
        ids = list(punch_ids) if punch_ids is not None else None
        if ids is not None:
            cond = and_(cond, o.punch_id.in_(ids))
        with writer(self.engine).begin() as conn:
            result = conn.execute(update(s.outbox).where(cond)
                                  .values(state="pending", attempts=0, next_attempt_at=utcnow()))
            return int(result.rowcount or 0)

    def add_alert(self, **alert: Any) -> None:
        """Queue a gateway-wide alert of this office (gateway.store.health.insert_alert) in its own transaction."""
        add_alert(self.engine, office_code=self.office_code, **alert)

    def last_alert_event(self, problem: str, *, reason: str | None = None,
                         since: datetime | None = None) -> tuple[str, datetime] | None:
        """(event, created_at) of the newest alert for ``problem`` (and ``reason``)."""
        return last_alert_event(self.engine, problem, reason=reason, since=since)

    def device_health_snapshot(self, *, every_office: bool = False) -> list[dict[str, Any]]:
        """This office's devices and their health, as forwarded to the central (``every_office``: a tier's
        report, the devices of all the offices it holds)."""
        return device_health_snapshot(self.engine, None if every_office else self.office_code)


def next_attempt(now: datetime, delay_s: float) -> datetime:
    """now + delay (one place so callers agree on the arithmetic)."""
    return now + timedelta(seconds=delay_s)

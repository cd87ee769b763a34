"""Enrolment backups and their audit: the only SQL of issue 12 (tables enrol_snapshot, enrol_user,
enrol_template, enrol_audit; migration 0008_enrolment).

    gateway.enrol.backup  --save_snapshot(rows already sealed)--> one transaction: snapshot + rows + audit
    gateway.enrol.restore <--latest()/load()--                     (older snapshots of the device trimmed)
    gateway.enrol.status  <--heads()/audit_rows()--
    fpgw enrol rotate-key <--sealed_rows()/reseal()--
    gateway.enrol.sync    <--sync_memory()/save_sync_memory()--> kv rows ``enrol_sync:*`` (previous view)

This module never sees a template or a password in the clear: ``secret`` and ``blob`` arrive sealed by
gateway/enrol/crypto.py and leave as they were stored. Their dataclass fields are kept out of ``repr``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, delete, func, inspect, literal, select, update
from sqlalchemy.exc import OperationalError, ProgrammingError

from gateway.models import parse_instant
from gateway.store import schema as s
from gateway.store.db import writer
from gateway.store.schema import utcnow

#: Snapshots kept per device (a week of daily backups); older ones are deleted with their rows.
KEEP_SNAPSHOTS = 7
_INSERT_BATCH = 500


@dataclass(frozen=True, slots=True)
class SnapshotHead:
    """One backup of one terminal, without its rows."""

    id: int
    device_id: str
    serial: str
    taken_at: datetime
    algorithm: int
    user_layout: int
    users: int
    templates: int


@dataclass(frozen=True, slots=True)
class UserRow:
    """A backed-up user; ``secret`` is the sealed password (None: the user has none)."""

    uid: int
    user_id: str
    name: str
    privilege: int
    card: int
    group_id: str
    has_password: bool
    secret: bytes | None = field(default=None, repr=False)
    key_id: str = ""


@dataclass(frozen=True, slots=True)
class TemplateRow:
    """A backed-up template: plain size and flags, the template itself sealed in ``blob``."""

    uid: int
    finger: int
    valid: int
    size: int
    key_id: str
    blob: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class AuditRow:
    """Who did what with which terminal's enrolments, and how many."""

    at: datetime
    actor: str
    action: str
    device_id: str
    users: int
    templates: int
    ok: bool
    detail: str


@dataclass(frozen=True, slots=True)
class SealedRef:
    """Where a sealed value lives, for key rotation: table, primary key, and the blob."""

    table: str
    snapshot_id: int
    uid: int
    finger: int
    serial: str
    key_id: str
    blob: bytes = field(repr=False)


def _head(row: Sequence[object]) -> SnapshotHead:
    return SnapshotHead(*row)  # type: ignore[arg-type]


_HEAD_COLS = (s.enrol_snapshot.c.id, s.enrol_snapshot.c.device_id, s.enrol_snapshot.c.serial,
              s.enrol_snapshot.c.taken_at, s.enrol_snapshot.c.algorithm, s.enrol_snapshot.c.user_layout,
              s.enrol_snapshot.c.users, s.enrol_snapshot.c.templates)


class EnrolRepo:
    """Backups of users and sealed templates per terminal, and the audit of every backup, restore and read."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._writer = writer(engine)

    def ready(self) -> bool:
        """Whether the database has the enrolment tables (migration 0008); listings never migrate."""
        return bool(inspect(self.engine).has_table(s.enrol_snapshot.name))

    def save_snapshot(self, device_id: str, serial: str, *, algorithm: int, user_layout: int,
                      users: Sequence[UserRow], templates: Sequence[TemplateRow], actor: str,
                      taken_at: datetime | None = None, keep: int = KEEP_SNAPSHOTS,
                      carry: Carry | None = None) -> SnapshotHead:
        """Store one complete backup and its audit row in one transaction; trims the device's oldest beyond
        ``keep`` (never the one with the most users).

        ``carry`` (an incremental backup): the templates of snapshot ``carry.source`` whose user has the same uid
        and PIN in both backups and is not in ``carry.reread`` are copied over as stored (still sealed: each blob
        is bound to serial, uid and finger, which the copy keeps). When the copy does not find exactly
        ``carry.expected`` templates, nothing is stored and CarryMismatch is raised. Without ``carry`` the backup
        is a full one: its time is remembered (kv ``enrol_full:<device>``) for the next full-backup decision.
        """
        taken = taken_at or utcnow()
        snap = s.enrol_snapshot
        with self._writer.begin() as conn:
            snapshot_id = int(conn.execute(snap.insert().values(
                device_id=device_id, serial=serial, taken_at=taken, algorithm=algorithm, user_layout=user_layout,
                users=len(users), templates=len(templates)).returning(snap.c.id)).scalar_one())
            for chunk in _chunks([{"snapshot_id": snapshot_id, "uid": u.uid, "user_id": u.user_id, "name": u.name,
                                   "privilege": u.privilege, "card": u.card, "group_id": u.group_id,
                                   "has_password": u.has_password, "secret": u.secret, "key_id": u.key_id}
                                  for u in users]):
                conn.execute(s.enrol_user.insert(), chunk)
            for chunk in _chunks([{"snapshot_id": snapshot_id, "uid": t.uid, "finger": t.finger, "valid": t.valid,
                                   "size": t.size, "key_id": t.key_id, "blob": t.blob} for t in templates]):
                conn.execute(s.enrol_template.insert(), chunk)
            total = len(templates)
            if carry is not None:
                carried = _carry_templates(conn, carry, snapshot_id)
                if carried != carry.expected:
                    raise CarryMismatch(f"backup #{carry.source} holds {carried} template(s) of the unchanged "
                                        f"users, {carry.expected} expected")
                total += carried
                conn.execute(update(snap).where(snap.c.id == snapshot_id).values(templates=total))
                what = (f"incremental backup #{snapshot_id} (from #{carry.source}: {carried} template(s) carried "
                        f"over, {len(templates)} read), serial {serial}")
            else:
                what = f"backup #{snapshot_id}, serial {serial}"
                _put_kv(conn, f"{FULL_KV_PREFIX}{device_id}", {"at": taken.isoformat(), "snapshot": snapshot_id},
                        taken)
            conn.execute(s.enrol_audit.insert().values(
                at=taken, actor=actor[:64], action="backup", device_id=device_id, users=len(users),
                templates=total, ok=True, detail=what[:500]))
            old = [row[0] for row in conn.execute(
                select(snap.c.id).where(snap.c.device_id == device_id)
                .order_by(snap.c.taken_at.desc(), snap.c.id.desc()).offset(max(1, keep)))]
            # Never trim the fullest backup: after a factory reset, daily backups of the empty terminal must
            # not push the last good one out.
            fullest = conn.execute(select(snap.c.id).where(snap.c.device_id == device_id)
                                   .order_by(snap.c.users.desc(), snap.c.id.desc()).limit(1)).scalar()
            old = [i for i in old if i != fullest]
            if old:
                # Rows first: SQLite enforces the cascade only with foreign_keys on (db.py sets it), PostgreSQL always.
                conn.execute(delete(s.enrol_template).where(s.enrol_template.c.snapshot_id.in_(old)))
                conn.execute(delete(s.enrol_user).where(s.enrol_user.c.snapshot_id.in_(old)))
                conn.execute(delete(snap).where(snap.c.id.in_(old)))
        return SnapshotHead(snapshot_id, device_id, serial, taken, algorithm, user_layout, len(users), total)

    def last_full_backup(self, device_id: str) -> datetime | None:
        """When the device's last full backup (every template read) was stored; None: never (or unknown)."""
        value = self._kv(f"{FULL_KV_PREFIX}{device_id}")
        try:
            return parse_instant(str(value["at"])) if isinstance(value, dict) else None
        except (KeyError, ValueError):
            return None

    # -- the user-count drop problem (gateway.health): an operator's acknowledgement ---------------------
    def acknowledge_drop(self, device_id: str, users: int | None = None) -> datetime:
        """Record that an operator accepted a device's user-count drop (``fpgw enrol ack-drop``); the daemon's
        health monitor closes the open ``user_drop`` problem at its next sweep. Returns the time recorded."""
        now = utcnow()
        with self._writer.begin() as conn:
            _put_kv(conn, f"{DROP_ACK_KV_PREFIX}{device_id}", {"at": now.isoformat(), "users": users}, now)
        return now

    def drop_acknowledgements(self) -> dict[str, datetime]:
        """device id -> when its user-count drop was last acknowledged."""
        try:
            with self.engine.connect() as conn:
                rows = conn.execute(select(s.kv.c.key, s.kv.c.value).where(
                    func.substr(s.kv.c.key, 1, len(DROP_ACK_KV_PREFIX)) == DROP_ACK_KV_PREFIX)).all()
        except (OperationalError, ProgrammingError):  # not migrated yet: no acknowledgement
            return {}
        out: dict[str, datetime] = {}
        for key, value in rows:
            try:
                out[key[len(DROP_ACK_KV_PREFIX):]] = parse_instant(str(json.loads(value)["at"]))
            except (ValueError, KeyError, TypeError):  # a damaged row is no acknowledgement
                continue
        return out

    def _kv(self, key: str) -> Any:
        with self.engine.connect() as conn:
            value = conn.execute(select(s.kv.c.value).where(s.kv.c.key == key)).scalar()
        try:
            return json.loads(value) if value is not None else None
        except ValueError:
            return None

    def audit(self, actor: str, action: str, device_id: str, *, users: int = 0, templates: int = 0,
              ok: bool = True, detail: str = "") -> None:
        """Record one use of enrolment data (restore, read, rotate-key, a failed backup)."""
        with self._writer.begin() as conn:
            conn.execute(s.enrol_audit.insert().values(
                at=utcnow(), actor=actor[:64], action=action[:16], device_id=device_id[:64], users=users,
                templates=templates, ok=ok, detail=detail[:500]))

    def latest(self, device_id: str) -> SnapshotHead | None:
        """The newest backup of a device."""
        snap = s.enrol_snapshot
        with self.engine.connect() as conn:
            row = conn.execute(select(*_HEAD_COLS).where(snap.c.device_id == device_id)
                               .order_by(snap.c.taken_at.desc(), snap.c.id.desc()).limit(1)).first()
        return _head(row) if row is not None else None

    def history(self, device_id: str, limit: int = KEEP_SNAPSHOTS) -> list[SnapshotHead]:
        """The device's backups, newest first."""
        snap = s.enrol_snapshot
        with self.engine.connect() as conn:
            rows = conn.execute(select(*_HEAD_COLS).where(snap.c.device_id == device_id)
                                .order_by(snap.c.taken_at.desc(), snap.c.id.desc()).limit(limit)).all()
        return [_head(r) for r in rows]

    def users(self, snapshot_id: int) -> list[UserRow]:
        """The users of one backup, in uid order."""
        u = s.enrol_user
        with self.engine.connect() as conn:
            rows = conn.execute(select(u.c.uid, u.c.user_id, u.c.name, u.c.privilege, u.c.card, u.c.group_id,
                                       u.c.has_password, u.c.secret, u.c.key_id)
                                .where(u.c.snapshot_id == snapshot_id).order_by(u.c.uid)).all()
        return [UserRow(*r) for r in rows]

    def templates(self, snapshot_id: int) -> list[TemplateRow]:
        """The sealed templates of one backup, by uid and finger."""
        t = s.enrol_template
        with self.engine.connect() as conn:
            rows = conn.execute(select(t.c.uid, t.c.finger, t.c.valid, t.c.size, t.c.key_id, t.c.blob)
                                .where(t.c.snapshot_id == snapshot_id).order_by(t.c.uid, t.c.finger)).all()
        return [TemplateRow(*r) for r in rows]

    def template_counts(self, snapshot_id: int) -> dict[int, int]:
        """uid -> templates in one backup (users missing here have none)."""
        t = s.enrol_template
        with self.engine.connect() as conn:
            rows = conn.execute(select(t.c.uid, func.count()).where(t.c.snapshot_id == snapshot_id)
                                .group_by(t.c.uid)).all()
        return {int(uid): int(n) for uid, n in rows}

    def template_stats(self, snapshot_id: int) -> dict[int, tuple[int, int]]:
        """uid -> (templates, their plain sizes added up) in one backup, for the incremental backup's plan."""
        t = s.enrol_template
        with self.engine.connect() as conn:
            rows = conn.execute(select(t.c.uid, func.count(), func.sum(t.c.size)).where(t.c.snapshot_id == snapshot_id)
                                .group_by(t.c.uid)).all()
        return {int(uid): (int(n), int(size or 0)) for uid, n, size in rows}

    def audit_rows(self, device_id: str | None = None, limit: int = 50) -> list[AuditRow]:
        """Newest audit rows first."""
        a = s.enrol_audit
        stmt = select(a.c.at, a.c.actor, a.c.action, a.c.device_id, a.c.users, a.c.templates, a.c.ok, a.c.detail)
        if device_id is not None:
            stmt = stmt.where(a.c.device_id == device_id)
        with self.engine.connect() as conn:
            rows = conn.execute(stmt.order_by(a.c.id.desc()).limit(max(1, min(limit, 10_000)))).all()
        return [AuditRow(*r) for r in rows]

    def last_backup_attempt(self, device_id: str) -> AuditRow | None:
        """The newest backup audit row of a device, failed or not."""
        a = s.enrol_audit
        with self.engine.connect() as conn:
            row = conn.execute(select(a.c.at, a.c.actor, a.c.action, a.c.device_id, a.c.users, a.c.templates, a.c.ok,
                                      a.c.detail).where(a.c.device_id == device_id, a.c.action == "backup")
                               .order_by(a.c.id.desc()).limit(1)).first()
        return AuditRow(*row) if row is not None else None

    def last_ok_backups(self) -> dict[str, SnapshotHead]:
        """device id -> its newest backup."""
        snap = s.enrol_snapshot
        newest = (select(snap.c.device_id, func.max(snap.c.id).label("id")).group_by(snap.c.device_id)).subquery()
        with self.engine.connect() as conn:
            rows = conn.execute(select(*_HEAD_COLS).join(newest, newest.c.id == snap.c.id)).all()
        return {r[1]: _head(r) for r in rows}

    def overview(self, drop_warn_ratio: float) -> dict[str, dict[str, Any]]:
        """device id -> its newest backup (time, users, templates) and, when the user count fell sharply since the
        backup before, ``user_drop`` = [before, now]; empty when the database predates the enrolment tables."""
        snap = s.enrol_snapshot
        ranked = select(snap.c.device_id, snap.c.taken_at, snap.c.users, snap.c.templates,
                        func.row_number().over(partition_by=snap.c.device_id,
                                               order_by=(snap.c.taken_at.desc(), snap.c.id.desc())).label("n")
                        ).subquery()
        try:
            with self.engine.connect() as conn:
                rows = conn.execute(select(ranked).where(ranked.c.n <= 2)
                                    .order_by(ranked.c.device_id, ranked.c.n)).all()
        except (OperationalError, ProgrammingError):
            return {}
        out: dict[str, dict[str, Any]] = {}
        for device_id, taken_at, users, templates, n in rows:
            if n == 1:
                out[device_id] = {"at": taken_at, "users": users, "templates": templates, "user_drop": None}
            else:
                now = out[device_id]["users"]
                if users > 1 and now < users and users - now >= max(2, drop_warn_ratio * users):
                    out[device_id]["user_drop"] = [users, now]
        return out

    def last_backup_times(self) -> dict[str, datetime]:
        """device id -> time of its newest backup; empty when the database predates the enrolment tables."""
        try:
            return {device_id: head.taken_at for device_id, head in self.last_ok_backups().items()}
        except (OperationalError, ProgrammingError):  # not migrated yet (listings never migrate)
            return {}

    # -- key rotation ---------------------------------------------------------------------------
    def sealed_rows(self, not_key: str) -> Iterator[SealedRef]:
        """Every sealed value not sealed with ``not_key`` (passwords and templates), with its row's serial."""
        snap, u, t = s.enrol_snapshot, s.enrol_user, s.enrol_template
        with self.engine.connect() as conn:
            for sid, uid, serial, key_id, blob in conn.execute(
                    select(u.c.snapshot_id, u.c.uid, snap.c.serial, u.c.key_id, u.c.secret)
                    .join(snap, snap.c.id == u.c.snapshot_id)
                    .where(u.c.secret.is_not(None), u.c.key_id != not_key)).all():
                yield SealedRef("user", sid, uid, -1, serial, key_id, blob)
            for sid, uid, finger, serial, key_id, blob in conn.execute(
                    select(t.c.snapshot_id, t.c.uid, t.c.finger, snap.c.serial, t.c.key_id, t.c.blob)
                    .join(snap, snap.c.id == t.c.snapshot_id).where(t.c.key_id != not_key)).all():
                yield SealedRef("template", sid, uid, finger, serial, key_id, blob)

    def reseal(self, refs: Iterable[tuple[SealedRef, str, bytes]]) -> int:
        """Replace sealed values (ref, new key id, new blob) in one transaction. Returns how many."""
        n = 0
        with self._writer.begin() as conn:
            for ref, key_id, blob in refs:
                if ref.table == "user":
                    u = s.enrol_user
                    conn.execute(update(u).where(u.c.snapshot_id == ref.snapshot_id, u.c.uid == ref.uid)
                                 .values(secret=blob, key_id=key_id))
                else:
                    t = s.enrol_template
                    conn.execute(update(t).where(t.c.snapshot_id == ref.snapshot_id, t.c.uid == ref.uid,
                                                 t.c.finger == ref.finger).values(blob=blob, key_id=key_id))
                n += 1
        return n

    def key_ids(self) -> dict[str, int]:
        """key id -> sealed values that name it (templates and passwords)."""
        u, t = s.enrol_user, s.enrol_template
        out: dict[str, int] = {}
        with self.engine.connect() as conn:
            for key_id, n in conn.execute(select(t.c.key_id, func.count()).group_by(t.c.key_id)).all():
                out[key_id] = out.get(key_id, 0) + int(n)
            for key_id, n in conn.execute(select(u.c.key_id, func.count()).where(u.c.secret.is_not(None))
                                          .group_by(u.c.key_id)).all():
                out[key_id] = out.get(key_id, 0) + int(n)
        return out


    # -- office sync (gateway/enrol/sync.py): its memory lives in the kv table, no migration -----------
    def sync_memory(self) -> dict[str, Any]:
        """What the previous office sync left (kv rows ``enrol_sync:*``): device id -> its view (PIN -> name and
        the PINs withheld from it), and ``conflicts``: the conflicts already reported. Names and PINs only."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(s.kv.c.key, s.kv.c.value)
                                .where(func.substr(s.kv.c.key, 1, len(SYNC_KV_PREFIX)) == SYNC_KV_PREFIX)).all()
        out: dict[str, Any] = {}
        for key, value in rows:
            try:
                out[key[len(SYNC_KV_PREFIX):]] = json.loads(value)
            except ValueError:  # a damaged row reads as "no previous view": the sync then deletes nothing
                continue
        return out

    def save_sync_memory(self, entries: dict[str, Any]) -> None:
        """Replace the given entries of the sync memory (device id or ``conflicts`` -> JSON value), one transaction."""
        now = utcnow()
        with self._writer.begin() as conn:
            for name, value in entries.items():
                key = f"{SYNC_KV_PREFIX}{name}"[:100]
                conn.execute(delete(s.kv).where(s.kv.c.key == key))
                conn.execute(s.kv.insert().values(key=key, value=json.dumps(value, sort_keys=True), updated_at=now))


#: kv keys of the office sync's memory: ``enrol_sync:<device id>`` and ``enrol_sync:conflicts``.
SYNC_KV_PREFIX = "enrol_sync:"
#: kv key of a device's last full backup (``enrol_full:<device id>``: time and snapshot id).
FULL_KV_PREFIX = "enrol_full:"
#: kv key of an operator's acknowledgement of a device's user-count drop (``enrol_drop_ack:<device id>``).
DROP_ACK_KV_PREFIX = "enrol_drop_ack:"


@dataclass(frozen=True, slots=True)
class Carry:
    """An incremental backup's carry-over: from which snapshot, which uids not (read again), how many."""

    source: int
    reread: frozenset[int]
    expected: int


class CarryMismatch(RuntimeError):
    """The previous backup no longer holds what an incremental backup planned to carry over (nothing stored)."""


def _carry_templates(conn: Connection, carry: Carry, snapshot_id: int) -> int:
    """INSERT ... SELECT of the unchanged users' sealed templates into the new snapshot; returns how many."""
    t, old_u, new_u = s.enrol_template, s.enrol_user.alias("old_u"), s.enrol_user.alias("new_u")
    query = (select(literal(snapshot_id), t.c.uid, t.c.finger, t.c.valid, t.c.size, t.c.key_id, t.c.blob)
             .select_from(t.join(old_u, (old_u.c.snapshot_id == t.c.snapshot_id) & (old_u.c.uid == t.c.uid))
                          .join(new_u, (new_u.c.snapshot_id == snapshot_id) & (new_u.c.uid == t.c.uid)
                                & (new_u.c.user_id == old_u.c.user_id)))
             .where(t.c.snapshot_id == carry.source))
    if carry.reread:
        query = query.where(t.c.uid.not_in(sorted(carry.reread)))
    before = conn.execute(select(func.count()).select_from(t).where(t.c.snapshot_id == snapshot_id)).scalar_one()
    conn.execute(t.insert().from_select(["snapshot_id", "uid", "finger", "valid", "size", "key_id", "blob"], query))
    # Counted, not rowcount: psycopg reports -1 for an INSERT ... SELECT.
    after = conn.execute(select(func.count()).select_from(t).where(t.c.snapshot_id == snapshot_id)).scalar_one()
    return int(after) - int(before)


def _put_kv(conn: Connection, key: str, value: Any, now: datetime) -> None:
    conn.execute(delete(s.kv).where(s.kv.c.key == key[:100]))
    conn.execute(s.kv.insert().values(key=key[:100], value=json.dumps(value, sort_keys=True), updated_at=now))


def _chunks(rows: list[dict[str, object]]) -> Iterator[list[dict[str, object]]]:
    for i in range(0, len(rows), _INSERT_BATCH):
        yield rows[i:i + _INSERT_BATCH]

"""What push terminals uploaded of their enrolments: the ``enrol_push`` table (migration 0014_enrol_push).

    gateway.push.receiver --OPERLOG / BIODATA upload, sealed--> PushEnrolRepo.save_upload (one transaction)
    gateway.enrol.push.PushEnrolSession <--rows()-- (a backup snapshot, a restore's read-back, a sync view)
                                         --forget_unseen()/drop_user()--> after a full upload / a confirmed delete

Like gateway/store/enrol.py this module never sees a template or password in the clear: ``blob`` arrives sealed
and leaves as stored. The terminal's fingerprint algorithm version (its INFO's fpAlg, or a BIODATA MajorVer) is
one kv row, ``push_enrol_alg:<serial>``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import Engine, and_, delete, select, update

from gateway.store import schema as s
from gateway.store.db import writer
from gateway.store.schema import utcnow

_ALGORITHM = "push_enrol_alg:"
#: The user record's ``finger``.
USER_ROW = -1


@dataclass(frozen=True, slots=True)
class PushEnrolRow:
    """One uploaded user record (finger -1, ``blob`` = sealed password or None) or template (``blob`` sealed)."""

    pin: str
    finger: int
    name: str = ""
    privilege: int = 0
    card: int = 0
    group_id: str = ""
    valid: int = 1
    size: int = 0
    key_id: str = ""
    blob: bytes | None = field(default=None, repr=False)


class PushEnrolRepo:
    """The enrolment mirror of push terminals, keyed by serial and PIN."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._writer = writer(engine)

    def save_upload(self, serial: str, users: Sequence[PushEnrolRow], templates: Sequence[PushEnrolRow],
                    at: datetime | None = None) -> None:
        """Insert or replace the rows of one upload (a user record keeps the terminal's templates; a template
        whose user was never uploaded is kept too: its USER line may come in a later upload)."""
        now = at or utcnow()
        t = s.enrol_push
        with self._writer.begin() as conn:
            for row in [*users, *templates]:
                values = dict(name=row.name[:64], privilege=row.privilege, card=row.card, group_id=row.group_id[:16],
                              valid=row.valid, size=row.size, key_id=row.key_id, blob=row.blob, seen_at=now)
                where = and_(t.c.serial == serial, t.c.pin == row.pin, t.c.finger == row.finger)
                if conn.execute(update(t).where(where).values(**values)).rowcount == 0:
                    conn.execute(t.insert().values(serial=serial, pin=row.pin, finger=row.finger, **values))

    def rows(self, serial: str) -> list[PushEnrolRow]:
        """Every row of a terminal, users first, in PIN order."""
        t = s.enrol_push
        with self.engine.connect() as conn:
            result = conn.execute(select(t.c.pin, t.c.finger, t.c.name, t.c.privilege, t.c.card, t.c.group_id,
                                         t.c.valid, t.c.size, t.c.key_id, t.c.blob)
                                  .where(t.c.serial == serial).order_by(t.c.finger, t.c.pin)).all()
        return [PushEnrolRow(r[0], r[1], r[2], r[3], int(r[4]), r[5], r[6], r[7], r[8],
                             bytes(r[9]) if r[9] is not None else None) for r in result]

    def drop_user(self, serial: str, pin: str) -> None:
        """Forget a user and its templates (the terminal confirmed it deleted them)."""
        t = s.enrol_push
        with self._writer.begin() as conn:
            conn.execute(delete(t).where(and_(t.c.serial == serial, t.c.pin == pin)))

    def forget_unseen(self, serial: str, since: datetime) -> int:
        """Drop rows the terminal did not upload again since ``since`` (after a complete upload it was asked for)."""
        t = s.enrol_push
        with self._writer.begin() as conn:
            return int(conn.execute(delete(t).where(and_(t.c.serial == serial, t.c.seen_at < since))).rowcount)

    def set_algorithm(self, serial: str, algorithm: int) -> None:
        """Remember the terminal's fingerprint algorithm version (when it changed)."""
        key = f"{_ALGORITHM}{serial.lower()}"
        with self._writer.begin() as conn:
            value = conn.execute(select(s.kv.c.value).where(s.kv.c.key == key)).scalar()
            if value == str(algorithm):
                return
            if value is None:
                conn.execute(s.kv.insert().values(key=key, value=str(algorithm), updated_at=utcnow()))
            else:
                conn.execute(update(s.kv).where(s.kv.c.key == key).values(value=str(algorithm), updated_at=utcnow()))

    def algorithm(self, serial: str) -> int:
        """The terminal's fingerprint algorithm version as last reported; 0 = unknown."""
        with self.engine.connect() as conn:
            value = conn.execute(select(s.kv.c.value).where(s.kv.c.key == f"{_ALGORITHM}{serial.lower()}")).scalar()
        return int(value) if isinstance(value, str) and value.isascii() and value.isdigit() else 0


__all__ = ["USER_ROW", "PushEnrolRepo", "PushEnrolRow"]

"""Input that could not be read as a punch, kept with its raw text and the reason (never dropped silently).

    serial-line reader, USB-export import, SOAP driver, ... --> QuarantineRepo.add() --> quarantine table
    status page / fpgw devices / fpgw quarantine          <-- QuarantineRepo.counts() / .recent()

Every value is bounded here (raw text 2,000 characters, reason and origin 500, source 16) so a hostile or
broken source cannot grow a row without end. The table itself is bounded per device (``KEEP_PER_DEVICE``):
the oldest rows of a device beyond it are deleted when new ones arrive, and the per-device count of
everything ever quarantined is kept in ``kv`` so the figure on the status page never goes down.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine, delete, func, select
from sqlalchemy.engine import Connection

from gateway.store import schema as s
from gateway.store.db import writer
from gateway.store.schema import utcnow

RAW_MAX = 2000
TEXT_MAX = 500
SOURCE_MAX = 16
#: Rows kept per device; older ones are deleted (the total count stays in kv).
KEEP_PER_DEVICE = 10_000
_TOTAL = "quarantine_total:"


@dataclass(frozen=True, slots=True)
class QuarantinedInput:
    """One piece of input set aside: where it came from, the raw text and why."""

    device_id: str
    source: str
    raw: str
    reason: str
    origin: str = ""
    received_at: datetime | None = None


def bounded_text(text: str, limit: int) -> str:
    """``text`` as the quarantine table keeps it: NULs made visible, cut to ``limit`` characters."""
    # NUL bytes are refused by PostgreSQL text columns; a line from a noisy serial port can carry them.
    text = text.replace("\x00", "\\x00")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def insert_quarantined(conn: Connection, items: Iterable[QuarantinedInput]) -> int:
    """Insert ``items`` inside the caller's transaction (e.g. with the punches of the same read). Returns how many."""
    now = utcnow()
    rows = [{"device_id": bounded_text(i.device_id, 64), "source": bounded_text(i.source, SOURCE_MAX),
             "raw": bounded_text(i.raw, RAW_MAX), "reason": bounded_text(i.reason, TEXT_MAX) or "unreadable",
             "origin": bounded_text(i.origin, TEXT_MAX), "received_at": i.received_at or now} for i in items]
    if not rows:
        return 0
    conn.execute(s.quarantine.insert(), rows)
    per_device: dict[str, int] = {}
    for row in rows:
        device_id = str(row["device_id"])
        per_device[device_id] = per_device.get(device_id, 0) + 1
    for device_id, added in per_device.items():
        key = _TOTAL + device_id
        old = conn.execute(select(s.kv.c.value).where(s.kv.c.key == key)).scalar()
        total = (int(old) if old and old.isdigit() else 0) + added
        if old is None:
            conn.execute(s.kv.insert().values(key=key, value=str(total), updated_at=now))
        else:
            conn.execute(s.kv.update().where(s.kv.c.key == key).values(value=str(total), updated_at=now))
        _trim(conn, device_id)
    return len(rows)


def _trim(conn: Connection, device_id: str) -> None:
    q = s.quarantine
    cutoff = conn.execute(select(q.c.id).where(q.c.device_id == device_id).order_by(q.c.id.desc())
                          .offset(KEEP_PER_DEVICE).limit(1)).scalar()
    if cutoff is not None:
        conn.execute(delete(q).where(q.c.device_id == device_id, q.c.id <= cutoff))


class QuarantineRepo:
    """The quarantine table: add what could not be read, count and list it per device."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._writer = writer(engine)

    def add(self, items: Iterable[QuarantinedInput]) -> int:
        """Keep ``items`` in their own transaction. Returns how many were stored."""
        with self._writer.begin() as conn:
            return insert_quarantined(conn, items)

    def counts(self) -> dict[str, int]:
        """Everything ever quarantined per device id (including rows trimmed since)."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(s.kv.c.key, s.kv.c.value).where(s.kv.c.key.startswith(_TOTAL))).all()
        return {key[len(_TOTAL):]: int(value) for key, value in rows if value.isdigit()}

    def recent(self, device_id: str | None = None, limit: int = 100) -> list[QuarantinedInput]:
        """The newest rows, newest first (of one device when given)."""
        q = s.quarantine
        stmt = select(q.c.device_id, q.c.source, q.c.raw, q.c.reason, q.c.origin, q.c.received_at)
        if device_id is not None:
            stmt = stmt.where(q.c.device_id == device_id)
        with self.engine.connect() as conn:
            rows = conn.execute(stmt.order_by(q.c.id.desc()).limit(max(1, min(limit, 10_000)))).all()
        return [QuarantinedInput(*row) for row in rows]

    def stored(self, device_id: str) -> int:
        """Rows currently in the table for ``device_id``."""
        q = s.quarantine
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(q).where(q.c.device_id == device_id))
                       .scalar_one())

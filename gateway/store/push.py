"""What the push receiver keeps besides punches: the command queue, unknown terminals, raw OPERLOG uploads.

    gateway.push.receiver --> PushRepo (command queue taken by getrequest, results from devicecmd,
                              unknown serials, OPERLOG batches)
    fpgw devices reboot|sync-time|query-log|clear|unknown (gateway.cli.push) --> PushRepo (another process)

Everything lives in the ``kv`` table (no migration): one row per command (``push_cmd:<serial>:<id>``), per
unknown serial (``push_unknown:<serial>``) and per OPERLOG upload (``push_op:<serial>:<time>``), JSON or raw
text in ``value``. Punches never come here: they go through Store.save_poll like polled ones.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, delete, func, select, update
from sqlalchemy.engine import Connection

from gateway.store import schema as s
from gateway.store.db import writer
from gateway.store.schema import utcnow

_CMD = "push_cmd:"
_UNKNOWN = "push_unknown:"
_OPERLOG = "push_op:"
#: Unknown serials remembered at most (a scanner inventing serials cannot grow the table without end).
UNKNOWN_MAX = 200
#: Commands waiting (queued or sent, not answered) for one terminal at most.
QUEUE_MAX = 50
#: Answered and timed-out commands are kept this long for `fpgw devices commands`, then deleted.
COMMANDS_KEPT_DAYS = 30


@dataclass
class PushCommand:
    """One command queued for a push terminal and what became of it."""

    id: str
    serial: str
    device_id: str
    #: What `fpgw devices` asked for: sync-time, reboot, query-log, clear, info.
    kind: str
    text: str
    #: queued -> sent (handed out at a getrequest) -> done | failed (the terminal answered) | timeout;
    #: refused: withdrawn by the gateway before it was handed out (a clear whose records are not all stored).
    state: str
    queued_at: str
    sent_at: str | None = None
    answered_at: str | None = None
    return_code: int | None = None
    result: str | None = None


def _cmd_key(serial: str, command_id: str) -> str:
    return f"{_CMD}{serial.lower()}:{command_id}"


def _rows(conn: Connection, prefix: str) -> list[tuple[str, str]]:
    """(key, value) of the kv rows whose key starts with ``prefix``; LIKE alone would read '_' in a serial
    as a wildcard, so the prefix is checked again here."""
    rows = conn.execute(select(s.kv.c.key, s.kv.c.value).where(s.kv.c.key.like(f"{prefix}%"))).all()
    return [(k, v) for k, v in rows if k.startswith(prefix)]


class PushRepo:
    """kv-table repository of the push receiver and its CLI."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._writer = writer(engine)

    # -- command queue ---------------------------------------------------------------------------
    def queue_command(self, device_id: str, serial: str, kind: str, text: str, *,
                      at: datetime | None = None) -> PushCommand:
        """Queue a command for the terminal's next getrequest; ValueError when its queue is full."""
        now = at or utcnow()
        cmd = PushCommand(id=secrets.token_hex(6), serial=serial, device_id=device_id, kind=kind, text=text,
                          state="queued", queued_at=now.isoformat())
        with self._writer.begin() as conn:
            waiting = [c for _, v in _rows(conn, f"{_CMD}{serial.lower()}:")
                       if (c := _command(v)) is not None and c.state in ("queued", "sent")]
            if len(waiting) >= QUEUE_MAX:
                raise ValueError(f"{QUEUE_MAX} commands already wait for {serial}; "
                                 "wait for the terminal to answer them (fpgw devices commands)")
            conn.execute(s.kv.insert().values(key=_cmd_key(serial, cmd.id), value=json.dumps(asdict(cmd)),
                                              updated_at=now))
        return cmd

    def commands(self, serial: str | None = None) -> list[PushCommand]:
        """Recorded commands (all terminals, or one), oldest first."""
        prefix = f"{_CMD}{serial.lower()}:" if serial else _CMD
        with self.engine.connect() as conn:
            out = [_command(v) for _, v in _rows(conn, prefix)]
        return sorted((c for c in out if c is not None), key=lambda c: c.queued_at)

    def take_commands(self, serial: str, limit: int = 10) -> list[PushCommand]:
        """The queued commands of a terminal, marked sent (one getrequest hands them out once)."""
        now = utcnow().isoformat()
        taken: list[PushCommand] = []
        prefix = f"{_CMD}{serial.lower()}:"
        # Every command poll of every terminal lands here (300 terminals every 10 s): a read first, so the
        # usual "nothing queued" never takes the database's write lock.
        with self.engine.connect() as conn:
            if not any((c := _command(v)) is not None and c.state == "queued" for _, v in _rows(conn, prefix)):
                return taken
        with self._writer.begin() as conn:
            for key, value in sorted(_rows(conn, prefix), key=lambda r: r[1]):
                cmd = _command(value)
                if cmd is None or cmd.state != "queued":
                    continue
                cmd.state, cmd.sent_at = "sent", now
                conn.execute(update(s.kv).where(s.kv.c.key == key).values(value=json.dumps(asdict(cmd)),
                                                                          updated_at=utcnow()))
                taken.append(cmd)
                if len(taken) >= limit:
                    break
        return sorted(taken, key=lambda c: c.queued_at)

    def record_result(self, serial: str, command_id: str, return_code: int | None, result: str, *,
                      state: str | None = None) -> PushCommand | None:
        """Store a terminal's answer to one of our commands (None when we never queued that id).

        ``state`` "refused": the gateway itself withdrew the command (return_code None) before the terminal ran it.
        """
        key = _cmd_key(serial, command_id)
        with self._writer.begin() as conn:
            value = conn.execute(select(s.kv.c.value).where(s.kv.c.key == key)).scalar()
            cmd = _command(value) if value is not None else None
            if cmd is None:
                return None
            cmd.state = state or ("done" if return_code == 0 else "failed")
            cmd.answered_at = utcnow().isoformat()
            cmd.return_code, cmd.result = return_code, result[:1000]
            conn.execute(update(s.kv).where(s.kv.c.key == key).values(value=json.dumps(asdict(cmd)),
                                                                      updated_at=utcnow()))
        return cmd

    def expire_commands(self, now: datetime, timeout_s: float) -> list[PushCommand]:
        """Mark queued/sent commands older than timeout_s as timed out; returns them."""
        expired: list[PushCommand] = []
        with self._writer.begin() as conn:
            for key, value in _rows(conn, _CMD):
                cmd = _command(value)
                if cmd is None or cmd.state not in ("queued", "sent"):
                    continue
                if (now - datetime.fromisoformat(cmd.queued_at)).total_seconds() < timeout_s:
                    continue
                cmd.state, cmd.answered_at = "timeout", now.isoformat()
                conn.execute(update(s.kv).where(s.kv.c.key == key).values(value=json.dumps(asdict(cmd)),
                                                                          updated_at=now))
                expired.append(cmd)
        return expired

    def forget_commands(self, older_than: datetime) -> int:
        """Delete answered or timed-out commands (of every terminal) queued before ``older_than``."""
        gone = 0
        with self._writer.begin() as conn:
            for key, value in _rows(conn, _CMD):
                cmd = _command(value)
                if cmd is not None and cmd.state not in ("queued", "sent") \
                        and datetime.fromisoformat(cmd.queued_at) < older_than:
                    conn.execute(delete(s.kv).where(s.kv.c.key == key))
                    gone += 1
        return gone

    # -- unknown terminals -----------------------------------------------------------------------
    def note_unknown(self, serial: str, address: str, at: datetime, requests: int) -> None:
        """Remember a terminal with an unconfigured serial that called (``requests`` more calls seen)."""
        key = f"{_UNKNOWN}{serial.lower()}"
        with self._writer.begin() as conn:
            value = conn.execute(select(s.kv.c.value).where(s.kv.c.key == key)).scalar()
            if value is None:
                if len(_rows(conn, _UNKNOWN)) >= UNKNOWN_MAX:
                    return
                entry = {"serial": serial, "address": address, "first_seen": at.isoformat(),
                         "last_seen": at.isoformat(), "requests": requests}
                conn.execute(s.kv.insert().values(key=key, value=json.dumps(entry), updated_at=at))
                return
            entry = _json(value)
            before = entry.get("requests")
            entry.update(address=address, last_seen=at.isoformat(),
                         requests=(before if isinstance(before, int) else 0) + requests)
            conn.execute(update(s.kv).where(s.kv.c.key == key).values(value=json.dumps(entry), updated_at=at))

    def unknown_terminals(self) -> list[dict[str, Any]]:
        """Terminals that pushed with a serial no device has: serial, address, first/last seen, requests."""
        with self.engine.connect() as conn:
            rows = _rows(conn, _UNKNOWN)
        return sorted((_json(v) for _, v in rows), key=lambda e: str(e.get("last_seen", "")), reverse=True)

    def forget_unknown(self, serial: str) -> bool:
        """Drop an unknown-terminal entry (after adding it to the config, or to silence it)."""
        with self._writer.begin() as conn:
            return bool(conn.execute(delete(s.kv).where(s.kv.c.key == f"{_UNKNOWN}{serial.lower()}")).rowcount)

    def stored_punches(self, serial: str) -> int:
        """Punches stored from this serial (a push terminal's clear is allowed only when none is missing)."""
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(s.punches).where(
                s.punches.c.device_serial == serial)).scalar_one())

    # -- OPERLOG ---------------------------------------------------------------------------------
    def save_operlog(self, serial: str, lines: list[str], at: datetime) -> None:
        """Keep the operation lines (OPLOG ...) of one OPERLOG upload raw. Users and templates never come here: they
        are kept sealed in enrol_push (gateway/store/pushenrol.py)."""
        key = f"{_OPERLOG}{serial.lower()}:{at:%Y%m%dT%H%M%S%f}"
        with self._writer.begin() as conn:
            if conn.execute(select(s.kv.c.key).where(s.kv.c.key == key)).first() is None:
                conn.execute(s.kv.insert().values(key=key, value="\n".join(lines), updated_at=at))

    def operlog_uploads(self, serial: str) -> list[str]:
        """The raw OPERLOG uploads kept for a terminal, oldest first."""
        with self.engine.connect() as conn:
            rows = _rows(conn, f"{_OPERLOG}{serial.lower()}:")
        return [v for _, v in sorted(rows)]


def _json(value: str) -> dict[str, Any]:
    try:
        data = json.loads(value)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _command(value: str) -> PushCommand | None:
    data = _json(value)
    try:
        return PushCommand(**data)
    except TypeError:
        return None

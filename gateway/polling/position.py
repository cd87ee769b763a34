"""Where the last read of a terminal's log ended (drivers.base.LogPosition), as the text the store keeps.

    poller --LogPosition--> position_text() --str--> Store.save_poll(log_position=...)   (same transaction)
    Store.device_state().log_position --str--> read_position() --LogPosition | None--> session.read_punches_after()

The store treats the text as opaque; only this module reads and writes it. It is bounded (a terminal's garbage
user id must not grow a kv row without limit) and validated field by field when read back: anything that is
not exactly what position_text() writes - corrupt, truncated, too long, an older or newer format - reads as
"no position", which costs one full download and never a lost punch.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import TypeGuard

from drivers.base import LogPosition, RawPunch

#: Longest position text written or accepted (a normal one is about 200 characters).
MAX_POSITION_CHARS = 2048
#: Written instead of a position when there is none to keep (an empty log, a record too large to store):
#: the next read of that terminal is a full download.
NO_POSITION = ""
_FORMAT = 1
_INT_FIELDS = ("state", "verify", "uid", "workcode", "raw_time")


def position_text(position: LogPosition | None) -> str:
    """The stored form of ``position``; NO_POSITION when there is none or it would be longer than the bound."""
    if position is None or position.records < 1:
        return NO_POSITION
    last = position.last
    doc = {"v": _FORMAT, "records": position.records, "last": {
        "user_id": last.user_id, "time_text": last.time_text,
        "local_time": last.local_time.isoformat() if last.local_time is not None else None,
        **{name: getattr(last, name) for name in _INT_FIELDS}}}
    try:
        text = json.dumps(doc, ensure_ascii=True, separators=(",", ":"))
    except (TypeError, ValueError):  # a driver bug put a non-JSON value in a record: no tail read from it
        return NO_POSITION
    return text if len(text) <= MAX_POSITION_CHARS else NO_POSITION


def read_position(text: str | None) -> LogPosition | None:
    """The position stored by position_text(), or None when there is none or the text is not exactly one."""
    if not text or len(text) > MAX_POSITION_CHARS:
        return None
    try:
        doc = json.loads(text)
        if not isinstance(doc, dict) or doc.get("v") != _FORMAT:
            return None
        records, last = doc.get("records"), doc.get("last")
        if not _is_int(records) or records < 1 or not isinstance(last, dict):
            return None
        user_id, time_text, local = last.get("user_id"), last.get("time_text"), last.get("local_time")
        if not isinstance(user_id, str) or not isinstance(time_text, str):
            return None
        if local is not None:
            if not isinstance(local, str):
                return None
            local = datetime.fromisoformat(local)
            if local.tzinfo is not None:
                return None
        ints: list[int] = []
        for name in _INT_FIELDS:
            value = last.get(name)
            if not _is_int(value):
                return None
            ints.append(value)
    except (ValueError, RecursionError):  # not JSON, or a time that is not ISO
        return None
    state, verify, uid, workcode, raw_time = ints
    return LogPosition(records, RawPunch(user_id, time_text, local, state, verify, uid, workcode, raw_time))


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


__all__ = ["MAX_POSITION_CHARS", "NO_POSITION", "position_text", "read_position"]

"""Linear decoders for the ZK attendance and user datasets (pure functions, no I/O, no pyzk).

Flow: ZkSession.read_punches()/read_users() -> pyzk read_with_buffer() -> *this module* -> RawPunchColumns /
DeviceUser. pyzk's own get_attendance() slices the buffer record by record (quadratic) and scans the
user list for every record; here every dataset is checked against its own u32 byte-count header; attendance
records become columns by buffer operations (``parse_records``), users are decoded in one pass with
``struct.iter_unpack``. Anything inconsistent raises ``DatasetError`` (the
driver turns it into ProtocolError): a partial or garbled log must never reach the store.
When the device's count disagrees with the bytes, the layout is decided by evidence
(``choose_record_size``). Also here: GET_FREE_SIZES in all its lengths (``parse_free_sizes``) and the
live-event forms (``decode_event``); every function is pure and fuzzed (tests/drivers/test_zk_fuzz.py).
Layouts and field meanings: docs/drivers/zk.md, "User records", "Attendance records" and "Time".
"""

from __future__ import annotations

import struct
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from functools import lru_cache
from typing import Any

from drivers.base import Counts, DeviceUser, RawPunch, RawPunchColumns, collector_paused

#: Attendance record sizes the ZK firmware families use (§2.10).
RECORD_SIZES: tuple[int, ...] = (8, 16, 40)
#: User record sizes (§2.9): 28 = old "ZK6" firmware, 72 = "ZK8"/TFT firmware.
USER_SIZES: tuple[int, ...] = (28, 72)

# 8-byte record: uid u16, verify u8, time u32, state u8 (manual2006 TAttLog: PIN, verified, time, status).
_REC8 = struct.Struct("<HBIB")
# 16-byte record (manual2006 TExtendAttLog): user id u32, time u32, state u8, verify u8, 2 reserved,
# workcode u32. NB: state/verify are in the opposite order from the 8- and 40-byte layouts.
_REC16 = struct.Struct("<IIBB2xI")
# 40-byte record: uid u16, user id text 24, verify u8, time u32, state u8, 8 bytes not decoded.
_REC40 = struct.Struct("<H24sBIB8x")
# 28-byte user: uid, privilege, password 5 (not exposed), name 8, card u32, pad, group u8,
# timezone i16 (unused), user id u32.
_USER28 = struct.Struct("<HB5x8sIxBhI")
# 72-byte user: uid, privilege, password 8 (not exposed), name 24, card u32, group number u8 (adro),
# 7 bytes pyzk calls group text / adro calls timezone flags, 1 pad, user id text 24.
_USER72 = struct.Struct("<HB8x24sIB7sx24s")

_HEADER = struct.Struct("<I")


class DatasetError(ValueError):
    """A dataset that does not agree with itself or with the device's counts."""


# ---------------------------------------------------------------------------------------------
# Time (§2.5): every month counted as 31 days, years 2000-2099.
# ---------------------------------------------------------------------------------------------


def decode_time_parts(t: int) -> tuple[int, int, int, int, int, int]:
    """Split an encoded ZK time into (year, month, day, hour, minute, second) with the integer chain."""
    second = t % 60
    t //= 60
    minute = t % 60
    t //= 60
    hour = t % 24
    t //= 24
    day = t % 31 + 1
    t //= 31
    month = t % 12 + 1
    t //= 12
    return 2000 + t, month, day, hour, minute, second


@lru_cache(maxsize=8192)
def _day(day_index: int) -> tuple[str, tuple[int, int, int] | None]:
    """Day part of an encoded time: ("YYYY-MM-DD ", (y, m, d) or None when not a real date)."""
    y, mo, d, _h, _mi, _s = decode_time_parts(day_index * 86400)
    try:
        date(y, mo, d)
        ymd: tuple[int, int, int] | None = (y, mo, d)
    except ValueError:
        ymd = None
    return f"{y:04d}-{mo:02d}-{d:02d} ", ymd


@lru_cache(maxsize=86400)
def _clock(sec: int) -> tuple[str, int, int, int]:
    """Second-of-day -> ("HH:MM:SS", h, m, s)."""
    h, rest = divmod(sec, 3600)
    mi, s = divmod(rest, 60)
    return f"{h:02d}:{mi:02d}:{s:02d}", h, mi, s


def decode_time(t: int) -> tuple[str, datetime | None]:
    """Encoded ZK time -> (``YYYY-MM-DD HH:MM:SS`` text, datetime or None when not a real date).

    The text is produced even for impossible dates (Feb 31 after a clock glitch) so the punch can be
    stored and flagged instead of silently dropped (pyzk raises ValueError there). Day and
    time-of-day parts are cached: a log's punches fall on few distinct days.
    """
    day_text, ymd = _day(t // 86400)
    clock_text, h, mi, s = _clock(t % 86400)
    if ymd is None:
        return day_text + clock_text, None
    return day_text + clock_text, datetime(ymd[0], ymd[1], ymd[2], h, mi, s)


def encode_time(dt: datetime) -> int:
    """Naive device-local datetime -> encoded ZK time (years 2000-2099 only)."""
    if not 2000 <= dt.year <= 2099:
        raise ValueError(f"ZK clocks only hold years 2000-2099, got {dt.year}")
    return ((dt.year % 100) * 12 * 31 + (dt.month - 1) * 31 + dt.day - 1) * 86400 + (
        dt.hour * 60 + dt.minute
    ) * 60 + dt.second


def time_from_hex6(b: bytes) -> tuple[str, datetime | None]:
    """Decode the 6-byte ``yy mm dd HH MM SS`` time of live events (§2.12) the same tolerant way."""
    y, mo, d, h, mi, s = b[0] + 2000, b[1], b[2], b[3], b[4], b[5]
    text = f"{y:04d}-{mo:02d}-{d:02d} {h:02d}:{mi:02d}:{s:02d}"
    try:
        return text, datetime(y, mo, d, h, mi, s)
    except ValueError:
        return text, None


# ---------------------------------------------------------------------------------------------
# Dataset framing: u32 byte count, then count bytes of fixed-size records (§2.8).
# ---------------------------------------------------------------------------------------------


def split_dataset(data: bytes) -> memoryview:
    """Check the u32 byte-count header against the actual length; return the record bytes."""
    if len(data) < 4:
        raise DatasetError(f"dataset of {len(data)} bytes has no 4-byte size header")
    (declared,) = _HEADER.unpack_from(data, 0)
    body = memoryview(data)[4:]
    if declared != len(body):
        # Truncated transfer (dropped chunk, short UDP datagram) or trailing garbage: never guess.
        raise DatasetError(f"dataset header says {declared} bytes but {len(body)} bytes arrived")
    return body


def infer_record_size(
    nbytes: int,
    expected_count: int,
    sizes: Iterable[int],
    forced: int | None = None,
    hint: int | None = None,
) -> int:
    """Pick the record size of a dataset of ``nbytes`` when the device reported ``expected_count``.

    The download may legitimately hold MORE records than read_sizes reported (punches arriving
    between the two commands when the device is not disabled), never fewer, and the byte count must
    be an exact multiple of the size. Preference: a forced size (quirk); an exact match; the size
    this device used last time (``hint``); the candidate with the smallest surplus.
    """
    if nbytes == 0:
        return forced or hint or 0
    candidates = [forced] if forced else list(sizes)
    fits = [s for s in candidates if nbytes % s == 0 and nbytes // s >= expected_count]
    if not fits:
        raise DatasetError(
            f"{nbytes} record bytes do not fit {expected_count} records of size "
            f"{'/'.join(str(s) for s in candidates)} (no size divides them with at least that many)"
        )
    for s in fits:
        if nbytes // s == expected_count:
            return s
    if hint in fits:
        return hint
    return min(fits, key=lambda s: nbytes // s - expected_count)


#: First encoded time past 2099-12-31 23:59:59 (ZK clocks hold years 2000-2099 only).
_T_2100 = 100 * 12 * 31 * 86400

#: Largest attendance state accepted as evidence for the 8-byte layout.
_MAX_STATE_8 = 15

#: How each layout is described in error messages.
LAYOUT_NAMES = {
    8: "8-byte (u16 uid, u8 verify, u32 time at offset 3, u8 state)",
    16: "16-byte (u32 user id, u32 time, u8 state, u8 verify, 2 reserved, u32 work code)",
    40: "40-byte (u16 uid, 24-byte user id text, u8 verify, u32 time at offset 27, u8 state, 8 unused)",
}


def _record_problem(size: int, fields_: tuple[object, ...]) -> str | None:
    """Why one decoded record cannot be a real record of layout ``size`` (None = plausible)."""
    if size == 40:
        raw = fields_[1]
        assert isinstance(raw, bytes)
        text = raw.split(b"\x00", 1)[0]
        if not text or not all(0x21 <= c < 0x7F for c in text):
            return f"user id {text[:24]!r} is not printable text"
        t = fields_[3]
    elif size == 16:
        if fields_[0] == 0:
            return "user id 0"
        t = fields_[1]
    else:
        state = fields_[3]
        assert isinstance(state, int)
        if state > _MAX_STATE_8:
            # Documented states are 0-5 (a few firmware use up to 15). In the undocumented variant with
            # the time at offset 4, this byte is the top byte of the time (about 50 in 2026).
            return f"state {state} is not an attendance state"
        t = fields_[2]
    assert isinstance(t, int)
    # 0 = zero bytes where no time is (a wrong stride); past 2099 = not a ZK clock value.
    if not 0 < t < _T_2100 or decode_time(t)[1] is None:
        return f"time {t} is not a real date"
    return None


def _layout(size: int) -> struct.Struct:
    return {8: _REC8, 16: _REC16, 40: _REC40}[size]


def record_evidence(body: bytes | memoryview, size: int) -> str | None:
    """None when every record of ``body`` decodes, as layout ``size``, to a real time (years 2000-2099)
    and a usable id; else why not. Decides the layout when the device's count disagrees with the bytes."""
    if size not in RECORD_SIZES or len(body) % size:
        return f"{len(body)} bytes are not whole {size}-byte records"
    for i, fields_ in enumerate(_layout(size).iter_unpack(body)):
        problem = _record_problem(size, fields_)
        if problem is not None:
            return f"record {i}: {problem}"
    return None


def layout_sanity(body: bytes | memoryview, size: int, sample: int = 256) -> str | None:
    """None unless most of an evenly spread sample of records fail ``_record_problem``: a log whose
    count agrees with the bytes but whose records mostly decode to no real time is another (undocumented)
    layout, never a few records with a broken clock (those are stored and flagged)."""
    n = len(body) // size
    if n == 0 or size not in RECORD_SIZES:
        return None
    layout = _layout(size)
    step = max(1, n // sample)
    checked = bad = 0
    first = ""
    for i in range(0, n, step):
        problem = _record_problem(size, layout.unpack_from(body, i * size))
        checked += 1
        if problem is not None:
            bad += 1
            first = first or f"record {i}: {problem}"
    if bad * 2 > checked:
        return (f"{bad} of {checked} sampled records do not decode as the {LAYOUT_NAMES[size]} layout "
                f"({first}): an undocumented variant (e.g. an 8-byte form with the time at offset 4) is refused")
    return None


def choose_record_size(
    body: bytes | memoryview,
    expected_count: int | None,
    sizes: Iterable[int] = RECORD_SIZES,
    forced: int | None = None,
    hint: int | None = None,
) -> int:
    """Record size of an attendance body, by the device's count when it agrees, else by evidence.

    ``expected_count`` None = the device gave no usable count. A count that matches exactly one
    layout decides (unless most records then decode to no real time: ``layout_sanity``); otherwise
    the layout(s) whose records all decode to real times and ids (``record_evidence``) do. Several
    clean layouts: the device's last one (``hint``), else the widest (a 40-byte record's id text and
    time at fixed offsets rarely survive a wrong stride; ASCII digits read as an 8-byte record's time
    often do). No clean layout: the old rule (more records than counted: punches landed in between)
    if exactly one layout fits, else DatasetError naming every layout and its first bad record.
    """
    nbytes = len(body)
    if forced:
        if nbytes % forced:
            raise DatasetError(f"{nbytes} record bytes are not a multiple of the forced record size {forced}")
        return forced
    fits = [s for s in sizes if nbytes % s == 0]
    if not fits:
        raise DatasetError(f"{nbytes} record bytes are not a multiple of any attendance layout "
                           f"({'/'.join(str(s) for s in sizes)} bytes)")
    if expected_count is not None:
        exact = [s for s in fits if nbytes // s == expected_count]
        if len(exact) == 1:
            insane = layout_sanity(body, exact[0])
            if insane is not None:
                raise DatasetError(insane)
            return exact[0]
    reasons = {s: record_evidence(body, s) for s in fits}
    clean = [s for s in fits if reasons[s] is None]
    if hint in clean:
        return hint
    if clean:
        return max(clean)
    grown = [s for s in fits if expected_count is not None and nbytes // s >= expected_count]
    if len(grown) == 1 and layout_sanity(body, grown[0]) is None:
        return grown[0]  # the count fits one layout; its odd records (bad clock) are stored and flagged
    counted = "no usable count" if expected_count is None else f"device counted {expected_count}"
    detail = "; ".join(f"{LAYOUT_NAMES.get(s, s)}: {reasons[s]}" for s in fits)
    raise DatasetError(f"{nbytes} record bytes ({counted}) decode cleanly as no known layout ({detail})")


# ---------------------------------------------------------------------------------------------
# GET_FREE_SIZES (§2.4)
# ---------------------------------------------------------------------------------------------


_SIZES80 = struct.Struct("<20i")


def parse_free_sizes(payload: bytes) -> Counts:
    """Decode a GET_FREE_SIZES payload: 80 bytes (K20), 92 (with faces), longer layouts (112 on newer
    face terminals: the first 92 bytes keep their meaning). Shorter (4 zero bytes on some face
    terminals) or negative/impossible values -> ``Counts.unreliable`` says why (counts 0); nothing here raises."""
    if len(payload) < 80:
        return _unusable(f"GET_FREE_SIZES answered with {len(payload)} bytes (80 or more expected)")
    f = _SIZES80.unpack_from(payload, 0)
    faces = faces_cap = 0
    if len(payload) >= 92:
        faces, _zero, faces_cap = struct.unpack_from("<3i", payload, 80)
    sizes = Counts(records=f[8], users=f[4], fingers=f[6], records_cap=f[16], users_cap=f[15],
                   fingers_cap=f[14], faces=faces, faces_cap=faces_cap)
    values = (sizes.records, sizes.users, sizes.fingers, sizes.records_cap, sizes.users_cap, sizes.fingers_cap,
              sizes.faces, sizes.faces_cap)
    if min(values) < 0:
        return _unusable(f"GET_FREE_SIZES reports negative counts {values}")
    if sizes.records_cap and sizes.records > sizes.records_cap:
        return _unusable(f"GET_FREE_SIZES reports {sizes.records} records for a capacity of {sizes.records_cap}")
    return sizes


def _unusable(why: str) -> Counts:
    return Counts(records=0, users=0, unreliable=why)


# ---------------------------------------------------------------------------------------------
# Live events (§2.12): decoded where publicly documented, refused otherwise.
# ---------------------------------------------------------------------------------------------


def decode_event(data: bytes) -> RawPunch:
    """Data of an EF_ATTLOG realtime event -> punch. Documented forms: 10 bytes (manual2006: u16 user
    id, verify, state, 6-byte time), 12 bytes (u32 user id, verify, state, time; pyzk test capture),
    32/36 bytes (24-byte user id text, verify, state, time [+4]). Others raise DatasetError naming them."""
    n = len(data)
    if n == 10:
        user: str = str(struct.unpack_from("<H", data)[0])
        off = 2
    elif n == 12:
        user = str(struct.unpack_from("<I", data)[0])
        off = 4
    elif n in (32, 36):
        user = _text(data[:24], "UTF-8")
        off = 24
    else:
        raise DatasetError(f"realtime event of {n} bytes: no public layout (known: 10, 12, 32, 36 bytes)")
    verify, state = data[off], data[off + 1]
    text, local = time_from_hex6(data[off + 2: off + 8])
    return RawPunch(user, text, local, state, verify)


# ---------------------------------------------------------------------------------------------
# Attendance records
# ---------------------------------------------------------------------------------------------


def _text(raw: bytes, encoding: str) -> str:
    """Bytes up to the first NUL, decoded leniently (junk after the NUL is allowed by firmware)."""
    return raw.split(b"\x00", 1)[0].decode(encoding, errors="replace")


@lru_cache(maxsize=8192)
def zk_day(day_index: int) -> tuple[str, datetime | None]:
    """``drivers.base.DayOf`` of the ZK time encoding: day ``day_index`` -> ("YYYY-MM-DD ", its midnight, or None
    when the 31-day-month encoding names no real date: Feb 30, Apr 31)."""
    text, ymd = _day(day_index)
    return text, None if ymd is None else datetime(ymd[0], ymd[1], ymd[2])


#: The 24-byte user id text of a 40-byte record, as a 1-tuple (the tuple itself is the column's key).
_ID40 = struct.Struct("<2x24s14x")
#: Gather columns with buffer slices (native little-endian words, like the wire); else unpack record by record.
_GATHER = sys.byteorder == "little"


def _u32_column(raw: bytes, offset: int, size: int, n: int) -> Sequence[int]:
    """The little-endian u32 at ``offset`` of each of ``n`` records of ``size`` bytes, as a buffer of words: a
    strided view when the field is word aligned, else its four byte columns interleaved (all copies in C)."""
    if offset % 4 == 0 and size % 4 == 0:
        return memoryview(raw).cast("I")[offset // 4::size // 4]
    words = bytearray(4 * n)
    for k in range(4):
        words[k::4] = raw[offset + k::size]
    return memoryview(words).cast("I")


def parse_records(
    body: bytes | memoryview,
    size: int,
    encoding: str = "UTF-8",
    uid_to_user_id: Callable[[int], str] | None = None,
) -> RawPunchColumns:
    """Decode record bytes of one layout into columns (the caller has checked the framing).

    ``uid_to_user_id`` is needed only for the 8-byte layout, which carries the internal uid but not
    the user id shown on screen; it is called once per distinct uid. Each field becomes a column by buffer
    operations only (strided slices of the record bytes, word casts; no Python code per record); user id texts
    are decoded once per distinct uid, user number or raw id text. The result is a ``RawPunchColumns``: it
    builds each RawPunch (time text, datetime, tuple) only when asked, and ``gateway.polling.normalize`` builds
    its punches straight from the columns (``reference_parse_records`` is the record-by-record form the tests
    compare this with).
    """
    if size not in RECORD_SIZES:
        raise DatasetError(f"unknown attendance record size {size}")
    if len(body) % size:
        raise DatasetError(f"{len(body)} record bytes are not a multiple of the record size {size}")
    if size == 8 and uid_to_user_id is None:
        raise DatasetError("8-byte records need a uid -> user id map")
    n = len(body) // size
    if not _GATHER:
        return _unpacked_columns(body, size, encoding, uid_to_user_id)
    raw = body if isinstance(body, bytes) else bytes(body)
    user_keys: Sequence[Any]
    user_ids: dict[Any, str]
    uids: Sequence[int] = bytes(n)  # zeros: the layout has no uid
    workcodes: Sequence[int] = uids
    if size == 8:
        assert uid_to_user_id is not None
        uids = user_keys = memoryview(raw).cast("H")[0::4]
        user_ids = {uid: uid_to_user_id(uid) for uid in set(uids)}
        verifies, times, states = raw[2::8], _u32_column(raw, 3, 8, n), raw[7::8]
    elif size == 16:
        words = memoryview(raw).cast("I")
        user_keys, times, workcodes = words[0::4], words[1::4], words[3::4]
        user_ids = {number: str(number) for number in set(user_keys)}
        states, verifies = raw[8::16], raw[9::16]
    else:
        uids = memoryview(raw).cast("H")[0::20]
        with collector_paused():  # one 1-tuple and its bytes per record, none in a cycle
            user_keys = list(_ID40.iter_unpack(raw))
        user_ids = {key: _text(key[0], encoding) for key in set(user_keys)}
        verifies, times, states = raw[26::40], _u32_column(raw, 27, 40, n), raw[31::40]
    return RawPunchColumns(user_keys=user_keys, user_ids=user_ids, times=times, states=states, verifies=verifies,
                           uids=uids, workcodes=workcodes, day_of=zk_day)


def _unpacked_columns(body: bytes | memoryview, size: int, encoding: str,
                      uid_to_user_id: Callable[[int], str] | None) -> RawPunchColumns:
    """``parse_records`` on a big-endian host: the same columns from ``struct.iter_unpack`` (lists)."""
    n = len(body) // size
    zeros = [0] * n
    fields_ = list(zip(*_layout(size).iter_unpack(body), strict=True)) if n else [()] * 5
    if size == 8:
        assert uid_to_user_id is not None
        uids, verifies, times, states = fields_[:4]
        return RawPunchColumns(user_keys=uids, user_ids={uid: uid_to_user_id(uid) for uid in set(uids)},
                               times=times, states=states, verifies=verifies, uids=uids, workcodes=zeros,
                               day_of=zk_day)
    if size == 16:
        numbers, times, states, verifies, workcodes = fields_
        return RawPunchColumns(user_keys=numbers, user_ids={k: str(k) for k in set(numbers)}, times=times,
                               states=states, verifies=verifies, uids=zeros, workcodes=workcodes, day_of=zk_day)
    uids, texts, verifies, times, states = fields_
    return RawPunchColumns(user_keys=texts, user_ids={k: _text(k, encoding) for k in set(texts)}, times=times,
                           states=states, verifies=verifies, uids=uids, workcodes=zeros, day_of=zk_day)


def reference_parse_records(
    body: bytes | memoryview,
    size: int,
    encoding: str = "UTF-8",
    uid_to_user_id: Callable[[int], str] | None = None,
) -> list[RawPunch]:
    """The plain record-by-record decoder (no caches): what ``parse_records`` must equal, for tests."""
    out: list[RawPunch] = []
    for off in range(0, len(body) - len(body) % size, size):
        fields_ = _layout(size).unpack_from(body, off)
        if size == 40:
            uid, uid_text, verify, t, state = fields_
            user_id, workcode = _text(uid_text, encoding), 0
        elif size == 16:
            user_no, t, state, verify, workcode = fields_
            user_id, uid = str(user_no), 0
        else:
            assert uid_to_user_id is not None
            uid, verify, t, state = fields_
            user_id, workcode = uid_to_user_id(uid), 0
        y, mo, d, h, mi, s = decode_time_parts(t)
        try:
            local: datetime | None = datetime(y, mo, d, h, mi, s)
        except ValueError:
            local = None
        text = f"{y:04d}-{mo:02d}-{d:02d} {h:02d}:{mi:02d}:{s:02d}"
        out.append(RawPunch(user_id, text, local, state, verify, uid, workcode, t))
    return out


def uids_in_8byte_records(body: bytes | memoryview) -> set[int]:
    """The distinct uids of an 8-byte record body (to decide whether the user cache is stale).

    Asked on every full read of an 8-byte log with a cached user table, so read from C: each record's
    uid is u16 word 0 of its four (native words on a little-endian host, like the wire).
    """
    whole = len(body) - len(body) % 8
    if sys.byteorder == "little":
        return set(memoryview(bytes(body[:whole])).cast("H")[0::4])
    return {uid for uid, _v, _t, _s in _REC8.iter_unpack(body[:whole])}


# ---------------------------------------------------------------------------------------------
# Users
# ---------------------------------------------------------------------------------------------


def _group_72(group_no: int, group_text: bytes, encoding: str) -> str:
    # pyzk's own writer stores the group as text at offset 40; real TFT firmware (adro) keeps the group
    # number at byte 39 and timezone flags at 40-47, which pyzk misreads as "\x01". Prefer printable
    # text, else the group number.
    text = group_text.split(b"\x00", 1)[0].decode(encoding, errors="replace")
    if text and text.isprintable():
        return text.strip()
    return str(group_no) if group_no else ""


def parse_users(body: bytes | memoryview, size: int, encoding: str = "UTF-8") -> list[DeviceUser]:
    """Decode user record bytes (28 or 72 bytes each). Passwords are skipped, never surfaced."""
    if size not in USER_SIZES:
        raise DatasetError(f"unknown user record size {size}")
    if len(body) % size:
        raise DatasetError(f"{len(body)} user bytes are not a multiple of the user size {size}")
    out: list[DeviceUser] = []
    if size == 28:
        for uid, priv, name, card, group, _tz, user_no in _USER28.iter_unpack(body):
            out.append(
                DeviceUser(uid, str(user_no), _text(name, encoding).strip(), priv, card, str(group))
            )
    else:
        for uid, priv, name, card, group_no, group_text, uid_text in _USER72.iter_unpack(body):
            out.append(
                DeviceUser(
                    uid,
                    _text(uid_text, encoding),
                    _text(name, encoding).strip(),
                    priv,
                    card,
                    _group_72(group_no, group_text, encoding),
                )
            )
    return out


@dataclass(frozen=True, slots=True)
class ParsedLog:
    """Result of decoding an attendance dataset."""

    punches: Sequence[RawPunch]
    record_size: int


def decode_attendance(
    data: bytes,
    expected_count: int,
    *,
    encoding: str = "UTF-8",
    forced_size: int | None = None,
    hint_size: int | None = None,
    uid_map: Mapping[int, str] | None = None,
) -> ParsedLog:
    """Whole attendance dataset (header included) -> punches; raises DatasetError when inconsistent.

    For the 8-byte layout unknown uids fall back to ``str(uid)``; the caller refreshes ``uid_map``
    first when it sees unknown uids (see ``uids_in_8byte_records``).
    """
    body = split_dataset(data)
    size = infer_record_size(len(body), expected_count, RECORD_SIZES, forced_size, hint_size)
    if size == 0:
        return ParsedLog([], hint_size or 0)
    mapping = uid_map or {}
    return ParsedLog(
        parse_records(body, size, encoding, lambda uid: mapping.get(uid) or str(uid)), size
    )


def decode_users(
    data: bytes,
    expected_count: int,
    *,
    encoding: str = "UTF-8",
    forced_size: int | None = None,
    hint_size: int | None = None,
) -> tuple[list[DeviceUser], int]:
    """Whole user dataset (header included) -> (users, user record size)."""
    body = split_dataset(data)
    size = infer_record_size(len(body), expected_count, USER_SIZES, forced_size, hint_size)
    if size == 0:
        return [], hint_size or 0
    return parse_users(body, size, encoding), size

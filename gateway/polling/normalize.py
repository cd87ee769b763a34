"""RawPunch (device values) -> Punch (what we store): time zones, names, employee ids, quality flags.

Sits between the driver and the store: gateway.polling.poller calls ``normalize_punches`` on what a session
read, then hands the result to ``store.save_poll``. Pure functions except ``EmployeeMap``, which reads
its CSV when the file changes. Nothing is ever dropped here: a punch with an impossible time or an
unknown user is kept and flagged, because each one may be somebody's allowance.

Every value a device sends is bounded to its column here (gateway.store.schema.punches), so one odd
record can never make a poll's INSERT fail (PostgreSQL refuses a work code of 2^31 in an INTEGER column)
nor make the central answer 500: see ``bound_raw``. Records whose time cannot tell them apart (a dead
clock stamps every punch 2000-01-01 00:00:00) get an occurrence number (``Punch.occurrence``).
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import re
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from drivers.base import CLOCKS, RawPunch, RawPunchColumns, clock_of_day, collector_paused
from gateway.models import STATE_NAMES, VERIFY_NAMES, Punch, state_name, verify_name

#: Punches more than this far in the future (device clock ahead, or garbage) are flagged "future".
FUTURE_TOLERANCE = timedelta(minutes=10)
#: A terminal whose RTC battery died restarts at 2000-01-01; anything in 2000 is that, not a real punch.
RTC_RESET_BEFORE = date(2001, 1, 1)
#: Default "the device did not exist before" date when a device has no installed_on.
DEFAULT_NOT_BEFORE = date(2010, 1, 1)

#: Column bounds of the punches table (gateway.store.schema): INTEGER is 32-bit signed on PostgreSQL.
INT32_MIN, INT32_MAX = -(2 ** 31), 2 ** 31 - 1
INT64_MIN, INT64_MAX = -(2 ** 63), 2 ** 63 - 1
#: punches.device_user_id is String(64).
USER_ID_MAX = 64
#: Flags whose time cannot keep two records apart: such records are numbered (Punch.occurrence).
UNTRUSTED_TIME_FLAGS = frozenset({"rtc_reset", "impossible_date"})
#: Added next to every bad_<field> flag, so one flag finds all punches with a value that did not fit.
VALUE_FLAG = "value_out_of_range"
_DEVICE_TIME = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}$")
#: Stored for a time text that is not "YYYY-MM-DD HH:MM:SS" at all (flagged bad_device_time + impossible_date).
BAD_TIME_TEXT = "0000-00-00 00:00:00"
#: (local midnight, the same instant in UTC) of one calendar day in one zone.
_Day = tuple[datetime, datetime]
_UNKNOWN_DAY: _Day = (datetime.min, datetime.min.replace(tzinfo=UTC))

__all__ = ["BAD_TIME_TEXT", "DEFAULT_NOT_BEFORE", "DeviceContext", "EmployeeMap", "bound_raw", "normalize_punches",
           "state_name", "verify_name"]


@dataclass(frozen=True, slots=True)
class DeviceContext:
    """What normalization needs to know about the device a batch came from."""

    office_code: str
    device_id: str
    serial: str
    timezone: str
    #: Earlier punches are flagged "before_device".
    not_before: date = DEFAULT_NOT_BEFORE


class EmployeeMap:
    """PIN (device user id) -> employee id (NIP), from a CSV the office keeps; reloaded when it changes.

    CSV header: ``device_user_id,employee_id`` and optionally ``serial`` to map a PIN on one device
    only (offices whose devices were enrolled separately reuse PINs).
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._mtime: float | None = None
        self._global: dict[str, str] = {}
        self._per_device: dict[tuple[str, str], str] = {}
        if path is not None:
            self._load()

    @property
    def configured(self) -> bool:
        """True when a mapping file is in use (then unmapped punches get flagged)."""
        return self.path is not None

    def _load(self) -> None:
        assert self.path is not None
        mtime = self.path.stat().st_mtime
        global_map: dict[str, str] = {}
        per_device: dict[tuple[str, str], str] = {}
        with self.path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            fields = set(reader.fieldnames or [])
            if not {"device_user_id", "employee_id"} <= fields:
                raise ValueError(f"{self.path}: the CSV header must contain device_user_id and employee_id "
                                 f"(found: {', '.join(sorted(fields)) or 'nothing'})")
            for lineno, row in enumerate(reader, start=2):
                pin = (row.get("device_user_id") or "").strip()
                emp = (row.get("employee_id") or "").strip()
                if not pin or not emp:
                    raise ValueError(f"{self.path}, line {lineno}: device_user_id and employee_id must not be empty")
                serial = (row.get("serial") or "").strip()
                if serial:
                    per_device[(serial, pin)] = emp
                else:
                    global_map[pin] = emp
        self._global, self._per_device, self._mtime = global_map, per_device, mtime

    def refresh(self) -> None:
        """Reload the CSV if it changed on disk (cheap: one stat)."""
        if self.path is None:
            return
        with self._lock:
            try:
                if self.path.stat().st_mtime != self._mtime:
                    self._load()
            except FileNotFoundError:
                pass  # keep the last good mapping; the file is being replaced

    def lookup(self, serial: str, device_user_id: str) -> str | None:
        """Employee id for this PIN on this device, or None."""
        return self._per_device.get((serial, device_user_id)) or self._global.get(device_user_id)


def _bound_int(value: object, field: str, flags: list[str], *, low: int = INT32_MIN, high: int = INT32_MAX
               ) -> int:
    """``value`` if it fits [low, high]; else flagged ``bad_<field>`` and made to fit.

    An unsigned 32-bit value (ZK stores work codes and uids as u32) is kept bit for bit as its signed
    32-bit twin (value - 2^32), so the raw value stays recoverable: raw = stored & 0xFFFFFFFF. Anything
    wider is clamped. A non-integer (a driver bug) becomes 0.
    """
    if isinstance(value, bool) or not isinstance(value, int):
        flags.append(f"bad_{field}")
        return 0
    if low <= value <= high:
        return value
    flags.append(f"bad_{field}")
    if high == INT32_MAX and INT32_MAX < value < 2 ** 32:
        return value - 2 ** 32
    return max(low, min(high, value))


def _bound_text(value: object, limit: int) -> tuple[str, bool]:
    """(text that fits a String(limit) column and any database, changed?): control characters, NUL and lone
    surrogates become '?'; a too-long text is cut and ends in a hash of the original, so two different
    long values never become the same."""
    text = value if isinstance(value, str) else str(value)
    clean = "".join(ch if ch.isprintable() else "?" for ch in text)
    if clean == text and len(text) <= limit:
        return text, False
    digest = hashlib.sha1(text.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return clean[:limit - 9] + "~" + digest, True


def bound_raw(rp: RawPunch) -> tuple[RawPunch, list[str]]:
    """The record with every field fitted to its column, and the flags naming what did not fit.

    Never raises and never drops: the punch is kept, the flag says which value was changed.
    """
    flags: list[str] = []
    user_id, user_changed = _bound_text(rp.user_id, USER_ID_MAX)
    if user_changed:
        flags.append("bad_user_id")
    time_text, local = rp.time_text, rp.local_time
    if not isinstance(time_text, str) or not _DEVICE_TIME.match(time_text):
        flags.append("bad_device_time")
        time_text, local = BAD_TIME_TEXT, None
    state = _bound_int(rp.state, "state", flags)
    verify = _bound_int(rp.verify, "verify", flags)
    uid = _bound_int(rp.uid, "uid", flags)
    workcode = _bound_int(rp.workcode, "workcode", flags)
    raw_time = _bound_int(rp.raw_time, "raw_time", flags, low=INT64_MIN, high=INT64_MAX)
    if not flags:
        return rp, flags
    flags.append(VALUE_FLAG)
    return RawPunch(user_id=user_id, time_text=time_text, local_time=local, state=state, verify=verify, uid=uid,
                    workcode=workcode, raw_time=raw_time), flags


def normalize_punches(raw: Iterable[RawPunch], ctx: DeviceContext, *, employees: EmployeeMap | None = None,
                      now: datetime | None = None) -> list[Punch]:
    """Normalize a batch of raw punches from one device. Never drops a punch.

    ``raw`` must be one download of the device's log in device order: the occurrence numbers of records
    with an untrusted time (see Punch.occurrence) count within it, so the same log read again numbers the
    same records the same way.

    Speed (a first poll normalizes a whole 100k log): a record whose values all fit skips ``bound_raw``
    (one combined check); the zone offset is looked up once per calendar day, not per punch; names and the
    employee of a PIN come from per-batch caches; a punch without flags shares one empty tuple; punches are
    built by ``_NEW_PUNCH`` with the cyclic garbage collector paused (``collector_paused``). A download held as
    columns (``drivers.base.RawPunchColumns``: the ZK driver) takes ``_normalize_columns``, which gives the same
    punches without building a RawPunch per record.
    """
    now = now or datetime.now(UTC)
    if isinstance(raw, RawPunchColumns) and _columns_fit(raw):
        try:
            return _normalize_columns(raw, ctx, employees, now)
        except _NotColumnar:
            pass
    zone = ZoneInfo(ctx.timezone)
    latest_ok = now + FUTURE_TOLERANCE
    rtc_reset_before = RTC_RESET_BEFORE.toordinal()
    not_before = ctx.not_before.toordinal()
    office_code, device_id, serial, timezone = ctx.office_code, ctx.device_id, ctx.serial, ctx.timezone
    employee_of: dict[str, str | None] | None = {} if employees is not None and employees.configured else None
    state_names, verify_names = STATE_NAMES, VERIFY_NAMES
    days: dict[int, _Day | None] = {}
    valid_time = _DEVICE_TIME.match
    new_punch = _NEW_PUNCH
    out: list[Punch] = []
    append = out.append
    seen: dict[tuple[str, str], int] = {}
    with collector_paused():  # one Punch per record, none in a cycle (drivers.base)
        for rp in raw:
            user_id, text, local, state, verify, uid, workcode, raw_time = rp  # (cheaper than 8 attribute reads)
            flags: tuple[str, ...] = ()
            if not (type(user_id) is str and len(user_id) <= USER_ID_MAX and user_id.isprintable()
                    and type(text) is str and valid_time(text) is not None
                    and type(state) is int and INT32_MIN <= state <= INT32_MAX
                    and type(verify) is int and INT32_MIN <= verify <= INT32_MAX
                    and type(uid) is int and INT32_MIN <= uid <= INT32_MAX
                    and type(workcode) is int and INT32_MIN <= workcode <= INT32_MAX
                    and type(raw_time) is int and INT64_MIN <= raw_time <= INT64_MAX):
                bounded, bound_flags = bound_raw(rp)  # the rare record with a value that does not fit
                user_id, text, local = bounded.user_id, bounded.time_text, bounded.local_time
                state, verify, uid, workcode, raw_time = (bounded.state, bounded.verify, bounded.uid, bounded.workcode,
                                                          bounded.raw_time)
                flags = tuple(bound_flags)
            utc_time: datetime | None = None
            day_number = 0
            if local is not None:
                try:
                    day_number = local.toordinal()
                    day = days.get(day_number, _UNKNOWN_DAY)
                    if day is _UNKNOWN_DAY:
                        day = days[day_number] = _day(local, zone)
                    if day is not None and local.tzinfo is None:
                        utc_time = day[1] + (local - day[0])
                    else:
                        # A day with a zone transition (not in Indonesia): fold=0 picks the first occurrence.
                        utc_time = local.replace(tzinfo=zone).astimezone(UTC)
                except OverflowError:  # year 1 east of UTC: no instant exists
                    local, utc_time = None, None
            if local is None or utc_time is None:
                local = None
                flags += ("impossible_date",)
            else:
                if day_number < rtc_reset_before:
                    flags += ("rtc_reset",)
                elif day_number < not_before:
                    flags += ("before_device",)
                if utc_time > latest_ok:
                    flags += ("future",)
            employee_id: str | None = None
            if employee_of is not None:
                if user_id in employee_of:
                    employee_id = employee_of[user_id]
                else:
                    assert employees is not None
                    employee_id = employee_of[user_id] = employees.lookup(serial, user_id)
                if employee_id is None:
                    flags += ("unmapped_user",)
            occurrence = 0
            if local is None or day_number < rtc_reset_before:  # UNTRUSTED_TIME_FLAGS: impossible_date, rtc_reset
                # A dead clock gives every punch the same time: the n-th record of this user at this time
                # in the log is occurrence n, so two real punches stay two, and a re-read maps them again.
                occurrence = seen[(user_id, text)] = seen.get((user_id, text), 0) + 1
            if len(flags) > 1:
                flags = tuple(dict.fromkeys(flags))
            append(new_punch(office_code, device_id, serial, user_id, text, local, utc_time, timezone, state,
                             state_names.get(state, "unknown"), verify, verify_names.get(verify, "unknown"), uid,
                             workcode, raw_time, employee_id, flags, occurrence))
    return out


class _NotColumnar(Exception):
    """A batch the columnar path cannot take after all (a day text that is not YYYY-MM-DD): the generic path runs."""


#: Item formats of buffer columns whose values all fit the INTEGER columns (u8/u16, signed or not).
_SMALL_INT_FORMATS = frozenset("bBhH")


def _small_ints(column: object, formats: frozenset[str] = _SMALL_INT_FORMATS) -> bool:
    return isinstance(column, bytes) or (isinstance(column, memoryview) and column.format in formats)


def _columns_fit(cols: RawPunchColumns) -> bool:
    """Whether ``_normalize_columns`` gives exactly what the generic path gives for this batch: its integer columns
    are buffers whose item type bounds every value (states, verifies, uids: 8 or 16 bits; work codes and times: at
    most unsigned 32 bits, so only a work code can be out of range, checked per record), its user ids are text."""
    u32 = _SMALL_INT_FORMATS | {"I"}
    return (_small_ints(cols.states, frozenset("B")) and _small_ints(cols.verifies, frozenset("B"))
            and _small_ints(cols.uids) and _small_ints(cols.workcodes, u32)
            and isinstance(cols.times, memoryview) and cols.times.format == "I"
            and all(type(user_id) is str for user_id in cols.user_ids.values()))


#: What _normalize_columns knows of one device day: (first raw time of the day, "YYYY-MM-DD " text, local
#: midnight or None for an impossible date, UTC instant of that midnight or None (a zone transition that day:
#: per punch), the day's flags, whether a punch may be "future", whether its time is untrusted).
_ColumnDay = tuple[int, str, datetime | None, datetime | None, tuple[str, ...], bool, bool]


def _normalize_columns(cols: RawPunchColumns, ctx: DeviceContext, employees: EmployeeMap | None,
                       now: datetime) -> list[Punch]:
    """``normalize_punches`` of a batch held as columns: the same punches, without a RawPunch per record.

    Everything that depends on the user (the stored id, its bound flag, the employee) is computed once per
    distinct user key, everything that depends on the day (text, local midnight, its UTC instant, the zone
    offset, rtc_reset / before_device / impossible_date) once per device day, the time of day from the shared
    per-second table. Per record: the time text (one concatenation), the local and UTC datetimes (one addition
    each), the Punch. tests/polling/test_normalize_columns.py proves the result equal to the generic path's.
    """
    zone = ZoneInfo(ctx.timezone)
    latest_ok = now + FUTURE_TOLERANCE
    rtc_reset_before = RTC_RESET_BEFORE.toordinal()
    not_before = ctx.not_before.toordinal()
    office_code, device_id, serial, timezone = ctx.office_code, ctx.device_id, ctx.serial, ctx.timezone
    mapped = employees is not None and employees.configured
    employee_of: dict[str, str | None] = {}
    # Per user key: (user id as stored, its bound flags, employee id, flags after the time's).
    users: dict[object, tuple[str, tuple[str, ...], str | None, tuple[str, ...]]] = {}
    for key, text in cols.user_ids.items():
        user_id, changed = _bound_text(text, USER_ID_MAX)
        employee_id: str | None = None
        after: tuple[str, ...] = ()
        if mapped:
            if user_id not in employee_of:
                assert employees is not None
                employee_of[user_id] = employees.lookup(serial, user_id)
            employee_id = employee_of[user_id]
            if employee_id is None:
                after = ("unmapped_user",)
        users[key] = (user_id, ("bad_user_id",) if changed else (), employee_id, after)
    state_name_of = [STATE_NAMES.get(code, "unknown") for code in range(256)]
    verify_name_of = [VERIFY_NAMES.get(code, "unknown") for code in range(256)]
    one_day = timedelta(days=1)

    def column_day(day_index: int) -> _ColumnDay:
        text, midnight = cols.day(day_index)
        if _DEVICE_TIME.match(text + "00:00:00") is None:
            raise _NotColumnar(text)
        start = day_index * 86400
        if midnight is None:
            return start, text, None, None, ("impossible_date",), False, True
        day_number = midnight.toordinal()
        flags: tuple[str, ...] = ()
        if day_number < rtc_reset_before:
            flags = ("rtc_reset",)
        elif day_number < not_before:
            flags = ("before_device",)
        day = _day(midnight, zone)
        utc_midnight = None if day is None else day[1]
        may_be_future = utc_midnight is None or utc_midnight + one_day > latest_ok
        return start, text, midnight, utc_midnight, flags, may_be_future, day_number < rtc_reset_before

    days: dict[int, _ColumnDay] = {}
    clocks = CLOCKS
    new_punch = _NEW_PUNCH
    out: list[Punch] = []
    append = out.append
    seen: dict[tuple[str, str], int] = {}
    day_start, day_text, midnight, utc_midnight = -2 * 86400, "", None, None
    day_flags: tuple[str, ...] = ()
    may_be_future = untrusted = False
    with collector_paused():  # one Punch per record, none in a cycle (drivers.base)
        for key, t, state, verify, uid, workcode in zip(cols.user_keys, cols.times, cols.states, cols.verifies,
                                                        cols.uids, cols.workcodes, strict=True):
            second = t - day_start
            if not 0 <= second < 86400:  # a log is in time order: the day changes rarely
                day_index = t // 86400
                entry = days.get(day_index)
                if entry is None:
                    entry = days[day_index] = column_day(day_index)
                day_start, day_text, midnight, utc_midnight, day_flags, may_be_future, untrusted = entry
                second = t - day_start
            clock, offset = clocks[second] or clock_of_day(second)
            text = day_text + clock
            user_id, user_flags, employee_id, user_after = users[key]
            flags = day_flags
            if midnight is None:
                local = utc_time = None
            else:
                local = midnight + offset
                if utc_midnight is not None:
                    utc_time = utc_midnight + offset
                else:  # a day with a zone transition: fold=0 picks the first occurrence (as the generic path)
                    utc_time = local.replace(tzinfo=zone).astimezone(UTC)
                if may_be_future and utc_time > latest_ok:
                    flags += ("future",)
            if user_after:
                flags += user_after
            if user_flags or workcode > INT32_MAX:
                bound: list[str] = list(user_flags)
                workcode = _bound_int(workcode, "workcode", bound)
                flags = (*bound, VALUE_FLAG, *flags)
            occurrence = 0
            if untrusted:  # as the generic path: the n-th record of this user at this time is occurrence n
                occurrence = seen[(user_id, text)] = seen.get((user_id, text), 0) + 1
            append(new_punch(office_code, device_id, serial, user_id, text, local, utc_time, timezone, state,
                             state_name_of[state], verify, verify_name_of[verify], uid, workcode, t, employee_id,
                             flags, occurrence))
    return out


def _day(local: datetime, zone: ZoneInfo) -> _Day | None:
    """(local midnight, the same instant in UTC) of ``local``'s calendar day, when the zone's offset is the same
    all day; None for a day with a transition (then each punch is converted on its own)."""
    midnight = datetime(local.year, local.month, local.day)
    try:
        first, last = zone.utcoffset(midnight), zone.utcoffset(midnight + timedelta(days=1, microseconds=-1))
        if first is None or first != last:
            return None
        return midnight, (midnight - first).replace(tzinfo=UTC)
    except OverflowError:  # the first or last day a datetime can hold: convert per punch (and flag it there)
        return None


def _positional_constructor(cls: type[Punch]) -> Callable[..., Punch]:
    """``cls(*values)`` for a frozen, slotted dataclass, without its per-field ``object.__setattr__`` calls.

    Why: a frozen dataclass's ``__init__`` sets each of Punch's 18 fields through ``object.__setattr__``, which is
    most of the cost of normalizing a punch. Here the object is built as an instance of an unfrozen twin class
    with the same slots, whose 18 plain attribute stores run at the interpreter's slot-store speed, and then
    becomes a ``cls`` by ``__class__`` assignment, which CPython allows only between classes of the same layout
    (it raises TypeError otherwise). Measured 2.5x faster than setting the slots through their descriptors, itself
    twice as fast as the dataclass's ``__init__``. The result is checked against the ordinary constructor once,
    here (and by tests/polling/test_normalize.py); if the twin cannot stand in (another layout, another Python),
    the descriptors are used. Generated from the dataclass's own fields, so it follows them; a class with
    ``__post_init__`` or without slots gets its ordinary constructor.
    """
    fields = dataclasses.fields(cls)
    if hasattr(cls, "__post_init__") or not hasattr(cls, "__slots__") or any(not f.init for f in fields):
        return cls
    params = ", ".join(f"v{i}" for i in range(len(fields)))
    name = f"<{cls.__name__} positional constructor>"
    try:
        twin = type(f"_{cls.__name__}Twin", (), {"__slots__": cls.__slots__})
        stores = "".join(f"    obj.{f.name} = v{i}\n" for i, f in enumerate(fields))
        scope: dict[str, object] = {"allocate": object.__new__, "twin": twin, "cls": cls}
        exec(compile(f"def new({params}):\n    obj = allocate(twin)\n{stores}    obj.__class__ = cls\n"
                     "    return obj\n", name, "exec"), scope)
        constructor: Callable[..., Punch] = scope["new"]  # type: ignore[assignment]
        sample: tuple[Any, ...] = tuple(f"v{i}" for i in range(len(fields)))  # distinct: proves the order
        built = constructor(*sample)
        if type(built) is cls and built == cls(*sample) and all(
                getattr(built, f.name) == value for f, value in zip(fields, sample, strict=True)):
            return constructor
    except TypeError:  # "object layout differs": the twin cannot become a cls
        pass
    setters = "".join(f"    set{i}(obj, v{i})\n" for i in range(len(fields)))
    scope = {"allocate": object.__new__, "cls": cls,
             **{f"set{i}": getattr(cls, f.name).__set__ for i, f in enumerate(fields)}}
    exec(compile(f"def new({params}):\n    obj = allocate(cls)\n{setters}    return obj\n", name, "exec"), scope)
    constructor = scope["new"]  # type: ignore[assignment]
    return constructor


#: Punch(*values), in field order, fast (see _positional_constructor).
_NEW_PUNCH = _positional_constructor(Punch)

"""The driver contract: what the gateway's poller may ask of any terminal, and how failures are classified.

Flow: gateway.polling.poller -> Driver.connect() -> Session.{info,counts,read_punches,...} -> device.
A driver is small, synchronous and blocking; it returns raw device values (no time zone, no dedup:
that is gateway.polling.normalize's job) and raises only the DriverError subclasses below, so the poller and
the health model can react to *what kind* of failure happened (offline vs misconfigured vs broken).
This module imports nothing from gateway/ and nothing device specific.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Collection, Hashable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, NamedTuple, Protocol, overload, runtime_checkable

# ---------------------------------------------------------------------------------------------
# Values a session returns
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    """Identity and clock of a terminal, read at the start of every session."""

    #: Serial number: the device's identity. A device is identified by it, never by its IP.
    serial: str
    #: Firmware version text as the device reports it (e.g. "Ver 6.60 Apr 28 2017").
    firmware: str = ""
    #: Platform / model text (e.g. "ZEM560"); "" when the device does not say.
    platform: str = ""
    #: Device name as configured on the terminal; "" when unknown.
    device_name: str = ""
    #: MAC address text; "" when unknown.
    mac: str = ""
    #: The device's wall clock (naive, device-local) when it was read; None if unreadable.
    device_time: datetime | None = None


@dataclass(frozen=True, slots=True)
class Counts:
    """Record and user counts with capacities: the cheap "anything new?" check of every poll."""

    records: int
    users: int
    #: Capacities (0 when the device does not report them).
    records_cap: int = 0
    users_cap: int = 0
    fingers: int = 0
    fingers_cap: int = 0
    faces: int = 0
    faces_cap: int = 0
    #: Empty when the device's counts are trustworthy. Otherwise why not (e.g. "GET_FREE_SIZES answered
    #: with 4 bytes"): the driver then counted ``records`` by downloading the whole log (the poller may
    #: turn this text into a health notice; the punches of that download are reused by read_punches()).
    unreliable: str = ""


class RawPunch(NamedTuple):
    """One attendance record exactly as the device holds it; the gateway normalizes it later.

    A NamedTuple, not a dataclass: a download of a list-returning driver builds one per record (200,000 for a
    big log), and a frozen dataclass costs about 15 times more to build (measured: 2.4 us against 0.15 us
    through ``tuple.__new__``). It is immutable and hashable all the same. The ZK driver returns its downloads
    as ``RawPunchColumns`` instead, which builds a RawPunch only when one is asked for.

    ``time_text`` is the device-local wall clock as ``YYYY-MM-DD HH:MM:SS``, decoded without
    validation: a terminal with a broken clock can hold impossible dates (Feb 31, year 2000 after an
    RTC reset) and those must still be stored and flagged, never dropped. ``local_time`` is the same
    instant as a naive datetime, or None when the text is not a real calendar date.
    """

    #: The user id as the device shows it on screen (PIN / NIP text).
    user_id: str
    #: Device-local wall-clock text, ``YYYY-MM-DD HH:MM:SS``.
    time_text: str
    #: Same as a naive datetime; None if ``time_text`` is not a valid date.
    local_time: datetime | None
    #: Attendance state code as stored (0 in, 1 out, 2 break out, 3 break in, 4 OT in, 5 OT out, ...).
    state: int
    #: Verify mode code as stored (1 fingerprint, 15 face, 4 card, 3 password, ...).
    verify: int
    #: Device-internal user serial (uid), 0 when the layout has none.
    uid: int = 0
    #: Work code, 0 when the layout has none.
    workcode: int = 0
    #: Raw encoded time value as read from the device (ZK: the u32 of §2.5); -1 if not applicable.
    raw_time: int = -1


#: ``day_of(day_index) -> ("YYYY-MM-DD ", midnight)`` of a raw time counted as ``day_index * 86400 + second of the
#: day`` (ZK's encoding, drivers/zk/records.py); midnight is None when that day is not a real calendar date.
DayOf = Callable[[int], tuple[str, datetime | None]]

#: Second of the day -> ("HH:MM:SS", offset from midnight), None until that second first occurs; shared by every
#: decode (a log's punches repeat the same times of day). A list: indexing is cheaper than a dict.
CLOCKS: list[tuple[str, timedelta] | None] = [None] * 86400


def clock_of_day(second: int) -> tuple[str, timedelta]:
    """Second of the day (0-86399) -> ("HH:MM:SS", the offset from midnight), from a table shared by every decode."""
    entry = CLOCKS[second]
    if entry is None:
        h, rest = divmod(second, 3600)
        mi, s = divmod(rest, 60)
        entry = CLOCKS[second] = (f"{h:02d}:{mi:02d}:{s:02d}", timedelta(seconds=second))
    return entry


class RawPunchColumns(Sequence[RawPunch]):
    """A whole download held as columns: a ``Sequence[RawPunch]`` that builds each ``RawPunch`` only when asked.

    Why: a 100k-record download decoded into one RawPunch per record spent most of its time building the
    records' time texts, datetimes and tuples (issue 14), and the poller's normalize then built the same
    values again into its ``Punch``. Held as columns (integers as the device sent them, in buffers), the decode
    costs a few copies of the buffer; ``gateway.polling.normalize`` builds each ``Punch`` straight from the
    columns and the per-day / per-second tables, and every other consumer (indexing, slicing, iteration,
    ``len``, equality with a list of RawPunch) sees exactly the RawPunch values a record-by-record decode
    gives (tests/drivers/test_zk_decode_fast.py).

    Columns, one item per record, all of the same length: ``user_keys`` (a hashable per record: the uid, the
    user number or the raw id text) with ``user_ids`` mapping each key to the user id text; ``times``, the raw
    time ``day_index * 86400 + second of the day`` (also ``RawPunch.raw_time``), whose day part ``day_of``
    turns into text and midnight (cached per batch); ``states``, ``verifies``, ``uids``, ``workcodes``.
    Immutable by contract: nobody writes to the columns after the decode.
    """

    __slots__ = ("_days", "day_of", "states", "times", "uids", "user_ids", "user_keys", "verifies", "workcodes")

    def __init__(self, *, user_keys: Sequence[Hashable], user_ids: Mapping[Any, str], times: Sequence[int],
                 states: Sequence[int], verifies: Sequence[int], uids: Sequence[int], workcodes: Sequence[int],
                 day_of: DayOf, days: dict[int, tuple[str, datetime | None]] | None = None) -> None:
        n = len(times)
        if not len(user_keys) == len(states) == len(verifies) == len(uids) == len(workcodes) == n:
            raise ValueError("RawPunchColumns: columns of different lengths")
        self.user_keys, self.user_ids, self.times = user_keys, user_ids, times
        self.states, self.verifies, self.uids, self.workcodes = states, verifies, uids, workcodes
        self.day_of = day_of
        self._days = {} if days is None else days

    def day(self, day_index: int) -> tuple[str, datetime | None]:
        """``day_of(day_index)``, cached for this batch (and its slices)."""
        entry = self._days.get(day_index)
        if entry is None:
            entry = self._days[day_index] = self.day_of(day_index)
        return entry

    def __len__(self) -> int:
        return len(self.times)

    @overload
    def __getitem__(self, index: int) -> RawPunch: ...

    @overload
    def __getitem__(self, index: slice) -> RawPunchColumns: ...

    def __getitem__(self, index: int | slice) -> RawPunch | RawPunchColumns:
        if isinstance(index, slice):
            return RawPunchColumns(
                user_keys=self.user_keys[index], user_ids=self.user_ids, times=self.times[index],
                states=self.states[index], verifies=self.verifies[index], uids=self.uids[index],
                workcodes=self.workcodes[index], day_of=self.day_of, days=self._days)
        t = self.times[index]
        day_index, second = divmod(t, 86400)
        day_text, midnight = self.day(day_index)
        clock, offset = clock_of_day(second)
        return RawPunch(self.user_ids[self.user_keys[index]], day_text + clock,
                        None if midnight is None else midnight + offset, self.states[index], self.verifies[index],
                        self.uids[index], self.workcodes[index], t)

    def __iter__(self) -> Iterator[RawPunch]:
        names, day, clocks, new, punch = self.user_ids, self.day, CLOCKS, tuple.__new__, RawPunch
        day_start, day_text, midnight = -2 * 86400, "", None
        for key, t, state, verify, uid, workcode in zip(self.user_keys, self.times, self.states, self.verifies,
                                                        self.uids, self.workcodes, strict=True):
            second = t - day_start
            if not 0 <= second < 86400:  # a log is in time order: the day changes rarely
                day_start = t - t % 86400
                day_text, midnight = day(t // 86400)
                second = t - day_start
            clock, offset = clocks[second] or clock_of_day(second)
            yield new(punch, (names[key], day_text + clock, None if midnight is None else midnight + offset,
                              state, verify, uid, workcode, t))

    def record_values(self) -> Iterator[tuple[Any, ...]]:
        """(user id, raw time, state, verify, uid, work code) of each record, built from C without a RawPunch: what
        tells apart two records of batches with the same ``day_of`` (their time text and datetime follow from the
        raw time). For multiset comparisons of whole downloads (a guarded clear)."""
        return zip(map(self.user_ids.__getitem__, self.user_keys), self.times, self.states, self.verifies, self.uids,
                   self.workcodes, strict=True)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, RawPunchColumns | list):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # like a list: equal to one, so not hashable

    def __repr__(self) -> str:
        return f"<RawPunchColumns of {len(self)} records>"


@contextmanager
def collector_paused(*, resume: bool = True) -> Iterator[None]:
    """Pause Python's cyclic garbage collector while a batch builds many objects that cannot form cycles.

    A download builds one RawPunch (and its text and datetime) per record, the poller's normalize one Punch
    per punch: hundreds of thousands in a row, none part of a cycle, yet each allocation burst triggers
    collections that traverse every live container again and again (measured: about a third of a 100k
    normalize, half of a 200k decode). The collector is switched back on only if it was on, so nested or
    concurrent batches (poll threads) end with it as the first of them found it (a batch that overlaps another
    may see collections resume before it ends: only slower, never wrong).

    ``resume`` False: left off when the block ends normally (a process about to end, whose objects the operating
    system frees at once: gateway.cli), switched back on if it raised.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    except BaseException:
        if was_enabled:
            gc.enable()
        raise
    if was_enabled and resume:
        gc.enable()


#: Progress of a long download: ``progress(records_read, records_expected)``; expected is 0 when unknown.
#: Called from the polling thread, at most a few times per second; it must be cheap and must not raise.
Progress = Callable[[int, int], None]


@dataclass(frozen=True, slots=True)
class LogPosition:
    """Where an earlier read of a terminal's log ended: what a tail read starts from and proves.

    ``records`` is how many records the log held at that read; ``last`` is the last of them (index
    ``records - 1``). A tail read re-reads that record: if it is not ``last`` any more, the log was
    cleared, rolled or rewritten since, and only a full download is safe.
    """

    records: int
    last: RawPunch


@dataclass(frozen=True, slots=True)
class DeviceUser:
    """A user enrolled on a terminal."""

    uid: int
    user_id: str
    name: str = ""
    privilege: int = 0
    card: int = 0
    group_id: str = ""


@dataclass(frozen=True, slots=True)
class LiveEvent:
    """A punch pushed by the device in real time (live capture)."""

    punch: RawPunch


# ---------------------------------------------------------------------------------------------
# The contract
# ---------------------------------------------------------------------------------------------


class Session(Protocol):
    """An open conversation with one device. Obtained only from ``Driver.connect()``.

    Leaving the ``with`` block always closes the connection and re-enables the terminal if the
    session disabled it, whatever failed inside.
    """

    def info(self, *, clock: bool = True) -> DeviceInfo:
        """Serial, firmware, model and (``clock=True``) the device clock.

        ``clock=False`` skips reading the device clock (``device_time`` is None): one round trip less for a
        poll that does not need it. A driver may serve firmware/platform/name/MAC from its cache of the
        same serial; the serial itself is read from the device every session (it is the identity check).
        """
        ...

    def counts(self) -> Counts:
        """Record/user counts and capacities (cheap; no log download)."""
        ...

    def read_punches(self, progress: Progress | None = None) -> Sequence[RawPunch]:
        """Download the whole attendance log, in device order. ``progress`` is told how far it got.

        A list, or a ``RawPunchColumns`` (the ZK driver: the records held as columns, each RawPunch built
        when asked).
        """
        ...

    @property
    def bytes_read(self) -> int:
        """Payload bytes received from the device in this session so far (for poll statistics)."""
        ...


class DeviceTarget(Protocol):
    """What a driver factory reads from a configured device (gateway.config.DeviceConfig is one).

    Drivers are built from this, never from gateway types: drivers/ imports nothing from gateway/.
    """

    @property
    def address(self) -> str:
        """IP address or host name."""
        ...

    @property
    def port(self) -> int:
        """TCP/UDP port."""
        ...

    @property
    def transport(self) -> str:
        """"tcp" or "udp" (what the protocol offers)."""
        ...

    @property
    def comm_key(self) -> int:
        """Numeric device password; 0 when none. Never log it."""
        ...

    @property
    def timeout_s(self) -> float:
        """Per-request timeout in seconds."""
        ...

    @property
    def serial(self) -> str | None:
        """Expected serial number, when pinned in the config."""
        ...

    @property
    def quirks(self) -> Mapping[str, Any]:
        """Driver workarounds from the config (``[devices.quirks]``), validated by the driver."""
        ...


class Driver(Protocol):
    """Reaches one configured device. Blocking; one caller at a time."""

    def connect(self, deadline: float | None = None) -> AbstractContextManager[Session]:
        """Open a session. On failure raises a DriverError and leaves no state behind.

        ``deadline``: a ``time.monotonic()`` instant after which the session stops waiting for the
        device, even in the middle of a download (a device trickling bytes would otherwise hold the
        poll, and its keypad lock, indefinitely); passing it raises ProtocolError. None = no limit
        beyond the per-request timeouts.
        """
        ...


@runtime_checkable
class ReadsUsers(Protocol):
    """Optional session ability: download the enrolled users."""

    def read_users(self) -> list[DeviceUser]: ...


@runtime_checkable
class ReadsNewPunches(Protocol):
    """Optional session ability: read only the records added since an earlier read (a tail read).

    Returns the records after the first ``known.records`` of the log, in device order (the overlap record
    itself is not returned), after checking that record ``known.records - 1`` is still ``known.last``.
    Returns None when that proof fails or the log holds fewer records than ``known.records`` (cleared,
    rolled over, rewritten): the caller must then download the whole log. Costs a transfer of the new
    records plus one, not of the whole log.
    """

    def read_punches_after(self, known: LogPosition,
                           progress: Progress | None = None) -> Sequence[RawPunch] | None: ...


@runtime_checkable
class SetsClock(Protocol):
    """Optional session ability: set the device clock (device-local naive time)."""

    def set_time(self, local_time: datetime) -> None: ...


@runtime_checkable
class ClearsLog(Protocol):
    """Optional session ability: clear the attendance log. Only call once every record is stored.

    ``expected_records``: clear only if the device still holds exactly that many records (else Busy),
    so a punch that landed after the last download is never wiped. ``expected``: the records of that
    download; the driver then re-reads the log with the keypad locked and clears only if it holds exactly
    this multiset of records (else Busy). Counts alone miss a log that overwrites its oldest record when
    full: the count stays the same while the records change.
    """

    def clear_punches(self, expected_records: int | None = None, *,
                      expected: Collection[RawPunch] | None = None) -> None: ...


@runtime_checkable
class EnablesDevice(Protocol):
    """Optional session ability: re-enable a terminal that an earlier session (maybe a killed process)
    left disabled. Harmless when the terminal is already enabled."""

    def enable_device(self) -> None: ...


@dataclass(frozen=True, slots=True)
class EnrolledUser:
    """A user as a backup keeps it: what ``DeviceUser`` says plus the password, for a faithful restore.

    The password (a short PIN typed at the keypad) is a secret like the templates: it is left out of
    ``repr()``, and the gateway stores it only encrypted (gateway.enrol). ``has_password`` is what may
    be shown.
    """

    #: Device-internal user serial (u16); templates refer to users by it.
    uid: int
    #: The PIN / NIP the employee types and the log carries.
    user_id: str
    name: str = ""
    #: Privilege byte as stored (0 normal, 2 enroller, 6 manager, 14 super admin; bit 0 = disabled).
    privilege: int = 0
    card: int = 0
    #: Group as the device stores it (28-byte users: a number; 72-byte users: short text).
    group_id: str = ""
    password: str = field(default="", repr=False)

    @property
    def has_password(self) -> bool:
        """Whether the user can verify with a password (the password itself is never shown)."""
        return bool(self.password)


@dataclass(frozen=True, slots=True)
class Template:
    """One fingerprint template exactly as the terminal holds it. ``repr()`` never shows the bytes.

    Biometric data: only gateway.enrol may keep it, encrypted. ``data`` is opaque (the terminal's
    algorithm version says whether another terminal can read it: ``Enrolments.algorithm``).
    """

    uid: int
    #: Finger index 0-9.
    finger: int
    #: The terminal's valid flag (1 normal; other values mark e.g. a duress finger on some firmware).
    valid: int
    data: bytes = field(repr=False)

    @property
    def size(self) -> int:
        """Template length in bytes."""
        return len(self.data)


@dataclass(frozen=True, slots=True)
class Enrolments:
    """Who is enrolled on a terminal and how: its users and fingerprint templates, read in one session."""

    users: tuple[EnrolledUser, ...]
    templates: tuple[Template, ...]
    #: Fingerprint algorithm version the terminal reports (ZK: option ``~ZKFPVersion``, e.g. 10); 0 = unknown.
    algorithm: int = 0
    #: Size of the user record on the wire (ZK: 28 or 72); restore writes users in the target's own layout.
    user_layout: int = 0
    #: None: ``templates`` is every template of the terminal. Otherwise an incremental read
    #: (ReadsChangedEnrolments): ``templates`` holds only the templates of these uids.
    template_uids: frozenset[int] | None = None


@dataclass(frozen=True, slots=True)
class EnrolmentView:
    """What an incremental backup sees before any template is read: the user table and the counts."""

    users: tuple[EnrolledUser, ...]
    #: Templates the terminal says it holds; -1 when its counts cannot be trusted.
    templates: int
    algorithm: int
    user_layout: int
    #: Total bytes of the templates (sizes added up, without the table's own overhead), as the terminal
    #: announces its template table before sending it; -1 when not known.
    table_bytes: int = -1


@dataclass(frozen=True, slots=True)
class TemplateReadPlan:
    """Which users' templates an incremental backup reads one by one; the other users' templates are carried
    over from the previous backup, which holds ``carried`` of them. The driver reads the whole template table
    instead when ``carried`` + what it read does not add up to the terminal's own count (and table bytes)."""

    uids: frozenset[int]
    carried: int
    #: Total bytes of the carried templates; -1: not known (then only the counts are checked).
    carried_bytes: int = -1


#: ``plan(view) -> TemplateReadPlan``, or None: read the whole template table. Cheap and pure: it runs while
#: the keypad is locked.
PlanTemplateReads = Callable[[EnrolmentView], "TemplateReadPlan | None"]


#: Progress of an enrolment write: ``progress(users_done, users_total)``. Cheap, must not raise.
EnrolProgress = Callable[[int, int], None]


@runtime_checkable
class ReadsEnrolments(Protocol):
    """Optional session ability: read every user and fingerprint template (for a backup).

    The keypad is locked only while the two tables are read and unlocked before anything is decoded;
    the session's deadline bounds the reads; a template table larger than the terminal's capacity
    allows is refused (ProtocolError) rather than read without end.
    """

    def read_enrolments(self, progress: Progress | None = None) -> Enrolments: ...


@runtime_checkable
class ReadsChangedEnrolments(Protocol):
    """Optional session ability: an incremental backup read. Locks the keypad, reads the user table and the
    counts, asks ``plan`` whose templates to read, reads those one user at a time (or the whole table when
    ``plan`` says None or the counts do not add up), unlocks. ``Enrolments.template_uids`` tells which."""

    def read_changed_enrolments(self, plan: PlanTemplateReads, progress: Progress | None = None) -> Enrolments: ...


@runtime_checkable
class WritesEnrolments(Protocol):
    """Optional session ability: write users and their templates to a terminal (for a restore).

    ``write_users`` adds or overwrites users by uid (passwords included). ``write_templates`` stores
    templates (by ``uid`` and finger, replacing those fingers) together with ``owners``, the user records
    they belong to (ZK uploads both in one buffer). Both lock the keypad while
    writing, refresh the terminal's data afterwards, and raise a DriverError when the terminal refuses
    (capacity, unknown user): the caller then reads back to see what was stored.
    ``algorithm()`` is the terminal's fingerprint algorithm version (0 = unknown), checked before any
    template is written.
    """

    def algorithm(self) -> int: ...

    def write_users(self, users: Collection[EnrolledUser], progress: EnrolProgress | None = None) -> None: ...

    def write_templates(self, templates: Collection[Template], owners: Collection[EnrolledUser],
                        progress: EnrolProgress | None = None) -> None: ...


@runtime_checkable
class DeletesEnrolments(Protocol):
    """Optional session ability: delete users (and their templates) by uid, for an office sync that
    propagates deletes (gateway/enrol/sync.py). Locks the keypad while deleting, refreshes afterwards."""

    def delete_users(self, uids: Collection[int]) -> None: ...


# ---------------------------------------------------------------------------------------------
# Error tree
# ---------------------------------------------------------------------------------------------


@dataclass
class DriverError(Exception):
    """Base of every failure a driver reports. ``kind`` is a stable machine-readable name."""

    message: str
    #: True when retrying later may succeed without anyone changing anything.
    transient: bool = True
    #: Seconds the device asked us to wait, when it said so.
    retry_after: float | None = None
    #: Last raw frames (hex) seen on the wire, for protocol errors; never contains secrets.
    frames: list[str] = field(default_factory=list)

    kind = "error"

    def __post_init__(self) -> None:
        super().__init__(self.message)

    def __str__(self) -> str:
        return self.message


class Unreachable(DriverError):
    """No answer: timeout, connection refused, no route. The device may be off or unplugged."""

    kind = "unreachable"


class Busy(DriverError):
    """The device answered but is busy (enrolment in progress, another client). Retry later."""

    kind = "busy"


class AuthRejected(DriverError):
    """The device refused our comm key: a configuration problem, not an outage."""

    kind = "auth_rejected"

    def __init__(self, message: str, **kw: object) -> None:
        super().__init__(message, transient=False, **kw)  # type: ignore[arg-type]


class IdentityMismatch(DriverError):
    """The device at this address has another serial than the one configured (DHCP moved it?)."""

    kind = "identity_mismatch"

    def __init__(self, message: str, *, expected: str = "", found: str = "", **kw: object) -> None:
        super().__init__(message, transient=False, **kw)  # type: ignore[arg-type]
        self.expected = expected
        self.found = found


class ProtocolError(DriverError):
    """The device answered something we cannot make sense of (corrupt chunk, wrong sizes, ...)."""

    kind = "protocol_error"


__all__ = [
    "AuthRejected",
    "Busy",
    "ClearsLog",
    "Counts",
    "DayOf",
    "DeviceInfo",
    "DeviceTarget",
    "DeviceUser",
    "Driver",
    "DriverError",
    "EnablesDevice",
    "EnrolProgress",
    "EnrolledUser",
    "Enrolments",
    "IdentityMismatch",
    "LiveEvent",
    "LogPosition",
    "Progress",
    "ProtocolError",
    "RawPunch",
    "RawPunchColumns",
    "ReadsEnrolments",
    "ReadsNewPunches",
    "ReadsUsers",
    "Session",
    "SetsClock",
    "Template",
    "Unreachable",
    "WritesEnrolments",
    "clock_of_day",
    "collector_paused",
]

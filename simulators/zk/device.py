"""One simulated terminal: its spec, users, compact attendance log, clock, faults and truth rows.

Owned by ``Fleet`` (server.py); the wire sessions in ``session.py`` read it and ask it for
datasets. The log is one ``array('Q')`` (8 bytes a punch), wire datasets are built lazily and
cached per layout, so 200k-record logs stay cheap. Public methods are thread-safe (one RLock)
because tests and the control API call them from other threads while the loop serves clients.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import random
import struct
import threading
from array import array
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from simulators.zk import generator
from simulators.zk.faults import ACTIONS, Fault, is_active, normalize_fault
from simulators.zk.profiles import PROFILES
from simulators.zk.protocol import (
    ATT40_TAIL,
    FREE_SIZES_LAYOUTS,
    RECORD_LAYOUTS,
    USER_LAYOUTS,
    Sizes,
    User,
    dataset,
    decode_fields,
    encode_time,
    pack_att8,
    pack_att16,
    time_text,
)
from simulators.zk.templates import StoredTemplate, fits_version, make_template, template_table

if TYPE_CHECKING:
    from simulators.zk.truth import TruthWriter

log = logging.getLogger("simulators.zk.device")

_EPOCH_2000 = datetime(2000, 1, 1)


@dataclass
class DeviceSpec:
    """Everything needed to create one simulated device (validated in ``__post_init__``)."""

    serial: str = "SIM0001"  #: serial number (≤ 23 chars), the device's identity
    host: str = "127.0.0.1"  #: address to bind (any 127.0.0.x works on Linux)
    port: int = 0  #: 0 = pick one free port usable for both TCP and UDP
    tcp: bool = True  #: listen on TCP
    udp: bool = True  #: listen on UDP (same port number)
    record_layout: int = 40  #: attendance record size on the wire: 8, 16 or 40
    user_layout: int = 72  #: user record size on the wire: 28 or 72
    comm_key: int = 0  #: comm key (password) the device requires; 0 = none
    users: int = 50  #: users generated at start
    records: int = 1000  #: attendance records generated at start
    seed: int = 1  #: seed of all generated data and random faults
    timezone: str = "Asia/Jakarta"  #: IANA zone of the device's local clock
    start_date: date | None = None  #: first day of history; None = ends yesterday
    records_cap: int = 200_000  #: attendance capacity
    users_cap: int = 5_000  #: user capacity
    punches_per_minute: float = 0.0  #: new punches while running (while enabled)
    firmware: str = "Ver 6.60 Apr 28 2017"
    platform: str = "ZEM560"
    device_name: str = "iFace302"
    mac: str = ""  #: "" = derived from the serial (00:17:61:xx:xx:xx)
    faults: dict[str, Any] = field(default_factory=dict)  #: initial faults, e.g. {"slow": 0.5}
    overwrite_oldest: bool = False  #: when full, drop the oldest record instead of refusing
    tcp_buffered: bool = False  #: answer TCP 1503 buffered (PREPARE/DATA/ACK per chunk)
    user_ids: str = "auto"  #: "auto" (NIP where the layout allows), "nip" or "numeric"
    pin_width: int = 0  #: GET_PINWIDTH answer; 0 = derived from the longest user id (≥ 9)
    fingers: int = 0  #: fingerprint template count reported by read_sizes
    faces: int = 0  #: face template count reported by read_sizes
    #: model profile (simulators/zk/profiles.py): fills every field still at its default
    profile: str = "generic"
    #: UDP multi-packet answers: "session" (session id in every DATA datagram) or "counter" (0, 1, 2, …
    #: in the session field of the DATA packets, as real terminals do: the default)
    udp_framing: str = "counter"
    #: TCP chunk answers: "single" (one DATA packet a chunk) or "packets" (DATA packets of tcp_packet_size
    #: bytes back to back, packet counter in the session field, as real terminals do)
    tcp_framing: str = "single"
    tcp_packet_size: int = 1008  #: data bytes per DATA packet with tcp_framing = "packets"
    tcp_packet_gap_ms: float = 0.0  #: pause between the packets of a multi-packet TCP answer ("packets")
    tcp_write_size: int = 0  #: bytes per socket write (1 = one byte at a time, a stress case); 0 = whole packet
    free_sizes: str = "92"  #: GET_FREE_SIZES payload: "80", "92", "112" or "zero" (4 zero bytes)
    records_count: str = "exact"  #: record count GET_FREE_SIZES reports: "exact", "zero", "+N" or "-N"
    legacy_reads: bool = False  #: answer the direct reads 9 (users) and 13 (attendance) like K40-class units
    udp_sessions: int = 256  #: UDP session table size; when full the least recently used session is dropped
    #: fingerprint templates generated per user at start (fingers 0, 1, ...); 0 = none (``fingers`` is reported)
    templates_per_user: int = 0
    fp_version: int = 10  #: fingerprint algorithm version (option ~ZKFPVersion); templates of another are refused
    templates_cap: int = 3000  #: template capacity (GET_FREE_SIZES fingers_cap); uploads beyond it are refused

    def __new__(cls, *args: Any, **kwargs: Any) -> DeviceSpec:
        # Remember which fields the caller gave, so a profile fills only the others (an explicit value
        # equal to the default, e.g. udp_framing="session" on a counter-framing profile, still wins).
        self = super().__new__(cls)
        object.__setattr__(self, "_explicit", frozenset(kwargs) | frozenset(_FIELD_ORDER[:len(args)]))
        return self

    def __post_init__(self) -> None:
        if isinstance(self.profile, str) and self.profile in PROFILES:
            explicit: frozenset[str] = getattr(self, "_explicit", frozenset())
            for key, value in PROFILES[self.profile].settings.items():
                if key not in explicit:
                    setattr(self, key, value)
        errors: list[str] = []
        if not isinstance(self.profile, str) or self.profile not in PROFILES:
            errors.append(f"profile: unknown profile {self.profile!r} (known: {', '.join(PROFILES)})")
        if self.udp_framing not in UDP_FRAMINGS:
            errors.append(f"udp_framing: must be one of {', '.join(UDP_FRAMINGS)}, got {self.udp_framing!r}")
        if self.tcp_framing not in TCP_FRAMINGS:
            errors.append(f"tcp_framing: must be one of {', '.join(TCP_FRAMINGS)}, got {self.tcp_framing!r}")
        if isinstance(self.tcp_packet_size, bool) or not isinstance(self.tcp_packet_size, int) \
                or not 1 <= self.tcp_packet_size <= 65472:
            errors.append(f"tcp_packet_size: must be 1..65472, got {self.tcp_packet_size!r}")
        if isinstance(self.tcp_packet_gap_ms, bool) or not isinstance(self.tcp_packet_gap_ms, int | float) \
                or not 0 <= self.tcp_packet_gap_ms <= 60_000:
            errors.append(f"tcp_packet_gap_ms: must be 0..60000, got {self.tcp_packet_gap_ms!r}")
        if isinstance(self.tcp_write_size, bool) or not isinstance(self.tcp_write_size, int) \
                or not 0 <= self.tcp_write_size <= 1 << 20:
            errors.append(f"tcp_write_size: must be 0..1048576, got {self.tcp_write_size!r}")
        if isinstance(self.udp_sessions, bool) or not isinstance(self.udp_sessions, int) \
                or not 1 <= self.udp_sessions <= 100_000:
            errors.append(f"udp_sessions: must be 1..100000, got {self.udp_sessions!r}")
        if self.free_sizes not in FREE_SIZES_LAYOUTS:
            errors.append(f"free_sizes: must be one of {', '.join(FREE_SIZES_LAYOUTS)}, got {self.free_sizes!r}")
        try:
            count_skew(self.records_count, 0)
        except ValueError as e:
            errors.append(f"records_count: {e}")
        if not isinstance(self.serial, str) or not 0 < len(self.serial) <= 23 \
                or not self.serial.isprintable() or "=" in self.serial:
            errors.append(f"serial: must be 1–23 printable characters without '=', got {self.serial!r}")
        if not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            errors.append(f"port: must be 0..65535, got {self.port!r}")
        if not (self.tcp or self.udp):
            errors.append("tcp/udp: at least one transport must be enabled")
        if self.record_layout not in RECORD_LAYOUTS:
            errors.append(f"record_layout: must be one of 8, 16, 40, got {self.record_layout!r}")
        if self.user_layout not in USER_LAYOUTS:
            errors.append(f"user_layout: must be 28 or 72, got {self.user_layout!r}")
        if not isinstance(self.comm_key, int) or not 0 <= self.comm_key <= 0xFFFFFFFF:
            errors.append(f"comm_key: must be an integer 0..4294967295, got {self.comm_key!r}")
        for name in ("users", "records", "records_cap", "users_cap", "fingers", "faces", "templates_cap"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                errors.append(f"{name}: must be a non-negative integer, got {v!r}")
        if not errors:
            if self.records > self.records_cap:
                errors.append(f"records: {self.records} exceeds records_cap {self.records_cap}")
            if self.users > self.users_cap:
                errors.append(f"users: {self.users} exceeds users_cap {self.users_cap}")
            if self.users > 65535:
                errors.append(f"users: {self.users} exceeds 65535 (uid is a u16)")
            if self.records > 0 and self.users == 0:
                errors.append("records: a log needs at least one user")
        if isinstance(self.templates_per_user, bool) or not isinstance(self.templates_per_user, int) \
                or not 0 <= self.templates_per_user <= 10:
            errors.append(f"templates_per_user: must be 0..10, got {self.templates_per_user!r}")
        elif not errors and self.users * self.templates_per_user > self.templates_cap:
            errors.append(f"templates_per_user: {self.users} users x {self.templates_per_user} exceeds "
                          f"templates_cap {self.templates_cap}")
        if isinstance(self.fp_version, bool) or not isinstance(self.fp_version, int) or not 1 <= self.fp_version <= 255:
            errors.append(f"fp_version: must be 1..255, got {self.fp_version!r}")
        if isinstance(self.punches_per_minute, bool) or not isinstance(
                self.punches_per_minute, int | float) or self.punches_per_minute < 0:
            errors.append(f"punches_per_minute: must be ≥ 0, got {self.punches_per_minute!r}")
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError, TypeError):
            errors.append(f"timezone: unknown IANA zone {self.timezone!r}")
        if self.start_date is not None and not isinstance(self.start_date, date):
            errors.append(f"start_date: must be a date, got {self.start_date!r}")
        if self.user_ids not in ("auto", "nip", "numeric"):
            errors.append(f"user_ids: must be auto, nip or numeric, got {self.user_ids!r}")
        if self.user_ids == "nip" and generator.numeric_ids_needed(self.user_layout, self.record_layout):
            errors.append("user_ids: 'nip' needs 72-byte users and 8- or 40-byte records "
                          "(28-byte users and 16-byte records carry a u32 user id)")
        if not isinstance(self.pin_width, int) or not 0 <= self.pin_width <= 255:
            errors.append(f"pin_width: must be 0..255, got {self.pin_width!r}")
        for text_field in ("firmware", "platform", "device_name", "mac"):
            v = getattr(self, text_field)
            if not isinstance(v, str) or len(v) > 200 or "\0" in v:
                errors.append(f"{text_field}: must be text up to 200 characters, got {v!r}")
        if not isinstance(self.faults, dict):
            errors.append(f"faults: must be a table/dict, got {self.faults!r}")
        else:
            for k, v in self.faults.items():
                try:
                    normalize_fault(k, v)
                except ValueError as e:
                    errors.append(f"faults.{k}: {e}")
        if errors:
            raise ValueError(f"device {self.serial!r}: " + "; ".join(errors))

    @property
    def numeric_ids(self) -> bool:
        """True when generated user ids are short numeric PINs rather than NIPs."""
        if self.user_ids == "numeric":
            return True
        if self.user_ids == "nip":
            return False
        return generator.numeric_ids_needed(self.user_layout, self.record_layout)


_FIELD_ORDER = tuple(f.name for f in dataclasses.fields(DeviceSpec) if f.init)
UDP_FRAMINGS = ("session", "counter")
TCP_FRAMINGS = ("single", "packets")


def count_skew(mode: str, actual: int) -> int:
    """The record count GET_FREE_SIZES reports for ``records_count`` mode ``mode`` and ``actual`` records."""
    if not isinstance(mode, str):
        raise ValueError(f"expected \"exact\", \"zero\", \"+N\" or \"-N\", got {mode!r}")
    if mode == "exact":
        return actual
    if mode == "zero":
        return 0
    if len(mode) > 1 and mode[0] in "+-" and mode[1:].isdigit() and len(mode) <= 10:
        return max(0, actual + int(mode))
    raise ValueError(f"expected \"exact\", \"zero\", \"+N\" or \"-N\", got {mode!r}")


class DatasetCache:
    """Process-wide LRU of built wire datasets with a byte budget.

    Building a 200k-record dataset takes ~0.1 s, so caching pays when several clients read
    the same unchanged log; the budget keeps a polled 1,000-device fleet from holding every
    device's last dataset at once. Entries are keyed by log version, so a change to a log
    simply stops its old entry from being asked for.
    """

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self._lock = threading.Lock()
        self._entries: OrderedDict[tuple[int, str, int, int], bytes] = OrderedDict()
        self._size = 0

    def get(self, key: tuple[int, str, int, int]) -> bytes | None:
        with self._lock:
            ds = self._entries.get(key)
            if ds is not None:
                self._entries.move_to_end(key)
            return ds

    def put(self, key: tuple[int, str, int, int], ds: bytes) -> None:
        if len(ds) > self.budget:
            return
        with self._lock:
            # A device's older versions of the same dataset are dead: drop them first.
            for old in [k for k in self._entries if k[:3] == key[:3]]:
                self._size -= len(self._entries.pop(old))
            self._entries[key] = ds
            self._size += len(ds)
            while self._size > self.budget:
                _, evicted = self._entries.popitem(last=False)
                self._size -= len(evicted)

    @property
    def size(self) -> int:
        """Bytes currently held."""
        return self._size


#: Shared by every device in the process (64 MiB: eight 200k-record logs).
DATASET_CACHE = DatasetCache(64 << 20)
_CACHE_IDS = itertools.count(1)


def _pack(t: int, uid: int, state: int, verify: int) -> int:
    # One punch in one u64: time in the high 32 bits, so (value >> 16) is the
    # "same user at the same second" key.
    return (t << 32) | (uid << 16) | ((state & 0xFF) << 8) | (verify & 0xFF)


def _unpack(v: int) -> tuple[int, int, int, int]:
    return v >> 32, (v >> 16) & 0xFFFF, (v >> 8) & 0xFF, v & 0xFF


class SimDevice:
    """A simulated ZK terminal (state only; sockets live in server.py)."""

    def __init__(self, spec: DeviceSpec, truth: TruthWriter | None = None,
                 today: date | None = None) -> None:
        self.spec = spec
        self._lock = threading.RLock()
        self._truth = truth
        self._tz = ZoneInfo(spec.timezone)
        self.serial = spec.serial
        self.host = spec.host
        self.port = spec.port
        self._faults: dict[Fault, Any] = {}
        self._clock_offset = timedelta(0)
        self._rng = random.Random(f"live:{spec.seed}")
        self.loss_rng = random.Random(f"loss:{spec.seed}")
        self._session_rng = random.Random(f"session:{spec.seed}")
        self._generation = 0
        self.options: dict[str, str] = {}
        #: Device-wide, as on a real terminal: a client that disables it and vanishes leaves it showing
        #: "working..." until some client enables it, the disable timeout runs out, or it reboots.
        self._disabled = False
        self._rate_credit = 0.0
        #: Request packets received from clients (every command, re-sent ones and EXIT included; the
        #: clients' own ACK_OKs to events are not requests). Counted on the simulator's loop thread;
        #: tests and benchmarks read it to count a client's round trips.
        self.requests_received = 0
        #: The same, per command code.
        self.requests_by_command: Counter[int] = Counter()
        #: Set by the server: called (thread-safely) when faults change or sessions must drop.
        self.on_change: Callable[[str], None] = lambda what: None
        #: Set by the server: called with new punches so registered sessions get events.
        self.on_punch: Callable[[list[tuple[int, int, int, int]]], None] = lambda punches: None
        for name, value in spec.faults.items():
            f, v = normalize_fault(name, value)
            if f not in ACTIONS and is_active(v):
                self._faults[f] = v
        real_today = datetime.now(self._tz).date()
        if Fault.CLOCK_RESET in self._faults:
            self._clock_offset = _EPOCH_2000 - datetime.now(self._tz).replace(tzinfo=None, microsecond=0)
        # History is generated against the real calendar, not a faulty device clock.
        #: Truth rows a rolling log dropped before any client read them (overwritten_unread).
        self._overwritten_unread: list[dict[str, Any]] = []
        self._build(today or real_today, spec.records, spec.seed)

    # --- construction ---------------------------------------------------------------------

    def _build(self, today: date, records: int, seed: int) -> None:
        spec = self.spec
        self._users: dict[int, User] = {
            u.uid: u for u in generator.make_users(
                spec.users, seed=seed, user_layout=spec.user_layout, numeric_ids=spec.numeric_ids)}
        #: uid -> user id text, kept after a user is deleted so old records still resolve.
        self._uid_text: dict[int, str] = {uid: u.user_id for uid, u in self._users.items()}
        #: (uid, finger) -> template; its own random stream, so the other generated data stays as it was.
        self._templates: dict[tuple[int, int], StoredTemplate] = {}
        #: Whether the template count is the table's (templates generated or uploaded) or spec.fingers.
        self._template_store = spec.templates_per_user > 0
        trng = random.Random(f"templates:{seed}")
        for uid in sorted(self._users):
            for finger in range(spec.templates_per_user):
                self._templates[(uid, finger)] = StoredTemplate(uid, finger, 1, make_template(trng, spec.fp_version))
        prefs_rng = random.Random(f"prefs:{seed}")
        self._prefs = [generator.preferred_verify(prefs_rng) for _ in range(max(spec.users, 1))]
        self._log: array[int] = array("Q")
        self._max_t = 0
        self._garbled: set[int] = set()
        self._cache_id = next(_CACHE_IDS)
        self._version = 0
        history = generator.make_history(records, seed=seed, n_users=spec.users, prefs=self._prefs,
                                         start_date=spec.start_date, today=today)
        garbage = self._faults.get(Fault.GARBAGE_TIMESTAMPS, 0.0)
        if garbage:
            rng = random.Random(f"garbage:{seed}")
            history = [(self._garble_unique(t, uid) if rng.random() < garbage else t, uid, st, vf)
                       for t, uid, st, vf in history]
        # One pass into the compact array (8 bytes a punch); this is the hot path of a
        # large fleet's start-up.
        self._log = array("Q", [(t << 32) | (uid << 16) | (st << 8) | vf for t, uid, st, vf in history])
        self._max_t = max((h[0] for h in history), default=0)
        # Sequence numbers of log entries: _appended counts every entry ever put in the log; entries from
        # _served on were never part of an attendance dataset a client asked for (see overwritten_unread).
        self._appended = len(self._log)
        self._served = 0
        if self._truth is not None and history:
            self._truth.write([self._row(*h) for h in history])

    def _garble_unique(self, t: int, uid: int) -> int:
        g = generator.garble(datetime(*decode_fields(t)))
        while (g << 16 | uid) in self._garbled:
            g += 1  # still day 30/31 of a short month: stays impossible
        self._garbled.add(g << 16 | uid)
        return g

    def _row(self, t: int, uid: int, state: int, verify: int) -> dict[str, Any]:
        return {"serial": self.serial, "user_id": self._uid_text.get(uid, str(uid)),
                "time": time_text(t), "state": state, "verify": verify}

    # --- clock ----------------------------------------------------------------------------

    def now(self) -> datetime:
        """The device's local wall clock (naive), including skew, set_time and RTC reset."""
        real = datetime.now(self._tz).replace(tzinfo=None, microsecond=0)
        skew = int(self._faults.get(Fault.CLOCK_SKEW, 0))
        return real + self._clock_offset + timedelta(seconds=skew)

    def set_clock(self, local: datetime) -> None:
        """Set the device clock (as CMD_SET_TIME does); it keeps running from there."""
        with self._lock:
            real = datetime.now(self._tz).replace(tzinfo=None, microsecond=0)
            skew = int(self._faults.get(Fault.CLOCK_SKEW, 0))
            self._clock_offset = local - real - timedelta(seconds=skew)

    def now_encoded(self) -> int:
        """The device clock as the u32 wire time (clamped into 2000–2099)."""
        now = self.now()
        if now.year < 2000:
            now = _EPOCH_2000
        if now.year > 2099:
            now = datetime(2099, 12, 31, 23, 59, 59)
        return encode_time(now)

    # --- faults ---------------------------------------------------------------------------

    @property
    def faults(self) -> dict[str, Any]:
        """Active faults as {name: value}."""
        with self._lock:
            return {f.value: v for f, v in self._faults.items()}

    def fault(self, f: Fault) -> Any:
        """Value of fault ``f`` (None when not set); cheap, used on every packet."""
        return self._faults.get(f)

    def set_fault(self, name: str, value: Any = True) -> None:
        """Switch a fault on (or off with a false value); actions run at once."""
        f, v = normalize_fault(name, value)
        if f is Fault.LOG_CLEARED:
            if v:
                self.clear_log()
            return
        if f is Fault.REPLACED:
            self.replace(new_serial=v if isinstance(v, str) else None)
            return
        with self._lock:
            if not is_active(v):
                self._clear_locked(f)
            else:
                if f is Fault.CLOCK_RESET and f not in self._faults:
                    # The RTC restarts at 2000-01-01 00:00:00 now and runs on from there.
                    real = datetime.now(self._tz).replace(tzinfo=None, microsecond=0)
                    self._clock_offset = _EPOCH_2000 - real
                self._faults[f] = v
        log.info("fault set device=%s fault=%s value=%r", self.serial, f.value, v)
        self.on_change(f.value)

    def clear_fault(self, name: str) -> None:
        """Switch a fault off (no error when it was not set)."""
        f, _ = normalize_fault(name, True)
        with self._lock:
            self._clear_locked(f)
        log.info("fault cleared device=%s fault=%s", self.serial, f.value)
        self.on_change(f.value)

    def _clear_locked(self, f: Fault) -> None:
        if self._faults.pop(f, None) is not None and f is Fault.CLOCK_RESET:
            self._clock_offset = timedelta(0)  # battery replaced and clock synced

    @property
    def comm_key(self) -> int:
        """The key the device actually checks (differs from the spec under wrong_comm_key)."""
        wrong = self._faults.get(Fault.WRONG_COMM_KEY)
        if wrong is None or wrong is False:
            return self.spec.comm_key
        if wrong is True:
            return (self.spec.comm_key + 1) & 0xFFFFFFFF
        return int(wrong)

    # --- users and log --------------------------------------------------------------------

    @property
    def record_count(self) -> int:
        """Records currently in the log."""
        return len(self._log)

    @property
    def user_count(self) -> int:
        """Users currently enrolled."""
        return len(self._users)

    @property
    def enabled(self) -> bool:
        """False while the device is disabled (by any client; it stays so after the client leaves)."""
        return not self._disabled

    def set_disabled(self, disabled: bool) -> None:
        """Disable or enable the whole device (CMD_DISABLEDEVICE / CMD_ENABLEDEVICE, reboot)."""
        with self._lock:
            self._disabled = disabled

    def users(self) -> list[User]:
        """Copy of the user table, in uid order."""
        with self._lock:
            return [replace(u) for _, u in sorted(self._users.items())]

    def punches(self) -> list[dict[str, Any]]:
        """Decoded copy of the log in device order: uid, user_id, time (text), state, verify."""
        with self._lock:
            out = []
            for v in self._log:
                t, uid, state, verify = _unpack(v)
                out.append({"uid": uid, "user_id": self._uid_text.get(uid, str(uid)),
                            "time": time_text(t), "encoded_time": t, "state": state,
                            "verify": verify})
            return out

    def _collides(self, t: int, uid: int) -> bool:
        key = t << 16 | uid
        return any((v >> 16) == key for v in self._log)

    def _record(self, t: int, uid: int, state: int, verify: int) -> tuple[int, int, int, int] | None:
        """Append one punch if the log has room; returns the stored punch or None (refused)."""
        if Fault.STORAGE_FULL in self._faults:
            return None
        if len(self._log) >= self.spec.records_cap:
            if not self.spec.overwrite_oldest or self.spec.records_cap == 0:
                return None
            if self._appended - len(self._log) >= self._served:
                # No client asked for the log since this record was written: it is gone unread, as on a
                # real rolling terminal whose reader fell behind (the oracle for "lost by the gateway").
                v = self._log[0]
                self._overwritten_unread.append(self._row(v >> 32, (v >> 16) & 0xFFFF, (v >> 8) & 0xFF, v & 0xFF))
            del self._log[0]
        # Same user, same second on one device never happens (the gateway dedups on
        # serial+user_id+local time); a collision is only possible at or before the latest
        # time so far, so only then scan the log.
        while t <= self._max_t and self._collides(t, uid):
            t += 1
        self._log.append(_pack(t, uid, state, verify))
        self._appended += 1
        self._max_t = max(self._max_t, t)
        self._version += 1
        return t, uid, state, verify

    def add_punches(self, n: int = 1, at: datetime | None = None,
                    user_id: str | None = None) -> list[dict[str, Any]]:
        """Record ``n`` punches now (or at local time ``at``); returns the truth rows added.

        Punches refused because the log is full are not returned and not in the truth file.
        """
        if n < 0:
            raise ValueError(f"n must be ≥ 0, got {n}")
        with self._lock:
            if not self._users:
                raise ValueError(f"device {self.serial}: no users enrolled")
            if user_id is not None:
                uids = [uid for uid, u in self._users.items() if u.user_id == str(user_id)]
                if not uids:
                    raise ValueError(f"device {self.serial}: no user with user_id {user_id!r}")
                fixed: int | None = uids[0]
            else:
                fixed = None
            base = at if at is not None else self.now()
            if not 2000 <= base.year <= 2099:
                raise ValueError(f"time {base} is outside 2000–2099 (device clock range)")
            stored = []
            uid_pool = sorted(self._users)
            garbage = self._faults.get(Fault.GARBAGE_TIMESTAMPS, 0.0)
            for _ in range(n):
                uid = fixed if fixed is not None else self._rng.choice(uid_pool)
                state = generator.state_for(base, self._rng)
                verify = self._prefs[(uid - 1) % len(self._prefs)] if self._rng.random() < 0.9 \
                    else generator.preferred_verify(self._rng)
                t = encode_time(base)
                if garbage and self._rng.random() < garbage:
                    t = self._garble_unique(t, uid)
                p = self._record(t, uid, state, verify)
                if p is not None:
                    stored.append(p)
            rows = [self._row(*p) for p in stored]
            if rows and self._truth is not None:
                self._truth.write(rows)
        if stored:
            self.on_punch(stored)
        return rows

    def tick(self, seconds: float) -> None:
        """Advance the punch-rate generator by ``seconds`` (called by the fleet's ticker)."""
        rate = self.spec.punches_per_minute
        if rate <= 0:
            return
        self._rate_credit += rate * seconds / 60.0
        # People wait at a disabled terminal; their punches happen once it is enabled again.
        if self._rate_credit >= 1 and self.enabled and self._users:
            n = int(self._rate_credit)
            self._rate_credit -= n
            self.add_punches(n)

    def overwritten_unread(self) -> list[dict[str, Any]]:
        """Truth rows of punches a full log with ``overwrite_oldest`` dropped before any client asked for the
        attendance log after they were written: no reader could have them (a check on "lost" counts)."""
        with self._lock:
            return list(self._overwritten_unread)

    def clear_log(self) -> None:
        """Clear the attendance log (as at the keypad or by CMD_CLEAR_ATTLOG)."""
        with self._lock:
            self._log = array("Q")
            self._max_t = 0
            self._garbled.clear()
            self._version += 1
        log.info("log cleared device=%s", self.serial)

    def clear_all(self) -> None:
        """CMD_CLEAR_DATA: users (their templates too) and log gone."""
        with self._lock:
            self._users.clear()
            self._templates.clear()
            self._log = array("Q")
            self._max_t = 0
            self._version += 1

    def replace(self, new_serial: str | None = None, records: int = 0) -> None:
        """Swap the hardware: new serial, new log (empty, or ``records`` fresh punches).

        Users are kept (offices restore them from backup); old connections drop.
        """
        with self._lock:
            self._generation += 1
            serial = new_serial or f"{self.spec.serial}R{self._generation}"
            self.spec = replace(self.spec, serial=serial, records=records, faults={})
            self.serial = serial
            self._clock_offset = timedelta(0)
            self._disabled = False
            self._rate_credit = 0.0
            for f in (Fault.CLOCK_RESET, Fault.CLOCK_SKEW, Fault.STORAGE_FULL, Fault.GARBAGE_TIMESTAMPS):
                self._faults.pop(f, None)
            self._build(datetime.now(self._tz).date(), records, self.spec.seed + 7919 * self._generation)
        log.info("device replaced new_serial=%s", serial)
        self.on_change("replaced")

    def upsert_user(self, user: User) -> bool:
        """CMD_USER_WRQ: add or overwrite a user; False when the table is full."""
        uid_text = user.user_id
        if not (uid_text.isascii() and uid_text.isprintable() and 0 < len(uid_text) <= 23):
            return False
        # 28-byte users and 16-byte records carry the user id as a u32 on the wire.
        if generator.numeric_ids_needed(self.spec.user_layout, self.spec.record_layout) and (
                not uid_text.isdigit() or int(uid_text) > 0xFFFFFFFF):
            return False
        with self._lock:
            if user.uid not in self._users and len(self._users) >= self.spec.users_cap:
                return False
            if not 0 < user.uid <= 65535:
                return False
            self._users[user.uid] = user
            self._uid_text[user.uid] = user.user_id
            self._version += 1
            return True

    def delete_user(self, uid: int) -> None:
        """CMD_DELETE_USER: remove a user and its templates (its old records stay in the log)."""
        with self._lock:
            if self._users.pop(uid, None) is not None:
                self._version += 1
            for key in [k for k in self._templates if k[0] == uid]:
                del self._templates[key]
                self._version += 1

    # --- enrolment: templates, factory reset, replacement (simulators/zk/templates.py) ------

    def templates(self) -> dict[tuple[int, int], StoredTemplate]:
        """Copy of the template table: (uid, finger) -> template."""
        with self._lock:
            return dict(self._templates)

    def save_upload(self, users: list[User], templates: list[StoredTemplate]) -> str | None:
        """Command 110: store the users and templates of one upload, all or nothing. None, or why refused."""
        with self._lock:
            version = self.spec.fp_version
            known = set(self._users) | {u.uid for u in users}
            new_keys = {(t.uid, t.finger) for t in templates}
            if len(set(self._templates) | new_keys) > self.spec.templates_cap:
                return f"template capacity {self.spec.templates_cap} reached"
            for t in templates:
                if t.uid not in known:
                    return f"template of unknown uid {t.uid}"
                if not fits_version(t.data, version):
                    return f"template of uid {t.uid} finger {t.finger} is not a version {version} template"
            backup = (dict(self._users), dict(self._uid_text), self._version)
            for user in users:
                if not self.upsert_user(user):
                    self._users, self._uid_text, self._version = backup
                    return f"user uid {user.uid} refused"
            for t in templates:
                self._templates[(t.uid, t.finger)] = t
            self._template_store = True
            self._version += 1
            return None

    def delete_template(self, uid: int, finger: int) -> bool:
        """CMD_DELETE_USERTEMP: remove one finger; False when there was none."""
        with self._lock:
            gone = self._templates.pop((uid, finger), None) is not None
            self._version += gone
            return gone

    def factory_reset(self) -> None:
        """As the terminal's menu "clear all data": users, templates, log and client-set options gone."""
        with self._lock:
            self.clear_all()
            self.options.clear()
            self._template_store = True
        log.info("factory reset device=%s", self.serial)

    def replace_blank(self, new_serial: str | None = None, fp_version: int | None = None) -> None:
        """Swap in a new, empty unit (no users, templates or log), optionally of another algorithm version."""
        # replace() drops the sessions through the loop and waits for it: never call it holding the lock
        # (the loop thread takes the lock to answer clients).
        self.replace(new_serial)
        with self._lock:
            if fp_version is not None:
                self.spec = replace(self.spec, fp_version=fp_version)
            self.factory_reset()

    # --- wire views -----------------------------------------------------------------------

    def sizes(self) -> Sizes:
        """Counts and capacities for GET_FREE_SIZES; exactly what the datasets serve."""
        with self._lock:
            n_rec = len(self._log)
            # A full log (storage_full) reports capacity == count, so "free" is 0.
            cap = n_rec if Fault.STORAGE_FULL in self._faults else self.spec.records_cap
            admins = sum(1 for u in self._users.values() if u.privilege)
            pwds = sum(1 for u in self._users.values() if u.password)
            fingers = len(self._templates) if self._template_store else self.spec.fingers
            return Sizes(users=len(self._users), fingers=fingers, records=n_rec,
                         oplog=0, admins=admins, passwords=pwds, fingers_cap=self.spec.templates_cap,
                         users_cap=self.spec.users_cap, records_cap=cap,
                         faces=self.spec.faces, faces_cap=400 if self.spec.faces else 0)

    def reported_sizes(self) -> Sizes:
        """What GET_FREE_SIZES reports: ``sizes()`` with the record count the spec's ``records_count`` asks for."""
        s = self.sizes()
        if self.spec.records_count == "exact":
            return s
        return replace(s, records=count_skew(self.spec.records_count, s.records))

    def pin_width(self) -> int:
        """GET_PINWIDTH answer (never 0: pyzk would crash on an empty byte)."""
        if self.spec.pin_width:
            return self.spec.pin_width
        longest = max((len(u.user_id) for u in self._users.values()), default=9)
        return max(9, longest)

    def mac(self) -> str:
        """MAC address: the spec's, or one derived from the serial (stable)."""
        if self.spec.mac:
            return self.spec.mac
        h = sum(ord(c) * 31 ** i for i, c in enumerate(self.serial)) & 0xFFFFFF
        return f"00:17:61:{h >> 16:02x}:{(h >> 8) & 0xFF:02x}:{h & 0xFF:02x}"

    def dataset(self, kind: str) -> bytes:
        """The 1503 dataset (u32 size + records) for "users" or "attlog", cached per version."""
        with self._lock:
            layout = {"users": self.spec.user_layout, "templates": 0}.get(kind, self.spec.record_layout)
            key = (self._cache_id, kind, layout, self._version)
            hit = DATASET_CACHE.get(key)
            if kind == "attlog":
                self._served = self._appended  # every entry now in the log was offered to a client
            if hit is not None:
                return hit
            if kind == "users":
                body = b"".join(u.pack(layout) for _, u in sorted(self._users.items()))
            elif kind == "attlog":
                body = self._pack_log(layout)
            elif kind == "templates":
                body = template_table(self._templates)
            else:
                raise ValueError(f"unknown dataset {kind!r}")
            ds = dataset(body)
            DATASET_CACHE.put(key, ds)
            return ds

    def _pack_log(self, layout: int) -> bytes:
        if layout == 40:
            # Precompute the 26-byte (uid, user id text) prefix per uid; the per-record work
            # is then one small struct pack and a join.
            prefixes: dict[int, bytes] = {}
            tail = struct.Struct("<BIB8s")
            parts = []
            for v in self._log:
                uid = (v >> 16) & 0xFFFF
                pre = prefixes.get(uid)
                if pre is None:
                    text = self._uid_text.get(uid, str(uid)).encode("ascii")[:23]
                    pre = prefixes[uid] = struct.pack("<H24s", uid, text)
                parts.append(pre)
                parts.append(tail.pack(v & 0xFF, v >> 32, (v >> 8) & 0xFF, ATT40_TAIL))
            return b"".join(parts)
        if layout == 16:
            ids = {uid: int(t) if t.isdigit() and int(t) <= 0xFFFFFFFF else uid
                   for uid, t in self._uid_text.items()}
            return b"".join(pack_att16(ids.get((v >> 16) & 0xFFFF, (v >> 16) & 0xFFFF), v >> 32,
                                       (v >> 8) & 0xFF, v & 0xFF) for v in self._log)
        return b"".join(pack_att8((v >> 16) & 0xFFFF, v & 0xFF, v >> 32, (v >> 8) & 0xFF)
                        for v in self._log)

    def user_id_of(self, uid: int) -> str:
        """User id text for a uid (also for deleted users)."""
        return self._uid_text.get(uid, str(uid))

    def new_session_id(self) -> int:
        """A fresh non-zero u16 session id."""
        return self._session_rng.randrange(1, 0xFFFF)

    def info(self) -> dict[str, Any]:
        """JSON-able summary for the control API."""
        with self._lock:
            return {"serial": self.serial, "host": self.host, "port": self.port,
                    "tcp": self.spec.tcp, "udp": self.spec.udp,
                    "record_layout": self.spec.record_layout, "user_layout": self.spec.user_layout,
                    "records": len(self._log), "users": len(self._users),
                    "records_cap": self.spec.records_cap, "users_cap": self.spec.users_cap,
                    "enabled": self.enabled, "clock": self.now().strftime("%Y-%m-%d %H:%M:%S"),
                    "timezone": self.spec.timezone, "comm_key_set": self.spec.comm_key != 0,
                    "punches_per_minute": self.spec.punches_per_minute, "profile": self.spec.profile,
                    "udp_framing": self.spec.udp_framing, "tcp_framing": self.spec.tcp_framing,
                    "faults": {f.value: v for f, v in self._faults.items()}}

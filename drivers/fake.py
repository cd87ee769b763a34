"""FakeDriver: an in-memory terminal implementing the full driver contract, with scripted failures.

Flow: used instead of a real driver by gateway unit tests (poller, health, end-to-end without a
network) and by tests/drivers' contract suite, which runs the same checks over FakeDriver and
ZkDriver. It behaves like a well-mannered device: a log that grows with ``add_punches``, a clock,
users, enable/disable state that every session restores -- and fails exactly when told to.
Imports nothing from gateway/ or simulators/.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import Counter, deque
from collections.abc import Collection, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from drivers.base import (
    Busy,
    Counts,
    DeviceInfo,
    DeviceUser,
    IdentityMismatch,
    LiveEvent,
    LogPosition,
    Progress,
    RawPunch,
)

#: Operations that can be scripted to fail or be slowed down.
OPERATIONS = frozenset(
    {"connect", "info", "counts", "read_punches", "read_punches_after", "read_users", "set_time", "clear_punches",
     "live_punches", "enable_device"}
)


def make_punch(
    user_id: str, when: datetime | str, state: int = 0, verify: int = 1, uid: int = 0, workcode: int = 0
) -> RawPunch:
    """A RawPunch from a datetime or ``YYYY-MM-DD HH:MM:SS`` text (impossible dates allowed as text)."""
    if isinstance(when, datetime):
        text, local = when.strftime("%Y-%m-%d %H:%M:%S"), when.replace(microsecond=0)
    else:
        text = when
        try:
            local = datetime.strptime(when, "%Y-%m-%d %H:%M:%S")
        except ValueError:
            local = None
    return RawPunch(user_id, text, local, state, verify, uid, workcode, -1)


@dataclass
class FakeDevice:
    """The terminal's state. Mutate it freely from tests (under ``FakeDriver.lock`` if threaded)."""

    serial: str = "FAKE0001"
    firmware: str = "Ver 6.60 Apr 28 2017"
    platform: str = "ZEM560"
    device_name: str = "Fake"
    mac: str = "00:17:61:00:00:01"
    punches: list[RawPunch] = field(default_factory=list)
    users: list[DeviceUser] = field(default_factory=list)
    records_cap: int = 100_000
    users_cap: int = 3_000
    #: Device clock = host clock + this offset; ``frozen_time`` wins when set.
    clock_offset: timedelta = timedelta(0)
    frozen_time: datetime | None = None
    enabled: bool = True
    #: Bytes a download "costs", for bytes_read statistics (40 per record, like a TFT device).
    record_bytes: int = 40
    #: Set to a reason to answer counts() like a terminal whose size query is unusable: no capacities,
    #: ``Counts.unreliable`` set (the records still counted, as ZkDriver counts them by downloading).
    counts_unreliable: str = ""
    #: Downloads tell their progress every this many records (0: once, at the end), like a driver reading chunks.
    progress_step: int = 0

    def now(self) -> datetime:
        """The device's wall clock."""
        if self.frozen_time is not None:
            return self.frozen_time
        return (datetime.now() + self.clock_offset).replace(microsecond=0)


class FakeDriver:
    """In-memory driver. ``fail(op, err, times=1)`` makes the next calls of ``op`` raise ``err``."""

    def __init__(
        self,
        device: FakeDevice | None = None,
        *,
        expected_serial: str | None = None,
        disable_while_reading: bool = True,
    ) -> None:
        self.device = device or FakeDevice()
        self.expected_serial = expected_serial
        self.disable_while_reading = disable_while_reading
        self.lock = threading.RLock()
        #: Every operation attempted, in order ("connect", "counts", ...), failed ones included.
        self.calls: list[str] = []
        self.sessions_opened = 0
        self.sessions_closed = 0
        self._script: dict[str, deque[BaseException | None]] = {}
        self._delays: dict[str, float] = {}
        self._live: queue.Queue[RawPunch] = queue.Queue()

    # -- scripting ------------------------------------------------------------------------------
    def fail(self, op: str, error: BaseException, times: int = 1) -> None:
        """The next ``times`` calls of ``op`` raise ``error`` (queued after earlier scripts)."""
        self.script(op, *([error] * times))

    def script(self, op: str, *outcomes: BaseException | None) -> None:
        """Queue outcomes for ``op``: an exception to raise, or None for a normal call."""
        if op not in OPERATIONS:
            raise ValueError(f"unknown operation {op!r}; known: {sorted(OPERATIONS)}")
        with self.lock:
            self._script.setdefault(op, deque()).extend(outcomes)

    def delay(self, op: str, seconds: float) -> None:
        """Make every call of ``op`` sleep first (0 to stop)."""
        if op not in OPERATIONS:
            raise ValueError(f"unknown operation {op!r}")
        with self.lock:
            self._delays[op] = seconds

    def add_punches(self, punches: Iterable[RawPunch], live: bool = True) -> None:
        """Append punches to the log (and to the live stream when ``live``)."""
        with self.lock:
            for p in punches:
                self.device.punches.append(p)
                if live:
                    self._live.put(p)

    def _step(self, op: str) -> None:
        with self.lock:
            self.calls.append(op)
            script = self._script.get(op)
            outcome = script.popleft() if script else None
            pause = self._delays.get(op, 0.0)
        if pause:
            time.sleep(pause)
        if outcome is not None:
            raise outcome

    # -- Driver contract ------------------------------------------------------------------------
    @contextmanager
    def connect(self, deadline: float | None = None) -> Iterator[FakeSession]:
        """Open a session; its exit re-enables the device whatever happened inside.

        ``deadline`` is accepted for the contract; the fake answers instantly (delays are scripted).
        """
        self._step("connect")
        with self.lock:
            serial = self.device.serial
        if self.expected_serial is not None and serial != self.expected_serial:
            raise IdentityMismatch(
                f"fake: expected serial {self.expected_serial!r}, device reports {serial!r}",
                expected=self.expected_serial,
                found=serial,
            )
        session = FakeSession(self)
        with self.lock:
            self.sessions_opened += 1
        try:
            yield session
        finally:
            session._closed = True
            with self.lock:
                self.device.enabled = True
                self.sessions_closed += 1


class FakeSession:
    """A session on a FakeDriver; implements Session plus every optional ability."""

    def __init__(self, driver: FakeDriver) -> None:
        self._driver = driver
        self._bytes = 0
        self._closed = False
        self._stop = False

    def _op(self, op: str) -> FakeDevice:
        if self._closed:
            raise RuntimeError("session used after its with-block ended")
        self._driver._step(op)
        return self._driver.device

    @property
    def bytes_read(self) -> int:
        """Simulated wire bytes received in this session."""
        return self._bytes

    def info(self, *, clock: bool = True) -> DeviceInfo:
        """Identity and (``clock``) the device clock."""
        d = self._op("info")
        self._bytes += 64
        with self._driver.lock:
            return DeviceInfo(d.serial, d.firmware, d.platform, d.device_name, d.mac, d.now() if clock else None)

    def counts(self) -> Counts:
        """Counts and capacities."""
        d = self._op("counts")
        self._bytes += 96
        with self._driver.lock:
            if d.counts_unreliable:
                return Counts(records=len(d.punches), users=len(d.users), unreliable=d.counts_unreliable)
            return Counts(
                records=len(d.punches),
                users=len(d.users),
                records_cap=d.records_cap,
                users_cap=d.users_cap,
            )

    def read_punches(self, progress: Progress | None = None) -> list[RawPunch]:
        """The whole log, in device order (device disabled meanwhile, like ZkDriver)."""
        drv = self._driver
        with drv.lock:
            if drv.disable_while_reading:
                drv.device.enabled = False
        d = self._op("read_punches")
        with drv.lock:
            out = list(d.punches)
            d.enabled = True
        self._bytes += 4 + d.record_bytes * len(out)
        _tell(progress, len(out), d.progress_step)
        return out

    def read_punches_after(self, known: LogPosition, progress: Progress | None = None) -> list[RawPunch] | None:
        """The records after the first ``known.records`` (ReadsNewPunches), after checking that record
        ``known.records - 1`` is still ``known.last``; None when it is not or the log is shorter. Costs the
        new records plus the overlap record in bytes_read."""
        drv = self._driver
        with drv.lock:
            if drv.disable_while_reading:
                drv.device.enabled = False
        d = self._op("read_punches_after")
        with drv.lock:
            log = d.punches
            proven = 1 <= known.records <= len(log) and log[known.records - 1] == known.last
            out = list(log[known.records:]) if proven else None
            d.enabled = True
        self._bytes += 4 + d.record_bytes * (len(out) + 1 if out is not None else 1)
        if out is not None:
            _tell(progress, len(out), d.progress_step)
        return out

    def read_users(self) -> list[DeviceUser]:
        """Enrolled users."""
        d = self._op("read_users")
        with self._driver.lock:
            self._bytes += 4 + 72 * len(d.users)
            return list(d.users)

    def set_time(self, local_time: datetime) -> None:
        """Set the device clock (kept as an offset from the host clock)."""
        d = self._op("set_time")
        with self._driver.lock:
            if d.frozen_time is not None:
                d.frozen_time = local_time.replace(microsecond=0)
            else:
                d.clock_offset = local_time - datetime.now()

    def clear_punches(self, expected_records: int | None = None, *,
                      expected: Collection[RawPunch] | None = None) -> None:
        """Clear the log; with ``expected_records``/``expected`` only if the count/records still match."""
        d = self._op("clear_punches")
        with self._driver.lock:
            if expected_records is not None and len(d.punches) != expected_records:
                raise Busy(
                    f"fake: refusing to clear: {len(d.punches)} records, caller stored {expected_records}"
                )
            if expected is not None and Counter(d.punches) != Counter(expected):
                raise Busy("fake: refusing to clear: the records changed since the caller's download")
            d.punches.clear()

    def enable_device(self) -> None:
        """Re-enable the device (undo a disable left behind by an earlier session)."""
        d = self._op("enable_device")
        with self._driver.lock:
            d.enabled = True

    def stop_live(self) -> None:
        """Make live_punches() return after its current wait."""
        self._stop = True

    def live_punches(self, idle_timeout_s: float = 10.0) -> Iterator[LiveEvent | None]:
        """Punches added with ``FakeDriver.add_punches(live=True)``; None after each idle period."""
        self._op("live_punches")
        self._stop = False
        while not self._stop and not self._closed:
            try:
                p = self._driver._live.get(timeout=idle_timeout_s)
            except queue.Empty:
                yield None
                continue
            yield LiveEvent(p)  # RawPunch is immutable: no copy needed


def _tell(progress: Progress | None, total: int, step: int) -> None:
    """Report a download of ``total`` records the way a chunked driver does: every ``step`` records, then the end."""
    if progress is None:
        return
    if step > 0:
        for done in range(step, total, step):
            progress(done, total)
    progress(total, total)


__all__ = ["OPERATIONS", "FakeDevice", "FakeDriver", "FakeSession", "make_punch"]

"""The serial-line reader service: one thread per ``driver = "serial"`` clock; nothing is polled.

    clock --line--> port (drivers.serial.port: /dev/tty..., socket://, rfc2217://) --bytes--> LineFramer
        --> LineParser --RawPunch--> normalize --> Store.save_poll(punches, quarantined=bad lines): ONE
        transaction per read --> ctx.poll_observers (health, metrics) with a PollOutcome, like a poll
    port missing / lost / held by another program --> a failed outcome ("unreachable", with the reason) per
        reconnect attempt (back-off 1 s doubling to reconnect_max_s): health takes it offline like a polled
        terminal; a heartbeat outcome every min(60 s, interval_s) while the line is open keeps it online, and
        the health monitor's silent-device rule sees a clock that is open but sends nothing in working hours.

Durability: a line counts as handled only once the transaction holding its punch (or its quarantine row) has
committed; until then it is kept in memory and the store is retried. A serial clock never resends, so a
line still on the wire, in the adapter, or in memory when the gateway dies (power cut, SIGKILL) is lost:
nothing on our side can fix that (docs/serial.md). On a normal stop the lines already read are stored and
an unfinished line is quarantined, not dropped.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import structlog

from drivers.base import DeviceInfo, DriverError, RawPunch
from drivers.serial.formats import DateRecord, LineParser, Rejected, configured_format
from drivers.serial.framing import FramedLine, LineFramer
from drivers.serial.port import PortSettings, SerialLine, open_line
from gateway.config import Config, DeviceConfig, SerialLineConfig
from gateway.models import ERROR_KINDS, PollOutcome, Punch
from gateway.polling.normalize import DEFAULT_NOT_BEFORE, DeviceContext, EmployeeMap, normalize_punches
from gateway.services import AppContext, Service
from gateway.store.db import StorageError, storage_error_text
from gateway.store.punches import Store
from gateway.store.quarantine import QuarantinedInput

log = structlog.get_logger(__name__)

#: Source name of this path in the quarantine table.
SOURCE = "serial"
#: Longest time between two health reports of an open, quiet line (also the noise measuring window).
HEARTBEAT_MAX_S = 60.0
#: Lines held in memory while the database refuses writes; beyond it reading pauses (the OS and the
#: adapter buffer a little more; after that the clock's lines are lost on the wire).
MAX_PENDING = 5000
#: A line that stayed open this long before it failed is reopened at once; a shorter one waits the back-off.
STABLE_AFTER_S = 10.0
#: Seconds between attempts to store read lines while the database refuses writes.
STORE_RETRY_S = 1.0
#: Quarantined lines are logged at most this often per clock (with the count since the last line).
QUARANTINE_LOG_EVERY_S = 600.0
#: Punches per transaction at most (a burst after a reconnect is stored in a few transactions).
BATCH_MAX = 500
#: Occurrence numbers of punches with an untrusted time are offset per read (see _occurrences).
_OCCURRENCE_SPAN = 998_000


@dataclass
class ReaderStats:
    """Counters of one reader since start (status, tests)."""

    connected: bool = False
    connects: int = 0
    lines: int = 0
    punches_stored: int = 0
    quarantined: int = 0
    noise_bytes: int = 0
    bytes_read: int = 0
    last_error: str | None = None


class SerialReader:
    """Reads one serial clock in its own thread (pyserial blocks); see the module docstring."""

    def __init__(self, config: Config, device: DeviceConfig, store: Store,
                 observers: list[Callable[[PollOutcome], None]], *,
                 opener: Callable[[PortSettings], SerialLine] = open_line,
                 clock: Callable[[], datetime] | None = None,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        assert device.serial_line is not None
        self.config = config
        self.device = device
        self.line_cfg: SerialLineConfig = device.serial_line
        self.store = store
        self.observers = observers
        self.opener = opener
        self.clock = clock or (lambda: datetime.now(UTC))
        self.monotonic = monotonic
        self.settings = PortSettings(url=self.line_cfg.url, baud=self.line_cfg.baud, bytesize=self.line_cfg.bytesize,
                                     parity=self.line_cfg.parity, stopbits=self.line_cfg.stopbits)
        self.format = configured_format(self.line_cfg.line_format, pattern=self.line_cfg.line_pattern,
                                        template=self.line_cfg.line_template, time_format=self.line_cfg.time_format)
        #: The punches' device serial: the configured serial, else the device id (a line clock has no
        #: serial to read; keep it unchanged once punches are stored, it is part of their identity).
        self.identity = device.serial or device.id
        self.zone = ZoneInfo(device.timezone)
        self.employees = EmployeeMap(config.employees.mapping_csv)
        self.heartbeat_s = min(HEARTBEAT_MAX_S, device.interval_s)
        self.stats = ReaderStats()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._punches: list[tuple[RawPunch, datetime]] = []
        self._bad: list[QuarantinedInput] = []
        self._noisy = False
        self._failing_since: float | None = None
        self._last_failure_text: str | None = None
        self._last_storage_report = -1e9
        self._known_serial: str | None = None
        self._store_again_at = 0.0
        self._bad_logged_at = -1e9
        self._unlogged_bad = 0

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the reader thread."""
        self._thread = threading.Thread(target=self._run, name=f"fpgw-serial-{self.device.id}", daemon=True)
        self._thread.start()

    def request_stop(self) -> None:
        """Ask the thread to finish (it notices within the port's read timeout)."""
        self._stop.set()

    def join(self, timeout_s: float) -> bool:
        """Wait for the thread; True when it ended."""
        if self._thread is None:
            return True
        self._thread.join(max(timeout_s, 0.0))
        return not self._thread.is_alive()

    # -- the thread ------------------------------------------------------------------------------
    def _run(self) -> None:
        backoff = 1.0
        try:
            self._known_serial = self.store.device_state(self.device.id).serial
        except (StorageError, KeyError):
            self._known_serial = None
        while not self._stop.is_set():
            try:
                line = self.opener(self.settings)
            except Exception as exc:
                if not isinstance(exc, DriverError):
                    # Not a port problem we know (a pyserial or platform surprise): kept visible, retried.
                    log.exception("opening the serial line failed unexpectedly", device=self.device.id)
                    exc = DriverError(f"opening {self.settings.url} failed unexpectedly: {exc!r}"[:300])
                try:
                    self._failed(exc)
                except Exception:
                    log.exception("serial reader could not report a failure", device=self.device.id)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, self.line_cfg.reconnect_max_s)
                continue
            opened_at = self.monotonic()
            try:
                self._read(line)
            except DriverError as exc:
                self._cut_off(f"line cut off: {exc}")
                self._store_pending(final=False)
                self._failed(exc)
                if self.monotonic() - opened_at < STABLE_AFTER_S:
                    # A device server that accepts and drops at once must not be redialled in a tight loop.
                    self._stop.wait(backoff)
                    backoff = min(backoff * 2, self.line_cfg.reconnect_max_s)
                else:
                    backoff = 1.0  # it was up for a while: reopen at once (the clock does not wait for us)
            except Exception:
                # A bug of ours: reported like a poll that broke, the line reopened after the back-off.
                log.exception("serial reader failed", device=self.device.id)
                try:
                    self._cut_off("line cut off: the reader failed (a bug; see the log)")
                    self._store_pending(final=False)
                    self._failed(DriverError("the serial reader failed unexpectedly (see the log)"))
                except Exception:
                    log.exception("serial reader could not recover cleanly", device=self.device.id)
                self._stop.wait(backoff)
            finally:
                line.close()
                self.stats.connected = False
        self._store_pending(final=True)

    def _read(self, line: SerialLine) -> None:
        """Read until stopped (returns) or the line goes away (raises DriverError)."""
        self._framer = LineFramer(self.line_cfg.max_line_bytes)
        parser = LineParser(self.format, now=lambda: self.clock().astimezone(self.zone).replace(tzinfo=None))
        self.stats.connected = True
        self.stats.connects += 1
        self._opened()
        last_report = self.monotonic()
        noise_mark = 0
        while not self._stop.is_set():
            if len(self._punches) + len(self._bad) >= MAX_PENDING:
                # The database refuses writes and memory is full: stop reading until it takes them.
                if not self._store_pending(final=False):
                    self._stop.wait(1.0)
                continue
            data = line.read_some()
            received = self.clock()
            if data:
                self.stats.bytes_read += len(data)
                for framed in self._framer.feed(data):
                    self._take(framed, parser, received)
            if (self._punches or self._bad) and self.monotonic() >= self._store_again_at:
                self._store_pending(final=False)
            now = self.monotonic()
            if now - last_report >= self.heartbeat_s:
                noise = self._framer.noise_bytes - noise_mark
                noise_mark = self._framer.noise_bytes
                self._check_noise(noise, now - last_report)
                last_report = now
                self._report_ok()
        self._cut_off("line cut off: the gateway stopped before the line ended")

    def _take(self, framed: FramedLine, parser: LineParser, received: datetime) -> None:
        self.stats.lines += 1
        if framed.problem:
            self._quarantine(framed.raw, framed.problem, received)
            return
        parsed = parser.parse(framed.text)
        if isinstance(parsed, Rejected):
            self._quarantine(framed.raw, parsed.reason, received)
        elif isinstance(parsed, DateRecord):
            log.debug("serial clock date record", device=self.device.id, date=parsed.day.isoformat())
        else:
            machine = self.line_cfg.machine
            if machine is not None and parsed.device is not None and not _same_machine(machine, parsed.device):
                self._quarantine(framed.raw, f"line from machine {parsed.device}; this device is machine {machine}",
                                 received)
            else:
                self._punches.append((parsed.punch, received))

    def _quarantine(self, raw: str, reason: str, received: datetime) -> None:
        self._bad.append(QuarantinedInput(device_id=self.device.id, source=SOURCE, raw=raw, reason=reason,
                                          origin=self.settings.url, received_at=received))

    def _cut_off(self, why: str) -> None:
        framer: LineFramer | None = getattr(self, "_framer", None)
        if framer is None:
            return
        self.stats.noise_bytes += framer.noise_bytes
        framer.noise_bytes = 0
        partial = framer.flush(why)
        if partial is not None:
            self.stats.lines += 1
            self._quarantine(partial.raw, partial.problem or why, self.clock())

    # -- storing ---------------------------------------------------------------------------------
    def _store_pending(self, *, final: bool) -> bool:
        """Store what was read (punches and quarantined lines, one transaction per batch); True when nothing
        is left. ``final``: the thread is ending; retried for a short while, then the lines are logged."""
        attempts = 0
        while self._punches or self._bad:
            batch, bad = self._punches[:BATCH_MAX], self._bad[:BATCH_MAX]
            try:
                self._save(batch, bad)
            except StorageError as exc:
                self._storage_failed(exc)
                # Not on every read while the database is down: the lines wait in memory meanwhile.
                self._store_again_at = self.monotonic() + STORE_RETRY_S
                attempts += 1
                if not final or attempts >= 5:
                    if final:
                        # Nothing else can keep them now: their text goes to the log, never silently away.
                        log.error("serial lines read but not stored at stop (database unavailable)",
                                  device=self.device.id, punches=[f"{p.user_id} {p.time_text}" for p, _ in
                                                                  self._punches[:1000]],
                                  quarantined=[q.raw for q in self._bad[:1000]])
                    return False
                time.sleep(0.5)
                continue
            del self._punches[:len(batch)]
            del self._bad[:len(bad)]
        return True

    def _save(self, batch: list[tuple[RawPunch, datetime]], bad: list[QuarantinedInput]) -> None:
        now = self.clock()
        started = min([at for _, at in batch] + [q.received_at or now for q in bad], default=now)
        ctx = DeviceContext(office_code=self.config.site.office_code, device_id=self.device.id, serial=self.identity,
                            timezone=self.device.timezone,
                            not_before=self.device.installed_on or DEFAULT_NOT_BEFORE)
        self.employees.refresh()
        punches = _occurrences(normalize_punches([p for p, _ in batch], ctx, employees=self.employees, now=now),
                               started)
        outcome = replace(self._base_outcome(now), started_at=started, mode="tail" if batch else "count",
                          records_read=len(batch))
        saved = self.store.save_poll(outcome, punches, forward=bool(self.config.forward.url),
                                     address=(self.settings.url, 0), quarantined=bad)
        flags: dict[str, int] = {}
        for punch in punches:
            if punch.flags and punch.key in saved.new_keys:
                for f in punch.flags:
                    flags[f] = flags.get(f, 0) + 1
        self.stats.punches_stored += saved.new_punches
        self.stats.quarantined += len(bad)
        if bad:
            self._unlogged_bad += len(bad)
            if self.monotonic() - self._bad_logged_at >= QUARANTINE_LOG_EVERY_S:
                # A clock sending another format would otherwise log every line: once per 10 minutes, counted.
                log.warning("serial lines that are not punches were quarantined (said at most every 10 min)",
                            device=self.device.id, count=self._unlogged_bad, first_reason=bad[0].reason,
                            first_line=bad[0].raw[:120])
                self._bad_logged_at = self.monotonic()
                self._unlogged_bad = 0
        if saved.new_punches:
            log.debug("serial punches stored", device=self.device.id, new=saved.new_punches, read=len(batch))
        self._notify(replace(outcome, new_punches=saved.new_punches, newest_punch_utc=saved.newest_punch_utc,
                             flag_counts=flags))

    def _storage_failed(self, exc: StorageError) -> None:
        now = self.monotonic()
        if now - self._last_storage_report < 30.0:
            return
        self._last_storage_report = now
        at = self.clock()
        self._notify(PollOutcome(device_id=self.device.id, started_at=at, finished_at=at, ok=False,
                                 error_kind="storage", error=storage_error_text(exc), serial=self.identity))

    # -- health ----------------------------------------------------------------------------------
    def _base_outcome(self, now: datetime) -> PollOutcome:
        known = self._known_serial
        return PollOutcome(device_id=self.device.id, started_at=now, finished_at=now, ok=True, mode="count",
                           serial=self.identity,
                           previous_serial=known if known and known != self.identity else None,
                           info=DeviceInfo(serial=self.identity), bytes_read=self.stats.bytes_read)

    def _opened(self) -> None:
        if self._failing_since is not None:
            log.info("serial line open again", device=self.device.id, port=self.settings.url,
                     after_s=round(self.monotonic() - self._failing_since))
        else:
            log.info("serial line open", device=self.device.id, port=self.settings.url,
                     line_format=self.format.name)
        self._failing_since = None
        self._last_failure_text = None
        self.stats.last_error = None
        self._report_ok()

    def _report_ok(self) -> None:
        now = self.clock()
        try:
            self.store.save_poll(self._base_outcome(now), (), address=(self.settings.url, 0))
            self._known_serial = self.identity
        except StorageError as exc:
            self._storage_failed(exc)
            return
        self._notify(self._base_outcome(now))

    def _failed(self, exc: DriverError) -> None:
        text = str(exc)
        self.stats.last_error = text
        if self._failing_since is None:
            self._failing_since = self.monotonic()
        if text != self._last_failure_text:
            log.warning("serial line unavailable", device=self.device.id, port=self.settings.url, error=text)
            self._last_failure_text = text
        kind = exc.kind if exc.kind in ERROR_KINDS else "protocol_error"
        now = self.clock()
        outcome = PollOutcome(device_id=self.device.id, started_at=now, finished_at=now, ok=False, error_kind=kind,
                              error=text, transient=exc.transient, serial=self.identity)
        try:
            self.store.save_poll(outcome)
        except StorageError as err:
            self._storage_failed(err)
        self._notify(outcome)

    def _check_noise(self, noise: int, window_s: float) -> None:
        self.stats.noise_bytes += noise
        self._framer.noise_bytes -= noise
        per_min = noise * 60.0 / max(window_s, 1.0)
        if per_min >= self.line_cfg.noise_warn_per_min and not self._noisy:
            self._noisy = True
            log.warning("line noise on the serial line (framing errors, interference, wrong baud rate or parity?)",
                        device=self.device.id, port=self.settings.url, noise_bytes_per_min=round(per_min),
                        limit=self.line_cfg.noise_warn_per_min)
        elif per_min < self.line_cfg.noise_warn_per_min and self._noisy:
            self._noisy = False
            log.info("serial line quiet again", device=self.device.id, port=self.settings.url)

    def _notify(self, outcome: PollOutcome) -> None:
        for observer in list(self.observers):
            try:
                observer(outcome)
            except Exception:
                log.exception("poll observer failed", observer=getattr(observer, "__qualname__", repr(observer)))


def _same_machine(configured: str, seen: str) -> bool:
    """Machine numbers compare as numbers when both are (``0003`` is machine 3)."""
    if configured.isdigit() and seen.isdigit():
        return int(configured) == int(seen)
    return configured == seen


def _occurrences(punches: list[Punch], received: datetime) -> list[Punch]:
    """Occurrence numbers of untrusted-time punches (dead clock) made unique per read.

    normalize numbers such punches 1, 2, ... within one batch; a serial clock's batches are single reads,
    so two reads of a dead-clock clock would reuse 1 and lose a punch. The offset comes from the read's
    receive instant (milliseconds), so two reads never share it in practice. A serial clock never resends,
    so no resend has to map onto the same numbers.
    """
    if not any(pu.occurrence for pu in punches):
        return punches
    base = int(received.timestamp() * 1000) % _OCCURRENCE_SPAN
    return [replace(pu, occurrence=pu.occurrence + base) if pu.occurrence else pu for pu in punches]


class SerialService:
    """The daemon service: one SerialReader per enabled serial clock; stopping joins them within the deadline."""

    name = "serial"

    def __init__(self, config: Config, store: Store, observers: list[Callable[[PollOutcome], None]], *,
                 opener: Callable[[PortSettings], SerialLine] = open_line) -> None:
        self.readers = [SerialReader(config, d, store, observers, opener=opener)
                        for d in config.devices if d.reads_serial and d.enabled]

    def start(self) -> None:
        """Start every reader (each opens its port in its own thread; a missing port is a health state)."""
        for reader in self.readers:
            reader.start()
        log.info("serial readers started", devices=[r.device.id for r in self.readers])

    def stop(self, deadline_s: float) -> None:
        """Stop every reader; lines read are stored first. Never raises."""
        for reader in self.readers:
            reader.request_stop()
        end = time.monotonic() + deadline_s
        stuck = [r.device.id for r in self.readers if not r.join(end - time.monotonic())]
        if stuck:
            log.warning("serial readers still running at stop; abandoning them", devices=stuck)

    def stats(self) -> dict[str, ReaderStats]:
        """Device id -> its reader's counters."""
        return {r.device.id: r.stats for r in self.readers}


def services(ctx: AppContext) -> list[Service]:
    """The serial reader service, when an enabled serial clock is configured."""
    if not any(d.reads_serial and d.enabled for d in ctx.config.devices):
        return []
    return [SerialService(ctx.config, ctx.store, ctx.poll_observers)]

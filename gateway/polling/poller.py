"""DevicePoller: one poll of one device -> PollOutcome. The only module that calls drivers.

    scheduler --poll:<id>--> DevicePoller.poll_once(device)
        driver.connect() -> info (serial; the clock only when a check is due) -> counts
        -> [read_punches_after(position) | read_punches] -> [read_users]
        -> normalize -> store.save_poll (ONE transaction, with the new log position) -> ctx.poll_observers

Steady state is cheap: the log is read only when the record count changed, the serial changed, the log is
full (a terminal that overwrites its oldest record keeps its count: a full log is read every poll), or the
periodic full reconcile is due. When the log merely grew, only the new records are read (a tail read, from
the position saved with the last read; gateway.polling.position) if the driver can and nothing calls for a
full read; the device clock is read every polling.clock_check_s, not at every poll. Before a download (the
driver may lock the keypad) a durable disable mark is written; a later session that finds a stale one
re-enables the terminal first.
Every DriverError becomes an outcome with its ``kind``; anything else is a bug (logged with a traceback
every time). No retry loop here: the next tick is the retry (gateway.polling.scheduler backs failing devices off).

Clearing a terminal (`fpgw devices clear`, or the ``clear_when_full_ratio`` policy after a full poll)
starts here, because it reuses the poll's own download and store step; what is verified before
anything is deleted, and the guarded clear itself, live in gateway.polling.clear.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Literal
from zoneinfo import ZoneInfo

import structlog

from drivers import get_driver
from drivers.base import (
    Busy,
    Counts,
    DeviceInfo,
    DeviceUser,
    Driver,
    DriverError,
    LogPosition,
    RawPunch,
    ReadsNewPunches,
    ReadsUsers,
    Session,
    SetsClock,
)
from gateway.config import Config, DeviceConfig
from gateway.models import PollOutcome, Punch
from gateway.polling.clear import (
    ClearResult,
    clear_due,
    forget_disable_mark,
    process_owner,
    reenable_if_left_disabled,
    stale_marks,
    verify_and_clear,
)
from gateway.polling.normalize import (
    DEFAULT_NOT_BEFORE,
    RTC_RESET_BEFORE,
    DeviceContext,
    EmployeeMap,
    normalize_punches,
)
from gateway.polling.position import position_text, read_position
from gateway.polling.progress import DownloadProgress, ProgressDisplay
from gateway.store.db import StorageError, storage_error_text
from gateway.store.punches import DeviceState, Store
from gateway.store.quarantine import KEEP_PER_DEVICE, RAW_MAX, TEXT_MAX, QuarantinedInput, QuarantineRepo, bounded_text

log = structlog.get_logger(__name__)

DriverFactory = Callable[[DeviceConfig], Driver]
Observer = Callable[[PollOutcome], None]


class PollAborted(Exception):
    """Raised between poll steps when the daemon stops or the poll ran past its deadline."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def unreadable_rows(session: object) -> list[tuple[str, str]]:
    """What a session could not read as punches in its last read: any driver may expose ``unreadable``, a list
    of (raw text, reason); drivers without it have none."""
    rows = getattr(session, "unreadable", None)
    return [(str(raw), str(reason)) for raw, reason in rows] if rows else []


def registry_driver_factory(device: DeviceConfig) -> Driver:
    """The production driver of a device: the one its config names (``driver = "zk"``) in drivers.DRIVERS."""
    return get_driver(device.driver)(device)


@dataclass
class _Read:
    """What one session returned (filled step by step so a failure keeps what was read before it)."""

    info: DeviceInfo | None = None
    counts: Counts | None = None
    #: What was read of the log: the whole log ("full"), only the records after the saved position ("tail"),
    #: or nothing (None: the counts said nothing changed).
    mode: Literal["full", "tail"] | None = None
    #: The records read (the whole log, or the tail).
    raw: Sequence[RawPunch] | None = None
    #: The normalized records of a tail read (normalized in the session: see _tail_read).
    tail: list[Punch] | None = None
    #: Position text to save with this read (gateway.polling.position); None = keep the stored one.
    position: str | None = None
    users: list[DeviceUser] | None = None
    skew_s: float | None = None
    corrected: bool = False
    bytes_read: int = 0
    notes: list[str] = field(default_factory=list)
    #: The normalized punches of a full read (what a clear must find stored; never a tail read's).
    punches: list[Punch] | None = None
    #: Found left disabled by an earlier session and could not re-enable it.
    left_disabled: bool = False
    #: Records of this read that are no punch, as (raw text, reason): quarantined before the punches are saved.
    unreadable: list[tuple[str, str]] = field(default_factory=list)


class DevicePoller:
    """Polls devices for the daemon and the CLI; keeps one driver per device so its caches survive."""

    def __init__(self, config: Config, store: Store, *, driver_factory: DriverFactory | None = None,
                 observers: Sequence[Observer] | list[Observer] = (), stop_event: threading.Event | None = None,
                 employees: EmployeeMap | None = None, now: Callable[[], datetime] | None = None,
                 progress_display: ProgressDisplay | None = None,
                 progress_clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.store = store
        self.driver_factory = driver_factory or registry_driver_factory
        #: Shared list (gateway.app passes ctx.poll_observers) so services can register late.
        self.observers = observers
        self.stop_event = stop_event or threading.Event()
        self.employees = employees if employees is not None else EmployeeMap(config.employees.mapping_csv)
        self._now = now or (lambda: datetime.now(UTC))
        self._drivers: dict[str, Driver] = {}
        self._drivers_lock = threading.Lock()
        #: Device ids whose user table was downloaded by this process (re-read once after a restart).
        self._users_read: set[str] = set()
        self._serials: dict[str, str] = {}
        self._db_down = False
        #: Shows downloads as they run (`fpgw poll` on a terminal); None in the daemon.
        self.progress_display = progress_display
        self._progress_clock = progress_clock
        #: When this process last read each device's clock (polling.clock_check_s).
        self._clock_read_at: dict[str, datetime] = {}
        #: Devices whose driver refused a tail read since their last good one (logged at INFO once).
        self._tail_refused: set[str] = set()

    # -- drivers ---------------------------------------------------------------------------------
    def driver_for(self, device: DeviceConfig) -> Driver:
        """The device's driver, created on first use and kept across polls."""
        with self._drivers_lock:
            drv = self._drivers.get(device.id)
            if drv is None:
                drv = self.driver_factory(device)
                self._drivers[device.id] = drv
            return drv

    # -- the poll --------------------------------------------------------------------------------
    def poll_once(self, device: DeviceConfig) -> PollOutcome:
        """Poll one device once, store what it found, notify observers; never raises."""
        started = self._now()
        t0 = time.monotonic()
        # Bound INSIDE the job (worker threads are reused; see ops-notes §5) and undone on exit.
        with structlog.contextvars.bound_contextvars(device=device.id,
                                                     serial=self._serials.get(device.id, "unknown")):
            try:
                outcome = self._poll(device, started, t0)
                self._database_ok()
            except StorageError as exc:
                # Database down or full: not a bug in the poll. Nothing is lost (the terminal still holds
                # its log and the stored count was not advanced, so the next poll reads it again); log
                # once per outage, not once per device per tick.
                self._database_failed(exc)
                outcome = PollOutcome(device_id=device.id, started_at=started, finished_at=self._now(), ok=False,
                                      error_kind="storage", error=f"database error: {storage_error_text(exc)}")
            except Exception as exc:  # a bug in our code: never kill the job, always show the traceback
                log.exception("poll failed unexpectedly (bug)", error=repr(exc))
                outcome = PollOutcome(device_id=device.id, started_at=started, finished_at=self._now(), ok=False,
                                      error_kind="bug", error=f"{type(exc).__name__}: {exc}")
                self._save_failed(outcome)
            self._notify(outcome)
            return outcome

    def _poll(self, device: DeviceConfig, started: datetime, t0: float) -> PollOutcome:
        state = self.store.device_state(device.id)
        read = _Read()
        deadline = t0 + self.config.polling.poll_deadline_s
        try:
            self._check(deadline, "connect")
            self._session(device, state, read, deadline)
        except (DriverError, PollAborted) as exc:
            return self._failed(device, state, read, started, exc)
        outcome = self._store_good(device, state, read, started)
        # Only a full read can prove every record stored before a clear (a tail read saw only the new ones).
        if clear_due(device, read.counts) and read.mode == "full" and read.punches is not None:
            outcome = self._policy_clear(device, read, outcome)
        return outcome

    # -- clearing ------------------------------------------------------------------------------------
    def _policy_clear(self, device: DeviceConfig, read: _Read, outcome: PollOutcome) -> PollOutcome:
        result = self._verify_and_clear(device, read, outcome, dry_run=False,
                                        require_forwarded=self._requires_forwarded())
        if result.status != "cleared":
            # Not an error: the next full poll tries again (the device keeps every record meanwhile).
            log.info("automatic clear postponed", reason=result.message, records=result.records)
            return outcome
        assert outcome.counts is not None
        return replace(outcome, cleared_records=result.records, counts=replace(outcome.counts, records=0))

    def _verify_and_clear(self, device: DeviceConfig, read: _Read, outcome: PollOutcome, *, dry_run: bool,
                          require_forwarded: bool) -> ClearResult:
        assert read.info is not None and read.punches is not None and read.raw is not None
        return verify_and_clear(self.store, self.driver_for(device), device.id, serial=read.info.serial,
                                punches=read.punches, raw=read.raw, new_punches=outcome.new_punches,
                                dry_run=dry_run, require_forwarded=require_forwarded, now=self._now)

    def _requires_forwarded(self) -> bool:
        """Clear only once BKD accepted the device's punches: forwarding on and polling.clear_requires_forwarded."""
        return bool(self.config.forward.url) and self.config.polling.clear_requires_forwarded

    def clear_device(self, device: DeviceConfig, *, dry_run: bool = False,
                     require_forwarded: bool | None = None) -> ClearResult:
        """`fpgw devices clear`: download the whole log, store it, verify, then clear with the count guard.

        ``require_forwarded`` defaults to forwarding on and polling.clear_requires_forwarded. Never raises for device
        problems (they become a "failed"/"refused" result); a database error propagates after
        nothing was cleared.
        """
        if require_forwarded is None:
            require_forwarded = self._requires_forwarded()
        started = self._now()
        t0 = time.monotonic()
        with structlog.contextvars.bound_contextvars(device=device.id,
                                                     serial=self._serials.get(device.id, "unknown")):
            state = self.store.device_state(device.id)
            read = _Read()
            try:
                self._session(device, state, read, t0 + self.config.polling.poll_deadline_s, force_full=True)
            except (DriverError, PollAborted) as exc:
                self._failed(device, state, read, started, exc)
                return ClearResult(device.id, "failed", f"could not download the log: {exc}",
                                   serial=read.info.serial if read.info else None)
            # Same store step (one transaction) as a poll: a database error escapes here, before any clear.
            outcome = self._store_good(device, state, read, started)
            result = self._verify_and_clear(device, read, outcome, dry_run=dry_run,
                                            require_forwarded=require_forwarded)
            if result.status == "cleared":
                assert outcome.counts is not None
                outcome = replace(outcome, cleared_records=result.records,
                                  counts=replace(outcome.counts, records=0))
            self._notify(outcome)
            return result

    def _check(self, deadline: float, step: str) -> None:
        if self.stop_event.is_set():
            raise PollAborted("abandoned", f"gateway stopping; poll abandoned before {step}")
        if time.monotonic() > deadline:
            raise PollAborted("timeout", f"poll exceeded polling.poll_deadline_s "
                                         f"({self.config.polling.poll_deadline_s:g} s) before {step}")

    def _session(self, device: DeviceConfig, state: DeviceState, read: _Read, deadline: float, *,
                 force_full: bool = False) -> None:
        driver = self.driver_for(device)
        owner, marked = process_owner(), False
        marks = self.store.disable_marks(device.id)
        stale = stale_marks(marks, self._now(), 2 * self.config.polling.poll_deadline_s)
        # Another live fpgw process (`fpgw devices clear`) holds the keypad locked right now: our download
        # would re-enable it at its end, in the middle of that clear. A poll that needs the log waits (Busy).
        locked_elsewhere = len(marks) > len(stale)
        # The session's exit re-enables the terminal and closes the socket whatever happens inside.
        with driver.connect(deadline=deadline) as session:
            try:
                try:
                    # An earlier session (maybe a killed `fpgw devices clear`) may have left it locked.
                    if reenable_if_left_disabled(self.store, device.id, session, stale) is False:
                        read.left_disabled = True
                except DriverError:
                    read.left_disabled = True
                    raise
                clock_due = self._clock_due(device, state)
                read.info = session.info(clock=clock_due)
                structlog.contextvars.bind_contextvars(serial=read.info.serial)
                self._serials[device.id] = read.info.serial
                if not clock_due and read.info.serial != state.serial:
                    clock_due = True  # another terminal answers at this address: check its clock at once
                    read.info = session.info()
                read.skew_s = self._clock(device, session, read)
                self._check(deadline, "reading counts")
                read.counts = session.counts()
                why = "forced" if force_full else self._why_read(device, state, read.info, read.counts)
                if why is not None:
                    if locked_elsewhere and not force_full:
                        # Not a count-only success: that would store the new count without its records.
                        raise Busy("another fpgw process (fpgw devices clear?) holds the terminal locked; "
                                   "the log is read at the next poll", retry_after=30.0)
                    known = self._tail_start(device, state, read.counts, session, why)
                    if known is None and not clock_due:
                        # A full download costs far more than one clock read: check the clock with it.
                        read.info = session.info()
                        read.skew_s = self._clock(device, session, read)
                    self._check(deadline, "downloading the log")
                    # Durably, before the driver locks the keypad for the download: if this process dies
                    # meanwhile, the next session (of any process) knows to re-enable the terminal.
                    self.store.mark_disabling(device.id, owner)
                    marked = True
                    if known is not None and isinstance(session, ReadsNewPunches):
                        self._tail_read(device, session, read, known)
                    if read.mode is None:
                        self._full_read(device, session, read)
                    read.unreadable = unreadable_rows(session)
                if isinstance(session, ReadsUsers) and self._needs_users(device, state, read.info, read.counts):
                    self._check(deadline, "downloading users")
                    try:
                        read.users = session.read_users()
                    except DriverError as exc:
                        # Users are a convenience (names); never lose a poll's punches over them.
                        read.notes.append(f"user table not read: {exc}")
                        log.info("user table download failed; will retry next poll", error_kind=exc.kind,
                                 error=str(exc))
            finally:
                read.bytes_read = session.bytes_read
        if marked:  # the session ended cleanly: the driver re-enabled the terminal
            forget_disable_mark(self.store, device.id, owner)

    def _full_read(self, device: DeviceConfig, session: Session, read: _Read) -> None:
        """Download the whole log; the position to save is its last record."""
        progress = DownloadProgress(device.id, "full", display=self.progress_display, clock=self._progress_clock)
        ok = False
        try:
            raw = session.read_punches(progress)
            ok = True
        finally:
            progress.finish(ok)
        read.mode, read.raw = "full", raw
        read.position = position_text(LogPosition(len(raw), raw[-1]) if raw else None)

    def _tail_read(self, device: DeviceConfig, session: ReadsNewPunches, read: _Read, known: LogPosition) -> None:
        """Read only the records after ``known``; leaves read.mode None when a full read is needed instead."""
        progress = DownloadProgress(device.id, "tail", display=self.progress_display, clock=self._progress_clock)
        ok = False
        try:
            tail = session.read_punches_after(known, progress)
            ok = True
        finally:
            progress.finish(ok)
        if tail is None:
            # The record we read last is not where it was: the log was cleared, rolled over or rewritten.
            if device.id not in self._tail_refused:
                self._tail_refused.add(device.id)
                log.info("the terminal's log changed under the last read position; reading the whole log",
                         position=known.records)
            else:
                log.debug("tail read refused by the driver; reading the whole log", position=known.records)
            return
        assert read.info is not None
        punches = self._normalize(device, read.info.serial, tail)
        if any(p.occurrence for p in punches):
            # Occurrence numbers count same-time records within the WHOLE log (gateway.polling.normalize): a tail
            # cannot number them the way a full read does, so a record with an untrusted time means a full read.
            log.debug("new records with an untrusted time; reading the whole log to number them", records=len(tail))
            return
        self._tail_refused.discard(device.id)
        read.mode, read.raw, read.tail = "tail", tail, punches
        if tail:
            read.position = position_text(LogPosition(known.records + len(tail), tail[-1]))

    def _clock_due(self, device: DeviceConfig, state: DeviceState) -> bool:
        """Read the device clock in this poll? On the first poll (of this process too), then every
        polling.clock_check_s; a poll that reads the whole log reads it anyway (see _session)."""
        last = self._clock_read_at.get(device.id)
        return state.serial is None or last is None or \
            (self._now() - last).total_seconds() >= self.config.polling.clock_check_s

    def _clock(self, device: DeviceConfig, session: object, read: _Read) -> float | None:
        info = read.info
        if info is None or info.device_time is None:
            return None
        self._clock_read_at[device.id] = self._now()
        zone = ZoneInfo(device.timezone)
        local_now = self._now().astimezone(zone).replace(tzinfo=None)
        skew = (info.device_time - local_now).total_seconds()
        health = self.config.health
        if health.clock_correct and abs(skew) > health.clock_correct_above_s and isinstance(session, SetsClock):
            try:
                target = self._now().astimezone(zone).replace(tzinfo=None, microsecond=0)
                session.set_time(target)
            except DriverError as exc:
                log.warning("could not correct the device clock", skew_s=round(skew, 1), error=str(exc))
            else:
                read.corrected = True
                log.info("device clock corrected", skew_s=round(skew, 1), set_to=target.isoformat(sep=" "))
        return skew

    def _why_read(self, device: DeviceConfig, state: DeviceState, info: DeviceInfo, counts: Counts) -> str | None:
        """Why this poll must read the log (None: the counts say nothing changed). Only "grew" allows a tail read."""
        if state.serial != info.serial or state.last_record_count is None:
            return "new terminal"  # first poll, or another terminal (replaced): read everything it has
        if counts.unreliable:
            return "unreliable counts"  # the driver could not trust the counter and downloaded the log to count it
        if counts.records_cap > 0 and counts.records >= counts.records_cap:
            # Full: a terminal that overwrites its oldest record when full ("rolling" log) keeps this count
            # while every new punch replaces an old one, so the count says nothing: read it all, every poll.
            return "log full"
        if state.last_full_read_at is None or \
                self._now() >= state.last_full_read_at + timedelta(seconds=self.config.polling.full_reconcile_s):
            return "reconcile due"
        # The clear policy needs a fresh full read to verify; with forwarding, only once the outbox of this
        # device drained (else the clear would be refused anyway and the download wasted).
        if clear_due(device, counts) and (
                not self._requires_forwarded() or sum(self.store.outbox_waiting(device.id)) == 0):
            return "clear due"
        if counts.records < state.last_record_count:
            return "log shrank"  # cleared at the keypad: whatever is there now is new
        if counts.records > state.last_record_count:
            return "grew"
        return None

    def _tail_start(self, device: DeviceConfig, state: DeviceState, counts: Counts, session: Session,
                    why: str) -> LogPosition | None:
        """The saved position to read on from, when this read may be a tail read; None = read the whole log."""
        if why != "grew" or not isinstance(session, ReadsNewPunches):
            return None
        known = read_position(state.log_position)
        if known is None:
            if state.log_position:
                log.info("saved log position unreadable; reading the whole log")
            return None
        last = known.last.local_time
        if known.records > counts.records or known.records > (state.last_record_count or 0) \
                or last is None or last.date() < RTC_RESET_BEFORE:
            # The log holds fewer records than we read (cleared since: by fpgw, whose clear stores a count of 0),
            # or the proof record has a time that cannot tell records apart (a dead clock writes the same one
            # again and again): only a full read is safe.
            log.debug("saved log position not usable for a tail read", position=known.records, records=counts.records)
            return None
        return known

    def _needs_users(self, device: DeviceConfig, state: DeviceState, info: DeviceInfo, counts: Counts) -> bool:
        return (device.id not in self._users_read or state.serial != info.serial
                or state.last_user_count != counts.users)

    # -- storing ---------------------------------------------------------------------------------
    def _context(self, device: DeviceConfig, serial: str) -> DeviceContext:
        return DeviceContext(office_code=self.config.site.office_code, device_id=device.id, serial=serial,
                             timezone=device.timezone, not_before=device.installed_on or DEFAULT_NOT_BEFORE)

    def _normalize(self, device: DeviceConfig, serial: str, raw: Sequence[RawPunch]) -> list[Punch]:
        self.employees.refresh()
        return normalize_punches(raw, self._context(device, serial), employees=self.employees, now=self._now())

    def _store_good(self, device: DeviceConfig, state: DeviceState, read: _Read, started: datetime) -> PollOutcome:
        assert read.info is not None and read.counts is not None
        info, counts = read.info, read.counts
        punches: list[Punch] = []
        if read.mode == "tail" and read.tail is not None:
            punches = read.tail
        elif read.mode == "full" and read.raw is not None:
            # After the session: the terminal is unlocked and the connection closed before this CPU work.
            punches = read.punches = self._normalize(device, info.serial, read.raw)
        previous_serial = state.serial if state.serial is not None and state.serial != info.serial else None
        if previous_serial is not None:
            log.warning("device serial changed: terminal replaced or readdressed; polling the new one",
                        previous_serial=previous_serial)
        cleared_by_us = 0
        if state.last_record_count is not None and counts.records < state.last_record_count \
                and previous_serial is None:
            # `fpgw devices clear` (another process) may have cleared it while a poll of ours was running.
            cleared_by_us = self.store.cleared_since_last_poll(device.id) or 0
            if cleared_by_us:
                log.info("device log shrank after a clear by fpgw", records=counts.records,
                         previous_records=state.last_record_count)
            else:
                log.warning("device log shrank: cleared at the device? every earlier punch is already stored",
                            records=counts.records, previous_records=state.last_record_count)
        outcome = PollOutcome(
            device_id=device.id, started_at=started, finished_at=self._now(), ok=True,
            mode=read.mode or "count", serial=info.serial, previous_serial=previous_serial,
            info=info, counts=counts, previous_record_count=state.last_record_count,
            previous_firmware=state.firmware, records_read=len(punches), clock_skew_s=read.skew_s,
            clock_corrected=read.corrected, bytes_read=read.bytes_read,
            error="; ".join(read.notes) or None, cleared_records=cleared_by_us, terminal_disabled=read.left_disabled,
        )
        # Rows that are no punch are kept in the same transaction as the punches and the log position.
        quarantined = self._not_yet_quarantined(device, info.serial, read.unreadable) if read.unreadable else []
        saved = self.store.save_poll(outcome, punches, forward=bool(self.config.forward.url),
                                     address=(device.address, device.port), log_position=read.position,
                                     quarantined=quarantined)
        if quarantined:
            log.warning("records that are no punch kept in quarantine", records=len(quarantined),
                        first=quarantined[0].reason)
        if read.users is not None:
            self.store.save_users(info.serial, read.users)
            self._users_read.add(device.id)
        # The poll ends when its punches are stored: the reported duration (CLI, metrics, health) covers the store
        # too. (The poll_runs row, written inside save_poll, cannot include its own transaction.)
        outcome = replace(outcome, finished_at=self._now())
        flags: Counter[str] = Counter()
        if saved.new_keys:
            for p in punches:
                if p.flags and p.key in saved.new_keys:
                    flags.update(p.flags)
        outcome = replace(outcome, new_punches=saved.new_punches, newest_punch_utc=saved.newest_punch_utc,
                          flag_counts=dict(flags))
        log.debug("poll done", mode=outcome.mode, records=counts.records, read=len(punches),
                  new=saved.new_punches, skew_s=None if read.skew_s is None else round(read.skew_s, 1),
                  bytes=read.bytes_read, duration_s=round(outcome.duration_s, 3))
        if saved.new_punches:
            log.info("new punches stored", new=saved.new_punches, records=counts.records)
        if punches and saved.new_punches >= len(punches) and previous_serial is None \
                and 0 < counts.records_cap <= counts.records and (state.last_record_count or 0) >= counts.records_cap:
            # Full before and now, and not one record seen before: a log that overwrites its oldest record
            # turned over completely since the last read, so punches in between may be gone unread.
            log.warning("full log turned over completely since the last read: on a terminal that overwrites "
                        "its oldest record, punches may have been lost; poll it more often or clear it "
                        "(polling.clear_when_full_ratio)", records=counts.records, capacity=counts.records_cap)
        return outcome

    def _not_yet_quarantined(self, device: DeviceConfig, serial: str,
                             rows: list[tuple[str, str]]) -> list[QuarantinedInput]:
        """The records a driver could not read as punches that the quarantine table does not hold yet (a driver
        that reads the whole log every poll reports the same rows again)."""
        kept = {(q.raw, q.reason) for q in QuarantineRepo(self.store.engine).recent(device.id, limit=KEEP_PER_DEVICE)}
        return [QuarantinedInput(device.id, device.driver, raw, reason, origin=f"serial {serial}")
                for raw, reason in rows if (bounded_text(raw, RAW_MAX), bounded_text(reason, TEXT_MAX)) not in kept]

    def _failed(self, device: DeviceConfig, state: DeviceState, read: _Read, started: datetime,
                exc: DriverError | PollAborted) -> PollOutcome:
        kind = exc.kind
        info = read.info
        outcome = PollOutcome(
            device_id=device.id, started_at=started, finished_at=self._now(), ok=False, error_kind=kind,
            error=str(exc), mode="none", serial=info.serial if info else None,
            previous_serial=state.serial if info and state.serial and state.serial != info.serial else None,
            info=info, counts=read.counts, previous_record_count=state.last_record_count,
            previous_firmware=state.firmware, clock_skew_s=read.skew_s, clock_corrected=read.corrected,
            bytes_read=read.bytes_read, transient=not isinstance(exc, DriverError) or exc.transient,
            retry_after_s=exc.retry_after if isinstance(exc, DriverError) else None,
            terminal_disabled=read.left_disabled,
        )
        # Per-poll detail at DEBUG: state changes are logged once, by gateway.health.
        log.debug("poll failed", error_kind=kind, error=str(exc))
        self._save_failed(outcome)
        return outcome

    def _database_failed(self, exc: StorageError) -> None:
        with self._drivers_lock:
            first = not self._db_down
            self._db_down = True
        if first:
            log.error("database unavailable; polls keep failing until it is back (punches stay on the "
                      "terminals and are read again)", error=storage_error_text(exc))

    def _database_ok(self) -> None:
        if self._db_down:
            with self._drivers_lock:
                was, self._db_down = self._db_down, False
            if was:
                log.info("database available again")

    def _save_failed(self, outcome: PollOutcome) -> None:
        try:
            self.store.save_poll(outcome, (), forward=False)
        except Exception as exc:
            log.error("could not record the failed poll", error=repr(exc))

    def _notify(self, outcome: PollOutcome) -> None:
        for observer in list(self.observers):
            try:
                observer(outcome)
            except Exception:
                # An observer bug (health, metrics) must never break polling.
                log.exception("poll observer failed", observer=getattr(observer, "__qualname__", repr(observer)))

"""Verify-then-clear: the only path by which the gateway deletes a terminal's attendance log.

    fpgw devices clear / the clear_when_full_ratio policy --> DevicePoller (full download + store, as a poll)
        --> verify_and_clear(): every record read found stored by its dedup key -> (forwarding on) none of the
            device's punches waiting in the outbox -> [dry run stops here] -> same serial still answers
            -> session.clear_punches(expected_records=N) -> the clear recorded in poll_runs
Nothing is deleted until every check passed and the database made those punches durable (SQLite: a WAL
checkpoint), and the driver clears only if the device still holds exactly the records just read (re-read with
the keypad locked: a full log that overwrites its oldest record keeps its count), so a punch that landed after
the download is never wiped.

Disable marks: before any session may lock a terminal's keypad, a kv row says so (store.mark_disabling); the
row goes once the session ended cleanly. A later session of any process that finds a stale mark (ours, or of a
process that is gone) re-enables the terminal first (``reenable_if_left_disabled``).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Literal

import structlog

from drivers.base import Busy, ClearsLog, Counts, Driver, DriverError, EnablesDevice, RawPunch
from gateway.config import DeviceConfig
from gateway.models import Punch
from gateway.store.db import StorageError, storage_error_text
from gateway.store.punches import Store

log = structlog.get_logger(__name__)

ClearStatus = Literal["cleared", "dry_run", "refused", "failed"]


@dataclass(frozen=True)
class ClearResult:
    """What a clear attempt verified and did (the CLI prints it; the policy logs it)."""

    device_id: str
    status: ClearStatus
    message: str
    serial: str | None = None
    #: Records downloaded from the device (the count the clear was guarded with).
    records: int = 0
    #: Of those, how many were found stored in the database by their dedup key.
    verified: int = 0
    new_punches: int = 0
    #: Outbox rows of this device not yet accepted upstream (pending, rejected); None when not checked.
    waiting: tuple[int, int] | None = None

    @property
    def ok(self) -> bool:
        """True when the log was cleared, or a dry run found nothing that would stop it."""
        return self.status in ("cleared", "dry_run")


def process_owner() -> str:
    """How this process names itself in disable marks: host and pid (a pid that is gone left its mark stale)."""
    return f"{socket.gethostname()[:16]}:{os.getpid()}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def stale_marks(marks: Sequence[tuple[str, datetime]], now: datetime, max_age_s: float) -> list[str]:
    """Owners of disable marks nobody will undo: ours (no session of ours runs now: the scheduler runs one
    poll per device), a process on this host that is gone, or older than ``max_age_s`` (any live session
    ends long before). A fresh mark of another live process is left alone: that process may hold the
    keypad locked for a clear right now, and re-enabling it mid-clear could let a punch be wiped."""
    me = process_owner()
    host = me.split(":", 1)[0]
    out = []
    for owner, at in marks:
        o_host, _, o_pid = owner.rpartition(":")
        gone = o_host == host and o_pid.isdigit() and not _pid_alive(int(o_pid))
        if owner == me or gone or (now - at).total_seconds() > max_age_s:
            out.append(owner)
    return out


def reenable_if_left_disabled(store: Store, device_id: str, session: object, owners: Sequence[str]) -> bool | None:
    """Send ENABLEDEVICE when stale disable marks (``owners``, see stale_marks) say an earlier session left
    this terminal locked.

    Returns None (nothing to do), True (re-enabled; marks cleared) or False (the driver cannot). A
    DriverError propagates (the terminal may still be locked; the mark stays for the next session).
    """
    if not owners:
        return None
    if not isinstance(session, EnablesDevice):
        return False
    session.enable_device()
    store.clear_disable_marks(device_id, owners)
    log.warning("terminal was left disabled by an earlier session (killed or cut off); re-enabled it",
                marked_by=owners)
    return True


def forget_disable_mark(store: Store, device_id: str, owner: str) -> None:
    """Remove our mark after a session that ended cleanly; a database error only leaves it (the next
    session of ours then sends one harmless ENABLEDEVICE) and must not turn a done job into a failure."""
    try:
        store.clear_disable_marks(device_id, [owner])
    except StorageError as exc:
        log.warning("could not remove the disable mark; the next session re-enables the terminal once",
                    error=storage_error_text(exc))


def clear_due(device: DeviceConfig, counts: Counts | None) -> bool:
    """The automatic policy applies: enabled for the device and records/capacity at the ratio.

    Never with an unknown capacity (0): we cannot tell how full the device is.
    """
    ratio = device.clear_when_full_ratio
    if ratio <= 0 or counts is None or counts.records_cap <= 0 or counts.records <= 0:
        return False
    return counts.records / counts.records_cap >= ratio


def verify_and_clear(store: Store, driver: Driver, device_id: str, *, serial: str, punches: Iterable[Punch],
                     raw: Sequence[RawPunch], new_punches: int, dry_run: bool, require_forwarded: bool,
                     now: Callable[[], datetime]) -> ClearResult:
    """Verify every record just read is stored (and forwarded), then clear guarded by those exact records.

    ``punches`` are the normalized records of the download that read the ``raw`` records from the device
    with ``serial``; they were stored by the caller first. Device problems become a "refused"/"failed" result.
    """
    punches = list(punches)
    n = len(raw)
    base = ClearResult(device_id, "refused", "", serial=serial, records=n, new_punches=new_punches)
    if n == 0:
        return replace(base, message="the device log is already empty; nothing to clear")
    missing = store.missing_keys(serial, (p.key for p in punches))
    verified = sum(1 for p in punches if p.key not in missing)
    base = replace(base, verified=verified)
    if missing:
        return replace(base, message=f"{len(missing)} of the {n} records read are not in the database; "
                                     "nothing cleared")
    waiting: tuple[int, int] | None = None
    if require_forwarded:
        waiting = store.outbox_waiting(device_id)
        base = replace(base, waiting=waiting)
        if sum(waiting):
            pending, rejected = waiting
            return replace(base, message=f"{pending + rejected} punches of this device are not yet accepted "
                                         f"by the central server ({pending} pending, {rejected} rejected) "
                                         "in the outbox; nothing cleared")
    if dry_run:
        return replace(base, status="dry_run", message="dry run: every check passed; nothing cleared")
    try:
        # A commit alone may not survive a power cut (SQLite WAL, synchronous=NORMAL): sync it first.
        durable = store.make_durable()
    except StorageError as exc:
        return replace(base, status="failed", message="could not make the stored punches durable on disk "
                                                      f"({storage_error_text(exc)}); nothing cleared")
    log.debug("stored punches made durable before the clear", how=durable)
    cleared_at_start = now()
    owner = process_owner()
    try:
        with driver.connect() as session:
            now_serial = session.info().serial
            if now_serial != serial:
                return replace(base, message=f"another terminal answers now (serial {now_serial}, read "
                                             f"{serial}); nothing cleared")
            if not isinstance(session, ClearsLog):
                return replace(base, status="failed", message="this driver cannot clear a device log")
            marks = store.disable_marks(device_id)
            if len(stale_marks(marks, now(), 600.0)) < len(marks):
                # A poll of the daemon may be downloading: its end re-enables the keypad, mid-clear.
                return replace(base, message="another fpgw process is reading this terminal right now; "
                                             "nothing cleared; retry in a minute")
            store.mark_disabling(device_id, owner)
            # The driver locks the keypad, re-reads the log and clears only if it holds exactly these records
            # (a count would miss a full log that overwrote its oldest record with a new punch).
            session.clear_punches(expected_records=n, expected=raw)
        forget_disable_mark(store, device_id, owner)
    except Busy as exc:
        forget_disable_mark(store, device_id, owner)  # the session ended and re-enabled the terminal
        return replace(base, message=f"a new punch arrived after the download; nothing cleared ({exc}); "
                                     "retry to store it and clear")
    except DriverError as exc:
        # If the clear command itself got through, nothing is lost either: everything was verified.
        return replace(base, status="failed", message=f"could not clear the device: {exc}")
    try:
        store.record_clear(device_id, serial, started_at=cleared_at_start, finished_at=now(), records_cleared=n)
    except Exception as exc:
        log.error("device log cleared but the clear could not be recorded (the next poll may report "
                  "log_shrank)", error=repr(exc))
    what = "stored and forwarded" if require_forwarded else "stored"
    log.info(f"device log cleared by fpgw after verifying {n} punches {what}", records=n)
    return replace(base, status="cleared", message=f"cleared {n} records after verifying them {what}")

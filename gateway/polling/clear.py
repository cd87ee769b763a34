"""Verify-then-clear: the only path by which the gateway deletes a terminal's attendance log.

    fpgw devices clear / the clear_when_full_ratio policy --> DevicePoller (full download + store, as a poll)
        --> verify_and_clear(): every record read found stored by its dedup key -> (forwarding on) none of the
            device's punches waiting in the outbox -> [dry run stops here] -> same serial still answers
            -> session.clear_punches(expected_records=N) -> the clear recorded in poll_runs
Nothing is deleted until every check passed, and the driver clears only if the device still holds exactly the
N records just read, so a punch that landed after the download is never wiped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Literal

import structlog

from drivers.base import Busy, ClearsLog, Counts, Driver, DriverError
from gateway.config import DeviceConfig
from gateway.models import Punch
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


def clear_due(device: DeviceConfig, counts: Counts | None) -> bool:
    """The automatic policy applies: enabled for the device and records/capacity at the ratio.

    Never with an unknown capacity (0): we cannot tell how full the device is.
    """
    ratio = device.clear_when_full_ratio
    if ratio <= 0 or counts is None or counts.records_cap <= 0 or counts.records <= 0:
        return False
    return counts.records / counts.records_cap >= ratio


def verify_and_clear(store: Store, driver: Driver, device_id: str, *, serial: str, punches: Iterable[Punch],
                     records: int, new_punches: int, dry_run: bool, require_forwarded: bool,
                     now: Callable[[], datetime]) -> ClearResult:
    """Verify every record just read is stored (and forwarded), then clear guarded by its count.

    ``punches`` are the normalized records of the download that read ``records`` raw records from the device
    with ``serial``; they were stored by the caller first. Device problems become a "refused"/"failed" result.
    """
    punches = list(punches)
    n = records
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
    cleared_at_start = now()
    try:
        with driver.connect() as session:
            now_serial = session.info().serial
            if now_serial != serial:
                return replace(base, message=f"another terminal answers now (serial {now_serial}, read "
                                             f"{serial}); nothing cleared")
            if not isinstance(session, ClearsLog):
                return replace(base, status="failed", message="this driver cannot clear a device log")
            # The driver locks the keypad, re-reads the count and clears only if it is still n.
            session.clear_punches(expected_records=n)
    except Busy as exc:
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

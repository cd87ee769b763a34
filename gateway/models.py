"""Plain value types passed between the gateway's stages (no I/O here).

    poller --PollOutcome--> health / metrics / store.poll_runs
    normalize --Punch--> store.save_poll (punches + outbox in one transaction)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from drivers.base import Counts, DeviceInfo

#: Stable names of the ways a poll can end. Health rules and metrics key on these.
ERROR_KINDS = ("unreachable", "auth_rejected", "busy", "identity_mismatch", "protocol_error", "timeout",
               "bug", "abandoned")


@dataclass(frozen=True, slots=True)
class Punch:
    """One normalized punch, ready to store: raw device fields plus what the gateway derives."""

    office_code: str
    device_id: str
    device_serial: str
    device_user_id: str
    #: Device-local wall clock "YYYY-MM-DD HH:MM:SS" exactly as the device had it (part of the key).
    device_time: str
    #: Naive local datetime (None when device_time is not a real calendar date).
    local_time: datetime | None
    #: Aware UTC instant (None when device_time is not a real calendar date).
    utc_time: datetime | None
    timezone: str
    state: int
    state_name: str
    verify: int
    verify_name: str
    uid: int = 0
    workcode: int = 0
    raw_time: int = -1
    employee_id: str | None = None
    #: Quality flags (future, before_device, rtc_reset, impossible_date, unmapped_user); never a reason to drop.
    flags: tuple[str, ...] = ()

    @property
    def key(self) -> tuple[str, str, str]:
        """The dedup key: the same punch read twice (or forwarded twice) has the same key."""
        return (self.device_serial, self.device_user_id, self.device_time)


@dataclass(frozen=True)
class PollOutcome:
    """What one poll of one device found; the health model and metrics are fed from these."""

    device_id: str
    started_at: datetime
    finished_at: datetime
    ok: bool
    #: One of ERROR_KINDS when not ok.
    error_kind: str | None = None
    error: str | None = None
    #: False when the failure will not go away by itself (DriverError.transient: wrong comm key, another
    #: terminal at the address): the scheduler then probes slowly.
    transient: bool = True
    #: Seconds the device asked us to wait before the next try (DriverError.retry_after, e.g. Busy).
    retry_after_s: float | None = None
    #: "count" (counts only, nothing new), "full" (log downloaded) or "none" (failed before counting).
    mode: Literal["count", "full", "none"] = "none"
    serial: str | None = None
    #: The serial previously known at this device id, when it changed (device replaced).
    previous_serial: str | None = None
    info: DeviceInfo | None = None
    counts: Counts | None = None
    #: Record count stored from the previous good poll (a drop means the log was cleared at the device).
    previous_record_count: int | None = None
    previous_firmware: str | None = None
    records_read: int = 0
    new_punches: int = 0
    #: Newest punch instant among the punches this poll stored.
    newest_punch_utc: datetime | None = None
    #: How many of the new punches carried each quality flag.
    flag_counts: dict[str, int] = field(default_factory=dict)
    #: Device clock minus server clock (seconds), when the clock was read.
    clock_skew_s: float | None = None
    #: True when this poll set the device clock (clock correction policy).
    clock_corrected: bool = False
    bytes_read: int = 0
    #: Records fpgw itself cleared from the device after verifying them stored (the log shrank on purpose:
    #: no log_shrank notice). ``counts`` then holds the count after the clear.
    cleared_records: int = 0

    @property
    def duration_s(self) -> float:
        """Wall time of the poll."""
        return (self.finished_at - self.started_at).total_seconds()

"""Plain value types passed between the gateway's stages (no I/O here).

    poller --PollOutcome--> health / metrics / store.poll_runs
    normalize --Punch--> store.save_poll (punches + outbox in one transaction)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from drivers.base import Counts, DeviceInfo

#: Stable names of the ways a poll can end. Health rules and metrics key on these. "storage": the office
#: database failed (full, locked, unreachable): the gateway's problem, never the device's.
ERROR_KINDS = ("unreachable", "auth_rejected", "busy", "identity_mismatch", "protocol_error", "timeout",
               "bug", "abandoned", "storage")
#: The outcome a USB-stick import writes to poll_runs (gateway.usbimport): punches read without the network,
#: so it is neither a success nor a failure of the terminal (health ignores it; `fpgw devices` names it).
USB_IMPORT_OUTCOME = "usb_import"


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
    #: Quality flags (future, before_device, rtc_reset, impossible_date, unmapped_user, value flags such as
    #: bad_workcode); never a reason to drop.
    flags: tuple[str, ...] = ()
    #: Keeps apart records the device holds with the same user and the same time: 0 for every punch with a
    #: trustworthy time; for a punch whose time is flagged rtc_reset / impossible_date (a dead clock writes
    #: the same time again and again), 1, 2, ... by position among the records of one download with that
    #: user and time, plus the device's log epoch (see gateway.store.punches, "Punch identity").
    occurrence: int = 0

    @property
    def key(self) -> tuple[str, str, str, int]:
        """The dedup key: the same punch read twice (or forwarded twice) has the same key."""
        return (self.device_serial, self.device_user_id, self.device_time, self.occurrence)


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
    #: "count" (counts only, nothing new), "full" (whole log downloaded), "tail" (only the records added since the
    #: last read: not a full read, so it proves nothing about older records) or "none" (failed before counting).
    mode: Literal["count", "full", "tail", "none"] = "none"
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
    #: True when the terminal was found left disabled (keypad locked, "Working...") by an earlier session or a
    #: killed process and could not be re-enabled in this poll.
    terminal_disabled: bool = False

    @property
    def duration_s(self) -> float:
        """Wall time of the poll."""
        return (self.finished_at - self.started_at).total_seconds()


#: Attendance state codes (the binary protocol and the PUSH protocol share them).
STATE_NAMES: dict[int, str] = {
    0: "check_in", 1: "check_out", 2: "break_out", 3: "break_in", 4: "overtime_in", 5: "overtime_out",
}

#: Verify-mode codes of ZKTeco TFT firmware (the PUSH protocol's table; the binary protocol uses the same).
VERIFY_NAMES: dict[int, str] = {
    0: "any", 1: "fingerprint", 2: "user_id", 3: "password", 4: "card", 5: "fingerprint_or_password",
    6: "fingerprint_or_card", 7: "card_or_password", 8: "user_id_and_fingerprint",
    9: "fingerprint_and_password", 10: "fingerprint_and_card", 11: "password_and_card",
    12: "fingerprint_password_card", 13: "user_id_fingerprint_password", 14: "fingerprint_card_user_id",
    15: "face", 16: "face_and_fingerprint", 17: "face_and_password", 18: "face_and_card",
    19: "face_fingerprint_card", 20: "face_fingerprint_password", 200: "other",
}
for _code in range(21, 25):
    VERIFY_NAMES[_code] = "finger_vein"
for _code in range(25, 30):
    VERIFY_NAMES[_code] = "palm"


def state_name(code: int) -> str:
    """Name of an attendance state code ("unknown" for codes such as 255)."""
    return STATE_NAMES.get(code, "unknown")


def verify_name(code: int) -> str:
    """Name of a verify-mode code."""
    return VERIFY_NAMES.get(code, "unknown")


# -- device health (the tracker's state; stored by gateway.store.health, shown by gateway.web) ------------

#: Every problem name the tracker can open, in the order the status page lists them.
PROBLEMS = ("offline", "disabled", "auth_rejected", "identity_mismatch", "protocol_error", "poll_hang", "clock_reset",
            "user_drop", "clock_skew", "storage", "counts_unreliable", "silent", "replaced", "log_shrank",
            "firmware_changed", "clock_corrected")

#: One-off events: one alert ("notice"), shown on the status page for the notice window, no end alert.
NOTICES = frozenset({"replaced", "log_shrank", "firmware_changed", "clock_corrected"})

SEVERITIES = ("info", "warning", "critical")

#: Default severity per problem (storage escalates warning -> critical by itself).
SEVERITY = {
    "offline": "critical", "disabled": "critical", "auth_rejected": "critical", "identity_mismatch": "critical",
    "protocol_error": "warning", "poll_hang": "warning", "clock_reset": "critical", "user_drop": "critical",
    "clock_skew": "warning",
    "storage": "warning", "counts_unreliable": "warning", "silent": "warning", "replaced": "warning",
    "log_shrank": "warning", "firmware_changed": "info", "clock_corrected": "info",
}


def users_dropped_sharply(previous: int, now: int, ratio: float) -> bool:
    """Whether a terminal's user count fell by at least ``ratio`` of the previous one (and by at least two users):
    a factory reset or a mass delete at the keypad (the enrolment backup's notice, the ``user_drop`` problem)."""
    return previous > 1 and now < previous and (previous - now) >= max(2, ratio * previous)


def parse_instant(text: str) -> datetime:
    """An ISO-8601 instant as stored in JSON columns; naive values are UTC."""
    value = datetime.fromisoformat(text)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


@dataclass
class Problem:
    """One open problem of one device."""

    name: str
    severity: str
    since: datetime
    #: One human-readable line: what was seen.
    detail: str
    #: Machine-readable facts behind the detail (numbers, serials, versions).
    seen: dict[str, Any] = field(default_factory=dict)
    #: When the last start/reminder/escalation went out (reminders count from here).
    last_notified_at: datetime | None = None

    @property
    def notice(self) -> bool:
        """True for one-off events that expire by themselves."""
        return self.name in NOTICES

    def to_json(self) -> dict[str, Any]:
        """The JSON form stored in device_health.problems."""
        return {"since": self.since.isoformat(), "severity": self.severity, "detail": self.detail,
                "seen": self.seen,
                "last_alert_at": self.last_notified_at.isoformat() if self.last_notified_at else None}

    @classmethod
    def from_json(cls, name: str, data: dict[str, Any]) -> Problem:
        """Inverse of to_json."""
        last = data.get("last_alert_at")
        return cls(name=name, severity=str(data.get("severity", SEVERITY.get(name, "warning"))),
                   since=parse_instant(data["since"]), detail=str(data.get("detail", "")),
                   seen=dict(data.get("seen") or {}), last_notified_at=parse_instant(last) if last else None)


@dataclass
class DeviceHealth:
    """Everything the tracker knows about one device (persisted in device_health)."""

    device_id: str
    state: str = "unknown"
    state_since: datetime = field(default_factory=lambda: datetime.now(UTC))
    consecutive_failures: int = 0
    #: Start of the current run of failed polls.
    failing_since: datetime | None = None
    last_ok_at: datetime | None = None
    last_seen_at: datetime | None = None
    last_failure_at: datetime | None = None
    last_error_kind: str | None = None
    last_error: str | None = None
    #: When a poll last brought new punches (or when watching began): the silent-device clock.
    last_new_punch_at: datetime | None = None
    #: A poll that started and has not reported yet (poll_hang).
    poll_started_at: datetime | None = None
    problems: dict[str, Problem] = field(default_factory=dict)
    #: Last observed values, for the status page and metrics (not persisted here: the devices table has them).
    clock_skew_s: float | None = None
    last_poll_duration_s: float | None = None


def problems_from_json(data: dict[str, Any]) -> dict[str, Problem]:
    """Decode the device_health.problems JSON (unknown names are kept: a newer version may have written them)."""
    return {name: Problem.from_json(name, value) for name, value in data.items() if isinstance(value, dict)}

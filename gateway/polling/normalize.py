"""RawPunch (device values) -> Punch (what we store): time zones, names, employee ids, quality flags.

Sits between the driver and the store: gateway.polling.poller calls ``normalize_punches`` on what a session
read, then hands the result to ``store.save_poll``. Pure functions except ``EmployeeMap``, which reads
its CSV when the file changes. Nothing is ever dropped here: a punch with an impossible time or an
unknown user is kept and flagged, because each one may be somebody's allowance.
"""

from __future__ import annotations

import csv
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from drivers.base import RawPunch
from gateway.models import Punch, state_name, verify_name

#: Punches more than this far in the future (device clock ahead, or garbage) are flagged "future".
FUTURE_TOLERANCE = timedelta(minutes=10)
#: A terminal whose RTC battery died restarts at 2000-01-01; anything in 2000 is that, not a real punch.
RTC_RESET_BEFORE = date(2001, 1, 1)
#: Default "the device did not exist before" date when a device has no installed_on.
DEFAULT_NOT_BEFORE = date(2010, 1, 1)


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


def normalize_punches(raw: Iterable[RawPunch], ctx: DeviceContext, *, employees: EmployeeMap | None = None,
                      now: datetime | None = None) -> list[Punch]:
    """Normalize a batch of raw punches from one device. Never drops a punch."""
    now = now or datetime.now(UTC)
    zone = ZoneInfo(ctx.timezone)
    latest_ok = now + FUTURE_TOLERANCE
    mapped = employees is not None and employees.configured
    out: list[Punch] = []
    for rp in raw:
        flags: list[str] = []
        local = rp.local_time
        utc_time: datetime | None = None
        if local is None:
            flags.append("impossible_date")
        else:
            # Indonesia has no DST, so local wall time -> instant is unambiguous there; fold=0
            # picks the first occurrence elsewhere.
            utc_time = local.replace(tzinfo=zone).astimezone(UTC)
            if local.date() < RTC_RESET_BEFORE:
                flags.append("rtc_reset")
            elif local.date() < ctx.not_before:
                flags.append("before_device")
            if utc_time > latest_ok:
                flags.append("future")
        employee_id = employees.lookup(ctx.serial, rp.user_id) if employees is not None else None
        if mapped and employee_id is None:
            flags.append("unmapped_user")
        out.append(Punch(
            office_code=ctx.office_code, device_id=ctx.device_id, device_serial=ctx.serial,
            device_user_id=rp.user_id, device_time=rp.time_text, local_time=local, utc_time=utc_time,
            timezone=ctx.timezone, state=rp.state, state_name=state_name(rp.state), verify=rp.verify,
            verify_name=verify_name(rp.verify), uid=rp.uid, workcode=rp.workcode, raw_time=rp.raw_time,
            employee_id=employee_id, flags=tuple(flags),
        ))
    return out

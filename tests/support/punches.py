"""Punch builders: normalized punches as the poller stores them, and storing them like one poll did."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from gateway.models import PollOutcome, Punch
from gateway.store.punches import Store

#: WIB (Asia/Jakarta) is UTC+7 all year.
WIB_OFFSET = timedelta(hours=7)


def make_punch(user: str, local: datetime, *, office_code: str = "1801.01.02", device_id: str = "lobby",
               serial: str = "SN1", state: int = 0, state_name: str = "check_in", verify: int = 1,
               verify_name: str = "finger", **kw: Any) -> Punch:
    """A WIB punch of ``user`` at naive local time ``local`` (device_time and utc_time derived from it)."""
    return Punch(office_code=office_code, device_id=device_id, device_serial=serial, device_user_id=user,
                 device_time=local.strftime("%Y-%m-%d %H:%M:%S"), local_time=local,
                 utc_time=(local - WIB_OFFSET).replace(tzinfo=UTC), timezone="Asia/Jakarta", state=state,
                 state_name=state_name, verify=verify, verify_name=verify_name, **kw)


def store_punches(store: Store, items: Iterable[Punch], *, device_id: str = "lobby", forward: bool = True) -> None:
    """Save ``items`` through Store.save_poll, as one successful full poll of ``device_id`` would."""
    now = datetime.now(UTC)
    store.save_poll(PollOutcome(device_id=device_id, started_at=now, finished_at=now, ok=True, mode="full"),
                    list(items), forward=forward)


def punch_batch(n: int, start: int = 0, *, office_code: str = "1801.01") -> list[Punch]:
    """``n`` check-ins a minute apart from 2026-11-02 07:00 WIB, users ``start``.. with employee ids NIP<user>."""
    base = datetime(2026, 11, 2, 7, 0)
    return [make_punch(str(i), base + timedelta(minutes=i), office_code=office_code, employee_id=f"NIP{i}")
            for i in range(start, start + n)]

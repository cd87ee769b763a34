"""Hostile device values through the real poller (drivers/fake.py), on SQLite and PostgreSQL.

Issue 8, item 2 (office side): a record with a work code of 2^31 (or a NUL in its user id, ...) is stored,
flagged and forwardable; the poll never fails on it. Item 8: two real punches with the same user and the
same reset time (dead clock: 2000-01-01 00:00:00) are two punches, stored, cleared and forwarded as two,
and re-reading the same log adds nothing.

The simulator cannot carry these records (its log packs no work code and only well-formed ids), so the
fake driver holds them.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from drivers.base import RawPunch
from drivers.fake import FakeDevice, FakeDriver, make_punch
from gateway import wire
from gateway.config import Config
from gateway.polling.poller import DevicePoller
from gateway.store import schema as s
from gateway.store.db import create_db_engine, upgrade
from gateway.store.punches import Store
from tests.support.central import make_central, make_forwarder
from tests.support.clock import FakeClock
from tests.support.config import forward_config

pytestmark = pytest.mark.timeout(60)
BASE = datetime(2026, 11, 20, 7, 0)
RESET = "2000-01-01 00:00:00"
#: Past polling.full_reconcile_s: the next poll downloads the whole log again although nothing changed.
RECONCILE_S = 3 * 86400


@dataclass
class Office:
    config: Config
    engine: Any
    store: Store
    driver: FakeDriver
    poller: DevicePoller
    clock: FakeClock

    @property
    def device(self) -> FakeDevice:
        return self.driver.device

    def poll(self) -> Any:
        self.clock.advance(60)  # polls and clears happen at distinct times, as in life
        outcome = self.poller.poll_once(self.config.device("lobby"))
        assert outcome.ok, outcome.error
        return outcome

    def reread(self) -> Any:
        """A poll that downloads the whole (unchanged) log again."""
        self.clock.advance(RECONCILE_S)
        outcome = self.poll()
        assert outcome.mode == "full"
        return outcome

    def rows(self) -> list[Any]:
        p = s.punches.c
        with self.engine.connect() as conn:
            return list(conn.execute(select(s.punches).order_by(p.id)).mappings())


@pytest.fixture
def office(db_url: str, tmp_path: Path) -> Iterator[Office]:
    config = forward_config(tmp_path, db_url)
    engine = create_db_engine(db_url, pool_size=2)
    upgrade(engine)
    store = Store(engine, config.site.office_code)
    store.sync_devices(config.devices)
    driver = FakeDriver(FakeDevice(serial="SN1"))
    clock = FakeClock()
    poller = DevicePoller(config, store, driver_factory=lambda dev: driver, now=clock)
    try:
        yield Office(config, engine, store, driver, poller, clock)
    finally:
        engine.dispose()


def reset_punch(user: str, state: int = 0) -> RawPunch:
    return make_punch(user, RESET, state=state)


# -- item 2: every device value fits its column or is kept with a flag -------------------------------------

def test_values_that_do_not_fit_the_schema_are_stored_flagged_and_forwardable(office: Office) -> None:
    long_id = "9" * 80
    office.device.punches = [
        make_punch("1001", BASE),
        make_punch("1002", BASE + timedelta(minutes=1), workcode=2 ** 31),           # PostgreSQL INTEGER overflow
        make_punch("1003", BASE + timedelta(minutes=2), uid=2 ** 40, state=2 ** 33),
        make_punch("10\x0004", BASE + timedelta(minutes=3)),                          # NUL: PostgreSQL refuses it
        make_punch(long_id, BASE + timedelta(minutes=4)),                            # longer than String(64)
        RawPunch("1005", "2026-11-20 07:05:00", BASE + timedelta(minutes=5), 0, 1, 0, 0, 2 ** 70),
        make_punch("1006", BASE + timedelta(minutes=6), workcode=-5),                # fits: left alone
    ]
    first = office.poll()
    assert first.new_punches == 7 and first.flag_counts.get("value_out_of_range") == 5
    rows = {r["device_time"][-5:-3]: r for r in office.rows()}
    assert set(rows) == {"00", "01", "02", "03", "04", "05", "06"}
    assert rows["00"]["flags"] == "" and rows["06"]["workcode"] == -5 and rows["06"]["flags"] == ""
    # 2^31 is kept bit for bit as its signed 32-bit twin: raw = stored & 0xFFFFFFFF.
    assert rows["01"]["workcode"] == -(2 ** 31) and rows["01"]["workcode"] & 0xFFFFFFFF == 2 ** 31
    assert rows["01"]["flags"].split(",") == ["bad_workcode", "value_out_of_range"]
    assert (rows["02"]["uid"], rows["02"]["state"]) == (2 ** 31 - 1, 2 ** 31 - 1)
    assert rows["02"]["flags"].split(",") == ["bad_state", "bad_uid", "value_out_of_range"]
    assert rows["03"]["device_user_id"].startswith("10?04~") and "bad_user_id" in rows["03"]["flags"]
    assert len(rows["04"]["device_user_id"]) == 64 and rows["04"]["device_user_id"].startswith("9" * 55 + "~")
    assert rows["05"]["raw_time"] == 2 ** 63 - 1 and "bad_raw_time" in rows["05"]["flags"]
    # The central takes every one of them as it is stored (no per-punch rejection, no 500).
    for r in rows.values():
        punch, reason = wire.decode_punch(wire.encode_punch(dict(r)), 0, office.config.site.office_code)
        assert reason is None and punch is not None and punch.workcode == r["workcode"]
    # Reading the same log again maps the same records to the same rows.
    assert office.reread().new_punches == 0 and len(office.rows()) == 7


# -- item 8: clock-reset collisions -----------------------------------------------------------------------

def reset_rows(office: Office, user: str = "1001") -> list[int]:
    return [r["occurrence"] for r in office.rows() if r["device_user_id"] == user and r["device_time"] == RESET]


def test_two_punches_at_the_same_reset_time_are_two_and_rereads_add_nothing(office: Office) -> None:
    office.device.punches = [make_punch("1001", BASE), reset_punch("1001"), reset_punch("1001", state=1),
                             reset_punch("1002")]
    assert office.poll().new_punches == 4
    assert reset_rows(office) == [1, 2] and reset_rows(office, "1002") == [1]
    assert [r["occurrence"] for r in office.rows() if r["device_time"] != RESET] == [0]
    assert office.reread().new_punches == 0
    # A new punch with the same reset time appends: one more, and the log read again still maps the same.
    office.driver.add_punches([reset_punch("1001")])
    assert office.poll().new_punches == 1 and reset_rows(office) == [1, 2, 3]
    assert office.reread().new_punches == 0 and len(office.rows()) == 5


def test_a_cleared_and_refilled_log_stores_the_new_reset_time_punches(office: Office) -> None:
    office.device.punches = [reset_punch("1001"), reset_punch("1001")]
    assert office.poll().new_punches == 2
    result = office.poller.clear_device(office.config.device("lobby"), require_forwarded=False)
    assert result.status == "cleared" and result.verified == 2 and office.device.punches == []
    # The clock is still dead: the refilled log holds the very same user and time again. Both are new.
    office.driver.add_punches([reset_punch("1001"), reset_punch("1001")])
    assert office.poll().new_punches == 2 and len(reset_rows(office)) == 4
    assert office.reread().new_punches == 0
    # And its own clear verifies them by their identity (it would refuse if any were missing).
    assert office.poller.clear_device(office.config.device("lobby"), require_forwarded=False).status == "cleared"
    # Cleared at the keypad (the count drops) and punched again: new as well.
    office.driver.add_punches([reset_punch("1001"), reset_punch("1001"), reset_punch("1001")])
    assert office.poll().new_punches == 3
    with office.driver.lock:
        office.device.punches = [reset_punch("1001")]
    assert office.poll().new_punches == 1 and len(reset_rows(office)) == 8
    assert office.reread().new_punches == 0 and len(set(reset_rows(office))) == 8


def test_reset_time_punches_are_forwarded_as_distinct_punches(office: Office, tmp_path: Path) -> None:
    office.device.punches = [reset_punch("1001"), reset_punch("1001"), make_punch("1001", BASE)]
    assert office.poll().new_punches == 3
    (tmp_path / "central").mkdir()
    central = make_central(f"sqlite:///{tmp_path / 'central' / 'central.db'}", tmp_path / "central")

    def to_central(request: httpx.Request) -> httpx.Response:
        headers = {k: v for k, v in request.headers.items() if k.lower() in ("content-type", "content-encoding")}
        resp = central.client.post(request.url.path, content=request.content,
                                   headers={**headers, "Authorization": f"Bearer {central.gw_a}"})
        return httpx.Response(resp.status_code, content=resp.content, headers={"content-type": "application/json"})

    fwd = make_forwarder(office.config, office.engine, transport=httpx.MockTransport(to_central),
                         now=lambda: office.clock() + timedelta(seconds=5))
    try:
        report = fwd.run_once()
        assert (report.accepted, report.duplicates, report.rejected) == (3, 0, 0)
        with central.engine.connect() as conn:
            stored = conn.execute(select(s.punches.c.device_time, s.punches.c.occurrence)
                                  .order_by(s.punches.c.occurrence)).all()
            assert [tuple(r) for r in stored] == [("2026-11-20 07:00:00", 0), (RESET, 1), (RESET, 2)]
        # Re-read, nothing new to forward; the central still holds three.
        assert office.reread().new_punches == 0 and fwd.run_once().sent == 0
        with central.engine.connect() as conn:
            assert conn.execute(select(func.count()).select_from(s.punches)).scalar_one() == 3
    finally:
        fwd.stop(1)
        central.engine.dispose()

"""Tail reads (only the records added since the last read) and the clock-check schedule, over drivers/fake.py.

A tail read must store exactly what a full read stores, never count as a full read (reconcile, clear policy),
fall back to a full read whenever the saved position cannot be trusted, and survive a corrupt saved position.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select, update
from structlog.testing import capture_logs

from drivers.base import LogPosition, ReadsNewPunches
from drivers.fake import FakeDevice, FakeDriver, make_punch
from gateway.config import Config, parse_config
from gateway.health.tracker import HealthTracker
from gateway.polling.normalize import DeviceContext, normalize_punches
from gateway.polling.poller import DevicePoller
from gateway.polling.position import MAX_POSITION_CHARS, position_text, read_position
from gateway.store import schema as s
from gateway.store.db import create_db_engine, upgrade
from gateway.store.punches import Store
from tests.support.clock import FakeClock

BASE = datetime(2026, 11, 20, 7, 0)
OFFICE = "1801.01.02"


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    eng = create_db_engine(f"sqlite:///{tmp_path / 'fpgw.db'}")
    upgrade(eng)
    yield eng
    eng.dispose()


def build(engine: Engine, tmp_path: Path, punches: list[Any] | None = None, *, polling: dict[str, Any] | None = None,
          forward: dict[str, Any] | None = None, tail_reads: bool = True,
          **device: Any) -> tuple[DevicePoller, FakeDriver, Config, FakeClock]:
    doc: dict[str, Any] = {"site": {"office_code": OFFICE},
                           "polling": {"full_reconcile_s": 3600, **(polling or {})},
                           "devices": [{"id": "lobby", "address": "10.0.0.1"}]}
    if forward:
        doc["forward"] = forward
    config = parse_config(doc, base_dir=tmp_path)
    store = Store(engine, OFFICE)
    store.sync_devices(config.devices)
    log = punches if punches is not None else [make_punch("1001", BASE + timedelta(minutes=i)) for i in range(20)]
    driver = FakeDriver(FakeDevice(serial="SN1", punches=list(log), **device))
    clock = FakeClock()
    poller = DevicePoller(config, store, driver_factory=lambda dev: driver if tail_reads else _NoTailDriver(driver),
                          now=clock)
    return poller, driver, config, clock


class _NoTailSession:
    """A FakeSession without the ReadsNewPunches ability (a driver that cannot read a tail)."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        if name == "read_punches_after":
            raise AttributeError(name)
        return getattr(self._inner, name)


class _NoTailDriver:
    def __init__(self, inner: FakeDriver) -> None:
        self.inner = inner

    @contextmanager
    def connect(self, deadline: float | None = None) -> Iterator[Any]:
        with self.inner.connect(deadline) as session:
            yield _NoTailSession(session)


def stored(engine: Engine) -> Counter[tuple[str, str, str, int]]:
    p = s.punches.c
    with engine.connect() as conn:
        return Counter(tuple(r) for r in conn.execute(  # type: ignore[misc]
            select(p.device_serial, p.device_user_id, p.device_time, p.occurrence)))


def full_read_keys(driver: FakeDriver) -> Counter[tuple[str, str, str, int]]:
    """The keys a full read of the device's whole log gives (what a tail read must agree with)."""
    ctx = DeviceContext(office_code=OFFICE, device_id="lobby", serial=driver.device.serial, timezone="Asia/Jakarta")
    return Counter(p.key for p in normalize_punches(driver.device.punches, ctx))


def last_full_read_at(engine: Engine) -> datetime | None:
    with engine.connect() as conn:
        value: datetime | None = conn.execute(select(s.devices.c.last_full_read_at)).scalar_one()
        return value


@pytest.mark.timeout(30)
def test_a_grown_log_is_read_from_the_saved_position_and_each_punch_stored_once(engine: Engine,
                                                                                 tmp_path: Path) -> None:
    poller, driver, config, clock = build(engine, tmp_path, [make_punch("1001", BASE + timedelta(minutes=i))
                                                             for i in range(200)])
    dev = config.device("lobby")
    first = poller.poll_once(dev)
    assert (first.mode, first.new_punches) == ("full", 200)
    full_at = last_full_read_at(engine)
    for round_ in range(3):
        driver.add_punches([make_punch("1002", BASE + timedelta(hours=2 + round_, minutes=i)) for i in range(3)])
        driver.calls.clear()
        clock.advance(60)
        o = poller.poll_once(dev)
        assert (o.ok, o.mode, o.records_read, o.new_punches) == (True, "tail", 3, 3), (o.error_kind, o.error)
        assert "read_punches" not in driver.calls and driver.calls.count("read_punches_after") == 1
        # The new records plus the one that proves the position, not the whole log.
        assert o.bytes_read < first.bytes_read / 10
    assert stored(engine) == full_read_keys(driver) and sum(stored(engine).values()) == 209
    # A tail read is not a full read: the periodic reconcile still counts from the first poll.
    assert last_full_read_at(engine) == full_at
    clock.advance(3600)
    reconcile = poller.poll_once(dev)
    assert (reconcile.mode, reconcile.records_read, reconcile.new_punches) == ("full", 209, 0)
    assert last_full_read_at(engine) != full_at
    with engine.connect() as conn:
        outcomes = [tuple(r) for r in conn.execute(select(s.poll_runs.c.outcome, s.poll_runs.c.mode)
                                                   .order_by(s.poll_runs.c.id))]
    assert outcomes == [("ok", "full")] + [("ok", "tail")] * 3 + [("ok", "full")]


@pytest.mark.timeout(30)
def test_a_log_cleared_and_refilled_past_its_old_count_is_read_whole_and_the_refusal_logged_once(
        engine: Engine, tmp_path: Path) -> None:
    poller, driver, config, _ = build(engine, tmp_path)
    dev = config.device("lobby")
    poller.poll_once(dev)
    with capture_logs() as logs:
        for day in (1, 2):
            with driver.lock:  # cleared at the keypad, then more punches than before before the next poll
                driver.device.punches = [make_punch("1003", BASE + timedelta(days=day, minutes=i))
                                         for i in range(20 + 5 * day)]
            o = poller.poll_once(dev)
            assert (o.mode, o.new_punches) == ("full", 20 + 5 * day)
            assert driver.calls[-2:] == ["read_punches_after", "read_punches"]  # one session: tail refused, full
            with driver.lock:  # make the next round grow from a position the driver will refuse again
                driver.device.punches = driver.device.punches[:3]
            poller.poll_once(dev)  # shrank: a full read, which saves a new position
    refusals = [e for e in logs if "changed under the last read position" in e["event"]]
    assert len(refusals) == 1 and refusals[0]["log_level"] == "info"
    assert stored(engine) == Counter(stored(engine).keys())  # nothing twice


@pytest.mark.timeout(30)
def test_a_reset_clock_punch_arriving_in_a_tail_is_stored_once_with_the_key_of_a_full_read(
        engine: Engine, tmp_path: Path) -> None:
    dead = "2000-01-01 00:00:00"
    log = [make_punch("1001", BASE + timedelta(minutes=i)) for i in range(10)]
    log[4] = make_punch("1001", dead)  # the clock died once already: occurrence 1 of (1001, dead)
    poller, driver, config, _ = build(engine, tmp_path, log)
    dev = config.device("lobby")
    assert poller.poll_once(dev).new_punches == 10
    # The same user punches again while the clock is dead: a second record with the same time. Numbered within
    # the tail alone it would be occurrence 1 again and be taken for the stored one (lost); the whole log gives 2.
    driver.add_punches([make_punch("1001", dead), make_punch("1001", BASE + timedelta(hours=5))])
    o = poller.poll_once(dev)
    assert (o.mode, o.new_punches) == ("full", 2)
    assert ("SN1", "1001", dead, 2) in stored(engine)
    assert stored(engine) == full_read_keys(driver)
    # Its last record has a trustworthy time again, so the next growth is a tail read; nothing is stored twice.
    driver.add_punches([make_punch("1001", BASE + timedelta(hours=6))])
    assert poller.poll_once(dev).mode == "tail"
    assert stored(engine) == full_read_keys(driver) and max(stored(engine).values()) == 1


@pytest.mark.timeout(30)
def test_a_position_whose_last_record_has_an_untrusted_time_is_not_read_on_from(engine: Engine,
                                                                              tmp_path: Path) -> None:
    poller, driver, config, _ = build(engine, tmp_path)
    dev = config.device("lobby")
    poller.poll_once(dev)
    driver.add_punches([make_punch("1001", "2000-01-01 00:00:00")])
    assert poller.poll_once(dev).mode == "full"  # untrusted time in the new records
    driver.add_punches([make_punch("1001", BASE + timedelta(hours=5))])
    assert poller.poll_once(dev).mode == "full"  # the saved last record cannot prove where the log stood
    assert stored(engine) == full_read_keys(driver)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("saved", ["{not json", "x" * (MAX_POSITION_CHARS + 1), '{"v": 1, "records": true}',
                                   '{"v": 2, "records": 20, "last": {}}', "[]", '"text"'])
def test_a_corrupt_saved_position_means_a_full_read_and_nothing_lost(engine: Engine, tmp_path: Path,
                                                                    saved: str) -> None:
    poller, driver, config, _ = build(engine, tmp_path)
    dev = config.device("lobby")
    poller.poll_once(dev)
    with engine.begin() as conn:
        assert conn.execute(update(s.kv).where(s.kv.c.key == "log_position:SN1").values(value=saved)).rowcount == 1
    driver.add_punches([make_punch("1004", BASE + timedelta(hours=4))])
    o = poller.poll_once(dev)
    assert (o.ok, o.mode, o.new_punches) == (True, "full", 1)
    driver.add_punches([make_punch("1004", BASE + timedelta(hours=5))])
    assert poller.poll_once(dev).mode == "tail"  # the full read saved a good position again
    assert stored(engine) == full_read_keys(driver)


@pytest.mark.timeout(30)
def test_a_tail_read_never_feeds_the_clear_policy(engine: Engine, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """With forwarding required before a clear and punches still waiting, the policy's full read is not due: the
    log is tail-read, and a tail read (which saw only the new records) never leads to a clear."""
    monkeypatch.setenv("T_GW_TOKEN", "gw-token-for-tests")
    poller, driver, config, _ = build(engine, tmp_path, records_cap=30,
                                      polling={"clear_when_full_ratio": 0.5, "clear_requires_forwarded": True},
                                      forward={"url": "https://bkd.example.invalid", "token_env": "T_GW_TOKEN"})
    dev = config.device("lobby")
    first = poller.poll_once(dev)  # 20 of 30: due, but nothing forwarded yet -> no clear
    assert first.mode == "full" and first.cleared_records == 0
    driver.add_punches([make_punch("1005", BASE + timedelta(hours=3))])
    o = poller.poll_once(dev)
    assert (o.mode, o.new_punches, o.cleared_records) == ("tail", 1, 0)
    assert "clear_punches" not in driver.calls and len(driver.device.punches) == 21


@pytest.mark.timeout(30)
def test_a_log_grown_past_the_clear_ratio_is_read_whole_so_the_clear_can_verify_every_record(
        engine: Engine, tmp_path: Path) -> None:
    poller, driver, config, _ = build(engine, tmp_path, records_cap=30, polling={"clear_when_full_ratio": 0.9})
    dev = config.device("lobby")
    assert poller.poll_once(dev).cleared_records == 0  # 20 of 30
    driver.add_punches([make_punch("1005", BASE + timedelta(hours=3, minutes=i)) for i in range(3)])
    assert poller.poll_once(dev).mode == "tail"  # 23 of 30: grew, below the ratio
    driver.add_punches([make_punch("1005", BASE + timedelta(hours=4, minutes=i)) for i in range(5)])
    o = poller.poll_once(dev)  # 28 of 30: the clear is due, and only a full read can prove all 28 stored
    assert (o.mode, o.new_punches, o.cleared_records) == ("full", 5, 28)
    assert driver.device.punches == [] and sum(stored(engine).values()) == 28


@pytest.mark.timeout(30)
def test_without_the_ability_a_grown_log_is_read_whole(engine: Engine, tmp_path: Path) -> None:
    poller, driver, config, _ = build(engine, tmp_path, tail_reads=False)
    dev = config.device("lobby")
    with poller.driver_for(dev).connect() as session:
        assert not isinstance(session, ReadsNewPunches)
    poller.poll_once(dev)
    driver.add_punches([make_punch("1006", BASE + timedelta(hours=3))])
    assert (poller.poll_once(dev).mode, stored(engine) == full_read_keys(driver)) == ("full", True)


@pytest.mark.timeout(30)
def test_clock_is_read_on_the_first_poll_then_every_clock_check_s_with_full_reads_and_new_terminals(
        engine: Engine, tmp_path: Path) -> None:
    poller, driver, config, clock = build(engine, tmp_path, polling={"clock_check_s": 600, "full_reconcile_s": 7200})
    dev = config.device("lobby")
    tracker = HealthTracker(config)

    def poll() -> tuple[str, bool]:
        o = poller.poll_once(dev)
        assert o.ok, (o.error_kind, o.error)
        tracker.record(o)
        return o.mode, o.clock_skew_s is not None

    assert poll() == ("full", True)  # first poll
    first_skew = tracker.health("lobby").clock_skew_s
    assert first_skew is not None
    clock.advance(300)
    assert poll() == ("count", False)
    # Not measured this time: the health model keeps the last measured skew.
    assert tracker.health("lobby").clock_skew_s == first_skew
    driver.add_punches([make_punch("1001", BASE + timedelta(hours=3))])
    clock.advance(200)
    assert poll() == ("tail", False)
    clock.advance(200)  # 700 s since the last clock read
    assert poll() == ("count", True)
    clock.advance(7200)  # reconcile due: a full read reads the clock too (clock check also due here)
    assert poll() == ("full", True)
    clock.advance(60)
    assert poll() == ("count", False)
    with driver.lock:
        driver.device.serial = "SN2"  # another terminal at this address: its clock is checked at once
    assert poll() == ("full", True)


@pytest.mark.timeout(30)
def test_a_full_download_reads_the_clock_even_when_no_check_is_due(engine: Engine, tmp_path: Path) -> None:
    poller, driver, config, clock = build(engine, tmp_path, polling={"clock_check_s": 86400, "full_reconcile_s": 600})
    dev = config.device("lobby")
    assert poller.poll_once(dev).clock_skew_s is not None
    clock.advance(601)
    o = poller.poll_once(dev)
    assert o.mode == "full" and o.clock_skew_s is not None
    assert driver.calls.count("info") == 3  # two polls, the second reading the clock with its download


@pytest.mark.timeout(10)
def test_position_text_round_trips_every_field_and_is_bounded() -> None:
    odd = make_punch("7\udcff\"x", "2026-02-31 08:00:00", state=255, verify=15, uid=2 ** 32 - 1, workcode=-5)
    for last in (make_punch("1001", BASE), odd):
        text = position_text(LogPosition(123, last))
        assert text.isascii() and len(text) <= MAX_POSITION_CHARS
        assert read_position(text) == LogPosition(123, last)
    assert position_text(None) == "" and read_position("") is None and read_position(None) is None
    assert position_text(LogPosition(1, make_punch("9" * 5000, BASE))) == ""  # too long: no position at all
    good = position_text(LogPosition(5, make_punch("1001", BASE)))
    for bad in (good.replace('"records":5', '"records":0'), good.replace('"state":0', '"state":"0"'),
                good.replace('"local_time":"2026-11-20T07:00:00"', '"local_time":"2026-11-20T07:00:00+07:00"'),
                good.replace('"local_time":"2026-11-20T07:00:00"', '"local_time":"yesterday"'),
                good.replace('"user_id":"1001"', '"user_id":1001'), good[:-1], "[" * 100_000):
        assert read_position(bad) is None, bad

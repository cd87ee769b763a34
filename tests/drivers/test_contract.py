"""The driver contract (drivers/base.py), checked identically over FakeDriver and ZkDriver (TCP, UDP).

Every test gets a ``harness``: a device with a known log plus a driver for it. A new driver joins
the suite by adding a Harness in conftest.py.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from drivers.base import (
    ClearsLog,
    Counts,
    DeviceInfo,
    DriverError,
    IdentityMismatch,
    RawPunch,
    ReadsUsers,
    SetsClock,
)
from tests.support.drivers import Harness, punch_key

pytestmark = pytest.mark.timeout(30)


def test_session_reports_identity_counts_and_the_whole_log(harness: Harness) -> None:
    with harness.driver.connect() as s:
        info = s.info()
        counts = s.counts()
        punches = s.read_punches()
    assert isinstance(info, DeviceInfo) and info.serial == harness.serial
    assert isinstance(counts, Counts)
    assert all(isinstance(p, RawPunch) for p in punches)
    assert [punch_key(p) for p in punches] == harness.truth()
    assert counts.records == len(punches) > 0
    assert counts.records_cap >= counts.records


def test_time_text_and_local_time_agree(harness: Harness) -> None:
    with harness.driver.connect() as s:
        punches = s.read_punches()
    for p in punches:
        if p.local_time is not None:
            assert p.local_time.strftime("%Y-%m-%d %H:%M:%S") == p.time_text


def test_new_punches_append_to_the_log(harness: Harness) -> None:
    with harness.driver.connect() as s:
        before = s.read_punches()
    harness.add_punches(3)
    with harness.driver.connect() as s:
        assert s.counts().records == len(before) + 3
        after = s.read_punches()
    assert after[: len(before)] == before
    assert [punch_key(p) for p in after] == harness.truth()


def test_bytes_read_grows_with_downloads(harness: Harness) -> None:
    with harness.driver.connect() as s:
        start = s.bytes_read
        s.counts()
        after_counts = s.bytes_read
        s.read_punches()
        after_log = s.bytes_read
    assert 0 <= start <= after_counts < after_log


def test_optional_abilities_are_declared(harness: Harness) -> None:
    with harness.driver.connect() as s:
        assert isinstance(s, ReadsUsers)
        assert isinstance(s, SetsClock)
        assert isinstance(s, ClearsLog)


def test_read_users(harness: Harness) -> None:
    assert isinstance(harness, Harness)
    with harness.driver.connect() as s:
        users = s.read_users()  # type: ignore[attr-defined]
        counts = s.counts()
    assert len(users) == counts.users
    assert len({u.uid for u in users}) == len(users)


def test_set_time_is_read_back(harness: Harness) -> None:
    target = datetime(2031, 3, 4, 5, 6, 7)
    with harness.driver.connect() as s:
        s.set_time(target)  # type: ignore[attr-defined]
        got = s.info().device_time
    assert got is not None and abs(got - target) <= timedelta(seconds=2)


def test_clear_punches_empties_the_log(harness: Harness) -> None:
    with harness.driver.connect() as s:
        n = len(s.read_punches())
        s.clear_punches(expected_records=n)  # type: ignore[attr-defined]
        assert s.counts().records == 0
        assert s.read_punches() == []


def test_clear_refuses_when_records_arrived_since_download(harness: Harness) -> None:
    with harness.driver.connect() as s:
        n = len(s.read_punches())
    harness.add_punches(1)
    with harness.driver.connect() as s, pytest.raises(DriverError, match="refusing to clear"):
        s.clear_punches(expected_records=n)  # type: ignore[attr-defined]
    assert len(harness.truth()) == n + 1
    assert harness.enabled()


def test_error_inside_session_propagates_and_device_ends_enabled(harness: Harness) -> None:
    with pytest.raises(RuntimeError, match="caller bug"), harness.driver.connect() as s:
        s.read_punches()
        raise RuntimeError("caller bug")
    assert harness.enabled()
    # and the next session works normally
    with harness.driver.connect() as s:
        assert s.counts().records == len(harness.truth())


def test_device_enabled_after_every_session(harness: Harness) -> None:
    for _ in range(2):
        with harness.driver.connect() as s:
            s.read_punches()
        assert harness.enabled()


def test_identity_mismatch_before_anything_else(harness: Harness) -> None:
    drv = harness.make_driver(expected_serial="NOT-" + harness.serial)
    with pytest.raises(IdentityMismatch) as ei, drv.connect():
        pytest.fail("session must not open on the wrong device")
    assert ei.value.expected == "NOT-" + harness.serial
    assert ei.value.found == harness.serial
    assert not ei.value.transient
    good = harness.make_driver(expected_serial=harness.serial)
    with good.connect() as s:
        assert s.info().serial == harness.serial


def test_session_is_dead_after_its_block(harness: Harness) -> None:
    with harness.driver.connect() as s:
        pass
    with pytest.raises((RuntimeError, DriverError)):
        s.counts()

"""normalize_punches over a download held as columns (drivers.base.RawPunchColumns) equals the generic path.

The ZK driver returns its downloads as columns and normalize builds the punches straight from them
(``_normalize_columns``). For any records (impossible dates, year 2000, before the device, future, zone
transition days, work codes past 2^31, user id texts that are not printable, users the employee map does not
know, the same record many times) and any slice of them (a tail read), the punches must be exactly those of
the generic path over the same records as a plain list of RawPunch.
"""

from __future__ import annotations

import struct
import tempfile
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.base import RawPunchColumns
from drivers.zk import records
from gateway.polling import normalize
from gateway.polling.normalize import DeviceContext, EmployeeMap, normalize_punches

NOW = datetime(2026, 11, 23, 3, 0, tzinfo=UTC)
#: Jakarta's wall clock of NOW, encoded: times around it are "future" or not.
NOW_ENCODED = records.encode_time(datetime(2026, 11, 23, 10, 0))
#: 2026-03-29 02:00 in Berlin does not exist (a zone transition day: each punch converted on its own).
BERLIN_SPRING = records.encode_time(datetime(2026, 3, 29, 0, 0))

_TIMES = st.one_of(
    st.integers(0, 0xFFFFFFFF),  # anything a u32 holds, years up to 2133
    st.integers(0, 400 * 86400),  # the year 2000: a dead RTC (rtc_reset)
    st.integers(NOW_ENCODED - 86400, NOW_ENCODED + 86400),  # today, some of it in the future
    st.integers(BERLIN_SPRING, BERLIN_SPRING + 86399),
    st.integers(records.encode_time(datetime(2009, 12, 31)), records.encode_time(datetime(2010, 1, 2))),
    st.builds(lambda y, m, d, s: ((y * 12 + m) * 31 + d) * 86400 + s,  # month ends: Feb 29-31, Apr 31
              st.integers(0, 99), st.integers(0, 11), st.integers(27, 30), st.integers(0, 86399)),
)
_USER_TEXTS = st.one_of(st.sampled_from([b"1001", b"1002", b"77", b"", b"\x01\x02", b"\xff\xfe", b"A\x00junk"]),
                        st.binary(max_size=24))
_RECORD = st.tuples(st.integers(0, 0xFFFF), st.sampled_from([1, 2, 3, 2, 1]), _USER_TEXTS, st.integers(0, 255),
                    _TIMES, st.integers(0, 255), st.one_of(st.integers(0, 0xFFFFFFFF), st.just(0)))


def _body(size: int, recs: list[tuple[int, int, bytes, int, int, int, int]]) -> bytes:
    if size == 8:
        return b"".join(struct.pack("<HBIB", uid, verify, t, state) for uid, _n, _x, verify, t, state, _w in recs)
    if size == 16:
        return b"".join(struct.pack("<IIBB2xI", number, t, state, verify, work)
                        for _u, number, _x, verify, t, state, work in recs)
    return b"".join(struct.pack("<H24sBIB8x", uid, text, verify, t, state) for uid, _n, text, verify, t, state, _w
                    in recs)


def _user_of(uid: int) -> str:
    return {1: "1001", 2: "1002", 3: "bad\tid"}.get(uid % 5, str(uid))


@pytest.fixture(scope="module")
def employees() -> Iterator[EmployeeMap]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "employees.csv"
        path.write_text("device_user_id,employee_id,serial\n1001,E1,\n2,E2,\n1002,E9,OTHER\n", encoding="utf-8")
        yield EmployeeMap(path)


def _both(cols: RawPunchColumns, ctx: DeviceContext, employees: EmployeeMap | None) -> None:
    assert normalize._columns_fit(cols)  # else this would compare the generic path with itself
    fast = normalize_punches(cols, ctx, employees=employees, now=NOW)
    generic = normalize_punches(list(cols), ctx, employees=employees, now=NOW)
    assert fast == generic
    assert [p.flags for p in fast] == [p.flags for p in generic]  # (order of the flags too)


@pytest.mark.timeout(120)
@settings(max_examples=300, deadline=None)
@given(size=st.sampled_from([8, 16, 40]), recs=st.lists(_RECORD, max_size=40),
       repeats=st.lists(st.integers(0, 39), max_size=10), zone=st.sampled_from(["Asia/Jakarta", "Europe/Berlin"]),
       mapped=st.booleans(), cut=st.integers(0, 50),
       not_before=st.sampled_from([date(2010, 1, 1), date(2030, 1, 1)]))
def test_columns_normalize_exactly_like_the_records_one_by_one(
        employees: EmployeeMap, size: int, recs: list[tuple[int, int, bytes, int, int, int, int]],
        repeats: list[int], zone: str, mapped: bool, cut: int, not_before: date) -> None:
    recs = recs + [recs[i] for i in repeats if i < len(recs)]  # the same record again: occurrence numbers
    recs.sort(key=lambda r: r[4] if r[5] % 3 else 0)  # mostly in time order, like a log, but not always
    cols = records.parse_records(_body(size, recs), size, "UTF-8", _user_of)
    ctx = DeviceContext(office_code="1801", device_id="lobby", serial="SN1", timezone=zone, not_before=not_before)
    _both(cols, ctx, employees if mapped else None)
    _both(cols[cut:], ctx, employees if mapped else None)  # a tail read hands normalize a slice


@pytest.mark.timeout(10)
def test_every_flag_appears_through_the_columnar_path(employees: EmployeeMap) -> None:
    # One record per flag, so the property above cannot pass by never meeting one.
    feb31 = ((26 * 12 + 1) * 31 + 30) * 86400
    recs = [(1, 1, b"", 1, NOW_ENCODED + 3600, 0, 0),  # future
            (2, 1, b"", 1, 5, 0, 0),  # rtc_reset
            (2, 1, b"", 1, 5, 0, 0),  # the same again: occurrence 2
            (4, 1, b"", 1, feb31, 0, 0),  # impossible_date
            (3, 1, b"", 1, records.encode_time(datetime(2009, 6, 1)), 0, 0)]  # before_device, bad_user_id
    cols = records.parse_records(_body(8, recs), 8, "UTF-8", _user_of)
    ctx = DeviceContext(office_code="1801", device_id="lobby", serial="SN1", timezone="Asia/Jakarta")
    punches = normalize_punches(cols, ctx, employees=employees, now=NOW)
    assert normalize._columns_fit(cols)
    assert [p.flags for p in punches] == [
        ("future",),
        ("rtc_reset", "unmapped_user"),
        ("rtc_reset", "unmapped_user"),
        ("impossible_date", "unmapped_user"),
        ("bad_user_id", "value_out_of_range", "before_device", "unmapped_user")]
    assert [p.occurrence for p in punches] == [0, 1, 2, 1, 0]
    assert punches[0].employee_id == "E1" and punches[0].utc_time == NOW + timedelta(hours=1)
    assert punches == normalize_punches(list(cols), ctx, employees=employees, now=NOW)
    # Work codes travel in 16-byte records only; ZK's are u32, the column a signed 32-bit INTEGER.
    wide = records.parse_records(_body(16, [(0, 1002, b"", 1, NOW_ENCODED, 0, 2 ** 31)]), 16)
    (p,) = normalize_punches(wide, ctx, employees=employees, now=NOW)
    assert p.flags == ("bad_workcode", "value_out_of_range", "unmapped_user")  # (1002 is mapped on OTHER only)
    assert p.workcode == 2 ** 31 - 2 ** 32
    assert [p] == normalize_punches(list(wide), ctx, employees=employees, now=NOW)


@pytest.mark.timeout(10)
def test_columns_of_another_shape_take_the_generic_path() -> None:
    # Lists (the big-endian decode) carry no bound on their values: the generic path checks each one.
    cols = RawPunchColumns(user_keys=[1], user_ids={1: "1001"}, times=[NOW_ENCODED], states=[2 ** 40],
                           verifies=[1], uids=[0], workcodes=[0], day_of=records.zk_day)
    assert not normalize._columns_fit(cols)
    ctx = DeviceContext(office_code="1801", device_id="lobby", serial="SN1", timezone="Asia/Jakarta")
    (p,) = normalize_punches(cols, ctx, now=NOW)
    assert "bad_state" in p.flags and p.state == 2 ** 31 - 1

"""normalize_punches: zones (WIB/WITA/WIT), names, employee mapping, quality flags; nothing dropped."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

import pytest

from drivers.base import RawPunch
from gateway.polling.normalize import DeviceContext, EmployeeMap, normalize_punches, state_name, verify_name

NOW = datetime(2026, 11, 23, 3, 0, tzinfo=UTC)  # 10:00 WIB


def raw(user: str, text: str, state: int = 0, verify: int = 1) -> RawPunch:
    try:
        local = datetime.strptime(text, "%Y-%m-%d %H:%M:%S")
    except ValueError:
        local = None
    return RawPunch(user, text, local, state, verify, uid=7, workcode=0, raw_time=123)


def ctx(tz: str = "Asia/Jakarta", not_before: date = date(2015, 1, 1)) -> DeviceContext:
    return DeviceContext(office_code="1801.01.02", device_id="lobby", serial="SN1", timezone=tz,
                         not_before=not_before)


ZONES = [
    # (zone, device wall clock, expected UTC)
    ("Asia/Jakarta", "2026-11-20 07:30:00", datetime(2026, 11, 20, 0, 30, tzinfo=UTC)),   # WIB +7
    ("Asia/Makassar", "2026-11-20 07:30:00", datetime(2026, 11, 19, 23, 30, tzinfo=UTC)),  # WITA +8
    ("Asia/Jayapura", "2026-11-20 07:30:00", datetime(2026, 11, 19, 22, 30, tzinfo=UTC)),  # WIT +9
    ("Asia/Jakarta", "2026-01-01 00:15:00", datetime(2025, 12, 31, 17, 15, tzinfo=UTC)),   # crosses the year
]


@pytest.mark.timeout(10)
@pytest.mark.parametrize(("zone", "wall", "utc"), ZONES)
def test_device_wall_clock_becomes_the_right_instant(zone: str, wall: str, utc: datetime) -> None:
    (p,) = normalize_punches([raw("1001", wall)], ctx(zone), now=NOW)
    assert p.utc_time == utc
    assert p.device_time == wall and p.local_time == datetime.strptime(wall, "%Y-%m-%d %H:%M:%S")
    assert p.timezone == zone and p.flags == ()
    assert p.key == ("SN1", "1001", wall, 0)


FLAG_CASES = [
    # (device time text, expected flags)
    ("2026-11-23 09:59:00", ()),
    ("2026-11-23 10:09:00", ()),                       # within the 10-minute tolerance
    ("2026-11-23 10:30:00", ("future",)),              # device clock ahead
    ("2031-05-05 08:00:00", ("future",)),
    ("2000-01-01 00:03:00", ("rtc_reset",)),           # dead RTC battery restarts at 2000-01-01
    ("2012-06-01 08:00:00", ("before_device",)),       # before installed_on
    ("2026-02-31 08:00:00", ("impossible_date",)),     # not a calendar date: kept, flagged, no instant
    ("2026-13-01 25:61:00", ("impossible_date",)),
]


@pytest.mark.timeout(10)
@pytest.mark.parametrize(("text", "flags"), FLAG_CASES)
def test_questionable_timestamps_are_kept_and_flagged(text: str, flags: tuple[str, ...]) -> None:
    out = normalize_punches([raw("1001", text)], ctx(), now=NOW)
    assert len(out) == 1
    assert out[0].flags == flags
    assert out[0].device_time == text
    assert (out[0].utc_time is None) == ("impossible_date" in flags)


@pytest.mark.timeout(10)
@pytest.mark.parametrize(("state", "verify", "names"), [
    (0, 1, ("check_in", "fingerprint")), (1, 15, ("check_out", "face")), (4, 4, ("overtime_in", "card")),
    (255, 3, ("unknown", "password")), (2, 99, ("break_out", "unknown")),
])
def test_state_and_verify_names(state: int, verify: int, names: tuple[str, str]) -> None:
    (p,) = normalize_punches([raw("1", "2026-11-20 08:00:00", state, verify)], ctx(), now=NOW)
    assert (p.state, p.verify) == (state, verify)
    assert (p.state_name, p.verify_name) == names == (state_name(state), verify_name(verify))


@pytest.mark.timeout(10)
def test_employee_mapping_global_and_per_device(tmp_path: Path) -> None:
    csv_path = tmp_path / "employees.csv"
    csv_path.write_text("device_user_id,employee_id,serial\n"
                        "1001,198501012010011001,\n"
                        "1002,199002022015022002,SN1\n"
                        "1002,199909092020099009,OTHER\n", encoding="utf-8")
    emp = EmployeeMap(csv_path)
    out = normalize_punches([raw("1001", "2026-11-20 08:00:00"), raw("1002", "2026-11-20 08:01:00"),
                             raw("7777", "2026-11-20 08:02:00")], ctx(), employees=emp, now=NOW)
    assert [p.employee_id for p in out] == ["198501012010011001", "199002022015022002", None]
    assert [p.flags for p in out] == [(), (), ("unmapped_user",)]


@pytest.mark.timeout(10)
def test_employee_mapping_reloads_when_the_file_changes(tmp_path: Path) -> None:
    import os

    csv_path = tmp_path / "employees.csv"
    csv_path.write_text("device_user_id,employee_id\n1001,A\n", encoding="utf-8")
    emp = EmployeeMap(csv_path)
    assert emp.lookup("SN1", "1001") == "A"
    csv_path.write_text("device_user_id,employee_id\n1001,B\n", encoding="utf-8")
    st = csv_path.stat()
    os.utime(csv_path, (st.st_atime, st.st_mtime + 5))
    emp.refresh()
    assert emp.lookup("SN1", "1001") == "B"


@pytest.mark.timeout(10)
def test_bad_mapping_header_is_a_clear_error(tmp_path: Path) -> None:
    csv_path = tmp_path / "employees.csv"
    csv_path.write_text("pin,nip\n1,2\n", encoding="utf-8")
    with pytest.raises(ValueError, match="device_user_id and employee_id"):
        EmployeeMap(csv_path)


@pytest.mark.timeout(10)
def test_nothing_is_dropped_and_order_is_kept() -> None:
    texts = ["2026-11-20 08:00:00", "2026-02-30 08:00:00", "2000-01-01 00:00:00", "2040-01-01 00:00:00",
             "2026-11-20 08:00:00"]  # the same punch twice: dedup is the store's job, not ours
    out = normalize_punches([raw(str(i), t) for i, t in enumerate(texts)], ctx(), now=NOW)
    assert [p.device_time for p in out] == texts
    assert [p.device_user_id for p in out] == ["0", "1", "2", "3", "4"]


@pytest.mark.timeout(10)
def test_only_records_with_an_untrusted_time_are_numbered_per_user_and_time() -> None:
    got = normalize_punches([raw("1", "2000-01-01 00:00:00"), raw("2", "2000-01-01 00:00:00"),
                             raw("1", "2000-01-01 00:00:00"), raw("1", "2026-02-31 08:00:00"),
                             raw("1", "2026-11-20 07:00:00"), raw("1", "2026-11-20 07:00:00")], ctx(), now=NOW)
    # A trustworthy time is the identity itself: the same record twice is one punch (occurrence 0).
    assert [p.occurrence for p in got] == [1, 1, 2, 1, 0, 0]


@pytest.mark.timeout(10)
def test_bad_values_are_fitted_and_flagged_never_dropped() -> None:
    weird = RawPunch("7\udcff", "2026/11/20 07:00", None, 2 ** 31, -(2 ** 31) - 1, uid=2 ** 32 - 1,
                     workcode=True, raw_time=-(2 ** 64))  # type: ignore[arg-type]
    year_one = RawPunch("8", "0001-01-01 00:00:00", datetime(1, 1, 1), 0, 1)
    p, q = normalize_punches([weird, year_one], ctx(), now=NOW)
    assert p.device_time == "0000-00-00 00:00:00" and p.local_time is None and p.utc_time is None
    assert (p.state, p.verify, p.uid, p.workcode, p.raw_time) == (-(2 ** 31), -(2 ** 31), -1, 0, -(2 ** 63))
    assert p.device_user_id.startswith("7?~") and p.occurrence == 1
    assert set(p.flags) == {"bad_user_id", "bad_device_time", "bad_state", "bad_verify", "bad_uid", "bad_workcode",
                            "bad_raw_time", "value_out_of_range", "impossible_date"}
    assert len(",".join(p.flags)) <= 200
    # Year 1 in WIB has no UTC instant: impossible_date rather than a crash.
    assert q.utc_time is None and q.local_time is None and "impossible_date" in q.flags

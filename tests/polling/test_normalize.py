"""normalize_punches: zones (WIB/WITA/WIT), names, employee mapping, quality flags; nothing dropped."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drivers.base import RawPunch
from gateway.models import Punch
from gateway.polling.normalize import (
    FUTURE_TOLERANCE,
    RTC_RESET_BEFORE,
    UNTRUSTED_TIME_FLAGS,
    DeviceContext,
    EmployeeMap,
    bound_raw,
    normalize_punches,
    state_name,
    verify_name,
)

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


def reference_normalize(raw: list[RawPunch], ctx: DeviceContext, *, employees: EmployeeMap | None,
                        now: datetime) -> list[Punch]:
    """The plain, per-punch form of normalize_punches (before its speed-up): the specification it must match."""
    zone = ZoneInfo(ctx.timezone)
    latest_ok = now + FUTURE_TOLERANCE
    mapped = employees is not None and employees.configured
    out: list[Punch] = []
    seen: dict[tuple[str, str], int] = {}
    for original in raw:
        rp, flags = bound_raw(original)
        local = rp.local_time
        utc_time: datetime | None = None
        if local is not None:
            try:
                utc_time = local.replace(tzinfo=zone).astimezone(UTC)
            except OverflowError:
                local = None
        if local is None or utc_time is None:
            flags.append("impossible_date")
        else:
            if local.date() < RTC_RESET_BEFORE:
                flags.append("rtc_reset")
            elif local.date() < ctx.not_before:
                flags.append("before_device")
            if utc_time > latest_ok:
                flags.append("future")
        employee_id = employees.lookup(ctx.serial, rp.user_id) if employees is not None else None
        if mapped and employee_id is None:
            flags.append("unmapped_user")
        occurrence = 0
        if UNTRUSTED_TIME_FLAGS.intersection(flags):
            occurrence = seen[(rp.user_id, rp.time_text)] = seen.get((rp.user_id, rp.time_text), 0) + 1
        out.append(Punch(
            office_code=ctx.office_code, device_id=ctx.device_id, device_serial=ctx.serial,
            device_user_id=rp.user_id, device_time=rp.time_text, local_time=local, utc_time=utc_time,
            timezone=ctx.timezone, state=rp.state, state_name=state_name(rp.state), verify=rp.verify,
            verify_name=verify_name(rp.verify), uid=rp.uid, workcode=rp.workcode, raw_time=rp.raw_time,
            employee_id=employee_id, flags=tuple(dict.fromkeys(flags)), occurrence=occurrence))
    return out


_YEARS = st.sampled_from([1, 2, 1999, 2000, 2009, 2015, 2026, 2027, 2031, 9999])
_TEXTS = st.one_of(
    st.builds(lambda y, mo, d, h, mi, s: f"{y:04d}-{mo:02d}-{d:02d} {h:02d}:{mi:02d}:{s:02d}", _YEARS,
              st.integers(1, 13), st.integers(1, 32), st.integers(0, 25), st.integers(0, 61), st.integers(0, 59)),
    st.sampled_from(["2026/11/20 07:00", "", "2026-11-20T07:00:00", "２０２６-11-20 07:00:00"]),
    # Days with a zone transition (Berlin, New York, Lord Howe's half hour), in the gap, the fold and after.
    st.sampled_from([f"{day} {hm}:00" for day in ("2026-03-29", "2026-10-25", "2026-03-08", "2026-11-01",
                                                   "2026-04-05", "2026-10-04")
                     for hm in ("00:30", "01:45", "02:30", "12:00", "23:59")]),
    st.text(max_size=25))
_INTS = st.one_of(st.integers(-3, 300), st.integers(-(2 ** 70), 2 ** 70), st.booleans(),
                  st.sampled_from([2 ** 31 - 1, 2 ** 31, 2 ** 32 - 1, -(2 ** 31) - 1, 2 ** 63, -(2 ** 63) - 1]))


@st.composite
def raw_punches(draw: st.DrawFn) -> RawPunch:
    text = draw(_TEXTS)
    try:
        local: datetime | None = datetime.strptime(text, "%Y-%m-%d %H:%M:%S")
    except ValueError:
        local = None
    if draw(st.integers(0, 9)) == 0:  # a driver whose two time fields disagree (a bug): still never a crash
        local = draw(st.one_of(st.none(), st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31))))
    user = draw(st.one_of(st.sampled_from(["1001", "1002", "7", ""]), st.text(max_size=70)))
    return RawPunch(user, text, local, draw(_INTS), draw(_INTS), uid=draw(_INTS), workcode=draw(_INTS),
                    raw_time=draw(_INTS))


@pytest.mark.timeout(120)
def test_normalize_punches_matches_its_plain_per_punch_specification(tmp_path: Path) -> None:
    csv_path = tmp_path / "employees.csv"
    csv_path.write_text("device_user_id,employee_id,serial\n1001,E1,\n1002,E2,SN1\n7,E7,OTHER\n", encoding="utf-8")
    mapping = EmployeeMap(csv_path)

    @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(raws=st.lists(raw_punches(), max_size=30),
           zone=st.sampled_from(["Asia/Jakarta", "Asia/Jayapura", "Europe/Berlin", "America/New_York",
                                 "Australia/Lord_Howe", "Pacific/Kiritimati", "Etc/GMT+12"]),
           not_before=st.dates(min_value=date(1, 1, 1), max_value=date(2030, 1, 1)),
           now=st.datetimes(min_value=datetime(2001, 1, 1), max_value=datetime(2099, 1, 1), timezones=st.just(UTC)),
           employees=st.sampled_from([None, "none", "csv"]))
    def check(raws: list[RawPunch], zone: str, not_before: date, now: datetime, employees: str | None) -> None:
        emp = None if employees is None else EmployeeMap(None) if employees == "none" else mapping
        context = DeviceContext(office_code="1801.01.02", device_id="lobby", serial="SN1", timezone=zone,
                                not_before=not_before)
        assert normalize_punches(raws, context, employees=emp, now=now) == \
            reference_normalize(raws, context, employees=emp, now=now)

    check()


@pytest.mark.timeout(10)
def test_the_fast_punch_constructor_builds_the_same_frozen_punch() -> None:
    import dataclasses

    from gateway.polling.normalize import _NEW_PUNCH

    values = ("1801.01.02", "lobby", "SN1", "1001", "2026-11-20 07:00:00", datetime(2026, 11, 20, 7),
              datetime(2026, 11, 20, 0, tzinfo=UTC), "Asia/Jakarta", 0, "check_in", 1, "fingerprint", 7, 0, 123,
              "E1", ("future",), 0)
    fast, plain = _NEW_PUNCH(*values), Punch(*values)
    assert type(fast) is Punch and fast == plain and hash(fast) == hash(plain) and repr(fast) == repr(plain)
    assert [getattr(fast, f.name) for f in dataclasses.fields(Punch)] == list(values)
    with pytest.raises(dataclasses.FrozenInstanceError):
        fast.state = 1  # type: ignore[misc]


@pytest.mark.timeout(10)
def test_the_punch_constructor_falls_back_when_no_twin_can_stand_in() -> None:
    import dataclasses

    from gateway.polling.normalize import _positional_constructor

    @dataclasses.dataclass(frozen=True, slots=True, weakref_slot=True)
    class Weak:  # a __weakref__ slot: the twin class has another layout, so __class__ cannot be assigned
        a: int
        b: str

    new = _positional_constructor(Weak)  # type: ignore[arg-type]
    built = new(1, "x")
    assert type(built) is Weak and built == Weak(1, "x")
    with pytest.raises(dataclasses.FrozenInstanceError):
        built.a = 2  # type: ignore[misc]
    # Punch itself takes the fast form: the twin, then its class (what the speed of normalize relies on).
    assert "__class__" in _positional_constructor(Punch).__code__.co_names

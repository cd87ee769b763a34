"""Byte-literal tests for drivers.zk.records: layouts, time decoding, dataset framing (no network)."""

from __future__ import annotations

import struct
from datetime import datetime

import pytest

from drivers.base import DeviceUser, RawPunch
from drivers.zk import records
from drivers.zk.records import DatasetError

pytestmark = pytest.mark.timeout(10)


# ---------------------------------------------------------------------------------------------
# Time (fact sheet §2.5, vectors V7)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "text"),
    [
        (0, "2000-01-01 00:00:00"),
        (594063665, "2018-06-25 17:41:05"),
        (0x2368B131, "2018-06-25 17:41:05"),
        (772619400, "2024-01-15 08:30:00"),
        (835660799, "2025-12-31 23:59:59"),
        (0x2368B36B, "2018-06-25 17:50:35"),
        (0x23689BC2, "2018-06-25 16:09:38"),
    ],
)
def test_time_vectors_decode_to_text_and_datetime(raw: int, text: str) -> None:
    got_text, got_dt = records.decode_time(raw)
    assert got_text == text
    assert got_dt == datetime.strptime(text, "%Y-%m-%d %H:%M:%S")
    assert records.encode_time(got_dt) == raw


def test_impossible_date_keeps_text_and_gives_no_datetime() -> None:
    # Feb 31 2024 08:00:00: month index 1, day index 30.
    raw = ((24 * 12 + 1) * 31 + 30) * 86400 + 8 * 3600
    assert records.decode_time(raw) == ("2024-02-31 08:00:00", None)


def test_year_2000_rtc_reset_value_is_a_valid_date() -> None:
    # A dead RTC battery restarts the clock at 2000-01-01: stored as-is, flagged later by the gateway.
    assert records.decode_time(3661) == ("2000-01-01 01:01:01", datetime(2000, 1, 1, 1, 1, 1))


def test_max_u32_decodes_to_text_without_raising() -> None:
    # Garbage timestamps must still yield text (year 2133 here), never an exception.
    assert records.decode_time(0xFFFFFFFF) == ("2133-08-18 06:28:15", datetime(2133, 8, 18, 6, 28, 15))


def test_encode_time_rejects_years_the_device_cannot_hold() -> None:
    with pytest.raises(ValueError, match="2000-2099"):
        records.encode_time(datetime(1999, 12, 31))


def test_live_event_time_hex() -> None:
    assert records.time_from_hex6(bytes.fromhex("120619112905")) == (
        "2018-06-25 17:41:05",
        datetime(2018, 6, 25, 17, 41, 5),
    )
    assert records.time_from_hex6(bytes([24, 2, 30, 8, 0, 0])) == ("2024-02-30 08:00:00", None)


# ---------------------------------------------------------------------------------------------
# Attendance layouts (§2.10, V8)
# ---------------------------------------------------------------------------------------------

V8 = bytes.fromhex("0d00") + b"999111333" + b"\x00" * 15 + bytes.fromhex("01 6bb36823 00 00000000ff000000")


def dataset(*recs: bytes) -> bytes:
    body = b"".join(recs)
    return struct.pack("<I", len(body)) + body


def test_v8_40_byte_record() -> None:
    assert len(V8) == 40
    [p] = records.parse_records(V8, 40)
    assert p == RawPunch(
        user_id="999111333",
        time_text="2018-06-25 17:50:35",
        local_time=datetime(2018, 6, 25, 17, 50, 35),
        state=0,
        verify=1,
        uid=13,
        workcode=0,
        raw_time=0x2368B36B,
    )


def test_40_byte_state_and_verify_come_from_bytes_31_and_26() -> None:
    rec = bytearray(V8)
    rec[26] = 15  # face
    rec[31] = 1  # check-out
    [p] = records.parse_records(bytes(rec), 40)
    assert (p.state, p.verify) == (1, 15)


def test_40_byte_user_id_stops_at_nul_and_ignores_junk() -> None:
    rec = bytearray(V8)
    rec[2:26] = b"19870512\x00JUNKJUNK" + b"\x00" * 7
    [p] = records.parse_records(bytes(rec), 40)
    assert p.user_id == "19870512"


def test_16_byte_record_state_before_verify_and_workcode() -> None:
    # user 1001, 2024-01-15 08:30:00, state 1 (out), verify 15 (face), reserved, workcode 7
    rec = struct.pack("<II", 1001, 772619400) + bytes([1, 15, 0xAA, 0xBB]) + struct.pack("<I", 7)
    assert rec.hex() == "e9030000883c0d2e010faabb07000000"
    [p] = records.parse_records(rec, 16)
    assert p == RawPunch("1001", "2024-01-15 08:30:00", datetime(2024, 1, 15, 8, 30), 1, 15, 0, 7, 772619400)


def test_8_byte_record_maps_uid_and_reads_verify_then_state() -> None:
    # uid 13, verify 1, time 0x2368B36B, state 4 (OT in)
    rec = bytes.fromhex("0d00 01 6bb36823 04")
    [p] = records.parse_records(rec, 8, uid_to_user_id={13: "555"}.__getitem__)
    assert (p.user_id, p.uid, p.verify, p.state, p.time_text) == ("555", 13, 1, 4, "2018-06-25 17:50:35")


def test_8_byte_records_need_a_uid_map() -> None:
    with pytest.raises(DatasetError):
        records.parse_records(bytes(8), 8)


def test_decode_attendance_8_byte_unknown_uid_falls_back_to_str_uid() -> None:
    data = dataset(bytes.fromhex("0d00016bb3682300"), bytes.fromhex("0e00016bb3682301"))
    log = records.decode_attendance(data, 2, uid_map={13: "555"})
    assert log.record_size == 8
    assert [p.user_id for p in log.punches] == ["555", "14"]


def test_uids_in_8_byte_records() -> None:
    body = bytes.fromhex("0d00016bb3682300") + bytes.fromhex("0e00016bb3682301") * 2
    assert records.uids_in_8byte_records(body) == {13, 14}


@pytest.mark.parametrize("size", [8, 16, 40])
def test_bulk_decode_is_exact_and_ordered(size: int) -> None:
    n = 1000
    recs = []
    for i in range(n):
        t = 772619400 + i * 61
        if size == 40:
            recs.append(struct.pack("<H24sBIB8x", i, str(100000 + i).encode(), 1, t, i % 6))
        elif size == 16:
            recs.append(struct.pack("<IIBB2xI", 100000 + i, t, i % 6, 1, 0))
        else:
            recs.append(struct.pack("<HBIB", i, 1, t, i % 6))
    uid_map = {i: str(100000 + i) for i in range(n)}
    log = records.decode_attendance(dataset(*recs), n, uid_map=uid_map)
    assert log.record_size == size
    assert [p.user_id for p in log.punches] == [str(100000 + i) for i in range(n)]
    assert [p.state for p in log.punches] == [i % 6 for i in range(n)]
    assert all(p.verify == 1 for p in log.punches)
    assert log.punches[-1].raw_time == 772619400 + (n - 1) * 61


# ---------------------------------------------------------------------------------------------
# Dataset framing and size inference
# ---------------------------------------------------------------------------------------------


def test_truncated_dataset_is_rejected() -> None:
    data = dataset(V8, V8)
    with pytest.raises(DatasetError, match="header says 80 bytes but 79"):
        records.decode_attendance(data[:-1], 2)


def test_trailing_garbage_is_rejected() -> None:
    with pytest.raises(DatasetError, match="header says 40 bytes but 41"):
        records.decode_attendance(dataset(V8) + b"\x00", 1)


def test_missing_header_is_rejected() -> None:
    with pytest.raises(DatasetError, match="no 4-byte size header"):
        records.decode_attendance(b"\x28\x00", 1)


def test_byte_count_not_matching_any_size_is_rejected() -> None:
    with pytest.raises(DatasetError, match="do not fit"):
        records.decode_attendance(dataset(V8 + b"\x00" * 3), 1)


def test_fewer_records_than_reported_is_rejected() -> None:
    # 80 bytes hold at most 10 records (8-byte layout); the device said 11: something was lost.
    with pytest.raises(DatasetError, match="do not fit 11 records"):
        records.decode_attendance(dataset(V8, V8), 11)


def test_fewer_records_than_reported_with_forced_size_is_rejected() -> None:
    with pytest.raises(DatasetError, match="do not fit 3 records"):
        records.decode_attendance(dataset(V8, V8), 3, forced_size=40)


def test_more_records_than_reported_is_accepted() -> None:
    # New punches arrived between read_sizes and the download: 3 records, device said 2.
    log = records.decode_attendance(dataset(V8, V8, V8), 2)
    assert log.record_size == 40 and len(log.punches) == 3


def test_exact_count_wins_over_other_divisors() -> None:
    # 80 bytes: 2 x 40, 5 x 16, 10 x 8 -- the count decides.
    assert records.infer_record_size(80, 2, records.RECORD_SIZES) == 40
    assert records.infer_record_size(80, 5, records.RECORD_SIZES) == 16
    assert records.infer_record_size(80, 10, records.RECORD_SIZES) == 8


def test_hint_breaks_ties_when_records_arrived() -> None:
    # 48 bytes, device said 2 (reads raced new punches): 6 x 8 or 3 x 16. The device's known layout wins.
    assert records.infer_record_size(48, 2, records.RECORD_SIZES, hint=8) == 8
    assert records.infer_record_size(48, 2, records.RECORD_SIZES) == 16  # smallest surplus otherwise


def test_forced_size_overrides_inference_but_still_checks_divisibility() -> None:
    assert records.infer_record_size(80, 2, records.RECORD_SIZES, forced=16) == 16
    with pytest.raises(DatasetError):
        records.infer_record_size(88, 2, records.RECORD_SIZES, forced=16)


def test_empty_dataset_is_an_empty_log() -> None:
    assert records.decode_attendance(b"\x00\x00\x00\x00", 0).punches == []


# ---------------------------------------------------------------------------------------------
# Users (§2.9, V9)
# ---------------------------------------------------------------------------------------------

V9 = (
    bytes.fromhex("0d00")  # uid 13
    + b"\x00"  # privilege
    + b"444\x00JNK\x00"  # password, junk after the NUL
    + b"Ned".ljust(24, b"\x00")
    + struct.pack("<I", 0xDE)
    + b"\x02"  # group number (byte 39)
    + bytes.fromhex("0100010002000000")  # own-TZ flag, tz1, tz2, tz3
    + b"555".ljust(24, b"\x00")
)


def test_v9_72_byte_user() -> None:
    assert len(V9) == 72
    [u] = records.parse_users(V9, 72)
    assert u == DeviceUser(uid=13, user_id="555", name="Ned", privilege=0, card=0xDE, group_id="2")


def test_72_byte_user_with_pyzk_written_group_text() -> None:
    rec = bytearray(V9)
    rec[39] = 0
    rec[40:47] = b"OPD-3\x00\x00"
    [u] = records.parse_users(bytes(rec), 72)
    assert u.group_id == "OPD-3"


def test_28_byte_user() -> None:
    rec = struct.pack("<HB5s8sIxBhI", 7, 14, b"12\x00\x00\x00", b"Siti\x00\x00\x00\x00", 4242, 1, 0, 19870512)
    assert len(rec) == 28
    [u] = records.parse_users(rec, 28)
    assert u == DeviceUser(uid=7, user_id="19870512", name="Siti", privilege=14, card=4242, group_id="1")


def test_users_never_expose_passwords() -> None:
    [u] = records.parse_users(V9, 72)
    assert "444" not in repr(u)


@pytest.mark.parametrize(("size", "rec"), [(72, V9), (28, struct.pack("<HB5s8sIxBhI", 1, 0, b"", b"A", 0, 0, 0, 9))])
def test_decode_users_infers_size(size: int, rec: bytes) -> None:
    users, got = records.decode_users(dataset(rec, rec, rec), 3)
    assert got == size and len(users) == 3


def test_decode_users_rejects_truncation() -> None:
    with pytest.raises(DatasetError):
        records.decode_users(dataset(V9, V9)[:-5], 2)


def test_utf8_names_and_bad_bytes_do_not_raise() -> None:
    rec = bytearray(V9)
    rec[11:35] = "Dédé".encode().ljust(24, b"\x00")
    rec[48:72] = b"\xff\xfe12".ljust(24, b"\x00")
    [u] = records.parse_users(bytes(rec), 72)
    assert u.name == "Dédé"
    assert u.user_id.endswith("12")

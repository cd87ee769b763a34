"""Record, event and size-query variants of real firmware (issue 9 items 3 and 4): pure decoders."""

from __future__ import annotations

import struct

import pytest

from drivers.zk import records
from drivers.zk.quirks import ZkQuirks
from tests.drivers.captures import pyzk_captures as cap
from tests.support.zkwire import encode_time, records40

T = encode_time(2026, 11, 3, 7, 45, 0)


def test_free_sizes_from_captures() -> None:
    k20 = records.parse_free_sizes(cap.PYZK_TCP_SIZES_80[16:])
    assert (k20.users, k20.records, k20.unreliable) == (70, 3225, "")
    f18 = records.parse_free_sizes(cap.F18_SIZES_PAYLOAD_92)
    assert (f18.users, f18.fingers, f18.records, f18.records_cap, f18.faces) == (3, 3, 58, 100000, 0)
    longer = records.parse_free_sizes(cap.F18_SIZES_PAYLOAD_92 + b"\x07" * 20)  # 112-byte layout
    assert (longer.records, longer.unreliable) == (58, "")


@pytest.mark.parametrize("payload,why", [
    (b"\x00" * 4, "answered with 4 bytes"),
    (struct.pack("<20i", *([0] * 8 + [-5] + [0] * 11)), "negative"),
    (struct.pack("<20i", *([0] * 8 + [900] + [0] * 7 + [100] + [0] * 3)), "capacity of 100"),
])
def test_free_sizes_unusable(payload: bytes, why: str) -> None:
    assert why in records.parse_free_sizes(payload).unreliable


def test_live_event_forms_from_captures() -> None:
    p12 = records.decode_event(cap.EVENT_DATA_12)
    assert (p12.user_id, p12.time_text) == ("4822257", "2018-12-07 19:09:06")
    p32 = records.decode_event(cap.EVENT_DATA_32)
    assert (p32.user_id, p32.verify, p32.time_text) == ("1140064", 15, "2018-11-29 12:55:03")
    p10 = records.decode_event(struct.pack("<HBB", 7, 1, 0) + bytes([26, 11, 3, 7, 45, 0]))
    assert (p10.user_id, p10.time_text) == ("7", "2026-11-03 07:45:00")
    with pytest.raises(records.DatasetError, match="event of 14 bytes: no public layout"):
        records.decode_event(b"\x00" * 14)


def test_8_byte_variant_with_time_at_offset_4_refused_naming_the_layout() -> None:
    # uid u16, verify, state, time u32 at offset 4: node-zklib's reading, not a documented layout.
    body = b"".join(struct.pack("<HBBI", 1 + i, 1, 0, T + 60 * i) for i in range(20))
    with pytest.raises(records.DatasetError, match=r"8-byte \(u16 uid, u8 verify, u32 time at offset 3"):
        records.choose_record_size(body, 20)


def test_documented_8_byte_layout_with_one_bad_clock_record_is_kept() -> None:
    good = [struct.pack("<HBIB", 1 + i, 1, T + 60 * i, 0) for i in range(20)]
    good[5] = struct.pack("<HBIB", 6, 1, encode_time(2026, 2, 31, 8, 0, 0), 0)  # 31 February
    body = b"".join(good)
    assert records.choose_record_size(body, 20) == 8
    punches = records.parse_records(body, 8, uid_to_user_id=str)
    assert punches[5].local_time is None and punches[5].time_text.startswith("2026-02-31")


def test_long_pin_on_16_byte_firmware() -> None:
    body = struct.pack("<IIBB2xI", 4_294_967_295, T, 0, 1, 0) + struct.pack("<IIBB2xI", 1_234_567_890, T, 1, 15, 7)
    assert records.choose_record_size(body, None) == 16
    punches = records.parse_records(body, 16)
    assert [p.user_id for p in punches] == ["4294967295", "1234567890"]  # the full u32, not the low 16 bits


def test_count_disagreement_decided_by_evidence_or_refused() -> None:
    body = records40(25)  # 1000 bytes: fits 8 x 125 and 40 x 25
    assert records.choose_record_size(body, 10) == 40
    assert records.choose_record_size(body, None) == 40
    assert records.choose_record_size(body, 30) == 40  # fewer than counted, but every record is real
    with pytest.raises(records.DatasetError, match="no known layout"):
        records.choose_record_size(b"\xff" * 1000, None)


def test_max_download_bytes_quirk_validated() -> None:
    assert ZkQuirks.from_mapping({"max_download_bytes": 4096}).max_download_bytes == 4096
    for bad in (0, 10, 2**31, True, "big"):
        with pytest.raises(ValueError, match="max_download_bytes"):
            ZkQuirks.from_mapping({"max_download_bytes": bad})

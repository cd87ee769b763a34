"""Byte-literal tests of the simulator codec against the fact sheet's §5 vectors (V1–V10)."""

from __future__ import annotations

import struct
from datetime import datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from simulators.zk import protocol as p


def hx(s: str) -> bytes:
    return bytes.fromhex(s.replace(" ", ""))


# --- V1/V2 framing and checksum ----------------------------------------------------------


def test_v1_connect_packet_udp_and_tcp() -> None:
    pkt = p.build_packet(p.CMD_CONNECT, 0, 0)
    assert pkt == hx("e8 03 17 fc 00 00 00 00")
    assert p.tcp_wrap(pkt) == hx("50 50 82 7d 08 00 00 00 e8 03 17 fc 00 00 00 00")


def test_v2_ack_ok_to_connect_and_exit() -> None:
    assert p.tcp_wrap(p.build_packet(p.CMD_ACK_OK, 0xFB2F, 0)) == hx(
        "50 50 82 7d 08 00 00 00 d0 07 ff fc 2f fb 00 00")
    assert p.build_packet(p.CMD_EXIT, 0xFB2F, 1) == hx("e9 03 e6 00 2f fb 01 00")


@pytest.mark.parametrize(("packet", "expected"), [
    (hx("0b 00 5a 17 f3 8d 03 00") + b"ZKFaceVersion\0", 0x175A),
    (hx("d0 07 29 6a f3 8d 0a 00 09"), 0x6A29),
    (hx("0b 00 58 ef c5 c0 05 00 7e 4f 53 00"), 0xEF58),
    (hx("0b 00 b9 e6 f3 8d 0c 00") + b"~Platform\0", 0xE6B9),
    (hx("d0 07 71 4c f3 8d 0c 00") + b"~Platform=ZEM760_TFT\0", 0x4C71),
    (hx("d0 07 f6 f7 02 00 37 00"), 0xF7F6),
])
def test_v4_checksum_vectors(packet: bytes, expected: int) -> None:
    pkt = p.parse_packet(packet)
    assert pkt.checksum == expected
    assert pkt.checksum_ok
    assert p.build_packet(pkt.command, pkt.session_id, pkt.reply_id, pkt.data) == packet


def test_v4_tcp_prefixed_options_request() -> None:
    framed = hx("50 50 82 7d 0c 00 00 00 0b 00 58 ef c5 c0 05 00 7e 4f 53 00")
    assert p.parse_tcp_top(framed[:8]) == 12
    assert p.tcp_wrap(p.build_packet(p.CMD_OPTIONS_RRQ, 0xC0C5, 5, b"~OS\0")) == framed


# --- V3 comm key -------------------------------------------------------------------------


@pytest.mark.parametrize(("key", "session", "expected"), [
    (12, 0x45CF, "61 4d 32 3c"),
    (45, 0x45CF, "61 c9 32 3c"),
    (0, 0, "61 7d 32 79"),
    (123456, 1, "26 7f 32 f9"),
])
def test_v3_commkey(key: int, session: int, expected: str) -> None:
    assert p.make_commkey(key, session) == hx(expected)


def test_v3_auth_packet_and_unauth_reply() -> None:
    auth = p.build_packet(p.CMD_AUTH, 0x45CF, 1, p.make_commkey(12, 0x45CF))
    assert p.tcp_wrap(auth) == hx("50 50 82 7d 0c 00 00 00 4e 04 4e 2c cf 45 01 00 61 4d 32 3c")
    assert p.tcp_wrap(p.build_packet(p.CMD_ACK_UNAUTH, 0x45CF, 0)) == hx(
        "50 50 82 7d 08 00 00 00 d5 07 5b b2 cf 45 00 00")


# --- V5 buffered read --------------------------------------------------------------------


def test_v5_buffered_read_packets() -> None:
    req = hx("50 50 82 7d 13 00 00 00 df 05 3c a6 cf 45 14 00 01 09 00 05 00 00 00 00 00 00 00")
    pkt = p.parse_packet(req[8:])
    assert pkt.checksum_ok
    assert p.parse_read_buffer_request(pkt.data) == (p.CMD_USERTEMP_RRQ, p.FCT_USER, 0)
    stat = p.build_packet(p.CMD_ACK_OK, 0x3C5C, 0x15, hx("00 b4 13 00 00 b4 13 00 00 cd ef 23 00"))
    assert stat[:8] == hx("d0 07 a7 62 5c 3c 15 00")
    # Our stat has the same size fields; the last 4 bytes have no known meaning.
    assert p.buffer_stat(5044)[:9] == hx("00 b4 13 00 00 b4 13 00 00")
    prep = p.build_packet(p.CMD_PREPARE_DATA, 0x3C5C, 0x16, p.prepare_data(5044, 1008))
    assert prep == hx("dc 05 0d a6 5c 3c 16 00 b4 13 00 00 f0 03 00 00")


# --- V6 free sizes -----------------------------------------------------------------------


def test_v6_free_sizes_layout() -> None:
    sizes = p.Sizes(users=70, fingers=70, records=3225, oplog=282, admins=6, passwords=6,
                    fingers_cap=500, users_cap=500, records_cap=50000)
    payload = p.pack_free_sizes(sizes)
    assert struct.unpack("<20i", payload[:80]) == (
        0, 0, 0, 0, 70, 0, 70, 0, 3225, 0, 282, 0, 6, 6, 500, 500, 50000, 430, 430, 46775)
    assert len(payload) == 92
    assert p.build_packet(p.CMD_GET_FREE_SIZES, 0x45CF, 2) == hx("32 00 fc b9 cf 45 02 00")
    decoded = p.unpack_free_sizes(payload)
    assert decoded["records"] == 3225 and decoded["records_av"] == 46775


# --- V7 time -----------------------------------------------------------------------------


@pytest.mark.parametrize(("dt", "enc"), [
    (datetime(2000, 1, 1), 0),
    (datetime(2018, 6, 25, 17, 41, 5), 594063665),
    (datetime(2024, 1, 15, 8, 30), 772619400),
    (datetime(2025, 12, 31, 23, 59, 59), 0x31CF2BFF),
])
def test_v7_time_encoding(dt: datetime, enc: int) -> None:
    assert p.encode_time(dt) == enc
    assert p.decode_time(enc) == dt


def test_v7_decoding_samples() -> None:
    assert p.decode_time(0x2368B36B) == datetime(2018, 6, 25, 17, 50, 35)
    assert p.decode_time(0x23689BC2) == datetime(2018, 6, 25, 16, 9, 38)
    assert struct.pack("<I", p.encode_time(datetime(2018, 6, 25, 17, 41, 5))) == hx("31 b1 68 23")


def test_impossible_dates_have_text_but_no_datetime() -> None:
    t = p.encode_fields(2026, 2, 31, 7, 30, 0)
    assert p.time_text(t) == "2026-02-31 07:30:00"
    assert not p.is_valid_time(t)
    with pytest.raises(ValueError):
        p.decode_time(t)


@given(st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2099, 12, 31, 23, 59, 59)))
def test_time_round_trip(dt: datetime) -> None:
    dt = dt.replace(microsecond=0)
    t = p.encode_time(dt)
    assert p.decode_time(t) == dt
    assert p.time_text(t) == dt.strftime("%Y-%m-%d %H:%M:%S")
    assert p.time_hex(t) == bytes((dt.year - 2000, dt.month, dt.day, dt.hour, dt.minute, dt.second))


@given(st.integers(min_value=0, max_value=100 * 372 * 86400 - 1))  # years 2000–2099
def test_decode_chain_is_total_and_inverse(t: int) -> None:
    y, mo, d, h, mi, s = p.decode_fields(t)
    assert 1 <= mo <= 12 and 1 <= d <= 31 and h < 24 and mi < 60 and s < 60
    assert p.encode_fields(y, mo, d, h, mi, s) == t


# --- V8 records, V9 users ----------------------------------------------------------------


def test_v8_40_byte_record() -> None:
    rec = p.pack_att40(13, "999111333", 1, 0x2368B36B, 0)
    assert rec == (hx("0d 00") + b"999111333" + bytes(15) + hx("01 6b b3 68 23 00")
                   + hx("00 00 00 00 ff 00 00 00"))
    assert p.unpack_att(40, rec) == {"uid": 13, "user_id": "999111333", "verify": 1,
                                     "time": 0x2368B36B, "state": 0}


def test_16_and_8_byte_records() -> None:
    t = p.encode_time(datetime(2024, 1, 15, 8, 30))
    rec16 = p.pack_att16(1001, t, 1, 15)
    assert len(rec16) == 16 and rec16[:4] == struct.pack("<I", 1001) and rec16[8:10] == b"\x01\x0f"
    assert p.unpack_att(16, rec16) == {"user_id": "1001", "time": t, "state": 1, "verify": 15}
    rec8 = p.pack_att8(7, 1, t, 0)
    assert rec8 == hx("07 00 01") + struct.pack("<I", t) + b"\x00"


def test_v9_72_byte_user_layout() -> None:
    u = p.User(uid=13, user_id="555", name="Ned", privilege=0, password="444", card=0xDE, group=2)
    rec = u.pack(72)
    assert len(rec) == 72
    assert rec[0:2] == hx("0d 00") and rec[3:6] == b"444" and rec[11:14] == b"Ned"
    assert rec[35:39] == hx("de 00 00 00") and rec[39] == 2 and rec[40:48] == bytes(8)
    assert rec[48:51] == b"555" and rec[51:72] == bytes(21)
    assert p.unpack_user(rec) == u


def test_28_byte_user_layout() -> None:
    u = p.User(uid=3, user_id="1003", name="Agus", privilege=14, password="1234", card=777, group=1)
    rec = u.pack(28)
    assert len(rec) == 28
    assert struct.unpack("<HB5s8sIxBhI", rec) == (3, 14, b"1234\0", b"Agus\0\0\0\0", 777, 1, 0, 1003)
    assert p.unpack_user(rec) == u


@given(st.integers(0, 65535), st.text(alphabet="0123456789", min_size=1, max_size=23),
       st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=23),
       st.integers(0, 0xFFFFFFFF))
def test_user72_round_trip(uid: int, user_id: str, name: str, card: int) -> None:
    u = p.User(uid=uid, user_id=user_id, name=name, card=card)
    assert p.unpack_user(u.pack(72)) == u


# --- V10 events --------------------------------------------------------------------------


def test_v10_realtime_attlog_event_tcp() -> None:
    t = p.encode_time(datetime(2018, 6, 25, 17, 41, 5))
    data = p.event_attlog_32("999111333", 1, 0, t)
    framed = p.tcp_wrap(p.build_packet(p.CMD_REG_EVENT, p.EF_ATTLOG, 0, data))
    assert framed == (hx("50 50 82 7d 28 00 00 00 f4 01 ac 12 01 00 00 00") + b"999111333"
                      + bytes(15) + hx("01 00 12 06 19 11 29 05"))


def test_v10_short_event_forms() -> None:
    t = p.encode_time(datetime(2018, 12, 7, 19, 9, 6))
    assert p.event_attlog_12(4822257, 0, 0, t) == hx("f1 94 49 00 00 00 12 0c 07 13 09 06")
    ev10 = p.event_attlog_10(1001, 1, 0, t)
    assert len(ev10) == 10 and ev10[:4] == hx("e9 03 01 00")


def test_fpftr_event_checksum() -> None:
    assert p.tcp_wrap(p.build_packet(p.CMD_REG_EVENT, 0x0100, 0, b"\x64")) == hx(
        "50 50 82 7d 09 00 00 00 f4 01 a7 fc 00 01 00 00 64")


# --- robustness --------------------------------------------------------------------------


def test_parse_errors_are_protocol_errors() -> None:
    with pytest.raises(p.ProtocolError):
        p.parse_packet(b"\x01\x02")
    with pytest.raises(p.ProtocolError):
        p.parse_tcp_top(b"GET / HT")
    with pytest.raises(p.ProtocolError):
        p.parse_tcp_top(p.TCP_MAGIC + struct.pack("<I", 3))
    with pytest.raises(p.ProtocolError):
        p.parse_chunk_request(b"\x00")


@given(st.binary(min_size=8, max_size=300))
def test_build_parse_round_trip(raw: bytes) -> None:
    pkt = p.parse_packet(raw)
    rebuilt = p.build_packet(pkt.command, pkt.session_id, pkt.reply_id, pkt.data)
    again = p.parse_packet(rebuilt)
    assert again.checksum_ok
    assert (again.command, again.session_id, again.reply_id, again.data) == (
        pkt.command, pkt.session_id, pkt.reply_id, pkt.data)

"""The ZK driver against the framing of real terminals (issue 9 items 1, 2, 3, 6), over loopback.

The peers (tests/support/zkwire.py) answer like the public captures in tests/drivers/captures/: 1504
chunks as 1008-byte DATA packets with a packet counter in the session field, split and delayed on
TCP, one datagram per piece on UDP; GET_FREE_SIZES variants; hostile sizes; a trickling device.
"""

from __future__ import annotations

import random
import struct
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from drivers.base import ProtocolError
from drivers.zk.driver import ZkDriver, ZkParams, ZkSession
from drivers.zk.quirks import ZkQuirks
from tests.drivers.captures import pyzk_captures as cap
from tests.support.zkwire import (
    DATA,
    MAGIC,
    PREPARE_DATA,
    FakeTerminal,
    TcpPeer,
    UdpPeer,
    packet,
    records40,
    sizes_payload,
    with_reply_id,
)


def _driver(port: int, transport: str = "tcp", timeout_s: float = 2.0, **quirks: object) -> ZkDriver:
    params = ZkParams(address="127.0.0.1", port=port, transport=transport, timeout_s=timeout_s)  # type: ignore[arg-type]
    return ZkDriver(params, ZkQuirks(**quirks))  # type: ignore[arg-type]


@contextmanager
def _session(term: FakeTerminal, transport: str = "tcp", deadline: float | None = None,
             peer_kw: dict[str, object] | None = None, timeout_s: float = 2.0,
             **quirks: object) -> Iterator[ZkSession]:
    peer_cls = TcpPeer if transport == "tcp" else UdpPeer
    with peer_cls(term, **(peer_kw or {})) as peer:  # type: ignore[arg-type]
        drv = _driver(peer.port, transport, timeout_s, **quirks)
        with (drv.connect() if deadline is None else drv.connect(deadline=deadline)) as session:
            yield session


# -- the capture: 70 users, 1008-byte DATA packets with counter session ids ----------------------------

def _capture_packets() -> list[bytes]:
    stream = b"".join(cap.PYZK_TCP_USERS_CHUNK_READS)
    out, i = [], 0
    while i < len(stream):
        n = struct.unpack_from("<I", stream, i + 4)[0]
        out.append(stream[i + 8:i + 8 + n])
        i += 8 + n
    return out


def _capture_terminal() -> FakeTerminal:
    pkts = _capture_packets()
    dataset = b"".join(p[8:] for p in pkts if struct.unpack_from("<H", p)[0] == DATA)
    term = FakeTerminal(session=cap.PYZK_TCP_USERS_SESSION, users=dataset[4:], sizes=cap.PYZK_TCP_SIZES_80[16:])

    def replay(start: int, length: int, rid: int) -> list[bytes]:
        assert (start, length) == (0, len(dataset))
        # The captured packets, re-addressed to this request's reply id (checksums recomputed).
        return [with_reply_id(p, rid) for p in pkts] + [packet(2000, term.session, rid)]

    term.chunk_override = replay
    return term


def test_capture_packets_carry_a_counter_in_the_session_field() -> None:
    sids = [struct.unpack_from("<4H", p)[2] for p in _capture_packets()]
    assert sids == [cap.PYZK_TCP_USERS_SESSION, 0, 1, 2, 3, 4, 5]


@pytest.mark.parametrize("transport,peer_kw", [
    ("tcp", {"split": 256, "gap_s": 0.003}),  # as the capture's reads came, with a few ms between
    ("tcp", {"split": 1}),  # one byte at a time
    ("udp", {}),  # one datagram per captured packet (counter session ids): dropped before issue 9
])
def test_captured_user_download(transport: str, peer_kw: dict[str, object]) -> None:
    with _session(_capture_terminal(), transport, peer_kw=peer_kw) as s:
        users = s.read_users()
    assert len(users) == cap.PYZK_TCP_USERS_COUNT
    assert (users[1].uid, users[1].user_id, users[1].name) == (2, "3494866", "NievesLopez")


# -- TCP: any split, any gap below the timeout ----------------------------------------------------------

@pytest.mark.parametrize("peer_kw", [
    {"split": 1016, "gap_s": 0.004},  # real terminals: one 1008-byte DATA packet per send, ms apart
    {"split": 7, "gap_s": 0.0005},
    {"split": 1},
    {"gap_s": 0.02},  # one send per packet, 20 ms apart
])
def test_tcp_chunks_read_by_declared_sizes(peer_kw: dict[str, object]) -> None:
    n = 1700 if peer_kw.get("split") != 1 else 300  # 1700 x 40 = 2 chunks of 65472
    term = FakeTerminal(attlog=records40(n))
    with _session(term, "tcp", peer_kw=peer_kw) as s:
        punches = s.read_punches()
    assert len(punches) == n
    assert punches[-1].user_id == str(1000 + (n - 1) % 500 + 1)


def test_tcp_firmware_not_echoing_reply_ids() -> None:
    # Each chunk's trailing ACK_OK is consumed, so the stream stays in step without reply ids.
    term = FakeTerminal(attlog=records40(1700))
    with _session(term, "tcp", peer_kw={"fixed_reply_id": 0x1B, "split": 1016}) as s:
        assert len(s.read_punches()) == 1700
        assert len(s.read_users()) == 0


# -- UDP: packet counters accepted, late answers of an earlier connection still refused --------------------

def test_udp_counter_pieces_and_stale_answers() -> None:
    term = FakeTerminal(attlog=records40(1000), piece=1008)  # 40 KB: 3 chunks of <= 16 KB

    def stale(rid: int) -> list[bytes]:
        # A late answer of an earlier connection whose reply id happens to equal this one: its
        # session id is the old connection's, so it must be dropped, not assembled.
        return [packet(PREPARE_DATA, 0x1111, rid, struct.pack("<II", 999, 1008)),
                packet(DATA, 0x1111, rid, b"\xee" * 999)]

    with _session(term, "udp", peer_kw={"stale": stale}) as s:
        punches = s.read_punches()
    assert len(punches) == 1000
    assert all(p.local_time is not None for p in punches)


# -- GET_FREE_SIZES variants -------------------------------------------------------------------------

def test_sizes_four_zero_bytes_falls_back_to_a_counted_download() -> None:
    term = FakeTerminal(attlog=records40(30), sizes=b"\x00\x00\x00\x00")
    with _session(term) as s:
        counts = s.counts()
        punches = s.read_punches()
    assert counts.records == 30 and "4 bytes" in counts.unreliable
    assert len(punches) == 30
    assert term.seen.count(1503) == 1  # the counting download is reused, not repeated


def test_sizes_112_bytes_layout() -> None:
    term = FakeTerminal(attlog=records40(12), sizes=sizes_payload(0, 12) + b"\x00" * 20)
    with _session(term) as s:
        counts = s.counts()
        assert len(s.read_punches()) == 12
    assert (counts.records, counts.records_cap, counts.unreliable) == (12, 100000, "")


def test_count_disagreeing_with_data_decided_by_evidence() -> None:
    term = FakeTerminal(attlog=records40(25), sizes=sizes_payload(0, 10))
    with _session(term) as s:
        assert len(s.read_punches()) == 25


def test_empty_log_while_device_reports_records_is_an_error() -> None:
    term = FakeTerminal(attlog=b"", sizes=sizes_payload(0, 5))
    with _session(term) as s, pytest.raises(ProtocolError, match="reports 5 records but sent an empty log"):
        s.read_punches()


def test_garbage_log_refused_naming_the_layouts() -> None:
    garbage = random.Random(9).randbytes(1280)
    term = FakeTerminal(attlog=garbage, sizes=sizes_payload(0, 3))
    with _session(term) as s, pytest.raises(ProtocolError, match="no known layout"):
        s.read_punches()


# -- hostile terminals ---------------------------------------------------------------------------------

@pytest.mark.parametrize("transport", ["tcp", "udp"])
def test_declared_dataset_beyond_capacity_refused_before_reading(transport: str) -> None:
    term = FakeTerminal(attlog=records40(10), attlog_stat_size=0x4BC00000)  # 1.27 GB
    t0 = time.monotonic()
    with _session(term, transport) as s, pytest.raises(ProtocolError, match="declared a 1270874112-byte dataset"):
        s.read_punches()
    assert time.monotonic() - t0 < 5
    assert 1504 not in term.seen


def test_max_download_bytes_quirk_bounds_a_device_without_capacity() -> None:
    term = FakeTerminal(attlog=records40(100), sizes=sizes_payload(0, 100, rec_cap=0))
    with _session(term, max_download_bytes=2048) as s, pytest.raises(ProtocolError, match="at most 2048"):
        s.read_punches()


def test_tcp_prefix_declaring_a_huge_packet_refused() -> None:
    raw = {50: MAGIC + struct.pack("<I", 0x7FFFFFF0) + packet(2000, 1, 1)}
    term = FakeTerminal(attlog=records40(3))
    with _session(term, peer_kw={"raw_replies": raw}) as s, pytest.raises(ProtocolError, match="2147483632-byte"):
        s.counts()


@pytest.mark.parametrize("transport", ["tcp"])
def test_deadline_ends_a_trickling_download(transport: str) -> None:
    term = FakeTerminal(attlog=records40(200))
    t0 = time.monotonic()
    with pytest.raises(ProtocolError, match="deadline passed"), \
            _session(term, transport, deadline=t0 + 1.5, peer_kw={"trickle_s": 0.005}) as s:
        s.read_punches()
    assert time.monotonic() - t0 < 6
    assert 1002 in term.seen  # the keypad was re-enabled after the deadline (cleanup is not bound by it)


def test_deadline_on_udp_stops_resending() -> None:
    term = FakeTerminal(attlog=records40(200))
    term.chunk_override = lambda start, length, rid: []  # never answers a chunk
    t0 = time.monotonic()
    with pytest.raises(ProtocolError, match="deadline passed"), \
            _session(term, "udp", deadline=t0 + 1.0, timeout_s=5.0) as s:
        s.read_punches()
    assert time.monotonic() - t0 < 4

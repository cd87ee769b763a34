"""Property-based fuzzing of every decoder in drivers/zk/ with replies generated from and mutated out of
the real captures (tests/drivers/captures/), issue 9 item 8.

Property: a decoder either returns a bounded result or raises one of the classified exceptions the
driver turns into a DriverError kind (drivers.zk.driver.translate) -- never struct.error, IndexError,
UnicodeDecodeError, MemoryError ... -- and nothing is read or allocated beyond the bound the caller
gave. About 110,000 examples in all (EXAMPLES per test), derandomized so a run is reproducible.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drivers.base import DriverError
from drivers.zk import records
from drivers.zk.driver import DatasetTooLarge, translate
from drivers.zk.frames import _TcpStream, checksum_ok
from drivers.zk.tcp import (
    MAX_PACKET,
    ChunkAssembler,
    DeadlineExceeded,
    TcpChannel,
    TcpFramingError,
    TcpRefused,
    parse_prefix,
)
from drivers.zk.udp import RttEstimator, UdpChannel, UdpCounters, UdpExchangeError, UdpRefused, _Attempt
from tests.drivers.captures import pyzk_captures as cap
from tests.support.zkwire import DATA, PREPARE_DATA, packet, records40

EXAMPLES = 7_000
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

#: What a decoder may raise: each is classified into a DriverError kind (translate(), or the session for
#: DatasetError).
CLASSIFIED = (records.DatasetError, TcpFramingError, TcpRefused, ConnectionResetError, TimeoutError,
              DeadlineExceeded, UdpExchangeError, UdpRefused, DatasetTooLarge)


def _classified(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except records.DatasetError:
        return None  # ZkSession._dataset_error makes it a ProtocolError naming the dataset
    except CLASSIFIED as exc:
        err = translate(exc, "fuzz", "tcp://fuzz:4370", [], None, 1.0)
        assert isinstance(err, DriverError) and err.kind in ("protocol_error", "unreachable", "busy")
        assert "unexpected reply" not in err.message  # the generic catch-all is for pyzk, not for us
        return None


# -- seeds from the captures ----------------------------------------------------------------------------

_STREAM = b"".join(cap.PYZK_TCP_USERS_CHUNK_READS)


def _packets(stream: bytes) -> list[bytes]:
    out, i = [], 0
    while i + 8 <= len(stream):
        n = struct.unpack_from("<I", stream, i + 4)[0]
        out.append(stream[i + 8:i + 8 + n])
        i += 8 + n
    return out


_PKTS = _packets(_STREAM)
_USER_DATASET = b"".join(p[8:] for p in _PKTS if struct.unpack_from("<H", p)[0] == DATA)
_REC40 = records40(6)
#: Chunk payload seeds: a PREPARE_DATA payload as captured (announcing 48), DATA pieces, empty.
_SMALL_PAYLOADS = [struct.pack("<II", 48, 1008), _PKTS[1][8:56], b"\x00" * 16, b""]
_T = 842_000_000
_REC16 = b"".join(struct.pack("<IIBB2xI", 100 + i, _T + i * 60, i % 2, 1, 0) for i in range(6))
_REC8 = b"".join(struct.pack("<HBIB", 1 + i, 1, _T + i * 60, 0) for i in range(6))
DATASETS = [_USER_DATASET[:400], struct.pack("<I", len(_REC40)) + _REC40, struct.pack("<I", len(_REC16)) + _REC16,
            struct.pack("<I", len(_REC8)) + _REC8, b"\x00\x00\x00\x00"]
SIZES = [cap.PYZK_TCP_SIZES_80[16:], cap.PYZK_TCP_SIZES_92[16:], cap.F18_SIZES_PAYLOAD_92, b"\x00" * 4,
         cap.F18_SIZES_PAYLOAD_92 + b"\x00" * 20]
EVENTS = [cap.EVENT_DATA_12, cap.EVENT_DATA_32, cap.EVENT_DATA_32 + b"\x00" * 4]
TCP_STREAMS = [_STREAM, cap.PYZK_TCP_SIZES_80, cap.PYZK_TCP_1503_STAT, cap.PYZK_TCP_SIZES_92]


@st.composite
def mutated(draw: st.DrawFn, seeds: list[bytes], max_extra: int = 64) -> bytes:
    """A capture with a few mutations: byte flips, truncation, insertions, extreme u32/u16 values."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(0, 4))):
        op = draw(st.integers(0, 5))
        pos = draw(st.integers(0, max(len(data), 1) - 1)) if data else 0
        if op == 0 and data:
            data[pos] ^= draw(st.integers(1, 255))
        elif op == 1:
            del data[draw(st.integers(0, len(data))):]
        elif op == 2:
            data[pos:pos] = draw(st.binary(max_size=max_extra))
        elif op == 3 and len(data) >= pos + 4:
            data[pos:pos + 4] = struct.pack("<I", draw(st.sampled_from([0, 1, 7, 1008, 65472, 0x7FFFFFFF,
                                                                      0xFFFFFFFF, draw(st.integers(0, 2**32 - 1))])))
        elif op == 4 and len(data) >= pos + 2:
            data[pos:pos + 2] = struct.pack("<H", draw(st.integers(0, 0xFFFF)))
        elif op == 5:
            data = bytearray(draw(st.binary(max_size=max_extra)))
    return bytes(data)


# -- records.py ------------------------------------------------------------------------------------------

@FUZZ
@given(mutated(DATASETS), st.integers(-1, 50), st.sampled_from([None, 8, 16, 40]))
def test_attendance_dataset_decoder(data: bytes, expected: int, hint: int | None) -> None:
    def run() -> None:
        log = records.decode_attendance(data, max(expected, 0), hint_size=hint, uid_map={1: "x"})
        assert len(log.punches) <= max(len(data) - 4, 0) // 8
        body = records.split_dataset(data)
        if len(body):
            size = records.choose_record_size(body, None if expected < 0 else expected, hint=hint)
            assert len(records.parse_records(body, size, uid_to_user_id=str)) == len(body) // size

    _classified(run)


@FUZZ
@given(mutated(DATASETS), st.integers(0, 80), st.sampled_from(["UTF-8", "latin-1", "gb2312"]))
def test_user_dataset_decoder(data: bytes, expected: int, encoding: str) -> None:
    def run() -> None:
        users, size = records.decode_users(data, expected, encoding=encoding)
        assert size in (0, 28, 72) and len(users) <= max(len(data) - 4, 0) // 28

    _classified(run)


@FUZZ
@given(mutated(SIZES, 120), mutated(EVENTS, 40))
def test_free_sizes_and_event_decoders(sizes: bytes, event: bytes) -> None:
    got = records.parse_free_sizes(sizes)  # never raises: a bad answer is a "problem", not an exception
    assert got.unreliable or (got.records >= 0 and got.users >= 0)
    _classified(lambda: records.decode_event(event))
    for size in records.RECORD_SIZES:
        records.record_evidence(sizes, size)


# -- tcp.py: the framing, the chunk assembly, a whole exchange over a scripted wire -----------------------

class _Wire:
    """Stands in for RecordingSocket: hands out the scripted bytes in the split given; then 'hung up'."""

    def __init__(self, data: bytes, split: int) -> None:
        self.data, self.split, self.pos = data, split, 0
        self.largest_recv = 0
        self.sent: list[bytes] = []

    def recv(self, n: int) -> bytes:
        self.largest_recv = max(self.largest_recv, n)
        if self.pos >= len(self.data):
            raise ConnectionResetError("device closed the connection")
        part = self.data[self.pos:self.pos + min(n, self.split)]
        self.pos += len(part)
        return part

    def send(self, data: bytes) -> int:
        self.sent.append(data)
        return len(data)

    def sendto(self, data: bytes, *_: object) -> int:
        return self.send(data)

    def settimeout(self, _v: float | None) -> None:
        pass

    def gettimeout(self) -> float | None:
        return 1.0


@FUZZ
@given(mutated(TCP_STREAMS, 128), st.integers(1, 2048), st.integers(8, MAX_PACKET))
def test_tcp_prefix_and_packet_reader(stream: bytes, split: int, max_len: int) -> None:
    wire = _Wire(stream, split)
    chan = TcpChannel(wire, timeout_s=1.0)  # type: ignore[arg-type]
    for _ in range(4):
        pkt = _classified(lambda: chan.read_packet(max_len, "fuzz"))
        if pkt is None:
            break
        assert 8 <= len(pkt) <= max_len
    assert wire.largest_recv <= 65536
    _classified(lambda: parse_prefix(stream[:8], max_len))


@FUZZ
@given(mutated(TCP_STREAMS, 128), st.integers(1, 4096), st.integers(1, 6000))
def test_tcp_dataset_read(stream: bytes, split: int, size: int) -> None:
    # Whatever the device sends in answer to the chunk requests, the result is exactly ``size`` bytes or
    # a classified error; the reader never asks the socket for more than one bounded read.
    wire = _Wire(stream, split)
    chan = TcpChannel(wire, timeout_s=1.0)  # type: ignore[arg-type]
    chan.echoes_reply_id = False
    got = _classified(lambda: chan.read_dataset(size))
    assert got is None or len(got) == size
    assert wire.largest_recv <= 65536


@FUZZ
@given(st.lists(st.tuples(st.sampled_from([PREPARE_DATA, DATA, 2000, 2001, 2003, 500]),
                          mutated(_SMALL_PAYLOADS, 16)), min_size=1, max_size=8),
       st.integers(0, 160))
def test_chunk_assembler(packets: list[tuple[int, bytes]], length: int) -> None:
    asm = ChunkAssembler(0, length)

    def run() -> None:
        for code, payload in packets:
            if asm.feed(code, payload):
                assert len(asm.data()) == length
                return
            assert asm.got <= (asm.announced or 0)

    _classified(run)


# -- udp.py: assembling a chunk from datagrams (packet counters, stale, mutated) ---------------------------

def _udp_channel() -> UdpChannel:
    chan = UdpChannel(_Wire(b"", 1), ("127.0.0.1", 4370), timeout_s=1.0, verify=True,  # type: ignore[arg-type]
                      rtt=RttEstimator(), counters=UdpCounters())
    chan.session_id = 0x3C5C
    chan.echoes_session = True
    return chan


# Small pieces (48 bytes) keep generation cheap; the captured packets keep their headers (counter sids).
_UDP_SEEDS = [packet(PREPARE_DATA, 0x3C5C, 7, struct.pack("<II", 96, 48)),
              packet(DATA, 0, 7, b"\x01" * 48), packet(DATA, 1, 7, b"\x02" * 48),
              packet(2000, 0x3C5C, 7), *[p[:56] for p in _PKTS]]


@FUZZ
@given(st.lists(mutated(_UDP_SEEDS, 16), min_size=1, max_size=6), st.integers(1, 200))
def test_udp_chunk_assembly(datagrams: list[bytes], length: int) -> None:
    chan = _udp_channel()
    att = _Attempt(0.0, length)

    def run() -> None:
        for pkt in datagrams:
            if len(pkt) < 8 or not chan._piece_ok(att, pkt):
                continue
            chan._take(att, pkt, 0)
            if att.complete:
                assert att.got == att.announced or att.got == length
                assert sum(map(len, att.pieces)) == att.got <= length
                return
            if att.failed:
                return

    _classified(run)


# -- frames.py: checksum and the recording socket's stream reassembly --------------------------------------

@FUZZ
@given(mutated(TCP_STREAMS, 128), st.integers(1, 512))
def test_recording_stream_reassembly(stream: bytes, split: int) -> None:
    framer = _TcpStream()
    out = 0
    for i in range(0, len(stream), split):
        for pkt in framer.feed(stream[i:i + split]):
            checksum_ok(pkt)
            out += len(pkt)
    assert out <= len(stream)

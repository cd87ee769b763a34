"""Exact-length TCP exchanges for the ZK driver: packets read by their declared sizes, chunks by PREPARE_DATA.

Flow: pyzk's ZK -> _HookedZK (driver.py) -> TcpChannel -> RecordingSocket (frames.py) -> device.
pyzk 0.9 reads each TCP reply with ONE ``recv()`` and its chunk reader calls ``recv()`` once per DATA
packet: real terminals split every 1504 chunk into 1008-byte DATA packets sent back to back
(fananimi/pyzk test.py capture, tests/drivers/captures/pyzk_captures.py), and with gaps of a few ms
the packets coalesce or split differently from what pyzk assumes, so pyzk and the old driver timed
out. Here every packet is read by the length in its 8-byte TCP prefix, however the bytes arrive (one
at a time, with any gap up to ``timeout_s``), and never more than that packet (``recv(n)`` with the
bytes still missing), so the socket stays in step with pyzk's own reads (live capture).

Rules (why in each place):

* Every length the device declares is bounded BEFORE it is read: a packet by ``max_len`` of the
  exchange (small for commands, the dataset bound for a direct 1503 answer), a chunk by the length
  asked for. Bytes are appended as they arrive, so a lying prefix costs only what was really sent.
* A reply carries the request's reply id (§1.4). After the device showed it echoes ids (its answer
  to CONNECT), a packet with another reply id is a leftover of an earlier exchange (a chunk's
  trailing ACK_OK, a late answer) and is skipped, never taken as this answer; realtime events
  (command 500) are skipped too. The DATA packets of a chunk carry a packet counter (0, 1, 2 ...) in
  the session field on real terminals: the session field is not checked on TCP (pyzk never does).
* ``deadline`` (monotonic) ends any wait, mid-packet included: a trickling device cannot hold a poll.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable
from dataclasses import dataclass

from drivers.zk.frames import RecordingSocket, checksum

MAGIC = b"\x50\x50\x82\x7d"
CMD_CONNECT = 1000
CMD_AUTH = 1102
CMD_REG_EVENT = 500
CMD_PREPARE_DATA = 1500
CMD_DATA = 1501
CMD_READ_BUFFER = 1504
CMD_ACK_OK = 2000
CMD_ACK_RETRY = 2003

#: Largest chunk asked for with one 1504 on TCP (pyzk's size, 0xFFC0; node-zklib parses its u16 length).
MAX_CHUNK = 65472
#: Largest packet accepted in an ordinary exchange: a whole chunk in one DATA packet, plus header and slack.
MAX_PACKET = MAX_CHUNK + 64
#: Packets skipped (stale reply ids, events) while waiting for one answer before giving up: a device
#: replaying old packets forever must not keep the session busy.
MAX_SKIPPED = 256
#: Largest single recv(): bounds the buffer a single read can allocate.
_RECV_MAX = 65536


class TcpFramingError(Exception):
    """The device's TCP stream does not follow the framing (no magic, impossible length, wrong order)."""


class DeadlineExceeded(TimeoutError):
    """The caller's deadline (the poll's) passed while waiting for the device."""


class TcpRefused(Exception):
    """The device answered a chunk request with an error code (``code``; 2003 = busy)."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def parse_prefix(prefix: bytes, max_len: int) -> int:
    """Length of the ZK packet announced by an 8-byte TCP prefix; raises TcpFramingError when invalid."""
    if len(prefix) != 8:
        raise TcpFramingError(f"TCP prefix of {len(prefix)} bytes")
    if prefix[:4] != MAGIC:
        raise TcpFramingError(f"no packet magic where a packet should start ({prefix[:4].hex(' ')})")
    (length,) = struct.unpack_from("<I", prefix, 4)
    if length < 8:
        raise TcpFramingError(f"TCP prefix announces a {length}-byte packet (a ZK header alone is 8)")
    if length > max_len:
        raise TcpFramingError(f"TCP prefix announces a {length}-byte packet; at most {max_len} expected here")
    return int(length)


def build_tcp_packet(command: int, session_id: int, reply_id: int, data: bytes) -> bytes:
    """Prefix + ZK packet with the standard checksum (what pyzk's cancelling quirks also produce)."""
    head = struct.pack("<4H", command, 0, session_id, reply_id) + data
    pkt = struct.pack("<4H", command, checksum(head), session_id, reply_id) + data
    return MAGIC + struct.pack("<I", len(pkt)) + pkt


@dataclass
class ChunkAssembler:
    """The answer to one 1504 request, packet by packet (pure: fuzzed on its own).

    Accepted orders: PREPARE_DATA(n) DATA... (sum n) [ACK_OK], or a bare DATA of exactly the length
    asked (pyzk accepts that form too). ``feed`` returns True once the chunk is complete.
    """

    start: int
    length: int
    announced: int | None = None
    got: int = 0
    prepared: bool = False

    def __post_init__(self) -> None:
        self.pieces: list[bytes] = []

    def feed(self, code: int, payload: bytes) -> bool:
        where = f"chunk at offset {self.start}"
        if code == CMD_PREPARE_DATA:
            if self.announced is not None:
                raise TcpFramingError(f"second PREPARE_DATA for the {where}")
            if len(payload) < 4:
                raise TcpFramingError(f"PREPARE_DATA of {len(payload)} bytes for the {where}")
            announced = int(struct.unpack_from("<I", payload)[0])
            if announced != self.length:
                raise TcpFramingError(f"asked for {self.length} bytes at offset {self.start}, "
                                      f"PREPARE_DATA announced {announced}")
            self.announced, self.prepared = announced, True
            return announced == 0
        if code == CMD_DATA:
            if self.announced is None:
                # Bare DATA answer (no PREPARE_DATA): only a whole chunk in one packet is unambiguous.
                if len(payload) != self.length:
                    raise TcpFramingError(f"DATA of {len(payload)} bytes without PREPARE_DATA for the "
                                          f"{where} of {self.length} bytes")
                self.announced = self.length
            if self.got + len(payload) > self.announced:
                raise TcpFramingError(f"{self.got + len(payload)} bytes for the {where}, "
                                      f"PREPARE_DATA announced {self.announced}")
            self.pieces.append(payload)
            self.got += len(payload)
            return self.got == self.announced
        if code == CMD_ACK_OK:
            raise TcpFramingError(f"ACK_OK after {self.got} of {self.announced} bytes of the {where}")
        raise TcpRefused(f"device refused the {where} (reply code {code})", code)

    def data(self) -> bytes:
        return b"".join(self.pieces)


class TcpChannel:
    """Request/answer over pyzk's TCP socket, reading exactly the declared sizes; one per connection.

    ``reply_id`` is pyzk's counter (the last reply id used); driver.py copies it in and out.
    """

    def __init__(self, wire: RecordingSocket, *, timeout_s: float, deadline: float | None = None) -> None:
        self.wire = wire
        self.timeout_s = timeout_s
        self.deadline = deadline
        self.session_id = 0
        self.reply_id = 0
        #: Whether the device echoes reply ids (learnt from its CONNECT answer); None = not known yet.
        self.echoes_reply_id: bool | None = None

    # -- plumbing ----------------------------------------------------------------------------
    def _send(self, command: int, data: bytes) -> int:
        self.reply_id = (self.reply_id + 1) % 0xFFFF
        self.wire.send(build_tcp_packet(command, self.session_id, self.reply_id, data))
        return self.reply_id

    def send_only(self, command: int, data: bytes = b"") -> None:
        """Send one request whose answer nobody waits for (CMD_EXIT before closing the socket)."""
        self._send(command, data)

    def _read_exact(self, n: int, what: str) -> bytes:
        """``n`` bytes, however they arrive; each wait is at most ``timeout_s`` and ends at the deadline."""
        buf = bytearray()
        while len(buf) < n:
            wait = self.timeout_s
            if self.deadline is not None:
                left = self.deadline - time.monotonic()
                if left <= 0:
                    raise DeadlineExceeded(f"deadline passed during {what} ({len(buf)} of {n} bytes of a packet)")
                wait = min(wait, left)
            self.wire.settimeout(wait)
            try:
                part = self.wire.recv(min(n - len(buf), _RECV_MAX))
            except TimeoutError:
                if self.deadline is not None and time.monotonic() >= self.deadline:
                    raise DeadlineExceeded(
                        f"deadline passed during {what} ({len(buf)} of {n} bytes of a packet)") from None
                raise
            buf += part  # (an empty read raises ConnectionResetError in RecordingSocket)
        return bytes(buf)

    def read_packet(self, max_len: int, what: str) -> bytes:
        """The next ZK packet (header included, prefix stripped), bounded by ``max_len``."""
        length = parse_prefix(self._read_exact(8, what), max_len)
        return self._read_exact(length, what)

    # -- exchanges ---------------------------------------------------------------------------
    def request(self, command: int, data: bytes = b"", max_len: int = MAX_PACKET) -> bytes:
        """Send ``command``; return its answer packet (header included)."""
        saved = self.wire.gettimeout()
        try:
            rid = self._send(command, data)
            return self._answer(rid, max_len, f"command {command}", learn=command == CMD_CONNECT)
        finally:
            self.wire.settimeout(saved)

    def _answer(self, rid: int, max_len: int, what: str, learn: bool = False) -> bytes:
        for _ in range(MAX_SKIPPED):
            pkt = self.read_packet(max_len, what)
            code, _chk, _sid, got_rid = struct.unpack_from("<4H", pkt)
            if code == CMD_REG_EVENT:
                continue  # a realtime event, never an answer
            if learn:
                self.echoes_reply_id = got_rid == rid
                return pkt
            if self.echoes_reply_id and got_rid != rid:
                continue  # leftover of an earlier exchange (e.g. a chunk's trailing ACK_OK)
            return pkt
        raise TcpFramingError(f"{MAX_SKIPPED} packets without an answer to {what}")

    def read_dataset(self, size: int, on_chunk: Callable[[int], None] | None = None) -> bytes:
        """All ``size`` bytes of a dataset prepared by 1503, chunk by chunk (the caller bounded ``size``)."""
        return self.read_range(0, size, on_chunk)

    def read_range(self, start: int, end: int, on_chunk: Callable[[int], None] | None = None) -> bytes:
        """Bytes ``start`` to ``end`` of a dataset prepared by 1503, in 1504 chunks from ``start``.

        1504 takes any start offset and length (pyzk's read_with_buffer asks for its chunks at running
        offsets, fact sheet §2.8), so a tail read asks only for the bytes it needs. ``on_chunk(n)`` is
        told the bytes received so far after each chunk.
        """
        out = bytearray()
        saved = self.wire.gettimeout()
        try:
            while start + len(out) < end:
                at = start + len(out)
                out += self._read_chunk(at, min(MAX_CHUNK, end - at))
                if on_chunk is not None:
                    on_chunk(len(out))
        finally:
            self.wire.settimeout(saved)
        return bytes(out)

    def _read_chunk(self, start: int, length: int) -> bytes:
        rid = self._send(CMD_READ_BUFFER, struct.pack("<ii", start, length))
        what = f"chunk at offset {start}"
        asm = ChunkAssembler(start, length)
        # PREPARE_DATA and ACK_OK are 8-16 bytes; a DATA packet holds at most the chunk.
        pkt = self._answer(rid, length + 64, what)
        while True:
            code = int(struct.unpack_from("<H", pkt)[0])
            if code == CMD_ACK_RETRY:
                raise TcpRefused(f"device busy (ACK_RETRY) for the {what}", code)
            if asm.feed(code, pkt[8:]):
                break
            pkt = self._answer(rid, length + 64, what)
        if asm.prepared:
            # Real terminals end a prepared chunk with ACK_OK: consume it so the stream stays in step
            # even with a firmware that does not echo reply ids.
            tail = self._answer(rid, 64, what)
            code = int(struct.unpack_from("<H", tail)[0])
            if code != CMD_ACK_OK:
                raise TcpFramingError(f"reply code {code} instead of ACK_OK after the {what}")
        return asm.data()


__all__ = [
    "MAX_CHUNK", "MAX_PACKET", "ChunkAssembler", "DeadlineExceeded", "TcpChannel", "TcpFramingError", "TcpRefused",
    "build_tcp_packet", "parse_prefix",
]

"""Tiny fake ZK terminals that frame their answers like real units (for drivers/zk tests only).

Not the simulator (simulators/ has its own codec and its own framing options): these peers exist to
reproduce, byte for byte, what public captures of real terminals show (tests/drivers/captures/):
1504 chunks split into 1008-byte DATA packets whose session field is a packet counter, sent with
gaps, or one byte at a time; GET_FREE_SIZES variants; replayed captured packets. Loopback only;
every peer is a context manager that stops its thread and closes its socket.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType

MAGIC = b"\x50\x50\x82\x7d"
ACK_OK, ACK_ERROR, PREPARE_DATA, DATA = 2000, 2001, 1500, 1501


def zk_checksum(buf: bytes) -> int:
    """§1.2 over a packet whose checksum field is zero."""
    if len(buf) % 2:
        buf += b"\x00"
    total = 0
    for (w,) in struct.iter_unpack("<H", buf):
        total += w
        if total > 0xFFFF:
            total = (total & 0xFFFF) + (total >> 16)
    return 0xFFFF - total


def packet(code: int, session: int, reply_id: int, data: bytes = b"") -> bytes:
    head = struct.pack("<4H", code, 0, session, reply_id) + data
    return struct.pack("<4H", code, zk_checksum(head), session, reply_id) + data


def with_reply_id(pkt: bytes, reply_id: int) -> bytes:
    """A captured packet re-addressed to another reply id (checksum recomputed, all else kept)."""
    code, _c, sid, _r = struct.unpack_from("<4H", pkt)
    return packet(code, sid, reply_id, pkt[8:])


def encode_time(y: int, mo: int, d: int, h: int, mi: int, s: int) -> int:
    return ((y % 100) * 12 * 31 + (mo - 1) * 31 + d - 1) * 86400 + (h * 60 + mi) * 60 + s


def sizes_payload(users: int, records: int, users_cap: int = 3000, rec_cap: int = 100000) -> bytes:
    f = [0] * 23
    f[4], f[6], f[8], f[14], f[15], f[16] = users, 0, records, 3000, users_cap, rec_cap
    return struct.pack("<23i", *f)


def records40(n: int, start_user: int = 1000) -> bytes:
    """``n`` 40-byte attendance records with valid times and numeric user ids."""
    out = bytearray()
    for i in range(n):
        uid = i % 500 + 1
        t = encode_time(2026, 11, 1 + i % 28, 7 + i % 10, i % 60, i % 60)
        out += struct.pack("<H24sBIB8s", uid, str(start_user + uid).encode(), 1, t, i % 2, b"\0\0\0\0\xff\0\0\0")
    return bytes(out)


@dataclass
class FakeTerminal:
    """Answers the commands the driver sends. ``chunk_packets`` builds the answer to one 1504."""

    serial: str = "FAKE0001"
    session: int = 0x3C5C
    attlog: bytes = b""  # attendance record bytes (dataset = u32 count + these)
    users: bytes = b""
    sizes: bytes | None = None  # GET_FREE_SIZES payload; None = derived from the data
    user_size: int = 72
    record_size: int = 40
    piece: int = 1008  # DATA payload per packet in a chunk answer
    counter_sessions: bool = True  # real terminals: DATA session field = 0, 1, 2 ...
    attlog_stat_size: int | None = None  # lie about the dataset size in the 1503 answer
    chunk_override: Callable[[int, int, int], list[bytes]] | None = None
    seen: list[int] = field(default_factory=list)
    _dataset: bytes = b""

    def dataset(self, fct_users: bool) -> bytes:
        body = self.users if fct_users else self.attlog
        return struct.pack("<I", len(body)) + body

    def answer(self, code: int, rid: int, data: bytes) -> list[bytes]:
        self.seen.append(code)
        s = self.session
        if code == 1000:
            return [packet(ACK_OK, s, rid)]
        if code == 11:
            key = data.split(b"\x00", 1)[0]
            value = {b"~SerialNumber": self.serial.encode()}.get(key, b"x")
            return [packet(ACK_OK, s, rid, key + b"=" + value + b"\x00")]
        if code == 1100:
            return [packet(ACK_OK, s, rid, b"Ver 6.60 Apr 28 2017\x00")]
        if code == 201:
            return [packet(ACK_OK, s, rid, struct.pack("<I", encode_time(2026, 12, 1, 8, 0, 0)))]
        if code == 50:
            payload = self.sizes if self.sizes is not None else sizes_payload(
                len(self.users) // self.user_size, len(self.attlog) // self.record_size)
            return [packet(ACK_OK, s, rid, payload)]
        if code == 1503:
            _one, _table, fct, _ext = struct.unpack("<bhii", data)
            self._dataset = self.dataset(fct == 5)
            size = len(self._dataset) if self.attlog_stat_size is None or fct == 5 else self.attlog_stat_size
            return [packet(ACK_OK, s, rid, b"\x00" + struct.pack("<II", size, size) + b"\xcd\xef\x23\x00")]
        if code == 1504:
            start, length = struct.unpack("<ii", data)
            if self.chunk_override is not None:
                return self.chunk_override(start, length, rid)
            return self.chunk_packets(self._dataset[start:start + length], length, rid)
        return [packet(ACK_OK, s, rid)]

    def chunk_packets(self, chunk: bytes, length: int, rid: int) -> list[bytes]:
        out = [packet(PREPARE_DATA, self.session, rid, struct.pack("<II", length, self.piece))]
        for n, i in enumerate(range(0, len(chunk), self.piece)):
            sid = n if self.counter_sessions else self.session
            out.append(packet(DATA, sid, rid, chunk[i:i + self.piece]))
        out.append(packet(ACK_OK, self.session, rid))
        return out


class _Peer:
    def __enter__(self) -> _Peer:
        return self

    def __exit__(self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self._stop.set()
        self.sock.close()
        self.thread.join(5)

    sock: socket.socket
    thread: threading.Thread
    _stop: threading.Event


class TcpPeer(_Peer):
    """One-connection-at-a-time TCP terminal. ``split``: bytes per send() of a multi-packet answer
    (None = one send per packet); ``gap_s``: pause between those sends; ``trickle_s``: pause between
    single bytes of chunk answers (a hostile slow device)."""

    def __init__(self, term: FakeTerminal, *, split: int | None = None, gap_s: float = 0.0,
                 trickle_s: float = 0.0, raw_replies: dict[int, bytes] | None = None,
                 fixed_reply_id: int | None = None) -> None:
        self.term = term
        #: Answer every request with this reply id (firmware that does not echo ids; pyzk's mocks).
        self.fixed_reply_id = fixed_reply_id
        self.split, self.gap_s, self.trickle_s = split, gap_s, trickle_s
        #: code -> raw bytes sent instead of the answer (prefix included; hostile replies)
        self.raw_replies = raw_replies or {}
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            with conn:
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                conn.settimeout(0.2)
                try:
                    self._talk(conn)
                except OSError:
                    pass

    def _read(self, conn: socket.socket, n: int) -> bytes | None:
        buf = b""
        while len(buf) < n:
            if self._stop.is_set():
                return None
            try:
                part = conn.recv(n - len(buf))
            except TimeoutError:
                continue
            if not part:
                return None
            buf += part
        return buf

    def _talk(self, conn: socket.socket) -> None:
        while True:
            head = self._read(conn, 8)
            if head is None:
                return
            pkt = self._read(conn, struct.unpack_from("<I", head, 4)[0])
            if pkt is None:
                return
            code, _c, _s, rid = struct.unpack_from("<4H", pkt)
            if code in self.raw_replies:
                conn.sendall(self.raw_replies[code])
                continue
            answers = self.term.answer(code, rid, pkt[8:])
            if self.fixed_reply_id is not None:
                answers = [with_reply_id(a, self.fixed_reply_id) for a in answers]
            stream = b"".join(MAGIC + struct.pack("<I", len(a)) + a for a in answers)
            if code == 1504 and self.trickle_s:
                for i in range(len(stream)):
                    if self._stop.is_set():
                        return
                    conn.sendall(stream[i:i + 1])
                    time.sleep(self.trickle_s)
            elif code == 1504 and self.split:
                for i in range(0, len(stream), self.split):
                    conn.sendall(stream[i:i + self.split])
                    if self.gap_s:
                        time.sleep(self.gap_s)
            elif code == 1504 and self.gap_s:
                for a in answers:
                    conn.sendall(MAGIC + struct.pack("<I", len(a)) + a)
                    time.sleep(self.gap_s)
            else:
                conn.sendall(stream)
            if code == 1001:
                return


class UdpPeer(_Peer):
    """UDP terminal: every answer packet one datagram (DATA pieces of ``term.piece`` ≤ 1024 bytes).
    ``stale(reply_id)``: datagrams sent before each 1504 answer (late answers of an earlier connection)."""

    def __init__(self, term: FakeTerminal, stale: Callable[[int], list[bytes]] | None = None) -> None:
        self.term = term
        self.stale = stale
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                pkt, addr = self.sock.recvfrom(65536)
            except (TimeoutError, OSError):
                continue
            code, _c, _s, rid = struct.unpack_from("<4H", pkt)
            try:
                if code == 1504 and self.stale is not None:
                    for junk in self.stale(rid):
                        self.sock.sendto(junk, addr)
                for a in self.term.answer(code, rid, pkt[8:]):
                    self.sock.sendto(a, addr)
            except OSError:
                return

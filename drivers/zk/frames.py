"""Wire recorder for the ZK driver: last N raw frames per device, reply checksums, byte counting.

Flow: ZkDriver hands pyzk a ``RecordingSocket`` instead of its plain socket (driver.py hooks pyzk's
socket factory); every send/recv passes through here. On a ProtocolError the driver attaches
``FrameRing.snapshot()`` so the operator sees what the device actually said (pymodbus idea).
pyzk never verifies the checksum of a reply, so a corrupted DATA packet would silently become
wrong punches; here every received packet is reassembled (TCP) or taken whole (UDP) and its
checksum checked, and the driver refuses a download during which any check failed.
Secrets never enter the ring: the payload of CMD_AUTH (derived from the comm key) is redacted.
Independent of pyzk (only the socket methods pyzk calls are wrapped).
"""

from __future__ import annotations

import errno
import socket
import struct
import threading
from collections import deque
from typing import Any

_CMD_AUTH = 1102
_TCP_MAGIC = b"\x50\x50\x82\x7d"


class FrameRing:
    """Thread-safe ring of the last ``size`` frames, shown as ``"tx|rx <hex>"`` strings, each truncated.

    A frame is kept as its first ``max_bytes`` bytes (secrets already blanked) and its length; the hex text
    is made only when someone asks (``snapshot``): a download passes thousands of frames through here.
    """

    def __init__(self, size: int = 32, max_bytes: int = 96) -> None:
        self._frames: deque[tuple[str, bytes, int]] = deque(maxlen=size)
        self._max_bytes = max_bytes
        self._lock = threading.Lock()

    def add(self, direction: str, data: bytes, tcp: bool) -> None:
        """Record one frame (a send or a recv chunk)."""
        # Blanking the prefix gives the prefix of the blanked frame (the header is never blanked).
        shown = _redact(bytes(data[: self._max_bytes]), tcp)
        with self._lock:
            self._frames.append((direction, shown, len(data)))

    def snapshot(self) -> list[str]:
        """Copy of the frames, oldest first."""
        with self._lock:
            frames = list(self._frames)
        out = []
        for direction, shown, length in frames:
            text = shown.hex(" ")
            if length > len(shown):
                text += f" ...(+{length - len(shown)} bytes)"
            out.append(f"{direction} {text}")
        return out

    def clear(self) -> None:
        """Forget all frames."""
        with self._lock:
            self._frames.clear()


def _redact(data: bytes, tcp: bool) -> bytes:
    """Blank the CMD_AUTH payload: with the session id it would reveal most of the comm key."""
    off = 8 if tcp and data[:4] == _TCP_MAGIC else 0
    if len(data) >= off + 8 and struct.unpack_from("<H", data, off)[0] == _CMD_AUTH:
        return data[: off + 8] + b"\x00" * (len(data) - off - 8)
    return data


def checksum(packet: bytes | bytearray | memoryview) -> int:
    """ZK checksum (§1.2) of a packet whose checksum field (bytes 2-3) is read as zero.

    The ones'-complement sum of the little-endian 16-bit words is the sum modulo 0xFFFF (65536 is 1
    modulo 65535), so the whole packet is read as one integer and reduced once, in C: a multi-megabyte
    direct answer costs milliseconds instead of a Python loop over millions of words. The word-by-word
    fold (``_checksum_by_words``) decides the one ambiguous case (a sum of 0 modulo 0xFFFF).
    """
    buf = bytes(packet)
    if len(buf) < 4:
        return _checksum_by_words(buf)
    # An odd trailing byte is the low byte of a zero-padded word: same value, no padding needed.
    residue = (int.from_bytes(buf, "little") - ((buf[2] | buf[3] << 8) << 16)) % 0xFFFF
    if residue == 0:
        return _checksum_by_words(buf)  # 0x0000 vs 0xFFFF depends on whether the sum is 0
    return 0xFFFF - residue


def _checksum_by_words(buf: bytes) -> int:
    """The checksum as the fact sheet states it: sum the words, fold the carries, complement."""
    if len(buf) % 2:
        buf += b"\x00"
    words = memoryview(buf).cast("H")  # LE hosts only, like pyzk itself ('H' without '<')
    total = sum(words) - (words[1] if len(words) > 1 else 0)
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return 0xFFFF - total


def checksum_ok(packet: bytes | bytearray | memoryview) -> bool:
    """True when the stored checksum matches (0x0000 and 0xFFFF are the same ones'-complement value)."""
    if len(packet) < 8:
        return False
    stored = int(struct.unpack_from("<H", packet, 2)[0])
    return (checksum(packet) - stored) % 0xFFFF == 0


class _TcpStream:
    """Reassembles the device's TCP stream into ZK packets, however pyzk slices its recv() calls."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.need: int | None = None  # length of the packet being collected, None = expecting a prefix
        self.desync = False

    def feed(self, data: bytes) -> list[bytes]:
        if self.desync:
            return []
        self.buf += data
        out: list[bytes] = []
        while True:
            if self.need is None:
                if len(self.buf) < 8:
                    return out
                if self.buf[:4] != _TCP_MAGIC:
                    self.desync = True  # cannot find packet boundaries any more
                    self.buf.clear()
                    return out
                self.need = int(struct.unpack_from("<I", self.buf, 4)[0])
                del self.buf[:8]
            if len(self.buf) < self.need:
                return out
            out.append(bytes(self.buf[: self.need]))
            del self.buf[: self.need]
            self.need = None


def reply_code(frame: bytes, tcp: bool) -> int | None:
    """Command/reply code of a raw frame, None when too short to tell."""
    off = 8 if tcp else 0
    if len(frame) < off + 2:
        return None
    if tcp and frame[:4] != _TCP_MAGIC:
        return None
    return int(struct.unpack_from("<H", frame, off)[0])


class RecordingSocket:
    """Wraps the socket pyzk uses: records frames, counts received bytes, fixes two pyzk hazards.

    1. pyzk ignores the result of ``connect_ex`` (it then fails later with a misleading "Broken pipe");
       here a refused/unreachable TCP connect raises the real OSError at once.
    2. On TCP, pyzk's raw-data loop calls ``recv`` until it has the announced size; a device that
       closes the connection makes ``recv`` return b"" forever and pyzk spins. An empty TCP read
       raises ConnectionResetError instead.
    """

    def __init__(self, sock: socket.socket, ring: FrameRing, tcp: bool, verify: bool = True) -> None:
        self._sock = sock
        self._ring = ring
        self._tcp = tcp
        self._verify = verify
        self._stream = _TcpStream() if tcp else None
        #: Bytes received on the wire through this socket (headers included).
        self.bytes_read = 0
        #: Reply code of the last frame that started with a ZK header (for Busy/ACK_RETRY detection).
        self.last_reply_code: int | None = None
        #: Received packets whose checksum was wrong (only counted when verifying).
        self.checksum_errors = 0
        #: Received packets whose checksum was checked.
        self.packets_checked = 0
        #: Packets sent (requests, re-sends included).
        self.packets_sent = 0

    @property
    def framing_lost(self) -> bool:
        """True once the TCP stream stopped making sense (no magic where a packet should start)."""
        return self._stream is not None and self._stream.desync

    def _check(self, data: bytes) -> None:
        if not self._verify:
            return
        packets = self._stream.feed(data) if self._stream is not None else [data]
        for pkt in packets:
            self.packets_checked += 1
            if not checksum_ok(pkt):
                self.checksum_errors += 1

    # -- the methods pyzk calls ----------------------------------------------------------------
    def connect_ex(self, address: Any) -> int:
        """Connect; raise the real error instead of returning a code pyzk would ignore."""
        rc = self._sock.connect_ex(address)
        if rc in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINPROGRESS, errno.ETIMEDOUT):
            # connect_ex on a socket with a timeout reports a timeout as EAGAIN ("Resource
            # temporarily unavailable"): say what it is, so it reads as "no answer".
            raise TimeoutError(rc, f"TCP connect to {address[0]}:{address[1]} timed out")
        if rc != 0:
            raise OSError(rc, f"{_strerror(rc)} ({address[0]}:{address[1]})")
        return rc

    def send(self, data: bytes, *args: Any) -> int:
        """Record, then send."""
        self._ring.add("tx", bytes(data), self._tcp)
        self.packets_sent += 1
        return self._sock.send(data, *args)

    def sendto(self, data: bytes, *args: Any) -> int:
        """Record, then send a datagram."""
        self._ring.add("tx", bytes(data), self._tcp)
        self.packets_sent += 1
        return self._sock.sendto(data, *args)

    def recv(self, bufsize: int, *args: Any) -> bytes:
        """Receive, record and count; an empty TCP read means the device hung up."""
        data = self._sock.recv(bufsize, *args)
        if not data and self._tcp and bufsize > 0:
            self._ring.add("rx", b"", self._tcp)
            raise ConnectionResetError("device closed the connection")
        self.bytes_read += len(data)
        self._ring.add("rx", data, self._tcp)
        self._check(data)
        code = reply_code(data, self._tcp)
        if code is not None:
            self.last_reply_code = code
        return data

    def settimeout(self, value: float | None) -> None:
        """Forward."""
        self._sock.settimeout(value)

    def close(self) -> None:
        """Close the real socket (idempotent)."""
        self._sock.close()

    def __getattr__(self, name: str) -> Any:
        # Anything else pyzk might touch goes to the real socket unchanged.
        return getattr(self._sock, name)


def _strerror(rc: int) -> str:
    import os

    try:
        return os.strerror(rc)
    except ValueError:
        return f"errno {rc}"

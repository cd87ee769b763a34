"""Loss-tolerant UDP exchanges for the ZK driver: retried requests and a buffered read that re-asks lost chunks.

Flow: pyzk's ZK -> _HookedZK (driver.py) -> UdpChannel -> RecordingSocket (frames.py) -> device.
pyzk 0.9 reads every UDP reply with a single ``recv()`` and never sends anything twice: one lost
datagram fails the command, and its chunk reader (1503/1504/1502, docs/drivers/zk.md "Downloading a table") cannot
re-request a lost DATA piece, so on a link losing 2 % of datagrams most downloads of a few
thousand records fail -- every poll the same way. On UDP the driver therefore replaces pyzk's
``__send_command`` and ``read_with_buffer`` with this module, keeping pyzk's session id and reply
id counter (driver.py copies them in and out), so every other pyzk method works unchanged.

Rules this module keeps (why in each place):

* Each (re)sent request carries a NEW reply id; the device echoes it in every packet of its answer
  (§1.4). A datagram whose reply id belongs to no request of the current exchange is a late or
  duplicated answer to something earlier: it is discarded, never used.
* Real terminals put a packet counter (0, 1, 2 ...) in the session field of a chunk's DATA pieces:
  a piece is taken when that field is the session id or the next counter value of its attempt
  (``_piece_ok``); any other session id is an earlier connection's late answer and is dropped.
* A chunk (1504) answer -- PREPARE_DATA, DATA pieces, ACK_OK -- is assembled per reply id, so
  pieces of two attempts are never mixed. A piece byte-identical to one already taken for that
  attempt is a network duplicate and is dropped. A chunk is accepted only when PREPARE_DATA
  announced exactly the requested length and exactly that many bytes arrived.
* Only idempotent commands are re-sent (reads, CONNECT/AUTH, DISABLE/ENABLE, 1503/1504/1502).
  CLEAR_ATTLOG, SET_TIME, user writes, EXIT ... go out once, as in pyzk.
* Waits follow an adaptive retransmission timeout (RFC 6298 style, measured per driver) that
  grows by half after each unanswered attempt. An exchange gives up when nothing belonging to it has
  been heard for ``timeout_s`` (the same bound as one unanswered request before) or after
  ``MAX_ATTEMPTS`` attempts; never with partial data.
* After a failed chunk attempt the next request asks for the same start offset with half the
  length (down to one 1024-byte piece), so a lossy link converges on small requests that get
  through; after a run of clean chunks the size grows back to the maximum.
"""

from __future__ import annotations

import random
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from drivers.zk.frames import RecordingSocket, checksum, checksum_ok
from drivers.zk.tcp import DeadlineExceeded

CMD_CONNECT = 1000
CMD_EXIT = 1001
CMD_ENABLEDEVICE = 1002
CMD_DISABLEDEVICE = 1003
CMD_AUTH = 1102
CMD_GET_VERSION = 1100
CMD_OPTIONS_RRQ = 11
CMD_GET_FREE_SIZES = 50
CMD_CANCELCAPTURE = 62
CMD_STARTVERIFY = 60
CMD_GET_PINWIDTH = 69
CMD_GET_TIME = 201
CMD_REG_EVENT = 500
CMD_PREPARE_DATA = 1500
CMD_DATA = 1501
CMD_FREE_DATA = 1502
CMD_PREPARE_BUFFER = 1503
CMD_READ_BUFFER = 1504
CMD_ACK_OK = 2000
CMD_ACK_RETRY = 2003

#: Commands that may be sent again when their answer does not come: asking twice has the same
#: effect as asking once. Everything else (clearing the log, setting the clock, writing users,
#: EXIT, RESTART, ...) is sent once, as pyzk does.
RETRY_SAFE = frozenset({
    CMD_CONNECT, CMD_AUTH, CMD_ENABLEDEVICE, CMD_DISABLEDEVICE, CMD_GET_VERSION, CMD_OPTIONS_RRQ,
    CMD_GET_FREE_SIZES, CMD_GET_PINWIDTH, CMD_GET_TIME, CMD_REG_EVENT, CMD_CANCELCAPTURE,
    CMD_STARTVERIFY, CMD_PREPARE_BUFFER, CMD_READ_BUFFER, CMD_FREE_DATA,
})

#: A device sends a 1504 answer over UDP in DATA pieces of at most 1024 bytes (§1.6).
PIECE = 1024
#: Largest chunk asked for with one 1504: pyzk's UDP size (16 pieces), proven on real terminals.
MAX_CHUNK = 16 * PIECE
#: Consecutive clean chunks after which the chunk size doubles again (up to the maximum).
GROW_AFTER = 4
#: Attempts per exchange (first send included). With the halving chunk size, a chunk is down to one
#: piece by the 5th attempt; at 10 % loss a one-piece attempt succeeds 73 % of the time, so 10
#: attempts fail a chunk about once in 10^5 chunks, while a device that answers but always short
#: (a firmware bug, not loss) fails in well under a second.
MAX_ATTEMPTS = 10
#: Largest datagram: read whole datagrams (pyzk reads 8..1032 bytes and silently truncates).
_RECV = 65536
#: Floor of the retransmission timeout. Loss costs about one RTO per lost request, so the floor
#: sets the price of loss on a fast LAN; below it, a device pausing for a flash read would get
#: needless repeats (harmless: its late answer is still used, the repeat's answer dropped).
MIN_RTO_S = 0.1
#: Retransmission timeout before any round trip was measured.
INITIAL_RTO_S = 1.0
#: Growth of the retransmission timeout after each unanswered attempt. Gentler than TCP's doubling:
#: the traffic is a few tiny datagrams (no congestion to back off from), and a gentler curve fits
#: more attempts into ``timeout_s`` (10 s: 8 attempts instead of 6), which is what rides out loss.
BACKOFF = 1.5


class UdpNoAnswer(TimeoutError):
    """Nothing belonging to an exchange arrived for ``timeout_s`` (after re-sending)."""

    def __init__(self, message: str, timeout_s: float, attempts: int) -> None:
        super().__init__(message)
        self.timeout_s = timeout_s
        self.attempts = attempts


class UdpExchangeError(Exception):
    """The device answered, but never a usable answer (always incomplete, corrupt, refused)."""


class UdpRefused(UdpExchangeError):
    """The device answered a chunk request with an error code (``code``)."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class UdpCounters:
    """What loss cost; kept on the driver across sessions (ZkStats.udp)."""

    #: Requests sent again (lost request or reply, incomplete chunk).
    resends: int = 0
    #: Datagrams thrown away: reply id of an earlier exchange, events, too short to parse.
    stale: int = 0
    #: DATA pieces identical to one already taken for the same attempt (network duplicates).
    duplicates: int = 0
    #: Chunks (1504) completed.
    chunks: int = 0

    def add(self, name: str, n: int = 1) -> None:
        # One module-wide lock rather than a field: keeps the dataclass copyable (asdict, deepcopy).
        with _COUNTERS_LOCK:
            setattr(self, name, getattr(self, name) + n)


_COUNTERS_LOCK = threading.Lock()


class RttEstimator:
    """Smoothed round-trip time and retransmission timeout (RFC 6298 §2), per driver.

    Samples are unambiguous (Karn's problem does not arise): each attempt has its own reply id, so
    the answer tells which send it belongs to.
    """

    def __init__(self) -> None:
        self.srtt: float | None = None
        self.rttvar = 0.0
        self._lock = threading.Lock()

    def sample(self, rtt: float) -> None:
        with self._lock:
            if self.srtt is None:
                self.srtt, self.rttvar = rtt, rtt / 2
            else:
                self.rttvar = 0.75 * self.rttvar + 0.25 * abs(self.srtt - rtt)
                self.srtt = 0.875 * self.srtt + 0.125 * rtt

    def rto(self, cap: float) -> float:
        with self._lock:
            base = INITIAL_RTO_S if self.srtt is None else self.srtt + 4 * self.rttvar
        return min(max(base, MIN_RTO_S), cap)


def next_reply_id(reply_id: int) -> int:
    """pyzk's counter (§1.4): +1, wrapping to 0 at 65535 (which is never used)."""
    return (reply_id + 1) % 0xFFFF


def build_packet(command: int, session_id: int, reply_id: int, data: bytes) -> bytes:
    """A request with the standard checksum (what pyzk's two cancelling quirks also produce)."""
    head = struct.pack("<4H", command, 0, session_id, reply_id) + data
    return struct.pack("<4H", command, checksum(head), session_id, reply_id) + data


@dataclass
class _Attempt:
    """The answer to one 1504 request (one reply id), as it arrives."""

    sent_at: float
    length: int
    announced: int | None = None
    pieces: list[bytes] = field(default_factory=list)
    seen: set[bytes] = field(default_factory=set)
    got: int = 0
    acked: bool = False
    busy: bool = False
    #: Evidence that this answer arrived out of order (DATA before PREPARE_DATA or after ACK_OK).
    #: Pieces carry no offset, so an answer known to be reordered can never be assembled.
    disordered: bool = False
    #: When the first datagram of this answer arrived (for the round-trip estimate).
    first_at: float | None = None

    @property
    def heard(self) -> bool:
        return self.first_at is not None

    @property
    def complete(self) -> bool:
        if self.disordered:
            return False
        # ACK_OK is not needed: PREPARE_DATA said how much comes, and that much came. A lost ACK_OK
        # then costs nothing; a late one carries this attempt's reply id and is discarded later.
        if self.announced is not None:
            return self.got == self.announced
        # PREPARE_DATA lost, but a chunk of at most one piece that arrived as exactly one piece of
        # exactly the requested length cannot be in the wrong order or short: take it.
        return self.length <= PIECE and len(self.pieces) == 1 and self.got == self.length

    @property
    def failed(self) -> bool:
        # The device finished (ACK_OK) without the announced bytes, or sent more than announced.
        over = self.announced is not None and self.got > self.announced
        return over or self.disordered or (self.acked and not self.complete)

    def describe(self) -> str:
        if self.busy:
            return "device busy (ACK_RETRY)"
        if self.disordered:
            return "datagrams out of order"
        ann = "no PREPARE_DATA" if self.announced is None else f"PREPARE_DATA announced {self.announced}"
        return f"{ann}, {self.got} bytes received{', ACK_OK' if self.acked else ''}"


class UdpChannel:
    """Request/answer over pyzk's UDP socket with re-sending; one per connection.

    ``reply_id`` is pyzk's counter: the last reply id used. driver.py copies it from pyzk before
    each call and back after, so pyzk's own packets (event ACKs) stay consistent.
    """

    def __init__(
        self,
        wire: RecordingSocket,
        address: tuple[str, int],
        *,
        timeout_s: float,
        verify: bool,
        rtt: RttEstimator,
        counters: UdpCounters,
        max_chunk: int = MAX_CHUNK,
        deadline: float | None = None,
    ) -> None:
        self.wire = wire
        self.address = address
        self.timeout_s = timeout_s
        self.verify = verify
        self.rtt = rtt
        self.counters = counters
        self.max_chunk = max_chunk
        #: Monotonic instant after which no wait continues (the poll's deadline); None = none.
        self.deadline = deadline
        self.session_id = 0
        # Reply ids restart with every connection. pyzk starts at the same value each time (CONNECT
        # = 0), so late datagrams of an earlier connection -- the re-enable connection reuses the
        # socket, a NAT may map a new socket to the old port -- would carry the reply ids the new
        # one is about to use. A random start makes such a collision a 1-in-65535 accident.
        # Terminals echo whatever id they get (docs/drivers/zk.md "Reply id"; node-zklib starts at 1).
        self.reply_id = random.randrange(0xFFFF)
        #: Whether this terminal echoes our session id in its answers (learnt from the first answer
        #: after CONNECT). If it does, an answer with another session id is not ours: dropped.
        self.echoes_session: bool | None = None
        self._chunk = max_chunk
        self._clean = 0

    # -- plumbing ----------------------------------------------------------------------------
    def _send(self, command: int, data: bytes) -> int:
        self.reply_id = next_reply_id(self.reply_id)
        self.wire.sendto(build_packet(command, self.session_id, self.reply_id, data), self.address)
        return self.reply_id

    def send_only(self, command: int, data: bytes = b"") -> None:
        """Send one request whose answer nobody waits for (CMD_EXIT before closing the socket)."""
        self._send(command, data)

    def _recv(self, deadline: float) -> bytes | None:
        """Next datagram before ``deadline`` (monotonic), None when the deadline passed.

        Raises DeadlineExceeded once the caller's (poll) deadline has passed: re-sending stops there.
        """
        if self.deadline is not None:
            if time.monotonic() >= self.deadline:
                raise DeadlineExceeded("deadline passed while waiting for the device (UDP)")
            deadline = min(deadline, self.deadline)
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        self.wire.settimeout(left)
        try:
            return self.wire.recv(_RECV)
        except TimeoutError:
            return None

    def _session_ok(self, pkt: bytes, command: int = 0) -> bool:
        """False for an answer carrying another session id, once the terminal showed it echoes ours."""
        if command in (CMD_CONNECT, CMD_AUTH) or not self.session_id:
            return True  # the session id is being set up
        sid = int(struct.unpack_from("<H", pkt, 4)[0])
        if self.echoes_session is None:
            # Clients never check it (§1.3), so some firmware may not echo it: learn, don't assume.
            self.echoes_session = sid == self.session_id
        return not self.echoes_session or sid == self.session_id

    def _piece_ok(self, att: _Attempt, pkt: bytes) -> bool:
        """Session check for a packet of a chunk answer, allowing the real terminals' packet counter.

        Real terminals put a packet counter (0, 1, 2 ...) instead of the session id in the DATA
        packets of a multi-packet answer (fananimi/pyzk test.py capture: tests/drivers/captures/).
        Such a piece is ours when its reply id names this attempt (checked by the caller) AND its
        counter is the next position of this attempt: that ties it to the request by id and order, so
        a reordered or foreign piece is dropped (the attempt then comes back short and is re-asked),
        and a late answer of an earlier connection still needs that connection's reply id.
        """
        code, _chk, sid, _rid = struct.unpack_from("<4H", pkt)
        if code == CMD_DATA and self.session_id and sid != self.session_id:
            return sid == len(att.pieces)
        return self._session_ok(pkt)

    def _no_answer(self, what: str, attempts: int) -> UdpNoAnswer:
        host, port = self.address
        return UdpNoAnswer(
            f"no answer from {host}:{port}/udp within {self.timeout_s:g} s "
            f"({what}, {attempts} request{'s' if attempts != 1 else ''} sent)",
            self.timeout_s,
            attempts,
        )

    # -- single-packet answers ---------------------------------------------------------------
    def request(self, command: int, data: bytes = b"") -> bytes:
        """Send ``command`` and return the device's answer packet (header included).

        Retry-safe commands are re-sent with a fresh reply id after each retransmission timeout;
        the answer to ANY of those sends is accepted (the same idempotent question, answered in
        one datagram), so a slow device's late answer is not wasted. Others are sent once and
        waited for ``timeout_s``, as pyzk does (EXIT: two RTOs).
        """
        retry = command in RETRY_SAFE
        saved = self.wire.gettimeout()
        try:
            sent: dict[int, float] = {}
            rto = self.rtt.rto(self.timeout_s) if retry else self.timeout_s
            if command == CMD_EXIT:
                # Goodbye: once sent, a device that ends the session ignores a repeat, and nobody
                # needs its answer; waiting a full timeout for a lost one would only stall the poll.
                rto = min(self.timeout_s, 2 * self.rtt.rto(self.timeout_s))
            last_heard = time.monotonic()
            while True:
                sent[self._send(command, data)] = time.monotonic()
                wait_until = min(time.monotonic() + rto, last_heard + self.timeout_s)
                while (pkt := self._recv(wait_until)) is not None:
                    if len(pkt) < 8:
                        self.counters.add("stale")
                        continue
                    code, _chk, _sid, rid = struct.unpack_from("<4H", pkt)
                    if rid in sent and code != CMD_REG_EVENT and self._session_ok(pkt, command):
                        self.rtt.sample(time.monotonic() - sent[rid])
                        return pkt
                    # Late answer to an earlier exchange, or a realtime event (never a reply).
                    self.counters.add("stale")
                if not retry or len(sent) >= MAX_ATTEMPTS or time.monotonic() >= last_heard + self.timeout_s:
                    raise self._no_answer(f"command {command}", len(sent))
                self.counters.add("resends")
                rto = min(rto * BACKOFF, self.timeout_s)
        finally:
            self.wire.settimeout(saved)

    # -- buffered read (1504 chunks) ---------------------------------------------------------
    def read_dataset(self, size: int, on_chunk: Callable[[int], None] | None = None) -> bytes:
        """All ``size`` bytes of a dataset prepared by 1503, chunk by chunk; never partial."""
        return self.read_range(0, size, on_chunk)

    def read_range(self, start: int, end: int, on_chunk: Callable[[int], None] | None = None) -> bytes:
        """Bytes ``start`` to ``end`` of a prepared dataset (1504 takes any offset, §2.8); never partial.

        ``on_chunk(n)`` is told the bytes received so far after each chunk.
        """
        out = bytearray()
        saved = self.wire.gettimeout()
        try:
            while start + len(out) < end:
                at = start + len(out)
                out += self._read_chunk(at, end - at)
                if on_chunk is not None:
                    on_chunk(len(out))
        finally:
            self.wire.settimeout(saved)
        return bytes(out)

    def _read_chunk(self, start: int, remaining: int) -> bytes:
        """One chunk starting at ``start`` (length chosen here, ≤ ``remaining``); re-asked until whole."""
        attempts: dict[int, _Attempt] = {}
        rto = self.rtt.rto(self.timeout_s)
        last_heard = time.monotonic()
        last_problem = ""
        while True:
            length = min(self._chunk, remaining)
            rid = self._send(CMD_READ_BUFFER, struct.pack("<ii", start, length))
            current = attempts[rid] = _Attempt(time.monotonic(), length)
            wait_until = min(time.monotonic() + rto, last_heard + self.timeout_s)
            while not current.failed and (pkt := self._recv(wait_until)) is not None:
                att = attempts.get(struct.unpack_from("<H", pkt, 6)[0]) if len(pkt) >= 8 else None
                if att is None or struct.unpack_from("<H", pkt)[0] == CMD_REG_EVENT or not self._piece_ok(att, pkt):
                    self.counters.add("stale")  # earlier exchange (old reply id), event, or junk
                    continue
                self._take(att, pkt, start)
                last_heard = time.monotonic()
                wait_until = min(last_heard + rto, last_heard + self.timeout_s)
                if att.complete:
                    self._chunk_done(att)
                    return b"".join(att.pieces)
            # This attempt failed: it came back incomplete, or went quiet for a whole RTO.
            last_problem = current.describe()
            if not current.heard:
                rto = min(rto * BACKOFF, self.timeout_s)  # nothing came back: back off, the link may be down
            # (An answer that came back short means the device is there: re-ask at once.)
            if time.monotonic() >= last_heard + self.timeout_s:
                raise self._no_answer(f"chunk at offset {start}", len(attempts))
            if len(attempts) >= MAX_ATTEMPTS:
                if current.busy:
                    raise UdpRefused(f"device busy (ACK_RETRY) for the chunk at offset {start}", CMD_ACK_RETRY)
                raise UdpExchangeError(
                    f"chunk at offset {start} still incomplete after {len(attempts)} requests "
                    f"(last: {last_problem})"
                )
            if current.busy:
                time.sleep(rto)  # "busy, ask again": not at once
            self.counters.add("resends")
            self._clean = 0
            # Ask for less next time: fewer datagrams that all have to get through.
            self._chunk = max(PIECE, self._chunk // 2)

    def _take(self, att: _Attempt, pkt: bytes, start: int) -> None:
        """Add one datagram of this attempt's answer, validating as it goes."""
        code = struct.unpack_from("<H", pkt)[0]
        if att.first_at is None:
            att.first_at = time.monotonic()
            # Each attempt has its own reply id, so this sample is unambiguous (no Karn problem).
            self.rtt.sample(att.first_at - att.sent_at)
        if self.verify and not checksum_ok(pkt):
            # Never assemble a corrupted piece. Not treated as loss: a device that corrupts (or a
            # line that flips bits past the UDP checksum) is a problem to report, not to paper over.
            raise UdpExchangeError(f"a reply packet to the chunk at offset {start} failed the checksum")
        payload = pkt[8:]
        if code == CMD_PREPARE_DATA:
            if len(payload) < 4:
                raise UdpExchangeError(f"PREPARE_DATA of {len(payload)} bytes for the chunk at offset {start}")
            announced = int(struct.unpack_from("<I", payload)[0])
            if att.announced is not None and announced != att.announced:
                raise UdpExchangeError(f"two different PREPARE_DATA sizes for the chunk at offset {start}")
            if announced > att.length:
                raise UdpExchangeError(
                    f"asked for {att.length} bytes at offset {start}, PREPARE_DATA announced {announced}"
                )
            att.announced = announced
            if att.pieces:
                # PREPARE_DATA is sent first: DATA overtook it, or the device answered this reply
                # id twice (a duplicated request). Either way the order of the pieces is unknown.
                att.disordered = True
        elif code == CMD_DATA:
            if att.acked:
                att.disordered = True  # ACK_OK is sent last: this piece was overtaken by it
                return
            if payload in att.seen:
                self.counters.add("duplicates")  # identical bytes and reply id: the same datagram twice
                return
            att.seen.add(payload)
            att.pieces.append(payload)
            att.got += len(payload)
        elif code == CMD_ACK_OK:
            att.acked = True
        elif code == CMD_ACK_RETRY:
            att.acked = att.busy = True  # "busy, ask again": an incomplete attempt, re-asked later
        else:
            raise UdpRefused(f"device refused the chunk at offset {start} (reply code {code})", code)

    def _chunk_done(self, att: _Attempt) -> None:
        if att.announced is not None and att.announced != att.length:
            # The device sent (and announced) less than asked: the dataset would come out short.
            raise UdpExchangeError(f"asked for {att.length} bytes, device sent {att.announced}")
        self.counters.add("chunks")
        self._clean += 1
        if self._clean >= GROW_AFTER and self._chunk < self.max_chunk:
            self._chunk = min(self.max_chunk, self._chunk * 2)
            self._clean = 0


__all__ = [
    "MAX_ATTEMPTS", "MAX_CHUNK", "PIECE", "RETRY_SAFE", "RttEstimator", "UdpChannel", "UdpCounters",
    "UdpExchangeError", "UdpNoAnswer", "UdpRefused", "build_packet", "next_reply_id",
]

"""ZkDriver: the gateway's driver for ZKTeco terminals on port 4370, built on pyzk 0.9 (pinned).

Flow: gateway.polling.poller -> ZkDriver.connect() -> ZkSession.{info,counts,read_punches,...}
-> pyzk -> device.
This is the ONLY module that imports pyzk. It (1) hands pyzk a recording socket (frames.py) so the
last frames and byte counts are known, (2) uses pyzk only for the wire exchange (read_sizes,
read_with_buffer, simple commands) and decodes datasets itself in linear time (records.py), (3)
translates everything pyzk raises -- including the raw socket/struct errors that escape its data
phase -- into the DriverError tree of drivers/base.py, and (4) always re-enables the terminal and
closes the connection when a session ends, whatever failed. Tail reads (read_punches_after) ask 1504
for the byte range of the new records only; firmware/platform/name/MAC are cached per serial so a
steady poll costs three round trips (docs/drivers/zk.md, "What a poll does", "Tail reads").
"""

from __future__ import annotations

import errno
import logging
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, TypeVar

from zk import base as _pyzk_base
from zk import const as zk_const
from zk.base import ZK
from zk.exception import ZKErrorConnection, ZKErrorResponse, ZKNetworkError

from drivers.base import (
    AuthRejected,
    Busy,
    Counts,
    DeviceInfo,
    DeviceUser,
    DriverError,
    EnrolledUser,
    Enrolments,
    EnrolProgress,
    IdentityMismatch,
    LiveEvent,
    LogPosition,
    PlanTemplateReads,
    Progress,
    ProtocolError,
    RawPunch,
    RawPunchColumns,
    Template,
    Unreachable,
)
from drivers.zk import enrol, records
from drivers.zk.frames import FrameRing, RecordingSocket
from drivers.zk.quirks import ZkQuirks
from drivers.zk.tcp import MAX_PACKET, DeadlineExceeded, TcpChannel, TcpFramingError, TcpRefused
from drivers.zk.udp import RttEstimator, UdpChannel, UdpCounters, UdpExchangeError, UdpNoAnswer, UdpRefused

log = logging.getLogger(__name__)

T = TypeVar("T")

_CMD_ACK_RETRY = 2003  # "device busy, ask again" (docs/drivers/zk.md, "Command and reply codes")



def _pyzk_print(*args: object, **_kw: object) -> None:
    """Replacement for print() inside pyzk: a few warnings are printed unconditionally in 0.9.

    Rebinding the module global (not sys.stdout) is thread safe and survives a closed stdout.
    """
    log.debug("pyzk: %s", " ".join(str(a) for a in args))


_pyzk_base.print = _pyzk_print


@dataclass(frozen=True, slots=True)
class ZkParams:
    """How to reach one terminal. The comm key is never shown in repr() or logs."""

    #: IPv4 address or host name of the terminal.
    address: str
    #: UDP/TCP port (4370 on every ZK terminal we know).
    port: int = 4370
    #: pyzk never detects the transport; old firmware (and some K40s) speak UDP only.
    transport: Literal["tcp", "udp"] = "tcp"
    #: Comm key as set on the device (menu COMM > Comm Key); 0 = none.
    comm_key: int = field(default=0, repr=False)
    #: Socket timeout for every request/reply, in seconds.
    timeout_s: float = 10.0
    #: When set, a session to a device reporting another serial fails with IdentityMismatch.
    expected_serial: str | None = None
    #: Text encoding of user ids and names on the device.
    encoding: str = "UTF-8"

    def __post_init__(self) -> None:
        if not self.address:
            raise ValueError("address must not be empty")
        if not 0 < self.port < 65536:
            raise ValueError(f"port must be 1-65535, got {self.port}")
        if self.transport not in ("tcp", "udp"):
            raise ValueError(f"transport must be 'tcp' or 'udp', got {self.transport!r}")
        if not 0 <= self.comm_key <= 0xFFFFFFFF:
            raise ValueError("comm_key must be an integer from 0 to 4294967295")
        if not self.timeout_s > 0:
            raise ValueError(f"timeout_s must be positive, got {self.timeout_s}")


@dataclass
class ZkStats:
    """Counters kept on a ZkDriver across sessions (for metrics and tests)."""

    sessions: int = 0
    #: Attendance datasets downloaded (1503 with CMD_ATTLOG_RRQ).
    log_downloads: int = 0
    #: User tables downloaded (1503 with FCT_USER), implicit or explicit.
    user_downloads: int = 0
    #: Times the terminal had to be re-enabled through a second connection after a failure.
    fresh_reenables: int = 0
    #: 8-byte punches whose uid was not in the user table (reported with user_id = str(uid)).
    unmapped_punches: int = 0
    #: info(clock=False) answered from the cached firmware/platform/name/MAC (no round trips).
    info_cache_hits: int = 0
    #: Dataset bytes received (1503 direct answers and 1504 chunks, users included; no packet headers).
    dataset_bytes: int = 0
    #: Tail reads (read_punches_after) that returned the new records.
    tail_reads: int = 0
    #: Tail reads that returned None (log shorter, overlap record changed, layout unknown): full read needed.
    tail_refused: int = 0
    #: UDP only: requests re-sent, stale/duplicate datagrams dropped, chunks read (udp.py).
    udp: UdpCounters = field(default_factory=UdpCounters)


class _HookedZK(ZK):
    """pyzk's ZK with our socket factory. Relies on pyzk 0.9 internals (name-mangled attributes)."""

    # pyzk's private state that this class reads and replaces (pyzk 0.9, base.py).
    _ZK__sock: Any
    _ZK__reply_id: int

    def __init__(
        self,
        params: ZkParams,
        ring: FrameRing,
        timeout_s: float,
        verify: bool,
        reuse_udp: socket.socket | None = None,
        udp_rtt: RttEstimator | None = None,
        udp_counters: UdpCounters | None = None,
        udp_max_chunk: int | None = None,
        deadline: float | None = None,
    ) -> None:
        super().__init__(
            params.address,
            port=params.port,
            timeout=timeout_s,
            password=params.comm_key,
            force_udp=params.transport == "udp",
            ommit_ping=True,  # no OS ping: blocked ICMP / no ping binary in containers (docs/drivers/zk.md)
            verbose=False,
            encoding=params.encoding,
        )
        # pyzk opens a UDP socket in __init__ that connect() replaces without closing: close it now.
        self._ZK__sock.close()
        # pyzk's TCP probe opens and drops an extra connection with a fixed 10 s timeout; it only
        # guesses the user size for set_user, which we never call.
        self.helper.test_tcp = lambda: 1
        self._fg_ring = ring
        self._fg_verify = verify
        self._fg_reuse_udp = reuse_udp
        self._fg_udp_rtt = udp_rtt or RttEstimator()
        self._fg_udp_counters = udp_counters or UdpCounters()
        self._fg_udp_max_chunk = udp_max_chunk
        self._fg_deadline = deadline
        #: Largest dataset (bytes, u32 header included) a 1503 answer may declare; set by the session
        #: before each download from the device's capacities and ZkQuirks.max_download_bytes.
        self.dataset_limit = DEFAULT_MAX_DOWNLOAD
        self.wire: RecordingSocket | None = None
        self.udp: UdpChannel | None = None
        self.tcpc: TcpChannel | None = None

    def _ZK__create_socket(self) -> None:
        # Same as pyzk's __create_socket, but wrapped for recording, and a refused connect raises.
        if self._fg_reuse_udp is not None and not self.tcp:
            # Cleanup connection on UDP: same local port = same client for the device (see
            # ZkSession._close), so its ENABLE undoes the DISABLE sent from this socket.
            raw, self._fg_reuse_udp = self._fg_reuse_udp, None
        else:
            raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM if self.tcp else socket.SOCK_DGRAM)
        raw.settimeout(self._ZK__timeout)
        self.wire = RecordingSocket(raw, self._fg_ring, self.tcp, self._fg_verify)
        self._ZK__sock = self.wire
        if self.tcp:
            self.wire.connect_ex(self._ZK__address)
            self.tcpc = TcpChannel(self.wire, timeout_s=self._ZK__timeout, deadline=self._fg_deadline)
        else:
            kw = {"max_chunk": self._fg_udp_max_chunk} if self._fg_udp_max_chunk else {}
            self.udp = UdpChannel(
                self.wire, self._ZK__address, timeout_s=self._ZK__timeout, verify=self._fg_verify,
                rtt=self._fg_udp_rtt, counters=self._fg_udp_counters, deadline=self._fg_deadline, **kw,
            )

    # -- UDP: pyzk's request/reply and buffered read replaced by udp.UdpChannel (loss tolerant) --
    def _ZK__send_command(self, command: int, command_string: bytes = b"", response_size: int = 8) -> dict[str, Any]:
        if command not in (zk_const.CMD_CONNECT, zk_const.CMD_AUTH) and not self.is_connect:
            raise ZKErrorConnection("instance are not connected.")
        if self.tcp:
            return self._tcp_command(command, bytes(command_string))
        if self.udp is None:
            return super()._ZK__send_command(command, command_string, response_size)
        udp = self.udp
        udp.session_id = self._ZK__session_id
        if command != zk_const.CMD_CONNECT:
            # (CONNECT starts from the channel's random reply id, not pyzk's fixed one: udp.py.)
            udp.reply_id = self._ZK__reply_id
        try:
            pkt = udp.request(command, bytes(command_string))
        finally:
            # Every reply id sent is now used: the next request gets a fresh one, so any late answer
            # to these sends is recognised as stale.
            self._ZK__reply_id = udp.reply_id
        self._adopt_reply(pkt)
        return {"status": self._ZK__response in (zk_const.CMD_ACK_OK, zk_const.CMD_PREPARE_DATA,
                                                   zk_const.CMD_DATA), "code": self._ZK__response}

    def _tcp_command(self, command: int, data: bytes, max_len: int = MAX_PACKET) -> dict[str, Any]:
        """pyzk's TCP request/reply, but the reply read by its declared length (tcp.py), however it arrives."""
        tcpc = self.tcpc
        if tcpc is None:
            raise ZKErrorConnection("no TCP connection")
        tcpc.session_id, tcpc.reply_id = self._ZK__session_id, self._ZK__reply_id
        try:
            pkt = tcpc.request(command, data, max_len)
        finally:
            self._ZK__reply_id = tcpc.reply_id
        self._adopt_reply(pkt)
        return {"status": self._ZK__response in (zk_const.CMD_ACK_OK, zk_const.CMD_PREPARE_DATA,
                                                   zk_const.CMD_DATA), "code": self._ZK__response}

    def _check_dataset_size(self, size: int) -> None:
        if size > self.dataset_limit:
            raise DatasetTooLarge(
                f"device declared a {size}-byte dataset; at most {self.dataset_limit} bytes expected "
                f"(its reported capacity, or quirk max_download_bytes)"
            )

    def _adopt_reply(self, pkt: bytes) -> None:
        """Leave pyzk's state as its own __send_command would after receiving ``pkt``."""
        if len(pkt) < 8:
            raise ZKNetworkError(f"reply of {len(pkt)} bytes")
        self._ZK__data_recv = pkt
        self._ZK__header = struct.unpack("<4H", pkt[:8])
        self._ZK__response = self._ZK__header[0]
        self._ZK__data = pkt[8:]

    def read_with_buffer(self, command: int, fct: int = 0, ext: int = 0,
                         on_chunk: Callable[[int], None] | None = None) -> tuple[bytes, int]:
        """pyzk's 1503/1504/1502 read: exact-length TCP reads (tcp.py), UDP with lost chunks re-requested (udp.py).

        Every size the device declares is checked against ``dataset_limit`` before anything is read.
        ``on_chunk(n)``: bytes received so far, after each 1504 chunk.
        """
        direct, size = self.prepare_dataset(command, fct, ext)
        if direct is not None:
            return direct, size
        dataset = self.read_range(0, size, on_chunk)
        self.free_data()
        return dataset, size

    def prepare_dataset(self, command: int, fct: int = 0, ext: int = 0) -> tuple[bytes | None, int]:
        """1503: ``(dataset, size)`` when the device answered with the whole dataset at once (direct),
        ``(None, size)`` when it prepared a buffer to be read with 1504 (``read_range``, then FREE_DATA)."""
        request = struct.pack("<bhii", 1, command, fct, ext)
        if self.tcp:
            # A direct answer carries the whole dataset in one packet: bounded by the dataset limit.
            resp = self._tcp_command(1503, request, max_len=max(MAX_PACKET, self.dataset_limit + 8))
        elif self.udp is not None:
            resp = self._ZK__send_command(1503, request, 1024)
        else:
            whole, whole_size = super().read_with_buffer(command, fct, ext)
            return bytes(whole), whole_size
        if not resp["status"]:
            raise ZKErrorResponse("RWB Not supported")
        data: bytes = self._ZK__data
        if resp["code"] == zk_const.CMD_DATA:
            self._check_dataset_size(len(data))
            return data, len(data)  # direct answer: the whole dataset in one packet
        if resp["code"] != zk_const.CMD_ACK_OK or len(data) < 5:
            # pyzk would read a size out of whatever this is.
            raise ZKErrorResponse(f"unexpected answer to 1503 (code {resp['code']}, {len(data)} bytes)")
        size = int(struct.unpack_from("<I", data, 1)[0])
        self._check_dataset_size(size)
        return None, size

    def read_range(self, start: int, end: int, on_chunk: Callable[[int], None] | None = None) -> bytes:
        """Bytes ``start`` to ``end`` of the dataset prepared by ``prepare_dataset`` (1504 chunks)."""
        channel = self.tcpc if self.tcp else self.udp
        assert channel is not None
        channel.session_id, channel.reply_id = self._ZK__session_id, self._ZK__reply_id
        try:
            return channel.read_range(start, end, on_chunk)
        finally:
            self._ZK__reply_id = channel.reply_id

    def say_goodbye(self) -> None:
        """Send CMD_EXIT and close the socket without waiting for the answer (docs/drivers/zk.md, "Goodbye")."""
        channel = self.tcpc if self.tcp else self.udp
        if channel is not None and self.wire is not None:
            channel.session_id, channel.reply_id = self._ZK__session_id, self._ZK__reply_id
            try:
                channel.send_only(zk_const.CMD_EXIT)
            except OSError as exc:
                log.debug("goodbye not sent: %s", exc)
            self._ZK__reply_id = channel.reply_id
        self.close_socket()

    def close_socket(self) -> None:
        """Close the wire without talking to the device (its stream may be out of sync)."""
        self.is_connect = False
        if self.wire is not None:
            try:
                self.wire.close()
            except OSError:
                pass


#: Default bound of one downloaded dataset when the device reports no capacity (quirk max_download_bytes).
DEFAULT_MAX_DOWNLOAD = 32 * 1024 * 1024


class DatasetTooLarge(Exception):
    """A 1503 answer declared a dataset larger than the device can hold or than configured."""


def _root_cause(exc: BaseException) -> BaseException:
    """pyzk wraps socket errors as ZKNetworkError(str(e)) inside ``except``: the original is __context__."""
    seen = exc
    while isinstance(seen, ZKNetworkError) and seen.__context__ is not None:
        seen = seen.__context__
    return seen


def _peer(where: str) -> str:
    """``udp://10.0.0.5:4370`` -> ``10.0.0.5:4370/udp`` (how an operator says it)."""
    transport, sep, rest = where.partition("://")
    return f"{rest}/{transport}" if sep else where


def _network_message(cause: BaseException, what: str, where: str, timeout_s: float | None) -> str:
    """Plain words for a network failure; the raw exception goes to the log, not the message."""
    peer = _peer(where)
    if isinstance(cause, UdpNoAnswer):
        sent = f"; asked {cause.attempts} times" if cause.attempts > 1 else ""
        return f"no answer from {peer} within {cause.timeout_s:g} s ({what}{sent})"
    if isinstance(cause, TimeoutError):
        within = f" within {timeout_s:g} s" if timeout_s else ""
        return f"no answer from {peer}{within} ({what})"
    if isinstance(cause, ConnectionRefusedError):
        return f"connection refused by {peer} ({what}): nothing listens on that port"
    if isinstance(cause, ConnectionResetError | BrokenPipeError | ConnectionAbortedError):
        return f"connection to {peer} dropped during {what}"
    if isinstance(cause, OSError) and cause.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
        return f"no route to {peer} ({what})"
    text = cause.strerror if isinstance(cause, OSError) and cause.strerror else str(cause)
    return f"network error talking to {peer} during {what}: {text}"


def translate(
    exc: BaseException,
    what: str,
    where: str,
    frames: list[str],
    reply_code: int | None,
    timeout_s: float | None = None,
) -> DriverError:
    """Map anything pyzk (or the socket under it, or udp.py) raised to the DriverError tree."""
    if isinstance(exc, DriverError):
        return exc
    if isinstance(exc, ZKErrorResponse):
        msg = str(exc)
        if msg == "Unauthenticated":
            return AuthRejected(f"{where}: device rejected the comm key (Unauthenticated)")
        if reply_code == _CMD_ACK_RETRY:
            return Busy(f"{where}: device busy during {what} (ACK_RETRY)", frames=frames)
        return ProtocolError(f"{where}: {what} failed: {msg} (reply code {reply_code})", frames=frames)
    if isinstance(exc, UdpRefused) and exc.code == _CMD_ACK_RETRY:
        return Busy(f"{where}: device busy during {what} (ACK_RETRY)", frames=frames)
    if isinstance(exc, TcpRefused | UdpRefused) and exc.code == _CMD_ACK_RETRY:
        return Busy(f"{where}: device busy during {what} (ACK_RETRY)", frames=frames)
    if isinstance(exc, UdpExchangeError | TcpFramingError | TcpRefused | DatasetTooLarge):
        # The device answered, but never usably (always incomplete, corrupt, refused or oversized).
        return ProtocolError(f"{where}: {what} failed: {exc}", frames=frames)
    if isinstance(exc, DeadlineExceeded) or isinstance(_root_cause(exc), DeadlineExceeded):
        exc = _root_cause(exc)
        # The poll's deadline ended a download the device was still (slowly) sending: misbehaviour,
        # classified so the poller reports it and moves on to the other devices.
        return ProtocolError(f"{where}: {what} stopped: {exc}", frames=frames)
    cause = _root_cause(exc)
    if isinstance(cause, OSError):  # TimeoutError included
        message = _network_message(cause, what, where, timeout_s)
        # The message says what happened; the raw exception stays available to whoever debugs it.
        log.info("%s: %s -- raw cause: %s: %s", where, message, type(cause).__name__, cause)
        return Unreachable(message, frames=frames)
    if isinstance(exc, ZKNetworkError):
        # "TCP packet invalid" (reply without magic / too short) or a struct error on a short reply.
        return ProtocolError(f"{where}: malformed reply during {what}: {exc}", frames=frames)
    if isinstance(exc, ZKErrorConnection):
        return ProtocolError(f"{where}: pyzk lost its connection state during {what}: {exc}", frames=frames)
    # struct.error / IndexError / ValueError / TypeError / UnboundLocalError ... escaping pyzk's data
    # phase on replies it could not make sense of.
    return ProtocolError(
        f"{where}: unexpected reply during {what}: {type(exc).__name__}: {exc}", frames=frames
    )


def _drain_udp(wire: RecordingSocket, quiet_s: float = 0.3, max_s: float = 2.0) -> socket.socket | None:
    """Read and drop datagrams until the socket has been quiet for ``quiet_s``; return the raw socket."""
    raw: socket.socket = wire._sock
    deadline = time.monotonic() + max_s
    try:
        raw.settimeout(quiet_s)
        while time.monotonic() < deadline:
            try:
                wire.recv(2048)
            except TimeoutError:
                return raw
    except OSError:
        pass
    raw.close()
    return None


def _same_record(found: RawPunch, known: RawPunch) -> bool:
    """Whether a re-read record is the one read before: user id, time text, state and verify mode always;
    uid, work code and raw time when the known record carries them (non-zero uid/work code, raw time >= 0:
    a caller that kept only the four always-present fields still gets a tail read). The datetime follows
    from the text."""
    return (found.user_id == known.user_id and found.time_text == known.time_text and found.state == known.state
            and found.verify == known.verify and (not known.uid or found.uid == known.uid)
            and (not known.workcode or found.workcode == known.workcode)
            and (known.raw_time < 0 or found.raw_time == known.raw_time))


def _record_multisets(found: Sequence[RawPunch], expected: Collection[RawPunch]) -> tuple[Counter[Any], Counter[Any]]:
    """``found`` and ``expected`` as multisets of records. Two downloads held as columns are compared by their
    columns' values (``RawPunchColumns.record_values``, no RawPunch built): the re-read runs with the keypad locked."""
    if isinstance(found, RawPunchColumns) and isinstance(expected, RawPunchColumns) \
            and found.day_of is expected.day_of:
        return Counter(found.record_values()), Counter(expected.record_values())
    return Counter(found), Counter(expected)


class _ProgressReporter:
    """Tells a caller's ``Progress`` how a download goes: at most every ``INTERVAL_S`` while chunks arrive,
    and always once at the end. Whatever the callback raises is logged (once) and never reaches the download."""

    INTERVAL_S = 0.25

    def __init__(self, progress: Progress | None, expected: int) -> None:
        self.progress = progress
        self.expected = expected
        self._last = time.monotonic()
        self._failed = False

    def update(self, records_read: int, expected: int | None = None) -> None:
        if self.progress is None:
            return
        now = time.monotonic()
        if now - self._last < self.INTERVAL_S:
            return
        self._last = now
        if expected is not None:
            self.expected = expected
        self._call(records_read)

    def done(self, records_read: int) -> None:
        if self.progress is not None:
            self._call(records_read)

    def _call(self, records_read: int) -> None:
        assert self.progress is not None
        try:
            self.progress(records_read, self.expected)
        except Exception as exc:
            if not self._failed:
                self._failed = True
                log.warning("download progress callback failed (ignored): %s: %s", type(exc).__name__, exc)


class ZkDriver:
    """Reaches one configured ZK terminal. Blocking; one caller at a time.

    Keeps, across sessions, what is worth remembering about the device: the uid -> user id table
    (needed only for 8-byte records), the record/user sizes last seen, and the frame ring.
    """

    def __init__(self, params: ZkParams, quirks: ZkQuirks | None = None, *, frames: int = 32) -> None:
        self.params = params
        self.quirks = quirks or ZkQuirks()
        self.frames = FrameRing(frames)
        self.stats = ZkStats()
        self._lock = threading.Lock()
        # Device memory (invalidated when the serial changes).
        self._serial: str | None = None
        self._users_by_uid: dict[int, str] | None = None
        self._users_count: int | None = None
        self._record_size: int | None = None
        self._user_size: int | None = None
        #: (firmware, platform, device name, MAC) of the serial in ``_serial``, read by an earlier info().
        self._static_info: tuple[str, str, str, str] | None = None
        # Set when a session could not re-enable the terminal: the next session does it first.
        self._needs_enable = False
        # Round-trip estimate of this terminal's UDP link, kept across sessions (udp.py).
        self._udp_rtt = RttEstimator()

    @property
    def where(self) -> str:
        """Address text for messages (never the comm key)."""
        return f"{self.params.transport}://{self.params.address}:{self.params.port}"

    def _new_zk(self, timeout_s: float | None = None, reuse_udp: socket.socket | None = None,
                deadline: float | None = None) -> _HookedZK:
        zk = _HookedZK(
            self.params, self.frames, timeout_s or self.params.timeout_s, self.quirks.verify_checksums,
            reuse_udp, self._udp_rtt, self.stats.udp, self.quirks.udp_max_chunk, deadline,
        )
        zk.dataset_limit = self.quirks.max_download_bytes
        return zk

    def _open(self, timeout_s: float | None = None, reuse_udp: socket.socket | None = None,
              deadline: float | None = None) -> _HookedZK:
        """Connect (and authenticate); on failure nothing is left open."""
        zk = self._new_zk(timeout_s, reuse_udp, deadline)
        try:
            zk.connect()
        except BaseException as exc:
            zk.close_socket()
            if isinstance(exc, Exception):
                raise self._translate(exc, "connect", zk) from exc
            raise
        return zk

    def _translate(self, exc: BaseException, what: str, zk: _HookedZK | None) -> DriverError:
        code = zk.wire.last_reply_code if zk is not None and zk.wire is not None else None
        timeout = zk._ZK__timeout if zk is not None else self.params.timeout_s
        return translate(exc, what, self.where, self.frames.snapshot(), code, timeout)

    @contextmanager
    def connect(self, deadline: float | None = None) -> Iterator[ZkSession]:
        """Open a session; leaving the block re-enables the terminal (if we disabled it) and disconnects.

        ``deadline`` (``time.monotonic()`` instant, drivers/base.py): no wait of this session, inside a
        download included, goes past it (ProtocolError). Cleanup (re-enable, goodbye) is not bound by it.
        """
        zk = self._open(deadline=deadline)
        session = ZkSession(self, zk)
        with self._lock:
            self.stats.sessions += 1
        try:
            session._start()
            yield session
        except BaseException as exc:
            session._close(exc)
            raise
        else:
            session._close(None)

    # -- device memory --------------------------------------------------------------------------
    def _remember_serial(self, serial: str) -> None:
        with self._lock:
            if self._serial is not None and serial != self._serial:
                log.info("device at %s changed serial %s -> %s; forgetting cached users", self.where,
                         self._serial, serial)
                self._users_by_uid = None
                self._users_count = None
                self._record_size = None
                self._user_size = None
                self._static_info = None
            self._serial = serial

    def _reenable_fresh(self, reuse_udp: socket.socket | None = None) -> None:
        """Second connection whose only job is to re-enable the terminal (the first one is unusable)."""
        with self._lock:
            self.stats.fresh_reenables += 1
        zk = self._open(reuse_udp=reuse_udp)
        try:
            zk.enable_device()
        except Exception as exc:
            zk.close_socket()
            raise self._translate(exc, "enable device", zk) from exc
        try:
            zk.disconnect()
        except Exception:
            pass
        finally:
            zk.close_socket()


class ZkSession:
    """One open conversation with a ZK terminal. Obtained only from ``ZkDriver.connect()``."""

    def __init__(self, driver: ZkDriver, zk: _HookedZK) -> None:
        self._driver = driver
        self._zk = zk
        self._params = driver.params
        self._quirks = driver.quirks
        self._serial = ""
        # True from the moment we ask the device to disable itself until it confirmed re-enabling:
        # if the DISABLE reply is lost the device may still be disabled.
        self._disabled = False
        # True while clear_punches() keeps the terminal disabled between its re-read and the clear.
        self._hold_disabled = False
        # False once an exchange broke mid-way: the socket may hold stale bytes, so no further
        # command may be trusted on it (cleanup then uses a fresh connection).
        self._stream_ok = True
        self._closed = False
        self._live_stop = False
        #: Last GET_FREE_SIZES answer of this session.
        self._sizes = Counts(records=0, users=0)
        #: Punches counts() had to download (unusable GET_FREE_SIZES), handed to the next read_punches().
        self._fallback_punches: Sequence[RawPunch] | None = None
        #: uids of 8-byte punches that no downloaded user had, in the last read_punches().
        self.unmapped_uids: set[int] = set()

    # -- plumbing -------------------------------------------------------------------------------
    def _call(self, what: str, fn: Callable[..., T], *args: Any, in_sync_on_reply_error: bool = True) -> T:
        """Run one pyzk call, translating failures and tracking whether the stream is still usable."""
        if self._closed:
            raise RuntimeError("ZkSession used after its with-block ended")
        if not self._stream_ok:
            raise ProtocolError(f"{self._driver.where}: session unusable after an earlier failure")
        wire = self._zk.wire
        bad_before = wire.checksum_errors if wire is not None else 0
        try:
            result = fn(*args)
        except ZKErrorResponse as exc:
            # The reply was read whole, so the stream is in sync -- except inside buffered reads,
            # where pyzk gives up after retries with bytes possibly still in flight.
            if not in_sync_on_reply_error:
                self._stream_ok = False
            raise self._driver._translate(exc, what, self._zk) from exc
        except Exception as exc:
            self._stream_ok = False
            raise self._driver._translate(exc, what, self._zk) from exc
        except BaseException:
            self._stream_ok = False  # KeyboardInterrupt mid-exchange
            raise
        if wire is not None and (wire.checksum_errors > bad_before or wire.framing_lost):
            # pyzk accepted it, but the bytes are not what the device sent: never use them.
            if wire.framing_lost:
                self._stream_ok = False
            raise ProtocolError(
                f"{self._driver.where}: {what}: "
                + (
                    "TCP stream lost its packet framing"
                    if wire.framing_lost
                    else f"{wire.checksum_errors - bad_before} reply packet(s) failed the checksum"
                ),
                frames=self._driver.frames.snapshot(),
            )
        return result

    def _start(self) -> None:
        """Identity check right after connecting, before anything can touch the wrong device."""
        if self._driver._needs_enable:
            self._call("enable device (left disabled by an earlier session)", self._zk.enable_device)
            self._driver._needs_enable = False
        serial = self._call("read serial number", self._zk.get_serialnumber).strip()
        expected = self._params.expected_serial
        if expected is not None and serial != expected:
            raise IdentityMismatch(
                f"{self._driver.where}: expected serial {expected!r} but the device reports {serial!r}",
                expected=expected,
                found=serial,
            )
        self._serial = serial
        self._driver._remember_serial(serial)

    def _close(self, error: BaseException | None) -> None:
        """Re-enable if we disabled, say goodbye, close. Never raises over ``error``."""
        if self._closed:
            return
        self._closed = True
        zk = self._zk
        # Cleanup is not bound by the poll's deadline: the keypad must be re-enabled.
        for channel in (zk.tcpc, zk.udp):
            if channel is not None:
                channel.deadline = None
        problem: DriverError | None = None
        keep_udp: socket.socket | None = None
        try:
            if self._stream_ok:
                if self._disabled:
                    try:
                        zk.enable_device()
                        self._disabled = False
                    except Exception as exc:
                        log.warning("%s: enable after session failed: %s", self._driver.where, exc)
                # Goodbye without waiting for its answer (docs/drivers/zk.md, "Goodbye"): nothing
                # depends on it, and waiting costs a round trip on every poll.
                zk.say_goodbye()
            if self._disabled and not zk.tcp and zk.wire is not None:
                # On UDP there is no connection for the device to see closing, and a device may
                # tie the DISABLE to the client that sent it: re-enable from the same local port,
                # after draining late datagrams of the broken exchange.
                keep_udp = _drain_udp(zk.wire)
        finally:
            if keep_udp is None:
                zk.close_socket()
        if self._disabled:
            # The only connection is gone or out of sync: re-enable through a new one.
            try:
                self._driver._reenable_fresh(keep_udp)
                self._disabled = False
            except DriverError as exc:
                self._driver._needs_enable = True
                problem = exc
                log.error("%s: terminal may still be disabled: %s", self._driver.where, exc)
            except Exception as exc:  # never mask the caller's error with ours
                self._driver._needs_enable = True
                problem = Unreachable(f"{self._driver.where}: could not re-enable terminal: {exc}")
                log.error("%s: terminal may still be disabled: %s", self._driver.where, exc)
        if error is None and problem is not None:
            raise Unreachable(
                f"{self._driver.where}: terminal may still be disabled (keypad locked): {problem}",
                frames=problem.frames,
            )

    def _read_sizes(self) -> Counts:
        """GET_FREE_SIZES, decoded here (records.parse_free_sizes) for every layout firmware uses.

        pyzk's read_sizes silently keeps old values for a reply under 80 bytes; here an unusable
        answer comes back with ``unreliable`` set and pyzk's attributes at -1 (so a count comparison,
        e.g. clear_punches(expected_records), can never match it).
        """
        zk = self._zk

        def ask() -> bytes:
            resp = zk._ZK__send_command(zk_const.CMD_GET_FREE_SIZES, b"", 1024)
            if not resp["status"]:
                raise ZKErrorResponse("can't read sizes")
            return bytes(zk._ZK__data)

        sizes = records.parse_free_sizes(self._call("read sizes", ask))
        if sizes.unreliable:
            log.warning("%s: %s; counting by downloading the log", self._driver.where, sizes.unreliable)
            zk.users = zk.records = zk.fingers = zk.rec_cap = zk.users_cap = zk.fingers_cap = -1
            zk.faces = zk.faces_cap = 0
        else:
            zk.users, zk.records, zk.fingers = sizes.users, sizes.records, sizes.fingers
            zk.rec_cap, zk.users_cap, zk.fingers_cap = sizes.records_cap, sizes.users_cap, sizes.fingers_cap
            zk.faces, zk.faces_cap = sizes.faces, sizes.faces_cap
        self._sizes = sizes
        return sizes

    def _limit_for(self, record_bytes: int, count: int, cap: int) -> int:
        """Bound of a dataset of ``count`` records (capacity ``cap``) of at most ``record_bytes`` each."""
        limit = self._quirks.max_download_bytes
        if not self._sizes.unreliable and (cap or count):
            limit = min(limit, 4 + record_bytes * max(cap, count) + record_bytes * 64)  # + slack for arrivals
        return limit

    def _disable(self) -> None:
        if self._quirks.disable_while_reading and not self._disabled:
            self._disabled = True
            self._call("disable device", self._zk.disable_device)

    def _enable(self) -> None:
        # clear_punches() holds the keypad locked across its verifying re-read and the clear itself.
        if self._disabled and not self._hold_disabled:
            self._call("enable device", self._zk.enable_device)
            self._disabled = False

    def enable_device(self) -> None:
        """Send ENABLEDEVICE: undo a disable left behind by an earlier session or a killed process."""
        self._call("enable device", self._zk.enable_device)
        self._disabled = False

    def _download(self, what: str, command: int, fct: int = 0, limit: int | None = None,
                  on_bytes: Callable[[int, int], None] | None = None) -> bytes:
        """1503, then (buffered answer) the 1504 chunks and FREE_DATA; ``on_bytes(received, size)`` per chunk."""
        zk = self._zk
        zk.dataset_limit = limit or self._quirks.max_download_bytes

        def run() -> bytes:
            direct, size = zk.prepare_dataset(command, fct)
            if direct is not None:
                return direct
            data = zk.read_range(0, size, None if on_bytes is None else lambda n: on_bytes(n, size))
            zk.free_data()
            return data

        data = self._call(what, run, in_sync_on_reply_error=False)
        with self._driver._lock:
            self._driver.stats.dataset_bytes += len(data)
        return data

    def _dataset_error(self, what: str, exc: records.DatasetError) -> ProtocolError:
        return ProtocolError(f"{self._driver.where}: {what}: {exc}", frames=self._driver.frames.snapshot())

    # -- Session contract -----------------------------------------------------------------------
    @property
    def serial(self) -> str:
        """Serial number read when the session opened."""
        return self._serial

    @property
    def bytes_read(self) -> int:
        """Bytes received from the device in this session (wire bytes, headers included)."""
        wire = self._zk.wire
        return wire.bytes_read if wire is not None else 0

    @property
    def requests_sent(self) -> int:
        """Request packets sent to the device in this session (re-sends and the unanswered EXIT included)."""
        wire = self._zk.wire
        return wire.packets_sent if wire is not None else 0

    def info(self, *, clock: bool = True) -> DeviceInfo:
        """Serial, firmware, platform, name, MAC and (``clock``) the device clock.

        ``clock=False`` costs no round trip once this driver has read the static fields of this serial:
        firmware, platform, name and MAC come from the driver's cache (re-read whenever ``clock=True``,
        and after the device at this address reported another serial).
        """
        zk = self._zk
        drv = self._driver
        static = drv._static_info if not clock else None
        if static is None:
            firmware = self._call("read firmware version", zk.get_firmware_version)
            platform = self._optional("read platform", zk.get_platform)
            name = self._optional("read device name", zk.get_device_name)
            mac = self._optional("read MAC", zk.get_mac)
            static = (firmware, platform, name, mac)
            with drv._lock:
                if drv._serial == self._serial:
                    drv._static_info = static
        else:
            with drv._lock:
                drv.stats.info_cache_hits += 1

        def get_time() -> datetime | None:
            try:
                return zk.get_time()
            except ValueError:
                # Impossible date in the RTC: pyzk's datetime() fails after the whole reply was read.
                return None

        device_time = self._call("read device time", get_time) if clock else None
        return DeviceInfo(self._serial, *static, device_time)

    def _optional(self, what: str, fn: Callable[[], str]) -> str:
        """Getters some firmware does not support: a clean error reply means "not reported"."""
        try:
            return self._call(what, fn).strip()
        except (ProtocolError, Busy):
            if not self._stream_ok:
                raise
            return ""

    def counts(self) -> Counts:
        """Record/user counts and capacities as GET_FREE_SIZES reports them.

        When that answer is unusable (4 zero bytes, negative or impossible values), the log is
        downloaded to count the records (the punches are kept for the read_punches() that usually
        follows in the same session) and ``Counts.unreliable`` says why.
        """
        sizes = self._read_sizes()
        if sizes.unreliable:
            self._fallback_punches = None
            punches = self._read_punches(None)
            self._fallback_punches = punches
            return Counts(records=len(punches), users=max(self._driver._users_count or 0, 0),
                          unreliable=sizes.unreliable)
        return sizes

    def read_punches(self, progress: Progress | None = None) -> Sequence[RawPunch]:
        """Download and decode the whole attendance log, in device order (linear time).

        ``progress(records_read, records_expected)`` is called as chunks arrive (at most every 0.25 s)
        and once at the end; an exception it raises is logged, never raised into the download.
        """
        cached, self._fallback_punches = self._fallback_punches, None
        if cached is not None:
            _ProgressReporter(progress, len(cached)).done(len(cached))
            return cached  # downloaded by counts() of this session (unusable GET_FREE_SIZES)
        sizes = self._read_sizes_disabled()
        return self._read_punches(None if sizes.unreliable else sizes.records, disabled=True, progress=progress)

    def _read_sizes_disabled(self) -> Counts:
        self._disable()
        return self._read_sizes()

    def _read_punches(self, expected: int | None, disabled: bool = False,
                      progress: Progress | None = None) -> Sequence[RawPunch]:
        """Download + decode; ``expected`` None = the device's count is unusable (decide by evidence)."""
        drv = self._driver
        if not disabled:
            self._disable()
        sizes = self._sizes
        users_now = -1 if sizes.unreliable else sizes.users
        reporter = _ProgressReporter(progress, expected or 0)
        if expected == 0:
            # pyzk convention (and the devices'): no download when the log is empty.
            self._enable()
            reporter.done(0)
            return []
        guess = self._quirks.record_size or drv._record_size or 40

        def on_bytes(received: int, size: int) -> None:
            if expected:
                reporter.update(expected * received // size)
            else:
                reporter.update(max(0, received - 4) // guess, max(0, size - 4) // guess)

        limit = self._limit_for(40, expected or 0, sizes.records_cap)
        data = self._download("download attendance log", zk_const.CMD_ATTLOG_RRQ, limit=limit,
                              on_bytes=on_bytes if progress is not None else None)
        with drv._lock:
            drv.stats.log_downloads += 1
        try:
            body = records.split_dataset(data)
            if len(body) == 0:
                if expected:
                    raise records.DatasetError(
                        f"device reports {expected} records but sent an empty log; nothing stored")
                self._enable()
                reporter.done(0)
                return []
            size = records.choose_record_size(
                body, expected, records.RECORD_SIZES, self._quirks.record_size, drv._record_size
            )
            if expected is not None and len(body) // size < expected:
                log.warning("%s: device counted %d records but its log holds %d (%d-byte layout, decided by "
                            "evidence)", drv.where, expected, len(body) // size, size)
        except records.DatasetError as exc:
            raise self._dataset_error("attendance dataset", exc) from exc
        punches = self._decode(body, size, users_now)
        drv._record_size = size
        reporter.expected = reporter.expected or len(punches)
        reporter.done(len(punches))
        return punches

    def _decode(self, body: memoryview, size: int, users_now: int) -> RawPunchColumns:
        """Records of one layout -> punches as columns (8-byte: uids mapped); re-enables the terminal before
        decoding."""
        drv = self._driver
        self.unmapped_uids = set()
        uid_map: dict[int, str] = {}
        if size == 8:
            uid_map = self._uid_map_for(body, users_now)
        self._enable()  # everything is read: the keypad need not wait for the decode
        try:
            punches = records.parse_records(body, size, self._params.encoding, self._map_uid(uid_map))
        except records.DatasetError as exc:
            raise self._dataset_error("attendance dataset", exc) from exc
        if self.unmapped_uids:
            with drv._lock:
                drv.stats.unmapped_punches += sum(map(self.unmapped_uids.__contains__, punches.uids))
            log.warning(
                "%s serial=%s: %d uid(s) not in the user table, reported as str(uid): %s",
                drv.where, self._serial, len(self.unmapped_uids), sorted(self.unmapped_uids)[:20],
            )
        return punches

    def read_punches_after(self, known: LogPosition, progress: Progress | None = None) -> Sequence[RawPunch] | None:
        """The records after the first ``known.records`` of the log, reading only them and the one before.

        drivers.base.ReadsNewPunches. 1503 prepares the attendance dataset as for a full read; 1504 then
        asks for the byte range from record ``known.records - 1`` to the end (1504 takes any start offset
        and length: pyzk's own read_with_buffer reads its chunks at running offsets, fact sheet §2.8).
        The dataset starts with its u32 byte count, so record ``i`` is at ``4 + i * record_size``; the
        record size is the one this driver decided on the last full read of this serial (or the
        ``record_size`` quirk). That overlap record must decode to ``known.last`` (uid-mapped user id for
        the 8-byte layout), else None. None also when the log holds fewer than ``known.records`` records,
        the record size is not known yet, or the dataset's size is not whole records: the caller then
        reads everything. The keypad is locked and unlocked exactly as by read_punches(). A terminal that
        answers 1503 with the whole dataset at once (small logs over TCP) costs a full transfer here too.
        """
        drv = self._driver
        cached, self._fallback_punches = self._fallback_punches, None
        if cached is not None:  # counts() of this session already downloaded the whole log
            return self._tail_of(cached, known, progress)
        size = self._quirks.record_size or drv._record_size
        if known.records < 1 or size is None:
            return self._refuse_tail("no earlier full read of this serial decided the record size"
                                     if size is None else "no record known")
        sizes = self._read_sizes_disabled()
        users_now = -1 if sizes.unreliable else sizes.users
        if not sizes.unreliable and sizes.records < known.records:
            return self._refuse_tail(f"the device counts {sizes.records} records, fewer than the "
                                     f"{known.records} read before")
        zk = self._zk
        zk.dataset_limit = self._limit_for(40, max(sizes.records, known.records), sizes.records_cap)
        reporter = _ProgressReporter(progress, max(0, sizes.records - known.records))
        first = 4 + (known.records - 1) * size

        def on_bytes(received: int) -> None:
            reporter.update(max(0, received // size - 1))

        def run() -> tuple[bytes | None, int, bool]:
            direct, total = zk.prepare_dataset(zk_const.CMD_ATTLOG_RRQ)
            if direct is not None:
                return direct, total, True
            if total < first + size or (total - 4) % size:
                zk.free_data()
                return None, total, False
            data = zk.read_range(first, total, on_bytes if progress is not None else None)
            zk.free_data()
            return data, total, False

        data, total, direct = self._call("read new attendance records", run, in_sync_on_reply_error=False)
        with drv._lock:
            drv.stats.dataset_bytes += len(data or b"")
        if data is None:
            return self._refuse_tail(f"the {total}-byte dataset does not hold {known.records} whole "
                                     f"{size}-byte records")
        tail: memoryview
        if direct:
            try:
                body = records.split_dataset(data)
            except records.DatasetError as exc:
                raise self._dataset_error("attendance dataset", exc) from exc
            if len(body) % size or len(body) // size < known.records:
                return self._refuse_tail(f"the {len(body)}-byte log does not hold {known.records} whole "
                                         f"{size}-byte records")
            tail = body[first - 4:]
        else:
            tail = memoryview(data)
        insane = records.layout_sanity(tail, size)
        if insane is not None:
            return self._refuse_tail(insane)
        punches = self._decode(tail, size, users_now)
        if not _same_record(punches[0], known.last):
            return self._refuse_tail(f"record {known.records - 1} is not the last one read before "
                                     "(log cleared, rolled over or rewritten)")
        with drv._lock:
            drv.stats.tail_reads += 1
        reporter.expected = len(punches) - 1
        reporter.done(len(punches) - 1)
        return punches[1:]

    def _tail_of(self, punches: Sequence[RawPunch], known: LogPosition,
                 progress: Progress | None) -> Sequence[RawPunch] | None:
        """read_punches_after() over a log already downloaded whole in this session."""
        if known.records < 1 or len(punches) < known.records \
                or not _same_record(punches[known.records - 1], known.last):
            return self._refuse_tail("the log does not continue the one read before")
        new = punches[known.records:]
        _ProgressReporter(progress, len(new)).done(len(new))
        return new

    def _refuse_tail(self, why: str) -> Sequence[RawPunch] | None:
        """A tail read that cannot prove it continues the earlier read: re-enable, count, None."""
        self._enable()
        with self._driver._lock:
            self._driver.stats.tail_refused += 1
        log.info("%s serial=%s: tail read refused, a full read is needed: %s", self._driver.where,
                 self._serial, why)
        return None

    def _map_uid(self, uid_map: dict[int, str]) -> Callable[[int], str]:
        def lookup(uid: int) -> str:
            user_id = uid_map.get(uid)
            if user_id is None:
                self.unmapped_uids.add(uid)
                return str(uid)
            return user_id

        return lookup

    def _uid_map_for(self, body: memoryview, users_now: int) -> dict[int, str]:
        """uid -> user id for 8-byte records: cached on the driver, refreshed only when needed."""
        drv = self._driver
        cached = drv._users_by_uid
        if not self._quirks.read_users:
            return cached or {}
        stale = cached is None or drv._users_count != users_now
        if not stale and cached is not None:
            stale = not records.uids_in_8byte_records(body) <= cached.keys()
        if stale:
            self._load_users(users_now)
        return drv._users_by_uid or {}

    def _load_users(self, users_now: int) -> list[DeviceUser]:
        drv = self._driver
        if users_now == 0:
            users: list[DeviceUser] = []
        else:
            limit = self._limit_for(72, max(users_now, 0), max(self._sizes.users_cap, 0))
            data = self._download("download users", zk_const.CMD_USERTEMP_RRQ, zk_const.FCT_USER, limit=limit)
            with drv._lock:
                drv.stats.user_downloads += 1
            try:
                users, size = records.decode_users(
                    data,
                    max(users_now, 0),
                    encoding=self._params.encoding,
                    forced_size=self._quirks.user_size,
                    hint_size=drv._user_size,
                )
            except records.DatasetError as exc:
                raise self._dataset_error("user dataset", exc) from exc
            drv._user_size = size
        with drv._lock:
            # Merge rather than replace: a deleted user's old punches stay in an 8-byte log under a
            # uid the table no longer lists, and only this cache still knows who that was. A uid
            # the device has reassigned is overwritten (its new owner punches from now on).
            merged = dict(drv._users_by_uid or {})
            merged.update({u.uid: u.user_id for u in users})
            drv._users_by_uid = merged
            drv._users_count = users_now
        return users

    # -- optional abilities ---------------------------------------------------------------------
    def read_users(self) -> list[DeviceUser]:
        """Download the enrolled users (passwords are never decoded); refreshes the driver's cache."""
        self._read_sizes()
        return self._load_users(self._zk.users)

    # Enrolment backup/restore/sync (drivers.base.ReadsEnrolments / WritesEnrolments / DeletesEnrolments):
    # drivers/zk/enrol.py.
    def read_enrolments(self, progress: Progress | None = None) -> Enrolments:
        """Every user (password included) and fingerprint template, and the algorithm version."""
        return enrol.read_enrolments(self, progress)

    def read_changed_enrolments(self, plan: PlanTemplateReads, progress: Progress | None = None) -> Enrolments:
        """Incremental backup read: user table, then only the planned users' templates (ReadsChangedEnrolments)."""
        return enrol.read_changed_enrolments(self, plan, progress)

    def algorithm(self) -> int:
        """The terminal's fingerprint algorithm version (``~ZKFPVersion``); 0 when it does not say."""
        return enrol.read_algorithm(self)

    def write_users(self, users: Collection[EnrolledUser], progress: EnrolProgress | None = None) -> None:
        """Add or overwrite users by uid (drivers.base.WritesEnrolments)."""
        enrol.write_users(self, users, progress)

    def write_templates(self, templates: Collection[Template], owners: Collection[EnrolledUser] = (),
                        progress: EnrolProgress | None = None) -> None:
        """Store templates of ``owners`` (their user records travel in the same upload)."""
        enrol.write_templates(self, templates, owners, progress)

    def delete_users(self, uids: Collection[int]) -> None:
        """Delete users and their templates by uid (drivers.base.DeletesEnrolments)."""
        enrol.delete_users(self, uids)

    def set_time(self, local_time: datetime) -> None:
        """Set the device clock to a naive device-local time (years 2000-2099)."""
        if local_time.tzinfo is not None:
            raise ValueError("set_time takes the device-local wall clock as a naive datetime")
        records.encode_time(local_time)  # range check before touching the device
        self._call("set time", self._zk.set_time, local_time.replace(microsecond=0))

    def clear_punches(self, expected_records: int | None = None, *,
                      expected: Collection[RawPunch] | None = None) -> None:
        """Clear the attendance log. Only call once every record is stored.

        With ``expected_records`` (ZK extension, optional): the terminal is disabled, its record
        count checked, and the log cleared only if it still holds exactly that many records, so a
        punch that landed after the last download is never wiped. Otherwise raises Busy. With
        ``expected`` the log is also downloaded again while the keypad stays locked and cleared only if
        it holds exactly these records: a full log that overwrites its oldest record keeps its count.
        """
        self._fallback_punches = None  # a log downloaded by counts() is stale once cleared
        self._disable()
        self._hold_disabled = True
        try:
            if expected_records is not None:
                self._read_sizes()
                if self._zk.records != expected_records:
                    raise Busy(
                        f"{self._driver.where}: refusing to clear: device holds {self._zk.records} records, "
                        f"caller stored {expected_records}; download again first"
                    )
            if expected is not None:
                now, before = _record_multisets(self.read_punches(), expected)
                if now != before:
                    changed = sum((now - before).values())
                    raise Busy(
                        f"{self._driver.where}: refusing to clear: {changed} record(s) on the device differ "
                        "from the ones the caller stored; download again first"
                    )
            self._call("clear attendance log", self._zk.clear_attendance)
        finally:
            self._hold_disabled = False
            if self._stream_ok:
                self._enable()

    def stop_live(self) -> None:
        """Ask a running live_punches() to finish after the current wait (thread safe)."""
        self._live_stop = True
        self._zk.end_live_capture = True

    def live_punches(self, idle_timeout_s: float = 10.0) -> Iterator[LiveEvent | None]:
        """Yield punches pushed by the device as they happen; None after each idle period.

        Stops when the consumer closes the generator (``break``) or calls ``stop_live()``; then
        unregisters the events and restores the socket timeout. Events still in flight when it stops
        are not lost: the device stores every punch in its log, which the next poll downloads.
        """
        zk = self._zk
        if not self._stream_ok or self._closed:
            raise ProtocolError(f"{self._driver.where}: session unusable for live capture")
        self._live_stop = False
        # pyzk's live_capture re-downloads users and enables the device; it cannot stop cleanly from
        # the outside (its cleanup only runs if the loop ends by itself), so we finish it ourselves.
        gen = zk.live_capture(new_timeout=idle_timeout_s)
        finished = False
        try:
            while not self._live_stop:
                try:
                    item = self._call("live capture", next, gen)
                except StopIteration:
                    finished = True
                    if not self._live_stop:
                        # pyzk 0.9 swallows KeyboardInterrupt/SystemExit inside its loop and ends.
                        raise KeyboardInterrupt("live capture interrupted") from None
                    return
                if item is None:
                    yield None
                else:
                    yield LiveEvent(self._live_punch(item))
        finally:
            if not finished:
                zk.end_live_capture = True
                gen.close()
                self._end_live()

    def _live_punch(self, att: Any) -> RawPunch:
        ts: datetime = att.timestamp
        # Live events carry verify method in pyzk's "status" and the attendance state in "punch".
        uid = att.uid if isinstance(att.uid, int) else 0
        return RawPunch(
            str(att.user_id), ts.strftime("%Y-%m-%d %H:%M:%S"), ts, int(att.punch), int(att.status), uid
        )

    def _end_live(self) -> None:
        """Undo what pyzk's live_capture set up: drain pending events, REG_EVENT 0, socket timeout."""
        wire = self._zk.wire
        if wire is None or not self._stream_ok:
            return
        try:
            wire.settimeout(0.2)
            deadline = time.monotonic() + 1.0
            while time.monotonic() < deadline:
                try:
                    wire.recv(1032)
                except TimeoutError:
                    break
            wire.settimeout(self._zk._ZK__timeout)
            self._zk.reg_event(0)
        except Exception as exc:
            log.debug("%s: ending live capture: %s", self._driver.where, exc)
            self._stream_ok = False


__all__ = ["ZkDriver", "ZkParams", "ZkSession", "ZkStats", "translate"]

"""Unit tests for the ZK driver's pieces that need no device: quirks, frame ring, socket wrapper,
error translation and parameter validation."""

from __future__ import annotations

import errno
import socket
import struct

import pytest
from zk.exception import ZKErrorConnection, ZKErrorResponse, ZKNetworkError

from drivers.base import AuthRejected, Busy, ProtocolError, Unreachable
from drivers.zk import ZkParams, ZkQuirks
from drivers.zk.driver import translate
from drivers.zk.frames import FrameRing, RecordingSocket, reply_code

pytestmark = pytest.mark.timeout(10)


# ---------------------------------------------------------------------------------------------
# Quirks
# ---------------------------------------------------------------------------------------------


def test_quirks_defaults() -> None:
    q = ZkQuirks.from_mapping({})
    assert q == ZkQuirks(record_size=None, user_size=None, disable_while_reading=True, read_users=True)
    assert ZkQuirks.from_mapping(None) == q


def test_quirks_from_mapping_reads_every_key() -> None:
    q = ZkQuirks.from_mapping(
        {"record_size": 16, "user_size": 28, "disable_while_reading": False, "read_users": False}
    )
    assert (q.record_size, q.user_size, q.disable_while_reading, q.read_users) == (16, 28, False, False)


@pytest.mark.parametrize(
    ("mapping", "names"),
    [
        ({"recordsize": 40}, "recordsize"),
        ({"force_udp": True, "zzz": 1}, "force_udp, zzz"),
        ({"record_size": 32}, "record_size"),
        ({"record_size": "40"}, "record_size"),
        ({"record_size": True}, "record_size"),
        ({"user_size": 40}, "user_size"),
        ({"disable_while_reading": "yes"}, "disable_while_reading"),
        ({"read_users": 1}, "read_users"),
        ({"udp_max_chunk": 512}, "udp_max_chunk"),
        ({"udp_max_chunk": "1024"}, "udp_max_chunk"),
    ],
)
def test_quirks_reject_unknown_or_invalid_keys_by_name(mapping: dict[str, object], names: str) -> None:
    with pytest.raises(ValueError, match=names):
        ZkQuirks.from_mapping(mapping)


def test_quirks_are_frozen() -> None:
    q = ZkQuirks()
    with pytest.raises(AttributeError):
        q.record_size = 8  # type: ignore[misc]


# ---------------------------------------------------------------------------------------------
# Params
# ---------------------------------------------------------------------------------------------


def test_params_repr_hides_comm_key() -> None:
    p = ZkParams("10.0.0.5", comm_key=918273)
    assert "918273" not in repr(p)
    assert "10.0.0.5" in repr(p)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"address": ""},
        {"address": "h", "port": 0},
        {"address": "h", "transport": "http"},
        {"address": "h", "timeout_s": 0},
        {"address": "h", "comm_key": -1},
    ],
)
def test_params_validation(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        ZkParams(**kwargs)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# Frames
# ---------------------------------------------------------------------------------------------

# V3: full TCP AUTH packet for comm key 12, session 0x45CF.
AUTH_TCP = bytes.fromhex("5050827d0c000000 4e044e2ccf450100 614d323c")


def test_auth_payload_is_redacted_in_frames() -> None:
    ring = FrameRing()
    ring.add("tx", AUTH_TCP, tcp=True)
    [frame] = ring.snapshot()
    assert "61 4d 32 3c" not in frame
    assert frame.endswith("00 00 00 00")
    assert frame.startswith("tx 50 50 82 7d 0c 00 00 00 4e 04")


def test_udp_auth_payload_is_redacted_too() -> None:
    ring = FrameRing()
    ring.add("tx", AUTH_TCP[8:], tcp=False)
    assert "61 4d" not in ring.snapshot()[0]


def test_ring_keeps_last_n_and_truncates() -> None:
    ring = FrameRing(size=3, max_bytes=4)
    for i in range(5):
        ring.add("rx", bytes([i]) * 10, tcp=False)
    frames = ring.snapshot()
    assert frames == [f"rx {i:02x} {i:02x} {i:02x} {i:02x} ...(+6 bytes)" for i in (2, 3, 4)]


def test_reply_code() -> None:
    assert reply_code(bytes.fromhex("5050827d08000000d007fffc2ffb0000"), tcp=True) == 2000
    assert reply_code(bytes.fromhex("d307"), tcp=False) == 2003
    assert reply_code(b"\x00" * 10, tcp=True) is None  # no magic: a data continuation


def test_recording_socket_counts_and_raises_on_hangup() -> None:
    a, b = socket.socketpair()
    ring = FrameRing()
    try:
        wire = RecordingSocket(a, ring, tcp=True)
        b.sendall(bytes.fromhex("5050827d08000000d307000000000000"))
        assert len(wire.recv(64)) == 16
        assert wire.bytes_read == 16
        assert wire.last_reply_code == 2003
        b.close()
        with pytest.raises(ConnectionResetError):
            wire.recv(64)
    finally:
        a.close()
        b.close()


def test_recording_socket_connect_refused_raises() -> None:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # nothing listens there now
    raw = socket.socket()
    try:
        with pytest.raises(ConnectionRefusedError):
            RecordingSocket(raw, FrameRing(), tcp=True).connect_ex(("127.0.0.1", port))
    finally:
        raw.close()


# ---------------------------------------------------------------------------------------------
# Error translation
# ---------------------------------------------------------------------------------------------


def wrapped(inner: BaseException) -> ZKNetworkError:
    """Reproduce pyzk's ``except Exception as e: raise ZKNetworkError(str(e))``."""
    try:
        try:
            raise inner
        except Exception as e:
            raise ZKNetworkError(str(e))  # noqa: B904 - exactly what pyzk does
    except ZKNetworkError as outer:
        return outer


def tr(exc: BaseException, code: int | None = None) -> object:
    return translate(exc, "op", "tcp://h:4370", ["rx 00"], code)


@pytest.mark.parametrize(
    "exc",
    [
        wrapped(TimeoutError("timed out")),
        wrapped(ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")),
        wrapped(BrokenPipeError(errno.EPIPE, "Broken pipe")),
        wrapped(OSError(errno.EHOSTUNREACH, "No route to host")),
        wrapped(ConnectionResetError("device closed the connection")),
        TimeoutError("timed out"),  # raw, escaping pyzk's data phase
        ConnectionResetError("reset"),
    ],
)
def test_network_failures_are_unreachable(exc: BaseException) -> None:
    out = tr(exc)
    assert isinstance(out, Unreachable) and out.transient


@pytest.mark.parametrize(
    ("exc", "message"),
    [
        (wrapped(TimeoutError("timed out")), "no answer from h:4370/tcp within 10 s (op)"),
        (wrapped(ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")),
         "connection refused by h:4370/tcp (op): nothing listens on that port"),
        (wrapped(OSError(errno.EHOSTUNREACH, "No route to host")), "no route to h:4370/tcp (op)"),
        (ConnectionResetError("reset"), "connection to h:4370/tcp dropped during op"),
        (wrapped(BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")),
         "network error talking to h:4370/tcp during op: Resource temporarily unavailable"),
    ],
)
def test_unreachable_messages_are_plain(exc: BaseException, message: str) -> None:
    out = translate(exc, "op", "tcp://h:4370", [], None, 10.0)
    assert isinstance(out, Unreachable) and str(out) == message


def test_tcp_connect_timeout_reads_as_no_answer() -> None:
    # connect_ex() on a socket with a timeout returns EAGAIN for a timeout ("[Errno 11] Resource
    # temporarily unavailable" in the message operators used to get).
    class Raw:
        def connect_ex(self, address: object) -> int:
            return errno.EAGAIN

    with pytest.raises(TimeoutError, match="timed out"):
        RecordingSocket(Raw(), FrameRing(), tcp=True).connect_ex(("10.0.0.5", 4370))  # type: ignore[arg-type]


def test_unauthenticated_is_auth_rejected_not_transient() -> None:
    out = tr(ZKErrorResponse("Unauthenticated"), 2005)
    assert isinstance(out, AuthRejected) and not out.transient


def test_ack_retry_is_busy() -> None:
    assert isinstance(tr(ZKErrorResponse("Can't disable device"), 2003), Busy)


@pytest.mark.parametrize(
    "exc",
    [
        ZKErrorResponse("Invalid response: Can't connect"),
        ZKNetworkError("TCP packet invalid"),
        wrapped(struct.error("unpack requires a buffer of 8 bytes")),
        struct.error("unpack requires a buffer of 4 bytes"),
        IndexError("index out of range"),
        ValueError("day is out of range for month"),
        UnboundLocalError("local variable 'user_id' referenced before assignment"),
        TypeError("sequence item 0: expected a bytes-like object, NoneType found"),
        ZKErrorConnection("instance are not connected."),
    ],
)
def test_nonsense_is_protocol_error_with_frames(exc: BaseException) -> None:
    out = tr(exc, 2001)
    assert isinstance(out, ProtocolError)
    assert out.frames == ["rx 00"]


def test_udp_exchange_failures_translate() -> None:
    from drivers.zk import udp

    assert isinstance(tr(udp.UdpExchangeError("chunk at offset 0 still incomplete")), ProtocolError)
    assert isinstance(tr(udp.UdpRefused("busy", 2003)), Busy)
    assert isinstance(tr(udp.UdpRefused("refused", 2001)), ProtocolError)
    out = translate(udp.UdpNoAnswer("raw", 10.0, 5), "download attendance log", "udp://10.0.0.5:4370", [], None)
    assert isinstance(out, Unreachable)
    assert str(out) == "no answer from 10.0.0.5:4370/udp within 10 s (download attendance log; asked 5 times)"

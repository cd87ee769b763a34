"""Garbage from clients never crashes a device: random packets over UDP and TCP, then pyzk."""

from __future__ import annotations

import logging
import socket
import struct
import time
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from zk import ZK

from simulators.zk import SimDevice
from simulators.zk import protocol as p

pytestmark = pytest.mark.timeout(120)

# Commands that legitimately end the session or switch the device off are left out: the
# point is that everything else, with any payload, is answered or ignored without a crash.
_SKIP = {p.CMD_EXIT, p.CMD_RESTART, p.CMD_POWEROFF}
commands = st.one_of(
    st.sampled_from(sorted({p.CMD_OPTIONS_RRQ, p.CMD_OPTIONS_WRQ, p.CMD_GET_FREE_SIZES, p.CMD_GET_TIME,
                            p.CMD_SET_TIME, p.CMD_USER_WRQ, p.CMD_DELETE_USER, p.CMD_PREPARE_BUFFER,
                            p.CMD_READ_BUFFER, p.CMD_FREE_DATA, p.CMD_REG_EVENT, p.CMD_DISABLEDEVICE,
                            p.CMD_ENABLEDEVICE, p.CMD_AUTH, p.CMD_CONNECT, p.CMD_GET_PINWIDTH,
                            p.CMD_ACK_OK, p.CMD_ACK_ERROR, p.CMD_ACK_UNKNOWN})),
    st.integers(0, 0xFFFF).filter(lambda c: c not in _SKIP),
)


def _crashes(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name.startswith("simulators") and r.levelno >= logging.ERROR]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.lists(st.tuples(commands, st.binary(max_size=120)), min_size=1, max_size=8),
       raw=st.binary(max_size=40))
def test_random_udp_traffic(add_device: Callable[..., SimDevice], caplog: pytest.LogCaptureFixture,
                            data: list[tuple[int, bytes]], raw: bytes) -> None:
    dev = _device(add_device)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.sendto(raw, (dev.host, dev.port))
        s.sendto(p.build_packet(p.CMD_CONNECT, 0, 0), (dev.host, dev.port))
        for i, (cmd, payload) in enumerate(data):
            s.sendto(p.build_packet(cmd, 1, i + 1, payload), (dev.host, dev.port))
    finally:
        s.close()
    assert not _crashes(caplog)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.lists(st.tuples(commands, st.binary(max_size=120)), min_size=1, max_size=6))
def test_random_tcp_traffic(add_device: Callable[..., SimDevice], caplog: pytest.LogCaptureFixture,
                            data: list[tuple[int, bytes]]) -> None:
    dev = _device(add_device)
    s = socket.create_connection((dev.host, dev.port), timeout=2)
    try:
        s.sendall(p.tcp_wrap(p.build_packet(p.CMD_CONNECT, 0, 0)))
        for i, (cmd, payload) in enumerate(data):
            s.sendall(p.tcp_wrap(p.build_packet(cmd, 1, i + 1, payload)))
        # A length prefix that lies (shorter than the header) ends the connection cleanly.
        s.sendall(p.TCP_MAGIC + struct.pack("<I", 3))
    finally:
        s.close()
    assert not _crashes(caplog)


_DEVICES: dict[int, SimDevice] = {}


def _device(add_device: Callable[..., SimDevice]) -> SimDevice:
    # One device per test function (hypothesis reuses the function-scoped fixture).
    key = id(add_device)
    if key not in _DEVICES:
        _DEVICES.clear()
        _DEVICES[key] = add_device(users=10, records=50, comm_key=0)
    return _DEVICES[key]


@pytest.mark.parametrize("udp", [False, True], ids=["tcp", "udp"])
def test_device_still_serves_after_garbage(add_device: Callable[..., SimDevice],
                                           caplog: pytest.LogCaptureFixture, udp: bool) -> None:
    dev = add_device(users=10, records=50)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for i in range(300):
        s.sendto(bytes((i * 7 + j) & 0xFF for j in range(i % 50)), (dev.host, dev.port))
    s.close()
    for i in range(20):
        t = socket.create_connection((dev.host, dev.port), timeout=2)
        t.sendall(p.TCP_MAGIC + struct.pack("<I", 8 + i) + bytes(range(i)))
        t.close()
    time.sleep(0.2)
    conn = ZK(dev.host, port=dev.port, timeout=5, force_udp=udp, ommit_ping=True).connect()
    assert len(conn.get_attendance()) == dev.record_count
    conn.disconnect()
    assert not _crashes(caplog)

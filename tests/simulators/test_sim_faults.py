"""Each device fault, as a client observes it (pyzk 0.9 and raw sockets)."""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import pytest
from zk import ZK
from zk.exception import ZKErrorResponse, ZKNetworkError

from simulators.zk import Fault, Fleet, SimDevice, read_truth
from simulators.zk import protocol as p
from tests.support.fleet import settle

pytestmark = pytest.mark.timeout(60)

TRANSPORTS = [pytest.param(False, id="tcp"), pytest.param(True, id="udp")]


class RawTcp:
    """Minimal careful client: verifies checksums and lengths (what pyzk does not)."""

    def __init__(self, dev: SimDevice, timeout: float = 3) -> None:
        self.sock = socket.create_connection((dev.host, dev.port), timeout=timeout)
        self.session = 0
        self.reply_id = 0

    def recv_packet(self) -> p.Packet:
        top = self._exact(8)
        return p.parse_packet(self._exact(p.parse_tcp_top(top, 1 << 30)))

    def _exact(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("closed")
            buf += chunk
        return buf

    def cmd(self, command: int, data: bytes = b"") -> p.Packet:
        self.reply_id += 1
        self.sock.sendall(p.tcp_wrap(p.build_packet(command, self.session, self.reply_id, data)))
        pkt = self.recv_packet()
        if command == p.CMD_CONNECT:
            self.session = pkt.session_id
        return pkt

    def close(self) -> None:
        self.sock.close()


def attlog_request() -> bytes:
    return struct.pack("<bhii", 1, p.CMD_ATTLOG_RRQ, 0, 0)


def test_offline_nothing_answers_then_recovers(add_device: Callable[..., SimDevice],
                                               zk_client: Callable[..., ZK]) -> None:
    dev = add_device(faults={"offline": True})
    s = socket.socket()
    s.settimeout(0.5)
    with pytest.raises((TimeoutError, OSError)) as exc:
        s.connect((dev.host, dev.port))  # SYN dropped: times out, is not refused
    assert not isinstance(exc.value, ConnectionRefusedError)
    s.close()
    # (pyzk over TCP would first spend its fixed 10 s probe timeout; UDP shows the same.)
    with pytest.raises(ZKNetworkError):
        zk_client(dev, udp=True, timeout=0.5).connect()
    dev.clear_fault("offline")
    for udp in (False, True):
        conn = zk_client(dev, udp=udp).connect()
        assert conn.get_serialnumber() == dev.serial
        conn.disconnect()


def test_offline_switched_at_run_time_silences_open_connection(
        add_device: Callable[..., SimDevice], zk_client: Callable[..., ZK]) -> None:
    dev = add_device()
    conn = zk_client(dev, timeout=0.5).connect()
    dev.set_fault(Fault.OFFLINE, True)
    assert dev.faults == {"offline": True}
    with pytest.raises(ZKNetworkError):
        conn.get_serialnumber()
    dev.clear_fault(Fault.OFFLINE)


def test_port_closed_refuses_tcp_and_udp_is_silent(fleet: Fleet, add_device: Callable[..., SimDevice],
                                                    zk_client: Callable[..., ZK]) -> None:
    dev = add_device()
    dev.set_fault("port_closed")
    settle(fleet)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((dev.host, dev.port), timeout=1)
    with pytest.raises(ZKNetworkError):
        zk_client(dev, timeout=1).connect()
    with pytest.raises(ZKNetworkError):
        zk_client(dev, udp=True, timeout=0.5).connect()
    dev.clear_fault("port_closed")
    settle(fleet)
    conn = zk_client(dev).connect()
    assert conn.get_serialnumber() == dev.serial
    conn.disconnect()


@pytest.mark.parametrize("udp", TRANSPORTS)
def test_slow_delays_every_reply(add_device: Callable[..., SimDevice],
                                 zk_client: Callable[..., ZK], udp: bool) -> None:
    dev = add_device(faults={"slow": 0.2})
    started = time.monotonic()
    conn = zk_client(dev, udp=udp).connect()
    conn.get_serialnumber()
    conn.read_sizes()
    assert time.monotonic() - started >= 0.6
    dev.set_fault("slow", 0)
    assert "slow" not in dev.faults
    started = time.monotonic()
    for _ in range(3):  # still slow, three requests would take 0.6 s; the margin absorbs a busy machine
        conn.get_serialnumber()
    assert time.monotonic() - started < 0.6
    conn.disconnect()


def test_udp_loss_is_seeded_and_leaves_tcp_alone(add_device: Callable[..., SimDevice],
                                                 zk_client: Callable[..., ZK]) -> None:
    dev = add_device(faults={"udp_loss": 1.0})
    with pytest.raises(ZKNetworkError):
        zk_client(dev, udp=True, timeout=0.5).connect()
    conn = zk_client(dev).connect()
    assert len(conn.get_attendance()) == dev.record_count
    conn.disconnect()
    dev.set_fault("udp_loss", 0.5)
    outcomes = []
    for _ in range(12):
        try:
            c = zk_client(dev, udp=True, timeout=0.2).connect()
            outcomes.append(True)
            c.disconnect()
        except (ZKNetworkError, ZKErrorResponse):
            outcomes.append(False)
    assert True in outcomes and False in outcomes


def test_drop_mid_transfer_tcp_resets_connection(add_device: Callable[..., SimDevice],
                                                 zk_client: Callable[..., ZK]) -> None:
    dev = add_device(records=2000, faults={"drop_mid_transfer": True})
    raw = RawTcp(dev)
    raw.cmd(p.CMD_CONNECT)
    raw.reply_id += 1
    raw.sock.sendall(p.tcp_wrap(p.build_packet(p.CMD_PREPARE_BUFFER, raw.session, raw.reply_id,
                                               attlog_request())))
    top = raw._exact(8)
    announced = p.parse_tcp_top(top, 1 << 30)
    got = b""
    with pytest.raises((ConnectionError, OSError)):
        while True:
            chunk = raw.sock.recv(65536)
            if not chunk:
                raise ConnectionError("eof")
            got += chunk
    assert 8 < len(got) < announced  # about half the dataset, then the connection died
    raw.close()
    conn = zk_client(dev).connect()
    with pytest.raises(Exception):  # noqa: B017 - pyzk lets the raw socket error escape
        conn.get_attendance()
    dev.clear_fault("drop_mid_transfer")
    conn = zk_client(dev).connect()
    assert len(conn.get_attendance()) == 2000
    conn.disconnect()


def test_drop_mid_transfer_udp_goes_silent_mid_read(add_device: Callable[..., SimDevice],
                                                    zk_client: Callable[..., ZK]) -> None:
    dev = add_device(records=2000, faults={"drop_mid_transfer": 0.5})
    conn = zk_client(dev, udp=True, timeout=1).connect()
    with pytest.raises((TimeoutError, ZKNetworkError, ZKErrorResponse)):
        conn.get_attendance()
    # The session stays silent; a new connection is answered again.
    conn2 = zk_client(dev, udp=True).connect()
    assert conn2.get_serialnumber() == dev.serial
    conn2.disconnect()


def test_corrupt_chunk_checksum_is_detectable(add_device: Callable[..., SimDevice],
                                              zk_client: Callable[..., ZK]) -> None:
    dev = add_device(records=100, faults={"corrupt_chunk": True})
    raw = RawTcp(dev)
    raw.cmd(p.CMD_CONNECT)
    reply = raw.cmd(p.CMD_PREPARE_BUFFER, attlog_request())
    assert reply.command == p.CMD_DATA
    assert not reply.checksum_ok  # careful clients see the damage
    assert len(reply.data) == len(dev.dataset("attlog"))
    assert reply.data != dev.dataset("attlog")
    raw.close()
    # pyzk does not verify checksums: the first record comes back damaged.
    conn = zk_client(dev).connect()
    atts = conn.get_attendance()
    first = dev.punches()[0]
    assert len(atts) == 100
    assert atts[0].user_id != first["user_id"] or atts[0].timestamp != p.decode_time(first["encoded_time"])
    conn.disconnect()


@pytest.mark.parametrize("udp", TRANSPORTS)
def test_corrupt_chunk_length_mismatch(add_device: Callable[..., SimDevice],
                                       zk_client: Callable[..., ZK], udp: bool) -> None:
    dev = add_device(records=100, record_layout=16, faults={"corrupt_chunk": "length"})
    if not udp:
        raw = RawTcp(dev)
        raw.cmd(p.CMD_CONNECT)
        reply = raw.cmd(p.CMD_PREPARE_BUFFER, attlog_request())
        assert reply.checksum_ok
        claimed = struct.unpack_from("<I", reply.data)[0]
        assert claimed == len(reply.data) - 4 + 16  # size field says one record more
        raw.close()
        return
    conn = zk_client(dev, udp=True).connect()
    atts = conn.get_attendance()
    assert len(atts) == 99  # last 4 bytes of the chunk missing: one record short
    conn.disconnect()


@pytest.mark.parametrize("udp", TRANSPORTS)
def test_hang_accepts_but_never_answers(add_device: Callable[..., SimDevice],
                                        zk_client: Callable[..., ZK], udp: bool) -> None:
    dev = add_device(faults={"hang": True})
    if not udp:
        s = socket.create_connection((dev.host, dev.port), timeout=1)  # accepted
        s.close()
    started = time.monotonic()
    with pytest.raises(ZKNetworkError, match="timed out"):
        zk_client(dev, udp=udp, timeout=0.5).connect()
    assert time.monotonic() - started >= 0.5
    dev.clear_fault("hang")
    conn = zk_client(dev, udp=udp).connect()
    conn.disconnect()


@pytest.mark.parametrize("udp", TRANSPORTS)
def test_wrong_comm_key(add_device: Callable[..., SimDevice], zk_client: Callable[..., ZK],
                        udp: bool) -> None:
    dev = add_device(comm_key=4321, faults={"wrong_comm_key": True})
    with pytest.raises(ZKErrorResponse, match="Unauthenticated"):
        zk_client(dev, udp=udp, password=4321).connect()
    dev.clear_fault("wrong_comm_key")
    zk_client(dev, udp=udp, password=4321).connect().disconnect()
    nokey = add_device(faults={"wrong_comm_key": 77})
    with pytest.raises(ZKErrorResponse, match="Unauthenticated"):
        zk_client(nokey, udp=udp).connect()
    zk_client(nokey, udp=udp, password=77).connect().disconnect()


def test_clock_skew(add_device: Callable[..., SimDevice], zk_client: Callable[..., ZK]) -> None:
    dev = add_device()
    ref = add_device()
    dev.set_fault("clock_skew", -600)
    conn = zk_client(dev).connect()
    skew = (conn.get_time() - ref.now()).total_seconds()
    assert -602 <= skew <= -598
    conn.disconnect()


def test_clock_reset_new_punches_carry_2000(add_device: Callable[..., SimDevice],
                                            zk_client: Callable[..., ZK], truth_path: Path) -> None:
    dev = add_device(records=10)
    dev.set_fault("clock_reset")
    conn = zk_client(dev).connect()
    assert conn.get_time() - datetime(2000, 1, 1) < (datetime(2000, 1, 1, 0, 1) - datetime(2000, 1, 1))
    rows = dev.add_punches(2)
    assert all(r["time"].startswith("2000-01-01 00:0") for r in rows)
    atts = conn.get_attendance()
    assert [a.timestamp.year for a in atts[-2:]] == [2000, 2000]
    conn.disconnect()
    assert read_truth(truth_path)[-2:] == rows
    dev.clear_fault("clock_reset")
    assert dev.now().year > 2020


def test_storage_full_refuses_new_punches(add_device: Callable[..., SimDevice],
                                          zk_client: Callable[..., ZK], truth_path: Path) -> None:
    dev = add_device(records=50, faults={"storage_full": True})
    before = len(read_truth(truth_path))
    assert dev.add_punches(5) == []
    assert dev.record_count == 50
    assert len(read_truth(truth_path)) == before
    conn = zk_client(dev).connect()
    conn.read_sizes()
    assert (conn.records, conn.rec_cap, conn.rec_av) == (50, 50, 0)
    conn.disconnect()
    dev.clear_fault("storage_full")
    assert len(dev.add_punches(5)) == 5


def test_capacity_full_and_overwrite_oldest(add_device: Callable[..., SimDevice],
                                            truth_path: Path) -> None:
    full = add_device(records=20, records_cap=20)
    assert full.add_punches(3) == []
    ring = add_device(records=20, records_cap=20, overwrite_oldest=True)
    first = ring.punches()[0]
    rows = ring.add_punches(3)
    assert len(rows) == 3 and ring.record_count == 20
    assert ring.punches()[0] != first
    assert rows == read_truth(truth_path)[-3:]


def test_log_cleared_at_keypad(add_device: Callable[..., SimDevice],
                               zk_client: Callable[..., ZK], truth_path: Path) -> None:
    dev = add_device(records=30)
    before = read_truth(truth_path)
    dev.set_fault("log_cleared")
    assert dev.record_count == 0 and "log_cleared" not in dev.faults
    conn = zk_client(dev).connect()
    conn.read_sizes()
    assert conn.records == 0
    conn.disconnect()
    assert read_truth(truth_path) == before  # the punches happened; truth keeps them


def test_replaced_device_new_serial_empty_log_same_address(
        fleet: Fleet, add_device: Callable[..., SimDevice], zk_client: Callable[..., ZK]) -> None:
    dev = add_device(serial="OLD0001", records=30)
    host, port = dev.host, dev.port
    old_conn = zk_client(dev, timeout=1).connect()
    dev.set_fault("replaced", "NEW0001")
    assert (dev.serial, dev.host, dev.port, dev.record_count) == ("NEW0001", host, port, 0)
    settle(fleet)
    with pytest.raises(ZKNetworkError):
        old_conn.get_serialnumber()  # the old terminal's connection is gone
    conn = zk_client(dev).connect()
    assert conn.get_serialnumber() == "NEW0001"
    conn.disconnect()
    dev.replace()
    assert dev.serial == "NEW0001R2"  # automatic serials derive from the current one


def test_garbage_timestamps_recorded_in_truth(add_device: Callable[..., SimDevice],
                                              zk_client: Callable[..., ZK], truth_path: Path) -> None:
    dev = add_device(records=200, faults={"garbage_timestamps": 0.1})
    bad = [r for r in dev.punches() if not p.is_valid_time(r["encoded_time"])]
    assert 5 <= len(bad) <= 40
    truth_times = {(r["user_id"], r["time"]) for r in read_truth(truth_path)}
    assert all((r["user_id"], r["time"]) in truth_times for r in bad)
    assert all(r["time"][5:7] in ("02", "04", "06", "09", "11") and r["time"][8:10] in ("30", "31")
               for r in bad)
    conn = zk_client(dev).connect()
    with pytest.raises(ValueError):  # pyzk cannot build a datetime for day 31 of a short month
        conn.get_attendance()
    conn.disconnect()
    dev.set_fault("garbage_timestamps", 1.0)
    rows = dev.add_punches(3)
    assert all(not p.is_valid_time(p.encode_fields(*map(int, r["time"].replace("-", " ").replace(
        ":", " ").split()))) for r in rows)


def test_bad_fault_values_are_rejected_with_a_clear_message(
        add_device: Callable[..., SimDevice]) -> None:
    dev = add_device()
    with pytest.raises(ValueError, match="unknown fault 'melt'"):
        dev.set_fault("melt")
    with pytest.raises(ValueError, match=r"'udp_loss'.*outside"):
        dev.set_fault("udp_loss", 3)
    with pytest.raises(ValueError, match="'slow': expected a number"):
        dev.set_fault("slow", "fast")
    assert dev.faults == {}

"""Fleet lifecycle: add before/after start, many devices on 127.0.x.y, clean stop."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from zk import ZK

from simulators.zk import DeviceSpec, Fleet, read_truth

pytestmark = pytest.mark.timeout(60)


def test_add_before_and_after_start_and_lookup(tmp_path: Path) -> None:
    fleet = Fleet(truth_path=tmp_path / "t.jsonl")
    early = fleet.add(DeviceSpec(serial="EARLY", users=5, records=10))
    assert early.port != 0  # bound at add(), served once started
    try:
        fleet.start()
        late = fleet.add(DeviceSpec(serial="LATE", users=5, records=10, udp=False))
        assert [d.serial for d in fleet.devices] == ["EARLY", "LATE"]
        assert fleet.device("LATE") is late
        with pytest.raises(KeyError, match="no device with serial 'NOPE'"):
            fleet.device("NOPE")
        with pytest.raises(ValueError, match="already in this fleet"):
            fleet.add(DeviceSpec(serial="EARLY"))
        for dev, udp in ((early, True), (early, False), (late, False)):
            conn = ZK(dev.host, port=dev.port, timeout=5, force_udp=udp, ommit_ping=True).connect()
            assert conn.get_serialnumber() == dev.serial
            conn.disconnect()
        fleet.remove("LATE")
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((late.host, late.port), timeout=1)
    finally:
        fleet.stop()
    fleet.stop()  # idempotent
    assert len(read_truth(tmp_path / "t.jsonl")) == 20
    # Every socket is closed: the port numbers can be bound again.
    for proto in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        s = socket.socket(socket.AF_INET, proto)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((early.host, early.port))
        s.close()


def test_stop_without_start_closes_sockets() -> None:
    fleet = Fleet()
    dev = fleet.add(DeviceSpec(serial="IDLE", users=1, records=0))
    fleet.stop()
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((dev.host, dev.port))
    s.close()


def test_many_devices_on_their_own_loopback_addresses() -> None:
    with Fleet() as fleet:
        devs = [fleet.add(DeviceSpec(serial=f"LO{i:03d}", host=f"127.0.77.{i + 1}", port=0,
                                     users=3, records=i, seed=i)) for i in range(150)]
        assert len({(d.host, d.port) for d in devs}) == 150
        for d in devs:
            conn = ZK(d.host, port=d.port, timeout=5, force_udp=True, ommit_ping=True).connect()
            conn.read_sizes()
            assert (conn.get_serialnumber(), conn.records) == (d.serial, d.record_count)
            conn.disconnect()


def test_port_in_use_is_a_clear_error() -> None:
    with Fleet() as fleet:
        a = fleet.add(DeviceSpec(serial="A1", users=1, records=0))
        with pytest.raises(OSError, match=f"cannot bind 127.0.0.1:{a.port}"):
            fleet.add(DeviceSpec(serial="A2", users=1, records=0, port=a.port))
        assert [d.serial for d in fleet.devices] == ["A1"]

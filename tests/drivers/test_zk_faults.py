"""ZkDriver against simulated faults: every failure is classified, bounded in time, leaves no partial
data behind, and the terminal ends enabled."""

from __future__ import annotations

import time
from typing import Any

import pytest

from drivers.base import AuthRejected, DriverError, IdentityMismatch, ProtocolError, Unreachable
from drivers.zk import ZkDriver, ZkQuirks
from tests.support.drivers import punch_key, zk_driver_for
from tests.support.fleet import add_sim_device, settle, sim_truth

pytestmark = pytest.mark.timeout(60)

TRANSPORTS = ["tcp", "udp"]


def read_all(drv: ZkDriver) -> list[Any]:
    with drv.connect() as s:
        return s.read_punches()


def clear_and_settle(fleet: Any, dev: Any, fault: str) -> None:
    """Clear a fault and let the simulator finish applying it (tests.support.fleet.settle)."""
    dev.clear_fault(fault)
    settle(fleet)


def set_and_settle(fleet: Any, dev: Any, fault: str, value: Any = True) -> None:
    """Set a fault and let the simulator finish applying it (see clear_and_settle)."""
    dev.set_fault(fault, value)
    settle(fleet)


def wait_enabled(dev: Any, within_s: float) -> bool:
    """True once the simulated terminal is enabled.

    The simulator keeps DISABLE per client session and clears it when that session ends; on TCP
    the old session ends only when its server task notices our close, shortly after the driver
    returns. (A real terminal's ENABLE, which the driver sends on a second connection, is global.)
    """
    deadline = time.monotonic() + within_s
    while not dev.enabled and time.monotonic() < deadline:
        time.sleep(0.02)
    return bool(dev.enabled)


def assert_truth(fleet: Any, dev: Any, punches: list[Any]) -> None:
    assert [punch_key(p) for p in punches] == sim_truth(fleet.truth_file, dev.serial)


# ---------------------------------------------------------------------------------------------
# Authentication
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_comm_key_right_wrong_and_missing(fleet: Any, transport: str) -> None:
    dev = add_sim_device(fleet, comm_key=123456, records=40)
    assert_truth(fleet, dev, read_all(zk_driver_for(dev, transport, comm_key=123456)))
    for key in (0, 123457):
        with pytest.raises(AuthRejected) as ei:
            read_all(zk_driver_for(dev, transport, comm_key=key))
        assert not ei.value.transient
        assert "123456" not in str(ei.value) and "123457" not in str(ei.value)
    assert dev.enabled


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_wrong_comm_key_fault_is_auth_rejected_not_unreachable(fleet: Any, transport: str) -> None:
    dev = add_sim_device(fleet, comm_key=42, records=10)
    dev.set_fault("wrong_comm_key", True)
    with pytest.raises(AuthRejected):
        read_all(zk_driver_for(dev, transport, comm_key=42))
    dev.clear_fault("wrong_comm_key")
    assert len(read_all(zk_driver_for(dev, transport, comm_key=42))) == 10


# ---------------------------------------------------------------------------------------------
# Unreachable, bounded by the timeout
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("fault", ["offline", "hang", "port_closed"])
def test_dead_device_is_unreachable_within_the_timeout(fleet: Any, transport: str, fault: str) -> None:
    dev = add_sim_device(fleet, records=10)
    set_and_settle(fleet, dev, fault)
    drv = zk_driver_for(dev, transport, timeout_s=1.0)
    t0 = time.monotonic()
    with pytest.raises(Unreachable) as ei:
        read_all(drv)
    elapsed = time.monotonic() - t0
    assert ei.value.transient
    # connect() is one request; allow scheduling slack but not a second full timeout.
    assert elapsed < 1.8, f"{fault}/{transport} took {elapsed:.2f}s"
    clear_and_settle(fleet, dev, fault)
    assert len(read_all(drv)) == 10


def test_port_closed_on_tcp_is_refused_at_once(fleet: Any) -> None:
    dev = add_sim_device(fleet, records=5)
    set_and_settle(fleet, dev, "port_closed")
    t0 = time.monotonic()
    with pytest.raises(Unreachable, match="refused"):
        read_all(zk_driver_for(dev, "tcp", timeout_s=3.0))
    assert time.monotonic() - t0 < 1.0


def test_unused_port_is_unreachable() -> None:
    import socket

    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    from drivers.zk import ZkParams

    with pytest.raises(Unreachable):
        read_all(ZkDriver(ZkParams("127.0.0.1", port, timeout_s=1.0)))


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_slow_device_within_timeout_still_works(fleet: Any, transport: str) -> None:
    dev = add_sim_device(fleet, records=50)
    dev.set_fault("slow", 0.1)
    assert_truth(fleet, dev, read_all(zk_driver_for(dev, transport, timeout_s=2.0)))


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_device_hanging_mid_session_is_unreachable_and_ends_enabled(fleet: Any, transport: str) -> None:
    dev = add_sim_device(fleet, records=50)
    drv = zk_driver_for(dev, transport, timeout_s=1.0)
    with pytest.raises(Unreachable), drv.connect() as s:
        s.counts()
        dev.set_fault("hang", True)
        s.read_punches()
    clear_and_settle(fleet, dev, "hang")
    assert dev.enabled
    assert_truth(fleet, dev, read_all(drv))


# ---------------------------------------------------------------------------------------------
# Broken transfers: never partial data, always re-enabled
# ---------------------------------------------------------------------------------------------

TRANSFER_MODES = [
    pytest.param("tcp", False, id="tcp-direct"),
    pytest.param("tcp", True, id="tcp-buffered"),
    pytest.param("udp", False, id="udp"),
]


@pytest.mark.parametrize(("transport", "buffered"), TRANSFER_MODES)
@pytest.mark.parametrize("fault_value", [("corrupt_chunk", "checksum"), ("corrupt_chunk", "length"),
                                         ("drop_mid_transfer", 0.5)], ids=["corrupt-checksum",
                                                                             "corrupt-length", "drop"])
def test_broken_transfer_fails_cleanly(
    fleet: Any, transport: str, buffered: bool, fault_value: tuple[str, Any]
) -> None:
    name, value = fault_value
    dev = add_sim_device(fleet, records=3000, tcp_buffered=buffered)
    drv = zk_driver_for(dev, transport, timeout_s=1.5)
    dev.set_fault(name, value)
    with pytest.raises((ProtocolError, Unreachable)) as ei:
        read_all(drv)
    if value == "checksum":
        # Framing intact, bytes flipped: only the checksum can tell, and it must.
        assert isinstance(ei.value, ProtocolError), ei.value
    if isinstance(ei.value, ProtocolError):
        assert ei.value.frames, "protocol errors carry the last frames"
    assert dev.enabled, "terminal left disabled after a failed download"
    dev.clear_fault(name)
    assert_truth(fleet, dev, read_all(drv))
    assert dev.enabled


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_checksum_verification_can_be_turned_off_by_quirk(fleet: Any, transport: str) -> None:
    # Documents what the quirk costs: with verification off, a corrupted chunk is NOT detected.
    dev = add_sim_device(fleet, records=100)
    dev.set_fault("corrupt_chunk", "checksum")
    drv = zk_driver_for(dev, transport, quirks=ZkQuirks(verify_checksums=False))
    punches = read_all(drv)
    assert [punch_key(p) for p in punches] != sim_truth(fleet.truth_file, dev.serial)


def test_udp_loss_never_yields_wrong_data(fleet: Any) -> None:
    dev = add_sim_device(fleet, records=2000)
    truth = sim_truth(fleet.truth_file, dev.serial)
    dev.set_fault("udp_loss", 0.02)
    drv = zk_driver_for(dev, "udp", timeout_s=0.5)
    outcomes = []
    for _ in range(4):
        try:
            punches = read_all(drv)
        except (ProtocolError, Unreachable) as exc:
            outcomes.append(type(exc).__name__)
            continue
        assert [punch_key(p) for p in punches] == truth
        outcomes.append("ok")
    dev.clear_fault("udp_loss")
    # Lost datagrams are re-requested (udp.py): at 2 % loss every download completes.
    assert outcomes == ["ok"] * 4
    assert_truth(fleet, dev, read_all(drv))
    assert dev.enabled, outcomes


# ---------------------------------------------------------------------------------------------
# Identity, replacement, clock and log faults
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_replaced_device_is_an_identity_mismatch(fleet: Any, transport: str) -> None:
    dev = add_sim_device(fleet, serial="OLD1", records=20)
    pinned = zk_driver_for(dev, transport, expected_serial="OLD1")
    assert len(read_all(pinned)) == 20
    dev.replace("NEW2")
    with pytest.raises(IdentityMismatch) as ei:
        read_all(pinned)
    assert (ei.value.expected, ei.value.found) == ("OLD1", "NEW2")
    loose = zk_driver_for(dev, transport)
    with loose.connect() as s:
        assert s.info().serial == "NEW2"
        assert s.read_punches() == []


def test_clock_reset_and_garbage_timestamps_are_kept_as_text(fleet: Any) -> None:
    dev = add_sim_device(fleet, records=400, faults={"garbage_timestamps": 0.2})
    dev.set_fault("clock_reset", True)
    drv = zk_driver_for(dev)
    with drv.connect() as s:
        info = s.info()
        punches = s.read_punches()
    assert info.device_time is not None and info.device_time.year == 2000
    assert_truth(fleet, dev, punches)
    bad = [p for p in punches if p.local_time is None]
    assert bad, "the fault should have produced impossible dates"
    assert all(len(p.time_text) == 19 for p in bad)


def test_log_cleared_at_keypad_reads_empty(fleet: Any) -> None:
    dev = add_sim_device(fleet, records=30)
    drv = zk_driver_for(dev)
    assert len(read_all(drv)) == 30
    dev.set_fault("log_cleared", True)
    with drv.connect() as s:
        assert s.counts().records == 0
        assert s.read_punches() == []


def test_storage_full_reports_capacity(fleet: Any) -> None:
    dev = add_sim_device(fleet, records=100, records_cap=100)
    dev.set_fault("storage_full", True)
    with zk_driver_for(dev).connect() as s:
        c = s.counts()
    assert c.records_cap == 100 and c.records == 100


# ---------------------------------------------------------------------------------------------
# Interrupted sessions
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_keyboard_interrupt_mid_download_still_reenables(
    fleet: Any, transport: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from drivers.zk import frames

    dev = add_sim_device(fleet, records=3000, tcp_buffered=True)
    drv = zk_driver_for(dev, transport, timeout_s=2.0)
    real_recv = frames.RecordingSocket.recv
    seen = {"n": 0, "armed": False}

    def recv(self: Any, bufsize: int, *a: Any) -> bytes:
        data = real_recv(self, bufsize, *a)
        if seen["armed"]:
            seen["n"] += 1
            if seen["n"] == 6:  # somewhere inside the chunked download
                raise KeyboardInterrupt
        return data

    monkeypatch.setattr(frames.RecordingSocket, "recv", recv)
    with pytest.raises(KeyboardInterrupt), drv.connect() as s:
        seen["armed"] = True
        s.read_punches()
    monkeypatch.undo()
    # The broken connection was abandoned and a second one re-enabled the terminal.
    assert drv.stats.fresh_reenables == 1
    assert wait_enabled(dev, 2.0)
    assert_truth(fleet, dev, read_all(drv))


def test_errors_are_always_driver_errors(fleet: Any) -> None:
    dev = add_sim_device(fleet, records=100)
    drv = zk_driver_for(dev, "udp", timeout_s=0.5)
    for fault, value in [("corrupt_chunk", "length"), ("drop_mid_transfer", 0.3), ("hang", True)]:
        dev.set_fault(fault, value)
        with pytest.raises(DriverError):
            read_all(drv)
        dev.clear_fault(fault)
        assert dev.enabled

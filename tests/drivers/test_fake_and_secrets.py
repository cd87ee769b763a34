"""FakeDriver's scripting API (what gateway tests rely on) and the ZK driver's secrecy of the comm key."""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime
from typing import Any

import pytest

from drivers.base import AuthRejected, Busy, IdentityMismatch, ProtocolError, Unreachable
from drivers.fake import FakeDevice, FakeDriver, make_punch
from tests.support.drivers import zk_driver_for
from tests.support.fleet import add_sim_device

pytestmark = pytest.mark.timeout(30)


def test_fake_scripted_failures_happen_in_order_then_stop() -> None:
    drv = FakeDriver()
    drv.script("connect", Unreachable("off"), None, AuthRejected("key"))
    with pytest.raises(Unreachable):
        drv.connect().__enter__()
    with drv.connect() as s:
        assert s.counts().records == 0
    with pytest.raises(AuthRejected):
        drv.connect().__enter__()
    with drv.connect():
        pass
    assert drv.calls == ["connect", "connect", "counts", "connect", "connect"]
    assert drv.sessions_opened == drv.sessions_closed == 2


def test_fake_failed_read_leaves_device_enabled() -> None:
    drv = FakeDriver(FakeDevice(punches=[make_punch("1", datetime(2024, 1, 15, 8))]))
    drv.fail("read_punches", ProtocolError("garbled", frames=["rx 00"]))
    with pytest.raises(ProtocolError), drv.connect() as s:
        s.read_punches()
    assert drv.device.enabled
    with drv.connect() as s:
        assert len(s.read_punches()) == 1


def test_fake_identity_and_unknown_operation() -> None:
    drv = FakeDriver(FakeDevice(serial="X"), expected_serial="Y")
    with pytest.raises(IdentityMismatch):
        drv.connect().__enter__()
    with pytest.raises(ValueError, match="unknown operation"):
        drv.fail("reboot", Busy("x"))


def test_fake_delay_and_impossible_dates() -> None:
    drv = FakeDriver()
    drv.add_punches([make_punch("7", "2024-02-31 08:00:00")], live=False)
    drv.delay("counts", 0.2)
    with drv.connect() as s:
        t0 = time.monotonic()
        s.counts()
        assert time.monotonic() - t0 >= 0.2
        [p] = s.read_punches()
    assert p.time_text == "2024-02-31 08:00:00" and p.local_time is None


def test_fake_live_punches_from_another_thread() -> None:
    drv = FakeDriver()
    timer = threading.Timer(0.1, lambda: drv.add_punches([make_punch("9", datetime(2024, 1, 15, 8))]))
    timer.start()
    try:
        with drv.connect() as s:
            for ev in s.live_punches(idle_timeout_s=0.05):
                if ev is not None:
                    assert ev.punch.user_id == "9"
                    break
    finally:
        timer.join()


# ---------------------------------------------------------------------------------------------
# Comm key secrecy (ZkDriver)
# ---------------------------------------------------------------------------------------------

KEY = 918273


@pytest.mark.parametrize("transport", ["tcp", "udp"])
def test_comm_key_never_in_frames_or_logs(
    fleet: Any, transport: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    dev = add_sim_device(fleet, comm_key=KEY, records=5)
    good = zk_driver_for(dev, transport, comm_key=KEY)
    with good.connect() as s:
        s.read_punches()
    bad = zk_driver_for(dev, transport, comm_key=KEY + 1)
    with pytest.raises(AuthRejected) as ei:
        bad.connect().__enter__()
    frames = good.frames.snapshot() + bad.frames.snapshot()
    auth = [f for f in frames if f.startswith("tx") and "4e 04" in f[:40]]
    assert auth, "the AUTH request should be in the ring (redacted)"
    for f in auth:
        assert f.endswith("00 00 00 00"), f
    blob = caplog.text + repr(good.params) + str(ei.value) + repr(ei.value)
    assert str(KEY) not in blob and str(KEY + 1) not in blob

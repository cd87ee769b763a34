"""Driver tests' harness: one uniform ``Harness`` over FakeDriver and over ZkDriver + simulator.

The contract suite (tests/drivers/test_contract.py) only talks to a Harness, so the same checks run over
every driver. The fixtures built on it (``harness``) live in tests/drivers/conftest.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from drivers.base import Driver
from drivers.fake import FakeDevice, FakeDriver, make_punch
from drivers.zk import ZkDriver, ZkParams, ZkQuirks
from tests.support.fleet import add_sim_device, sim_truth


@dataclass
class Harness:
    """One device + a driver for it, seen the same way whatever the driver is."""

    name: str
    driver: Driver
    #: What the device's log holds, as (user_id, time_text, state, verify) in device order.
    truth: Callable[[], list[tuple[str, str, int, int]]]
    add_punches: Callable[[int], object]
    enabled: Callable[[], bool]
    serial: str
    make_driver: Callable[..., Driver] = field(repr=False, default=None)  # type: ignore[assignment]


def punch_key(p: Any) -> tuple[str, str, int, int]:
    """The fields the truth file and every driver agree on."""
    return (p.user_id, p.time_text, p.state, p.verify)


# ---------------------------------------------------------------------------------------------
# FakeDriver harness
# ---------------------------------------------------------------------------------------------


def fake_harness() -> Harness:
    base = datetime(2024, 1, 15, 7, 0, 0)
    dev = FakeDevice(serial="FAKE0042")
    dev.punches = [make_punch(str(100 + i % 7), base + timedelta(minutes=i), i % 2, 1) for i in range(25)]
    drv = FakeDriver(dev)
    counter = {"n": 0}

    def add(n: int) -> None:
        start = base + timedelta(days=1, minutes=counter["n"])
        counter["n"] += n
        drv.add_punches(make_punch("900", start + timedelta(minutes=i), 0, 15) for i in range(n))

    return Harness(
        name="fake",
        driver=drv,
        truth=lambda: [punch_key(p) for p in dev.punches],
        add_punches=add,
        enabled=lambda: dev.enabled,
        serial=dev.serial,
        make_driver=lambda **kw: FakeDriver(dev, **kw),
    )


# ---------------------------------------------------------------------------------------------
# Simulator harness
# ---------------------------------------------------------------------------------------------


def zk_driver_for(dev: Any, transport: str = "tcp", comm_key: int = 0, timeout_s: float = 3.0,
                  quirks: ZkQuirks | None = None, **kw: Any) -> ZkDriver:
    """A ZkDriver pointed at a simulated device."""
    return ZkDriver(
        ZkParams(dev.host, dev.port, transport=transport, comm_key=comm_key, timeout_s=timeout_s, **kw),  # type: ignore[arg-type]
        quirks,
    )


def zk_harness(fleet: Any, transport: str = "tcp", **spec: Any) -> Harness:
    dev = add_sim_device(fleet, **spec)
    key = spec.get("comm_key", 0)

    return Harness(
        name=f"zk-{transport}",
        driver=zk_driver_for(dev, transport, key),
        truth=lambda: sim_truth(fleet.truth_file, dev.serial),
        add_punches=lambda n: dev.add_punches(n),
        enabled=lambda: bool(dev.enabled),
        serial=dev.serial,
        make_driver=lambda **kw: zk_driver_for(dev, transport, key, **kw),
    )

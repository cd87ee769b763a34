"""Helpers for driver tests: a uniform ``Harness`` over FakeDriver and over ZkDriver + simulator.

The contract suite (test_contract.py) only talks to a Harness, so the same checks run over every
driver. The simulator is imported lazily: until it exists the ZK half of the suite skips.
Test modules import from here, not from ``conftest``: with tests/simulators collected in the same
run, ``import conftest`` would find that directory's conftest instead (both are top-level
"conftest" modules). The fixtures themselves live in conftest.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from drivers.base import Driver
from drivers.fake import FakeDevice, FakeDriver, make_punch
from drivers.zk import ZkDriver, ZkParams, ZkQuirks


def sim_available() -> bool:
    """True when ``from simulators.zk import DeviceSpec, Fleet`` works."""
    try:
        from simulators.zk import DeviceSpec, Fleet  # noqa: F401
    except ImportError:
        return False
    return True


needs_sim = pytest.mark.skipif(not sim_available(), reason="simulators.zk (DeviceSpec, Fleet) not importable yet")


@dataclass
class Harness:
    """One device + a driver for it, seen the same way whatever the driver is."""

    name: str
    driver: Driver
    #: What the device's log holds, as (user_id, time_text, state, verify) in device order.
    truth: Callable[[], list[tuple[str, str, int, int]]]
    add_punches: Callable[[int], None]
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


def sim_truth(path: Path, serial: str) -> list[tuple[str, str, int, int]]:
    """The device's log according to the simulator's truth file, in write order."""
    from simulators.zk.truth import read_truth

    return [
        (r["user_id"], r["time"], int(r["state"]), int(r["verify"]))
        for r in read_truth(path)
        if r["serial"] == serial
    ]


def add_sim_device(fleet: Any, **spec: Any) -> Any:
    """Add a device to the fleet with test-friendly defaults."""
    from simulators.zk import DeviceSpec

    defaults: dict[str, Any] = dict(
        serial="SIM1", host="127.0.0.1", port=0, tcp=True, udp=True, record_layout=40, user_layout=72,
        comm_key=0, users=50, records=300, seed=1, faults={},
    )
    defaults.update(spec)
    return fleet.add(DeviceSpec(**defaults))


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

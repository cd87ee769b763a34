"""Fixtures for the simulator tests: devices in the running fleet (``fleet`` from tests/conftest.py), pyzk clients."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from zk import ZK

from simulators.zk import DeviceSpec, Fleet, SimDevice


@pytest.fixture
def add_device(fleet: Fleet) -> Callable[..., SimDevice]:
    """Add a small device to the fleet: ``add_device(record_layout=16, ...)``."""
    counter = iter(range(1, 10_000))

    def add(**kw: Any) -> SimDevice:
        kw.setdefault("serial", f"SIM{next(counter):04d}")
        kw.setdefault("users", 20)
        kw.setdefault("records", 200)
        return fleet.add(DeviceSpec(**kw))

    return add


def make_client(dev: SimDevice, udp: bool = False, password: int = 0, timeout: float = 5) -> ZK:
    """An unmodified pyzk 0.9 client for ``dev`` (no ping: there is no ping binary here)."""
    return ZK(dev.host, port=dev.port, timeout=timeout, password=password, force_udp=udp,
              ommit_ping=True)


@pytest.fixture
def zk_client() -> Callable[..., ZK]:
    """Factory fixture: ``zk_client(dev, udp=True, password=5)``."""
    return make_client

"""Fixtures for driver tests (helpers in tests/support/drivers.py; ``fleet`` comes from tests/conftest.py)."""

from __future__ import annotations

import pytest

from tests.support.drivers import Harness, fake_harness, zk_harness


@pytest.fixture(params=["fake", "zk-tcp", "zk-udp"])
def harness(request: pytest.FixtureRequest) -> Harness:
    """The contract suite's subject: FakeDriver, ZkDriver over TCP, ZkDriver over UDP."""
    if request.param == "fake":
        return fake_harness()
    f = request.getfixturevalue("fleet")
    return zk_harness(f, request.param.split("-")[1])

"""Fixtures for driver tests (helpers in drivers_harness.py, which test modules import directly)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.drivers import Harness, fake_harness, sim_available, zk_harness


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Any]:
    """A running simulator fleet with its truth file in tmp_path."""
    if not sim_available():
        pytest.skip("simulators.zk (DeviceSpec, Fleet) not importable yet")
    from simulators.zk import Fleet

    with Fleet(truth_path=tmp_path / "truth.jsonl") as f:
        f.truth_file = tmp_path / "truth.jsonl"  # type: ignore[attr-defined]
        yield f


@pytest.fixture(params=["fake", "zk-tcp", "zk-udp"])
def harness(request: pytest.FixtureRequest) -> Harness:
    """The contract suite's subject: FakeDriver, ZkDriver over TCP, ZkDriver over UDP."""
    if request.param == "fake":
        return fake_harness()
    f = request.getfixturevalue("fleet")
    return zk_harness(f, request.param.split("-")[1])

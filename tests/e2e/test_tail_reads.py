"""End-to-end: a growing simulated terminal polled by the real poller and ZK driver, on SQLite and PostgreSQL.

Exactly-once always: the stored punches equal the simulator's ground truth after every poll, including a punch
of a dead clock (2000-01-01, numbered by its occurrence in the whole log) arriving between two polls. Whether the
new records are read as a tail depends on the driver: while the ZK session lacks drivers.base.ReadsNewPunches
every grown log is downloaded whole and this test checks only exactly-once; once it has the ability, the test
also checks that a grown log costs only its new records.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from drivers.base import ReadsNewPunches
from gateway.config import Config
from gateway.models import PollOutcome
from gateway.polling.poller import DevicePoller
from gateway.store.db import create_db_engine, upgrade
from gateway.store.punches import Store
from tests.support.config import DeviceEntry, make_config
from tests.support.fleet import sim_spec, truth_keys
from tests.support.gateway import diff, stored_keys

DEAD_CLOCK = datetime(2000, 1, 1, 0, 0, 0)


@pytest.fixture
def poller_for(db_url: str) -> Iterator[Any]:
    engines = []

    def build(config: Config) -> DevicePoller:
        engine = create_db_engine(db_url)
        engines.append(engine)
        upgrade(engine)
        store = Store(engine, config.site.office_code)
        store.sync_devices(config.devices)
        return DevicePoller(config, store)

    yield build
    for engine in engines:
        engine.dispose()


@pytest.mark.timeout(180)
def test_a_growing_terminal_is_stored_exactly_once_and_read_by_its_tail_when_the_driver_can(
        fleet: Any, db_url: str, tmp_path: Path, poller_for: Any) -> None:
    # Buffered TCP answers, as real terminals give for a log this size (a direct answer is always the whole log).
    sim = fleet.add(sim_spec("E2E-TAIL", records=3000, users=30, seed=31, tcp_buffered=True))
    config = make_config(db_url, [DeviceEntry("tail", sim)], tmp_path)
    poller: DevicePoller = poller_for(config)
    device = config.device("tail")
    truth_path = tmp_path / "truth.jsonl"
    with poller.driver_for(device).connect() as session:
        tail_capable = isinstance(session, ReadsNewPunches)

    def poll() -> PollOutcome:
        o = poller.poll_once(device)
        assert o.ok, (o.error_kind, o.error)
        truth = truth_keys(truth_path, [sim.serial])
        assert stored_keys(db_url, [sim.serial]) == truth, diff(truth, stored_keys(db_url, [sim.serial]))
        assert sim.enabled
        return o

    first = poll()
    assert (first.mode, first.new_punches) == ("full", 3000)
    assert poll().mode == "count"

    sim.add_punches(5)
    grown = poll()
    assert grown.new_punches == 5
    if tail_capable:
        assert (grown.mode, grown.records_read) == ("tail", 5)
        assert grown.bytes_read < first.bytes_read / 20, (grown.bytes_read, first.bytes_read)
    else:
        assert grown.mode == "full"

    # The clock dies: the same user punches twice at 2000-01-01 00:00:00, in two polls. The second record can
    # only be told from the first by its position in the whole log, so it must not be numbered within a tail.
    user = sim.users()[0].user_id
    for _ in range(2):
        sim.add_punches(1, at=DEAD_CLOCK, user_id=user)
        dead = poll()
        assert (dead.mode, dead.new_punches) == ("full", 1)

    # The clock is set again. The next read is still whole (the last record read has a dead clock's time, which
    # cannot prove where the log stood); from the one after on, reading on from the position is safe again.
    sim.add_punches(1)
    assert poll().mode == "full"
    sim.add_punches(3)
    again = poll()
    assert again.new_punches == 3
    assert again.mode == ("tail" if tail_capable else "full")

"""A USB import and the real network poll of the same simulated terminal, in both orders, on SQLite and PostgreSQL:
each punch is stored exactly once (the simulator's ground truth, as a multiset), dead-clock records included."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest

from gateway.store import schema as s
from gateway.usbimport.importer import UsbImporter
from tests.support.config import DeviceEntry, make_config
from tests.support.fleet import sim_spec, truth_keys
from tests.support.gateway import RunningGateway, diff, stored_keys, table_rows
from tests.support.usb import write_sim_export


@pytest.mark.timeout(120)
@pytest.mark.parametrize("layout", [40, 16, 8])
def test_usb_import_first_then_network_poll_stores_nothing_twice(fleet, db_url: str, tmp_path: Path,
                                                                 layout: int) -> None:
    sim = fleet.add(sim_spec(f"USB-FIRST-{layout}", record_layout=layout, user_layout=72 if layout != 16 else 28,
                             records=300, seed=21 + layout))
    sim.add_punches(3, at=datetime(2000, 1, 1, 0, 0, 0))  # a dead clock: rtc_reset records, occurrence-numbered
    config = make_config(db_url, [DeviceEntry("gate", sim, serial=sim.serial)], tmp_path)
    truth_path = tmp_path / "truth.jsonl"
    with RunningGateway(config) as gw:
        export = write_sim_export(truth_path, sim.serial, tmp_path / "1_attlog.dat")
        report = UsbImporter(config, gw.gateway.store).import_file(export, device_id="gate")
        assert (report.records, report.new, report.known, report.quarantined) == (303, 303, 0, 0)
        truth = truth_keys(truth_path, [sim.serial])
        assert stored_keys(db_url, [sim.serial]) == truth, diff(truth, stored_keys(db_url, [sim.serial]))
        outcome = gw.poll("gate")
        assert outcome.ok and outcome.mode == "full", (outcome.error_kind, outcome.error)
        assert outcome.new_punches == 0
        sim.add_punches(4)
        assert gw.poll("gate").new_punches == 4
    truth = truth_keys(truth_path, [sim.serial])
    assert stored_keys(db_url, [sim.serial]) == truth, diff(truth, stored_keys(db_url, [sim.serial]))


@pytest.mark.timeout(120)
def test_network_poll_first_then_usb_import_while_the_network_is_down(fleet, db_url: str, tmp_path: Path) -> None:
    sim = fleet.add(sim_spec("USB-AFTER", records=250, seed=31))
    config = make_config(db_url, [DeviceEntry("gate", sim)], tmp_path)
    truth_path = tmp_path / "truth.jsonl"
    with RunningGateway(config) as gw:
        first = gw.poll("gate")
        assert first.ok and first.new_punches == 250
        # The network breaks; people keep punching; staff fetch the log at the keypad.
        sim.add_punches(6)
        sim.add_punches(2, at=datetime(2000, 1, 1, 0, 0, 0))
        importer = UsbImporter(config, gw.gateway.store)
        export = write_sim_export(truth_path, sim.serial, tmp_path / f"{sim.serial}_attlog.dat")
        report = importer.import_file(export, device_id="gate")
        assert (report.serial_from, report.records, report.new, report.known) == ("store", 258, 8, 250)
        assert importer.import_file(export, device_id="gate").new == 0  # the same stick again
        # The network is back: the poll finds everything already stored.
        again = gw.poll("gate")
        assert again.ok and again.new_punches == 0, (again.error_kind, again.error)
    truth = truth_keys(truth_path, [sim.serial])
    assert stored_keys(db_url, [sim.serial]) == truth, diff(truth, stored_keys(db_url, [sim.serial]))
    outcomes = [r["outcome"] for r in table_rows(db_url, s.poll_runs)]
    assert outcomes.count("usb_import") == 2 and "ok" in outcomes

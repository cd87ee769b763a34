"""End-to-end: simulated fleets polled by the real daemon (Gateway in-process) on SQLite and PostgreSQL.

The stored punches must equal the simulator's ground truth exactly, as multisets (nothing missing,
nothing twice), across layouts, transports, comm keys, repeated polls, growing logs, logs cleared
at the keypad and replaced terminals; every terminal is enabled again after every poll.
"""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest

from gateway.store import schema as s
from simulators.zk.profiles import PROFILES
from tests.support.config import DeviceEntry, make_config
from tests.support.fleet import DRIVER_READY_PROFILES, profile_spec, sim_spec, truth_keys
from tests.support.gateway import RunningGateway, diff, stored_keys, table_rows


@pytest.mark.timeout(120)
def test_mixed_fleet_matches_ground_truth_exactly_and_stays_enabled(
        fleet, db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("T_KEY_C", "13579")
    monkeypatch.setenv("T_KEY_D", "2468")
    a = fleet.add(sim_spec("E2E-A", record_layout=40, user_layout=72, records=800, seed=1))
    b = fleet.add(sim_spec("E2E-B", record_layout=16, user_layout=28, records=500, seed=2))
    c = fleet.add(sim_spec("E2E-C", record_layout=8, user_layout=28, records=400, seed=3, comm_key=13579))
    d = fleet.add(sim_spec("E2E-D", record_layout=40, user_layout=72, records=300, seed=4, comm_key=2468))
    e = fleet.add(sim_spec("E2E-E", record_layout=8, user_layout=72, records=250, seed=5))
    entries = [DeviceEntry("a", a, "tcp"), DeviceEntry("b", b, "udp"), DeviceEntry("c", c, "tcp", "T_KEY_C"),
               DeviceEntry("d", d, "udp", "T_KEY_D"), DeviceEntry("e", e, "udp")]
    config = make_config(db_url, entries, tmp_path)
    sims = [a, b, c, d, e]
    serials = [x.serial for x in sims]
    with RunningGateway(config) as gw:
        first = gw.poll_all(["a", "b", "c", "d", "e"])
        assert all(o.ok for o in first.values()), {k: (o.error_kind, o.error) for k, o in first.items()}
        assert all(x.enabled for x in sims)
        truth = truth_keys(tmp_path / "truth.jsonl", serials)
        assert sum(truth.values()) == 800 + 500 + 400 + 300 + 250
        assert stored_keys(db_url, serials) == truth, diff(truth, stored_keys(db_url, serials))

        # Nothing changed: the next polls only read the counts and store nothing new.
        again = gw.poll_all(["a", "b", "c", "d", "e"])
        assert {o.mode for o in again.values()} == {"count"}
        assert sum(o.new_punches for o in again.values()) == 0

        # New punches on some devices: only those are downloaded, and each is stored once.
        a.add_punches(7)
        c.add_punches(3)
        e.add_punches(2)
        grown = gw.poll_all(["a", "b", "c", "d", "e"])
        assert {k for k, o in grown.items() if o.mode in ("full", "tail")} == {"a", "c", "e"}
        assert {k: o.new_punches for k, o in grown.items()} == {"a": 7, "b": 0, "c": 3, "d": 0, "e": 2}
        assert all(x.enabled for x in sims)
    truth = truth_keys(tmp_path / "truth.jsonl", serials)
    assert stored_keys(db_url, serials) == truth, diff(truth, stored_keys(db_url, serials))
    runs = table_rows(db_url, s.poll_runs)
    assert len(runs) >= 15 and {r["outcome"] for r in runs} <= {"ok", "unchanged"}
    users = table_rows(db_url, s.device_users)
    assert {u["device_serial"] for u in users} == set(serials)


@pytest.mark.timeout(180)
def test_every_real_terminal_profile_on_each_of_its_transports_matches_ground_truth(
        fleet, db_url: str, tmp_path: Path) -> None:
    """The mixed-profile fleet (issue 9): real-terminal framings (UDP packet counters, 1008-byte TCP packets),
    size-reply layouts and record layouts of each model, every transport it has, read exactly once."""
    entries: list[DeviceEntry] = []
    for n, profile in enumerate(DRIVER_READY_PROFILES):
        for transport in ("tcp", "udp"):
            if not PROFILES[profile].settings.get(transport, True):
                continue  # the model has no such transport (x100c: UDP only)
            sim = fleet.add(profile_spec(f"P-{profile}-{transport}".upper(), profile, records=300 + 37 * n,
                                         seed=100 + 2 * n + (transport == "udp")))
            entries.append(DeviceEntry(f"{profile}-{transport}", sim, transport))
    config = make_config(db_url, entries, tmp_path)
    ids = [e.id for e in entries]
    serials = [e.sim.serial for e in entries]
    with RunningGateway(config) as gw:
        first = gw.poll_all(ids)
        assert all(o.ok for o in first.values()), {k: (o.error_kind, o.error) for k, o in first.items()}
        for e in entries:
            e.sim.add_punches(5)
        grown = gw.poll_all(ids)
        assert {k: o.new_punches for k, o in grown.items()} == dict.fromkeys(ids, 5)
        assert all(e.sim.enabled for e in entries)
    truth = truth_keys(tmp_path / "truth.jsonl", serials)
    assert stored_keys(db_url, serials) == truth, diff(truth, stored_keys(db_url, serials))


@pytest.mark.timeout(120)
def test_log_growing_during_polls_and_cleared_at_keypad_loses_nothing(fleet, db_url: str, tmp_path: Path) -> None:
    # Slow replies make each download take a while, so punches land while the gateway reads.
    dev = fleet.add(sim_spec("E2E-GROW", records=1500, seed=11, faults={"slow": 0.002}))
    config = make_config(db_url, [DeviceEntry("grow", dev)], tmp_path)
    stop = threading.Event()

    def punch_in_background() -> None:
        while not stop.wait(0.02):
            dev.add_punches(1)

    worker = threading.Thread(target=punch_in_background, name="test-puncher")
    with RunningGateway(config) as gw:
        worker.start()
        try:
            outcomes = [gw.poll("grow") for _ in range(4)]
        finally:
            stop.set()
            worker.join()
        assert all(o.ok for o in outcomes), [(o.error_kind, o.error) for o in outcomes]
        gw.poll("grow")  # catch up with the last background punches
        truth = truth_keys(tmp_path / "truth.jsonl")
        assert stored_keys(db_url) == truth, diff(truth, stored_keys(db_url))

        # Somebody clears the log at the keypad; new punches follow.
        held_before = dev.record_count
        dev.clear_log()
        # A minute ahead: the cleared log no longer guards against re-using an old (user, second) key.
        dev.add_punches(5, at=dev.now() + timedelta(minutes=1))
        after_clear = gw.poll("grow")
        assert after_clear.ok and after_clear.mode == "full"
        assert after_clear.counts is not None and after_clear.counts.records == 5
        assert after_clear.previous_record_count == held_before
        assert after_clear.new_punches == 5
        assert dev.enabled
    truth = truth_keys(tmp_path / "truth.jsonl")
    assert sum(truth.values()) > 1500 + 5
    assert stored_keys(db_url) == truth, diff(truth, stored_keys(db_url))


@pytest.mark.timeout(90)
def test_replaced_terminal_is_polled_under_its_new_serial_and_history_kept(
        fleet, sqlite_url: str, tmp_path: Path) -> None:
    dev = fleet.add(sim_spec("E2E-OLD", records=120, seed=21))
    config = make_config(sqlite_url, [DeviceEntry("front", dev)], tmp_path)
    with RunningGateway(config) as gw:
        assert gw.poll("front").ok
        dev.replace("E2E-NEW", records=30)
        o = gw.poll("front")
        assert o.ok and o.serial == "E2E-NEW" and o.previous_serial == "E2E-OLD"
        assert o.new_punches == 30
    truth = truth_keys(tmp_path / "truth.jsonl")
    assert stored_keys(sqlite_url) == truth
    (device,) = table_rows(sqlite_url, s.devices)
    assert device["serial"] == "E2E-NEW"
    idents = table_rows(sqlite_url, s.device_identities)
    assert {i["serial"] for i in idents} == {"E2E-OLD", "E2E-NEW"}


@pytest.mark.timeout(90)
def test_pinned_serial_mismatch_is_recorded_and_nothing_is_read(fleet, sqlite_url: str, tmp_path: Path) -> None:
    dev = fleet.add(sim_spec("E2E-OTHER", records=50, seed=22))
    config = make_config(sqlite_url, [DeviceEntry("front", dev, serial="E2E-EXPECTED")], tmp_path)
    with RunningGateway(config) as gw:
        o = gw.poll("front")
    assert not o.ok and o.error_kind == "identity_mismatch"
    assert dev.enabled
    assert stored_keys(sqlite_url) == {}
    assert [r["outcome"] for r in table_rows(sqlite_url, s.poll_runs)][-1] == "identity_mismatch"


@pytest.mark.timeout(120)
def test_failures_are_classified_recorded_and_recovered_without_loss(fleet, db_url: str, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("T_KEY", "1111")
    flaky = fleet.add(sim_spec("E2E-FLAKY", records=600, seed=31, faults={"drop_mid_transfer": True}))
    locked = fleet.add(sim_spec("E2E-KEY", records=40, seed=32, comm_key=2222))
    down = fleet.add(sim_spec("E2E-DOWN", records=40, seed=33, faults={"port_closed": True}))
    config = make_config(db_url, [DeviceEntry("flaky", flaky), DeviceEntry("locked", locked, "tcp", "T_KEY"),
                                  DeviceEntry("down", down)], tmp_path)
    with RunningGateway(config) as gw:
        res = gw.poll_all(["flaky", "locked", "down"])
        assert not res["flaky"].ok and res["flaky"].error_kind in ("protocol_error", "unreachable")
        assert res["locked"].error_kind == "auth_rejected"
        assert res["down"].error_kind == "unreachable"
        assert flaky.enabled and locked.enabled and down.enabled
        flaky.clear_fault("drop_mid_transfer")
        ok = gw.poll("flaky")
        assert ok.ok and ok.new_punches == 600
        assert flaky.enabled
    assert stored_keys(db_url, ["E2E-FLAKY"]) == truth_keys(tmp_path / "truth.jsonl", ["E2E-FLAKY"])
    outcomes = [r["outcome"] for r in table_rows(db_url, s.poll_runs)]
    assert "auth_rejected" in outcomes and "unreachable" in outcomes and "ok" in outcomes


@pytest.mark.timeout(60)
def test_scheduled_polls_run_without_being_asked(fleet, sqlite_url: str, tmp_path: Path) -> None:
    dev = fleet.add(sim_spec("E2E-SCHED", records=60, seed=41))
    config = make_config(sqlite_url, [DeviceEntry("sched", dev)], tmp_path, interval_s=5)
    with RunningGateway(config, scheduled=True) as gw:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and len([o for o in gw.recorder.outcomes if o.ok]) < 2:
            time.sleep(0.2)
    assert len([o for o in gw.recorder.outcomes if o.ok]) >= 2
    assert stored_keys(sqlite_url) == truth_keys(tmp_path / "truth.jsonl")

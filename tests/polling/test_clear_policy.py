"""The clear_when_full_ratio policy: the daemon clears a terminal at the ratio only, after everything is stored.

Against the simulator, on SQLite and PostgreSQL: our own clears are not keypad clears (no log_shrank) while a
real keypad clear still is, forwarding makes the policy wait for the outbox to drain, and the ratio is validated.
(Split from the `fpgw devices clear` tests, which live in tests/cli/test_clear.py.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway.store import schema as s
from tests.support.config import DeviceEntry, make_config
from tests.support.fleet import sim_spec, truth_keys
from tests.support.gateway import RunningGateway, clear_runs, diff, shrank_alerts, stored_keys, table_rows


@pytest.mark.timeout(120)
def test_policy_clears_at_the_ratio_only_and_keypad_clears_still_raise_log_shrank(
        fleet: Any, db_url: str, tmp_path: Path) -> None:
    full = fleet.add(sim_spec("CLR-FULL", records=90, records_cap=100, seed=15))
    below = fleet.add(sim_spec("CLR-BELOW", records=80, records_cap=100, seed=16))
    unknown = fleet.add(sim_spec("CLR-NOCAP", records=95, records_cap=100, seed=17))
    entries = [DeviceEntry("full", full), DeviceEntry("below", below),
               DeviceEntry("nocap", unknown, extra={"clear_when_full_ratio": 0})]
    config = make_config(db_url, entries, tmp_path, polling={"clear_when_full_ratio": 0.9})
    assert [d.clear_when_full_ratio for d in config.devices] == [0.9, 0.9, 0.0]
    serials = [full.serial, below.serial, unknown.serial]
    with RunningGateway(config) as gw:
        got = gw.poll_all(["full", "below", "nocap"])
        assert all(o.ok for o in got.values())
        assert got["full"].cleared_records == 90 and got["full"].counts.records == 0
        assert got["below"].cleared_records == 0 and got["nocap"].cleared_records == 0
        assert full.record_count == 0 and below.record_count == 80 and unknown.record_count == 95
        assert full.enabled and below.enabled and unknown.enabled
        truth = truth_keys(tmp_path / "truth.jsonl", serials)
        assert stored_keys(db_url, serials) == truth, diff(truth, stored_keys(db_url, serials))

        # Below the ratio it fills up to it: the next full poll clears it too.
        below.add_punches(12)
        o = gw.poll("below")
        assert o.cleared_records == 92 and below.record_count == 0

        # Our own clears are not keypad clears; a keypad clear still is.
        full.add_punches(2)
        assert gw.poll("full").new_punches == 2
        gw.poll_all(["full", "below"])
        assert "log_shrank" not in gw.problems("full") and "log_shrank" not in gw.problems("below")
        unknown.clear_log()
        assert gw.poll("nocap").ok
        gw.poll("nocap")
        assert "log_shrank" in gw.problems("nocap")
    assert {a["device_id"] for a in shrank_alerts(db_url)} == {"nocap"}
    runs = clear_runs(db_url)
    assert sorted(r["records_read"] for r in runs) == [90, 92]
    truth = truth_keys(tmp_path / "truth.jsonl", serials)
    assert stored_keys(db_url, serials) == truth, diff(truth, stored_keys(db_url, serials))


@pytest.mark.timeout(90)
def test_policy_with_clear_requires_forwarded_waits_for_the_outbox_to_drain(
        fleet: Any, db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from sqlalchemy import create_engine

    monkeypatch.setenv("T_FWD_TOKEN", "x" * 32)
    a = fleet.add(sim_spec("CLR-PFWD", records=95, records_cap=100, seed=18))
    config = make_config(db_url, [DeviceEntry("a", a, extra={"clear_when_full_ratio": 0.9})], tmp_path,
                         forward={"url": "http://127.0.0.1:9", "token_env": "T_FWD_TOKEN", "interval_s": 3600},
                         polling={"clear_requires_forwarded": True})
    assert config.polling.clear_requires_forwarded
    assert config.polling.clear_when_full_ratio == 0.0
    with RunningGateway(config) as gw:
        o = gw.poll("a")
        assert o.ok and o.new_punches == 95 and o.cleared_records == 0 and a.record_count == 95
        o = gw.poll("a")  # outbox not drained: not even a download
        assert o.mode == "count" and a.record_count == 95
        engine = create_engine(db_url)
        with engine.begin() as conn:
            conn.execute(s.outbox.delete())  # what the forwarder does once BKD accepted them
        engine.dispose()
        o = gw.poll("a")
        assert o.mode == "full" and o.cleared_records == 95 and a.record_count == 0 and a.enabled
    truth = truth_keys(tmp_path / "truth.jsonl", [a.serial])
    assert stored_keys(db_url, [a.serial]) == truth


@pytest.mark.timeout(90)
def test_policy_by_default_clears_a_full_terminal_while_bkd_is_down(fleet: Any, db_url: str, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """clear_requires_forwarded = false (default): punches durable in the office database are enough."""
    monkeypatch.setenv("T_FWD_TOKEN", "x" * 32)
    a = fleet.add(sim_spec("CLR-PDOWN", records=95, records_cap=100, seed=28))
    # Nothing listens on port 9: BKD is unreachable, every punch stays pending in the outbox.
    config = make_config(db_url, [DeviceEntry("a", a, extra={"clear_when_full_ratio": 0.9})], tmp_path,
                         forward={"url": "http://127.0.0.1:9", "token_env": "T_FWD_TOKEN", "interval_s": 3600})
    assert config.polling.clear_requires_forwarded is False
    with RunningGateway(config) as gw:
        o = gw.poll("a")
        assert o.ok and o.new_punches == 95 and o.cleared_records == 95 and a.record_count == 0 and a.enabled
    assert len(table_rows(db_url, s.outbox)) == 95  # still forwarded once BKD is back
    truth = truth_keys(tmp_path / "truth.jsonl", [a.serial])
    assert stored_keys(db_url, [a.serial]) == truth


def test_clear_ratio_config_is_validated(tmp_path: Path) -> None:
    from gateway.config import ConfigError, parse_config

    doc = {"site": {"office_code": "1801.01.02"}, "polling": {"clear_when_full_ratio": 0.05},
           "devices": [{"id": "a", "address": "127.0.0.1", "clear_when_full_ratio": 1.5}]}
    with pytest.raises(ConfigError) as err:
        parse_config(doc, base_dir=tmp_path)
    text = "\n".join(err.value.problems)
    assert "polling.clear_when_full_ratio" in text and "devices[0].clear_when_full_ratio" in text
    doc = {"site": {"office_code": "1801.01.02"}, "polling": {"clear_when_full_ratio": 0.9},
           "devices": [{"id": "a", "address": "127.0.0.1"},
                       {"id": "b", "address": "127.0.0.2", "clear_when_full_ratio": 0}]}
    cfg = parse_config(doc, base_dir=tmp_path)
    assert [d.clear_when_full_ratio for d in cfg.devices] == [0.9, 0.0]

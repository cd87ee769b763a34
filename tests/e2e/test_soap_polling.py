"""End-to-end: simulated SOAP terminals (simulators/soap) polled by the real daemon on SQLite and PostgreSQL.

The stored punches must equal the simulator's ground truth exactly (nothing missing, nothing twice) across
repeated polls and growing logs; rows that are no punch are quarantined once; a wrong comm key opens the
auth_rejected health problem; an automatic clear happens only after the punches are stored, with ClearData 3.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import create_engine

from gateway.store.quarantine import QuarantineRepo
from tests.support.config import DeviceEntry, make_config
from tests.support.fleet import truth_keys
from tests.support.gateway import RunningGateway, diff, stored_keys
from tests.support.soap import soap_entry_extra, soap_fleet, soap_spec


def quarantined(db_url: str, device_id: str) -> list[tuple[str, str, str]]:
    engine = create_engine(db_url)
    try:
        return [(q.source, q.raw, q.reason) for q in QuarantineRepo(engine).recent(device_id)]
    finally:
        engine.dispose()


@pytest.mark.timeout(120)
def test_soap_terminals_are_stored_exactly_once_and_unreadable_rows_quarantined_once(
        db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("T_SOAP_KEY", "24680")
    truth = tmp_path / "truth.jsonl"
    with soap_fleet(truth) as fleet:
        a = fleet.add(soap_spec("SOAP-E2E-A", records=300, comm_key=24680, seed=21))
        b = fleet.add(soap_spec("SOAP-E2E-B", records=150, garbage_rows=3, bad_dates=2, workcode=False,
                                content_length=True, trailing_bytes="\r\n", seed=22))
        c = fleet.add(soap_spec("SOAP-E2E-C", records=90, malformed_header=True, pin2=True, seed=23))
        entries = [DeviceEntry("a", a, comm_key_env="T_SOAP_KEY", extra=soap_entry_extra(a)),
                   DeviceEntry("b", b, extra=soap_entry_extra(b)),
                   DeviceEntry("c", c, extra=soap_entry_extra(c, punch_user="PIN2"))]
        config = make_config(db_url, entries, tmp_path)
        assert {d.driver for d in config.devices} == {"soap"}
        serials = [a.serial, b.serial, c.serial]
        with RunningGateway(config) as gw:
            first = gw.poll_all(["a", "b", "c"])
            assert all(o.ok for o in first.values()), {k: (o.error_kind, o.error) for k, o in first.items()}
            expected = truth_keys(truth, serials)
            assert sum(expected.values()) == 300 + 152 + 90
            assert stored_keys(db_url, serials) == expected, diff(expected, stored_keys(db_url, serials))
            assert len(quarantined(db_url, "b")) == 3 and {q[0] for q in quarantined(db_url, "b")} == {"soap"}

            again = gw.poll_all(["a", "b", "c"])
            assert {o.mode for o in again.values()} == {"count"}
            assert sum(o.new_punches for o in again.values()) == 0

            a.add_punches(4)
            b.add_punches(6)
            grown = gw.poll_all(["a", "b", "c"])
            assert {k: o.new_punches for k, o in grown.items()} == {"a": 4, "b": 6, "c": 0}
            # b's last punch has an impossible date: no proof record for a tail read, so b reads everything.
            assert grown["a"].mode == "tail" and grown["b"].mode == "full"
            assert len(quarantined(db_url, "b")) == 3, "a row already kept is not kept again"
        expected = truth_keys(truth, serials)
        assert stored_keys(db_url, serials) == expected, diff(expected, stored_keys(db_url, serials))
        assert sum(a.clears.values()) == sum(b.clears.values()) == sum(c.clears.values()) == 0


@pytest.mark.timeout(120)
def test_a_wrong_comm_key_opens_auth_rejected_with_a_clear_error(db_url: str, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("T_SOAP_WRONG", "1111")
    with soap_fleet(tmp_path / "truth.jsonl") as fleet:
        term = fleet.add(soap_spec("SOAP-E2E-KEY", records=50, comm_key=2222))
        config = make_config(db_url, [DeviceEntry("k", term, comm_key_env="T_SOAP_WRONG",
                                                  extra=soap_entry_extra(term))], tmp_path)
        with RunningGateway(config) as gw:
            outcome = gw.poll("k")
            assert not outcome.ok and outcome.error_kind == "auth_rejected"
            assert outcome.error is not None and "comm key" in outcome.error
            assert "auth_rejected" in gw.problems("k")
        assert stored_keys(db_url, [term.serial]) == {}
        assert term.requests["GetAttLog"] == 0 and term.record_count == 50


@pytest.mark.timeout(120)
def test_the_clear_policy_clears_with_value_3_only_after_every_punch_is_stored(db_url: str, tmp_path: Path) -> None:
    truth = tmp_path / "truth.jsonl"
    with soap_fleet(truth) as fleet:
        term = fleet.add(soap_spec("SOAP-E2E-CLR", records=80, garbage_rows=1))
        extra = {**soap_entry_extra(term, log_capacity=100), "clear_when_full_ratio": 0.5}
        config = make_config(db_url, [DeviceEntry("x", term, extra=extra)], tmp_path)
        with RunningGateway(config) as gw:
            outcome = gw.poll("x")
            assert outcome.ok and outcome.cleared_records == 80
            assert term.record_count == 0 and dict(term.clears) == {"3": 1}
            expected = truth_keys(truth, [term.serial])
            assert stored_keys(db_url, [term.serial]) == expected, diff(expected, stored_keys(db_url, [term.serial]))
            assert len(quarantined(db_url, "x")) == 1
            term.add_punches(3)
            assert gw.poll("x").new_punches == 3
        expected = truth_keys(truth, [term.serial])
        assert stored_keys(db_url, [term.serial]) == expected

"""The SOAP driver against the simulated SOAP terminal (simulators/soap) on loopback: what it reads, how it
fails, what it refuses to clear, and the quirks of the fact sheet (§1 of ../shared/reference/other-protocols.md)."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from drivers import get_driver
from drivers.base import (
    AuthRejected,
    Busy,
    ClearsLog,
    EnablesDevice,
    IdentityMismatch,
    LogPosition,
    ProtocolError,
    ReadsNewPunches,
    ReadsUsers,
    SetsClock,
    Unreachable,
)
from drivers.soap import SoapDriver, SoapParams, SoapQuirks, check_quirks
from simulators.soap import SoapFleet, SoapTerminal
from simulators.zk.truth import read_truth
from tests.support.soap import soap_fleet, soap_spec

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[SoapFleet]:
    with soap_fleet(tmp_path / "truth.jsonl") as f:
        yield f


def driver_for(term: SoapTerminal, *, key: int = 0, serial: str | None = None, timeout_s: float = 3.0,
               **quirks: object) -> SoapDriver:
    return SoapDriver(SoapParams(term.host, term.port, comm_key=key, timeout_s=timeout_s, expected_serial=serial),
                      SoapQuirks.from_mapping(quirks))


def truth_of(tmp_path: Path, serial: str) -> Counter[tuple[str, str, int, int]]:
    return Counter((r["user_id"], r["time"], r["state"], r["verify"]) for r in read_truth(tmp_path / "truth.jsonl")
                   if r["serial"] == serial)


def as_keys(punches: list) -> Counter[tuple[str, str, int, int]]:  # type: ignore[type-arg]
    return Counter((p.user_id, p.time_text, p.state, p.verify) for p in punches)


def test_reads_log_users_serial_and_clock_matching_ground_truth(fleet: SoapFleet, tmp_path: Path) -> None:
    term = fleet.add(soap_spec("SOAP-A", records=150, comm_key=4321, clock_skew_s=-120))
    drv = driver_for(term, key=4321)
    with drv.connect() as s:
        assert isinstance(s, ReadsNewPunches) and isinstance(s, ReadsUsers) and isinstance(s, SetsClock)
        assert isinstance(s, ClearsLog) and isinstance(s, EnablesDevice)
        info = s.info()
        assert info.serial == "SOAP-A" and info.device_time is not None
        skew = (info.device_time - term.now()).total_seconds()
        assert abs(skew) <= 2
        counts = s.counts()
        assert counts.records == 150 and counts.users == 25 and not counts.unreliable
        punches = s.read_punches()
        assert s.unreadable == []
        users = s.read_users()
        one = s.read_user_punches("3")
    assert one and {p.user_id for p in one} == {"3"} and one == [p for p in punches if p.user_id == "3"]
    assert as_keys(punches) == truth_of(tmp_path, "SOAP-A") and len(punches) == 150
    assert {u.user_id for u in users} == {str(i) for i in range(1, 26)}
    assert drv.stats.log_downloads == 1, "counts and the read share one download"
    assert s.bytes_read > 150 * 60


def test_wrong_comm_key_is_auth_rejected_not_an_empty_log(fleet: SoapFleet) -> None:
    silent = fleet.add(soap_spec("SOAP-K1", comm_key=777))
    wordy = fleet.add(soap_spec("SOAP-K2", comm_key=777, wrong_key_answer="refusal"))
    for term in (silent, wordy):
        with pytest.raises(AuthRejected) as err, driver_for(term, key=778).connect():
            pytest.fail("a session opened with a wrong key")
        assert err.value.kind == "auth_rejected" and not err.value.transient
        assert "comm key" in str(err.value) and "778" not in str(err.value)
        assert term.requests["GetAttLog"] == 0
    with driver_for(silent, key=777).connect() as s:
        assert s.counts().records == 120


def test_unreadable_rows_are_reported_with_reasons_and_bad_dates_stay_punches(fleet: SoapFleet,
                                                                               tmp_path: Path) -> None:
    term = fleet.add(soap_spec("SOAP-G", records=30, garbage_rows=3, bad_dates=2))
    with driver_for(term).connect() as s:
        counts = s.counts()
        punches = s.read_punches()
        unreadable = list(s.unreadable)
    assert counts.records == 35  # every row counts: the log changed if any row came or went
    assert len(punches) == 32 and as_keys(punches) == truth_of(tmp_path, "SOAP-G")
    bad = [p for p in punches if p.local_time is None]
    assert len(bad) == 2 and all(p.time_text.startswith("2023-02-") for p in bad)
    assert [why for _, why in unreadable] == ["no PIN", unreadable[1][1], unreadable[2][1]]
    assert "DateTime" in unreadable[1][1] and "Verified" in unreadable[2][1]
    assert all(raw.startswith("<Row>") for raw, _ in unreadable)


def test_tail_read_returns_only_new_records_and_refuses_a_rewritten_log(fleet: SoapFleet) -> None:
    term = fleet.add(soap_spec("SOAP-T", records=40, garbage_rows=1))
    drv = driver_for(term)
    with drv.connect() as s:
        first = s.read_punches()
    known = LogPosition(len(first), first[-1])
    added = term.add_punches(5)
    with drv.connect() as s:
        tail = s.read_punches_after(known)
        # Rows that are no punch carry no position of their own: the one after the last known punch is reported
        # again (the poller keeps each once), none before it.
        assert [why for _, why in s.unreadable] == ["no PIN"]
    assert tail is not None and [(p.user_id, p.time_text) for p in tail] == [(r["user_id"], r["time"]) for r in added]
    term.clear_log()
    term.add_punches(50)
    with drv.connect() as s:
        assert s.read_punches_after(known) is None


def test_pin2_firmware_reports_punches_and_users_by_pin2(fleet: SoapFleet, tmp_path: Path) -> None:
    term = fleet.add(soap_spec("SOAP-P2", records=40, pin2=True))
    with driver_for(term, punch_user="PIN2").connect() as s:
        punches = s.read_punches()
        users = s.read_users()
    assert as_keys(punches) == truth_of(tmp_path, "SOAP-P2")
    assert all(int(p.user_id) > 1000 for p in punches)
    assert {u.user_id for u in users} == {str(1000 + i) for i in range(1, 26)}
    with driver_for(term).connect() as s:  # without the workaround: the internal PINs
        assert all(int(p.user_id) <= 25 for p in s.read_punches())


def test_serial_falls_back_to_the_configured_one_and_identity_is_checked(fleet: SoapFleet) -> None:
    term = fleet.add(soap_spec("SOAP-NS", serial_option=False))
    with pytest.raises(ProtocolError, match="does not report its serial"), driver_for(term).connect() as s:
        s.info()
    with driver_for(term, serial="CONFIGURED-1").connect() as s:
        assert s.info(clock=False).serial == "CONFIGURED-1"
    other = fleet.add(soap_spec("SOAP-ID"))
    with pytest.raises(IdentityMismatch), driver_for(other, serial="SOMEONE-ELSE").connect() as s:
        s.info()


def test_clear_uses_value_3_only_after_the_log_matches_and_refuses_otherwise(fleet: SoapFleet) -> None:
    term = fleet.add(soap_spec("SOAP-C", records=60, garbage_rows=1))
    drv = driver_for(term)
    with drv.connect() as s:
        punches = s.read_punches()
    term.add_punches(1)  # a punch after the download: the clear must not wipe it
    with drv.connect() as s, pytest.raises(Busy):
        s.clear_punches(expected_records=len(punches), expected=punches)
    assert term.record_count == 62 and sum(term.clears.values()) == 0
    with drv.connect() as s:
        now = s.read_punches()
    fresh = SoapDriver(drv.params)  # never reported the row that is no punch (so nobody quarantined it): refuses
    with fresh.connect() as s, pytest.raises(Busy, match="quarantined"):
        s.clear_punches(expected_records=len(now), expected=now)
    with drv.connect() as s:
        s.clear_punches(expected_records=len(now), expected=now)
    assert term.record_count == 0 and term.clears == Counter({"3": 1})
    with drv.connect() as s:
        assert s.counts().records == 0 and s.counts().users == 25  # users untouched (value 1 never sent)


def test_set_time_moves_the_terminal_clock(fleet: SoapFleet) -> None:
    term = fleet.add(soap_spec("SOAP-CLK", clock_skew_s=3600))
    with driver_for(term).connect() as s:
        s.set_time(datetime(2025, 3, 4, 5, 6, 7))
    assert abs((term.now() - datetime(2025, 3, 4, 5, 6, 7)).total_seconds()) < 3
    with driver_for(term).connect() as s, pytest.raises(ValueError):
        s.set_time(datetime.now().astimezone())


@pytest.mark.parametrize("quirk", [
    {"content_length": True, "trailing_bytes": "\r\nJUNK AFTER THE BODY"},
    {"workcode": False},
    {"malformed_header": True},
])
def test_answer_quirks_are_read_the_same(fleet: SoapFleet, tmp_path: Path, quirk: dict[str, object]) -> None:
    serial = "SOAP-Q-" + "-".join(sorted(quirk))[:20]
    term = fleet.add(soap_spec(serial, records=25, **quirk))
    drv = driver_for(term)
    with drv.connect() as s:
        punches = s.read_punches()
    assert as_keys(punches) == truth_of(tmp_path, serial)
    # Only the head h11 refuses moves the terminal to the raw socket (and keeps it there).
    assert (drv.stats.raw_requests > 0) == bool(quirk.get("malformed_header"))


def test_raw_http_workaround_reads_from_the_first_request(fleet: SoapFleet, tmp_path: Path) -> None:
    term = fleet.add(soap_spec("SOAP-RAW", records=20))
    drv = driver_for(term, raw_http=True)
    with drv.connect() as s:
        assert as_keys(s.read_punches()) == truth_of(tmp_path, "SOAP-RAW")
    assert drv.stats.raw_requests == drv.stats.requests


def test_a_slow_big_log_stops_at_the_deadline_and_an_oversized_one_at_the_bound(fleet: SoapFleet) -> None:
    slow = fleet.add(soap_spec("SOAP-SLOW", records=2000, answer_bytes_per_s=40_000))
    drv = driver_for(slow, timeout_s=1.0)
    t0 = time.monotonic()
    with pytest.raises(ProtocolError, match="deadline"), drv.connect(deadline=time.monotonic() + 1.5) as s:
        s.counts()
    assert time.monotonic() - t0 < 1.5 + 1.0 + 1.0  # deadline + at most one read timeout (+ slack)
    big = fleet.add(soap_spec("SOAP-BIG", records=400))
    with pytest.raises(ProtocolError, match="larger than"), driver_for(big, max_response_bytes=4096).connect() as s:
        s.counts()


def test_nothing_listening_is_unreachable(fleet: SoapFleet) -> None:
    term = fleet.add(soap_spec("SOAP-OFF"))
    port = term.port
    term.stop()
    drv = SoapDriver(SoapParams("127.0.0.1", port, timeout_s=1.0))
    with pytest.raises(Unreachable), drv.connect():
        pass


def test_registry_and_quirk_checks() -> None:
    assert get_driver("soap") is not None
    assert check_quirks({"punch_user": "PIN2", "log_capacity": 50000, "encoding": "utf-8"}) is None
    for bad in ({"punch_user": "NIP"}, {"encoding": "klingon"}, {"log_capacity": -1}, {"raw_http": "yes"},
                {"unknown": 1}):
        assert check_quirks(bad), bad

"""End to end: simulated serial clocks (simulators.serial) on a pty and on socket:// -> the daemon's serial
reader -> punches in the database exactly once (SQLite and PostgreSQL), bad lines quarantined and counted,
unplug and replug through health."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.store import schema as s
from simulators.serial.clock import SerialClock
from simulators.zk.truth import TruthWriter
from tests.support.fleet import truth_keys
from tests.support.gateway import RunningGateway, diff, stored_keys, table_rows
from tests.support.serial import device_keys, quarantined, reader_stats, serial_clock, serial_config
from tests.support.wait import wait_until

TRANSPORTS = ["pty", "socket"]


@pytest.fixture
def truth(tmp_path: Path) -> Iterator[TruthWriter]:
    writer = TruthWriter(tmp_path / "truth.jsonl")
    yield writer
    writer.close()


def _stored(db_url: str) -> int:
    return sum(stored_keys(db_url).values())


def _wait_open(gw: RunningGateway, clock: SerialClock | None = None, device_id: str = "s1") -> None:
    """The reader has the line open and (socket) the simulated device server accepted it: the reader's
    connect returns before the server's accept, and a line written before it would not be sent."""
    wait_until(lambda: reader_stats(gw, device_id).connected and (clock is None or clock.connected), 20,
               "the reader has the line open")


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_punches_from_a_serial_clock_land_exactly_once_across_reconnect_and_restart(
        db_url: str, tmp_path: Path, truth: TruthWriter, transport: str) -> None:
    with serial_clock(truth, tmp_path, transport=transport, split=0.3, noise=0.2, seed=3) as clock:
        cfg = serial_config(db_url, tmp_path, [device_keys(clock)])
        with RunningGateway(cfg) as gw:
            _wait_open(gw, clock)
            clock.punch(20)
            wait_until(lambda: _stored(db_url) == 20, 20, "the first 20 punches stored")
            # The line goes away and comes back (socket: the device server drops us; pty: the cable).
            if transport == "socket":
                clock.drop()
            else:
                clock.unplug()
                wait_until(lambda: not reader_stats(gw, "s1").connected, 20, "the reader noticed the unplug")
                clock.replug()
            wait_until(lambda: reader_stats(gw, "s1").connects >= 2 and clock.connected, 20, "reconnected")
            _wait_open(gw, clock)
            clock.punch(15)
            wait_until(lambda: _stored(db_url) == 35, 20, "35 punches stored after the reconnect")
        # A daemon restart: the new reader opens the same line; nothing is stored twice.
        with RunningGateway(cfg) as gw:
            _wait_open(gw, clock)
            clock.punch(10)
            wait_until(lambda: _stored(db_url) == 45, 20, "45 punches stored after the restart")
    expected = truth_keys(tmp_path / "truth.jsonl")
    assert sum(expected.values()) == 45 and clock.stats.unsent == 0
    assert stored_keys(db_url) == expected, diff(expected, stored_keys(db_url))
    assert quarantined(db_url) == []  # split lines and noise between lines are not bad lines


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_bad_lines_are_quarantined_with_raw_text_and_reason_and_good_ones_stored(
        db_url: str, tmp_path: Path, truth: TruthWriter, transport: str) -> None:
    with serial_clock(truth, tmp_path, transport=transport, garble=0.3, seed=7) as clock:
        cfg = serial_config(db_url, tmp_path, [device_keys(clock)])
        with RunningGateway(cfg) as gw:
            _wait_open(gw, clock)
            clock.punch(30)
            assert clock.write_raw(b"this is not a punch\r\n42\t2026-13-45 99:00\t0\t1\r\n")
            assert clock.write_raw(b"x" * 700 + b"\r\n")
            bad = clock.stats.garbled + 3
            wait_until(lambda: len(quarantined(db_url, "s1")) == bad and _stored(db_url) == 30 - clock.stats.garbled,
                       20, "every line stored or quarantined")
            assert reader_stats(gw, "s1").quarantined == bad
    assert clock.stats.garbled > 0
    rows = quarantined(db_url, "s1")
    assert {r["source"] for r in rows} == {"serial"} and {r["origin"] for r in rows} == {clock.path}
    reasons = [r["reason"] for r in rows]
    assert sum("noise byte" in r for r in reasons) == clock.stats.garbled
    assert sum("does not match the zk_attlog line format" in r for r in reasons) == 1
    assert sum("does not fit the time format" in r for r in reasons) == 1
    assert sum("longer than 512 bytes" in r for r in reasons) == 1
    assert any(r["raw"] == "this is not a punch" for r in rows)
    expected = truth_keys(tmp_path / "truth.jsonl")
    assert stored_keys(db_url) == expected, diff(expected, stored_keys(db_url))
    # Counted per device (QuarantineRepo.counts via kv) as the status page reads it.
    from gateway.store.db import create_db_engine
    from gateway.store.quarantine import QuarantineRepo

    engine = create_db_engine(db_url)
    try:
        assert QuarantineRepo(engine).counts() == {"s1": bad}
    finally:
        engine.dispose()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_unplugged_clock_goes_offline_with_a_clear_error_and_recovers_on_replug(
        db_url: str, tmp_path: Path, truth: TruthWriter, transport: str) -> None:
    with serial_clock(truth, tmp_path, transport=transport) as clock:
        cfg = serial_config(db_url, tmp_path, [device_keys(clock)])
        with RunningGateway(cfg) as gw:
            _wait_open(gw, clock)
            wait_until(lambda: gw.gateway.ctx.health is not None and
                       getattr(gw.gateway.ctx.health.snapshot().get("s1"), "state", None) == "online", 20, "online")
            clock.unplug()
            health = gw.gateway.ctx.health
            assert health is not None
            wait_until(lambda: health.snapshot()["s1"].state == "offline", 30, "offline after the unplug")
            h = health.snapshot()["s1"]
            assert h.last_error_kind == "unreachable"
            assert h.last_error and clock.path in h.last_error
            assert ("does not exist" in h.last_error) if transport == "pty" else ("cannot be reached" in h.last_error)
            assert "offline" in gw.problems("s1")
            clock.replug()
            wait_until(lambda: health.snapshot()["s1"].state == "online", 30, "online again after the replug")
            _wait_open(gw, clock)
            clock.punch(3)
            wait_until(lambda: _stored(db_url) == 3, 20, "punches after the replug")
    runs = table_rows(db_url, s.poll_runs)
    assert any(r["outcome"] == "unreachable" for r in runs) and any(r["outcome"] == "ok" for r in runs)


@pytest.mark.filterwarnings("ignore:set(Daemon|Name)\\(\\) is deprecated:DeprecationWarning")  # pyserial 3.5's client
def test_an_rfc2217_device_server_feeds_punches_and_its_loss_is_unreachable(db_url: str, tmp_path: Path) -> None:
    from tests.support.rfc2217 import Rfc2217Server

    server = Rfc2217Server()
    try:
        cfg = serial_config(db_url, tmp_path, [{"id": "s1", "serial": "RFC1", "url": server.url, "baud": 19200}])
        with RunningGateway(cfg) as gw:
            _wait_open(gw)
            wait_until(lambda: server.connected, 20, "the server accepted the reader")
            server.write(b"11\t2026-11-30 07:30:00\t0\t1\r\n12\t2026-11-30 07:31:00\t1\t15\r\nnot a punch\r\n")
            wait_until(lambda: _stored(db_url) == 2 and len(quarantined(db_url)) == 1, 20, "stored over RFC 2217")
            server.close()
            wait_until(lambda: not reader_stats(gw, "s1").connected and reader_stats(gw, "s1").last_error, 20,
                       "the loss noticed")
    finally:
        server.close()
    assert stored_keys(db_url) == {("RFC1", "11", "2026-11-30 07:30:00", 0, 1): 1,
                                   ("RFC1", "12", "2026-11-30 07:31:00", 1, 15): 1}
    runs = table_rows(db_url, s.poll_runs)
    assert any(r["outcome"] == "unreachable" and server.url in (r["error"] or "") for r in runs)

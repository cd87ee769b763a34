"""gateway.serial.reader with scripted lines (no port): a line is handled only once committed (a failing database
keeps it and stores it once later), lines cut off by a disconnect or a stop are quarantined, other machines'
lines too, stopping is bounded; and drivers.serial.port's classification of a real pty held twice."""

from __future__ import annotations

import os
import threading
import time
import tty
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.exc import OperationalError

from drivers.base import DriverError, Unreachable
from drivers.serial.port import PortSettings, SerialLine, open_line
from gateway.models import PollOutcome
from gateway.serial.reader import SerialReader
from gateway.store.db import create_db_engine, upgrade
from gateway.store.punches import Store
from tests.support.config import OFFICE_CODE
from tests.support.gateway import stored_keys
from tests.support.serial import quarantined, serial_config
from tests.support.wait import wait_until

SERIAL = "CLK1"


class ScriptedLine:
    """A SerialLine whose reads return the scripted chunks (an exception item is raised), then quiet reads."""

    def __init__(self, items: list[bytes | DriverError]) -> None:
        self.items: deque[bytes | DriverError] = deque(items)
        self.closed = False

    def feed(self, data: bytes) -> None:
        self.items.append(data)

    def read_some(self) -> bytes:
        if not self.items:
            time.sleep(0.02)
            return b""
        item = self.items.popleft()
        if isinstance(item, DriverError):
            raise item
        return item

    def close(self) -> None:
        self.closed = True


class FlakyStore(Store):
    """A Store whose save_poll fails ``fail`` times when it carries punches or quarantined lines."""

    def __init__(self, *a: Any, fail: int = 0) -> None:
        super().__init__(*a)
        self.fail = fail

    def save_poll(self, outcome: PollOutcome, punches: Any = (), **kw: Any) -> Any:
        if (punches or kw.get("quarantined")) and self.fail > 0:
            self.fail -= 1
            raise OperationalError("INSERT", {}, Exception("database is locked"))
        return super().save_poll(outcome, punches, **kw)


@pytest.fixture
def rig(sqlite_url: str, tmp_path: Path) -> Iterator[dict[str, Any]]:
    engine = create_db_engine(sqlite_url, pool_size=4)
    upgrade(engine)
    yield {"engine": engine, "url": sqlite_url, "tmp": tmp_path}
    engine.dispose()


def make_reader(rig: dict[str, Any], lines: list[ScriptedLine], *, fail: int = 0, **device: Any
                ) -> tuple[SerialReader, list[PollOutcome]]:
    cfg = serial_config(rig["url"], rig["tmp"], [{"id": "s1", "serial": SERIAL, "port": "/dev/fake", **device}])
    store = FlakyStore(rig["engine"], OFFICE_CODE, fail=fail)
    store.sync_devices(cfg.devices)
    outcomes: list[PollOutcome] = []
    queue = deque(lines)

    def opener(settings: PortSettings) -> SerialLine:
        if not queue:
            raise Unreachable(f"serial port {settings.url} does not exist")
        return queue.popleft()  # type: ignore[return-value]

    return SerialReader(cfg, cfg.devices[0], store, [outcomes.append], opener=opener), outcomes


def line(user: str, t: str = "2026-11-30 07:30:00") -> bytes:
    return f"{user}\t{t}\t0\t1\r\n".encode()


def keys(url: str) -> set[str]:
    return {k[1] for k in stored_keys(url)}


def run_until(reader: SerialReader, pred: Any, what: str) -> None:
    reader.start()
    try:
        wait_until(pred, 20, what)
    finally:
        reader.request_stop()
        assert reader.join(5)


def test_a_failing_database_keeps_the_lines_and_stores_each_once_when_it_is_back(rig: dict[str, Any]) -> None:
    reader, outcomes = make_reader(rig, [ScriptedLine([line("1") + line("2") + b"junk\r\n", line("3")])], fail=3)
    run_until(reader, lambda: keys(rig["url"]) == {"1", "2", "3"} and len(quarantined(rig["url"])) == 1,
              "every line stored after the database came back")
    assert sum(stored_keys(rig["url"]).values()) == 3 and len(quarantined(rig["url"])) == 1
    assert any(o.error_kind == "storage" for o in outcomes)  # the database's fault, not the clock's
    assert sum(o.new_punches for o in outcomes) == 3


def test_a_line_cut_off_by_a_disconnect_is_quarantined_and_the_reader_reconnects(rig: dict[str, Any]) -> None:
    first = ScriptedLine([line("1") + b"2\t2026-11-30 07:3", Unreachable("serial line went away")])
    second = ScriptedLine([line("3")])
    reader, outcomes = make_reader(rig, [first, second])
    run_until(reader, lambda: keys(rig["url"]) == {"1", "3"} and quarantined(rig["url"]), "both sides stored")
    (row,) = quarantined(rig["url"])
    assert row["raw"] == "2\t2026-11-30 07:3" and "line cut off: serial line went away" in row["reason"]
    assert first.closed and reader.stats.connects == 2
    assert [o.error_kind for o in outcomes if not o.ok] == ["unreachable"]


def test_lines_of_another_machine_number_are_quarantined(rig: dict[str, Any]) -> None:
    data = b"1\t01-05-2024\t07:30:00\t'7\t01\t0002\r\n1\t01-05-2024\t07:31:00\t'8\t01\t0003\r\n"
    reader, _ = make_reader(rig, [ScriptedLine([data])], line_format="giga_tms", machine=2)
    run_until(reader, lambda: keys(rig["url"]) == {"7"} and quarantined(rig["url"]), "stored and quarantined")
    assert "line from machine 0003; this device is machine 2" in quarantined(rig["url"])[0]["reason"]


def test_stop_is_bounded_stores_what_was_read_and_quarantines_the_unfinished_line(rig: dict[str, Any]) -> None:
    scripted = ScriptedLine([line("1")])
    reader, _ = make_reader(rig, [scripted])
    reader.start()
    wait_until(lambda: keys(rig["url"]) == {"1"}, 20, "first line stored")
    scripted.feed(b"2\t2026-11-30 07:3")
    wait_until(lambda: not scripted.items, 5, "partial line read")
    started = time.monotonic()
    reader.request_stop()
    assert reader.join(5) and time.monotonic() - started < 3
    (row,) = quarantined(rig["url"])
    assert "the gateway stopped before the line ended" in row["reason"]


def test_a_missing_port_is_reported_unreachable_with_back_off(rig: dict[str, Any]) -> None:
    reader, outcomes = make_reader(rig, [])
    run_until(reader, lambda: len([o for o in outcomes if not o.ok]) >= 2, "two failed opens")
    assert {o.error_kind for o in outcomes} == {"unreachable"} and "does not exist" in (outcomes[0].error or "")
    assert reader.stats.last_error and not reader.stats.connected


def test_a_real_pty_held_by_another_reader_or_missing_is_unreachable_with_the_reason(tmp_path: Path) -> None:
    master, slave = os.openpty()
    try:
        tty.setraw(slave)
        path = os.ttyname(slave)
        first = open_line(PortSettings(url=path))
        try:
            with pytest.raises(Unreachable) as busy:
                open_line(PortSettings(url=path))
            assert "held by another program" in str(busy.value)
            os.write(master, b"abc")
            got = b""
            deadline = time.monotonic() + 5
            while len(got) < 3 and time.monotonic() < deadline:
                got += first.read_some()
            assert got == b"abc"
        finally:
            first.close()
    finally:
        os.close(master)
        os.close(slave)
    with pytest.raises(Unreachable) as missing:
        open_line(PortSettings(url=str(tmp_path / "ttyNONE")))
    assert "does not exist" in str(missing.value)


def test_threads_of_the_service_end_with_stop(rig: dict[str, Any]) -> None:
    from gateway.serial.reader import SerialService

    cfg = serial_config(rig["url"], rig["tmp"], [{"id": "s1", "port": "/dev/fake-a"},
                                                 {"id": "s2", "port": "/dev/fake-b"}])
    store = Store(rig["engine"], OFFICE_CODE)
    store.sync_devices(cfg.devices)
    svc = SerialService(cfg, store, [], opener=lambda s: (_ for _ in ()).throw(Unreachable("gone")))
    svc.start()
    time.sleep(0.3)
    started = time.monotonic()
    svc.stop(5)
    assert time.monotonic() - started < 3
    assert not [t for t in threading.enumerate() if t.name.startswith("fpgw-serial-")]


def test_line_noise_above_the_limit_is_warned_once_and_its_end_once(rig: dict[str, Any]) -> None:
    from structlog.testing import capture_logs

    scripted = ScriptedLine([b"\x00" * 40 + line("1")])
    reader, _ = make_reader(rig, [scripted], noise_warn_per_min=10, interval_s=5)
    # Heartbeats (and noise checks) every min(60 s, interval_s); the test drives the reader's monotonic clock.
    now = [0.0]
    reader.monotonic = lambda: now[0]
    with capture_logs() as logs:
        reader.start()
        try:
            wait_until(lambda: keys(rig["url"]) == {"1"}, 20, "line stored")
            now[0] += 6
            wait_until(lambda: any("line noise" in e["event"] for e in logs), 10, "noise warning")
            now[0] += 6  # a window without noise
            wait_until(lambda: any("quiet again" in e["event"] for e in logs), 10, "quiet again")
        finally:
            reader.request_stop()
            assert reader.join(5)
    warnings = [e for e in logs if "line noise" in e["event"]]
    assert len(warnings) == 1 and warnings[0]["log_level"] == "warning" and warnings[0]["device"] == "s1"
    assert reader.stats.noise_bytes == 40 and quarantined(rig["url"]) == []


def test_an_open_clock_that_sends_nothing_in_working_hours_becomes_silent(rig: dict[str, Any]) -> None:
    from datetime import UTC, datetime, timedelta

    from gateway.health.tracker import HealthTracker

    at = [datetime(2026, 11, 30, 0, 30, tzinfo=UTC)]  # Monday 07:30 in Jakarta
    reader, outcomes = make_reader(rig, [ScriptedLine([])])
    reader.clock = lambda: at[0]
    run_until(reader, lambda: any(o.ok for o in outcomes), "the open line reported")
    tracker = HealthTracker(reader.config)
    for o in outcomes:
        tracker.record(o)
    assert tracker.health("s1").state == "online"
    transitions = tracker.sweep(at[0] + timedelta(hours=5))
    assert [t.problem for t in transitions if t.event == "start"] == ["silent"]

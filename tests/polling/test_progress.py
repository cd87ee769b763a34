"""Download progress: INFO lines every ~5 s of a long download, and `fpgw poll`'s live line on a terminal only."""

from __future__ import annotations

import io
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from drivers.fake import FakeDevice, FakeDriver, make_punch
from gateway.cli.daemon import ProgressLine, progress_line
from gateway.config import parse_config
from gateway.polling.poller import DevicePoller
from gateway.polling.progress import DownloadProgress
from gateway.store.db import create_db_engine, upgrade
from gateway.store.punches import Store

BASE = datetime(2026, 11, 20, 7, 0)


class SteppingClock:
    """A monotonic clock that moves ``step`` seconds every time it is read (a download that takes a while)."""

    def __init__(self, step: float) -> None:
        self.t = 1000.0
        self.step = step

    def __call__(self) -> float:
        self.t += self.step
        return self.t


class RecordingDisplay:
    def __init__(self, fail: bool = False) -> None:
        self.updates: list[tuple[str, int, int]] = []
        self.finished = 0
        self.fail = fail

    def update(self, device_id: str, records_read: int, records_expected: int, rate: float) -> None:
        if self.fail:
            raise OSError("terminal gone")
        self.updates.append((device_id, records_read, records_expected))

    def finish(self) -> None:
        self.finished += 1


class FakeTty(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    engine = create_db_engine(f"sqlite:///{tmp_path / 'fpgw.db'}")
    upgrade(engine)
    yield Store(engine, "1801.01.02")
    engine.dispose()


def progress_logs(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in logs if e["event"] == "downloading the attendance log"]


@pytest.mark.timeout(10)
def test_progress_is_logged_every_five_seconds_of_a_long_download_and_never_for_a_short_one() -> None:
    with capture_logs() as logs:
        short = DownloadProgress("lobby", "full", clock=SteppingClock(0.1))
        for n in range(1000, 20_001, 1000):
            short(n, 20_000)
        short.finish()
    assert logs == []  # 2 s in all: nothing to say
    clock = SteppingClock(1.0)
    with capture_logs() as logs:
        long = DownloadProgress("lobby", "full", clock=clock)
        for n in range(1000, 20_001, 1000):  # one call per second: 20 s
            long(n, 20_000)
        long.finish()
    lines = progress_logs(logs)
    assert len(lines) == 4 and long.lines_logged == 4  # at about 5, 10, 15 and 20 s
    assert [e["records_read"] for e in lines] == [5000, 10_000, 15_000, 20_000]
    assert all(e["log_level"] == "info" and e["records_expected"] == 20_000 for e in lines)
    assert 900 <= lines[0]["records_per_s"] <= 1100
    assert logs[-1]["event"] == "attendance log downloaded" and logs[-1]["records_read"] == 20_000


@pytest.mark.timeout(10)
def test_a_failing_display_never_fails_the_download_and_is_reported_once() -> None:
    display = RecordingDisplay(fail=True)
    with capture_logs() as logs:
        progress = DownloadProgress("lobby", "tail", display=display, clock=SteppingClock(0.01))
        for n in range(10):
            progress(n, 10)
        progress.finish()
    assert [e["event"] for e in logs] == ["download progress display failed; continuing without it"]
    assert display.finished == 0


@pytest.mark.timeout(30)
def test_the_poller_reports_a_long_download_to_the_log_and_the_display(store: Store, tmp_path: Path) -> None:
    config = parse_config({"site": {"office_code": "1801.01.02"},
                           "devices": [{"id": "lobby", "address": "10.0.0.1"}]}, base_dir=tmp_path)
    store.sync_devices(config.devices)
    driver = FakeDriver(FakeDevice(serial="SN1", progress_step=100,
                                   punches=[make_punch("1001", BASE + timedelta(minutes=i)) for i in range(1000)]))
    display = RecordingDisplay()
    poller = DevicePoller(config, store, driver_factory=lambda dev: driver, progress_display=display,
                          progress_clock=SteppingClock(1.0))
    dev = config.device("lobby")
    with capture_logs() as logs:
        o = poller.poll_once(dev)
    assert o.ok and o.new_punches == 1000
    assert [u[1] for u in display.updates] == list(range(100, 1001, 100))
    assert {(u[0], u[2]) for u in display.updates} == {("lobby", 1000)}
    assert [e["records_read"] for e in progress_logs(logs)] == [500, 1000]
    assert display.finished == 3  # wiped before each of the two log lines (same terminal), and at the end
    # A tail read reports its progress too (its own, shorter, download).
    driver.add_punches([make_punch("1002", BASE + timedelta(days=1, minutes=i)) for i in range(250)])
    display.updates.clear()
    assert poller.poll_once(dev).mode == "tail"
    assert [u[1:] for u in display.updates] == [(100, 250), (200, 250), (250, 250)] and display.finished == 4


@pytest.mark.timeout(10)
def test_the_cli_progress_line_redraws_in_place_and_is_wiped_at_the_end() -> None:
    stream = FakeTty()
    line = progress_line(stream)
    assert isinstance(line, ProgressLine)
    line.min_interval_s = 0.0
    line.update("lobby", 41_000, 100_000, 52_345.6)
    line.update("lobby", 100_000, 100_000, 60_000.0)
    line.finish()
    out = stream.getvalue()
    assert out.startswith("\rlobby: reading the attendance log: 41,000/100,000 records (41 %), 52,346/s")
    assert "\rlobby: reading the attendance log: 100,000/100,000 records (100 %), 60,000/s" in out
    assert out.endswith("\r" + " " * len("lobby: reading the attendance log: 100,000/100,000 records (100 %), "
                                         "60,000/s") + "\r")
    assert "\n" not in out


@pytest.mark.timeout(10)
def test_the_cli_progress_line_is_throttled_and_absent_when_not_on_a_terminal() -> None:
    assert progress_line(io.StringIO()) is None  # a pipe, a file, a journal: no \r lines
    stream = FakeTty()
    now = [0.0]
    line = ProgressLine(stream, min_interval_s=0.1, clock=lambda: now[0])
    for i in range(50):  # 50 calls within 49 ms: drawn once
        now[0] = i * 0.001
        line.update("lobby", i, 0, 10.0)
    now[0] = 0.2
    line.update("lobby", 99, 0, 10.0)
    assert stream.getvalue().count("\r") == 2 and "99 records, 10/s" in stream.getvalue()

"""Logging (journal/json formats, per-poll context without leaks, library routing) and sd_notify."""

from __future__ import annotations

import io
import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import structlog

from drivers.fake import FakeDevice, FakeDriver, make_punch
from gateway import sdnotify
from gateway.config import parse_config
from gateway.logs import reset_logging, resolve_format, setup_logging
from gateway.polling.poller import DevicePoller
from gateway.store.db import create_db_engine, upgrade
from gateway.store.punches import Store


@pytest.fixture
def log_stream() -> Iterator[io.StringIO]:
    """Configure logging into a buffer; restore the defaults afterwards."""
    stream = io.StringIO()
    yield stream
    reset_logging()


@pytest.mark.timeout(10)
def test_journal_format_has_priority_prefix_and_routes_library_logs(log_stream: io.StringIO) -> None:
    assert setup_logging("journal", "info", stream=log_stream) == "journal"
    log = structlog.get_logger("gateway.test")
    with structlog.contextvars.bound_contextvars(device="lobby", serial="SN1"):
        log.warning("device poll failing", error_kind="unreachable")
    log.info("plain line", n=3)
    logging.getLogger("apscheduler.scheduler").warning("Run time of job was missed")
    logging.getLogger("apscheduler.executors.default").info("Running job chatter")  # silenced
    lines = log_stream.getvalue().splitlines()
    assert lines[0].startswith('<4>event="device poll failing" device=lobby serial=SN1 ')
    assert "error_kind=unreachable" in lines[0] and "timestamp" not in lines[0]
    assert lines[1].startswith('<6>event="plain line"') and "device=" not in lines[1]
    assert lines[2].startswith('<4>event="Run time of job was missed"')
    assert len(lines) == 3


@pytest.mark.timeout(10)
def test_json_format_one_object_per_line(log_stream: io.StringIO) -> None:
    setup_logging("json", "debug", stream=log_stream)
    structlog.get_logger("gateway.test").debug("poll done", device="hall", new=2)
    obj = json.loads(log_stream.getvalue().splitlines()[0])
    assert obj["event"] == "poll done" and obj["device"] == "hall" and obj["level"] == "debug" and "timestamp" in obj


@pytest.mark.timeout(10)
def test_auto_format_detects_the_journal_by_stderr_identity(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with (tmp_path / "out.log").open("w") as fh:
        st = os.fstat(fh.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        assert resolve_format("auto", fh) == "journal"
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino + 1}")  # inherited, but not our stderr
        assert resolve_format("auto", fh) == "json"
        monkeypatch.delenv("JOURNAL_STREAM")
        assert resolve_format("auto", fh) == "json"
        assert resolve_format("console", fh) == "console"


@pytest.mark.timeout(30)
def test_poll_context_does_not_leak_into_the_next_job_on_the_same_worker(log_stream: io.StringIO,
                                                                         tmp_path: Path) -> None:
    setup_logging("journal", "debug", stream=log_stream)
    config = parse_config({"site": {"office_code": "X"}, "devices": [{"id": "lobby", "address": "10.0.0.1"}]},
                          base_dir=tmp_path)
    engine = create_db_engine(f"sqlite:///{tmp_path / 'fpgw.db'}")
    try:
        upgrade(engine)
        store = Store(engine, "X")
        store.sync_devices(config.devices)
        driver = FakeDriver(FakeDevice(serial="SN9", punches=[make_punch("1", "2026-11-20 08:00:00")]))
        poller = DevicePoller(config, store, driver_factory=lambda d: driver)
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="test-pool") as pool:
            pool.submit(poller.poll_once, config.device("lobby")).result()
            pool.submit(lambda: structlog.get_logger("gateway.test").info("next job")).result()
    finally:
        engine.dispose()
    lines = log_stream.getvalue().splitlines()
    poll_lines = [ln for ln in lines if "poll done" in ln or "new punches stored" in ln]
    assert poll_lines and all("device=lobby serial=SN9" in ln for ln in poll_lines)
    (next_job,) = [ln for ln in lines if "next job" in ln]
    assert "device=" not in next_job and "serial=" not in next_job


@pytest.mark.timeout(10)
def test_sd_notify_sends_datagrams_and_never_blocks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sdnotify.notify("READY=1") is False  # not under systemd: a no-op
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(2)
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        assert sdnotify.notify("READY=1", "STATUS=3/4 perangkat OK")
        assert sock.recv(4096) == b"READY=1\nSTATUS=3/4 perangkat OK"
        # A receiver that stops reading must not stall the daemon: messages are dropped instead.
        t0 = time.monotonic()
        results = [sdnotify.notify("WATCHDOG=1") for _ in range(500)]
        assert time.monotonic() - t0 < 5 and results[0] and not all(results)


@pytest.mark.timeout(10)
def test_sd_notify_abstract_socket_and_watchdog_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"fpgw-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(2)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert sdnotify.notify("STOPPING=1")
        assert sock.recv(100) == b"STOPPING=1"
    monkeypatch.setenv("WATCHDOG_USEC", "90000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert sdnotify.watchdog_interval_s() == 45.0
    monkeypatch.setenv("WATCHDOG_PID", "1")  # meant for another process
    assert sdnotify.watchdog_interval_s() is None

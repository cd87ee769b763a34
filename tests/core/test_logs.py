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
from typing import Any

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


# -- secrets never reach a log line (issue 8 item 5) ------------------------------------------------------

def _failing_app() -> Any:
    """An ASGI app whose endpoint fails with the request (headers, query) in its locals and its message."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    async def boom(request: Request) -> Response:
        headers = dict(request.headers)
        token = request.query_params.get("token")
        raise RuntimeError(f"unhandled: {headers!r} token={token}")

    return Starlette(routes=[Route("/boom", boom)])


@pytest.mark.timeout(20)
@pytest.mark.parametrize("fmt", ["json", "console", "journal"])
def test_unhandled_request_error_logs_no_token(log_stream: io.StringIO, fmt: str) -> None:
    import httpx

    from gateway.web.server import ThreadedServer
    from tests.support.secrets import MARKER

    bearer, query = f"{MARKER}-bearer-{fmt}", f"{MARKER}-query-{fmt}"
    setup_logging(fmt, "info", stream=log_stream)
    with ThreadedServer(_failing_app()) as server:
        r = httpx.get(f"{server.url}/boom", params={"token": query},
                      headers={"Authorization": f"Bearer {bearer}", "X-Api-Key": f"{MARKER}-key"}, timeout=5)
    assert r.status_code == 500
    out = log_stream.getvalue()
    assert "Exception in ASGI application" in out and "RuntimeError" in out  # the traceback is still there
    assert MARKER not in out, out
    assert "[REDACTED]" in out


@pytest.mark.timeout(10)
@pytest.mark.parametrize("fmt", ["json", "console", "journal"])
def test_registered_secrets_and_named_values_are_blanked(log_stream: io.StringIO, fmt: str) -> None:
    from gateway.logs import register_secret
    from tests.support.secrets import COMM_KEY, MARKER

    register_secret(f"{MARKER}-registered", COMM_KEY)
    setup_logging(fmt, "info", stream=log_stream)
    log = structlog.get_logger("gateway.test")
    log.warning("connect", params=f"ZkParams(host='10.0.0.5', comm_key={COMM_KEY})", url=f"{MARKER}-registered",
                key=COMM_KEY, records=COMM_KEY + 1)
    logging.getLogger("httpx").warning("GET https://bkd/status?token=%s failed: authorization: Bearer %s",
                                       f"{MARKER}-q", f"{MARKER}-b")
    try:
        raise ValueError(f"db at postgresql://fpgw:{MARKER}-pw@db/fpgw refused")
    except ValueError:
        log.exception("failed")
    out = log_stream.getvalue()
    assert MARKER not in out and f"={COMM_KEY}" not in out and f" {COMM_KEY}" not in out, out
    assert str(COMM_KEY + 1) in out  # other numbers stay


def test_redact_shapes() -> None:
    from gateway.logs import redact

    assert redact("Authorization: Bearer abcDEF123_-x") == "Authorization: [REDACTED]"
    assert redact("(b'authorization', b'Basic dXNlcjpwYXNz')") == "(b'authorization', b'[REDACTED]')"
    assert redact('{"Authorization": "Token abc def"}') == '{"Authorization": "[REDACTED]"}'
    assert redact("header was Bearer abcdefgh here") == "header was Bearer [REDACTED] here"
    assert redact('{"api_token": "zz-zz", "status_token": "s3"}') == \
        '{"api_token": "[REDACTED]", "status_token": "[REDACTED]"}'
    assert redact("GET /?token=abc&x=1") == "GET /?token=[REDACTED]&x=1"
    assert redact("{'comm_key': 4321}") == "{'comm_key': [REDACTED]}"
    # Ordinary words stay: messages about tokens are not tokens.
    for text in ("tokens=3 token_file=/etc/fpgw/token", "token file reloaded", "set token_env or token_file",
                 "http.status_token is set", "a gateway token must name exactly one office"):
        assert redact(text) == text


@pytest.mark.timeout(60)
@pytest.mark.parametrize("fmt", ["json", "journal"])
def test_daemon_logs_no_comm_key_or_token_at_debug(fmt: str, log_stream: io.StringIO, fleet: Any, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A running gateway (right key, wrong key, an alert channel URL with a token) logs none of its secrets."""
    from tests.support.config import DeviceEntry, make_config
    from tests.support.fleet import sim_spec
    from tests.support.gateway import RunningGateway
    from tests.support.secrets import COMM_KEY, MARKER

    good = fleet.add(sim_spec("LOG-KEY-OK", records=20, comm_key=COMM_KEY))
    bad = fleet.add(sim_spec("LOG-KEY-BAD", records=20, comm_key=COMM_KEY + 1))
    monkeypatch.setenv("T_KEY", str(COMM_KEY))
    monkeypatch.setenv("T_HOOK", f"http://127.0.0.1:9/hook?token={MARKER}-hook")
    config = make_config(f"sqlite:///{tmp_path / 'fpgw.db'}", [DeviceEntry("good", good, comm_key_env="T_KEY"),
                                                               DeviceEntry("bad", bad, comm_key_env="T_KEY")],
                         tmp_path, alerts={"webhooks_env": "T_HOOK", "reminder_s": 0, "max_attempts": 1},
                         health={"offline_after_failures": 1})
    setup_logging(fmt, "debug", stream=log_stream)
    with RunningGateway(config) as gw:
        assert gw.poll("good").ok
        assert gw.poll("bad").error_kind == "auth_rejected"
        monitor = gw.gateway.ctx.health
        monitor.sweep()
        monitor.router.wait_idle(10)
    out = log_stream.getvalue()
    assert "auth_rejected" in out  # the problem is logged...
    assert MARKER not in out and str(COMM_KEY) not in out  # ...without the secrets

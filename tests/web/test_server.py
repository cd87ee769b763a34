"""The one HTTP server under hostile clients (issue 8 item 11): slow partial requests are closed within the request
timeout, a connection limit answers 503 instead of queueing forever, and normal requests are served throughout."""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from gateway.web.server import ThreadedServer
from tests.support.tls import self_signed_cert


async def _echo(request: Request) -> PlainTextResponse:
    body = await request.body()
    return PlainTextResponse(f"ok {len(body)}")


def _app() -> Starlette:
    return Starlette(routes=[Route("/", _echo, methods=["GET", "POST"])])


@contextmanager
def _slow_clients(port: int, n: int, payload: bytes) -> Iterator[list[socket.socket]]:
    socks = []
    try:
        for _ in range(n):
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            s.sendall(payload)
            socks.append(s)
        yield socks
    finally:
        for s in socks:
            s.close()


def _closed_within(socks: list[socket.socket], seconds: float) -> int:
    """How many of ``socks`` the server closed within ``seconds`` (EOF or reset)."""
    deadline = time.monotonic() + seconds
    closed = 0
    for s in socks:
        s.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            while s.recv(4096):  # a 408/400 answer before the close is fine too
                pass
            closed += 1
        except (ConnectionResetError, BrokenPipeError):
            closed += 1
        except TimeoutError:
            pass
    return closed


@pytest.mark.timeout(30)
@pytest.mark.parametrize("payload", [
    b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ",                                       # headers never finish
    b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n" + b"a" * 10,       # body never finishes
    b"",                                                                            # connects, says nothing
], ids=["partial-headers", "partial-body", "silent"])
def test_slow_partial_requests_are_closed_and_others_served(payload: bytes) -> None:
    with ThreadedServer(_app(), request_timeout_s=1.0, max_connections=500) as server, \
            _slow_clients(server.port or 0, 150, payload) as socks:
        started = time.monotonic()
        # Served while 150 slow clients hang on.
        assert httpx.get(server.url + "/", timeout=5).text == "ok 0"
        assert httpx.post(server.url + "/", content=b"x" * 100, timeout=5).text == "ok 100"
        assert _closed_within(socks, 6.0) == len(socks)
        assert time.monotonic() - started < 6.0
        assert httpx.get(server.url + "/", timeout=5).text == "ok 0"


@pytest.mark.timeout(30)
def test_slow_second_request_on_a_keep_alive_connection_is_closed() -> None:
    with ThreadedServer(_app(), request_timeout_s=1.0, keep_alive_s=30) as server:
        s = socket.create_connection(("127.0.0.1", server.port or 0), timeout=5)
        try:
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            got = b""
            while not got.endswith(b"ok 0"):
                chunk = s.recv(4096)
                assert chunk, got
                got += chunk
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")  # the next request stalls mid-headers
            assert _closed_within([s], 5.0) == 1
        finally:
            s.close()


@pytest.mark.timeout(30)
def test_connection_limit_answers_503_then_recovers() -> None:
    with ThreadedServer(_app(), request_timeout_s=4.0, max_connections=20) as server, \
            _slow_clients(server.port or 0, 25, b"GET / HTTP/1.1\r\nHost: x\r\n") as socks:
        # Refused at once, not queued (asked again until the server has accepted the slow ones: a busy machine).
        deadline = time.monotonic() + 3.0
        while (code := httpx.get(server.url + "/", timeout=5).status_code) != 503 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert code == 503
        assert _closed_within(socks, 8.0) == len(socks)
        assert httpx.get(server.url + "/", timeout=5).text == "ok 0"


@pytest.mark.timeout(10)
def test_endless_headers_are_refused_not_buffered() -> None:
    with ThreadedServer(_app(), max_header_bytes=4096, request_timeout_s=30) as server:
        s = socket.create_connection(("127.0.0.1", server.port or 0), timeout=5)
        try:
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000)  # never ends
            got = b""
            try:
                while chunk := s.recv(4096):
                    got += chunk
            except ConnectionResetError:
                pass
            assert got == b"" or got.startswith(b"HTTP/1.1 4"), got  # refused long before the 30 s deadline
        finally:
            s.close()


# -- HTTPS from [http] tls_cert_file / tls_key_file --------------------------------------------------------

@pytest.mark.timeout(30)
def test_status_server_serves_https_with_the_configured_certificate(tmp_path: Path, sqlite_url: str) -> None:
    from gateway.app import Gateway
    from tests.support.config import make_config

    cert, key = self_signed_cert(tmp_path)
    config = make_config(sqlite_url, [], tmp_path, http={"enabled": True, "listen": "127.0.0.1", "port": 0,
                                                        "tls_cert_file": str(cert), "tls_key_file": str(key)})
    gw = Gateway(config)
    gw.start()
    try:
        port = gw.ctx.http_port
        trust = ssl.create_default_context(cafile=str(cert))
        assert httpx.get(f"https://127.0.0.1:{port}/healthz", verify=trust, timeout=5).json() == {"ok": True}
        with pytest.raises(httpx.HTTPError):  # no plain HTTP on that port
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
    finally:
        gw.stop()


@pytest.mark.timeout(30)
def test_unusable_certificate_is_a_clear_start_error(tmp_path: Path, sqlite_url: str) -> None:
    from gateway.app import Gateway
    from tests.support.config import make_config

    cert, key = self_signed_cert(tmp_path)
    key.write_text("not a key\n")
    config = make_config(sqlite_url, [], tmp_path, http={"enabled": True, "listen": "127.0.0.1", "port": 0,
                                                        "tls_cert_file": str(cert), "tls_key_file": str(key)})
    gw = Gateway(config)
    with pytest.raises(RuntimeError, match=r"http\.tls_key_file"):
        gw.start()
    gw.stop()


@pytest.mark.timeout(30)
def test_pipelined_requests_are_all_answered_and_the_connection_kept() -> None:
    with ThreadedServer(_app(), request_timeout_s=1.0, keep_alive_s=30) as server:
        s = socket.create_connection(("127.0.0.1", server.port or 0), timeout=5)
        try:
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * 3)
            got = b""
            while got.count(b"ok 0") < 3:
                chunk = s.recv(4096)
                assert chunk, got
                got += chunk
            time.sleep(0.5)  # within the deadline, a next request on the same connection is served
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            got = b""
            while not got.endswith(b"ok 0"):
                chunk = s.recv(4096)
                assert chunk, got
                got += chunk
        finally:
            s.close()

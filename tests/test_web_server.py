"""gateway.web.server.ThreadedServer: port 0 gives the real port, a busy port is a clear error, stop ends the thread."""

from __future__ import annotations

import socket
import threading

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from gateway.web.server import ThreadedServer

pytestmark = pytest.mark.timeout(30)


def hello_app() -> Starlette:
    def hello(request: Request) -> PlainTextResponse:
        return PlainTextResponse("hello")

    return Starlette(routes=[Route("/", hello)])


def test_port_zero_serves_on_a_real_port_and_stop_ends_the_thread() -> None:
    with ThreadedServer(hello_app(), thread_name="fpgw-http-test") as server:
        assert server.port and server.url == f"http://127.0.0.1:{server.port}"
        resp = httpx.get(server.url + "/")
        assert resp.text == "hello" and "server" not in resp.headers
        assert any(t.name == "fpgw-http-test" for t in threading.enumerate())
    assert not any(t.name == "fpgw-http-test" for t in threading.enumerate())
    with pytest.raises(httpx.ConnectError):
        httpx.get(server.url + "/", timeout=2)


def test_a_busy_port_is_an_oserror_at_bind_and_nothing_is_left_running() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        server = ThreadedServer(hello_app(), "127.0.0.1", taken.getsockname()[1])
        with pytest.raises(OSError):
            server.start()
        server.stop(1)  # harmless after a failed start


def test_stop_without_start_is_harmless() -> None:
    server = ThreadedServer(hello_app())
    assert server.bind() == server.port
    server.stop(1)
    assert not server.started

"""gateway.web.server.ThreadedServer: port 0 gives the real port, a busy port is a clear error, stop ends the thread."""

from __future__ import annotations

import socket
import threading
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from gateway.web import server as server_module
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


def test_accepted_connections_have_tcp_nodelay(monkeypatch: pytest.MonkeyPatch) -> None:
    # Without it a keep-alive response's body waits for the client's delayed ACK (about 40 ms a request).
    seen: list[int] = []
    original = server_module._GuardedH11Protocol.connection_made

    def recording(self: Any, transport: Any) -> None:
        original(self, transport)
        seen.append(transport.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))

    monkeypatch.setattr(server_module._GuardedH11Protocol, "connection_made", recording)
    with ThreadedServer(hello_app()) as server, httpx.Client() as client:
        for _ in range(3):  # one reused connection
            assert client.get(server.url + "/").text == "hello"
        with httpx.Client() as other:
            assert other.get(server.url + "/").text == "hello"
    assert len(seen) == 2 and all(seen)


def test_set_nodelay_sets_the_option_on_a_plain_tcp_socket_and_ignores_others() -> None:
    # A socket made without proto=IPPROTO_TCP (asyncio leaves those alone), e.g. one handed over by a supervisor.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        with socket.create_connection(listener.getsockname(), timeout=5) as client:
            accepted, _ = listener.accept()
            with accepted:
                assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 0
                server_module.set_nodelay(_Transport(accepted))
                assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
                assert client.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 0
    a, b = socket.socketpair()
    with a, b:
        server_module.set_nodelay(_Transport(a))  # a Unix socket: nothing to set, no error
    server_module.set_nodelay(_Transport(None))


class _Transport:
    def __init__(self, sock: socket.socket | None) -> None:
        self.sock = sock

    def get_extra_info(self, name: str) -> Any:
        return self.sock if name == "socket" else None

"""The one HTTP server: uvicorn serving an ASGI app from a worker thread (office and central modes alike).

    gateway.web.status.HttpServer (the daemon's service) --> ThreadedServer(build_app(ctx), listen, port)
    tests / benchmarks / tools                          --> with ThreadedServer(app) as server: server.url
The socket is bound here, before uvicorn starts, so a busy port is a clear OSError with the OS reason and
port 0 gives the real port at once. uvicorn skips signal handling outside the main thread, which is what
a daemon with its own signal handling wants.

Hostile or broken clients cannot hold the server: a request must arrive whole (headers and body) within
``request_timeout_s`` of the connection opening or of the previous response (slow partial requests, the
"slowloris" pattern, are closed; uvicorn alone waits forever for headers), headers are capped at
``max_header_bytes``, idle keep-alive connections close after ``keep_alive_s``, and past ``max_connections``
open connections new requests get 503 at once. HTTPS when ``ssl_certfile``/``ssl_keyfile`` are given.

Every accepted connection gets TCP_NODELAY: uvicorn writes a response's head and body as separate
segments, and with Nagle's algorithm on, the body of a keep-alive response waits for the client's
delayed ACK (40 ms on Linux), which capped one-request-at-a-time forwarding at about 20 requests/s.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

#: Defaults of the guards above (gateway.web.status.HttpServer passes the [http] values).
REQUEST_TIMEOUT_S = 30.0
KEEP_ALIVE_S = 5.0
MAX_CONNECTIONS = 200
MAX_HEADER_BYTES = 16 * 1024


def set_nodelay(transport: Any) -> None:
    """TCP_NODELAY on a transport's TCP socket (see the module docstring); other sockets are left alone."""
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6) and sock.type == socket.SOCK_STREAM:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:  # the peer is already gone: the connection closes by itself
            pass


class _GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline for each request to arrive in full (see the module docstring)."""

    request_timeout_s = REQUEST_TIMEOUT_S

    def connection_made(self, transport: Any) -> None:
        set_nodelay(transport)
        super().connection_made(transport)
        self._arm()

    def _arm(self) -> None:
        old = getattr(self, "_request_timer", None)
        if old is not None:
            old.cancel()
        # The cycle of the request before this deadline: only a NEW request arriving whole disarms it.
        self._timer_cycle = self.cycle
        self._request_timer: asyncio.TimerHandle | None = self.loop.call_later(self.request_timeout_s,
                                                                                self._too_slow)

    def _disarm(self) -> None:
        if self._request_timer is not None:
            self._request_timer.cancel()
            self._request_timer = None

    def handle_events(self) -> None:
        super().handle_events()
        cycle = self.cycle
        if (self._request_timer is not None and cycle is not None and cycle is not self._timer_cycle
                and not cycle.more_body):
            self._disarm()  # the request is in; how long the app takes is not the client's doing

    def on_response_complete(self) -> None:
        # Armed before uvicorn moves on: the next request on this keep-alive connection gets its own
        # deadline, and a pipelined one that uvicorn handles right here disarms it once it is in.
        if not self.transport.is_closing():
            self._arm()
        super().on_response_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _too_slow(self) -> None:
        self._request_timer = None
        if not self.transport.is_closing():
            self.transport.close()


class ListenerError(RuntimeError):
    """A listener cannot serve (busy port, unusable address or certificate): a restart will not fix it, so
    `fpgw run` exits with its own code (gateway.cli.common.EXIT_CANNOT_LISTEN) that systemd does not restart."""


def start_listener(app: Any, *, what: str, section: str, listen: str, port: int, tls_cert_file: Path | None,
                   tls_key_file: Path | None, thread_name: str, **server_options: Any) -> ThreadedServer:
    """Start a daemon listener (the status server, the push receiver): HTTPS pair checked, bound, serving.

    Both checks happen here, in the caller's thread, not inside uvicorn's: an unusable certificate or a busy
    port is then a clear start error naming the config keys (``<section>.port`` ...) and the OS reason.
    ``what`` names the listener in those messages ("HTTP server", "push receiver").
    """
    tls: dict[str, Any] = {}
    if tls_cert_file and tls_key_file:
        try:
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(tls_cert_file, tls_key_file)
        except (OSError, ssl.SSLError) as exc:
            raise ListenerError(f"{what}: HTTPS certificate or key unusable ({section}.tls_cert_file {tls_cert_file}, "
                               f"{section}.tls_key_file {tls_key_file}): {exc}") from None
        tls = {"ssl_certfile": str(tls_cert_file), "ssl_keyfile": str(tls_key_file)}
    server = ThreadedServer(app, listen, port, thread_name=thread_name, **server_options, **tls)
    try:
        server.bind()
    except OSError as exc:
        raise ListenerError(f"{what} could not listen on {listen}:{port}: {exc.strerror or exc} "
                           f"(change {section}.port / {section}.listen, or set {section}.enabled = false)") from None
    server.start()
    return server


class ThreadedServer:
    """uvicorn serving ``app`` on host:port from one daemon thread; port 0 picks a free port.

    ``uvicorn_options`` go to uvicorn.Config (e.g. ssl_certfile / ssl_keyfile for HTTPS).
    """

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0, *, thread_name: str = "fpgw-http",
                 backlog: int = 128, request_timeout_s: float = REQUEST_TIMEOUT_S, keep_alive_s: float = KEEP_ALIVE_S,
                 max_connections: int = MAX_CONNECTIONS, max_header_bytes: int = MAX_HEADER_BYTES,
                 **uvicorn_options: Any) -> None:
        self.app = app
        self.host = host
        self.thread_name = thread_name
        self.backlog = backlog
        protocol = type("GuardedH11Protocol", (_GuardedH11Protocol,), {"request_timeout_s": request_timeout_s})
        self.uvicorn_options = {"log_config": None, "lifespan": "off", "access_log": False, "server_header": False,
                                "http": protocol, "timeout_keep_alive": keep_alive_s,
                                "limit_concurrency": max_connections, "h11_max_incomplete_event_size": max_header_bytes,
                                "backlog": backlog, **uvicorn_options}
        self.scheme = "https" if uvicorn_options.get("ssl_certfile") else "http"
        self.requested_port = port
        #: The port actually listened on (known once bound).
        self.port: int | None = None
        self._sock: socket.socket | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """Base URL (after start)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"

    @property
    def started(self) -> bool:
        """True while uvicorn is serving."""
        return self._server is not None and self._server.started

    def bind(self) -> int:
        """Bind and listen now (idempotent); returns the port. Raises OSError when the address cannot be used."""
        if self._sock is not None:
            assert self.port is not None
            return self.port
        family, _, _, _, addr = socket.getaddrinfo(self.host, self.requested_port, type=socket.SOCK_STREAM)[0]
        # proto=IPPROTO_TCP: asyncio then sets TCP_NODELAY on accepted sockets by itself too (connection_made
        # sets it regardless, whatever socket uvicorn was given).
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(addr)
            sock.listen(self.backlog)
        except OSError:
            sock.close()
            raise
        self._sock = sock
        self.port = int(sock.getsockname()[1])
        return self.port

    def start(self, timeout_s: float = 10.0) -> None:
        """Bind (if not yet) and serve; raises OSError when binding fails, RuntimeError when uvicorn does not start."""
        if self._sock is None:
            self.bind()
        sock = self._sock
        assert sock is not None
        server = uvicorn.Server(uvicorn.Config(self.app, host=self.host, port=self.port or 0,
                                               **self.uvicorn_options))
        self._server = server

        def serve() -> None:
            try:
                server.run(sockets=[sock])
            except SystemExit:  # uvicorn exits on startup failure; start() below reports it
                pass
            finally:
                sock.close()

        self._thread = threading.Thread(target=serve, name=self.thread_name, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not server.started and self._thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        if not server.started:
            self.stop(2)
            raise RuntimeError(f"HTTP server did not start on {self.host}:{self.port} (see the log above)")

    def stop(self, deadline_s: float = 10.0) -> None:
        """Ask uvicorn to exit and join its thread (forced after the deadline); closes the socket."""
        server, thread = self._server, self._thread
        if server is not None:
            server.should_exit = True
        if thread is not None:
            thread.join(max(deadline_s, 1.0))
            if thread.is_alive() and server is not None:
                server.force_exit = True
                thread.join(2.0)
        if self._sock is not None:
            self._sock.close()  # never started, or already closed by the serving thread: harmless
        self._thread = None
        self._server = None
        self._sock = None

    def __enter__(self) -> ThreadedServer:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

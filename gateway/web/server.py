"""The one HTTP server: uvicorn serving an ASGI app from a worker thread (office and central modes alike).

    gateway.web.status.HttpServer (the daemon's service) --> ThreadedServer(build_app(ctx), listen, port)
    tests / benchmarks / tools                          --> with ThreadedServer(app) as server: server.url
The socket is bound here, before uvicorn starts, so a busy port is a clear OSError with the OS reason and
port 0 gives the real port at once. uvicorn skips signal handling outside the main thread, which is what
a daemon with its own signal handling wants.
"""

from __future__ import annotations

import socket
import threading
import time
from types import TracebackType
from typing import Any

import uvicorn


class ThreadedServer:
    """uvicorn serving ``app`` on host:port from one daemon thread; port 0 picks a free port.

    ``uvicorn_options`` go to uvicorn.Config (e.g. ssl_certfile / ssl_keyfile for HTTPS).
    """

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0, *, thread_name: str = "fpgw-http",
                 backlog: int = 128, **uvicorn_options: Any) -> None:
        self.app = app
        self.host = host
        self.thread_name = thread_name
        self.backlog = backlog
        self.uvicorn_options = {"log_config": None, "lifespan": "off", "access_log": False, "server_header": False,
                                **uvicorn_options}
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
        # proto=IPPROTO_TCP matters: asyncio sets TCP_NODELAY on accepted sockets only when it is set,
        # and without it every keep-alive response stalls 40 ms on Nagle + delayed ACK.
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

"""A local webhook receiver standing in for the team's alert channel (health, forward, central tests).

The receiver is a tiny threaded HTTP server on 127.0.0.1 (ephemeral port) that records every JSON
POST; it can be told to fail the next N requests so retries are exercised for real.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class WebhookReceiver:
    """Records JSON POSTs; ``fail_next`` makes the next N requests answer 500."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.requests = 0
        self.fail_next = 0
        self._cond = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with receiver._cond:
                    receiver.requests += 1
                    if receiver.fail_next > 0:
                        receiver.fail_next -= 1
                        status = 500
                    else:
                        status = 200
                        try:
                            doc = json.loads(body)
                        except ValueError:
                            doc = {"raw": body.decode("utf-8", "replace")}
                        doc["_content_type"] = self.headers.get("Content-Type")
                        receiver.received.append(doc)
                    receiver._cond.notify_all()
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="webhook-receiver", daemon=True)

    @property
    def url(self) -> str:
        """Where to POST."""
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/hook"

    def __enter__(self) -> WebhookReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def wait_for(self, pred: Callable[[list[dict[str, Any]]], bool], timeout_s: float = 20.0) -> list[dict[str, Any]]:
        """Wait until ``pred(received)`` holds; returns a copy of what was received."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while not pred(self.received):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"webhook condition not met in {timeout_s} s; received: "
                                         f"{[(d.get('problem'), d.get('event')) for d in self.received]}")
                self._cond.wait(left)
            return list(self.received)

    def events(self, device: str | None = None) -> list[tuple[str | None, str | None]]:
        """(problem, event) of every received alert (optionally of one device), in arrival order."""
        with self._cond:
            return [(d.get("problem"), d.get("event")) for d in self.received
                    if device is None or (d.get("device") or {}).get("id") == device]


def count(received: list[dict[str, Any]], problem: str, event: str) -> int:
    """How many alerts of this problem/event arrived."""
    return sum(1 for d in received if d.get("problem") == problem and d.get("event") == event)

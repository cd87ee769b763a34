"""A fault-injecting TCP proxy between an office gateway's forwarder and the central API (loopback only).

Used by the forwarding end-to-end test and the chaos harness: ``set_mode`` switches at run time between passing
traffic, refusing connections (RST), answering 502, cutting responses half way and stalling them.
"""

from __future__ import annotations

import socket
import threading
import time
from collections import Counter
from typing import Any

MODES = ("pass", "refuse", "502", "drop_mid_response", "slow")



class FaultyProxy:
    """TCP proxy on 127.0.0.1 that passes, refuses (RST), answers 502, cuts responses or stalls them."""

    def __init__(self, target_port: int, slow_s: float = 1.6) -> None:
        self.target = ("127.0.0.1", target_port)
        self.slow_s = slow_s
        self.mode = "pass"
        self.hits: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._socks: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.1)
        self.port = self.listener.getsockname()[1]
        self._acceptor = threading.Thread(target=self._accept, name="proxy-accept")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> FaultyProxy:
        self._acceptor.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._acceptor.join(5)
        self._cut_all()
        for t in list(self._threads):
            t.join(5)
        self.listener.close()

    def set_mode(self, mode: str) -> None:
        """Switch behaviour; open (keep-alive) connections are cut so the new mode applies at once."""
        assert mode in MODES
        self.mode = mode
        self._cut_all()

    def _cut_all(self) -> None:
        with self._lock:
            socks, self._socks = list(self._socks), set()
        for sk in socks:
            try:
                sk.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sk.close()

    def _spawn(self, target: Any, *args: Any) -> None:
        t = threading.Thread(target=target, args=args, name="proxy-conn", daemon=True)
        with self._lock:
            self._threads = [x for x in self._threads if x.is_alive()] + [t]
        t.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._spawn(self._handle, client)

    def _handle(self, client: socket.socket) -> None:
        mode = self.mode
        self.hits[mode] += 1
        if mode == "refuse":
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            client.close()
            return
        if mode == "502":
            client.settimeout(2)
            try:
                client.recv(65536)
                client.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 11\r\nConnection: close\r\n\r\n"
                               b"bad gateway")
            except OSError:
                pass
            client.close()
            return
        try:
            upstream = socket.create_connection(self.target, timeout=5)
        except OSError:
            client.close()
            return
        with self._lock:
            self._socks.update((client, upstream))
        self._spawn(self._pump, client, upstream)
        try:
            while True:
                data = upstream.recv(65536)
                if not data:
                    break
                m = self.mode
                if m == "drop_mid_response":
                    self.hits["cut"] += 1
                    client.sendall(data[: len(data) // 2])
                    break
                if m == "slow":
                    self.hits["stalled"] += 1
                    time.sleep(self.slow_s)
                client.sendall(data)
        except OSError:
            pass
        finally:
            for sk in (client, upstream):
                try:
                    sk.close()
                except OSError:
                    pass

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            try:
                dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass

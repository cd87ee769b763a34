"""A minimal RFC 2217 serial device server on loopback for tests, built on pyserial's own server side
(serial.rfc2217.PortManager) with a ``loop://`` port behind it: bytes a test writes to ``port`` reach the
connected client, as a clock's lines would reach a device server's TCP side."""

from __future__ import annotations

import contextlib
import socket
import threading
from typing import Any

import serial
import serial.rfc2217


class Rfc2217Server:
    """One client at a time; ``write(data)`` sends bytes as if the serial side received them."""

    def __init__(self) -> None:
        self.port: Any = serial.serial_for_url("loop://", timeout=0.1)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.url = f"rfc2217://127.0.0.1:{self._listener.getsockname()[1]}"
        self._stop = threading.Event()
        self._client: socket.socket | None = None
        self._threads = [threading.Thread(target=self._accept, name="rfc2217-accept", daemon=True)]
        self._threads[0].start()

    def write(self, data: bytes) -> None:
        """Bytes arriving on the serial side (the loop port echoes them to the pump below)."""
        self.port.write(data)

    @property
    def connected(self) -> bool:
        return self._client is not None

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except (TimeoutError, OSError):
                continue
            conn.settimeout(0.2)
            self._client = conn
            manager = serial.rfc2217.PortManager(self.port, _Sender(conn))
            pump = threading.Thread(target=self._to_client, args=(conn, manager), name="rfc2217-pump", daemon=True)
            pump.start()
            try:
                while not self._stop.is_set():
                    try:
                        data = conn.recv(1024)
                    except TimeoutError:
                        continue
                    if not data:
                        break
                    # Telnet negotiation and control requests are answered by the manager; the loop port
                    # would echo any payload back, but the reader under test never sends one.
                    for _ in manager.filter(data):
                        pass
            except OSError:
                pass
            finally:
                self._client = None
                conn.close()
                pump.join(2)

    def _to_client(self, conn: socket.socket, manager: Any) -> None:
        while not self._stop.is_set() and self._client is conn:
            data = self.port.read(self.port.in_waiting or 1)
            if data:
                with contextlib.suppress(OSError):
                    conn.sendall(b"".join(manager.escape(data)))

    def close(self) -> None:
        self._stop.set()
        if self._client is not None:
            with contextlib.suppress(OSError):
                self._client.shutdown(socket.SHUT_RDWR)
        for t in self._threads:
            t.join(5)
        self._listener.close()
        self.port.close()


class _Sender:
    """What PortManager writes its answers to (it calls ``write``)."""

    def __init__(self, conn: socket.socket) -> None:
        self.conn = conn

    def write(self, data: bytes) -> None:
        with contextlib.suppress(OSError):
            self.conn.sendall(data)

"""A simulated serial-line time clock: writes one text line per punch, on a pseudo-terminal or a TCP socket.

    SerialClock(spec).start()
        transport "pty":    os.openpty(); the gateway opens the slave path (or the stable ``link`` symlink to
                            it, like /dev/serial/by-id/...) exactly like a USB serial adapter
        transport "socket": a TCP server on 127.0.0.x (a serial device server in raw TCP mode); the gateway
                            opens socket://host:port; one client at a time, as device servers allow
    punch(n) / punches_per_minute --line--> the open transport; ground truth (simulators.zk.truth rows:
        serial, user_id, time, state, verify) is written only for lines actually handed to the transport
    faults: noise (NUL/0xFF bytes between lines), garble (a line corrupted: quarantined by the gateway, never a
        truth row), split (a line written in two parts with a pause), unplug()/replug() (pty closed and made
        anew, the link re-pointed; socket: listener and client closed, then listening again), drop() (socket:
        the client connection cut).

Own code: never imports drivers/ or gateway/. As on a real line, a line written while no reader has the port
open is not guaranteed to arrive: the kernel holds it for a pty, and the reader's open discards it (pyserial
flushes the input on open); a socket line with no client connected is not sent (counted in ``stats.unsent``).
"""

from __future__ import annotations

import contextlib
import errno
import os
import random
import select
import socket
import threading
import time
import tty
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from simulators.zk.truth import TruthWriter

FORMATS = ("zk_attlog", "giga_tms", "acroprint", "ct101")
#: Verify code the gateway stores for formats whose lines carry none ("other").
VERIFY_NONE = 200


@dataclass
class SerialClockSpec:
    """One simulated clock (a fleet file's ``[[devices]]`` entry with ``kind = "serial"``)."""

    #: Serial the truth rows carry: set the gateway device's ``serial`` to the same value (or its id).
    serial: str = "SER0001"
    #: "pty" (a pseudo-terminal, like a USB adapter) or "socket" (a device server in raw TCP mode).
    transport: str = "pty"
    host: str = "127.0.0.1"
    #: TCP port for "socket" (0 = any free port).
    port: int = 0
    #: pty only: a symlink kept pointing at the current slave (survives unplug/replug like /dev/serial/by-id).
    link: str = ""
    line_format: str = "zk_attlog"
    #: Line end: "crlf", "lf" or "cr".
    line_end: str = "crlf"
    users: int = 20
    seed: int = 1
    #: Punches written per minute by the clock's own thread (0 = only on punch()).
    punches_per_minute: float = 0.0
    timezone: str = "Asia/Jakarta"
    #: Probability per line of noise bytes before it, of a garbled line instead of it, of writing it in two parts.
    noise: float = 0.0
    garble: float = 0.0
    split: float = 0.0


@dataclass
class ClockStats:
    """What the clock did (tests compare with the gateway's quarantine and counts)."""

    lines: int = 0
    punches: int = 0
    garbled: int = 0
    noise_bytes: int = 0
    splits: int = 0
    #: Lines not handed to any transport (unplugged, no client, buffer full).
    unsent: int = 0
    garbled_lines: list[bytes] = field(default_factory=list)


class SerialClock:
    """The clock; thread-safe; ``start``/``stop`` own every fd, socket and thread it makes."""

    def __init__(self, spec: SerialClockSpec, truth: TruthWriter | None = None) -> None:
        if spec.transport not in ("pty", "socket"):
            raise ValueError(f"transport: expected \"pty\" or \"socket\", got {spec.transport!r}")
        if spec.line_format not in FORMATS:
            raise ValueError(f"line_format: expected one of {', '.join(FORMATS)}, got {spec.line_format!r}")
        if spec.line_end not in ("crlf", "lf", "cr"):
            raise ValueError(f"line_end: expected crlf, lf or cr, got {spec.line_end!r}")
        self.spec = spec
        self.truth = truth
        self.stats = ClockStats()
        self._rng = random.Random(spec.seed)
        self._tz = ZoneInfo(spec.timezone)
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._master: int | None = None
        self._slave: int | None = None
        self.slave_path = ""
        self._listener: socket.socket | None = None
        self._client: socket.socket | None = None
        self.port = spec.port
        self._date_sent: str | None = None
        #: (user, time) pairs written: never written twice.
        self._recent: set[tuple[str, datetime]] = set()
        self.plugged = False

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        """Plug in (open the pty or listen) and start the punch thread when a rate is set."""
        self.replug()
        if self.spec.punches_per_minute > 0:
            self._spawn(self._punch_loop, "punches")

    def stop(self) -> None:
        """Unplug and end every thread."""
        self._stop.set()
        self.unplug()
        for t in self._threads:
            t.join(5)
        self._threads.clear()

    @property
    def path(self) -> str:
        """What the gateway opens: the link (or slave path) for a pty, socket://host:port for a socket."""
        if self.spec.transport == "pty":
            return self.spec.link or self.slave_path
        return f"socket://{self.spec.host}:{self.port}"

    @property
    def connected(self) -> bool:
        """Socket: a client is connected. Pty: plugged in (a reader may or may not have it open)."""
        with self._lock:
            return self._client_alive() if self.spec.transport == "socket" else self._master is not None

    def _client_alive(self) -> bool:
        """True while a client is connected; a client that hung up is forgotten (the reader never writes to
        us, so a readable socket means it closed)."""
        if self._client is None:
            return False
        try:
            ready, _, _ = select.select([self._client], [], [], 0)
            if ready and self._client.recv(1, socket.MSG_PEEK) == b"":
                raise OSError("closed by the client")
        except OSError:
            self._client.close()
            self._client = None
            return False
        return True

    def unplug(self) -> None:
        """Pull the cable: close the pty (the reader's next read fails; the link goes away) or the socket."""
        with self._lock:
            self.plugged = False
            for fd in (self._master, self._slave):
                if fd is not None:
                    with contextlib.suppress(OSError):
                        os.close(fd)
            self._master = self._slave = None
            if self.spec.link:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.spec.link)
            for sock in (self._client, self._listener):
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.close()
            self._client = self._listener = None
            self._date_sent = None

    def replug(self) -> None:
        """Plug back in: a new pty (the link re-pointed) or listening again on the same port."""
        with self._lock:
            self.unplug()
            if self.spec.transport == "pty":
                master, slave = os.openpty()
                tty.setraw(master)
                tty.setraw(slave)
                os.set_blocking(master, False)
                self._master, self._slave = master, slave
                self.slave_path = os.ttyname(slave)
                if self.spec.link:
                    Path(self.spec.link).parent.mkdir(parents=True, exist_ok=True)
                    os.symlink(self.slave_path, self.spec.link)
            else:
                listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                listener.bind((self.spec.host, self.port))
                listener.listen(1)
                self.port = listener.getsockname()[1]
                self._listener = listener
                self._spawn(lambda: self._accept_loop(listener), "accept")
            self.plugged = True

    def drop(self) -> None:
        """Socket: cut the client's connection (the device server drops it); the listener stays."""
        with self._lock:
            if self._client is not None:
                with contextlib.suppress(OSError):
                    self._client.shutdown(socket.SHUT_RDWR)
                self._client.close()
                self._client = None
                self._date_sent = None

    # -- punches ---------------------------------------------------------------------------------
    def now(self) -> datetime:
        """The clock's local wall time (naive, whole seconds)."""
        return datetime.now(self._tz).replace(tzinfo=None, microsecond=0)

    def punch(self, n: int = 1, *, at: str | None = None, user_id: str | None = None) -> list[dict[str, Any]]:
        """Write n punch lines now (time ``at``, 'YYYY-MM-DD HH:MM:SS', or the clock's time); returns the truth
        rows of those actually written (faults may garble some: those are not punches)."""
        rows = []
        used = self._recent
        for _ in range(n):
            when = datetime.strptime(at, "%Y-%m-%d %H:%M:%S") if at else self.now()
            with self._lock:
                user = user_id or str(self._rng.randint(1, max(self.spec.users, 1)))
                # The same user at the same second is one punch to the gateway (its identity): the clock
                # never writes that twice (a real one cannot), so the truth counts what must be stored.
                if len(used) > 10_000:
                    used.clear()
                while (user, when) in used:
                    if user_id is None and len({u for u, t in used if t == when}) < self.spec.users:
                        user = str(self._rng.randint(1, max(self.spec.users, 1)))
                    else:
                        when += timedelta(seconds=1)
                used.add((user, when))
                state = self._rng.choice((0, 1))
                verify = self._rng.choice((1, 15)) if self.spec.line_format in ("zk_attlog", "ct101") else VERIFY_NONE
                row = self._emit(user, when, state, verify)
            if row is not None:
                rows.append(row)
        if self.truth is not None and rows:
            self.truth.write(rows)
        return rows

    def write_raw(self, data: bytes) -> bool:
        """Write bytes as they are (tests: a line of another format, a partial line); True when written."""
        with self._lock:
            return self._write(data)

    def _emit(self, user: str, when: datetime, state: int, verify: int) -> dict[str, Any] | None:
        spec, rng = self.spec, self._rng
        day = f"{when:%Y%m%d}"
        if spec.line_format == "acroprint" and self._date_sent != day \
                and self._write(f"000000,1,{day},D".encode() + self._end()):
            self._date_sent = day
        line = self.format_line(user, when, state, verify)
        if spec.noise and rng.random() < spec.noise:
            junk = bytes(rng.choice((0x00, 0xFF)) for _ in range(rng.randint(1, 4)))
            if self._write(junk):
                self.stats.noise_bytes += len(junk)
        self.stats.lines += 1
        if spec.garble and rng.random() < spec.garble:
            bad = bytearray(line)
            bad[rng.randrange(1, max(len(bad) - 1, 2))] = 0x00
            self.stats.garbled += 1
            self.stats.garbled_lines.append(bytes(bad))
            self._write(bytes(bad) + self._end())
            return None
        data = line + self._end()
        if spec.split and rng.random() < spec.split:
            cut = rng.randrange(1, len(data))
            self.stats.splits += 1
            ok = self._write(data[:cut])
            time.sleep(0.05)
            ok = self._write(data[cut:]) and ok
        else:
            ok = self._write(data)
        if not ok:
            self.stats.unsent += 1
            return None
        self.stats.punches += 1
        return {"serial": spec.serial, "user_id": user, "time": when.strftime("%Y-%m-%d %H:%M:%S"),
                "state": state, "verify": verify}

    def format_line(self, user: str, when: datetime, state: int, verify: int) -> bytes:
        """One punch as the configured format writes it (no line end)."""
        fmt = self.spec.line_format
        if fmt == "zk_attlog":
            text = f"{user}\t{when:%Y-%m-%d %H:%M:%S}\t{state}\t{verify}\t0\t0\t0"
        elif fmt == "giga_tms":
            text = f"{state + 1}\t{when:%d-%m-%Y}\t{when:%H:%M:%S}\t'{user}\t01\t0001"
        elif fmt == "acroprint":
            text = f"{when:%H%M%S},1,{user},{state},0,0,0,0,0"
        else:
            text = (f"1, 0, {state}, {user}, 0, {when.hour}, {when.minute}, {when.second}, {when.month}, {when.day}, "
                    f"{when.year}, {verify}")
        return text.encode("ascii")

    def _end(self) -> bytes:
        return {"crlf": b"\r\n", "lf": b"\n", "cr": b"\r"}[self.spec.line_end]

    def _write(self, data: bytes) -> bool:
        """Hand bytes to the transport; False when nobody can take them (unplugged, no client, full)."""
        if self._master is not None:
            deadline = time.monotonic() + 1.0
            view = memoryview(data)
            while view:
                try:
                    n = os.write(self._master, view)
                    view = view[n:]
                except BlockingIOError:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return False
                    select.select([], [self._master], [], left)
                except OSError as exc:
                    if exc.errno in (errno.EIO, errno.EBADF):
                        return False
                    raise
            return True
        if self._client_alive():
            assert self._client is not None
            try:
                self._client.sendall(data)
                return True
            except OSError:
                self._client.close()
                self._client = None
                return False
        return False

    # -- threads ---------------------------------------------------------------------------------
    def _spawn(self, target: Any, what: str) -> None:
        t = threading.Thread(target=target, name=f"sim-serial-{self.spec.serial}-{what}", daemon=True)
        self._threads = [x for x in self._threads if x.is_alive()]
        self._threads.append(t)
        t.start()

    def _accept_loop(self, listener: socket.socket) -> None:
        while not self._stop.is_set():
            try:
                ready, _, _ = select.select([listener], [], [], 0.2)
                if not ready:
                    continue
                conn, _ = listener.accept()
            except (OSError, ValueError):
                return  # the listener was closed (unplug/stop)
            with self._lock:
                if self._listener is not listener:
                    conn.close()
                    return
                if self._client_alive():
                    conn.close()  # one client at a time, like a device server
                    continue
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                self._client = conn
                self._date_sent = None

    def _punch_loop(self) -> None:
        gap = 60.0 / self.spec.punches_per_minute
        while not self._stop.wait(self._rng.expovariate(1.0 / gap)):
            self.punch(1)

    def describe(self) -> dict[str, Any]:
        """What `fpgw-sim` prints and the control API shows."""
        return {"serial": self.spec.serial, "kind": "serial", "transport": self.spec.transport, "path": self.path,
                "line_format": self.spec.line_format, "plugged": self.plugged, "lines": self.stats.lines,
                "punches": self.stats.punches, "garbled": self.stats.garbled, "unsent": self.stats.unsent}

"""Sockets for simulated devices: one asyncio loop in one background thread serves a whole fleet.

``Fleet`` is the public entry point (tests, ``fpgw demo``, the CLI). Each device gets a TCP
listener and a UDP socket on the same port number; packets are parsed with ``protocol`` and
answered by a ``session.Session``. Faults that act on sockets (offline, port_closed, hang,
udp_loss) are applied here; the rest live in the device and session.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import struct
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from simulators.zk import protocol as p
from simulators.zk.device import DeviceSpec, SimDevice
from simulators.zk.faults import Fault
from simulators.zk.session import Session
from simulators.zk.truth import TruthWriter

log = logging.getLogger("simulators.zk.server")

#: Largest ZK packet a client may send us; anything bigger is a broken stream.
MAX_REQUEST = 1 << 20
TCP_BACKLOG = 64


class TcpLink:
    """Session output over one TCP connection: 8-byte prefix, one write per packet.

    With the device's ``tcp_write_size`` set, a packet goes out in writes of that many bytes, each its own
    segment (TCP_NODELAY), so clients see any split of the stream (1 = one byte at a time).
    """

    is_tcp = True

    def __init__(self, writer: asyncio.StreamWriter, device: SimDevice | None = None, peer: str = "?") -> None:
        self.writer = writer
        self.device = device
        self.peer = peer

    async def send(self, packet: bytes) -> None:
        await self._write(p.tcp_wrap(packet))

    async def send_many(self, packets: list[bytes]) -> None:
        """Several packets back to back in one write: the client sees them coalesced, as from a fast unit."""
        await self._write(b"".join(p.tcp_wrap(x) for x in packets))

    async def _write(self, framed: bytes) -> None:
        if self.writer.is_closing():
            return
        step = self.device.spec.tcp_write_size if self.device is not None else 0
        if step and step < len(framed):
            for i in range(0, len(framed), step):
                if self.writer.is_closing():
                    return
                self.writer.write(framed[i:i + step])
                try:
                    await self.writer.drain()
                except ConnectionError:
                    self.writer.close()
                    return
                await asyncio.sleep(0)  # let the kernel send this piece on its own
            return
        self.writer.write(framed)
        try:
            await self.writer.drain()
        except ConnectionError:
            # The client went away mid-answer (or mid-event): an ordinary disconnect.
            self.writer.close()

    async def send_partial(self, packet: bytes, fraction: float) -> None:
        """Send part of the packet, then reset the connection (RST, not FIN).

        A FIN in the middle of a dataset makes pyzk 0.9 spin forever (its raw-data loop
        treats recv() == b"" as "0 bytes, keep reading"); a reset raises in the client,
        which is also what a terminal that reboots mid-transfer looks like.
        """
        framed = p.tcp_wrap(packet)
        cut = 16 + int((len(framed) - 16) * fraction)
        transport = self.writer.transport
        if transport.is_closing():
            return
        self.writer.write(framed[:cut])
        while transport.get_write_buffer_size() > 0 and not transport.is_closing():
            await asyncio.sleep(0.005)
        sock = self.writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()

    def close(self) -> None:
        if not self.writer.is_closing():
            self.writer.close()


class UdpLink:
    """Session output to one UDP peer; applies the udp_loss fault to outgoing datagrams."""

    is_tcp = False

    def __init__(self, server: DeviceServer, addr: tuple[str, int]) -> None:
        self.server = server
        self.addr = addr
        self.peer = f"{addr[0]}:{addr[1]}"

    async def send(self, packet: bytes) -> None:
        self.server.udp_send(packet, self.addr)

    async def send_many(self, packets: list[bytes]) -> None:
        for x in packets:
            self.server.udp_send(x, self.addr)

    async def send_partial(self, packet: bytes, fraction: float) -> None:
        return  # UDP mid-transfer drops are whole datagrams (handled by the session)

    def close(self) -> None:
        self.server.forget_udp(self.addr)


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, server: DeviceServer) -> None:
        self.server = server

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.server.on_datagram(data, addr)

    def error_received(self, exc: Exception) -> None:
        log.debug("udp error device=%s: %s", self.server.device.serial, exc)


def bind_pair(host: str, port: int, tcp: bool, udp: bool,
              tries: int = 200) -> tuple[socket.socket | None, socket.socket | None, int]:
    """Bind TCP and UDP sockets on the same port number (port 0: retry until one is free on both)."""
    last: OSError | None = None
    for _ in range(tries if port == 0 else 1):
        ts = us = None
        try:
            chosen = port
            if tcp:
                ts = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                ts.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                ts.bind((host, chosen))
                chosen = ts.getsockname()[1]
            if udp:
                us = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                us.bind((host, chosen))
                chosen = us.getsockname()[1]
            if ts is not None:
                ts.listen(TCP_BACKLOG)
                ts.setblocking(False)
            if us is not None:
                us.setblocking(False)
            return ts, us, chosen
        except OSError as e:
            last = e
            for s in (ts, us):
                if s is not None:
                    s.close()
            if port != 0 or e.errno not in (errno.EADDRINUSE, errno.EACCES):
                break
    raise OSError(f"cannot bind {host}:{port} (tcp={tcp} udp={udp}): {last}")


class DeviceServer:
    """The sockets of one device and its live sessions (loop thread only, except where noted)."""

    def __init__(self, fleet: Fleet, device: SimDevice) -> None:
        self.fleet = fleet
        self.device = device
        spec = device.spec
        self.tcp_sock, self.udp_sock, port = bind_pair(spec.host, spec.port, spec.tcp, spec.udp)
        device.port = port
        self.udp_transport: asyncio.DatagramTransport | None = None
        self._accept_task: asyncio.Task[None] | None = None
        self._tcp_sessions: set[Session] = set()
        #: UDP sessions by peer, least recently used first.
        self._udp_sessions: OrderedDict[tuple[str, int], Session] = OrderedDict()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._dummies: list[socket.socket] = []
        self._listening = False
        self._closed = False
        device.on_change = self._on_change_threadsafe
        device.on_punch = self._on_punch_threadsafe

    # --- lifecycle ------------------------------------------------------------------------

    async def open(self) -> None:
        """Attach the bound sockets to the loop and apply the device's current faults."""
        loop = asyncio.get_running_loop()
        if self.udp_sock is not None:
            self.udp_transport, _ = await loop.create_datagram_endpoint(
                lambda: _UdpProtocol(self), sock=self.udp_sock)
        self._apply_faults()

    async def close(self) -> None:
        """Close every socket and session of this device."""
        self._closed = True
        self._stop_accepting()
        self._drain_dummies()
        for s in list(self._tcp_sessions) + list(self._udp_sessions.values()):
            s.end()
        for t in list(self._tasks):
            t.cancel()
        if self.udp_transport is not None:
            self.udp_transport.close()
        elif self.udp_sock is not None:
            self.udp_sock.close()
        if self.tcp_sock is not None:
            self.tcp_sock.close()
            self.tcp_sock = None

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- fault switching ------------------------------------------------------------------

    def _on_change_threadsafe(self, what: str) -> None:
        # Wait until the loop applied it: after set_fault() returns, the device behaves accordingly.
        self.fleet.call_and_wait(self._on_change, what)

    def _on_change(self, what: str) -> None:
        if self._closed:
            return
        if what in ("restart", "replaced"):
            self._drop_sessions()
        self._apply_faults()

    def _drop_sessions(self) -> None:
        for s in list(self._tcp_sessions) + list(self._udp_sessions.values()):
            s.end()
        self._udp_sessions.clear()

    def _apply_faults(self) -> None:
        """Make the TCP listener match offline / port_closed."""
        dev = self.device
        if not dev.spec.tcp:
            return
        closed = bool(dev.fault(Fault.PORT_CLOSED))
        offline = bool(dev.fault(Fault.OFFLINE))
        if closed:
            self._stop_accepting()
            self._drain_dummies()
            if self.tcp_sock is not None:
                self.tcp_sock.close()
                self.tcp_sock = None
            self._drop_sessions()
            return
        if self.tcp_sock is None:
            try:
                ts, _, _ = bind_pair(dev.host, dev.port, True, False)
            except OSError as e:
                log.error("cannot reopen tcp device=%s: %s", dev.serial, e)
                return
            self.tcp_sock = ts
        if offline:
            self._stop_accepting()
            self._fill_backlog()
        else:
            self._drain_dummies()
            self._start_accepting()

    def _fill_backlog(self) -> None:
        """Make new TCP connects time out (SYN dropped) like an unplugged device.

        Linux drops a SYN when the listener's accept queue is full; shrink the backlog to 0
        and fill the queue with our own idle connections.
        """
        if self._dummies or self.tcp_sock is None:
            return
        self.tcp_sock.listen(0)
        for _ in range(2):
            d = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            d.setblocking(False)
            with contextlib.suppress(BlockingIOError, OSError):
                d.connect((self.device.host, self.device.port))
            self._dummies.append(d)

    def _drain_dummies(self) -> None:
        if not self._dummies:
            return
        dummy_names = set()
        for d in self._dummies:
            with contextlib.suppress(OSError):
                dummy_names.add(d.getsockname())
        if self.tcp_sock is not None:
            self.tcp_sock.listen(TCP_BACKLOG)
            # Accept whatever is queued: our dummies (closed) and nothing else, since
            # the full queue refused real clients.
            while True:
                try:
                    conn, _addr = self.tcp_sock.accept()
                except (BlockingIOError, OSError):
                    break
                conn.close()
        for d in self._dummies:
            d.close()
        self._dummies.clear()

    def _start_accepting(self) -> None:
        if self._accept_task is None and self.tcp_sock is not None and not self._closed:
            self._accept_task = asyncio.get_running_loop().create_task(self._accept_loop())

    def _stop_accepting(self) -> None:
        if self._accept_task is not None:
            self._accept_task.cancel()
            self._accept_task = None

    async def _accept_loop(self) -> None:
        loop = asyncio.get_running_loop()
        sock = self.tcp_sock
        assert sock is not None
        while True:
            try:
                conn, addr = await loop.sock_accept(sock)
            except asyncio.CancelledError:
                raise
            except OSError as e:
                if e.errno in (errno.EMFILE, errno.ENFILE):
                    log.error("out of file descriptors device=%s", self.device.serial)
                    await asyncio.sleep(0.5)
                    continue
                log.debug("accept ended device=%s: %s", self.device.serial, e)
                return
            self._spawn(self._serve_tcp(conn, addr))

    # --- TCP ------------------------------------------------------------------------------

    async def _serve_tcp(self, conn: socket.socket, addr: Any) -> None:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        reader, writer = await asyncio.open_connection(sock=conn, limit=MAX_REQUEST + 64)
        peer = f"{addr[0]}:{addr[1]}" if isinstance(addr, tuple) and len(addr) >= 2 else str(addr)
        session = Session(self.device, TcpLink(writer, self.device, peer))
        self._tcp_sessions.add(session)
        try:
            while not session.closed:
                try:
                    top = await reader.readexactly(8)
                except (asyncio.IncompleteReadError, ConnectionError):
                    return  # client went away (pyzk's empty probe connection ends here)
                try:
                    length = p.parse_tcp_top(top, MAX_REQUEST)
                    body = await reader.readexactly(length)
                    pkt = p.parse_packet(body)
                except p.ProtocolError as e:
                    log.warning("malformed tcp stream device=%s peer=%s: %s; closing",
                                self.device.serial, addr, e)
                    return
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                if self.device.fault(Fault.OFFLINE) or self.device.fault(Fault.HANG):
                    continue  # read and ignore: a hung device never answers
                await session.handle(pkt)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("session crashed device=%s peer=%s", self.device.serial, addr)
        finally:
            self._tcp_sessions.discard(session)
            session.end()
            with contextlib.suppress(Exception):
                writer.close()

    # --- UDP ------------------------------------------------------------------------------

    def on_datagram(self, data: bytes, addr: tuple[str, int]) -> None:
        dev = self.device
        if dev.fault(Fault.OFFLINE) or dev.fault(Fault.HANG) or dev.fault(Fault.PORT_CLOSED):
            return
        loss = dev.fault(Fault.UDP_LOSS)
        if loss and dev.loss_rng.random() < float(loss):
            return
        try:
            pkt = p.parse_packet(data)
        except p.ProtocolError as e:
            log.warning("malformed udp datagram device=%s peer=%s: %s", dev.serial, addr, e)
            return
        session = self._udp_sessions.get(addr)
        if session is None or (pkt.command == p.CMD_CONNECT and session.closed):
            session = Session(dev, UdpLink(self, addr))
            self._udp_sessions[addr] = session
            # Full table: drop the least recently used session (the table is kept in use order below),
            # not the oldest one, so a long download keeps its session while idle peers come and go.
            # (each pyzk instance uses a new source port, so idle entries pile up)
            while len(self._udp_sessions) > dev.spec.udp_sessions:
                old_addr, old = self._udp_sessions.popitem(last=False)
                log.info("udp session table full device=%s: dropping least recently used peer=%s:%s",
                         dev.serial, old_addr[0], old_addr[1])
                old.end()
        else:
            self._udp_sessions.move_to_end(addr)
            if pkt.command == p.CMD_CONNECT and session.muted:
                session.muted = False  # a reconnect after a mid-transfer drop is answered again
        self._spawn(self._handle_udp(session, pkt))

    async def _handle_udp(self, session: Session, pkt: p.Packet) -> None:
        try:
            await session.handle(pkt)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("udp session crashed device=%s", self.device.serial)

    def udp_send(self, packet: bytes, addr: tuple[str, int]) -> None:
        dev = self.device
        loss = dev.fault(Fault.UDP_LOSS)
        if loss and dev.loss_rng.random() < float(loss):
            return
        if self.udp_transport is not None and not self.udp_transport.is_closing():
            self.udp_transport.sendto(packet, addr)

    def forget_udp(self, addr: tuple[str, int]) -> None:
        self._udp_sessions.pop(addr, None)

    # --- events ---------------------------------------------------------------------------

    def _on_punch_threadsafe(self, punches: list[tuple[int, int, int, int]]) -> None:
        self.fleet.call_soon(self._on_punch, punches)

    def _on_punch(self, punches: list[tuple[int, int, int, int]]) -> None:
        for s in list(self._tcp_sessions) + list(self._udp_sessions.values()):
            s.queue_events(punches)


class Fleet:
    """Many simulated devices served by one asyncio loop in one background thread."""

    def __init__(self, truth_path: Path | str | None = None, tick_s: float = 1.0) -> None:
        self.truth = TruthWriter(truth_path) if truth_path is not None else None
        self._servers: dict[int, DeviceServer] = {}
        self._order: list[SimDevice] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._tick_s = tick_s
        self._lock = threading.RLock()
        self.control: Any = None  # set by control.start_control_server

    # --- context manager ------------------------------------------------------------------

    def __enter__(self) -> Fleet:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        """True between start() and stop()."""
        return self._loop is not None

    def start(self) -> None:
        """Start the loop thread and attach every device added so far."""
        if self._loop is not None:
            return
        _raise_fd_limit()
        loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.call_soon(ready.set)
            loop.run_forever()

        self._thread = threading.Thread(target=run, name="fpgw-sim-loop", daemon=True)
        self._thread.start()
        ready.wait()
        self._loop = loop
        with self._lock:
            servers = list(self._servers.values())
        for srv in servers:
            self._run(srv.open())
        self._run(self._start_ticker())

    async def _start_ticker(self) -> None:
        self._ticker = asyncio.get_running_loop().create_task(self._tick())

    async def _tick(self) -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(self._tick_s)
            now = time.monotonic()
            elapsed, last = now - last, now
            for dev in list(self._order):
                if dev.spec.punches_per_minute > 0:
                    try:
                        await asyncio.get_running_loop().run_in_executor(None, dev.tick, elapsed)
                    except Exception:
                        log.exception("punch generator failed device=%s", dev.serial)

    def stop(self) -> None:
        """Close every socket, stop the loop and join its thread (idempotent)."""
        if self.control is not None:
            self.control.shutdown()
            self.control = None
        loop = self._loop
        if loop is not None:
            self._run(self._shutdown(), timeout=30)
            loop.call_soon_threadsafe(loop.stop)
            assert self._thread is not None
            self._thread.join(timeout=30)
            loop.close()
            self._loop = None
            self._thread = None
        else:
            for srv in self._servers.values():
                for s in (srv.tcp_sock, srv.udp_sock):
                    if s is not None:
                        s.close()
        if self.truth is not None:
            self.truth.close()

    async def _shutdown(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
        for srv in list(self._servers.values()):
            await srv.close()
        await asyncio.sleep(0)
        await asyncio.get_running_loop().shutdown_default_executor()

    # --- loop helpers ---------------------------------------------------------------------

    def _run(self, coro: Any, timeout: float = 60) -> Any:
        assert self._loop is not None
        fut: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return fut.result(timeout)

    def _on_loop_thread(self) -> bool:
        try:
            return asyncio.get_running_loop() is self._loop
        except RuntimeError:
            return False

    def call_soon(self, fn: Any, *args: Any) -> None:
        """Run ``fn(*args)`` on the loop thread (now if already there; dropped when stopped)."""
        loop = self._loop
        if loop is None:
            return
        if self._on_loop_thread():
            fn(*args)
        else:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(fn, *args)

    def call_and_wait(self, fn: Any, *args: Any, timeout: float = 10.0) -> None:
        """Like call_soon, but from another thread wait until ``fn`` ran on the loop."""
        loop = self._loop
        if loop is None or not loop.is_running() or self._on_loop_thread():
            self.call_soon(fn, *args)
            return
        done: Future[None] = Future()

        def run() -> None:
            try:
                fn(*args)
                done.set_result(None)
            except BaseException as exc:  # reported to the caller's thread
                done.set_exception(exc)

        try:
            loop.call_soon_threadsafe(run)
        except RuntimeError:
            return  # loop closing: nothing left to apply it to
        done.result(timeout)

    # --- devices --------------------------------------------------------------------------

    def add(self, spec: DeviceSpec) -> SimDevice:
        """Create a device (history, truth rows), bind its sockets and serve it if running."""
        with self._lock:
            if any(d.serial == spec.serial for d in self._order):
                raise ValueError(f"serial {spec.serial!r} is already in this fleet")
        dev = SimDevice(spec, truth=self.truth)
        srv = DeviceServer(self, dev)
        with self._lock:
            self._servers[id(dev)] = srv
            self._order.append(dev)
        if self._loop is not None:
            self._run(srv.open())
        log.info("device up serial=%s host=%s port=%d records=%d users=%d", dev.serial, dev.host,
                 dev.port, dev.record_count, dev.user_count)
        return dev

    def remove(self, serial: str) -> None:
        """Stop serving a device and close its sockets."""
        dev = self.device(serial)
        with self._lock:
            srv = self._servers.pop(id(dev))
            self._order.remove(dev)
        if self._loop is not None:
            self._run(srv.close())
        else:
            for s in (srv.tcp_sock, srv.udp_sock):
                if s is not None:
                    s.close()

    @property
    def devices(self) -> list[SimDevice]:
        """All devices, in the order they were added."""
        with self._lock:
            return list(self._order)

    def device(self, serial: str) -> SimDevice:
        """The device whose current serial is ``serial`` (KeyError when none)."""
        with self._lock:
            for d in self._order:
                if d.serial == serial:
                    return d
        raise KeyError(f"no device with serial {serial!r}")


def _raise_fd_limit() -> None:
    """A 1,000-device fleet needs ~2,000 sockets plus clients: lift the soft fd limit."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ImportError, ValueError, OSError):
        pass

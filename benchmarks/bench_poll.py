"""Benchmark: one poll end to end (download, decode, normalize, store + outbox), simulator on loopback, SQLite.

Where it sits: bench_driver.py measures the driver alone and bench_store.py the store alone; this script measures
what the daemon and `fpgw poll` really do per poll, against the goals of issue 14:

1. the first poll of a 100k-record log through the real `fpgw poll` command, run as a subprocess (start-up,
   migrations check, download, decode, normalize, store; wall time and punches/s end to end), and the duration
   the command printed for the poll;
2. the same first poll through DevicePoller in this process, split by stage (download + decode, normalize,
   store, the rest) with thin timing wrappers around the real calls (``--profile`` adds a cProfile listing);
3. the requests a poll makes when nothing changed (the daemon's steady state), counted by a TCP proxy that
   parses the ZK frames between the poller and the simulator;
4. one new punch on a second 100k-record terminal, one that answers TCP reads buffered like a real terminal (a
   direct answer carries the whole log): how many records and bytes the poll reads (only the new record once
   the driver can read a tail; the whole log before); and a full reconcile of the first log (all duplicates).

    .venv/bin/python benchmarks/bench_poll.py               # 100,000 records, TCP
    .venv/bin/python benchmarks/bench_poll.py --quick       # tiny sizes: proves the script runs
    .venv/bin/python benchmarks/bench_poll.py --records 50000 --transport udp --profile
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import re
import socket
import sqlite3
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import gateway.polling.poller as poller_module  # noqa: E402
from benchmarks.harness import Report, bench_args  # noqa: E402
from gateway.config import Config, parse_config  # noqa: E402
from gateway.logs import setup_logging  # noqa: E402
from gateway.models import PollOutcome  # noqa: E402
from gateway.polling.poller import DevicePoller, registry_driver_factory  # noqa: E402
from gateway.store.db import create_db_engine, upgrade  # noqa: E402
from gateway.store.punches import Store  # noqa: E402
from simulators.zk import DeviceSpec, Fleet  # noqa: E402

OFFICE = "1801.01.02"
ZK_MAGIC = b"\x50\x50\x82\x7d"
#: ZK command codes the proxy names in its detail column (docs/drivers/zk.md).
COMMANDS = {1000: "CONNECT", 1001: "EXIT", 1002: "ENABLEDEVICE", 1003: "DISABLEDEVICE", 11: "OPTIONS_RRQ",
            50: "GET_FREE_SIZES", 201: "GET_TIME", 13: "ATTLOG_RRQ", 1503: "PREPARE_BUFFER", 1504: "READ_BUFFER",
            1102: "AUTH", 1013: "REFRESHDATA", 9: "USERTEMP_RRQ", 1500: "PREPARE_DATA", 1501: "DATA",
            1100: "GET_VERSION", 1101: "CHANGE_SPEED", 1502: "FREE_DATA"}


def options(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--records", type=int, default=100_000, help="records on the simulated terminal (100000)")
    ap.add_argument("--transport", choices=("tcp", "udp"), default="tcp")
    ap.add_argument("--unchanged", type=int, default=3, help="unchanged polls whose requests are counted (3)")
    ap.add_argument("--profile", action="store_true", help="cProfile the in-process first poll; print the top")


# -- a ZK request counter between the poller and the simulator (TCP) ------------------------------------------

class _Exchange:
    """One client connection's request/reply state (shared by its two pump threads)."""

    def __init__(self) -> None:
        self.outstanding = False  # a request was forwarded and the client has not sent anything since
        self.replied = False  # ... and the device's reply to it reached the client


class ZkRequestCounter:
    """TCP proxy on 127.0.0.1 that forwards everything and counts the ZK requests (frames) clients send, and the
    round trips: requests whose reply reached the client before it sent anything else. While ``reply_delay_s``
    is set, replies are held that long first, so a request the client does not wait for (a final EXIT whose
    answer it ignores) is never taken for a round trip."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.requests: Counter[str] = Counter()
        self.round_trips = 0
        self.connections = 0
        self.reply_delay_s = 0.0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._socks: list[socket.socket] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.1)
        self.port = self.listener.getsockname()[1]

    def __enter__(self) -> ZkRequestCounter:
        self._spawn(self._accept)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        with self._lock:
            socks = list(self._socks)
        for sk in socks:
            try:
                sk.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sk.close()
        for t in self._threads:
            t.join(5)
        self.listener.close()

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()
            self.round_trips = 0
            self.connections = 0

    def total(self) -> int:
        with self._lock:
            return sum(self.requests.values())

    def _spawn(self, target: Callable[..., None], *args: Any) -> None:
        t = threading.Thread(target=target, args=args, name="bench-proxy", daemon=True)
        self._threads.append(t)
        t.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            exchange = _Exchange()
            with self._lock:
                self.connections += 1
                self._socks += [client, upstream]
            self._spawn(self._pump, client, upstream, exchange, True)
            self._spawn(self._pump, upstream, client, exchange, False)

    def _settle(self, exchange: _Exchange) -> None:
        """The client sends again (or hangs up): its previous request was a round trip if it got its reply."""
        if exchange.outstanding and exchange.replied:
            self.round_trips += 1
        exchange.outstanding = exchange.replied = False

    def _pump(self, src: socket.socket, dst: socket.socket, exchange: _Exchange, from_client: bool) -> None:
        buf = b""
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if from_client:
                    with self._lock:
                        self._settle(exchange)
                    buf = self._count_frames(buf + data)
                    with self._lock:
                        exchange.outstanding = True
                else:
                    if self.reply_delay_s:
                        time.sleep(self.reply_delay_s)
                    with self._lock:  # before forwarding: the client cannot act on the reply before it has it
                        exchange.replied = exchange.outstanding
                dst.sendall(data)
        except OSError:
            pass
        finally:
            if from_client:
                with self._lock:
                    self._settle(exchange)
            for sk in (src, dst):
                try:
                    sk.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def _count_frames(self, buf: bytes) -> bytes:
        while len(buf) >= 8:
            if buf[:4] != ZK_MAGIC:
                return b""  # not a ZK TCP stream: stop counting it
            (length,) = struct.unpack_from("<I", buf, 4)
            if len(buf) < 8 + length:
                break
            (code,) = struct.unpack_from("<H", buf, 8) if length >= 2 else (0,)
            with self._lock:
                self.requests[COMMANDS.get(code, str(code))] += 1
            buf = buf[8 + length:]
        return buf


# -- stage timing around the real calls ---------------------------------------------------------------------

class Stages:
    """Seconds spent in each stage of the polls run while ``timing()`` is active."""

    def __init__(self) -> None:
        self.seconds: Counter[str] = Counter()

    @contextmanager
    def timing(self) -> Iterator[None]:
        real = poller_module.normalize_punches

        def timed_normalize(*a: Any, **kw: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return real(*a, **kw)
            finally:
                self.seconds["normalize"] += time.perf_counter() - t0

        poller_module.normalize_punches = timed_normalize  # type: ignore[assignment]
        try:
            yield
        finally:
            poller_module.normalize_punches = real

    def clear(self) -> None:
        self.seconds.clear()


class TimedSession:
    """The driver's session; the log reads timed as "download + decode" (every other call passes through)."""

    def __init__(self, inner: Any, stages: Stages) -> None:
        self._inner = inner
        self._stages = stages

    def read_punches(self, progress: Any = None) -> Any:
        t0 = time.perf_counter()
        try:
            return self._inner.read_punches(progress)
        finally:
            self._stages.seconds["download + decode"] += time.perf_counter() - t0

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)  # AttributeError when the driver lacks the ability: isinstance stays true
        if name != "read_punches_after":
            return attr

        def timed(*a: Any, **kw: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return attr(*a, **kw)
            finally:
                self._stages.seconds["download + decode"] += time.perf_counter() - t0
        return timed


class TimedDriver:
    def __init__(self, inner: Any, stages: Stages) -> None:
        self._inner = inner
        self._stages = stages

    @contextmanager
    def connect(self, deadline: float | None = None) -> Iterator[Any]:
        with self._inner.connect(deadline) as session:
            yield TimedSession(session, self._stages)


class TimedStore(Store):
    def __init__(self, engine: Any, office_code: str, stages: Stages) -> None:
        super().__init__(engine, office_code)
        self._stages = stages

    def save_poll(self, *a: Any, **kw: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return super().save_poll(*a, **kw)
        finally:
            self._stages.seconds["store"] += time.perf_counter() - t0


# -- the runs ---------------------------------------------------------------------------------------------------

#: Forwarding is configured (to a port nothing listens on: `fpgw poll` never sends), so every poll also queues
#: its new punches' outbox rows, as an office gateway that feeds BKD does (issue 14: "store + outbox").
FORWARD_URL = "http://127.0.0.1:9"


def token_file(directory: Path) -> Path:
    """A gateway token file for the [forward] section (read at start-up, never sent: see FORWARD_URL)."""
    path = directory / "forward-token"
    if not path.exists():
        path.write_text("bench-token-not-sent\n", encoding="utf-8")
        path.chmod(0o600)
    return path


def config_doc(db_path: Path, host: str, port: int, transport: str) -> dict[str, Any]:
    return {"site": {"office_code": OFFICE}, "database": {"url": f"sqlite:///{db_path}"},
            "polling": {"full_reconcile_s": 3600},
            "forward": {"url": FORWARD_URL, "token_file": str(token_file(db_path.parent))},
            "devices": [{"id": "bench", "address": host, "port": port, "transport": transport}]}


def stored_and_queued(db_path: Path) -> tuple[int, int]:
    """(punches, outbox rows) in the SQLite database the command wrote."""
    with sqlite3.connect(db_path) as db:
        return (db.execute("SELECT count(*) FROM punches").fetchone()[0],
                db.execute("SELECT count(*) FROM outbox").fetchone()[0])


def write_toml(doc: dict[str, Any], path: Path) -> Path:
    dev = doc["devices"][0]
    path.write_text(f'[site]\noffice_code = "{OFFICE}"\n[database]\nurl = "{doc["database"]["url"]}"\n'
                    f'[forward]\nurl = "{doc["forward"]["url"]}"\ntoken_file = "{doc["forward"]["token_file"]}"\n'
                    f'[[devices]]\nid = "bench"\naddress = "{dev["address"]}"\nport = {dev["port"]}\n'
                    f'transport = "{dev["transport"]}"\n', encoding="utf-8")
    return path


def compile_bytecode() -> str:
    """Compile fpgw's own modules to bytecode (``__pycache__``, ignored by git), as installing fpgw does: a
    development shell often sets PYTHONDONTWRITEBYTECODE, and every `fpgw poll` then compiled the sources of
    gateway/ and drivers/ again (0.1-0.2 s of its start-up). Returns a note for the report."""
    res = subprocess.run([sys.executable, "-m", "compileall", "-q", "gateway", "drivers"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    if res.returncode != 0:
        return "could not compile bytecode first: the command compiled its sources itself"
    return "bytecode compiled first, as an install does"


def cli_poll(config_path: Path) -> tuple[float, str]:
    """`fpgw poll bench` as a subprocess: (wall seconds, its stdout)."""
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "gateway.cli", "--config", str(config_path), "poll", "bench"],
                         cwd=ROOT, capture_output=True, text=True, timeout=600, env={**os.environ, "NO_COLOR": "1"})
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        raise RuntimeError(f"fpgw poll failed ({res.returncode}): {res.stdout[-1000:]} {res.stderr[-2000:]}")
    return wall, res.stdout


def startup_wall(argv: list[str], runs: int = 3) -> float:
    """Median wall seconds of ``python <argv>`` (a command that does no work: start-up only)."""
    walls = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, timeout=120, check=True)
        walls.append(time.perf_counter() - t0)
    return statistics.median(walls)


def printed_duration(stdout: str) -> float:
    m = re.search(r"\bbench: ok .*\((\d+(?:\.\d+)?)s\)", stdout)
    if m is None:
        raise RuntimeError(f"no poll line in: {stdout!r}")
    return float(m.group(1))


def poller_for(config: Config, store: Store, stages: Stages | None = None,
               now: Callable[[], datetime] | None = None) -> DevicePoller:
    factory = registry_driver_factory if stages is None else (
        lambda dev: TimedDriver(registry_driver_factory(dev), stages))
    return DevicePoller(config, store, driver_factory=factory, now=now)


def ok(o: PollOutcome) -> PollOutcome:
    if not o.ok:
        raise RuntimeError(f"poll failed: {o.error_kind}: {o.error}")
    return o


def main() -> None:
    args = bench_args(__doc__, extra=options)
    records = 2_000 if args.quick else args.records
    setup_logging("console", "warning")
    report = Report("bench_poll", quick=args.quick)
    report.note("shared 2-core development machine: absolute figures are noisy; the lead re-measures after merging")
    with tempfile.TemporaryDirectory() as tmp_dir, Fleet(truth_path=Path(tmp_dir) / "truth.jsonl") as fleet:
        tmp = Path(tmp_dir)
        sim = fleet.add(DeviceSpec(serial="BENCH1", host="127.0.0.1", port=0, tcp=True, udp=True, record_layout=40,
                                   user_layout=72, users=300, records=records, seed=3))
        size = f"{records:,} records, {args.transport.upper()}, SQLite"

        # 1. `fpgw poll` as the operator runs it: a fresh process and database.
        cli_config = write_toml(config_doc(tmp / "cli.db", sim.host, sim.port, args.transport), tmp / "cli.toml")
        bytecode = compile_bytecode()
        wall, out = cli_poll(cli_config)
        shown = printed_duration(out)
        stored, queued = stored_and_queued(tmp / "cli.db")
        if stored != records or queued != records:  # the row would not time what it says: say so, do not judge it
            report.note(f"the first poll stored {stored:,} punches and queued {queued:,} outbox rows, not {records:,}")
        report.at_most("poll.cli.first.wall_s", f"first poll, `fpgw poll` subprocess, wall ({size})",
                       measured=wall, goal=2.0, unit="s",
                       detail=f"the poll line printed {shown:.1f} s; {stored:,} punches and {queued:,} outbox rows "
                              f"stored; {bytecode}")
        report.at_least("poll.cli.first.punches_per_s", "first poll end to end, punches/s (`fpgw poll` wall)",
                        measured=records / wall, goal=50_000, unit="punches/s")
        again_wall, again_out = cli_poll(cli_config)
        report.figure("poll.cli.unchanged.wall_s", "`fpgw poll` when nothing changed, wall (start-up + one poll)",
                      measured=again_wall, unit="s",
                      detail=f"the poll line printed {printed_duration(again_out):.2f} s; the first poll's wall minus "
                      "this ≈ its download, normalize and store")

        # Start-up alone: what `fpgw poll` imports before it polls (the CLI, the poller and the store, the ZK
        # driver), against a bare interpreter, medians of 3. Both end with os._exit, as `fpgw poll` ends
        # (gateway.cli.main.end_process): the interpreter's teardown of those modules is not start-up.
        bare = startup_wall(["-c", "import os; os._exit(0)"])
        imports = startup_wall(["-c", "import gateway.cli.main, gateway.polling.poller, drivers.zk.driver; "
                                      "import os; os._exit(0)"])
        report.figure("poll.cli.startup.imports_s", "interpreter + the modules `fpgw poll` imports, wall",
                      measured=imports, unit="s", detail=f"a bare interpreter takes {bare:.2f} s: imports "
                      f"≈ {imports - bare:.2f} s")

        # 2. The same first poll inside this process, split by stage.
        stages = Stages()
        config = parse_config(config_doc(tmp / "inproc.db", sim.host, sim.port, args.transport), base_dir=tmp)
        engine = create_db_engine(config.database.url)
        upgrade(engine)
        store = TimedStore(engine, OFFICE, stages)
        store.sync_devices(config.devices)
        shift = [0.0]
        poller = poller_for(config, store, stages, now=lambda: datetime.now(UTC) + timedelta(seconds=shift[0]))
        device = config.device("bench")
        profiler = cProfile.Profile() if args.profile else None
        with stages.timing():
            t0 = time.perf_counter()
            if profiler is not None:
                profiler.enable()
            first = ok(poller.poll_once(device))
            if profiler is not None:
                profiler.disable()
            t_first = time.perf_counter() - t0
        assert first.new_punches == records, first
        report.figure("poll.inproc.first.wall_s", "first poll through DevicePoller in process, wall",
                      measured=t_first, unit="s", detail=f"{records / t_first:,.0f} punches/s; outcome says "
                      f"{first.duration_s:.2f} s" + ("; cProfile on (slower)" if profiler else ""))
        split = dict(stages.seconds)
        split["connect, info, counts, marks, users"] = t_first - sum(split.values())
        for stage in ("download + decode", "normalize", "store", "connect, info, counts, marks, users"):
            seconds = split.get(stage, 0.0)
            report.figure(f"poll.inproc.first.{stage.split(' ')[0].strip(',')}_s", f"  of which {stage}",
                          measured=seconds, unit="s", detail=f"{seconds / t_first:.0%}")
        if profiler is not None:
            text = io.StringIO()
            pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(30)
            print(text.getvalue())

        # 4. One new punch on a big terminal. This one answers TCP reads buffered (1503/1504 chunks), as real
        # terminals do for big logs: a direct answer (the simulator's default) always carries the whole log,
        # a tail read's too. Its first poll is not timed.
        tail_sim = fleet.add(DeviceSpec(serial="BENCH2", host="127.0.0.1", port=0, tcp=True, udp=True,
                                        record_layout=40, user_layout=72, users=300, records=records, seed=4,
                                        tcp_buffered=True))
        tconfig = parse_config(config_doc(tmp / "tail.db", tail_sim.host, tail_sim.port, args.transport),
                               base_dir=tmp)
        tengine = create_db_engine(tconfig.database.url)
        upgrade(tengine)
        tstore = TimedStore(tengine, OFFICE, stages)
        tstore.sync_devices(tconfig.devices)
        tpoller = poller_for(tconfig, tstore, stages)
        tdevice = tconfig.device("bench")
        tfirst = ok(tpoller.poll_once(tdevice))
        ok(tpoller.poll_once(tdevice))  # counts only
        tail_sim.add_punches(1)
        stages.clear()
        with stages.timing():
            t0 = time.perf_counter()
            one = ok(tpoller.poll_once(tdevice))
            t_one = time.perf_counter() - t0
        assert one.new_punches == 1, one
        tengine.dispose()
        report.at_most("poll.one_new.records_read", f"one new punch on a {records:,}-record terminal: records read",
                       measured=one.records_read, goal=1, unit="records",
                       detail=f"mode {one.mode}; MET once the driver reads tails (drivers.base.ReadsNewPunches)")
        report.figure("poll.one_new.bytes_read", "  bytes read for it", measured=one.bytes_read, unit="B",
                      detail=f"its first poll read {tfirst.bytes_read:,} B (buffered TCP answers)")
        report.figure("poll.one_new.wall_s", "  wall", measured=t_one, unit="s",
                      detail=", ".join(f"{k} {v:.3f} s" for k, v in stages.seconds.items()) +
                      f"; its first poll took {tfirst.duration_s:.1f} s")

        # A full reconcile of the first terminal (every record a duplicate).
        ok(poller.poll_once(device))
        shift[0] += 3601  # the periodic full reconcile is due
        t0 = time.perf_counter()
        rec = ok(poller.poll_once(device))
        t_rec = time.perf_counter() - t0
        assert rec.mode == "full" and rec.new_punches == 0, rec
        report.figure("poll.reconcile.wall_s", "full reconcile (whole log again, every punch a duplicate), wall",
                      measured=t_rec, unit="s", detail=f"{records / t_rec:,.0f} punches/s")
        engine.dispose()

        # 3. Requests of a poll when nothing changed, counted between the poller and the simulator.
        if args.transport != "tcp":
            report.note("requests of an unchanged poll are counted over TCP only: run with --transport tcp")
        else:
            with ZkRequestCounter((sim.host, sim.port)) as proxy:
                pconfig = parse_config(config_doc(tmp / "proxied.db", "127.0.0.1", proxy.port, "tcp"), base_dir=tmp)
                pengine = create_db_engine(pconfig.database.url)
                upgrade(pengine)
                pstore = Store(pengine, OFFICE)
                pstore.sync_devices(pconfig.devices)
                ppoller = poller_for(pconfig, pstore)
                pdevice = pconfig.device("bench")
                ok(ppoller.poll_once(pdevice))  # first poll (full; reads the clock and the users)
                proxy.reply_delay_s = 0.02
                counts: list[int] = []
                trips: list[int] = []
                seen: Counter[str] = Counter()
                connections = 0
                for _ in range(max(1, args.unchanged)):
                    proxy.reset()
                    o = ok(ppoller.poll_once(pdevice))
                    assert o.mode == "count", o
                    time.sleep(0.05)  # let the proxy see the hang-up
                    counts.append(proxy.total())
                    trips.append(proxy.round_trips)
                    seen = Counter(proxy.requests)
                    connections = proxy.connections
                pengine.dispose()
            detail = ", ".join(f"{k}×{v}" if v > 1 else k for k, v in seen.items())
            report.at_most("poll.unchanged.round_trips", "poll when nothing changed (daemon steady state): round "
                           "trips", measured=max(trips), goal=3, unit="round trips",
                           detail=f"plus the TCP handshake ({connections} connect); polls: {trips}")
            report.figure("poll.unchanged.requests", "  requests sent", measured=max(counts), unit="requests",
                          detail=f"{detail}; polls: {counts}")
    report.finish(args.json)


if __name__ == "__main__":
    main()

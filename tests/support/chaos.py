"""Chaos/soak harness: a simulated office under random faults, checked exactly-once against the ground truth.

One harness serves the short run in the test suite (tests/e2e/test_chaos.py, about a minute) and the long soak
(``python -m tests.support.chaos --minutes 30``, see docs/development.md). What runs:

    puncher thread --add_punches--> simulated terminals (simulators.zk Fleet; truth JSONL of every punch held)
    `fpgw run` (office, SQLite, SUBPROCESS) --polls--> terminals;  --forwards--> FaultyProxy --> `fpgw run`
        (central mode, PostgreSQL, SUBPROCESS) <--pull by cursor-- BkdPuller
    controller thread: a plan drawn from the seed (device faults switched at run time, the office gateway
        SIGKILLed at random moments / during a big download / during a forward, `fpgw devices clear` runs,
        the office SQLite and the central PostgreSQL write-locked by another connection, the central killed
        and restarted, the link flapping, a terminal replaced by another serial, RTC resets)

At the end the chaos stops, every fault is cleared, the office daemon is stopped and final polls and forwards
are driven explicitly (`fpgw poll --all`, `fpgw forward now` until the outbox is empty); then the office database
and the BKD pull API are compared with the ground truth as multisets of (serial, user id, device time, state,
verify). ``ChaosReport.ok`` is true only when nothing is lost, duplicated or unexpected on either side and no
terminal is left disabled.

Three scenarios were the gaps issue 8 named and run by default since they were fixed (``Scenarios.KNOWN_GAPS``,
"gaps" switches them as a group): a rolling (overwrite-oldest) terminal, a SIGKILLed `fpgw devices clear`
leaving a terminal locked, repeated RTC resets giving two real punches the same time. A rolling terminal that
outruns every reader (more punches than it holds while the gateway cannot read it) drops punches nobody could
have read; the simulator reports those (``SimDevice.overwritten_unread``) and they are printed, not counted lost.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import create_engine, text

from gateway.central.tokens import add_token
from gateway.store.outbox import Outbox
from simulators.zk import SimDevice
from tests.support.bkd import BkdPuller
from tests.support.config import OFFICE_CODE, DeviceEntry, config_dict, write_toml
from tests.support.fleet import PunchKey, running_fleet, sim_spec, truth_keys
from tests.support.gateway import stored_keys
from tests.support.proxy import FaultyProxy

# --------------------------------------------------------------------------------------------------
# Scenarios and options
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenarios:
    """Which kinds of chaos run. The last three were gaps of issue 8 (fixed; kept listed as "gaps" so they can be
    run alone)."""

    device_faults: bool = True  #: slow, drop mid-transfer, corrupt chunk, hang, offline, port closed, ...
    kill_gateway: bool = True  #: SIGKILL the office daemon (random moment, mid-download, mid-forward)
    cli_clear: bool = True  #: `fpgw devices clear` beside the daemon
    clear_policy: bool = True  #: a small terminal with polling.clear_when_full_ratio
    office_db_lock: bool = True  #: another connection holds the office SQLite write lock for a while
    central_down: bool = True  #: the central daemon SIGKILLed and restarted later
    central_flap: bool = True  #: the link refuses, answers 502, cuts and stalls responses
    central_db_lock: bool = True  #: another connection holds an EXCLUSIVE lock on the central's punches
    replace: bool = True  #: a terminal swapped for another serial at the same address
    rtc_reset: bool = True  #: a terminal's clock jumps to 2000-01-01 once (battery), then is fixed
    rolling: bool = True  #: issue 8 item 3: a full terminal overwriting its oldest records
    kill_clear: bool = True  #: issue 8 item 4: `fpgw devices clear` SIGKILLed while the keypad is locked
    rtc_reset_repeat: bool = True  #: issue 8 item 8: RTC reset twice, same user at the same reset time

    KNOWN_GAPS = ("rolling", "kill_clear", "rtc_reset_repeat")

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    def with_changes(self, spec: str) -> Scenarios:
        """Apply "+name,-name" (also "all" = every scenario, "gaps" / "-gaps" = issue 8's three gaps)."""
        changes: dict[str, bool] = {}
        for part in (x.strip() for x in spec.split(",")):
            if not part:
                continue
            if part in ("all", "+all"):
                changes.update({n: True for n in self.names()})
                continue
            if part in ("gaps", "+gaps", "-gaps"):
                changes.update({n: not part.startswith("-") for n in self.KNOWN_GAPS})
                continue
            on = not part.startswith("-")
            name = part.lstrip("+-")
            if name not in self.names():
                raise ValueError(f"unknown chaos scenario {name!r} (known: {', '.join(self.names())})")
            changes[name] = on
        return dataclasses.replace(self, **changes)

    def flags(self) -> str:
        """The long run's --enable/--disable options that give these scenarios (differences from the defaults)."""
        default = Scenarios()
        return "".join(f" --{'enable' if getattr(self, n) else 'disable'} {n}" for n in self.names()
                       if getattr(self, n) != getattr(default, n))

    def text(self) -> str:
        return ",".join(("+" if getattr(self, n) else "-") + n for n in self.names())


@dataclass
class ChaosOptions:
    """One run: the seed decides the whole plan; ``duration_s`` of chaos, then the settle phase."""

    seed: int
    duration_s: float = 60.0
    scenarios: Scenarios = field(default_factory=Scenarios)
    #: Records of the big terminal's history (its download is what "kill during a big download" hits).
    big_records: int = 4000
    #: Punches per second over the whole fleet.
    punch_rate: float = 3.0
    #: Where to print progress lines (None: quiet).
    out: Callable[[str], None] | None = print


# --------------------------------------------------------------------------------------------------
# The plan (a pure function of the seed)
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Event:
    """One step of the plan: at ``t`` seconds into the chaos, do ``kind`` with ``args``."""

    t: float
    kind: str
    args: tuple[tuple[str, Any], ...] = ()

    def arg(self, name: str, default: Any = None) -> Any:
        return dict(self.args).get(name, default)

    def __str__(self) -> str:
        return f"{self.t:7.1f}s {self.kind} " + " ".join(f"{k}={v}" for k, v in self.args)


#: Device faults: name -> (value maker, the devices it makes sense on (None = any)).
FAULTS: dict[str, tuple[Callable[[random.Random], Any], tuple[str, ...] | None]] = {
    "slow": (lambda r: round(r.uniform(0.1, 0.8), 2), None),
    "drop_mid_transfer": (lambda r: round(r.uniform(0.2, 0.8), 2), None),
    "corrupt_chunk": (lambda r: r.choice(["checksum", "length"]), None),
    "hang": (lambda r: True, None),
    "offline": (lambda r: True, None),
    "port_closed": (lambda r: True, None),
    "wrong_comm_key": (lambda r: True, None),
    "clock_skew": (lambda r: r.choice([-1, 1]) * r.randrange(90, 7200), None),
    "storage_full": (lambda r: True, None),
    "garbage_timestamps": (lambda r: round(r.uniform(0.1, 0.4), 2), None),
    "udp_loss": (lambda r: round(r.uniform(0.05, 0.3), 2), ("udp",)),
}

PROXY_MODES = ("refuse", "502", "drop_mid_response", "slow", "pass")


def device_ids(sc: Scenarios) -> list[str]:
    """The office's terminals for these scenarios."""
    ids = ["big", "udp", "desk", "swap"]
    if sc.clear_policy:
        ids.append("policy")
    if sc.rolling:
        ids.append("roll")
    return ids


def make_plan(seed: int, duration_s: float, sc: Scenarios) -> list[Event]:
    """The chaos plan of a seed: the same seed and options always give the same plan."""
    rng = random.Random(f"chaos-plan:{seed}")
    devs = device_ids(sc)
    events: list[Event] = []

    def at(lo: float, hi: float) -> float:
        return round(rng.uniform(lo * duration_s, hi * duration_s), 1)

    def add(t: float, kind: str, **args: Any) -> None:
        events.append(Event(t, kind, tuple(sorted(args.items()))))

    scale = duration_s / 60.0
    if sc.device_faults:
        for _ in range(max(1, round(14 * scale))):
            name = rng.choice(sorted(FAULTS))
            make, only = FAULTS[name]
            dev = rng.choice(only or tuple(d for d in devs if d != "roll"))
            t = at(0.02, 0.85)
            add(t, "fault", device=dev, name=name, value=make(rng))
            add(round(t + rng.uniform(2, 12), 1), "fault_off", device=dev, name=name)
    if sc.kill_gateway:
        moments = ["random", "download", "forward"]
        for i in range(max(3, round(6 * scale))):
            add(at(0.05, 0.9), "kill_office", moment=moments[i % 3] if i < 3 else rng.choice(moments),
                down_s=round(rng.uniform(0.2, 3.0), 1))
    if sc.cli_clear or sc.kill_clear:
        times = sorted(at(0.05, 0.9) for _ in range(max(2, round(4 * scale))))
        for i, t in enumerate(times):
            # With kill_clear the last clear is always killed: no later download re-enables the keypad by chance.
            kill = sc.kill_clear and (i == len(times) - 1 or rng.random() < 0.5)
            # --local-only half of the time: with the link flapping the outbox rarely drains, and a clear
            # that is always refused tests nothing.
            add(t, "cli_clear", device="desk", kill=kill, local_only=not kill and rng.random() < 0.5)
    if sc.office_db_lock:
        for _ in range(max(1, round(2 * scale))):
            add(at(0.05, 0.85), "office_lock", seconds=round(rng.uniform(3, 20), 1))
    if sc.central_down:
        for _ in range(max(1, round(2 * scale))):
            add(at(0.05, 0.85), "central_down", seconds=round(rng.uniform(2, 10), 1))
    if sc.central_flap:
        for _ in range(max(1, round(3 * scale))):
            steps = tuple((rng.choice(PROXY_MODES), round(rng.uniform(0.4, 2.5), 1)) for _ in range(rng.randint(3, 7)))
            add(at(0.02, 0.85), "flap", steps=steps)
    if sc.central_db_lock:
        for _ in range(max(1, round(2 * scale))):
            add(at(0.05, 0.85), "central_lock", seconds=round(rng.uniform(2, 10), 1))
    if sc.replace:
        add(at(0.3, 0.7), "replace", device="swap", records=rng.randrange(5, 40))
    if sc.rtc_reset:
        dev = rng.choice(["big", "udp", "swap"] + (["policy"] if sc.clear_policy else []))
        t = at(0.1, 0.7)
        add(t, "fault", device=dev, name="clock_reset", value=True)
        add(round(t + rng.uniform(2, 8), 1), "fault_off", device=dev, name="clock_reset")
    if sc.rtc_reset_repeat:
        # On the UDP terminal: the desk terminal is kill_clear's, whose keypad must stay untouched after the kill.
        add(at(0.1, 0.3), "rtc_repeat", device="udp", step=1)
        add(at(0.4, 0.5), "keypad_clear", device="udp")
        add(at(0.6, 0.8), "rtc_repeat", device="udp", step=2)
    events.sort(key=lambda e: (e.t, e.kind))
    return events


# --------------------------------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def fpgw_argv(config: Path, *args: str) -> list[str]:
    """`fpgw --config <config> <args>` run by this Python (the repository's code)."""
    return [sys.executable, "-m", "gateway.cli", "--config", str(config), *args]


class Daemon:
    """`fpgw run` as a subprocess that the harness SIGKILLs and restarts (each run appends to one log)."""

    def __init__(self, name: str, config: Path, log_path: Path) -> None:
        self.name, self.config, self.log_path = name, config, log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.kills = 0
        #: Exits the harness did not cause (crashes), with the exit code.
        self.crashes: list[int] = []
        self._lock = threading.Lock()

    def start(self) -> None:
        with self._lock:
            if self.proc is not None and self.proc.poll() is None:
                return
            with self.log_path.open("ab") as log:
                log.write(f"\n===== {self.name} start {self.starts + 1} at {datetime.now():%H:%M:%S} =====\n".encode())
                self.proc = subprocess.Popen(fpgw_argv(self.config, "--log-format", "console", "--log-level", "info",
                                                       "run"), stdout=log, stderr=subprocess.STDOUT,
                                             start_new_session=True)
            self.starts += 1

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL (no clean-up of any kind) and reap."""
        with self._lock:
            if self.proc is None or self.proc.poll() is not None:
                return
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(15)
            self.kills += 1
            self.proc = None

    def check(self) -> bool:
        """True if the process died without the harness killing it (recorded as a crash; not restarted here)."""
        with self._lock:
            if self.proc is not None and self.proc.poll() is not None:
                self.crashes.append(int(self.proc.returncode))
                self.proc = None
                return True
        return False

    def terminate(self, timeout_s: float = 30.0) -> int | None:
        """SIGTERM and wait (SIGKILL after ``timeout_s``); the exit code, None if it was not running."""
        with self._lock:
            if self.proc is None:
                return None
            proc, self.proc = self.proc, None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
            return None

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""


def run_cli(config: Path, log_path: Path, *args: str, timeout_s: float = 90.0) -> tuple[int, str]:
    """One `fpgw` command to completion (bounded); (exit code, output). Exit -9 when it had to be killed."""
    try:
        done = subprocess.run(fpgw_argv(config, *args), capture_output=True, text=True, timeout=timeout_s,
                              check=False)
        code, out = done.returncode, done.stdout + done.stderr
    except subprocess.TimeoutExpired as exc:
        code, out = -9, f"timed out after {timeout_s} s: {exc}"
    with log_path.open("a") as log:
        log.write(f"\n$ fpgw {' '.join(args)}  -> {code}\n{out}")
    return code, out


# --------------------------------------------------------------------------------------------------
# Database locks
# --------------------------------------------------------------------------------------------------

class Locks:
    """Write locks held by another connection for a while (each in its own thread; all released on stop)."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []
        self.held: Counter[str] = Counter()
        self.errors: list[str] = []

    def sqlite(self, path: Path, seconds: float) -> None:
        def hold() -> None:
            conn = sqlite3.connect(str(path), timeout=30, isolation_level=None)
            try:
                conn.execute("BEGIN EXCLUSIVE")
                self.held["office"] += 1
                self.stop.wait(seconds)
                conn.execute("ROLLBACK")
            except sqlite3.Error as exc:
                self.errors.append(f"office lock: {exc}")
            finally:
                conn.close()
        self._spawn(hold, "chaos-office-lock")

    def postgres(self, url: str, seconds: float) -> None:
        def hold() -> None:
            engine = create_engine(url)
            try:
                with engine.connect() as conn:
                    conn.execute(text("SET lock_timeout = '20s'"))
                    conn.execute(text("LOCK TABLE punches IN EXCLUSIVE MODE"))
                    self.held["central"] += 1
                    self.stop.wait(seconds)
                    conn.rollback()
            except Exception as exc:
                self.errors.append(f"central lock: {type(exc).__name__}: {str(exc)[:200]}")
            finally:
                engine.dispose()
        self._spawn(hold, "chaos-central-lock")

    def _spawn(self, fn: Callable[[], None], name: str) -> None:
        t = threading.Thread(target=fn, name=name)
        self.threads = [x for x in self.threads if x.is_alive()] + [t]
        t.start()

    def release_all(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(60)


# --------------------------------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------------------------------

@dataclass
class Side:
    """One side compared with the ground truth (the office database, or what BKD pulled)."""

    name: str
    total: int = 0
    lost: Counter[PunchKey] = field(default_factory=Counter)
    duplicated: Counter[PunchKey] = field(default_factory=Counter)
    unexpected: Counter[PunchKey] = field(default_factory=Counter)

    @classmethod
    def compare(cls, name: str, truth: Counter[PunchKey], got: Counter[PunchKey],
                excused: Counter[PunchKey]) -> Side:
        missing = truth - got - excused
        extra = got - truth
        return cls(name, sum(got.values()), missing, Counter({k: n for k, n in extra.items() if k in truth}),
                   Counter({k: n for k, n in extra.items() if k not in truth}))

    def line(self) -> str:
        by_serial = Counter(k[0] for k in self.lost.elements())
        return (f"{self.name}: {self.total} punches, lost {sum(self.lost.values())}"
                + (f" {dict(by_serial)}" if by_serial else "")
                + f", duplicated {sum(self.duplicated.values())}, unexpected {sum(self.unexpected.values())}"
                + (f"; e.g. lost {list(self.lost)[:3]}" if self.lost else "")
                + (f"; e.g. extra {list(self.duplicated + self.unexpected)[:3]}"
                   if self.duplicated or self.unexpected else ""))


@dataclass
class ChaosReport:
    """Counts of one run (``summary()`` prints them); ``ok`` when nothing is lost, duplicated or unexpected
    and no terminal is left disabled."""

    seed: int
    scenarios: Scenarios
    duration_s: float
    plan_size: int = 0
    done: Counter[str] = field(default_factory=Counter)
    office_restarts: int = 0
    central_restarts: int = 0
    crashes: list[str] = field(default_factory=list)
    truth: int = 0
    serials: dict[str, str] = field(default_factory=dict)
    office: Side = field(default_factory=lambda: Side("office database"))
    bkd: Side = field(default_factory=lambda: Side("BKD pull API"))
    #: Punches still on a terminal when it was swapped (not counted as lost; normally 0: it is drained first).
    abandoned: int = 0
    #: Punches the rolling terminal overwrote before any client had asked for its log since they were written
    #: (the simulator's oracle: no reader could have them; not counted as lost, printed).
    overwritten_unread: int = 0
    disabled: list[str] = field(default_factory=list)
    rejected_at_central: int = 0
    outbox_left: int = 0
    notes: list[str] = field(default_factory=list)
    settle_s: float = 0.0
    locks_held: dict[str, int] = field(default_factory=dict)

    @property
    def failures(self) -> list[str]:
        out = []
        for side in (self.office, self.bkd):
            for what in ("lost", "duplicated", "unexpected"):
                n = sum(getattr(side, what).values())
                if n:
                    out.append(f"{side.name}: {n} {what}")
        if self.disabled:
            out.append(f"terminals left disabled: {', '.join(self.disabled)}")
        if self.outbox_left:
            out.append(f"{self.outbox_left} punches never left the office outbox")
        # Daemon exits the harness did not cause are reported (and the daemon restarted, as systemd would) but
        # are not failures by themselves: e.g. `fpgw run` exits when its database stays locked past the busy
        # timeout at start-up. What they cost shows up as lost punches or disabled terminals.
        return out

    @property
    def ok(self) -> bool:
        """Nothing lost, duplicated or unexpected on either side, no terminal disabled, the outbox empty."""
        return not self.failures

    def summary(self) -> str:
        lines = [
            f"chaos seed={self.seed} duration={self.duration_s:g}s scenarios={self.scenarios.text()}",
            f"  replay: python -m tests.support.chaos --seed {self.seed} --seconds {self.duration_s:g}"
            + self.scenarios.flags(),
            f"  plan: {self.plan_size} events; done: {dict(sorted(self.done.items()))}",
            f"  faults injected: {self.done['fault']}, office restarts: {self.office_restarts}, "
            f"central restarts: {self.central_restarts}, crashes: {len(self.crashes)}, database locks held: "
            f"{self.locks_held.get('office', 0)} office / {self.locks_held.get('central', 0)} central",
            f"  ground truth: {self.truth} punches on {len(self.serials)} serials",
            "  " + self.office.line(),
            "  " + self.bkd.line(),
            f"  lost: {sum(self.office.lost.values())} office / {sum(self.bkd.lost.values())} BKD; duplicated: "
            f"{sum(self.office.duplicated.values())} office / {sum(self.bkd.duplicated.values())} BKD; "
            f"terminals left disabled: {len(self.disabled)} {self.disabled or ''}",
            f"  abandoned on the swapped terminal: {self.abandoned}; overwritten unread on the rolling terminal: "
            f"{self.overwritten_unread}; rejected at the central: "
            f"{self.rejected_at_central}; outbox left: {self.outbox_left}; settle took {self.settle_s:.1f}s",
        ]
        lines += [f"  crash: {c}" for c in self.crashes]
        lines += [f"  note: {n}" for n in self.notes]
        lines.append("  RESULT: " + ("OK" if self.ok else "FAILED: " + "; ".join(self.failures)))
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------------

class Chaos:
    """A whole run (use ``run_chaos``)."""

    def __init__(self, opts: ChaosOptions, pg_url: str, work: Path) -> None:
        self.opts = opts
        self.sc = opts.scenarios
        self.pg_url = pg_url
        self.work = work
        self.report = ChaosReport(opts.seed, self.sc, opts.duration_s)
        self.plan = make_plan(opts.seed, opts.duration_s, self.sc)
        self.report.plan_size = len(self.plan)
        self.stop = threading.Event()
        self.quiet: set[str] = set()  # devices nobody punches on (being drained)
        self.devs: dict[str, SimDevice] = {}
        self.locks = Locks()
        self.cli_log = work / "cli.log"
        self.office_db = work / "office.db"
        self._workers: list[threading.Thread] = []
        self._office_op = threading.Lock()
        self.t0 = 0.0

    def say(self, msg: str) -> None:
        if self.opts.out is not None:
            self.opts.out(f"[chaos {time.monotonic() - self.t0:6.1f}s] {msg}" if self.t0 else f"[chaos] {msg}")

    # -- set-up ------------------------------------------------------------------------------------
    def _devices(self, fleet: Any) -> list[DeviceEntry]:
        sc, seed = self.sc, self.opts.seed
        specs: dict[str, dict[str, Any]] = {
            "big": dict(records=self.opts.big_records, users=80),
            "udp": dict(record_layout=16, user_layout=28, records=300),
            "desk": dict(records=200),
            "swap": dict(records=150),
        }
        extra: dict[str, dict[str, Any]] = {}
        if sc.clear_policy:
            specs["policy"] = dict(records=20, records_cap=60)
            extra["policy"] = {"clear_when_full_ratio": 0.5}
        if sc.rolling:
            specs["roll"] = dict(records=250, records_cap=250, overwrite_oldest=True)
        entries = []
        for i, (dev_id, spec) in enumerate(specs.items()):
            dev = fleet.add(sim_spec(f"CH{seed % 10000:04d}-{dev_id.upper()}", seed=seed * 10 + i, **spec))
            self.devs[dev_id] = dev
            entries.append(DeviceEntry(dev_id, dev, "udp" if dev_id == "udp" else "tcp", extra=extra.get(dev_id)))
        return entries

    def _configs(self, entries: list[DeviceEntry]) -> tuple[Path, Path, str]:
        gw_tokens, api_tokens = self.work / "gateways.toml", self.work / "api.toml"
        (self.work / "office.token").write_text(add_token(gw_tokens, "office", [OFFICE_CODE], "gateway"))
        bkd_token = add_token(api_tokens, "bkd", None, "api")
        central = {
            "site": {"office_code": "1801.00", "office_name": "BKD", "timezone": "Asia/Jakarta"},
            "database": {"url": self.pg_url},
            "polling": {"shutdown_deadline_s": 5},
            "http": {"enabled": True, "listen": "127.0.0.1", "port": self.central_port},
            "central": {"enabled": True, "gateway_tokens_file": str(gw_tokens),
                        "api_tokens_file": str(api_tokens)},
        }
        central_cfg = write_toml(central, self.work / "central.toml")
        office = config_dict(f"sqlite:///{self.office_db}", entries, interval_s=5,
                             polling={"timeout_s": 3, "poll_deadline_s": 60, "backoff_max_s": 5,
                                      "shutdown_deadline_s": 5},
                             forward={"url": self.proxy.url, "token_file": str(self.work / "office.token"),
                                      "interval_s": 1, "batch_size": 50, "backoff_initial_s": 0.2,
                                      "backoff_max_s": 2, "timeout_s": 2})
        office["site"]["state_dir"] = str(self.work / "state")
        office_cfg = write_toml(office, self.work / "office.toml")
        return office_cfg, central_cfg, bkd_token

    def _central_ready(self, timeout_s: float = 60.0) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.central.alive:
                return False
            try:
                if httpx.get(f"http://127.0.0.1:{self.central_port}/api/v1/openapi.json", timeout=2).status_code \
                        == 200:
                    return True
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        return False

    # -- the run -----------------------------------------------------------------------------------
    def run(self) -> ChaosReport:
        truth_path = self.work / "truth.jsonl"
        self.say(f"seed={self.opts.seed} duration={self.opts.duration_s:g}s scenarios={self.sc.text()} "
                 f"plan={len(self.plan)} events; work dir {self.work}")
        with ExitStack() as stack:
            fleet = stack.enter_context(running_fleet(truth_path))
            entries = self._devices(fleet)
            self.central_port = _free_port()
            # Responses stalled longer than the forwarder's timeout: the central stored it, the office never hears.
            self.proxy = stack.enter_context(FaultyProxy(self.central_port, slow_s=2.5))
            office_cfg, central_cfg, bkd_token = self._configs(entries)
            self.office_cfg = office_cfg
            self.central = Daemon("central", central_cfg, self.work / "central.log")
            self.office = Daemon("office", office_cfg, self.work / "office.log")
            stack.callback(self.central.terminate, 10)
            stack.callback(self.office.terminate, 10)
            self.central.start()
            if not self._central_ready():
                raise RuntimeError(f"the central daemon did not start:\n{self.central.log_tail()}")
            self.office.start()
            puller = BkdPuller(f"http://127.0.0.1:{self.central_port}", bkd_token)
            puller.start()
            settle_t0 = time.monotonic()
            try:
                stack.callback(self.locks.release_all)
                self.t0 = time.monotonic()
                puncher = threading.Thread(target=self._punch, name="chaos-puncher")
                controller = threading.Thread(target=self._control, name="chaos-controller")
                puncher.start()
                controller.start()
                controller.join(self.opts.duration_s * 3 + 120)
                self.stop.set()
                puncher.join(30)
                settle_t0 = time.monotonic()
                self._settle()
            finally:
                self.stop.set()
                puller.finish()
                for t in self._workers:
                    t.join(120)
            self.report.settle_s = time.monotonic() - settle_t0
            if puller.errors:
                self.report.notes.append(f"BKD puller: {len(puller.errors)} failed requests (central down), retried")
            self._compare(truth_path, Counter(puller.keys))
            self.report.office_restarts = self.office.kills
            self.report.central_restarts = self.central.kills
        return self.report

    # -- punching ----------------------------------------------------------------------------------
    def _punch(self) -> None:
        rng = random.Random(f"chaos-punch:{self.opts.seed}")
        ids = sorted(self.devs)
        weights = [3 if i == "policy" else 1 for i in ids]
        every = 1.0 / self.opts.punch_rate
        while not self.stop.wait(rng.uniform(0.5, 1.5) * every):
            dev_id = rng.choices(ids, weights)[0]
            dev = self.devs[dev_id]
            # People wait at a disabled terminal ("Working..."), and nobody punches on one being swapped.
            if dev_id in self.quiet or not dev.enabled:
                continue
            dev.add_punches(1)

    # -- the controller ----------------------------------------------------------------------------
    def _control(self) -> None:
        for ev in self.plan:
            while not self.stop.is_set():
                left = self.t0 + ev.t - time.monotonic()
                if left <= 0:
                    break
                self.stop.wait(min(left, 0.5))
                self._supervise()
            if self.stop.is_set():
                return
            self._supervise()
            try:
                getattr(self, f"_do_{ev.kind}")(ev)
                self.report.done[ev.kind] += 1
            except Exception as exc:  # the harness must finish and report
                self.report.notes.append(f"event {ev} failed in the harness: {type(exc).__name__}: {exc}")
        end = self.t0 + self.opts.duration_s
        while not self.stop.is_set() and time.monotonic() < end:
            self.stop.wait(0.5)
            self._supervise()

    def _supervise(self) -> None:
        """Restart a daemon that died by itself (as systemd would), recording the crash."""
        for d in (self.office, self.central):
            if d.check():
                self.report.crashes.append(f"{d.name} exited {d.crashes[-1]} (log: {d.log_path})")
                self.say(f"{d.name} exited by itself ({d.crashes[-1]}); restarting. Log tail:\n{d.log_tail(1500)}")
                d.start()

    def _spawn(self, fn: Callable[[], None], name: str) -> None:
        t = threading.Thread(target=fn, name=name)
        self._workers = [x for x in self._workers if x.is_alive()] + [t]
        t.start()

    def _do_fault(self, ev: Event) -> None:
        dev = self.devs[ev.arg("device")]
        if ev.arg("device") in self.quiet:
            return
        dev.set_fault(ev.arg("name"), ev.arg("value"))

    def _do_fault_off(self, ev: Event) -> None:
        self.devs[ev.arg("device")].clear_fault(ev.arg("name"))

    def _wait_for(self, pred: Callable[[], bool], timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not self.stop.is_set():
            if pred():
                return True
            time.sleep(0.01)
        return False

    def _do_kill_office(self, ev: Event) -> None:
        moment = ev.arg("moment")
        with self._office_op:
            if not self.office.alive:
                self.office.start()
                time.sleep(2)
            hit = True
            if moment == "download":
                # The driver locks the keypad only while it reads the log: a disabled terminal = a download.
                # (A terminal already disabled, e.g. by a killed clear, does not count.) Slow replies from the
                # big terminal make its download last long enough to be caught in the middle.
                was_off = {k for k, d in self.devs.items() if not d.enabled}
                big = self.devs["big"]
                slowed = "slow" not in big.faults
                if slowed:
                    big.set_fault("slow", 0.4)
                hit = self._wait_for(lambda: any(not d.enabled for k, d in self.devs.items()
                                                 if k not in self.quiet and k not in was_off), 15)
            elif moment == "forward":
                # Stall responses: a request the central already handled, whose answer has not arrived.
                before = self.proxy.hits["stalled"]
                mode = self.proxy.mode
                self.proxy.mode = "slow"
                hit = self._wait_for(lambda: self.proxy.hits["stalled"] > before, 12)
            self.office.kill()
            if moment == "download" and slowed:
                big.clear_fault("slow")
            if moment == "forward":
                self.proxy.mode = mode if mode != "slow" else "pass"
            self.report.done[f"kill_office:{moment}" + ("" if hit else ":missed")] += 1
            self.say(f"office SIGKILLed ({moment}{'' if hit else ', moment not seen'})")
            self.stop.wait(ev.arg("down_s"))
            self.office.start()

    def _do_cli_clear(self, ev: Event) -> None:
        dev_id = ev.arg("device")
        if ev.arg("kill"):
            dev = self.devs[dev_id]
            # Everything on the terminal stored first: then no later poll sees a changed count and downloads
            # (which would re-enable the keypad by chance). The daemon is stopped for the moment, so the
            # keypad lock seen here is the clear's own; slow replies keep it locked long enough to kill it.
            self._drain_device(dev_id)
            with self._office_op:
                self.office.terminate(15)
                dev.set_fault("slow", 0.6)
                proc = subprocess.Popen(fpgw_argv(self.office_cfg, "devices", "clear", dev_id, "--yes"),
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                self._wait_for(lambda: not dev.enabled or proc.poll() is not None, 30)
                locked = not dev.enabled
                if proc.poll() is None:
                    proc.kill()
                proc.wait(15)
                dev.clear_fault("slow")
                self.quiet.discard(dev_id)
                self.office.start()
            self.report.done["cli_clear:killed_locked" if locked and proc.returncode == -9
                             else "cli_clear:finished"] += 1
            self.say(f"`fpgw devices clear {dev_id}` SIGKILLed (keypad locked: {locked})")
            return

        def clear() -> None:
            extra = ["--local-only"] if ev.arg("local_only") else []
            code, _ = run_cli(self.office_cfg, self.cli_log, "devices", "clear", dev_id, "--yes", *extra,
                              timeout_s=120)
            self.report.done["cli_clear:cleared" if code == 0 else "cli_clear:refused"] += 1
        self._spawn(clear, "chaos-clear")

    def _do_office_lock(self, ev: Event) -> None:
        self.locks.sqlite(self.office_db, ev.arg("seconds"))

    def _do_central_lock(self, ev: Event) -> None:
        self.locks.postgres(self.pg_url, ev.arg("seconds"))

    def _do_central_down(self, ev: Event) -> None:
        self.central.kill()
        self.say(f"central SIGKILLed for {ev.arg('seconds')} s")

        def back() -> None:
            self.stop.wait(ev.arg("seconds"))
            self.central.start()
        self._spawn(back, "chaos-central-restart")

    def _do_flap(self, ev: Event) -> None:
        def flap() -> None:
            for mode, seconds in ev.arg("steps"):
                if self.stop.is_set():
                    break
                self.proxy.set_mode(mode)
                self.stop.wait(seconds)
            self.proxy.set_mode("pass")
        self._spawn(flap, "chaos-flap")

    def _drain_device(self, dev_id: str, timeout_s: float = 90.0) -> Counter[PunchKey]:
        """Stop punching on a terminal, clear its faults and get everything it holds stored (the technician's
        check before touching it); returns what is still not stored when the time is up (the office database
        may be write-locked meanwhile: two 20 s locks back to back fit in the time)."""
        dev = self.devs[dev_id]
        self.quiet.add(dev_id)
        for name in list(dev.faults):
            dev.clear_fault(name)
        deadline = time.monotonic() + timeout_s
        while True:
            held = Counter((dev.serial, p["user_id"], p["time"], p["state"], p["verify"]) for p in dev.punches())
            left = held - stored_keys(f"sqlite:///{self.office_db}", [dev.serial])
            if not left or time.monotonic() > deadline:
                return left
            run_cli(self.office_cfg, self.cli_log, "poll", dev_id, timeout_s=30)

    def _do_replace(self, ev: Event) -> None:
        dev_id = ev.arg("device")
        left = self._drain_device(dev_id)
        self.report.abandoned += sum(left.values())
        self._abandoned = getattr(self, "_abandoned", Counter()) + left
        old = self.devs[dev_id].serial
        self.devs[dev_id].replace(new_serial=f"{old}-NEW", records=ev.arg("records"))
        self.quiet.discard(dev_id)
        self.say(f"terminal {dev_id} swapped: {old} -> {old}-NEW ({sum(left.values())} punches not stored first)")

    def _do_rtc_repeat(self, ev: Event) -> None:
        dev = self.devs[ev.arg("device")]
        dev.set_fault("clock_reset", True)
        # Two people punching right after the reset: both times exist again after the next reset.
        user = dev.users()[0].user_id
        dev.add_punches(2, at=datetime(2000, 1, 1, 0, 0, 5), user_id=user)
        dev.clear_fault("clock_reset")

    def _do_keypad_clear(self, ev: Event) -> None:
        dev_id = ev.arg("device")
        left = self._drain_device(dev_id)
        if left:
            self.report.notes.append(f"keypad clear of {dev_id}: {sum(left.values())} punches not stored first")
            self._abandoned = getattr(self, "_abandoned", Counter()) + left
        self.devs[dev_id].clear_log()
        self.quiet.discard(dev_id)

    # -- settle and compare ------------------------------------------------------------------------
    def _settle(self) -> None:
        self.say("chaos over: clearing every fault, releasing locks, final polls and forwards")
        for t in self._workers:
            t.join(150)
        self.locks.release_all()
        self.report.locks_held = dict(self.locks.held)
        if self.locks.errors:
            self.report.notes += self.locks.errors
        self.proxy.set_mode("pass")
        for dev in self.devs.values():
            for name in list(dev.faults):
                dev.clear_fault(name)
        self._supervise()
        if not self.central.alive:
            self.central.start()
        if not self._central_ready():
            self.report.notes.append("central did not come back")
        self.office.terminate(30)
        engine = create_engine(f"sqlite:///{self.office_db}")
        try:
            outbox = Outbox(engine, OFFICE_CODE)
            # Polls, then forwards, until a round of polls finds nothing new and the outbox is empty: a
            # terminal full enough for clear_when_full_ratio is read (and cleared) only once its punches
            # were forwarded, so forwarding can give the next poll something to do.
            for _round in range(4):
                settled = self._final_polls()
                self._final_forwards(outbox)
                if settled:
                    break
            stats = outbox.stats()
            self.report.outbox_left = stats.depth
            self.report.rejected_at_central = stats.rejected
        finally:
            engine.dispose()
        self.report.disabled = [f"{k} ({d.serial})" for k, d in self.devs.items() if not d.enabled]

    def _final_polls(self) -> bool:
        """`fpgw poll --all` until every terminal answers and nothing new comes in; True if the first round
        already found nothing new."""
        for attempt in range(6):
            code, out = run_cli(self.office_cfg, self.cli_log, "poll", "--all", timeout_s=180)
            lines = [ln for ln in out.splitlines() if ln.split(":")[0] in self.devs]
            if code == 0 and len(lines) == len(self.devs) and all(" new=0 " in ln for ln in lines):
                return attempt == 0
        self.report.notes.append(f"final polls never settled: {out.strip()[-600:]}")
        return False

    def _final_forwards(self, outbox: Outbox) -> None:
        """`fpgw forward now` until the office outbox is empty (bounded)."""
        deadline = time.monotonic() + 120
        while outbox.stats().depth and time.monotonic() < deadline:
            run_cli(self.office_cfg, self.cli_log, "forward", "now", timeout_s=60)
            time.sleep(0.3)

    def _compare(self, truth_path: Path, pulled: Counter[PunchKey]) -> None:
        truth = truth_keys(truth_path)
        excused: Counter[PunchKey] = getattr(self, "_abandoned", Counter())
        # A full rolling terminal that received more punches than it holds while nobody could read it (gateway
        # killed, database locked, device faults) overwrote them unread: physics, not the gateway.
        unread = Counter((r["serial"], r["user_id"], r["time"], int(r["state"]), int(r["verify"]))
                         for dev in self.devs.values() for r in dev.overwritten_unread())
        self.report.overwritten_unread = sum(unread.values())
        excused = excused + unread
        self.report.truth = sum(truth.values())
        self.report.serials = dict(Counter(k[0] for k in truth.elements()))
        office = stored_keys(f"sqlite:///{self.office_db}")
        self.report.office = Side.compare("office database", truth, office, excused)
        self.report.bkd = Side.compare("BKD pull API", truth, pulled, excused)


def run_chaos(opts: ChaosOptions, pg_url: str, work: Path) -> ChaosReport:
    """One chaos run in ``work`` against a fresh PostgreSQL database ``pg_url`` for the central."""
    work.mkdir(parents=True, exist_ok=True)
    return Chaos(opts, pg_url, work).run()


# --------------------------------------------------------------------------------------------------
# The long form: python -m tests.support.chaos --minutes 30
# --------------------------------------------------------------------------------------------------

@contextmanager
def _pg_database() -> Iterator[str]:
    from tests.support import pg

    url, stop = pg.start_server()
    try:
        with pg.fresh_database(url, prefix="fpgw_chaos") as db:
            yield db
    finally:
        stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.support.chaos",
                                     description="Chaos/soak run of the office gateway and the central "
                                                 "(see docs/development.md).")
    parser.add_argument("--minutes", type=float, default=None, help="minutes of chaos (default 30)")
    parser.add_argument("--seconds", type=float, default=None, help="seconds of chaos (instead of --minutes)")
    parser.add_argument("--seed", type=int, default=None, help="seed of the plan (default: random, printed)")
    parser.add_argument("--enable", action="append", default=[], metavar="SCENARIO",
                        help="switch a scenario on ('all': every one; 'gaps': issue 8's three, on by default)")
    parser.add_argument("--disable", action="append", default=[], metavar="SCENARIO", help="switch one off")
    parser.add_argument("--big-records", type=int, default=20000, help="history of the big terminal")
    parser.add_argument("--punch-rate", type=float, default=3.0, help="punches per second over the fleet")
    parser.add_argument("--work-dir", type=Path, default=None, help="keep logs and databases here")
    parser.add_argument("--plan", action="store_true", help="print the plan of the seed and exit")
    args = parser.parse_args(argv)
    seconds = args.seconds if args.seconds is not None else 60 * (args.minutes if args.minutes is not None else 30)
    seed = args.seed if args.seed is not None else random.randrange(1, 1 << 31)
    sc = Scenarios().with_changes(",".join([f"+{x}" for x in args.enable] + [f"-{x}" for x in args.disable]))
    if args.plan:
        for ev in make_plan(seed, seconds, sc):
            print(ev)
        return 0
    opts = ChaosOptions(seed=seed, duration_s=seconds, scenarios=sc, big_records=args.big_records,
                        punch_rate=args.punch_rate, out=lambda line: print(line, flush=True))
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="fpgw-chaos-"))
    with _pg_database() as db:
        report = run_chaos(opts, db, work)
    print(report.summary())
    print(f"logs and databases: {work}")
    (work / "report.json").write_text(json.dumps({"seed": seed, "ok": report.ok, "failures": report.failures},
                                                 indent=2))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())

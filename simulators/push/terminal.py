"""A simulated ADMS/PUSH terminal: the HTTP CLIENT that calls a gateway's /iclock endpoints.

    PushTerminal thread: handshake (GET cdata?options=all) -> loop every Delay s:
        getrequest (INFO=...) -> run commands -> POST devicecmd results
        unacknowledged punches -> POST cdata?table=ATTLOG in batches -> advance by the n of "OK: n"
        any failure (refused, bad reply, connection error) -> wait ErrorDelay, send the same batch again

Its own codec (stdlib http.client), written from ../shared/reference/other-protocols.md §3, so it checks
the receiver instead of sharing its mistakes: imports nothing from drivers/ or gateway/. Quirks of real
firmware can be switched on per terminal (``.aspx`` paths, CRLF bodies, a form-encoded body, PUSH 3.x
registration). Every punch goes to the ground-truth JSONL file (simulators.zk.truth) when it is made.
"""

from __future__ import annotations

import http.client
import logging
import random
import re
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import quote, urlsplit
from zoneinfo import ZoneInfo

from simulators.zk.truth import TruthWriter

log = logging.getLogger(__name__)

_OK_N = re.compile(r"^OK:\s*(\d+)\s*$")
_QUERY_RANGE = re.compile(r"StartTime=(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)\tEndTime=(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)")


@dataclass
class PushSpec:
    """One simulated push terminal (a fleet file's ``[[devices]]`` entry with ``kind = "push"``)."""

    serial: str
    #: Base URL of the gateway's push receiver, e.g. http://127.0.0.1:8081
    server: str = "http://127.0.0.1:8081"
    timezone: str = "Asia/Jakarta"
    users: int = 20
    #: Punches already in the log at start (uploaded after the handshake).
    records: int = 0
    punches_per_minute: float = 0.0
    seed: int = 1
    #: Firmware's push protocol version: 2.x answers the option block; 3.x registers first (/iclock/registry).
    pushver: str = "2.4.1"
    firmware: str = "Ver 2.0.12-20150625"
    #: Records per ATTLOG upload at most.
    batch_size: int = 100
    #: Quirks of some firmware: ".aspx" paths, CRLF line ends, a form-encoded body.
    aspx: bool = False
    crlf: bool = False
    form_encoded: bool = False
    #: pushcommkey sent at the handshake ("" = none).
    push_key: str = ""
    #: Upper bound of any wait the server asks for (Delay, ErrorDelay), so tests and demos stay quick.
    max_wait_s: float = 600.0
    #: Seconds added to the terminal's clock (negative: behind).
    clock_skew_s: float = 0.0
    #: HTTP timeout of one request.
    timeout_s: float = 10.0


@dataclass
class _Record:
    user_id: str
    time: str
    state: int
    verify: int


@dataclass
class PushStats:
    """What a terminal did (for tests and the fleet listing)."""

    handshakes: int = 0
    uploads: int = 0
    failed_calls: int = 0
    acknowledged: int = 0
    commands: int = 0
    last_reply: str = ""
    options: dict[str, str] = field(default_factory=dict)


class PushTerminal:
    """One simulated push terminal running in its own thread (start/stop)."""

    def __init__(self, spec: PushSpec, truth: TruthWriter | None = None) -> None:
        self.spec = spec
        self.truth = truth
        self.stats = PushStats()
        self._rng = random.Random(spec.seed)
        self._tz = ZoneInfo(spec.timezone)
        self._lock = threading.Lock()
        self._log: list[_Record] = []
        #: Index of the first record not acknowledged by the server.
        self._acked = 0
        #: Records asked for again by DATA QUERY ATTLOG (uploaded before new ones).
        self._requery: list[_Record] = []
        self._results: list[str] = []
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._delay_s = 10.0
        self._error_delay_s = 30.0
        self._need_handshake = True
        url = urlsplit(spec.server)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"server: expected http://host:port, got {spec.server!r}")
        self._scheme, self._host = url.scheme, url.hostname
        self._port = url.port or (443 if url.scheme == "https" else 80)
        self._prefix = url.path.rstrip("/")
        if spec.records:
            start = self.now() - timedelta(minutes=spec.records)
            self._add([(start + timedelta(minutes=i)) for i in range(spec.records)])

    # -- the log ---------------------------------------------------------------------------------
    def now(self) -> datetime:
        """The terminal's local wall clock (naive), skew included."""
        return (datetime.now(self._tz) + timedelta(seconds=self.spec.clock_skew_s)).replace(tzinfo=None,
                                                                                            microsecond=0)

    def _add(self, times: list[datetime], user_id: str | None = None) -> list[dict[str, Any]]:
        rows = []
        with self._lock:
            for t in times:
                rec = _Record(user_id or str(self._rng.randint(1, max(self.spec.users, 1))),
                              t.strftime("%Y-%m-%d %H:%M:%S"), self._rng.choice((0, 1)), self._rng.choice((1, 15)))
                self._log.append(rec)
                rows.append({"serial": self.spec.serial, "user_id": rec.user_id, "time": rec.time,
                             "state": rec.state, "verify": rec.verify})
        if self.truth is not None and rows:
            self.truth.write(rows)
        return rows

    def punch(self, n: int = 1, *, at: str | None = None, user_id: str | None = None) -> list[dict[str, Any]]:
        """Record n punches now (or at local time ``at``) and upload them at once (Realtime=1)."""
        when = datetime.strptime(at, "%Y-%m-%d %H:%M:%S") if at else self.now()
        rows = self._add([when] * n, user_id)
        self._wake.set()
        return rows

    @property
    def pending(self) -> int:
        """Records not acknowledged by the server yet."""
        with self._lock:
            return len(self._log) - self._acked + len(self._requery)

    @property
    def record_count(self) -> int:
        """Records in the terminal's log."""
        with self._lock:
            return len(self._log)

    # -- thread ----------------------------------------------------------------------------------
    def start(self) -> None:
        """Start calling the server."""
        self._thread = threading.Thread(target=self._run, name=f"push-{self.spec.serial}", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop calling (an upload in flight finishes or times out)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        self._thread = None

    def _wait(self, seconds: float) -> None:
        self._wake.wait(min(seconds, self.spec.max_wait_s))
        self._wake.clear()

    def _run(self) -> None:
        next_punch = time.monotonic()
        while not self._stop.is_set():
            try:
                if self._need_handshake:
                    self._handshake()
                # Uploads first (real firmware pushes punches on its own schedule, not after command polls).
                while self._upload() and not self._stop.is_set():
                    pass
                self._getrequest()
            except _CallFailed as exc:
                self.stats.failed_calls += 1
                log.debug("%s: call failed (%s); retrying after ErrorDelay", self.spec.serial, exc)
                self._wait(self._error_delay_s)
                continue
            if self.spec.punches_per_minute > 0 and time.monotonic() >= next_punch:
                self.punch(1)
                next_punch = time.monotonic() + self._rng.expovariate(self.spec.punches_per_minute / 60.0)
            self._wait(self._delay_s)

    # -- HTTP ------------------------------------------------------------------------------------
    def _path(self, name: str, query: str) -> str:
        suffix = ".aspx" if self.spec.aspx else ""
        return f"{self._prefix}/iclock/{name}{suffix}?SN={quote(self.spec.serial)}{query}"

    def _call(self, method: str, name: str, query: str = "", body: str | None = None) -> tuple[str, dict[str, str]]:
        conn_cls = http.client.HTTPSConnection if self._scheme == "https" else http.client.HTTPConnection
        conn = conn_cls(self._host, self._port, timeout=self.spec.timeout_s)
        headers = {"User-Agent": "iClock Proxy/1.09", "Connection": "close", "Accept": "*/*"}
        data = None
        if body is not None:
            data = body.encode("utf-8")
            headers["Content-Type"] = "application/x-www-form-urlencoded" if self.spec.form_encoded else "text/plain"
        try:
            conn.request(method, self._path(name, query), body=data, headers=headers)
            resp = conn.getresponse()
            text = resp.read(1 << 20).decode("utf-8", errors="replace")
            got = {k.lower(): v for k, v in resp.getheaders()}
        except (OSError, http.client.HTTPException) as exc:
            raise _CallFailed(f"{name}: {exc}") from None
        finally:
            conn.close()
        self.stats.last_reply = text[:200]
        if resp.status != 200:
            raise _CallFailed(f"{name}: HTTP {resp.status} {text[:80]!r}")
        return text, got

    def _handshake(self) -> None:
        if self.spec.pushver.startswith("3"):
            text, _ = self._call("POST", "registry", "", f"DeviceType=acc,~DeviceName=SIM,FirmVer={self.spec.firmware}")
            if "RegistryCode=" not in text:
                raise _CallFailed(f"registry: unexpected reply {text[:80]!r}")
        key = f"&pushcommkey={quote(self.spec.push_key)}" if self.spec.push_key else ""
        text, headers = self._call("GET", "cdata", f"&options=all&pushver={quote(self.spec.pushver)}&language=73{key}")
        lines = [line.strip("\r") for line in text.split("\n") if line.strip()]
        if not lines or not lines[0].startswith("GET OPTION FROM:"):
            raise _CallFailed(f"handshake: no option block ({text[:80]!r})")
        options = dict(line.split("=", 1) for line in lines[1:] if "=" in line)
        if "date" not in headers:
            raise _CallFailed("handshake: no Date header (the terminal sets its clock from it)")
        self.stats.options = options
        self._delay_s = _seconds(options.get("Delay"), 10.0)
        self._error_delay_s = _seconds(options.get("ErrorDelay"), 30.0)
        self.stats.handshakes += 1
        self._need_handshake = False

    def _info(self) -> str:
        with self._lock:
            records = len(self._log)
            users = len({r.user_id for r in self._log}) or self.spec.users
        return quote(f"{self.spec.firmware},{users},{users * 2},{records},127.0.0.1,10,7,15,0,111")

    def _getrequest(self) -> None:
        text, _ = self._call("GET", "getrequest", f"&INFO={self._info()}")
        for line in text.split("\n"):
            line = line.strip("\r")
            if line.startswith("C:"):
                _, cid, command = line.split(":", 2)
                self._results.append(self._execute(cid, command))
        if self._results:
            body = "\n".join(self._results) + "\n"
            self._call("POST", "devicecmd", "", body)
            self._results.clear()

    def _execute(self, cid: str, command: str) -> str:
        self.stats.commands += 1
        word = command.split(" ", 1)[0]
        code = 0
        if command in ("REBOOT", "CHECK"):
            self._need_handshake = True
        elif command == "CLEAR LOG":
            with self._lock:
                self._log, self._acked, self._requery = [], 0, []
            word = "CLEAR_LOG"
        elif command.startswith("DATA QUERY ATTLOG"):
            match = _QUERY_RANGE.search(command)
            if match is None:
                code = -1  # a real terminal refused the bare form (s0x90/zkteco-adms)
            else:
                with self._lock:
                    self._requery += [r for r in self._log if match.group(1) <= r.time <= match.group(2)]
            word = "DATA"
        elif command == "INFO":
            return f"ID={cid}\nReturn=0\nCMD=INFO\n~SerialNumber={self.spec.serial}\nFWVersion={self.spec.firmware}"
        else:
            code = -1002
        return f"ID={cid}&Return={code}&CMD={word}"

    def _upload(self) -> bool:
        """Send one batch; True when something was acknowledged (more may wait)."""
        with self._lock:
            requery = bool(self._requery)
            batch = self._requery[:self.spec.batch_size] if requery else \
                self._log[self._acked:self._acked + self.spec.batch_size]
        if not batch:
            return False
        end = "\r\n" if self.spec.crlf else "\n"
        body = "".join(f"{r.user_id}\t{r.time}\t{r.state}\t{r.verify}\t0\t0\t0{end}" for r in batch)
        if self.spec.form_encoded:
            body = quote(body)
        text, _ = self._call("POST", "cdata", "&table=ATTLOG&Stamp=9999", body)
        text = text.strip()
        match = _OK_N.match(text)
        if match is None and text != "OK":
            raise _CallFailed(f"ATTLOG: unexpected reply {text[:80]!r}")
        n = len(batch) if match is None else min(int(match.group(1)), len(batch))
        self.stats.uploads += 1
        self.stats.acknowledged += n
        with self._lock:
            if requery:
                self._requery = self._requery[n:]
            else:
                self._acked += n
        return n > 0

    def describe(self) -> dict[str, Any]:
        """A JSON-able summary (fleet listing, tests)."""
        return {"serial": self.spec.serial, "kind": "push", "server": self.spec.server, "records": self.record_count,
                "pending": self.pending, "handshakes": self.stats.handshakes, "uploads": self.stats.uploads,
                "failed_calls": self.stats.failed_calls, "commands": self.stats.commands}


class _CallFailed(Exception):
    """A call to the server failed (connection, status, or a reply the terminal does not accept)."""


def _seconds(text: str | None, default: float) -> float:
    try:
        value = float(text) if text is not None else default
    except ValueError:
        return default
    return value if value > 0 else default

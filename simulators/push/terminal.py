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

import base64
import binascii
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

from simulators.zk.templates import fits_version, make_template
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
    #: Users enrolled at start with this many fingerprint templates each (real-shaped blobs of fp_version);
    #: 0 = no enrolment data (the users then only punch).
    templates_per_user: int = 0
    #: Fingerprint algorithm version (INFO fpAlg); DATA UPDATE FINGERTMP refuses blobs of another one (-11).
    fp_version: int = 10
    #: Newer firmware: templates go up as ``table=BIODATA`` lines instead of OPERLOG ``FP`` lines.
    biodata: bool = False
    #: Upload the enrolled users and templates after the first handshake (as the enrolments happened).
    upload_enrolments: bool = True
    user_capacity: int = 5000
    template_capacity: int = 10000
    #: Enrolment lines per OPERLOG / BIODATA upload at most.
    enrol_batch: int = 200


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
        #: PIN -> (name, privilege, password, card, group); (PIN, finger) -> (valid, template bytes).
        self.users: dict[str, tuple[str, int, str, int, str]] = {}
        self.fingers: dict[tuple[str, int], tuple[int, bytes]] = {}
        self._fp_version = spec.fp_version
        #: Enrolment lines waiting for upload: (table, line).
        self._enrol_out: list[tuple[str, str]] = []
        if spec.templates_per_user:
            blobs = random.Random(spec.seed * 7919 + 29)
            for i in range(1, spec.users + 1):
                pin = str(i)
                self.users[pin] = (f"User {i}", 0, "", 0, "1")
                for finger in range(spec.templates_per_user):
                    self.fingers[(pin, finger)] = (1, make_template(blobs, spec.fp_version))
            if spec.upload_enrolments:
                self._queue_enrolments(None, users=True, fingers=True)
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
                while self._upload_enrolments() and not self._stop.is_set():
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
            users = len(self.users) or len({r.user_id for r in self._log}) or self.spec.users
            fps = len(self.fingers) if self.users else users * 2
        return quote(f"{self.spec.firmware},{users},{fps},{records},127.0.0.1,{self._fp_version},7,15,0,111")

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
        elif command.startswith(("DATA UPDATE USERINFO", "DATA UPDATE FINGERTMP", "DATA UPDATE BIODATA",
                                 "DATA DELETE USERINFO", "DATA QUERY USERINFO", "DATA QUERY FINGERTMP",
                                 "DATA QUERY BIODATA")):
            code = self._enrolment_command(command)
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

    # -- enrolments ------------------------------------------------------------------------------
    def _user_line(self, pin: str) -> str:
        name, pri, passwd, card, grp = self.users[pin]
        return f"USER PIN={pin}\tName={name}\tPri={pri}\tPasswd={passwd}\tCard={card or ''}\tGrp={grp}\tTZ=0\tVerify=0"

    def _finger_line(self, pin: str, finger: int) -> tuple[str, str]:
        valid, data = self.fingers[(pin, finger)]
        tmp = base64.b64encode(data).decode("ascii")
        if self.spec.biodata:
            return "BIODATA", (f"BIODATA Pin={pin}\tNo={finger}\tIndex=0\tValid={valid}\tDuress=0\tType=1\t"
                               f"MajorVer={self._fp_version}\tMinorVer=0\tFormat=0\tTmp={tmp}")
        return "OPERLOG", f"FP PIN={pin}\tFID={finger}\tSize={len(data)}\tValid={valid}\tTMP={tmp}"

    def _queue_enrolments(self, pin: str | None, *, users: bool, fingers: bool) -> None:
        """Queue USER / FP (or BIODATA) lines of one user or all for upload. Called with or without the lock."""
        pins = sorted(self.users) if pin is None else [pin] if pin in self.users else []
        for p in pins:
            if users:
                self._enrol_out.append(("OPERLOG", self._user_line(p)))
            if fingers:
                self._enrol_out += [self._finger_line(p, f) for (q, f) in sorted(self.fingers) if q == p]

    def _enrolment_command(self, command: str) -> int:
        """DATA UPDATE / DELETE / QUERY of users and templates (vendor doc codes: -10 no such user, -9 size,
        -11 bad template, -1001 capacity). A query's lines are uploaded before its result is reported."""
        head, _, rest = command.partition("\t")
        words = head.split(" ")
        first = " ".join(words[3:])
        fields = {k.strip().lower(): v for k, sep, v in (f.partition("=") for f in [first, *rest.split("\t")]) if sep}
        pin = fields.get("pin", "")
        what = " ".join(words[:3])
        with self._lock:
            if what == "DATA UPDATE USERINFO":
                if not pin:
                    return -1
                if pin not in self.users and len(self.users) >= self.spec.user_capacity:
                    return -1001
                pri = fields.get("pri", fields.get("privilege", "0"))
                card = fields.get("card", "")
                self.users[pin] = (fields.get("name", ""), int(pri) if pri.isdigit() else 0,
                                   fields.get("passwd", fields.get("password", "")),
                                   int(card) if card.isdigit() else 0, fields.get("grp", ""))
                return 0
            if what in ("DATA UPDATE FINGERTMP", "DATA UPDATE BIODATA"):
                finger = fields.get("fid", fields.get("no", ""))
                if pin not in self.users:
                    return -10
                try:
                    data = base64.b64decode(fields.get("tmp", ""), validate=True)
                except (binascii.Error, ValueError):
                    return -11
                size = fields.get("size", "")
                if not finger.isdigit() or int(finger) > 9 or not data:
                    return -1
                if size.isdigit() and int(size) != len(data):
                    return -9
                if not fits_version(data, self._fp_version):
                    return -11
                if (pin, int(finger)) not in self.fingers and len(self.fingers) >= self.spec.template_capacity:
                    return -1001
                valid = fields.get("valid", "1")
                self.fingers[(pin, int(finger))] = (int(valid) if valid.isdigit() else 1, data)
                return 0
            if what == "DATA DELETE USERINFO":
                self.users.pop(pin, None)
                for key in [k for k in self.fingers if k[0] == pin]:
                    del self.fingers[key]
                return 0
            self._queue_enrolments(pin or None, users=what == "DATA QUERY USERINFO",
                                   fingers=what != "DATA QUERY USERINFO")
        while self._upload_enrolments():
            pass
        return 0

    def _upload_enrolments(self) -> bool:
        """Send one batch of queued enrolment lines (one table per POST); True when something was acknowledged."""
        with self._lock:
            if not self._enrol_out:
                return False
            table = self._enrol_out[0][0]
            batch: list[str] = []
            for t, line in self._enrol_out:
                if t != table or len(batch) >= self.spec.enrol_batch:
                    break
                batch.append(line)
        end = "\r\n" if self.spec.crlf else "\n"
        text, _ = self._call("POST", "cdata", f"&table={table}&Stamp=9999", "".join(line + end for line in batch))
        match = _OK_N.match(text.strip())
        if match is None and text.strip() != "OK":
            raise _CallFailed(f"{table}: unexpected reply {text[:80]!r}")
        n = len(batch) if match is None else min(int(match.group(1)), len(batch))
        with self._lock:
            del self._enrol_out[:n]
        return n > 0

    def enrol(self, pin: str, name: str, fingers: int = 2) -> None:
        """Enrol a user at the keypad: new templates, uploaded at once (TransFlag EnrollUser / EnrollFP)."""
        rng = random.Random(f"{self.spec.serial}/{pin}")
        with self._lock:
            self.users[pin] = (name, 0, "", 0, "1")
            for finger in range(fingers):
                self.fingers[(pin, finger)] = (1, make_template(rng, self._fp_version))
            self._queue_enrolments(pin, users=True, fingers=True)
        self._wake.set()

    def enrolments(self) -> tuple[dict[str, tuple[str, int, int, str]], dict[tuple[str, int], bytes]]:
        """What the terminal holds: users (name, privilege, card, password) and templates by (PIN, finger)."""
        with self._lock:
            return ({pin: (u[0], u[1], u[3], u[2]) for pin, u in self.users.items()},
                    {k: data for k, (_, data) in self.fingers.items()})

    def factory_reset(self) -> None:
        """Wipe users, templates and the log."""
        with self._lock:
            self.users.clear()
            self.fingers.clear()
            self._enrol_out.clear()
            self._log, self._acked, self._requery = [], 0, []

    def replace_blank(self, fp_version: int | None = None) -> None:
        """A new, empty unit in its place (optionally of another fingerprint algorithm version)."""
        self.factory_reset()
        if fp_version is not None:
            self._fp_version = fp_version

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

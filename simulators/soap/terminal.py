"""A simulated terminal's SOAP web service: ``POST /iWsService`` on its own address/port, answered like the captures.

    client --TCP--> SoapTerminal (socketserver thread per connection) -> read the request leniently
        -> codec.parse_request -> the terminal's log / users / clock -> codec answer -> HTTP/1.0 head -> body
        -> close (no Content-Length unless asked: the body ends when the connection does)
Quirks of the fact sheet (../shared/reference/other-protocols.md §1) can be switched per terminal: a
Content-Length with bytes after it, a header line without a colon, no <WorkCode>, PIN vs PIN2, slow answers,
rows that are no punch. Every punch goes to the ground-truth JSONL (simulators.zk.truth) when it is made; rows
that are no punch do not (they are what the gateway must quarantine). Imports nothing from drivers/ or gateway/.
"""

from __future__ import annotations

import base64
import logging
import random
import re
import socket
import socketserver
import threading
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from simulators.soap import codec
from simulators.zk.templates import fits_version, make_template
from simulators.zk.truth import TruthWriter

log = logging.getLogger(__name__)

REQUEST_MAX = 1024 * 1024
_CONTENT_LENGTH = re.compile(rb"^content-length\s*:\s*(\d{1,9})\s*$", re.IGNORECASE | re.MULTILINE)
#: Rows a firmware might hold that are no punch (a corrupt flash page, a half-written record).
GARBAGE_ROWS = (
    "<Row><PIN></PIN><DateTime>2024-05-02 07:31:10</DateTime><Verified>1</Verified><Status>0</Status></Row>",
    "<Row><PIN>17</PIN><DateTime>\xff\xfe-05-02</DateTime><Verified>1</Verified><Status>0</Status></Row>",
    "<Row><PIN>18</PIN><DateTime>2024-05-02 07:40:00</DateTime><Verified>x1</Verified><Status>0</Status></Row>",
)


@dataclass
class SoapSpec:
    """One simulated SOAP terminal (a fleet file's ``[[devices]]`` entry with ``kind = "soap"``)."""

    serial: str
    host: str = "127.0.0.1"
    #: The web server's port: 80 on real terminals, 8080 here (80 needs root); 0 = any free port (tests).
    port: int = 8080
    #: ArgComKey the terminal requires (0: it accepts any).
    comm_key: int = 0
    users: int = 20
    #: Punches already in the log at start.
    records: int = 0
    seed: int = 1
    timezone: str = "Asia/Jakarta"
    punches_per_minute: float = 0.0
    #: Seconds added to the terminal's clock (negative: behind).
    clock_skew_s: float = 0.0
    #: Rows carry <WorkCode> (some firmware omits it: §1.4).
    workcode: bool = True
    #: Send a Content-Length (the capture shows none: the body ends with the connection).
    content_length: bool = False
    #: Bytes sent after the body (after Content-Length when it is sent).
    trailing_bytes: str = ""
    #: A header line without a colon: strict HTTP parsers (h11) refuse the answer's head.
    malformed_header: bool = False
    #: GetAttLog reports the internal PIN; the on-screen id is the user's PIN2 (older firmware, §1.4).
    pin2: bool = False
    #: Answers GetOption ~SerialNumber (else an empty answer: the gateway must be told the serial).
    serial_option: bool = True
    #: Throttle every answer to this many bytes per second (0 = full speed): slow big logs.
    answer_bytes_per_s: float = 0.0
    #: Rows that are no punch at the end of the initial log (cycling through GARBAGE_ROWS).
    garbage_rows: int = 0
    #: Punches with an impossible calendar date (31 February) in the initial log: still punches (in the truth).
    bad_dates: int = 0
    #: What a wrong comm key gets: "empty" (an empty <XResponse>: the suspected behaviour, §1.5) or "refusal"
    #: (a Result 0 row saying "Invalid ComKey").
    wrong_key_answer: str = "empty"
    firmware: str = "Ver 6.60 Jul 1 2016"
    #: Fingerprint templates per user at start (real-shaped blobs of ``fp_version``, simulators.zk.templates).
    templates_per_user: int = 0
    #: Fingerprint algorithm version (GetOption ~ZKFPVersion); SetUserTemplate refuses blobs of another one.
    fp_version: int = 10
    #: Users and templates the terminal holds at most (SetUserInfo / SetUserTemplate answer Result 0 beyond).
    user_capacity: int = 5000
    template_capacity: int = 10000


@dataclass
class _Entry:
    pin: str
    time: str
    state: int
    verify: int
    workcode: int = 0
    raw: str = ""  #: set for a row that is no punch (sent as is)


class _Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = False
    block_on_close = True

    def __init__(self, terminal: SoapTerminal) -> None:
        self.terminal = terminal
        super().__init__((terminal.spec.host, terminal.spec.port), _Handler)


class _Handler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        server: _Server = self.server  # type: ignore[assignment]
        server.terminal.serve_connection(self.request)


class SoapTerminal:
    """One simulated SOAP terminal: its log, users and clock, served on its own address/port (start/stop)."""

    def __init__(self, spec: SoapSpec, truth: TruthWriter | None = None) -> None:
        if spec.wrong_key_answer not in ("empty", "refusal"):
            raise ValueError(f"wrong_key_answer: expected \"empty\" or \"refusal\", got {spec.wrong_key_answer!r}")
        if spec.users < 0 or spec.records < 0 or spec.garbage_rows < 0 or spec.bad_dates < 0:
            raise ValueError("users, records, garbage_rows, bad_dates must be at least 0")
        if not 0 <= spec.templates_per_user <= 10:
            raise ValueError("templates_per_user must be 0-10")
        self.spec = spec
        self.truth = truth
        self._rng = random.Random(spec.seed)
        self._tz = ZoneInfo(spec.timezone)
        self._lock = threading.Lock()
        self._skew = timedelta(seconds=spec.clock_skew_s)
        self._log: list[_Entry] = []
        #: PIN (internal number) -> on-screen id: PIN itself, or PIN2 when spec.pin2.
        self._users = {str(i): (str(1000 + i) if spec.pin2 else str(i)) for i in range(1, spec.users + 1)}
        self._names = {pin: f"User {pin}" for pin in self._users}
        #: PIN -> (password, group, privilege, card): the rest of a user record.
        self._details: dict[str, tuple[str, str, int, int]] = {pin: ("", "1", 0, 0) for pin in self._users}
        #: (PIN, finger) -> (valid flag, template bytes).
        self._templates: dict[tuple[str, int], tuple[int, bytes]] = {}
        #: PINs SetUserInfo added a second time (the documented quirk: it always adds): extra user rows.
        self.duplicates: list[str] = []
        self._fp_version = spec.fp_version
        blobs = random.Random(spec.seed * 7919 + 17)
        for pin in self._users:
            for finger in range(spec.templates_per_user):
                self._templates[(pin, finger)] = (1, make_template(blobs, spec.fp_version))
        #: Requests answered per method, ClearData calls per value, wrong-key answers (for tests).
        self.requests: Counter[str] = Counter()
        self.clears: Counter[str] = Counter()
        self.refused = 0
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._ticker: threading.Thread | None = None
        self._stop = threading.Event()
        start = self.now() - timedelta(minutes=spec.records + spec.bad_dates + 10)
        self._add([start + timedelta(minutes=i) for i in range(spec.records)])
        for i in range(spec.bad_dates):
            self._add_entry(_Entry(self._pick_pin(), f"2023-02-{29 + i % 3:02d} 08:{i % 60:02d}:00", 0, 1))
        for i in range(spec.garbage_rows):
            self._log.append(_Entry("", "", 0, 0, raw=GARBAGE_ROWS[i % len(GARBAGE_ROWS)]))

    # -- the terminal ----------------------------------------------------------------------------
    @property
    def serial(self) -> str:
        """The terminal's serial number."""
        return self.spec.serial

    @property
    def host(self) -> str:
        """Address it listens on."""
        return self.spec.host

    @property
    def port(self) -> int:
        """Port it listens on (the real one once started with port 0)."""
        if self._server is not None:
            return int(self._server.server_address[1])
        return self.spec.port

    @property
    def record_count(self) -> int:
        """Rows in the log (punches and rows that are no punch)."""
        with self._lock:
            return len(self._log)

    def now(self) -> datetime:
        """The terminal's local wall clock (naive), skew included."""
        return (datetime.now(self._tz) + self._skew).replace(tzinfo=None, microsecond=0)

    def _pick_pin(self) -> str:
        return str(self._rng.randint(1, max(self.spec.users, 1)))

    def _add_entry(self, entry: _Entry) -> dict[str, Any]:
        with self._lock:
            self._log.append(entry)
        row = {"serial": self.spec.serial, "user_id": self._users.get(entry.pin, entry.pin), "time": entry.time,
               "state": entry.state, "verify": entry.verify}
        if self.truth is not None:
            self.truth.write([row])
        return row

    def _add(self, times: list[datetime], pin: str | None = None) -> list[dict[str, Any]]:
        rows = []
        for t in times:
            entry = _Entry(pin or self._pick_pin(), t.strftime("%Y-%m-%d %H:%M:%S"), self._rng.choice((0, 1)),
                           self._rng.choice((1, 15)), self._rng.choice((0, 0, 0, 7)))
            rows.append(self._add_entry(entry))
        return rows

    def add_punches(self, n: int = 1, *, at: str | None = None, user_id: str | None = None) -> list[dict[str, Any]]:
        """Record ``n`` punches now (or at device-local ``at``), by random users or the user with that on-screen id."""
        pin = None
        if user_id is not None:
            pin = next((p for p, shown in self._users.items() if shown == user_id), user_id)
        base = datetime.strptime(at, "%Y-%m-%d %H:%M:%S") if at else self.now()
        return self._add([base + timedelta(seconds=i) for i in range(n)], pin)

    def clear_log(self) -> None:
        """Clear the log as at the keypad."""
        with self._lock:
            self._log.clear()

    # -- serving ---------------------------------------------------------------------------------
    def start(self) -> None:
        """Listen and serve in a thread (and make punches when punches_per_minute is set)."""
        self._server = _Server(self)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
                                        name=f"soap-sim-{self.serial}", daemon=True)
        self._thread.start()
        if self.spec.punches_per_minute > 0:
            self._ticker = threading.Thread(target=self._tick, name=f"soap-sim-punch-{self.serial}", daemon=True)
            self._ticker.start()

    def _tick(self) -> None:
        while not self._stop.wait(60.0 / self.spec.punches_per_minute):
            self.add_punches(1)

    def stop(self) -> None:
        """Stop serving and close the socket (waits for open connections)."""
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        for t in (self._thread, self._ticker):
            if t is not None:
                t.join(5)
        self._server = self._thread = self._ticker = None

    def __enter__(self) -> SoapTerminal:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def serve_connection(self, sock: socket.socket) -> None:
        """One HTTP exchange: read the request leniently, answer, close."""
        sock.settimeout(10.0)
        try:
            request = _read_request(sock)
            body = self.answer(request)
            head = codec.http_head(len(body) if self.spec.content_length else None,
                                   malformed_header=self.spec.malformed_header)
            self._send(sock, head + body + self.spec.trailing_bytes.encode("latin-1"))
            try:
                sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
        except OSError as exc:
            log.debug("%s: connection ended: %s", self.serial, exc)

    def _send(self, sock: socket.socket, data: bytes) -> None:
        rate = self.spec.answer_bytes_per_s
        if rate <= 0:
            sock.sendall(data)
            return
        step = max(1, int(rate / 20))
        for i in range(0, len(data), step):
            if self._stop.is_set():
                return
            sock.sendall(data[i:i + step])
            time.sleep(step / rate)

    # -- the service -----------------------------------------------------------------------------
    def answer(self, request: bytes) -> bytes:
        """The answer body to one request body."""
        text = request.decode(codec.ENCODING, errors="replace")
        call = codec.parse_request(text)
        if call is None:
            return codec.answer_text("Unknown", []).encode(codec.ENCODING, errors="replace")
        method = call.method
        with self._lock:
            self.requests[method] += 1
        if not self._key_ok(call.comm_key):
            self.refused += 1
            out = (codec.answer_text(method, []) if self.spec.wrong_key_answer == "empty"
                   else codec.result_text(method, False, "Invalid ComKey"))
        else:
            out = self._dispatch(call)
        return out.encode(codec.ENCODING, errors="replace")

    def _key_ok(self, sent: str | None) -> bool:
        if self.spec.comm_key == 0:
            return True
        return sent is not None and sent.strip().isdigit() and int(sent) == self.spec.comm_key

    def _dispatch(self, call: codec.SoapRequest) -> str:
        m = call.method
        if m == "GetDate":
            now = self.now()
            return codec.answer_text(m, [codec.row([("Date", now.strftime("%Y-%m-%d")),
                                                     ("Time", now.strftime("%H:%M:%S"))])])
        if m == "SetDate":
            try:
                target = datetime.strptime(f"{call.arg('Date')} {call.arg('Time', '00:00:00')}", "%Y-%m-%d %H:%M:%S")
            except ValueError:
                return codec.result_text(m, False)
            self._skew += target - self.now()
            return codec.result_text(m, True)
        if m == "GetAttLog":
            return codec.answer_text(m, self._log_rows(call.arg("PIN", "All")))
        if m == "GetAllUserInfo":
            return codec.answer_text(m, self._all_user_rows())
        if m == "GetUserInfo":
            wanted = call.arg("PIN", "All")
            with self._lock:
                rows = [self._user_row(pin) for pin in self._users if wanted.lower() == "all" or wanted == pin]
            return codec.answer_text(m, rows)
        if m == "ClearData":
            value = call.arg("Value")
            with self._lock:
                self.clears[value] += 1
                if value == "3":
                    self._log.clear()
                elif value == "1":  # "all data": users (and templates) go, the log too on the units described
                    self._users.clear()
                    self._templates.clear()
                    self._log.clear()
                elif value == "2":
                    self._templates.clear()
                else:
                    return codec.result_text(m, False)
            return codec.result_text(m, True)
        if m == "GetOption":
            name = call.arg("Name")
            if name == "~SerialNumber" and self.spec.serial_option:
                return codec.answer_text(m, [codec.row([("Name", name), ("Value", self.serial)])])
            if name == "~ZKFPVersion":
                return codec.answer_text(m, [codec.row([("Name", name), ("Value", str(self._fp_version))])])
            return codec.answer_text(m, [])
        if m in ("GetUserTemplate", "SetUserInfo", "SetUserTemplate", "DeleteUser", "DeleteTemplate"):
            with self._lock:
                return self._enrolment_call(call)
        if m == "RefreshDB":
            return codec.result_text(m, True)
        return codec.result_text(m, False, "Unknown command!")

    def _all_user_rows(self) -> list[str]:
        with self._lock:
            return [self._user_row(pin) for pin in [*self._users, *self.duplicates] if pin in self._users]

    def _log_rows(self, pin: str) -> list[str]:
        with self._lock:
            entries = list(self._log)
        rows = []
        for e in entries:
            if e.raw:
                if pin.lower() == "all":
                    rows.append(e.raw)
                continue
            if pin.lower() != "all" and e.pin != pin:
                continue
            fields = [("PIN", e.pin), ("DateTime", e.time), ("Verified", str(e.verify)), ("Status", str(e.state))]
            if self.spec.workcode:
                fields.append(("WorkCode", str(e.workcode)))
            rows.append(codec.row(fields))
        return rows

    def _user_row(self, pin: str) -> str:
        password, group, privilege, card = self._details.get(pin, ("", "1", 0, 0))
        return codec.row([("PIN", pin), ("Name", self._names.get(pin, "")), ("Password", password), ("Group", group),
                          ("Privilege", str(privilege)), ("Card", str(card)),
                          ("PIN2", self._users[pin] if self.spec.pin2 else pin),
                          ("TZ1", "0"), ("TZ2", "0"), ("TZ3", "0")])

    # -- enrolments (GetUserTemplate, SetUserInfo, SetUserTemplate, DeleteUser, DeleteTemplate) ------
    def _enrolment_call(self, call: codec.SoapRequest) -> str:
        """Shapes of other-protocols.md §1.3/§1.4: template rows PIN, FingerID, Size, Valid, Template (base64);
        writes answer Result 1/0 with an Information text. Called with the lock held."""
        m = call.method
        pin = call.arg("PIN")
        if m == "GetUserTemplate":
            finger = call.arg("FingerID")
            rows = [codec.row([("PIN", p), ("FingerID", str(f)), ("Size", str(len(data))), ("Valid", str(valid)),
                               ("Template", base64.b64encode(data).decode("ascii"))])
                    for (p, f), (valid, data) in sorted(self._templates.items())
                    if (pin.lower() == "all" or p == pin) and (not finger.isdigit() or int(finger) == f)]
            return codec.answer_text(m, rows) if rows else codec.result_text(m, False, "No data!")
        if m == "SetUserInfo":
            if not pin or len(pin) > 24:
                return codec.result_text(m, False)
            if pin in self._users:
                self.duplicates.append(pin)  # the documented quirk: SetUserInfo always adds a user
            elif len(self._users) >= self.spec.user_capacity:
                return codec.result_text(m, False, "Fail!")
            self._users[pin] = call.arg("PIN2") or pin if self.spec.pin2 else pin
            self._names[pin] = call.arg("Name")
            priv, card = call.arg("Privilege", "0"), call.arg("Card", "0")
            self._details[pin] = (call.arg("Password"), call.arg("Group", "1"), int(priv) if priv.isdigit() else 0,
                                  int(card) if card.isdigit() else 0)
            return codec.result_text(m, True)
        if m == "SetUserTemplate":
            finger, size, valid = call.arg("FingerID"), call.arg("Size"), call.arg("Valid", "1")
            try:
                data = base64.b64decode(call.arg("Template"), validate=True)
            except ValueError:
                return codec.result_text(m, False)
            if pin not in self._users or not finger.isdigit() or int(finger) > 9 or not data \
                    or (size.isdigit() and int(size) != len(data)) or not fits_version(data, self._fp_version):
                return codec.result_text(m, False)
            if (pin, int(finger)) not in self._templates and len(self._templates) >= self.spec.template_capacity:
                return codec.result_text(m, False, "Fail!")
            self._templates[(pin, int(finger))] = (int(valid) if valid.isdigit() else 1, data)
            return codec.result_text(m, True)
        if m == "DeleteUser":
            if pin not in self._users:
                return codec.result_text(m, False)
            del self._users[pin]
            self._names.pop(pin, None)
            self._details.pop(pin, None)
            self.duplicates = [d for d in self.duplicates if d != pin]
            for key in [k for k in self._templates if k[0] == pin]:
                del self._templates[key]
            return codec.result_text(m, True)
        # DeleteTemplate: every finger of the user
        gone = [k for k in self._templates if k[0] == pin]
        for key in gone:
            del self._templates[key]
        return codec.result_text(m, bool(gone))

    def enrolments(self) -> tuple[dict[str, tuple[str, int, int, str]], dict[tuple[str, int], bytes]]:
        """What the terminal holds, by on-screen id: users (name, privilege, card, password), templates."""
        with self._lock:
            users = {self._users[p]: (self._names.get(p, ""), self._details[p][2], self._details[p][3],
                                      self._details[p][0]) for p in self._users}
            templates = {(self._users[p], f): data for (p, f), (_, data) in self._templates.items() if p in self._users}
        return users, templates

    def factory_reset(self) -> None:
        """Wipe users, templates and the log, as the menu's factory reset does."""
        with self._lock:
            self._users.clear()
            self._names.clear()
            self._details.clear()
            self._templates.clear()
            self.duplicates.clear()
            self._log.clear()

    def replace_blank(self, new_serial: str | None = None, fp_version: int | None = None) -> None:
        """Swap in a new, empty unit (optionally another serial and fingerprint algorithm version)."""
        self.factory_reset()
        with self._lock:
            if new_serial is not None:
                self.spec.serial = new_serial
            if fp_version is not None:
                self._fp_version = fp_version

    def describe(self) -> dict[str, Any]:
        """A JSON-able summary (for the fleet listing)."""
        return {"serial": self.serial, "kind": "soap", "host": self.host, "port": self.port,
                "records": self.record_count, "users": len(self._users), "comm_key": bool(self.spec.comm_key)}


def _read_request(sock: socket.socket) -> bytes:
    """The request body, read leniently: head to a blank line (CRLF or LF), then Content-Length bytes when given
    (a trailing CRLF not counted in it is left unread), else until the method element closes or the client
    half-closes (the Node client's way)."""
    data = b""
    while b"\r\n\r\n" not in data and b"\n\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
        if len(data) > REQUEST_MAX:
            break
    ends = [(i, n) for sep, n in ((b"\r\n\r\n", 4), (b"\n\n", 2)) if (i := data.find(sep)) >= 0]
    if not ends:
        return data  # no head at all: treat what came as the body
    at, n = min(ends)
    head, body = data[:at], data[at + n:]
    m = _CONTENT_LENGTH.search(head)
    if m is not None:
        length = min(int(m.group(1)), REQUEST_MAX)
        while len(body) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            body += chunk
        return body[:length]
    call = codec.parse_request(body.decode(codec.ENCODING, errors="replace"))
    while len(body) < REQUEST_MAX and (call is None or f"</{call.method}".encode() not in body):
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
        call = codec.parse_request(body.decode(codec.ENCODING, errors="replace"))
    return body


__all__ = ["GARBAGE_ROWS", "SoapSpec", "SoapTerminal"]

"""The push receiver: terminals with ``driver = "push"`` call us over HTTP (ADMS / "iclock"); no polling.

    terminal --GET /iclock/cdata?options=all--> option block (Delay, ErrorDelay, TimeZone, Date header)
             --POST /iclock/cdata?table=ATTLOG--> parse -> normalize -> Store.save_poll (ONE transaction:
                  punches + outbox) -> "OK: n" only after the commit -> ctx.poll_observers (health, metrics)
             --GET /iclock/getrequest[&INFO=..]--> queued commands (PushRepo) or "OK"; INFO counts -> health
             --POST /iclock/devicecmd--> command results -> PushRepo
    push sweep (30 s): a terminal silent past push.offline_after_s -> a failed outcome ("unreachable") per
             sweep, so health takes it offline exactly like a polled terminal; commands past their timeout.

Exactly-once: a batch is acknowledged only after save_poll committed; a terminal that never saw the reply
sends the batch again and the idempotent insert stores nothing twice. Unknown serials get a well-formed
but slow option block (long Delay/ErrorDelay) and their uploads are refused (nothing acknowledged, so
nothing is lost on the terminal); they are recorded for `fpgw devices unknown`. Every request is bounded
(body size, lines, fields, rate per terminal) and bad input gets a 4xx or an ``OK: 0`` and one log line,
never a 500.
"""

from __future__ import annotations

import hashlib
import hmac
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any
from zoneinfo import ZoneInfo

import structlog
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from drivers.base import DeviceInfo
from gateway.config import Config, DeviceConfig
from gateway.enrol.crypto import EnrolKeyError, EnvelopeError, Keyring
from gateway.enrol.push import command_summary, open_command, store_upload
from gateway.models import PollOutcome, Punch
from gateway.polling.normalize import DEFAULT_NOT_BEFORE, DeviceContext, EmployeeMap, normalize_punches
from gateway.push import protocol as p
from gateway.push.enrolment import parse_enrolment_lines
from gateway.services import AppContext, Service
from gateway.store.db import StorageError, storage_error_text
from gateway.store.punches import Store
from gateway.store.push import COMMANDS_KEPT_DAYS, PushCommand, PushRepo
from gateway.store.pushenrol import PushEnrolRepo
from gateway.store.quarantine import QuarantinedInput, QuarantineRepo
from gateway.web.server import ThreadedServer, start_listener
from gateway.web.status import check_access

log = structlog.get_logger(__name__)

#: Seconds between health heartbeats of a terminal that keeps calling (each is one poll_runs row).
HEARTBEAT_EVERY_S = 60.0
#: Seconds between the sweeps (silence, command timeouts).
SWEEP_EVERY_S = 30.0
#: Told to unknown terminals: call again this rarely (they are recorded, not served).
UNKNOWN_DELAY_S = 600
#: How often an unknown serial's record is written (its calls are counted in memory in between).
UNKNOWN_WRITE_EVERY_S = 60.0
#: Small uploads arrive right after the punch (Realtime=1): their newest punch tells the terminal's clock.
SKEW_BATCH_MAX = 5
#: Longest query value we look at.
QUERY_VALUE_MAX = 512
#: Commands handed out in one getrequest at most (the vendor doc allows several lines; a restore queues one per
#: user and per finger, so a terminal polling every push.delay_s takes them in this many at a time).
COMMANDS_PER_POLL = 50
#: Seconds before a missing enrolment key is looked for again (the operator may add it while we run).
KEY_RETRY_S = 60.0
#: Quarantine source of push upload lines that are no usable enrolment record.
QUARANTINE_SOURCE = "push"


class Refused(Exception):
    """A request we answer with an error status and one log line (bad input, unknown terminal, limits)."""

    def __init__(self, status: int, reason: str, *, log_key: str = "") -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.log_key = log_key or reason


@dataclass
class _Terminal:
    """What the receiver remembers of one configured push terminal between its calls (in memory)."""

    device: DeviceConfig
    last_call: float | None = None
    #: The call before the last one (a realtime upload tells the clock only from a terminal calling regularly).
    previous_call: float | None = None
    last_address: str = ""
    #: Last clock skew measured from an upload (repeated in heartbeats so the status page keeps showing it).
    skew_s: float | None = None
    last_heartbeat: float | None = None
    #: The last outcome fed to health was a silence failure: the next call must report at once.
    reported_silent: bool = False
    tokens: float = 0.0
    tokens_at: float = 0.0
    info: p.TerminalInfo | None = None
    #: Its last handshake carried a wrong pushcommkey: every call is refused until a handshake with the right
    #: one (else its command polls would report it healthy between two refused handshakes).
    key_rejected: bool = False


class PushReceiver:
    """The push service: its own listener, the iclock endpoints, the silence sweep."""

    name = "push"

    def __init__(self, config: Config, store: Store, repo: PushRepo, observers: list[Callable[[PollOutcome], None]],
                 *, scheduler: Any = None, clock: Callable[[], datetime] | None = None,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.cfg = config.push
        self.store = store
        self.repo = repo
        self.observers = observers
        self.scheduler = scheduler
        self.clock = clock or (lambda: datetime.now(UTC))
        self.monotonic = monotonic
        self.employees = EmployeeMap(config.employees.mapping_csv)
        self._lock = threading.Lock()
        self._terminals = {d.serial.lower(): _Terminal(d) for d in config.devices
                           if d.pushes and d.enabled and d.serial}
        #: Serials of push devices switched off in the config: refused, but not "unknown".
        self._disabled = {d.serial.lower() for d in config.devices if d.pushes and not d.enabled and d.serial}
        self._started_at = monotonic()
        self._unknown: dict[str, tuple[str, int, float]] = {}
        self._logged: dict[str, float] = {}
        self._server: ThreadedServer | None = None
        self.port: int | None = None
        self.enrol = PushEnrolRepo(store.engine)
        self.quarantine = QuarantineRepo(store.engine)
        self._keyring: Keyring | None = None
        self._keyring_tried = -1e9

    # -- service ---------------------------------------------------------------------------------
    def app(self) -> Starlette:
        """The ASGI app: every iclock path, with and without ``.aspx`` and a trailing slash."""
        routes = []
        for name, handler in (("cdata", self._cdata), ("getrequest", self._getrequest),
                              ("devicecmd", self._devicecmd), ("ping", self._ping), ("registry", self._registry),
                              ("push", self._push_options)):
            for path in (f"/iclock/{name}", f"/iclock/{name}.aspx", f"/iclock/{name}/"):
                routes.append(Route(path, self._guarded(handler), methods=["GET", "POST"]))
        return Starlette(routes=routes)

    def start(self) -> None:
        """Bind the listener (a clear error when the port is taken) and start the sweep."""
        cfg = self.cfg
        # date_header off: every reply carries its own Date (the terminal sets its clock from it).
        server = start_listener(self.app(), what="push receiver", section="push", listen=cfg.listen, port=cfg.port,
                                tls_cert_file=cfg.tls_cert_file, tls_key_file=cfg.tls_key_file,
                                thread_name="fpgw-push", request_timeout_s=cfg.request_timeout_s,
                                max_connections=cfg.max_connections, date_header=False)
        self._server = server
        self.port = server.port
        if self.scheduler is not None:
            self.scheduler.add_job(self.sweep, "interval", seconds=SWEEP_EVERY_S, id="push-sweep", name="push sweep",
                                   replace_existing=True, max_instances=1, coalesce=True,
                                   executor="housekeeping" if "housekeeping" in getattr(
                                       self.scheduler, "_executors", {}) else "default")
        log.info("push receiver serving", url=f"{server.scheme}://{cfg.listen}:{self.port}/iclock/",
                 terminals=len(self._terminals))

    def stop(self, deadline_s: float) -> None:
        """Stop listening; unanswered uploads are simply sent again by the terminals."""
        if self.scheduler is not None:
            try:
                self.scheduler.remove_job("push-sweep")
            except Exception:  # already gone with the scheduler
                pass
        if self._server is not None:
            self._server.stop(deadline_s)
        self._server = None

    # -- request plumbing ------------------------------------------------------------------------
    def _guarded(self, handler: Callable[[Request, str, bytes], str]) -> Callable[[Request], Any]:
        async def endpoint(request: Request) -> Response:
            address = request.client.host if request.client else ""
            try:
                body = await self._read_body(request) if request.method == "POST" else b""
                text = await run_in_threadpool(handler, request, address, body)
                return self._reply(200, text)
            except Refused as exc:
                self._log_refusal(exc, request, address)
                return self._reply(exc.status, exc.reason)
            except ClientDisconnect:
                return self._reply(400, "incomplete request")
            except Exception:
                # A bug of ours, not the terminal's: nothing was acknowledged, so it sends again later.
                log.exception("push request failed", path=request.url.path)
                return self._reply(503, "try again later")
        return endpoint

    async def _read_body(self, request: Request) -> bytes:
        limit = self.cfg.max_body_bytes
        declared = request.headers.get("content-length", "")
        if declared and (not declared.isdigit() or int(declared) > limit):
            raise Refused(413, f"body larger than push.max_body_bytes ({limit} bytes)", log_key="too large")
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise Refused(413, f"body larger than push.max_body_bytes ({limit} bytes)", log_key="too large")
            chunks.append(chunk)
        return b"".join(chunks)

    def _reply(self, status: int, text: str) -> Response:
        headers = {"Date": format_datetime(self.clock().astimezone(UTC), usegmt=True),
                   "Pragma": "no-cache", "Cache-Control": "no-store"}
        return PlainTextResponse(text, status_code=status, headers=headers)

    def _first_in_a_while(self, key: str, every_s: float = 60.0) -> bool:
        """True at most once per ``every_s`` per key: a misconfigured terminal retries every few seconds,
        and its log line must not repeat at that rate."""
        now = self.monotonic()
        with self._lock:
            if now - self._logged.get(key, -1e9) < every_s:
                return False
            if len(self._logged) > 10_000:
                self._logged.clear()
            self._logged[key] = now
        return True

    def _log_refusal(self, exc: Refused, request: Request, address: str) -> None:
        if not self._first_in_a_while(f"{exc.log_key}|{address}"):
            return
        log.warning("push request refused", reason=exc.reason, status=exc.status, address=address,
                    path=request.url.path[:100])

    @staticmethod
    def _query(request: Request, name: str) -> str:
        for key, value in request.query_params.multi_items():
            if key.lower() == name.lower():
                return value[:QUERY_VALUE_MAX]
        return ""

    def _serial(self, request: Request) -> str:
        serial = self._query(request, "SN")
        if not p.SERIAL.match(serial):
            raise Refused(400, "missing or malformed SN", log_key="bad serial")
        return serial

    def _terminal(self, request: Request, address: str, *, handshake: bool = False) -> _Terminal | None:
        """The configured terminal calling, rate-limited and key-checked; None for an unknown serial."""
        serial = self._serial(request)
        term = self._terminals.get(serial.lower())
        if term is None:
            if serial.lower() in self._disabled:
                raise Refused(403, "this terminal is disabled in the gateway's config", log_key=f"disabled {serial}")
            self._note_unknown(serial, address)
            return None
        now = self.monotonic()
        with self._lock:
            rate = self.cfg.rate_per_device
            term.tokens = min(4 * rate, term.tokens + (now - term.tokens_at) * rate) if term.tokens_at else 4 * rate
            term.tokens_at = now
            if term.tokens < 1.0:
                raise Refused(503, "too many requests from this terminal (push.rate_per_device)",
                              log_key=f"rate {serial}")
            term.tokens -= 1.0
        key = term.device.push_key
        if key is not None and handshake:
            given = self._query(request, "pushcommkey")
            term.key_rejected = not hmac.compare_digest(given.lower().encode(), key.lower().encode())
        if term.key_rejected:
            if handshake:
                self._outcome(term, ok=False, error_kind="auth_rejected",
                              error="the terminal's pushcommkey does not match this device's push key")
            raise Refused(403, "wrong pushcommkey", log_key=f"key {serial}")
        self._called(term, address)
        return term

    def _note_unknown(self, serial: str, address: str) -> None:
        now = self.monotonic()
        with self._lock:
            seen = self._unknown.get(serial.lower())
            if seen is None and len(self._unknown) >= 1000:
                return
            first = seen is None
            calls = (seen[1] if seen else 0) + 1
            written = seen[2] if seen else -1e9
            due = now - written >= UNKNOWN_WRITE_EVERY_S
            self._unknown[serial.lower()] = (address, 0 if due else calls, now if due else written)
        if first:
            log.warning("unknown terminal trying to push; add it with `fpgw devices add-push`",
                        serial=serial, address=address)
        if due:
            try:
                self.repo.note_unknown(serial, address, self.clock(), calls)
            except StorageError as exc:
                log.debug("could not record an unknown terminal", error=storage_error_text(exc))

    def _called(self, term: _Terminal, address: str) -> None:
        """Any call proves the terminal alive: a heartbeat outcome now and then (and at once after silence)."""
        now = self.monotonic()
        with self._lock:
            term.previous_call, term.last_call = term.last_call, now
            term.last_address = address
            due = term.reported_silent or term.last_heartbeat is None \
                or now - term.last_heartbeat >= HEARTBEAT_EVERY_S
            if due:
                term.last_heartbeat = now
                term.reported_silent = False
        if due:
            self._outcome(term, ok=True)

    # -- endpoints (run in the thread pool) ------------------------------------------------------
    def _cdata(self, request: Request, address: str, body: bytes) -> str:
        if request.method == "GET":
            if self._query(request, "table"):  # RemoteAtt and other lookups we do not serve
                self._terminal(request, address)
                return "OK"
            return self._handshake(request, address)
        term = self._terminal(request, address)
        if term is None:
            raise Refused(403, "unknown terminal: not acknowledged; add it to the gateway's config",
                          log_key=f"unknown {self._serial(request)}")
        table = self._query(request, "table").upper()
        text = p.body_text(body, request.headers.get("content-type", ""))
        if table == p.ATTLOG:
            return self._attlog(term, address, text, body)
        if table in (p.OPERLOG, p.BIODATA):
            return self._operlog(term, table, text)
        # options, ATTPHOTO, ...: acknowledged (we never ask for them), counted in the debug log.
        log.debug("push upload ignored", device=term.device.id, table=table[:32], bytes=len(body))
        return "OK"

    def keyring(self) -> Keyring | None:
        """The enrolment key (gateway/enrol/crypto.py), loaded on first need; None when it is not configured."""
        if self._keyring is not None:
            return self._keyring
        now = self.monotonic()
        if now - self._keyring_tried < KEY_RETRY_S:
            return None
        self._keyring_tried = now
        try:
            self._keyring = Keyring.from_config(self.config.enrol)
        except EnrolKeyError as exc:
            log.warning("push terminals' users and templates are not kept: no usable enrolment key", reason=str(exc))
            return None
        return self._keyring

    def _operlog(self, term: _Terminal, table: str, text: str) -> str:
        """OPERLOG / BIODATA: users and templates sealed into the terminal's mirror, unusable ones quarantined,
        the other lines (OPLOG ...) kept raw as before. Acknowledged only after they are stored."""
        device, serial = term.device, term.device.serial or ""
        lines, counts = p.parse_operlog(text, self.cfg.max_lines)
        upload = parse_enrolment_lines(lines)
        now = self.clock()
        keyring = self.keyring() if upload.users or upload.fingers else None
        try:
            if keyring is not None:
                store_upload(self.enrol, serial, keyring, upload.users, upload.fingers, now)
            if upload.refused:
                self.quarantine.add([QuarantinedInput(device.id, QUARANTINE_SOURCE, raw, why,
                                                      origin=f"{table} line {n}, serial {serial}", received_at=now)
                                     for n, raw, why in upload.refused])
            if upload.other_lines:
                self.repo.save_operlog(serial, upload.other_lines, now)
        except StorageError as exc:
            raise Refused(503, f"database unavailable ({storage_error_text(exc)}); send again later",
                          log_key="storage") from None
        kept = len(upload.users) + len(upload.fingers) if keyring is not None else 0
        log.info("operation log received", device=device.id, serial=serial, table=table, lines=len(lines),
                 enrolment_records_kept=kept, refused=len(upload.refused),
                 **{f"lines_{k.lower()}": v for k, v in counts.items()})
        if (upload.users or upload.fingers) and keyring is None and self._first_in_a_while(f"nokey|{device.id}", 3600):
            log.warning("users and templates uploaded by a push terminal were not kept (no enrolment key)",
                        device=device.id, serial=serial, records=len(upload.users) + len(upload.fingers))
        if upload.refused and self._first_in_a_while(f"badenrol|{device.id}", 600.0):
            log.warning("push upload had unusable user or template lines; quarantined (said once per 10 min)",
                        device=device.id, serial=serial, refused=len(upload.refused),
                        first=[f"line {n}: {why}" for n, _, why in upload.refused[:3]])
        return p.accepted_reply(len(lines))

    def _handshake(self, request: Request, address: str) -> str:
        serial = self._serial(request)
        term = self._terminal(request, address, handshake=True)
        if term is None:
            # Well formed, so the terminal does not retry in a tight loop, but slow: it is recorded, not served.
            opts = p.HandshakeOptions(delay_s=UNKNOWN_DELAY_S, error_delay_s=UNKNOWN_DELAY_S,
                                      timezone=self.config.site.timezone)
            return p.handshake_reply(serial, opts, self.clock())
        opts = p.HandshakeOptions(delay_s=self.cfg.delay_s, error_delay_s=self.cfg.error_delay_s,
                                  timezone=term.device.timezone)
        log.debug("push handshake", device=term.device.id, serial=serial,
                  pushver=self._query(request, "pushver")[:20] or None)
        return p.handshake_reply(serial, opts, self.clock())

    def _attlog(self, term: _Terminal, address: str, text: str, body: bytes) -> str:
        device = term.device
        _, truncated = p.split_lines(text, self.cfg.max_lines)
        if truncated:
            # Refused whole: nothing is acknowledged, nothing is lost on the terminal.
            raise Refused(413, f"more than push.max_lines ({self.cfg.max_lines}) lines", log_key=f"lines {device.id}")
        batch = p.parse_attlog(text, self.cfg.max_lines)
        now = self.clock()
        serial = device.serial or ""
        self.employees.refresh()
        ctx = DeviceContext(office_code=self.config.site.office_code, device_id=device.id, serial=serial,
                            timezone=device.timezone, not_before=device.installed_on or DEFAULT_NOT_BEFORE)
        punches = _batch_occurrences(normalize_punches(batch.punches, ctx, employees=self.employees, now=now), body)
        skew = self._skew(term, punches, now)
        if batch.refused and self._first_in_a_while(f"unusable|{device.id}", 600.0):
            log.warning("push upload had unusable lines; they are acknowledged and not stored (said once per 10 min)",
                        device=device.id, serial=serial, refused=len(batch.refused),
                        first=[f"line {n}: {why}" for n, why in batch.refused[:3]])
        try:
            state = self.store.device_state(device.id)
            outcome = self._base_outcome(term, state.serial, state.firmware, now)
            outcome = replace(outcome, mode="full", records_read=len(punches), clock_skew_s=skew)
            saved = self.store.save_poll(outcome, punches, forward=bool(self.config.forward.url),
                                         address=(address, 0))
        except StorageError as exc:
            self._notify(PollOutcome(device_id=device.id, started_at=now, finished_at=self.clock(), ok=False,
                                     error_kind="storage", error=storage_error_text(exc), serial=serial))
            raise Refused(503, "database unavailable; send again later", log_key="storage") from None
        flags: dict[str, int] = {}
        for punch in punches:
            if punch.flags and punch.key in saved.new_keys:
                for f in punch.flags:
                    flags[f] = flags.get(f, 0) + 1
        self._notify(replace(outcome, new_punches=saved.new_punches, newest_punch_utc=saved.newest_punch_utc,
                             flag_counts=flags))
        if saved.new_punches:
            log.info("new punches stored", device=device.id, serial=serial, new=saved.new_punches,
                     received=len(punches))
        # Acknowledged only now, after the commit: a crash before this line makes the terminal resend.
        return p.accepted_reply(len(punches))

    def _skew(self, term: _Terminal, punches: list[Punch], now: datetime) -> float | None:
        """Terminal clock minus ours, from a realtime upload (a few records, terminal calling regularly)."""
        times = [pu.local_time for pu in punches if pu.local_time is not None and not pu.flags]
        regular = term.previous_call is not None and term.last_call is not None \
            and term.last_call - term.previous_call <= 3 * self.cfg.delay_s
        if not times or len(punches) > SKEW_BATCH_MAX or not regular:
            return term.skew_s  # a backlog after an outage would read as a clock behind
        local_now = now.astimezone(ZoneInfo(term.device.timezone)).replace(tzinfo=None)
        term.skew_s = (max(times) - local_now).total_seconds()
        return term.skew_s

    def _getrequest(self, request: Request, address: str, body: bytes) -> str:
        term = self._terminal(request, address)
        if term is None:
            return "OK"
        info_text = self._query(request, "INFO")
        info = p.parse_info(info_text) if info_text else None
        if info is not None and info != term.info:
            before, term.info = term.info, info
            if info.fp_algorithm and (before is None or before.fp_algorithm != info.fp_algorithm):
                try:
                    self.enrol.set_algorithm(term.device.serial or "", info.fp_algorithm)
                except StorageError as exc:
                    log.debug("fingerprint algorithm not recorded", error=storage_error_text(exc))
            # Counts grow with every punch: the next heartbeat (within a minute) carries them. Reported at
            # once only what health must see now: the first INFO, new firmware, a log that shrank.
            if before is None or info.firmware != before.firmware or info.counts.records < before.counts.records:
                self._outcome(term, ok=True)
        commands = [c for c in self.repo.take_commands(term.device.serial or "", COMMANDS_PER_POLL)
                    if self._may_hand_out(term, c, info)]
        lines = []
        for cmd in commands:
            text = self._command_text(term, cmd)
            if text is None:
                continue
            lines.append((cmd.id, text))
            log.info("command handed to terminal", device=term.device.id, command=cmd.kind, command_id=cmd.id)
        return p.command_lines(lines)

    def _command_text(self, term: _Terminal, cmd: PushCommand) -> str | None:
        """The text handed out: a sealed enrolment command opened (gateway/enrol/push.py), else as queued."""
        serial = term.device.serial or ""
        keyring = self.keyring() if cmd.text.startswith("ENC1 ") else None
        try:
            if cmd.text.startswith("ENC1 ") and keyring is None:
                raise EnvelopeError("no enrolment key configured")
            return open_command(keyring, serial, cmd.text) if keyring is not None else cmd.text
        except (EnvelopeError, ValueError) as exc:
            self.repo.record_result(serial, cmd.id, None, f"refused by the gateway: cannot open it ({exc})",
                                    state="refused")
            log.warning("enrolment command withdrawn: it cannot be opened", device=term.device.id,
                        command_id=cmd.id, reason=str(exc))
            return None

    def _may_hand_out(self, term: _Terminal, cmd: PushCommand, info: p.TerminalInfo | None) -> bool:
        """A clear goes out only if every record the terminal holds right now (the INFO of this very call) is
        stored: nothing is deleted from a terminal before it is durably stored. Otherwise it is withdrawn."""
        if cmd.kind != "clear":
            return True
        serial = term.device.serial or ""
        holds = info.counts.records if info is not None else None
        stored = self.repo.stored_punches(serial)
        if holds is not None and stored >= holds:
            return True
        why = ("the terminal did not report its record count (INFO)" if holds is None else
               f"the terminal holds {holds} records but only {stored} are stored")
        self.repo.record_result(serial, cmd.id, None, f"refused by the gateway: {why}; nothing cleared",
                                state="refused")
        log.warning("clear withdrawn: not every record is stored", device=term.device.id, command_id=cmd.id,
                    holds=holds, stored=stored)
        return False

    def _devicecmd(self, request: Request, address: str, body: bytes) -> str:
        term = self._terminal(request, address)
        if term is None:
            raise Refused(403, "unknown terminal", log_key=f"unknown {self._serial(request)}")
        text = p.body_text(body, request.headers.get("content-type", ""))
        results, bad = p.parse_results(text, self.cfg.max_lines)
        for res in results:
            detail = p.RETURN_CODES.get(res.return_code, f"return code {res.return_code}")
            extra = "; ".join(f"{k}={v}" for k, v in list(res.extra.items())[:20])
            cmd = self.repo.record_result(term.device.serial or "", res.command_id, res.return_code,
                                          detail + (f"; {extra}" if extra else ""))
            if cmd is None:
                log.info("terminal answered a command we did not queue", device=term.device.id,
                         command_id=res.command_id[:32], return_code=res.return_code)
            elif res.return_code == 0:
                log.info("command done", device=term.device.id, command=cmd.kind, command_id=cmd.id)
            else:
                log.warning("command failed on the terminal", device=term.device.id, command=cmd.kind,
                            command_id=cmd.id, return_code=res.return_code, detail=detail)
        if bad:
            log.info("unreadable command result lines", device=term.device.id, lines=bad)
        return "OK"

    def _ping(self, request: Request, address: str, body: bytes) -> str:
        self._terminal(request, address)
        return "OK"

    def _registry(self, request: Request, address: str, body: bytes) -> str:
        # PUSH 3.x registration (kittiu/thai_zkt, s0x90/zkteco-adms; details unverified): any stable code.
        serial = self._serial(request)
        if self._terminal(request, address) is None:
            raise Refused(403, "unknown terminal", log_key=f"unknown {serial}")
        return f"RegistryCode={hashlib.sha1(serial.lower().encode()).hexdigest()[:16]}"

    def _push_options(self, request: Request, address: str, body: bytes) -> str:
        # PUSH 3.x asks /iclock/push for its options after registering: the same block as the handshake.
        return self._handshake(request, address)

    # -- health ----------------------------------------------------------------------------------
    def _base_outcome(self, term: _Terminal, known_serial: str | None, known_firmware: str | None,
                      now: datetime) -> PollOutcome:
        serial = term.device.serial or ""
        firmware = term.info.firmware if term.info else (known_firmware or "")
        return PollOutcome(device_id=term.device.id, started_at=now, finished_at=now, ok=True, mode="count",
                           serial=serial,
                           previous_serial=known_serial if known_serial and known_serial != serial else None,
                           info=DeviceInfo(serial=serial, firmware=firmware), previous_firmware=known_firmware)

    def _outcome(self, term: _Terminal, *, ok: bool, error_kind: str | None = None, error: str | None = None) -> None:
        """Store and report one health observation of a push terminal (a heartbeat, INFO, or silence)."""
        now = self.clock()
        try:
            state = self.store.device_state(term.device.id)
            if ok:
                outcome = replace(self._base_outcome(term, state.serial, state.firmware, now), clock_skew_s=term.skew_s)
                if term.info is not None:
                    outcome = replace(outcome, counts=term.info.counts,
                                      previous_record_count=state.last_record_count)
            else:
                outcome = PollOutcome(device_id=term.device.id, started_at=now, finished_at=now, ok=False,
                                      error_kind=error_kind, error=error, transient=error_kind == "unreachable")
            self.store.save_poll(outcome, (), address=(term.last_address, 0) if ok and term.last_address else None)
        except StorageError as exc:
            outcome = PollOutcome(device_id=term.device.id, started_at=now, finished_at=now, ok=False,
                                  error_kind="storage", error=storage_error_text(exc))
        self._notify(outcome)

    def _notify(self, outcome: PollOutcome) -> None:
        for observer in list(self.observers):
            try:
                observer(outcome)
            except Exception:
                log.exception("poll observer failed", observer=getattr(observer, "__qualname__", repr(observer)))

    def sweep(self) -> None:
        """Silent terminals count as not answering; commands past push.command_timeout_s time out."""
        now = self.monotonic()
        limit = self.cfg.offline_after_s
        for term in list(self._terminals.values()):
            last = term.last_call if term.last_call is not None else self._started_at
            silent_s = now - last
            if silent_s < limit:
                continue
            with self._lock:
                term.reported_silent = True
            self._outcome(term, ok=False, error_kind="unreachable",
                          error=f"no call from the terminal for {silent_s:.0f} s (push.offline_after_s = {limit:g})")
        try:
            self.repo.forget_commands(self.clock() - timedelta(days=COMMANDS_KEPT_DAYS))
            for cmd in self.repo.expire_commands(self.clock(), self.cfg.command_timeout_s):
                log.warning("command timed out: the terminal never answered", device=cmd.device_id,
                            command=cmd.kind, command_id=cmd.id, queued_at=cmd.queued_at, state_before="sent"
                            if cmd.sent_at else "queued")
        except StorageError as exc:
            log.debug("command expiry skipped", error=storage_error_text(exc))


def _batch_occurrences(punches: list[Punch], body: bytes) -> list[Punch]:
    """Occurrence numbers of untrusted-time records (dead clock) made unique per upload body.

    normalize numbers such records 1, 2, ... within one batch; for a polled terminal a batch is the whole
    log, for a push terminal it is one upload, so two uploads of a dead-clock terminal would reuse 1 and
    lose a punch. The same body sent again (a resend) gets the same numbers, so it is still stored once.
    A resend cut into different batches can store such a record twice (never lose it).
    """
    if not any(pu.occurrence for pu in punches):
        return punches
    base = int.from_bytes(hashlib.sha1(body).digest()[:4], "big") % 999 * 1000
    return [replace(pu, occurrence=pu.occurrence + base) if pu.occurrence else pu for pu in punches]


def status_route(config: Config, repo: PushRepo) -> Route:
    """``GET /push`` on the status server: unknown terminals trying to push (serial, address, when) and the
    command queue, as JSON, under the status page's access rule (loopback, or http.status_token)."""
    async def endpoint(request: Request) -> Response:
        refused = check_access(request.client.host if request.client else None, request.headers,
                               request.query_params.get("token"), config.http.status_token)
        if refused is not None:
            return PlainTextResponse("status token required", status_code=refused)
        unknown = await run_in_threadpool(repo.unknown_terminals)
        commands = await run_in_threadpool(repo.commands)
        shown = [{**asdict(c), "text": command_summary(c.text)} for c in commands[-200:]]
        return JSONResponse({"unknown_terminals": unknown, "commands": shown})
    return Route("/push", endpoint, methods=["GET"])


def services(ctx: AppContext) -> list[Service]:
    """The push receiver, when a push terminal is configured and [push] is enabled (and its status route)."""
    if not ctx.config.push.enabled or not any(d.pushes for d in ctx.config.devices):
        return []
    repo = PushRepo(ctx.store.engine)
    ctx.http_routes.append(status_route(ctx.config, repo))
    return [PushReceiver(ctx.config, ctx.store, repo, ctx.poll_observers, scheduler=ctx.scheduler)]

"""Central mode: the ingest API office gateways forward to, and the BKD pull API.

    office forwarder --POST /api/v1/ingest/punches|health (gateway token)--> validate --> CentralStore
    BKD --GET /api/v1/punches|recap/daily|completeness|devices|gateways (API token)--> CentralStore --> export
``services(ctx)`` appends these Starlette routes to ``ctx.http_routes`` when ``[central] enabled``;
gateway.web.status serves them. Handlers parse and authorise on the event loop and run every database call
in Starlette's thread pool (SQLAlchemy is synchronous). Tokens live hashed in TOML files (see
TokenFile); the office of an ingested punch always comes from the gateway's token.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
import threading
import time
import tomllib
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import structlog
from sqlalchemy import Engine
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from gateway.central import export
from gateway.config import CentralConfig, Config
from gateway.humanize import duration_text
from gateway.models import Punch
from gateway.polling.normalize import state_name, verify_name
from gateway.services import AppContext, Service
from gateway.store.central import FEED_COLUMNS, CentralStore, PunchQuery, decode_cursor, encode_cursor
from gateway.store.schema import utcnow

log = structlog.get_logger(__name__)

API = "/api/v1"
#: Largest page a pull may ask for.
MAX_LIMIT = 10000
DEFAULT_LIMIT = 1000
#: Longest date range of a recap or completeness report.
MAX_RANGE_DAYS = 366
#: Batch receipts are kept this long (a replay later is still idempotent, just recomputed).
RECEIPT_DAYS = 30
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
_BATCH_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,99}$")
_DEVICE_TIME = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}$")


# --------------------------------------------------------------------------------------------------
# Tokens
# --------------------------------------------------------------------------------------------------

class TokenFileError(Exception):
    """A token file cannot be used (the message names the file and the entry)."""


@dataclass(frozen=True)
class Token:
    """One token entry: who it is, its hash, and the offices it may act for (None = every office)."""

    name: str
    digest: str
    offices: frozenset[str] | None


def hash_token(token: str) -> str:
    """The stored form of a token. Tokens are 256 random bits, so a plain SHA-256 cannot be reversed."""
    return "sha256:" + hashlib.sha256(token.encode()).hexdigest()


def load_tokens(path: Path, kind: str) -> list[Token]:
    """Read a token file; ``kind`` "gateway" entries must name exactly one office."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise TokenFileError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise TokenFileError(f"{path}: not a valid TOML token file: {exc}") from None
    entries = data.get("token", [])
    if not isinstance(entries, list):
        raise TokenFileError(f"{path}: 'token' must be an array of tables ([[token]])")
    tokens: list[Token] = []
    names: set[str] = set()
    for i, e in enumerate(entries):
        where = f"{path}: token #{i + 1}"
        if not isinstance(e, dict):
            raise TokenFileError(f"{where}: must be a table")
        name, digest, offices = e.get("name"), e.get("hash"), e.get("offices")
        if not isinstance(name, str) or not _NAME.match(name):
            raise TokenFileError(f"{where}: name must be 1-100 letters, digits, '_', '.' or '-'")
        if name in names:
            raise TokenFileError(f"{where}: duplicate name {name!r}")
        names.add(name)
        if not isinstance(digest, str) or not re.fullmatch(r"sha256:[0-9a-f]{64}", digest):
            raise TokenFileError(f"{where} ({name}): hash must be 'sha256:' + 64 hex digits "
                                 "(create entries with `fpgw central add-token`)")
        if offices is None or offices == ["*"]:
            scope = None
        elif isinstance(offices, list) and offices and all(isinstance(o, str) and o for o in offices):
            scope = frozenset(offices)
        else:
            raise TokenFileError(f"{where} ({name}): offices must be a list of office codes, or [\"*\"] for all")
        if kind == "gateway" and (scope is None or len(scope) != 1):
            raise TokenFileError(f"{where} ({name}): a gateway token must name exactly one office")
        tokens.append(Token(name, digest, scope))
    return tokens


class TokenFile:
    """Tokens of one file, re-read when the file changes (so add-token needs no restart)."""

    def __init__(self, path: Path, kind: str) -> None:
        self.path = path
        self.kind = kind
        self._lock = threading.Lock()
        self._stamp: tuple[float, int] | None = None
        self._tokens: list[Token] = []
        self._broken = False
        self.reload()

    def reload(self) -> None:
        """Read the file now (raises TokenFileError)."""
        st = self.path.stat()
        tokens = load_tokens(self.path, self.kind)
        with self._lock:
            self._tokens, self._stamp = tokens, (st.st_mtime, st.st_size)

    def refresh(self) -> None:
        """Re-read the file if it changed; an unreadable file keeps the previous tokens (logged once)."""
        try:
            st = self.path.stat()
            if (st.st_mtime, st.st_size) != self._stamp:
                self.reload()
                log.info("token file reloaded", file=str(self.path), tokens=len(self._tokens))
            self._broken = False
        except (OSError, TokenFileError) as exc:
            # Keep serving with the tokens we had; a half-written file must not lock everyone out.
            if not self._broken:
                log.warning("token file unreadable; keeping the previous tokens", file=str(self.path),
                            error=str(exc))
            self._broken = True

    def lookup(self, presented: str) -> Token | None:
        """The entry matching a presented token (constant-time comparison over every entry)."""
        self.refresh()
        digest = hash_token(presented)
        found = None
        with self._lock:
            for tok in self._tokens:
                if hmac.compare_digest(tok.digest, digest):
                    found = tok
        return found

    def tokens(self) -> list[Token]:
        """The current entries."""
        with self._lock:
            return list(self._tokens)


def add_token(path: Path, name: str, offices: list[str] | None, kind: str) -> str:
    """Mint a token, append its hash to the file (created 0600), and return the token (shown once)."""
    if not _NAME.match(name):
        raise TokenFileError(f"name {name!r}: use 1-100 letters, digits, '_', '.' or '-'")
    if kind == "gateway" and (not offices or len(offices) != 1 or offices == ["*"]):
        raise TokenFileError("a gateway token needs exactly one office (--offices 1801.01.02)")
    existing = load_tokens(path, kind) if path.exists() else []
    if any(t.name == name for t in existing):
        raise TokenFileError(f"{path}: a token named {name!r} already exists")
    token = secrets.token_urlsafe(32)
    scope = ", ".join(json.dumps(o) for o in offices) if offices else '"*"'
    entry = (f"\n[[token]]\nname = {json.dumps(name)}\nhash = \"{hash_token(token)}\"\noffices = [{scope}]\n"
             f"created = \"{utcnow().isoformat(timespec='seconds')}\"\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "a", encoding="utf-8") as f:
        if not existing and f.tell() == 0:
            f.write(f"# fpgw {kind} tokens: only SHA-256 hashes are stored. Manage with `fpgw central add-token`.\n")
        f.write(entry)
    load_tokens(path, kind)  # prove the file still parses
    return token


# --------------------------------------------------------------------------------------------------
# Errors and payload validation
# --------------------------------------------------------------------------------------------------

class ApiError(Exception):
    """An error answer: HTTP status, stable code, human message."""

    def __init__(self, status: int, code: str, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, dict(headers or {})

    def response(self) -> JSONResponse:
        """The JSON error document."""
        return JSONResponse({"error": self.code, "message": self.message}, status_code=self.status,
                            headers=self.headers)


class BadPayload(ApiError):
    """The request body is malformed (400, nothing stored)."""

    def __init__(self, message: str) -> None:
        super().__init__(400, "bad_payload", message)


def _str(obj: Mapping[str, Any], key: str, where: str, *, required: bool = True, nullable: bool = False) -> Any:
    if key not in obj or obj[key] is None:
        if required and not (nullable and key in obj):
            raise BadPayload(f"{where}.{key}: required")
        return None
    if not isinstance(obj[key], str):
        raise BadPayload(f"{where}.{key}: must be a string")
    return obj[key]


def _int(obj: Mapping[str, Any], key: str, where: str, default: int | None = None) -> int:
    v = obj.get(key, default)
    if v is None and default is not None:
        v = default
    if isinstance(v, bool) or not isinstance(v, int):
        raise BadPayload(f"{where}.{key}: must be an integer")
    return v


def _instant(text: str | None, *, aware: bool) -> datetime | None:
    if text is None:
        return None
    value = datetime.fromisoformat(text)  # ValueError -> rejected row
    if aware and value.tzinfo is None:
        raise ValueError("no UTC offset")
    if not aware and value.tzinfo is not None:
        raise ValueError("local time must not carry an offset")
    return value.astimezone(UTC) if aware else value


_LIMITS = {"device_id": 64, "device_serial": 64, "device_user_id": 64, "employee_id": 64, "timezone": 64,
           "state_name": 16, "verify_name": 24}


def parse_punch(obj: Any, i: int, office_code: str) -> tuple[Punch | None, str | None]:
    """A wire punch as (Punch, None), or (None, reason) when well-formed but unacceptable; raises BadPayload."""
    where = f"punches[{i}]"
    if not isinstance(obj, dict):
        raise BadPayload(f"{where}: must be an object")
    fields = {k: _str(obj, k, where) for k in ("device_id", "device_serial", "device_user_id", "device_time",
                                               "timezone")}
    office = _str(obj, "office_code", where, required=False)
    local_text = _str(obj, "local_time", where, required=False)
    utc_text = _str(obj, "utc_time", where, required=False)
    employee = _str(obj, "employee_id", where, required=False)
    sname = _str(obj, "state_name", where, required=False)
    vname = _str(obj, "verify_name", where, required=False)
    state, verify = _int(obj, "state", where), _int(obj, "verify", where)
    uid, workcode, raw_time = (_int(obj, "uid", where, 0), _int(obj, "workcode", where, 0),
                               _int(obj, "raw_time", where, -1))
    flags = obj.get("flags", [])
    if isinstance(flags, str):
        flags = [f for f in flags.split(",") if f]
    if not isinstance(flags, list) or not all(isinstance(f, str) for f in flags):
        raise BadPayload(f"{where}.flags: must be a list of strings")
    # Well-formed from here on; what follows rejects the row, not the batch.
    if office is not None and office != office_code:
        return None, f"office_mismatch: punch says {office!r} but this gateway's token is for {office_code!r}"
    texts = {**fields, "employee_id": employee, "state_name": sname, "verify_name": vname}
    for key, limit in _LIMITS.items():
        value = texts[key]
        if value is not None and len(value) > limit:
            return None, f"field_too_long: {key} is longer than {limit} characters"
    if not fields["device_serial"] or not fields["device_user_id"] or not fields["device_id"]:
        return None, "missing_identity: device_id, device_serial and device_user_id must not be empty"
    if not _DEVICE_TIME.match(fields["device_time"]):
        return None, f"bad_device_time: {fields['device_time'][:40]!r} is not 'YYYY-MM-DD HH:MM:SS'"
    try:
        ZoneInfo(fields["timezone"])
    except (ZoneInfoNotFoundError, ValueError):
        return None, f"unknown_timezone: {fields['timezone'][:64]!r}"
    try:
        local = _instant(local_text, aware=False)
        utc = _instant(utc_text, aware=True)
    except ValueError as exc:
        return None, f"bad_time: local_time/utc_time not ISO 8601 ({exc})"
    if ",".join(flags) and len(",".join(flags)) > 200:
        return None, "field_too_long: flags"
    return Punch(office_code=office_code, device_id=fields["device_id"], device_serial=fields["device_serial"],
                 device_user_id=fields["device_user_id"], device_time=fields["device_time"], local_time=local,
                 utc_time=utc, timezone=fields["timezone"], state=state, state_name=sname or state_name(state),
                 verify=verify, verify_name=vname or verify_name(verify), uid=uid, workcode=workcode,
                 raw_time=raw_time, employee_id=employee or None, flags=tuple(flags)), None


_DEVICE_STR = {"name": 200, "location": 200, "address": 255, "transport": 8, "serial": 64, "firmware": 100,
               "platform": 100, "device_name": 100, "mac": 32}
_DEVICE_INT = ("port", "last_record_count", "last_user_count", "records_cap", "users_cap")
_DEVICE_TIME_FIELDS = ("last_seen_at", "last_ok_at", "last_full_read_at", "last_punch_at", "last_new_punch_at")
_HEALTH_STATES = ("unknown", "online", "offline")


def parse_device(obj: Any, i: int) -> dict[str, Any]:
    """A wire device-health object as devices/device_health values; raises BadPayload."""
    where = f"devices[{i}]"
    if not isinstance(obj, dict):
        raise BadPayload(f"{where}: must be an object")
    dev_id = _str(obj, "device_id", where)
    if not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$", dev_id):
        raise BadPayload(f"{where}.device_id: 1-64 letters, digits, '_', '.' or '-'")
    out: dict[str, Any] = {"device_id": dev_id}
    for key, limit in _DEVICE_STR.items():
        v = _str(obj, key, where, required=False)
        if v is not None:
            out[key] = v[:limit]
    for key in _DEVICE_INT:
        if obj.get(key) is not None:
            out[key] = _int(obj, key, where)
    if obj.get("enabled") is not None:
        if not isinstance(obj["enabled"], bool):
            raise BadPayload(f"{where}.enabled: must be true or false")
        out["enabled"] = obj["enabled"]
    if obj.get("clock_skew_s") is not None:
        if isinstance(obj["clock_skew_s"], bool) or not isinstance(obj["clock_skew_s"], int | float):
            raise BadPayload(f"{where}.clock_skew_s: must be a number")
        out["clock_skew_s"] = float(obj["clock_skew_s"])
    for key in _DEVICE_TIME_FIELDS:
        out[key] = _aware(obj, key, where)
    health = obj.get("health") or {}
    if not isinstance(health, dict):
        raise BadPayload(f"{where}.health: must be an object")
    h: dict[str, Any] = {}
    state = health.get("state", "unknown")
    if state not in _HEALTH_STATES:
        raise BadPayload(f"{where}.health.state: must be one of {', '.join(_HEALTH_STATES)}")
    h["state"] = state
    for key in ("state_since", "last_failure_at", "muted_until"):
        h[key] = _aware(health, key, f"{where}.health")
    h["consecutive_failures"] = _int(health, "consecutive_failures", f"{where}.health", 0)
    for key, limit in (("last_error_kind", 32), ("last_error", 2000), ("mute_reason", 200)):
        v = _str(health, key, f"{where}.health", required=False)
        h[key] = v[:limit] if v is not None else None
    problems = health.get("problems") or {}
    if not isinstance(problems, dict):
        raise BadPayload(f"{where}.health.problems: must be an object")
    h["problems"] = problems
    out["health"] = h
    return out


def _aware(obj: Mapping[str, Any], key: str, where: str) -> datetime | None:
    v = _str(obj, key, where, required=False)
    if v is None:
        return None
    try:
        return _instant(v, aware=True)
    except ValueError:
        raise BadPayload(f"{where}.{key}: must be an ISO 8601 instant with offset, e.g. 2026-11-23T01:30:00Z"
                         ) from None


def _gateway_meta(doc: Mapping[str, Any], office_code: str) -> dict[str, Any]:
    meta = doc.get("gateway") or {}
    if not isinstance(meta, dict):
        raise BadPayload("gateway: must be an object")
    claimed = meta.get("office_code")
    if claimed is not None and claimed != office_code:
        raise ApiError(403, "office_forbidden",
                       f"this gateway's token is for office {office_code!r}, not {claimed!r}; fix [site] "
                       "office_code or ask BKD for the right token")
    return meta


def batch_digest(punches: Any, office_code: str = "") -> str:
    """Content digest of a batch (its punches and the office they are stored under): the same batch_id
    with another digest is a conflict, so a stored answer is never given for different content."""
    doc = {"office_code": office_code, "punches": punches}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


# --------------------------------------------------------------------------------------------------
# The API
# --------------------------------------------------------------------------------------------------

def _qdate(params: Mapping[str, str], key: str) -> date | None:
    text = params.get(key)
    if not text:
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise ApiError(400, "bad_parameter", f"{key}: must be a date like 2026-11-23") from None


class CentralApi:
    """Request handlers of the ingest and pull API over one CentralStore."""

    def __init__(self, config: CentralConfig, engine: Engine, *, workdays: tuple[int, ...] = (1, 2, 3, 4, 5),
                 gateway_tokens: TokenFile | None = None, api_tokens: TokenFile | None = None) -> None:
        self.config = config
        self.store = CentralStore(engine)
        self.workdays = workdays
        if gateway_tokens is None:
            if config.gateway_tokens_file is None:
                raise TokenFileError("[central] gateway_tokens_file is not set")
            gateway_tokens = TokenFile(config.gateway_tokens_file, "gateway")
        if api_tokens is None:
            if config.api_tokens_file is None:
                raise TokenFileError("[central] api_tokens_file is not set")
            api_tokens = TokenFile(config.api_tokens_file, "api")
        self.gateway_tokens, self.api_tokens = gateway_tokens, api_tokens
        self._last_problem: dict[str, str] = {}
        self._problem_lock = threading.Lock()

    # -- plumbing --------------------------------------------------------------------------------
    def routes(self) -> list[BaseRoute]:
        """The Starlette routes (all under /api/v1)."""
        return [
            Route(f"{API}/ingest/punches", self._wrap(self.ingest_punches), methods=["POST"]),
            Route(f"{API}/ingest/health", self._wrap(self.ingest_health), methods=["POST"]),
            Route(f"{API}/punches", self._wrap(self.punches), methods=["GET"]),
            Route(f"{API}/recap/daily", self._wrap(self.recap), methods=["GET"]),
            Route(f"{API}/completeness", self._wrap(self.completeness), methods=["GET"]),
            Route(f"{API}/devices", self._wrap(self.devices), methods=["GET"]),
            Route(f"{API}/gateways", self._wrap(self.gateways), methods=["GET"]),
            Route(f"{API}/openapi.json", self.openapi, methods=["GET"]),
        ]

    def app(self) -> Starlette:
        """A standalone Starlette app with just these routes (tests, benchmarks, embedding)."""
        return Starlette(routes=self.routes())

    @staticmethod
    def _wrap(handler: Callable[[Request], Any]) -> Callable[[Request], Any]:
        async def endpoint(request: Request) -> Response:
            try:
                return await handler(request)
            except ApiError as exc:
                return exc.response()
        endpoint.__name__ = handler.__name__
        return endpoint

    def _note(self, who: str, problem: str) -> None:
        # One log line per change of a client's problem, not one per request (gateways retry every minute).
        with self._problem_lock:
            previous = self._last_problem.get(who)
            if previous == problem or (previous is None and problem == "ok"):
                self._last_problem[who] = problem
                return
            if len(self._last_problem) > 10000:  # a scanner trying tokens from many addresses
                self._last_problem.clear()
            self._last_problem[who] = problem
        if problem == "ok":
            log.info("api client requests accepted again", client=who)
        else:
            log.warning("api request refused", client=who, problem=problem)

    def _bearer(self, request: Request, book: TokenFile) -> Token:
        header = request.headers.get("authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise ApiError(401, "unauthenticated", "send 'Authorization: Bearer <token>'",
                           {"WWW-Authenticate": 'Bearer realm="fpgw"'})
        tok = book.lookup(value.strip())
        if tok is None:
            host = request.client.host if request.client else "?"
            self._note(f"unknown@{host}", "bad_token")
            raise ApiError(401, "bad_token", "the token is not valid (revoked, mistyped, or for the other API)",
                           {"WWW-Authenticate": 'Bearer realm="fpgw", error="invalid_token"'})
        return tok

    async def _json_body(self, request: Request) -> Any:
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype != "application/json":
            raise ApiError(415, "unsupported_media_type", "send the body as application/json")
        limit = self.config.max_body_bytes
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            raise ApiError(413, "too_large", f"body larger than {limit} bytes; send smaller batches")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise ApiError(413, "too_large", f"body larger than {limit} bytes; send smaller batches")
        encoding = request.headers.get("content-encoding", "identity").strip().lower()
        if encoding == "gzip":
            try:
                # Bounded inflate: a small bomb must not expand past the body limit.
                d = zlib.decompressobj(16 + zlib.MAX_WBITS)
                raw = d.decompress(bytes(body), limit + 1)
                if len(raw) > limit or d.unconsumed_tail:
                    raise ApiError(413, "too_large", f"decompressed body larger than {limit} bytes")
            except zlib.error:
                raise ApiError(400, "bad_payload", "body is not valid gzip") from None
        elif encoding in ("identity", ""):
            raw = bytes(body)
        else:
            raise ApiError(415, "unsupported_media_type", f"content-encoding {encoding!r} (use gzip or none)")
        try:
            return json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ApiError(400, "bad_json", f"body is not valid JSON: {exc}") from None

    # -- ingest ----------------------------------------------------------------------------------
    async def _batch_body(self, request: Request, key: str, *, hint: str = "") -> tuple[dict[str, Any], list[Any]]:
        """The JSON object of an ingest request and its list under ``key``, within central.max_batch."""
        doc = await self._json_body(request)
        if not isinstance(doc, dict):
            raise BadPayload("body must be a JSON object")
        raw = doc.get(key)
        if not isinstance(raw, list):
            raise BadPayload(f"{key}: required, a list")
        if len(raw) > self.config.max_batch:
            raise ApiError(413, "batch_too_large",
                           f"{len(raw)} {key} in one request; at most {self.config.max_batch}{hint}")
        return doc, raw

    async def ingest_punches(self, request: Request) -> Response:
        """POST /ingest/punches: store a batch idempotently; per-punch results."""
        tok = self._bearer(request, self.gateway_tokens)
        office = next(iter(tok.offices or ()))
        try:
            doc, raw = await self._batch_body(request, "punches", hint=" (forward.batch_size)")
            batch_id = doc.get("batch_id")
            if not isinstance(batch_id, str) or not _BATCH_ID.match(batch_id):
                raise BadPayload("batch_id: required, 1-100 letters, digits, '_', '.', ':' or '-'")
            meta = _gateway_meta(doc, office)
            parsed = [parse_punch(p, i, office) for i, p in enumerate(raw)]
        except ApiError as exc:
            self._note(tok.name, exc.code)
            raise
        digest = batch_digest(raw, office)
        host = request.client.host if request.client else None

        def store() -> tuple[dict[str, Any], bool]:
            prior = self.store.receipt(tok.name, batch_id)
            if prior is not None:
                if prior[0] != digest:
                    raise ApiError(409, "batch_conflict", f"batch_id {batch_id!r} was already used for other punches")
                return prior[1], True
            return self.store.ingest_punches(
                gateway=tok.name, office_code=office, batch_id=batch_id, digest=digest,
                punches=[p for p, _ in parsed], rejected={i: r for i, (_, r) in enumerate(parsed) if r},
                remote_addr=host, meta=meta)

        answer, replayed = await run_in_threadpool(store)
        self._note(tok.name, "ok")
        if answer["rejected"] and not replayed:
            log.info("punches rejected from a gateway", gateway=tok.name, office=office, rejected=answer["rejected"],
                     reasons=sorted({r["reason"].split(":")[0] for r in answer["results"]
                                     if r["status"] == "rejected"}))
        return JSONResponse(answer, headers={"X-Fpgw-Replayed": "1"} if replayed else None)

    async def ingest_health(self, request: Request) -> Response:
        """POST /ingest/health: upsert the office's devices and their health."""
        tok = self._bearer(request, self.gateway_tokens)
        office = next(iter(tok.offices or ()))
        try:
            doc, raw = await self._batch_body(request, "devices")
            meta = _gateway_meta(doc, office)
            devices = [parse_device(d, i) for i, d in enumerate(raw)]
        except ApiError as exc:
            self._note(tok.name, exc.code)
            raise
        host = request.client.host if request.client else None
        n = await run_in_threadpool(lambda: self.store.ingest_health(
            gateway=tok.name, office_code=office, devices=devices, remote_addr=host, meta=meta))
        self._note(tok.name, "ok")
        return JSONResponse({"office_code": office, "devices": n})

    # -- pull ------------------------------------------------------------------------------------
    def _scope(self, request: Request) -> tuple[Token, str | None]:
        tok = self._bearer(request, self.api_tokens)
        office = request.query_params.get("office") or None
        if office and tok.offices is not None and office not in tok.offices:
            raise ApiError(403, "office_forbidden", f"this token may not read office {office!r}")
        return tok, office

    @staticmethod
    def _format(request: Request) -> str:
        fmt = request.query_params.get("format", "json")
        if fmt not in export.FORMATS:
            raise ApiError(400, "bad_parameter", f"format: one of {', '.join(export.FORMATS)}")
        return fmt

    def _range(self, request: Request, *, required: bool) -> tuple[date | None, date | None]:
        params = request.query_params
        day = _qdate(params, "date")
        start, end = (day, day) if day else (_qdate(params, "from"), _qdate(params, "to"))
        if required and (start is None or end is None):
            raise ApiError(400, "bad_parameter", "give date=YYYY-MM-DD or both from= and to=")
        if start and end:
            if start > end:
                raise ApiError(400, "bad_parameter", "from is after to")
            if required and (end - start).days >= MAX_RANGE_DAYS:
                raise ApiError(400, "bad_parameter", f"at most {MAX_RANGE_DAYS} days per request")
        return start, end

    @staticmethod
    def _file(body: bytes, fmt: str, stem: str, headers: Mapping[str, str] | None = None) -> Response:
        h = dict(headers or {})
        if fmt != "json":
            h["Content-Disposition"] = f'attachment; filename="{stem}.{fmt}"'
        return Response(body, media_type=export.MEDIA_TYPES[fmt], headers=h)

    async def punches(self, request: Request) -> Response:
        """GET /punches: the incremental feed by cursor, with filters."""
        tok, office = self._scope(request)
        params = request.query_params
        fmt = self._format(request)
        try:
            after = decode_cursor(params.get("cursor"))
        except ValueError as exc:
            raise ApiError(400, "bad_cursor", f"cursor: {exc}") from None
        try:
            limit = int(params.get("limit", DEFAULT_LIMIT))
        except ValueError:
            raise ApiError(400, "bad_parameter", "limit: must be a number") from None
        if not 1 <= limit <= MAX_LIMIT:
            raise ApiError(400, "bad_parameter", f"limit: 1 to {MAX_LIMIT}")
        start, end = self._range(request, required=False)
        q = PunchQuery(offices=tok.offices, office=office, device=params.get("device") or None,
                       employee=params.get("employee") or None, date_from=start, date_to=end)
        rows, last = await run_in_threadpool(self.store.feed, q, after, limit)
        cursor = encode_cursor(last)
        more = len(rows) == limit
        body = export.render(rows, fmt, FEED_COLUMNS, extra={"next_cursor": cursor, "count": len(rows),
                                                             "has_more": more})
        return self._file(body, fmt, "punches", {"X-Next-Cursor": cursor, "X-Has-More": "1" if more else "0"})

    async def recap(self, request: Request) -> Response:
        """GET /recap/daily: first in, last out and punch count per employee and day."""
        tok, office = self._scope(request)
        fmt = self._format(request)
        start, end = self._range(request, required=True)
        q = PunchQuery(offices=tok.offices, office=office, employee=request.query_params.get("employee") or None,
                       date_from=start, date_to=end)
        items = await run_in_threadpool(lambda: export.daily_recap(self.store.iter_punches(q)))
        body = export.render(items, fmt, export.RECAP_COLUMNS, sheet="recap",
                             extra={"from": start, "to": end})
        return self._file(body, fmt, f"recap-{start}-{end}")

    async def completeness(self, request: Request) -> Response:
        """GET /completeness: which devices reported punches on which days."""
        tok, office = self._scope(request)
        fmt = self._format(request)
        start, end = self._range(request, required=True)
        assert start is not None and end is not None
        q = PunchQuery(offices=tok.offices, office=office, date_from=start, date_to=end)

        def build() -> dict[str, Any]:
            return export.completeness(self.store.iter_punches(q), self.store.devices(tok.offices, office),
                                       start, end, self.workdays)

        report = await run_in_threadpool(build)
        if fmt == "json":
            return JSONResponse(export.jsonable(report))
        rows, columns = export.completeness_table(report)
        return self._file(export.render(rows, fmt, columns, sheet="completeness"), fmt,
                          f"completeness-{start}-{end}")

    async def devices(self, request: Request) -> Response:
        """GET /devices: every terminal of the regency (or of the token's offices) with its health."""
        tok, office = self._scope(request)
        items = await run_in_threadpool(self.store.devices, tok.offices, office)
        return JSONResponse({"items": export.jsonable(items)})

    async def gateways(self, request: Request) -> Response:
        """GET /gateways: the office gateways, their last contact and their forwarding backlog."""
        tok, office = self._scope(request)
        items = await run_in_threadpool(lambda: self.store.gateways(
            tok.offices, silent_after_s=self.config.gateway_silent_after_s))
        if office:
            items = [g for g in items if g["office_code"] == office]
        return JSONResponse({"items": export.jsonable(items)})

    async def openapi(self, request: Request) -> Response:
        """GET /openapi.json: the API description (no token needed)."""
        return Response(openapi_bytes(), media_type="application/json")


def openapi_bytes() -> bytes:
    """The shipped OpenAPI document."""
    return (resources.files("gateway.central") / "openapi.json").read_bytes()


# --------------------------------------------------------------------------------------------------
# Service
# --------------------------------------------------------------------------------------------------

#: Problem name of the silent-gateway alert (alerts.problem).
PROBLEM_SILENT = "gateway_silent"
#: What the maintenance team should check when an office gateway stops reporting.
CHECKS_SILENT = (
    "Is the office's gateway server powered on and running (power cut, UPS, someone switched it off)? "
    "Call the office.",
    "Is the office internet link up? From the office server: curl -sI <forward.url>/api/v1/openapi.json",
    "On the office server: `systemctl status fpgw` (is the service running, or crashing?) and "
    "`fpgw forward status` (backlog and last upstream error; HTTP 401/403 means its token is wrong or revoked).",
    "Punches are kept in the office's outbox and arrive here by themselves once it reports again; "
    "nothing has to be re-sent by hand.",
    "If the office gateway was retired, delete its token from the gateway tokens file to stop these alerts.",
)
#: Seconds between silent-gateway checks (shorter when gateway_silent_after_s is very short).
SILENT_CHECK_EVERY_S = 60.0
#: kv key: when the silent check last ran (tells a restart from an outage of the central itself).
_HEARTBEAT_KEY = "central.silent_check_at"
#: A gap this long since the last check means the central itself was down: gateways then get
#: gateway_silent_after_s to come back (they may sit in their retry backoff) before anyone is called silent.
CENTRAL_OUTAGE_S = 300.0


class CentralService:
    """The central API's housekeeping on the scheduler: receipt pruning and the silent-gateway watch."""

    name = "central"

    def __init__(self, ctx: AppContext, api: CentralApi, *, clock: Callable[[], datetime] = utcnow,
                 check_every_s: float | None = None) -> None:
        self.ctx = ctx
        self.api = api
        self.clock = clock
        self.silent_after_s = api.config.gateway_silent_after_s
        self.check_every_s = check_every_s or min(SILENT_CHECK_EVERY_S, max(1.0, self.silent_after_s / 4))
        #: While set, gateways that went quiet before this instant are not called silent yet (the central
        #: itself was down; see CENTRAL_OUTAGE_S).
        self.grace_from: datetime | None = None
        self._lock = threading.Lock()
        self._failing = False

    def start(self) -> None:
        """Register the daily receipt pruning and the silent-gateway check."""
        self.grace_from = self._outage_grace(self.clock())
        self.ctx.scheduler.add_job(self._prune, "interval", hours=24, id="central:prune", replace_existing=True,
                                   executor="housekeeping", next_run_time=datetime.now(UTC) + timedelta(minutes=5))
        self.ctx.scheduler.add_job(self.check_silent, "interval", seconds=self.check_every_s,
                                   id="central:silent-gateways", replace_existing=True, executor="housekeeping",
                                   max_instances=1, coalesce=True, misfire_grace_time=int(self.check_every_s) + 30,
                                   next_run_time=datetime.now(UTC) + timedelta(seconds=self.check_every_s))
        log.info("central API enabled", gateway_tokens=len(self.api.gateway_tokens.tokens()),
                 api_tokens=len(self.api.api_tokens.tokens()), gateway_silent_after_s=self.silent_after_s)

    def _prune(self) -> None:
        n = self.api.store.prune_receipts(utcnow() - timedelta(days=RECEIPT_DAYS))
        if n:
            log.debug("old ingest receipts pruned", receipts=n)

    def _outage_grace(self, now: datetime) -> datetime | None:
        try:
            text = self.api.store.get_fact(_HEARTBEAT_KEY)
            last = datetime.fromisoformat(text) if text else None
        except (ValueError, TypeError):
            last = None
        except Exception:
            log.exception("could not read the silent-check heartbeat")
            last = None
        if last is not None and (now - last).total_seconds() <= max(CENTRAL_OUTAGE_S, 3 * self.check_every_s):
            return None  # a plain restart: keep watching as before
        log.info("central was not watching gateways recently; giving them time to report before any silent alert",
                 last_check=last.isoformat() if last else None, grace_s=self.silent_after_s)
        return now

    # -- silent gateways -------------------------------------------------------------------------
    def check_silent(self, now: datetime | None = None) -> list[tuple[str, str]]:
        """Open, remind and close silent-gateway alerts; returns (gateway, event) of the alerts written.

        Same rules as device problems: one start, a reminder every alerts.reminder_s while it lasts, one end
        when the gateway reports again. The state lives in the gateways table and is changed together with
        the alert row, so a restart (or a second central process) never alerts twice.
        """
        now = now or self.clock()
        written: list[tuple[str, str]] = []
        try:
            with self._lock:
                written = self._check(now)
                self.api.store.set_fact(_HEARTBEAT_KEY, now.isoformat())
        except Exception:
            # One traceback per failure streak (a database outage would otherwise log one every minute).
            if not self._failing:
                log.exception("silent-gateway check failed; retrying every check")
            self._failing = True
            return written
        if self._failing:
            log.info("silent-gateway check works again")
            self._failing = False
        if written and self.ctx.health is not None:
            self.ctx.health.deliver_pending()  # deliver now, not at the next health sweep
        return written

    def _check(self, now: datetime) -> list[tuple[str, str]]:
        tokens = self.api.gateway_tokens
        tokens.refresh()
        watched = {t.name for t in tokens.tokens()}
        reminder_s = self.ctx.config.alerts.reminder_s
        out: list[tuple[str, str]] = []
        for g in self.api.store.silent_watch_rows():
            name, last = g["name"], g["last_seen_at"]
            quiet_s = (now - last).total_seconds()
            silent = quiet_s > self.silent_after_s
            if g["silent_since"] is None:
                if not silent or name not in watched:
                    continue
                if self.grace_from is not None and (now - self.grace_from).total_seconds() <= self.silent_after_s:
                    continue
                if self.api.store.open_silent(name, last_seen_at=last, now=now,
                                              alert=self._alert(g, "start", now, quiet_s)):
                    log.warning("office gateway silent", gateway=name, office=g["office_code"],
                                last_contact=last.isoformat(), silent_for=duration_text(quiet_s),
                                backlog=g["outbox_depth"])
                    out.append((name, "start"))
            elif name not in watched:
                if self.api.store.close_silent(name, silent_since=g["silent_since"],
                                               alert=self._alert(g, "end", now, quiet_s, retired=True)):
                    log.info("silent office gateway no longer watched (token removed)", gateway=name)
                    out.append((name, "end"))
            elif not silent:
                outage_s = (last - g["silent_since"]).total_seconds()
                if self.api.store.close_silent(name, silent_since=g["silent_since"],
                                               alert=self._alert(g, "end", now, outage_s)):
                    log.info("office gateway reporting again", gateway=name, office=g["office_code"],
                             outage=duration_text(outage_s), backlog=g["outbox_depth"])
                    out.append((name, "end"))
            elif self._reminder_due(g["silent_notified_at"], now, reminder_s) and self.api.store.remind_silent(
                    name, notified_at=g["silent_notified_at"], now=now,
                    alert=self._alert(g, "reminder", now, quiet_s)):
                log.warning("office gateway still silent", gateway=name, office=g["office_code"],
                            silent_for=duration_text(quiet_s))
                out.append((name, "reminder"))
        return out

    @staticmethod
    def _reminder_due(notified_at: datetime | None, now: datetime, reminder_s: float) -> bool:
        return reminder_s > 0 and (notified_at is None or (now - notified_at).total_seconds() >= reminder_s)

    def _alert(self, g: Mapping[str, Any], event: str, now: datetime, duration_s: float, *,
               retired: bool = False) -> dict[str, Any]:
        """The alerts-table row (and webhook document) for one silent-gateway event."""
        site = self.ctx.config.site
        name, code, office_name = g["name"], g["office_code"], g.get("office_name") or ""
        office = f"{office_name} ({code})" if office_name else code
        last: datetime = g["last_seen_at"]
        since: datetime = g["silent_since"] or last
        depth, oldest = g["outbox_depth"], g["oldest_unforwarded_s"]
        backlog = ("no backlog figure reported" if depth is None else
                   f"{depth} punch(es) waiting" + (f", the oldest {duration_text(oldest)} old" if oldest else ""))
        where = ", ".join(x for x in (f"from {g['remote_addr']}" if g.get("remote_addr") else "",
                                      f"host {g['hostname']}" if g.get("hostname") else "",
                                      f"fpgw {g['version']}" if g.get("version") else "") if x)
        contact = f"{last.astimezone(UTC):%Y-%m-%d %H:%M} UTC" + (f" ({where})" if where else "")
        if event == "end" and retired:
            word, severity = "RESOLVED", "info"
            headline = f"Office gateway {name} - {office}: no longer watched (its token was removed)"
            message = (f"RESOLVED The office gateway {name} of {office} is no longer watched: its token was removed "
                       f"from the gateway tokens file. Last contact {contact}.")
        elif event == "end":
            word, severity = "RESOLVED", "info"
            headline = f"Office gateway {name} - {office} reporting again after {duration_text(duration_s)}"
            message = (f"RESOLVED The office gateway {name} of {office} reports again after "
                       f"{duration_text(duration_s)} of silence (contact {contact}). It now reports {backlog}; "
                       "they arrive by themselves.")
        else:
            word = "PROBLEM" if event == "start" else "STILL OPEN"
            severity = "critical"
            headline = f"Office gateway {name} - {office} silent for {duration_text(duration_s)}"
            message = (f"{word} [critical] The office gateway {name} of {office} has not reported to the central "
                       f"server for {duration_text(duration_s)} (alert after "
                       f"{duration_text(self.silent_after_s)}). Last contact {contact}. At its last contact it "
                       f"reported {backlog}. No punches or device health from this office arrive until it "
                       "reports again; punches are kept at the office meanwhile.")
        gateway = {"name": name, "office_code": code, "office_name": office_name or None,
                   "last_contact_at": last.isoformat(), "last_batch_at": _iso(g.get("last_batch_at")),
                   "last_health_at": _iso(g.get("last_health_at")), "remote_addr": g.get("remote_addr"),
                   "hostname": g.get("hostname"), "version": g.get("version"),
                   "outbox_depth": depth, "oldest_unforwarded_s": oldest}
        seen = {**gateway, "silent_for_s": round(duration_s, 1), "silent_after_s": self.silent_after_s}
        return {"office_code": site.office_code, "problem": PROBLEM_SILENT, "event": event, "severity": severity,
                "title": f"[{word}] {headline}", "message": message, "details": seen,
                "checks": CHECKS_SILENT if event != "end" else (), "office_name": office_name, "at": now,
                "extra": {"office": {"code": code, "name": office_name}, "gateway": gateway,
                          "since": since.isoformat(), "duration_s": round(duration_s, 1)}}

    def stop(self, deadline_s: float) -> None:
        """Remove the jobs."""
        for job in ("central:prune", "central:silent-gateways"):
            try:
                self.ctx.scheduler.remove_job(job)
            except Exception:
                pass


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def build_api(config: Config, engine: Engine) -> CentralApi:
    """The API for a config with [central] enabled (raises TokenFileError on unusable token files)."""
    return CentralApi(config.central, engine, workdays=tuple(config.health.working_hours.days))


def services(ctx: AppContext) -> list[Service]:
    """Central mode's routes (added to ctx.http_routes) and its housekeeping service."""
    if not ctx.config.central.enabled:
        return []
    if not ctx.config.http.enabled:
        log.warning("central mode is on but [http] enabled = false: the ingest and BKD API are not served")
    if ctx.engine.dialect.name != "postgresql":
        log.warning("central mode on SQLite: fine for a trial, use PostgreSQL for a regency")
    api = build_api(ctx.config, ctx.engine)
    ctx.http_routes.extend(api.routes())
    ctx.central_api = api
    service = CentralService(ctx, api)
    ctx.central_service = service
    return [service]


class ThreadedServer:
    """uvicorn serving an ASGI app in a background thread on 127.0.0.1 (tests, benchmarks, tools)."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0, **uvicorn_options: Any) -> None:
        import socket

        import uvicorn

        # proto=IPPROTO_TCP matters: asyncio sets TCP_NODELAY on accepted sockets only when it is set,
        # and without it every keep-alive response stalls 40 ms on Nagle + delayed ACK.
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, port))
        self.host, self.port = self._sock.getsockname()[:2]
        self.server = uvicorn.Server(uvicorn.Config(app, log_config=None, lifespan="off", access_log=False,
                                                    **uvicorn_options))
        self.scheme = "https" if uvicorn_options.get("ssl_certfile") else "http"
        self._thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self._sock]},
                                        name=f"api-server-{self.port}", daemon=True)

    @property
    def url(self) -> str:
        """Base URL."""
        return f"{self.scheme}://{self.host}:{self.port}"

    def __enter__(self) -> ThreadedServer:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.should_exit = True
        self._thread.join(10)
        self._sock.close()

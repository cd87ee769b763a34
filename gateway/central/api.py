"""Central mode: the ingest API office gateways forward to, and the BKD pull API.

    office forwarder --POST /api/v1/ingest/punches|health (gateway token)--> gateway.wire decodes --> CentralStore
    BKD --GET /api/v1/punches|recap/daily|completeness|devices|gateways (API token)--> CentralStore --> export
``services(ctx)`` appends these Starlette routes to ``ctx.http_routes`` when ``[central] enabled``;
gateway.web.status serves them. Handlers parse and authorise on the event loop and run every database call
in Starlette's thread pool (SQLAlchemy is synchronous). Tokens live hashed in TOML files (gateway.central.tokens);
the office of an ingested punch comes from the gateway's token, or for a lower tier's token (several offices,
``1801.*``) from the punch, within the token's scope (docs/tiers.md). Every scope check is Token.allows.
The silent-gateway watch is gateway.central.silent. Dates in queries (date=, from=, to=) are office-local
days: each punch's own local wall-clock date at its office (see gateway.store.central.PunchQuery).
"""

from __future__ import annotations

import json
import threading
import zlib
from collections.abc import Callable, Mapping
from datetime import date
from importlib import resources
from typing import Any

import structlog
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from gateway import wire
from gateway.central import export
from gateway.central.tokens import Token, TokenFile, TokenFileError
from gateway.config import CentralConfig, Config
from gateway.store.central import (
    FEED_COLUMNS,
    BatchConflict,
    CentralStore,
    PunchQuery,
    decode_cursor,
    encode_cursor,
)
from gateway.wire import OfficeScope

log = structlog.get_logger(__name__)

API = "/api/v1"
#: Largest page a pull may ask for.
MAX_LIMIT = 10000
DEFAULT_LIMIT = 1000
#: Longest date range of a recap or completeness report.
MAX_RANGE_DAYS = 366


# --------------------------------------------------------------------------------------------------
# Errors
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


def _wire_error(exc: Exception, hint: str = "") -> ApiError:
    """The HTTP answer for a document gateway.wire refused."""
    if isinstance(exc, wire.TooManyItems):
        return ApiError(413, "batch_too_large", f"{exc}{hint}")
    if isinstance(exc, wire.OfficeMismatch):
        return ApiError(403, "office_forbidden", str(exc))
    return BadPayload(str(exc))


# --------------------------------------------------------------------------------------------------
# The API
# --------------------------------------------------------------------------------------------------

#: Dates a query may name (a day past them cannot be computed in year 9999; nothing is punched before 2000).
MIN_DATE, MAX_DATE = date(1970, 1, 1), date(9998, 12, 31)


def _qdate(params: Mapping[str, str], key: str) -> date | None:
    text = params.get(key)
    if not text:
        return None
    try:
        value = date.fromisoformat(text)
    except ValueError:
        raise ApiError(400, "bad_parameter", f"{key}: must be a date like 2026-11-23") from None
    if not MIN_DATE <= value <= MAX_DATE:
        raise ApiError(400, "bad_parameter", f"{key}: must be between {MIN_DATE} and {MAX_DATE}")
    return value


def _qtext(params: Mapping[str, str], key: str, limit: int) -> str | None:
    """A text query parameter that can be compared with a column: bounded, no NUL, valid text."""
    text = params.get(key) or None
    if text is None:
        return None
    problem = wire.text_problem(text, limit)
    if problem:
        raise ApiError(400, "bad_parameter", f"{key}: {problem}")
    return text


def _sender_scope(tok: Token) -> str | OfficeScope:
    """What a gateway token sends for: its one office, or a tier's scope of several (gateway.wire decodes by it)."""
    assert tok.offices is not None  # gateway tokens always name their offices (gateway.central.tokens)
    return tok.office or tok.offices


def _sender_office(tok: Token, meta: Mapping[str, Any]) -> str:
    """The office a sender's gateways row is kept under: its token's one office; for a tier the tier's own
    code from its ``gateway`` object (its scope as written when it sends none usable)."""
    if tok.office is not None:
        return tok.office
    claimed = meta.get("office_code")
    if isinstance(claimed, str) and wire.office_code_problem(claimed) is None:
        return claimed
    return tok.scope_text[:wire.OFFICE_CODE_MAX]


class CentralApi:
    """Request handlers of the ingest and pull API over one CentralStore."""

    def __init__(self, config: CentralConfig, store: CentralStore, *, workdays: tuple[int, ...] = (1, 2, 3, 4, 5),
                 gateway_tokens: TokenFile | None = None, api_tokens: TokenFile | None = None,
                 alert_office: str = "", forward_upstream: bool = False) -> None:
        self.config = config
        #: [central.upstream] is set: ingest queues each new punch in the outbox (same transaction) for the
        #: forwarder to send to the upper tier (docs/tiers.md).
        self.forward_upstream = forward_upstream
        #: The central's own office code: gateway-wide alerts (serial_bound_elsewhere) are queued under it.
        self.alert_office = alert_office
        self.store = store
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
        except RecursionError:
            raise ApiError(400, "bad_json", "body is nested too deeply") from None

    # -- ingest ----------------------------------------------------------------------------------
    async def ingest_punches(self, request: Request) -> Response:
        """POST /ingest/punches: store a batch idempotently; per-punch results."""
        tok = self._bearer(request, self.gateway_tokens)
        scope = _sender_scope(tok)
        try:
            doc = await self._json_body(request)
            try:
                batch = wire.decode_punch_batch(doc, scope, max_punches=self.config.max_batch)
            except (wire.WireError, wire.TooManyItems, wire.OfficeMismatch) as exc:
                raise _wire_error(exc, " (forward.batch_size)") from None
        except ApiError as exc:
            self._note(tok.name, exc.code)
            raise
        host = request.client.host if request.client else None
        office = _sender_office(tok, batch.gateway)

        def store() -> tuple[dict[str, Any], bool]:
            # One transaction decides it all, a replay included (its receipt is looked up there).
            try:
                return self.store.ingest_punches(
                    gateway=tok.name, office_code=office, batch_id=batch.batch_id, digest=batch.digest,
                    punches=[p for p, _ in batch.punches], rejected=batch.rejected, remote_addr=host,
                    meta=batch.gateway, alert_office=self.alert_office, forward=self.forward_upstream)
            except BatchConflict as exc:
                raise ApiError(409, "batch_conflict", str(exc)) from None

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
        scope = _sender_scope(tok)
        try:
            doc = await self._json_body(request)
            try:
                report = wire.decode_health_report(doc, scope, max_devices=self.config.max_batch)
            except (wire.WireError, wire.TooManyItems, wire.OfficeMismatch) as exc:
                raise _wire_error(exc) from None
        except ApiError as exc:
            self._note(tok.name, exc.code)
            raise
        host = request.client.host if request.client else None
        office = _sender_office(tok, report.gateway)
        n, refused = await run_in_threadpool(lambda: self.store.ingest_health(
            gateway=tok.name, office_code=office, devices=report.devices, remote_addr=host, meta=report.gateway,
            alert_office=self.alert_office))
        self._note(tok.name, "ok")
        # refused holds indexes into report.devices; answer with the report's own indexes.
        rejected = {**report.rejected, **{report.indexes[j]: reason for j, reason in refused.items()}}
        if rejected:
            log.info("device health rejected from a gateway", gateway=tok.name, office=office,
                     rejected=len(rejected), reasons=sorted({r.split(":")[0] for r in rejected.values()}))
        return JSONResponse({"office_code": office, "devices": n,
                             "rejected": [{"index": i, "reason": rejected[i]} for i in sorted(rejected)]})

    # -- pull ------------------------------------------------------------------------------------
    def _scope(self, request: Request) -> tuple[Token, str | None]:
        tok = self._bearer(request, self.api_tokens)
        office = _qtext(request.query_params, "office", 32)
        if office and not tok.allows(office):
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
            text = params.get("limit", str(DEFAULT_LIMIT))
            if len(text) > 12:
                raise ValueError(text)
            limit = int(text)
        except ValueError:
            raise ApiError(400, "bad_parameter", "limit: must be a number") from None
        if not 1 <= limit <= MAX_LIMIT:
            raise ApiError(400, "bad_parameter", f"limit: 1 to {MAX_LIMIT}")
        start, end = self._range(request, required=False)
        q = PunchQuery(offices=tok.offices, office_code=office, device_id=_qtext(params, "device", 64),
                       employee_id=_qtext(params, "employee", 64), date_from=start, date_to=end)
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
        q = PunchQuery(offices=tok.offices, office_code=office,
                       employee_id=_qtext(request.query_params, "employee", 64),
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
        q = PunchQuery(offices=tok.offices, office_code=office, date_from=start, date_to=end)

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
        # A tier's row carries the tier's own code: shown to tokens whose scope covers it (or every office).
        items = [g for g in items if tok.allows(g["office_code"])]
        return JSONResponse({"items": export.jsonable(items)})

    async def openapi(self, request: Request) -> Response:
        """GET /openapi.json: the API description (no token needed)."""
        return Response(openapi_bytes(), media_type="application/json")


def openapi_bytes() -> bytes:
    """The shipped OpenAPI document."""
    return (resources.files("gateway.central") / "openapi.json").read_bytes()


def build_api(config: Config, store: CentralStore) -> CentralApi:
    """The API for a config with [central] enabled (raises TokenFileError on unusable token files)."""
    return CentralApi(config.central, store, workdays=tuple(config.health.working_hours.days),
                      alert_office=config.site.office_code, forward_upstream=config.central.upstream is not None)

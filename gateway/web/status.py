"""Built-in HTTP server: status page (HTML), /status JSON, /healthz, /metrics, plus routes other services add.

    technician's phone / Prometheus / BKD --HTTP--> Starlette app (uvicorn in a worker thread)
        reads: ctx.health (health monitor snapshot), ctx.health_repo (devices, alerts), outbox stats
Loopback clients need no login; others need ``http.status_token`` (Bearer header or ``?token=``). Without a
token, a non-loopback listener refuses non-loopback clients (logged once at start). Routes in
``ctx.http_routes`` (central API) are mounted as given: they do their own auth.
"""

from __future__ import annotations

import hmac
import html
import ipaddress
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import structlog
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from gateway.config import Config
from gateway.health.alerts import CHECKS
from gateway.health.gateway import GATEWAY_CHECKS
from gateway.models import PROBLEMS, DeviceHealth
from gateway.services import AppContext, Service
from gateway.store.db import StorageError, storage_error_text
from gateway.store.health import AlertRow, HealthRepo
from gateway.store.push import PushRepo
from gateway.web.server import ThreadedServer, start_listener

log = structlog.get_logger(__name__)

#: Seconds between automatic reloads of the status page.
REFRESH_S = 30
_STATE_COLOUR = {"online": "#1b7f3b", "offline": "#b3261e", "unknown": "#6b6b6b"}
_SEV_COLOUR = {"critical": "#b3261e", "warning": "#a15c00", "info": "#2f5d8a"}
_STATE_WORD = {"online": "online", "offline": "offline", "unknown": "belum diketahui / unknown"}


def is_loopback(host: str | None) -> bool:
    """True for 127.0.0.0/8, ::1 and IPv4-mapped loopback."""
    if not host:
        return False
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host == "localhost"
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def check_access(client_host: str | None, headers: dict[str, str] | Any, query_token: str | None,
                 token: str | None) -> int | None:
    """None when the request may see the status; else the HTTP status to refuse with (401 or 403)."""
    if is_loopback(client_host):
        return None
    if not token:
        return 403
    auth = headers.get("authorization", "") if headers is not None else ""
    given = auth[7:].strip() if auth.lower().startswith("bearer ") else (query_token or "")
    if given and hmac.compare_digest(given.encode(), token.encode()):
        return None
    return 401


class StatusView:
    """Builds the status document from the monitor and the store."""

    def __init__(self, ctx: AppContext) -> None:
        self.ctx = ctx
        self.config: Config = ctx.config
        self.repo: HealthRepo = ctx.health_repo
        self.tz = ZoneInfo(ctx.config.site.timezone)

    def _healths(self) -> dict[str, DeviceHealth]:
        monitor = self.ctx.health
        if monitor is not None:
            return monitor.snapshot()
        return {h.device_id: h for h in self.repo.load_health()}

    def document(self, now: datetime | None = None) -> dict[str, Any]:
        """The /status JSON."""
        now = now or datetime.now(UTC)
        database_error = None
        try:
            healths = self._healths()
            rows = self.repo.devices()
            alerts = self.repo.list_alerts(limit=20)
        except StorageError as exc:
            # The page must still say what is wrong when the database cannot be read: the gateway line
            # (from memory) tells the team, the device list waits for the database.
            database_error = storage_error_text(exc)
            healths, rows, alerts = {}, [], []
        devices: list[dict[str, Any]] = []
        for r in rows:
            if not r.enabled:
                continue
            h = healths.get(r.device_id)
            problems = sorted(h.problems.values(), key=lambda p: PROBLEMS.index(p.name)
                              if p.name in PROBLEMS else 99) if h else []
            muted = r.muted_until if r.muted_until is not None and r.muted_until > now else None
            devices.append({
                "id": r.device_id, "name": r.name, "location": r.location, "address": r.address, "port": r.port,
                "serial": r.serial, "firmware": r.firmware, "state": h.state if h else "unknown",
                "state_since": _iso(h.state_since) if h else None,
                "muted_until": _iso(muted), "mute_reason": r.mute_reason if muted else None,
                "last_seen_at": _iso(r.last_seen_at), "last_ok_at": _iso(r.last_ok_at),
                "last_punch_at": _iso(r.last_punch_at), "last_new_punch_at": _iso(r.last_new_punch_at),
                "records": r.last_record_count, "records_cap": r.records_cap,
                "users": r.last_user_count, "users_cap": r.users_cap,
                "clock_skew_s": None if r.clock_skew_s is None else round(r.clock_skew_s, 1),
                "consecutive_failures": h.consecutive_failures if h else 0,
                "last_error_kind": h.last_error_kind if h else None,
                "problems": [{"name": p.name, "severity": p.severity, "since": _iso(p.since), "detail": p.detail,
                              "notice": p.notice, "check": list(CHECKS.get(p.name, ()))} for p in problems],
            })
        states = [d["state"] for d in devices]
        outbox = None
        if self.config.forward.url:
            try:
                from gateway.web.metrics import outbox_reader

                depth, age = outbox_reader(self.ctx.outbox)()
                outbox = {"depth": depth, "oldest_age_s": None if age is None else round(age)}
            except Exception:  # the page must render even if the outbox query fails
                outbox = None
        return {
            "gateway": self._gateway(database_error),
            "office": {"code": self.config.site.office_code, "name": self.config.site.office_name},
            "generated_at": _iso(now),
            "summary": {"devices": len(devices), "online": states.count("online"),
                        "offline": states.count("offline"), "unknown": states.count("unknown"),
                        "open_problems": sum(1 for d in devices for p in d["problems"] if not p["notice"])},
            "devices": devices,
            "outbox": outbox,
            "recent_alerts": [_alert_json(a) for a in alerts],
            "unknown_terminals": self._unknown_terminals(),
        }

    def _unknown_terminals(self) -> list[dict[str, Any]]:
        """Terminals pushing with a serial no configured device has (gateway.push records them): serial,
        address, first/last seen. Only when the push receiver runs; [] when the database cannot say."""
        if not self.config.push.enabled or not any(d.pushes for d in self.config.devices):
            return []
        try:
            rows = PushRepo(self.ctx.store.engine).unknown_terminals()
        except StorageError:
            return []
        keys = ("serial", "address", "first_seen", "last_seen", "requests")
        return [{k: r.get(k) for k in keys} for r in rows[:50]]

    def _gateway(self, database_error: str | None) -> dict[str, Any]:
        """The gateway's own health: database and disk problems (never a device's)."""
        monitor = self.ctx.health
        problems, free = monitor.gateway_health() if monitor is not None else ([], None)
        return {"state": "problem" if problems or database_error else "ok", "disk_free_bytes": free,
                "database_error": database_error,
                "problems": [{"name": p.name, "severity": p.severity, "since": _iso(p.since), "detail": p.detail,
                              "check": list(GATEWAY_CHECKS.get(p.name, ()))} for p in problems]}

    # -- HTML ------------------------------------------------------------------------------------------
    def local(self, iso: str | None) -> str:
        """ISO UTC text -> short local time for the page."""
        if not iso:
            return "-"
        return datetime.fromisoformat(iso).astimezone(self.tz).strftime("%d-%m %H:%M")

    def page(self, doc: dict[str, Any]) -> str:
        """The status page: server-rendered, phone-sized, refreshes itself, works without JavaScript."""
        e = html.escape
        office = doc["office"]
        s = doc["summary"]
        cards = []
        # Worst first: a technician on a phone sees what needs a visit without scrolling.
        def rank(d: dict[str, Any]) -> tuple[int, str]:
            bad = [p for p in d["problems"] if not p["notice"]]
            return (0 if d["state"] == "offline" else 1 if any(p["severity"] == "critical" for p in bad)
                    else 2 if bad else 3 if d["state"] == "unknown" else 4, d["id"])

        for d in sorted(doc["devices"], key=rank):
            colour = _STATE_COLOUR.get(d["state"], "#6b6b6b")
            rows = []
            if d["records"] is not None:
                cap = f" / {d['records_cap']}" if d["records_cap"] else ""
                pct = f" ({d['records'] / d['records_cap']:.0%})" if d["records_cap"] else ""
                rows.append(("Rekaman / records", f"{d['records']}{cap}{pct}"))
            if d["users"] is not None:
                rows.append(("Pengguna / users", f"{d['users']}" + (f" / {d['users_cap']}" if d["users_cap"] else "")))
            rows.append(("Terakhir terlihat / last seen", self.local(d["last_seen_at"])))
            rows.append(("Absen terakhir / last punch", self.local(d["last_punch_at"])))
            if d["clock_skew_s"] is not None:
                rows.append(("Selisih jam / clock skew", f"{round(d['clock_skew_s']):+d} s"))
            if d["serial"]:
                rows.append(("Serial", d["serial"]))
            table = "".join(f"<tr><th>{e(k)}</th><td>{e(str(v))}</td></tr>" for k, v in rows)
            probs = []
            for p in d["problems"]:
                checks = "".join(f"<li>{e(c)}</li>" for c in p["check"])
                probs.append(
                    f'<div class="prob" style="border-color:{_SEV_COLOUR.get(p["severity"], "#555")}">'
                    f'<b class="sev" style="color:{_SEV_COLOUR.get(p["severity"], "#555")}">'
                    f'{e(p["name"].replace("_", " "))}</b> <small>{e(p["severity"])}, sejak/since '
                    f'{e(self.local(p["since"]))}</small><div>{e(p["detail"])}</div>'
                    + (f"<details><summary>Periksa / what to check</summary><ul>{checks}</ul></details>"
                       if checks else "") + "</div>")
            muted = (f'<div class="muted">Dibisukan / muted until {e(self.local(d["muted_until"]))}'
                     + (f": {e(d['mute_reason'])}" if d["mute_reason"] else "") + "</div>") if d["muted_until"] else ""
            cards.append(
                f'<section class="dev" id="dev-{e(d["id"])}" data-state="{e(d["state"])}">'
                f'<h2><span class="dot" style="background:{colour}"></span>{e(d["name"] or d["id"])} '
                f'<span class="state" style="color:{colour}">{e(_STATE_WORD.get(d["state"], d["state"]))}</span></h2>'
                f'<div class="sub">{e(d["id"])} &middot; {e(d["address"])}:{d["port"]}'
                + (f" &middot; {e(d['location'])}" if d["location"] else "") + "</div>"
                + muted + "".join(probs) + f"<table>{table}</table></section>")
        alerts = "".join(
            f'<li><span style="color:{_SEV_COLOUR.get(a["severity"], "#555")}">{e(a["event"])}</span> '
            f'{e(self.local(a["created_at"]))} {e(a["device_id"] or "-")}: {e(a["problem"].replace("_", " "))}'
            + (" (muted)" if a["muted"] else "") + "</li>"
            for a in doc["recent_alerts"][:10])
        outbox = ""
        if doc["outbox"] is not None:
            age = doc["outbox"]["oldest_age_s"]
            outbox = (f"<p>Antrian kirim / outbox: {doc['outbox']['depth']} punch"
                      + (f", tertua/oldest {age // 60} min" if age else "") + "</p>")
        gw = doc["gateway"]
        free = gw["disk_free_bytes"]
        free_text = f", disk {free / 1024 ** 3:.1f} GB free" if free is not None else ""
        gw_line = (f'<p class="gw" id="gateway" data-state="{e(gw["state"])}">Gateway: OK{e(free_text)}</p>'
                   if not gw["problems"] and not gw["database_error"] else
                   (f'<p class="gw" id="gateway">Gateway: database unreadable: {e(gw["database_error"])}</p>'
                    if gw["database_error"] else "") + "".join(
                       f'<div class="prob gw" id="gateway-{e(p["name"])}" data-state="problem" '
                       f'style="border-color:{_SEV_COLOUR.get(p["severity"], "#555")}"><b style="color:'
                       f'{_SEV_COLOUR.get(p["severity"], "#555")}">Gateway: {e(p["name"].replace("_", " "))}</b> '
                       f'<small>{e(p["severity"])}, sejak/since {e(self.local(p["since"]))}</small>'
                       f'<div>{e(p["detail"])}</div><details><summary>Periksa / what to check</summary><ul>'
                       + "".join(f"<li>{e(c)}</li>" for c in p["check"]) + "</ul></details></div>"
                       for p in gw["problems"]))
        unknown = "".join(
            f'<div class="prob" style="border-color:{_SEV_COLOUR.get("warning", "#b26a00")}">'
            f'<b>Terminal tak dikenal mencoba mengirim / unknown terminal trying to push</b>: '
            f'serial {e(str(u["serial"]))} dari/from {e(str(u["address"]))}, terakhir/last '
            f'{e(self.local(u["last_seen"]))}<div><small>Tambahkan / add it: '
            f'<code>fpgw devices add-push {e(str(u["serial"]))} --id &lt;id&gt;</code></small></div></div>'
            for u in doc.get("unknown_terminals") or [])
        title = f"Status perangkat absensi - {office['name'] or office['code']}"
        return f"""<!doctype html>
<html lang="id"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="refresh" content="{REFRESH_S}">
<title>{e(title)}</title>
<style>
body{{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;padding:12px;background:#f4f4f2;
color:#1d1d1d;font-size:16px}}
h1{{font-size:1.25rem;margin:0 0 4px}} .meta{{color:#555;font-size:.85rem;margin-bottom:10px}}
.summary{{display:flex;gap:8px;flex-wrap:wrap;margin-bottom:12px}}
.pill{{padding:6px 10px;border-radius:14px;background:#fff;border:1px solid #ddd;font-weight:600}}
.dev{{background:#fff;border-radius:10px;padding:10px 12px;margin-bottom:12px;border:1px solid #ddd}}
.dev h2{{font-size:1.1rem;margin:0;display:flex;align-items:center;gap:8px;flex-wrap:wrap}}
.dot{{width:14px;height:14px;border-radius:50%;display:inline-block;flex:none}}
.state{{font-size:.9rem;font-weight:700;text-transform:uppercase}}
.sub{{color:#666;font-size:.8rem;margin:2px 0 6px;word-break:break-all}}
.prob{{border-left:4px solid;padding:4px 8px;margin:6px 0;background:#fafafa}}
.prob small{{color:#666}} details{{margin-top:4px;font-size:.9rem}} ul{{padding-left:18px;margin:4px 0}}
.muted{{background:#eef2f7;padding:4px 8px;margin:6px 0;font-size:.9rem}}
table{{width:100%;border-collapse:collapse;font-size:.9rem}} th{{text-align:left;font-weight:normal;color:#555;
padding:2px 6px 2px 0;width:55%}} td{{padding:2px 0;font-variant-numeric:tabular-nums}}
.alerts li{{font-size:.85rem;margin:2px 0}}
</style></head><body>
<h1>{e(title)}</h1>
<div class="meta">{e(office['code'])} &middot; diperbarui/updated {e(self.local(doc['generated_at']))}
&middot; muat ulang otomatis tiap {REFRESH_S} s</div>
<div class="summary"><span class="pill">{s['devices']} perangkat</span>
<span class="pill" style="color:{_STATE_COLOUR['online']}">{s['online']} online</span>
<span class="pill" style="color:{_STATE_COLOUR['offline']}">{s['offline']} offline</span>
<span class="pill">{s['open_problems']} masalah/problems</span></div>
{gw_line}
{outbox}
{unknown}
{''.join(cards) or '<p>Belum ada perangkat / no devices configured.</p>'}
<h2 style="font-size:1rem">Peringatan terakhir / recent alerts</h2>
<ul class="alerts">{alerts or '<li>-</li>'}</ul>
</body></html>"""


def _iso(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z") if value else None


def _alert_json(a: AlertRow) -> dict[str, Any]:
    return {"id": a.id, "created_at": _iso(a.created_at), "device_id": a.device_id, "problem": a.problem,
            "event": a.event, "severity": a.severity, "title": a.title, "muted": a.muted,
            "delivered": a.delivered_at is not None}


def build_app(ctx: AppContext, *, registry: CollectorRegistry | None = None) -> Starlette:
    """The Starlette app: status routes guarded by the token rule, then ctx.http_routes as given."""
    view = StatusView(ctx)
    token = ctx.config.http.status_token
    registry = registry or ctx.metrics_registry

    def guard(request: Request) -> Response | None:
        refused = check_access(request.client.host if request.client else None, request.headers,
                               request.query_params.get("token"), token)
        if refused is None:
            return None
        if refused == 403:
            return PlainTextResponse("status is only served to this machine (set http.status_token to allow "
                                     "other clients)\n", status_code=403)
        return PlainTextResponse("token required (Authorization: Bearer <token> or ?token=)\n", status_code=401,
                                 headers={"WWW-Authenticate": "Bearer"})

    def index(request: Request) -> Response:
        return guard(request) or HTMLResponse(view.page(view.document()), headers={"Cache-Control": "no-store"})

    def status(request: Request) -> Response:
        return guard(request) or JSONResponse(view.document(), headers={"Cache-Control": "no-store"})

    def healthz(request: Request) -> Response:
        # Liveness only (no details): safe for any client, e.g. a load balancer or uptime checker.
        scheduler = ctx.scheduler
        alive = not ctx.stop_event.is_set() and bool(getattr(scheduler, "running", True))
        return JSONResponse({"ok": alive}, status_code=200 if alive else 503)

    def metrics(request: Request) -> Response:
        refused = guard(request)
        if refused is not None:
            return refused
        if registry is None:
            return PlainTextResponse("metrics registry not configured\n", status_code=404)
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    routes: list[BaseRoute] = [Route("/", index), Route("/status", status), Route("/healthz", healthz),
                               Route("/metrics", metrics)]
    routes[0:0] = ctx.http_routes  # first: the central's dashboard takes / in central mode
    return Starlette(routes=routes)


class HttpServer:
    """The daemon's HTTP service: the status app (plus ctx.http_routes) on a gateway.web.server.ThreadedServer."""

    name = "http"

    def __init__(self, ctx: AppContext) -> None:
        self.ctx = ctx
        self.config = ctx.config.http
        self._server: ThreadedServer | None = None
        self.port: int | None = None

    def start(self) -> None:
        """Bind and serve; raises when the address cannot be bound (a clear start failure)."""
        cfg = self.config
        if not is_loopback(cfg.listen) and not cfg.status_token:
            log.warning("http.listen is not loopback but no http.status_token is set: the status page, /status "
                        "and /metrics answer only clients on this machine", listen=cfg.listen)
        server = start_listener(build_app(self.ctx), what="HTTP server", section="http", listen=cfg.listen,
                                port=cfg.port, tls_cert_file=cfg.tls_cert_file, tls_key_file=cfg.tls_key_file,
                                thread_name="fpgw-http", request_timeout_s=cfg.request_timeout_s,
                                max_connections=cfg.max_connections)
        self._server = server
        self.port = server.port
        self.ctx.http_port = self.port
        log.info("status page serving", url=f"{server.scheme}://{cfg.listen}:{self.port}/")

    def stop(self, deadline_s: float) -> None:
        """Ask uvicorn to exit and join its thread."""
        if self._server is not None:
            self._server.stop(deadline_s)
        self._server = None


def services(ctx: AppContext) -> list[Service]:
    """The HTTP server (status page, JSON, metrics and other services' routes)."""
    if not ctx.config.http.enabled:
        return []
    return [HttpServer(ctx)]

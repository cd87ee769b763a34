"""Built-in HTTP server: status page (HTML), /status JSON, /healthz, /metrics, plus routes other services add.

    technician's phone / Prometheus / BKD --HTTP--> Starlette app (uvicorn in a worker thread)
        reads: ctx.health (health monitor snapshot), ctx.health_repo (devices, alerts), outbox stats
Loopback clients need no login; others need ``http.status_token`` (Bearer header or ``?token=``). Without a
token, a non-loopback listener refuses non-loopback clients (logged once at start). Routes in
``ctx.http_routes`` (central API) are mounted as given: they do their own auth.

"Poll now" (``POST /devices/{id}/poll``, the button on each polled terminal's card) passes the same access rule
and, because a browser on this machine is let in without a token, also a CSRF check: the form carries a token
only this process knows (HMAC of a per-start secret), and a request whose Sec-Fetch-Site or Origin names another
site is refused.
It only asks the daemon's scheduler (ctx.poll_now: gateway.polling.scheduler.PollScheduler.poll_now) to poll
that terminal as soon as possible: coalesced behind a running poll, never a second poll beside the schedule.
"""

from __future__ import annotations

import hmac
import html
import ipaddress
import secrets
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit
from zoneinfo import ZoneInfo

import structlog
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from gateway.config import Config
from gateway.health.alerts import CHECKS
from gateway.health.gateway import GATEWAY_CHECKS
from gateway.models import PROBLEMS, DeviceHealth
from gateway.services import AppContext, Service
from gateway.store.db import StorageError, storage_error_text
from gateway.store.health import AlertRow, HealthRepo
from gateway.store.push import PushRepo
from gateway.store.quarantine import QuarantineRepo
from gateway.web.checks_id import CHECKS_ID
from gateway.web.server import ThreadedServer, start_listener

log = structlog.get_logger(__name__)

#: Seconds between automatic reloads of the status page.
REFRESH_S = 30
_STATE_COLOUR = {"online": "#1b7f3b", "offline": "#b3261e", "unknown": "#6b6b6b"}
_SEV_COLOUR = {"critical": "#b3261e", "warning": "#a15c00", "info": "#2f5d8a"}
_STATE_WORD = {"online": "online", "offline": "offline", "unknown": "belum diketahui / unknown"}
#: A last punch this far past the server's clock is flagged (the terminal's clock runs ahead).
FUTURE_PUNCH_TOLERANCE = timedelta(minutes=5)


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
            # Input a terminal sent that is not a punch (serial lines, exports, SOAP rows): count per device.
            quarantined = QuarantineRepo(self.ctx.store.engine).counts()
        except StorageError as exc:
            # The page must still say what is wrong when the database cannot be read: the gateway line
            # (from memory) tells the team, the device list waits for the database.
            database_error = storage_error_text(exc)
            healths, rows, alerts, quarantined = {}, [], [], {}
        backups = self._enrol_backups()
        devices: list[dict[str, Any]] = []
        configured = {d.id: d for d in self.config.devices}
        polled = polled_device_ids(self.ctx)
        for r in rows:
            if not r.enabled:
                continue
            h = healths.get(r.device_id)
            device_config = configured.get(r.device_id)
            pushes = bool(device_config is not None and device_config.pushes)
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
                "quarantined": quarantined.get(r.device_id, 0),
                "problems": [{"name": p.name, "severity": p.severity, "since": _iso(p.since), "detail": p.detail,
                              "notice": p.notice, "check": list(CHECKS.get(p.name, ())),
                              "check_id": list(CHECKS_ID.get(p.name, ()))} for p in problems],
                # Added for the polished page (issue 13); the fields above keep their names and meanings.
                "last_error": h.last_error if h else None,
                "reason": state_reason(h, r.address, r.port, pushes=pushes),
                "last_punch_in_future": bool(r.last_punch_at is not None
                                             and r.last_punch_at > now + FUTURE_PUNCH_TOLERANCE),
                "pushes": pushes,
                # The running daemon's scheduler can poll it now (push terminals call us instead).
                "poll_now": r.device_id in polled,
                "enrol_backup": _backup_json(backups.get(r.device_id)),
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
            "office": {"code": self.config.site.office_code, "name": self.config.site.office_name,
                       "timezone": self.config.site.timezone},
            "generated_at": _iso(now),
            "summary": {"devices": len(devices), "online": states.count("online"),
                        "offline": states.count("offline"), "unknown": states.count("unknown"),
                        "open_problems": sum(1 for d in devices for p in d["problems"] if not p["notice"])},
            "devices": devices,
            "outbox": outbox,
            "recent_alerts": [_alert_json(a) for a in alerts],
            "unknown_terminals": self._unknown_terminals(),
        }

    def _enrol_backups(self) -> dict[str, dict[str, Any]]:
        """Last enrolment backup per device (docs/enrolment.md); {} when unavailable: the page renders anyway."""
        source = self.ctx.enrol_backups
        if source is None:
            return {}
        try:
            return source()
        except Exception:  # the page must render even if this query fails
            return {}

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
                              "check": list(GATEWAY_CHECKS.get(p.name, ())),
                              "check_id": list(CHECKS_ID.get(p.name, ()))} for p in problems]}

    # -- HTML ------------------------------------------------------------------------------------------
    def local(self, iso: str | None) -> str:
        """ISO UTC text -> office time with year and zone for the page (2026-12-01 08:05 WIB)."""
        if not iso:
            return "-"
        return datetime.fromisoformat(iso).astimezone(self.tz).strftime("%Y-%m-%d %H:%M %Z")

    def _checks(self, name: str, english: list[str], indonesian: list[str], severity: str) -> str:
        """The "what to check" list, Indonesian first with the English below; open for critical problems."""
        e = html.escape
        items = []
        for i, text in enumerate(english):
            local_text = indonesian[i] if i < len(indonesian) else ""
            items.append(f"<li>{e(local_text)}<br><small lang=\"en\">{e(text)}</small></li>" if local_text
                         else f"<li lang=\"en\">{e(text)}</li>")
        if not items:
            return ""
        opened = " open" if severity == "critical" else ""
        return (f'<details class="check" data-problem="{e(name)}"{opened}><summary>Periksa / what to check</summary>'
                f'<ul>{"".join(items)}</ul></details>')

    def page(self, doc: dict[str, Any], *, csrf: str = "", token_query: str = "", polled: str | None = None) -> str:
        """The status page: server-rendered, phone-sized, refreshes itself, works without JavaScript.

        ``csrf`` goes into each "poll now" form; ``token_query`` (``?token=...`` when the page was opened with
        one) into its action, so the POST passes the same access rule; ``polled`` names a device whose poll was
        just requested (shown once at the top)."""
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
                rows.append(("Rekaman / records", f"{d['records']}{cap}{pct}", ""))
            if d["users"] is not None:
                rows.append(("Pengguna / users", f"{d['users']}" + (f" / {d['users_cap']}" if d["users_cap"] else ""),
                              ""))
            rows.append(("Terakhir terlihat / last seen", self.local(d["last_seen_at"]), ""))
            future = d.get("last_punch_in_future")
            rows.append(("Absen terakhir / last punch", self.local(d["last_punch_at"])
                         + (" ⚠ di masa depan / in the future: jam mesin terlalu cepat? / device clock ahead?"
                            if future else ""), ' class="future"' if future else ""))
            if d["clock_skew_s"] is not None:
                rows.append(("Selisih jam / clock skew", f"{round(d['clock_skew_s']):+d} s", ""))
            if d["serial"]:
                rows.append(("Serial", d["serial"], ""))
            backup = d.get("enrol_backup")
            rows.append(("Cadangan sidik jari / enrolment backup",
                         f"{self.local(backup['at'])} ({backup['users']} / {backup['templates']})" if backup
                         else "belum / never", ""))
            table = "".join(f"<tr><th>{e(k)}</th><td{attr}>{e(str(v))}</td></tr>" for k, v, attr in rows)
            probs = []
            for p in d["problems"]:
                sev_colour = _SEV_COLOUR.get(p["severity"], "#555")
                probs.append(
                    f'<div class="prob" data-severity="{e(p["severity"])}" style="border-color:{sev_colour}">'
                    f'<b class="sev" style="color:{sev_colour}">'
                    f'{e(p["name"].replace("_", " "))}</b> <small>{e(p["severity"])}, sejak/since '
                    f'{e(self.local(p["since"]))}</small><div>{e(p["detail"])}</div>'
                    + self._checks(p["name"], p["check"], p.get("check_id") or [], p["severity"]) + "</div>")
            muted = (f'<div class="muted">Dibisukan / muted until {e(self.local(d["muted_until"]))}'
                     + (f": {e(d['mute_reason'])}" if d["mute_reason"] else "") + "</div>") if d["muted_until"] else ""
            reason = d.get("reason")
            why = (f'<div class="reason">Sebab / why: {e(reason)}</div>'
                   if reason and (d["state"] != "online" or d["consecutive_failures"]) else "")
            poll = ""
            if d.get("poll_now"):
                poll = (f'<form class="pollnow" method="post" action="/devices/{quote(d["id"], safe="")}/poll'
                        f'{e(token_query)}"><input type="hidden" name="csrf" value="{e(csrf)}">'
                        f'<button type="submit">Cek sekarang / poll now</button></form>')
            cards.append(
                f'<section class="dev" id="dev-{e(d["id"])}" data-state="{e(d["state"])}">'
                f'<h2><span class="dot" style="background:{colour}"></span>{e(d["name"] or d["id"])} '
                f'<span class="state" style="color:{colour}">{e(_STATE_WORD.get(d["state"], d["state"]))}</span></h2>'
                f'<div class="sub">{e(d["id"])} &middot; {e(d["address"])}:{d["port"]}'
                + (f" &middot; {e(d['location'])}" if d["location"] else "")
                + (f" &middot; {d['quarantined']} baris dikarantina / quarantined lines"
                   if d.get("quarantined") else "")
                + "</div>"
                + why + muted + "".join(probs) + _drop_notice(d.get("enrol_backup")) + f"<table>{table}</table>{poll}"
                "</section>")
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
                       f'<div>{e(p["detail"])}</div>'
                       + self._checks(p["name"], p["check"], p.get("check_id") or [], p["severity"]) + "</div>"
                       for p in gw["problems"]))
        unknown = "".join(
            f'<div class="prob" style="border-color:{_SEV_COLOUR.get("warning", "#b26a00")}">'
            f'<b>Terminal tak dikenal mencoba mengirim / unknown terminal trying to push</b>: '
            f'serial {e(str(u["serial"]))} dari/from {e(str(u["address"]))}, terakhir/last '
            f'{e(self.local(u["last_seen"]))}<div><small>Tambahkan / add it: '
            f'<code>fpgw devices add-push {e(str(u["serial"]))} --id &lt;id&gt;</code></small></div></div>'
            for u in doc.get("unknown_terminals") or [])
        notice = ""
        if polled is not None:
            notice = (f'<p class="notice" id="polled">Pengecekan {e(polled)} diminta; hasilnya tampil setelah '
                      f'halaman dimuat ulang / poll of {e(polled)} requested: the result shows after the next '
                      f'reload.</p>')
        # Chips: a count is coloured only when it says something is wrong (0 offline is good news, not red).
        chips = [f'<span class="pill">{s["devices"]} perangkat</span>',
                 f'<span class="pill" data-count="{s["online"]}"'
                 + (f' style="color:{_STATE_COLOUR["online"]}"' if s["online"] else "")
                 + f'>{s["online"]} online</span>',
                 f'<span class="pill" data-count="{s["offline"]}"'
                 + (f' style="color:{_STATE_COLOUR["offline"]}"' if s["offline"] else "") + f'>{s["offline"]} offline'
                 "</span>"]
        if s.get("unknown"):
            chips.append(f'<span class="pill" data-count="{s["unknown"]}">{s["unknown"]} belum diketahui / '
                         "unknown</span>")
        chips.append(f'<span class="pill" data-count="{s["open_problems"]}"'
                     + (f' style="color:{_SEV_COLOUR["warning"]}"' if s["open_problems"] else "")
                     + f'>{s["open_problems"]} masalah/problems</span>')
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
.reason{{background:#fdf3e7;border-left:4px solid #a15c00;padding:4px 8px;margin:6px 0;font-size:.9rem;
word-break:break-word}}
.prob{{border-left:4px solid;padding:4px 8px;margin:6px 0;background:#fafafa}}
.prob small{{color:#666}} details{{margin-top:4px;font-size:.9rem}} ul{{padding-left:18px;margin:4px 0}}
li{{margin:3px 0}} li small{{color:#555}}
.muted{{background:#eef2f7;padding:4px 8px;margin:6px 0;font-size:.9rem}}
.notice{{background:#e8f3ec;border-left:4px solid #1b7f3b;padding:6px 8px}}
table{{width:100%;border-collapse:collapse;font-size:.9rem}} th{{text-align:left;font-weight:normal;color:#555;
padding:2px 6px 2px 0;width:55%}} td{{padding:2px 0;font-variant-numeric:tabular-nums}}
td.future{{color:#b3261e;font-weight:600}}
.pollnow{{margin-top:8px}} .pollnow button{{font:inherit;padding:6px 12px;border-radius:8px;border:1px solid #2f5d8a;
background:#fff;color:#2f5d8a;min-height:36px}}
.alerts li{{font-size:.85rem;margin:2px 0}}
@media (min-width:1000px){{body{{max-width:960px;margin:0 auto}}}}
@media (max-width:600px){{
body{{padding:8px}} h1{{font-size:1rem;margin:0}} .meta{{font-size:.75rem;margin-bottom:6px}}
.summary{{gap:4px;margin-bottom:8px}} .pill{{padding:2px 8px;font-size:.8rem;border-radius:10px}}
}}
</style></head><body>
<header>
<h1>{e(title)}</h1>
<div class="meta">{e(office['code'])} &middot; diperbarui/updated {e(self.local(doc['generated_at']))}
&middot; muat ulang otomatis tiap {REFRESH_S} s</div>
<div class="summary">{''.join(chips)}</div>
</header>
{notice}
{gw_line}
{outbox}
{unknown}
{''.join(cards) or '<p>Belum ada perangkat / no devices configured.</p>'}
<h2 style="font-size:1rem">Peringatan terakhir / recent alerts</h2>
<ul class="alerts">{alerts or '<li>-</li>'}</ul>
</body></html>"""


def polled_device_ids(ctx: AppContext) -> set[str]:
    """Devices the running daemon's scheduler polls and can poll now (none without a scheduler here). Push
    terminals, and any other kind the scheduler does not poll, are not among them."""
    if ctx.poll_now is None:
        return set()
    device_ids = getattr(ctx.polls, "device_ids", None)
    if callable(device_ids):
        return set(device_ids())
    return {d.id for d in ctx.config.devices if d.enabled and not d.pushes}


def state_reason(health: DeviceHealth | None, address: str, port: int | None, *, pushes: bool = False) -> str:
    """Why a terminal is not (or not yet) online, in one line, from its last poll's classified error."""
    if health is None or (health.last_error_kind is None and health.last_ok_at is None
                          and health.consecutive_failures == 0):
        if pushes:
            return "waiting for the terminal to call the gateway (push): none yet"
        return "not polled yet: the first poll runs shortly after the gateway starts"
    kind = health.last_error_kind
    if kind is None:
        return ""
    detail = (health.last_error or "").strip()
    where = f"{address}:{port}" if port else address
    if kind == "unreachable":
        text = f"unreachable: no answer from {where}"
        return text + (f" ({detail})" if detail and len(detail) <= 120 else "")
    if kind == "auth_rejected":
        return f"auth rejected: {where} refused the comm key"
    return f"{kind.replace('_', ' ')}: {detail or 'see the log'}"[:300]


def _cross_site(request: Request) -> bool:
    """True when the browser says the request comes from another site (Sec-Fetch-Site, else Origin vs Host)."""
    fetch_site = request.headers.get("sec-fetch-site")
    if fetch_site is not None:
        return fetch_site not in ("same-origin", "none")
    origin = request.headers.get("origin")
    if not origin or origin == "null":
        return origin == "null"
    return urlsplit(origin).netloc.lower() != request.headers.get("host", "").lower()


def _iso(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z") if value else None


def _backup_json(backup: dict[str, Any] | None) -> dict[str, Any] | None:
    if backup is None:
        return None
    return {"at": _iso(backup["at"]), "users": backup["users"], "templates": backup["templates"],
            "user_drop": backup["user_drop"]}


def _drop_notice(backup: dict[str, Any] | None) -> str:
    """A notice when the last enrolment backup holds sharply fewer users than the one before (factory reset?)."""
    if not backup or not backup.get("user_drop"):
        return ""
    before, now = backup["user_drop"]
    colour = _SEV_COLOUR.get("warning", "#b26a00")
    return (f'<div class="prob" style="border-color:{colour}"><b>Jumlah pengguna turun / '
            f'user count dropped</b> {int(before)} &rarr; {int(now)}<div><small>Direset? / reset? '
            f'<code>fpgw enrol status</code>, <code>fpgw enrol restore</code></small></div></div>')


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

    # One value per process start: embedded in the page (readable only by clients the guard lets in, and never
    # by another site's script, by the same-origin rule) and required back by the poll-now form.
    csrf = hmac.new(secrets.token_bytes(32), b"fpgw poll now", "sha256").hexdigest()

    def token_query(request: Request) -> str:
        given = request.query_params.get("token")
        return f"?token={quote(given, safe='')}" if given else ""

    def index(request: Request) -> Response:
        refused = guard(request)
        if refused is not None:
            return refused
        polled = request.query_params.get("polled")
        known = {d.id for d in ctx.config.devices}
        page = view.page(view.document(), csrf=csrf, token_query=token_query(request),
                         polled=polled if polled in known else None)
        return HTMLResponse(page, headers={"Cache-Control": "no-store"})

    async def poll_device(request: Request) -> Response:
        """POST /devices/{id}/poll: ask the running daemon to poll this terminal now (the page's button)."""
        refused = guard(request)
        if refused is not None:
            return refused
        if _cross_site(request):
            return PlainTextResponse("refused: the request comes from another site\n", status_code=403)
        bearer = request.headers.get("authorization", "").lower().startswith("bearer ")
        if not bearer:
            # Browsers send cookies and reach loopback by themselves, never an Authorization header: a form
            # without the page's token may have been planted by another site (CSRF).
            body = await request.body()
            given = parse_qs(body[:4096].decode("utf-8", "replace")).get("csrf", [""])[0]
            if not hmac.compare_digest(given.encode(), csrf.encode()):
                return PlainTextResponse("refused: missing or stale form token; reload the status page and press "
                                         "the button again\n", status_code=403)
        device_id = request.path_params["device_id"]
        device = next((d for d in ctx.config.devices if d.id == device_id), None)
        if device is None:
            return PlainTextResponse(f"unknown device {device_id!r}\n", status_code=404)
        poll_now = ctx.poll_now
        if poll_now is None:
            return PlainTextResponse("polling is not running in this process\n", status_code=503)
        if device.pushes or not device.enabled or device_id not in polled_device_ids(ctx):
            why = ("a push terminal calls the gateway itself" if device.pushes else "the device is disabled"
                   if not device.enabled else "the gateway does not poll this kind of terminal")
            return PlainTextResponse(f"{device_id} cannot be polled: {why}\n", status_code=409)
        if not poll_now(device_id):
            return PlainTextResponse(f"{device_id} cannot be polled now (not a polled terminal, or the gateway is "
                                     "stopping)\n", status_code=409)
        log.info("poll now requested on the status page", device=device_id)
        if "application/json" in request.headers.get("accept", "") and "text/html" not in request.headers.get(
                "accept", ""):
            return JSONResponse({"device": device_id, "poll_requested": True}, status_code=202)
        query = token_query(request)
        target = f"/{query}{'&' if query else '?'}polled={quote(device_id, safe='')}#dev-{quote(device_id, safe='')}"
        return RedirectResponse(target, status_code=303)

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
                               Route("/metrics", metrics),
                               Route("/devices/{device_id}/poll", poll_device, methods=["POST"])]
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

"""Regency dashboard of the central mode: every office, its gateway and its terminals, for BKD and each SKPD.

    browser --GET / (session cookie or API bearer token)--> Dashboard.index --> DashboardRepo.terminals +
                                                                               CentralStore.gateways
    browser --GET /terminal/{office}/{device}--> Dashboard.terminal --> DeviceEventRepo (history of health reports)
    browser --GET /report?month=&format=--> gateway.central.report.build_report (the CLI's report, same rules)
    browser --GET|POST /login, POST /logout--> gateway.central.auth + gateway.store.accounts
    scheduler --every USAGE_REFRESH_S--> UsageFigures.refresh() --> gateway.central.usage.collect (last weeks)
                                          --> UsageSnapshot in memory --> read by / and /usage/{office}.svg
``services(ctx)`` (gateway.central.service) mounts these routes beside the JSON API. Every page is server-rendered
HTML with inline CSS, bilingual labels (Indonesian / English) and no external resource. Every read is scoped:
an office account (or an office-scoped API token) only ever gets its own office's rows, whatever the URL says.
The page reads the health tables only (one row per terminal and per gateway), never the punches: the usage
figures (attendance per working day, full days, unused terminals, weekly trend) take seconds to compute over a
regency, so a background job (gateway.central.service) recomputes them and the page shows the latest snapshot
with the time it was computed.
"""

from __future__ import annotations

import functools
import hmac
import html
import re
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from functools import partial
from typing import Any, cast
from urllib.parse import parse_qs, quote, urlencode
from zoneinfo import ZoneInfo

import structlog
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from gateway.central.auth import LoginLimiter, new_session_id, session_key, verify_password
from gateway.central.charts import line_chart
from gateway.central.report import Format, build_report
from gateway.central.tokens import TokenFile
from gateway.central.usage import UNUSED_PUNCHES_PER_DAY, Figures, WorkRules, collect, week_of
from gateway.models import NOTICES, PROBLEMS
from gateway.store.accounts import AccountRepo
from gateway.store.central import CentralStore
from gateway.store.dashboard import DashboardRepo, TerminalRow
from gateway.store.device_events import DeviceEventRepo, outages
from gateway.store.schema import utcnow
from gateway.wire import OfficeScope

log = structlog.get_logger(__name__)

SESSION_COOKIE = "fpgw_session"
LOGIN_CSRF_COOKIE = "fpgw_login_csrf"
#: A login lasts a working day; then the user signs in again.
SESSION_LIFETIME = timedelta(hours=12)
#: Largest login form body read.
MAX_FORM_BYTES = 4096
REPORT_FORMATS = {"xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
                  "pdf": "application/pdf", "html": "text/html; charset=utf-8"}
_MONTH = re.compile(r"^(\d{4})-(0[1-9]|1[0-2])$")
_CODE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")

_STATE_COLOUR = {"online": "#1b7f3b", "offline": "#b3261e", "unknown": "#6b6b6b", "silent": "#b3261e",
                 "none": "#6b6b6b"}
_SEV_COLOUR = {"critical": "#b3261e", "warning": "#a15c00", "info": "#2f5d8a"}
_STATE_WORD = {"online": "online", "offline": "offline / mati", "unknown": "belum diketahui / unknown"}
_GW_WORD = {"online": "gateway online", "silent": "gateway diam / silent", "none": "belum lapor / never reported"}
_KIND_WORD = {"state": "status / state", "problem_start": "masalah mulai / problem started",
              "problem_end": "masalah selesai / problem resolved", "alert": "peringatan terkirim / alert sent"}

#: Filter values beside the problem names: a terminal that is offline, an office whose gateway is silent,
#: a terminal installed but unused (from the usage snapshot).
FILTER_OFFLINE, FILTER_SILENT, FILTER_ANY, FILTER_UNUSED = "offline", "gateway_silent", "any", "unused"
#: How often the dashboard's usage figures are recomputed (seconds). Attendance moves by the day, so a
#: quarter of an hour is fresh enough, and one computation (seconds for a regency) costs little every 15 min.
USAGE_REFRESH_S = 900.0
#: Weeks the dashboard's usage figures cover (this week so far and the full weeks before it): recent enough
#: to show a change, long enough to smooth a holiday; the monthly report covers whole months.
USAGE_WEEKS = 6


@dataclass(frozen=True)
class Viewer:
    """Who is reading: a dashboard account or an API token, and the offices it may see (None = all)."""

    name: str
    offices: OfficeScope | None
    #: CSRF token of the session (None for a bearer token: no cookie, so no cross-site request can carry it).
    csrf: str | None = None
    session: str | None = None

    def may_see(self, office: str) -> bool:
        """Whether this viewer may read ``office``."""
        return self.offices is None or self.offices.allows(office)


@dataclass
class Terminal:
    """One terminal row of the dashboard."""

    office: str
    device_id: str
    name: str
    location: str
    state: str
    state_since: datetime | None
    problems: list[dict[str, Any]]
    last_punch_at: datetime | None
    records: int | None
    records_cap: int | None
    clock_skew_s: float | None
    serial: str | None = None
    #: From the usage snapshot (None: not in it): punches per working day, and "installed but unused".
    punches_per_day: float | None = None
    unused: bool = False
    level: int = field(init=False)

    def __post_init__(self) -> None:
        bad = [p for p in self.problems if p["name"] not in NOTICES]  # one-off notices do not rank
        self.level = (0 if self.state == "offline" else 1 if any(p["severity"] == "critical" for p in bad)
                      else 2 if bad else 3 if self.state == "unknown" else 4)

    def rank(self) -> int:
        """0 = worst (offline), 1 critical problem, 2 other problem, 3 never heard of, 4 fine: the page's order."""
        return self.level

    def matches(self, problem: str) -> bool:
        """Whether this terminal shows ``problem`` (a problem name, "offline" or "any")."""
        if problem == FILTER_OFFLINE:
            return self.state == "offline"
        if problem == FILTER_ANY:
            return self.rank() < 3
        if problem == FILTER_UNUSED:
            return self.unused
        return any(p["name"] == problem for p in self.problems)


@dataclass
class Office:
    """One office row: its gateway and terminals."""

    code: str
    name: str
    gateway: str  # online, silent, none
    gateway_seen_at: datetime | None
    outbox_depth: int | None
    terminals: list[Terminal] = field(default_factory=list)

    def rank(self) -> tuple[int, int, str]:
        """Worst office first: silent gateway, then its worst terminal, then how many terminals are bad."""
        worst = min((t.rank() for t in self.terminals), default=4)
        first = 0 if self.gateway == "silent" else worst + 1
        return first, -sum(1 for t in self.terminals if t.rank() < 3), self.code


def _when(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, str) and value:
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return None


def build_offices(devices: list[TerminalRow], gateways: list[dict[str, Any]]) -> list[Office]:
    """Offices (worst first) from the dashboard's terminal rows and the gateway rows (CentralStore.gateways)."""
    offices: dict[str, Office] = {}
    for g in gateways:
        code = g["office_code"]
        state = "silent" if g.get("silent") else "online"
        known = offices.get(code)
        # Several gateways for one office: the office's gateway is online when any of them is.
        if known is None or (known.gateway == "silent" and state == "online"):
            offices[code] = Office(code, g.get("office_name") or (known.name if known else ""), state,
                                   _when(g["last_seen_at"]), g.get("outbox_depth"),
                                   known.terminals if known else [])
    order = {n: i for i, n in enumerate(PROBLEMS)}
    for d in devices:
        office = offices.get(d.office_code)
        if office is None:
            office = offices[d.office_code] = Office(d.office_code, "", "none", None, None)
        problems: list[dict[str, Any]] = []
        for name, p in d.problems.items():
            p = p if isinstance(p, dict) else {}
            problems.append({"name": str(name), "severity": str(p.get("severity") or "warning"),
                             "since": _when(p.get("since")), "detail": str(p.get("detail") or "")})
        problems.sort(key=lambda p: order.get(str(p["name"]), 99))
        office.terminals.append(Terminal(
            d.office_code, d.device_id, d.name, d.location, d.state, d.state_since, problems, d.last_punch_at,
            d.records, d.records_cap, d.clock_skew_s, d.serial))
    for o in offices.values():
        o.terminals.sort(key=lambda t: (t.level, t.device_id))
    return sorted(offices.values(), key=Office.rank)


@dataclass(frozen=True)
class OfficeUsageView:
    """One office's usage over the snapshot's weeks, as the dashboard shows it."""

    working_days: int
    employees_per_day: float
    #: Employees the office should have (headcount, or those seen punching) and where that number comes from.
    basis: int
    basis_source: str
    attendance_rate: float | None
    full_day_share: float | None
    #: (Monday of the week, attendance rate that week) oldest first.
    weekly: tuple[tuple[date, float | None], ...]
    #: The weekly trend as a small SVG (rendered once per refresh, not per request).
    chart_svg: str


@dataclass(frozen=True)
class TerminalUsageView:
    """One terminal's usage over the snapshot's weeks."""

    punches_per_day: float
    days_with_punches: int
    unused: bool


@dataclass(frozen=True)
class UsageSnapshot:
    """The dashboard's usage figures as computed at ``computed_at`` for the local days [start, end]."""

    computed_at: datetime
    start: date
    end: date
    working_days: int
    offices: Mapping[str, OfficeUsageView]
    terminals: Mapping[tuple[str, str], TerminalUsageView]
    #: Seconds the computation took (logged; shown to nobody).
    took_s: float = 0.0

    @classmethod
    def from_figures(cls, figures: Figures, took_s: float = 0.0) -> UsageSnapshot:
        """The dashboard's view of gateway.central.usage figures (charts rendered here, once)."""
        offices: dict[str, OfficeUsageView] = {}
        terminals: dict[tuple[str, str], TerminalUsageView] = {}
        for o in figures.offices:
            u = o.usage
            weekly = tuple(u.weekly_rate().items())
            chart = line_chart([(f"{w:%d/%m}", r) for w, r in weekly],
                               title="Hadir per minggu / attendance per week", width=340, height=150)
            offices[o.office_code] = OfficeUsageView(u.working_days, u.employees_per_day, u.basis, u.basis_source,
                                                     u.attendance_rate, u.full_day_share, weekly, chart)
            for t in o.terminals:
                terminals[(t.office_code, t.device_id)] = TerminalUsageView(t.punches_per_day, t.days_with_punches,
                                                                            t.unused)
        return cls(figures.generated_at, figures.start, figures.counted_until, len(figures.working_days), offices,
                   terminals, took_s)


class UsageFigures:
    """The latest usage snapshot of the regency, recomputed off the request path.

    ``refresh()`` runs gateway.central.usage.collect over the last USAGE_WEEKS weeks (seconds for a regency) on
    the scheduler's housekeeping pool (gateway.central.service); requests only read ``snapshot``, which is
    replaced whole (one reference assignment), so a page never waits for a computation nor sees half of one.
    """

    def __init__(self, engine: Any, rules: WorkRules, *, weeks: int = USAGE_WEEKS,
                 now: Callable[[], datetime] = utcnow) -> None:
        self.engine = engine
        self.rules = rules
        self.weeks = max(1, weeks)
        self.now = now
        self.snapshot: UsageSnapshot | None = None
        # Two refreshes at once (the scheduled one and a test's or an operator's) run one after the other.
        self._lock = threading.Lock()

    def window(self, now: datetime) -> tuple[date, date]:
        """The local days covered: from the Monday USAGE_WEEKS - 1 weeks before this week's, to today."""
        today = now.astimezone(ZoneInfo(self.rules.timezone)).date()
        return week_of(today) - timedelta(weeks=self.weeks - 1), today

    def refresh(self, now: datetime | None = None) -> UsageSnapshot:
        """Recompute the figures and publish them; raises what the database raises (the caller logs it)."""
        with self._lock:
            at = now or self.now()
            start, end = self.window(at)
            t0 = time.perf_counter()
            figures = collect(self.engine, start, end, self.rules, now=at)
            snapshot = UsageSnapshot.from_figures(figures, time.perf_counter() - t0)
            self.snapshot = snapshot
        return snapshot


def _page(title: str, body: str, *, refresh: bool = False) -> str:
    e = html.escape
    meta = '<meta http-equiv="refresh" content="60">' if refresh else ""
    return f"""<!doctype html>
<html lang="id"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">{meta}
<title>{e(title)}</title>
<style>
body{{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;padding:10px;background:#f4f4f2;
color:#1d1d1d;font-size:15px}}
h1{{font-size:1.2rem;margin:0 0 4px}} h2{{font-size:1.05rem;margin:0}} a{{color:#1f4f86}}
.meta{{color:#555;font-size:.85rem;margin-bottom:8px}} .bar{{display:flex;gap:8px;flex-wrap:wrap;align-items:center}}
.pill{{padding:5px 9px;border-radius:14px;background:#fff;border:1px solid #ddd;font-weight:600;font-size:.9rem}}
.bad{{color:#b3261e}} .ok{{color:#1b7f3b}}
form.filters{{display:flex;gap:6px;flex-wrap:wrap;margin:8px 0}} select,input,button{{font-size:.95rem;padding:5px}}
.office{{background:#fff;border-radius:10px;padding:8px 10px;margin-bottom:10px;border:1px solid #ddd}}
.office h2{{display:flex;gap:8px;flex-wrap:wrap;align-items:center}}
.dot{{width:12px;height:12px;border-radius:50%;display:inline-block;flex:none}}
.gw{{font-size:.85rem;font-weight:700}} .sub{{color:#666;font-size:.8rem}}
table{{width:100%;border-collapse:collapse;font-size:.88rem;margin-top:6px}}
th{{text-align:left;color:#555;font-weight:600;border-bottom:1px solid #ddd;padding:3px 4px}}
td{{padding:3px 4px;border-bottom:1px solid #eee;vertical-align:top;font-variant-numeric:tabular-nums}}
.prob{{display:inline-block;margin:1px 4px 1px 0;padding:0 5px;border-left:3px solid;background:#fafafa}}
.usage{{display:flex;gap:10px;flex-wrap:wrap;align-items:flex-start;margin-top:6px;font-size:.88rem}}
.usetext{{flex:1 1 220px}} img.trend{{max-width:100%;height:auto;background:#fff}}
.unused{{color:#a15c00;font-weight:700}}
@media (max-width:640px){{table.terms thead{{display:none}} table.terms tr{{display:block;border-bottom:1px solid #ddd;
padding:4px 0}} table.terms td{{display:block;border:0;padding:1px 0}}
table.terms td[data-label]::before{{content:attr(data-label) ": ";color:#666;font-size:.8rem}}}}
</style></head><body>
{body}
</body></html>"""


class Dashboard:
    """Routes and pages of the regency dashboard over one CentralStore."""

    def __init__(self, store: CentralStore, *, api_tokens: TokenFile | None, timezone: str = "Asia/Jakarta",
                 silent_after_s: float = 7200.0, limiter: LoginLimiter | None = None,
                 now: Callable[[], datetime] = utcnow, rules: WorkRules | None = None,
                 usage: UsageFigures | None = None) -> None:
        self.store = store
        #: Working days and hours of the monthly report (the CLI's `fpgw central report` uses the same config).
        self.rules = rules or WorkRules(timezone=timezone, silent_after_s=silent_after_s)
        #: The usage figures' latest snapshot (refreshed by gateway.central.service's job; pages only read it).
        self.usage = usage or UsageFigures(store.engine, self.rules, now=now)
        self.accounts = AccountRepo(store.engine)
        self.events = DeviceEventRepo(store.engine)
        self.repo = DashboardRepo(store.engine)
        self.api_tokens = api_tokens
        self.tz = ZoneInfo(timezone)
        self.silent_after_s = silent_after_s
        self.limiter = limiter or LoginLimiter()
        self.now = now

    def routes(self) -> list[BaseRoute]:
        """The dashboard's Starlette routes."""
        return [
            Route("/", self.index, methods=["GET"]),
            Route("/terminal/{office}/{device}", self.terminal, methods=["GET"]),
            Route("/usage/{office}.svg", self.usage_chart, methods=["GET"]),
            Route("/report", self.report, methods=["GET"]),
            Route("/login", self.login_form, methods=["GET"]),
            Route("/login", self.login, methods=["POST"]),
            Route("/logout", self.logout, methods=["POST"]),
        ]

    # -- access ----------------------------------------------------------------------------------
    async def viewer(self, request: Request) -> Viewer | None:
        """The signed-in viewer of a request (session cookie or API bearer token), or None."""
        header = request.headers.get("authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer" and value.strip() and self.api_tokens is not None:
            tok = self.api_tokens.lookup(value.strip())
            return Viewer(f"token:{tok.name}", tok.offices) if tok else None
        sid = request.cookies.get(SESSION_COOKIE)
        if not sid or len(sid) > 200:
            return None
        key = session_key(sid)
        found = await run_in_threadpool(self.accounts.session, key)
        if found is None:
            return None
        account, csrf = found
        scope = None if account.offices is None else OfficeScope.of(account.offices)
        return Viewer(account.username, scope, csrf, key)

    def _to_login(self, request: Request) -> Response:
        if request.headers.get("authorization"):
            return PlainTextResponse("token not valid for the dashboard\n", status_code=401,
                                     headers={"WWW-Authenticate": 'Bearer realm="fpgw"'})
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/login?next={quote(target, safe='')}", status_code=303)

    def local(self, value: datetime | None) -> str:
        """A UTC instant as office time with the year and the zone ("2026-11-02 08:00 WIB"); HTML-safe."""
        if value is None:
            return "-"
        return html.escape(_local_text(value, self.tz))

    # -- pages -----------------------------------------------------------------------------------
    def offices(self, viewer: Viewer) -> list[Office]:
        """Every office the viewer may see, worst first (two queries on the health tables)."""
        devices = self.repo.terminals(viewer.offices)
        gateways = self.store.gateways(viewer.offices, silent_after_s=self.silent_after_s, now=self.now())
        offices = build_offices(devices, gateways)
        snapshot = self.usage.snapshot
        if snapshot is not None:
            for o in offices:
                for t in o.terminals:
                    tu = snapshot.terminals.get((t.office, t.device_id))
                    if tu is not None:
                        t.punches_per_day, t.unused = tu.punches_per_day, tu.unused
        return offices

    async def usage_chart(self, request: Request) -> Response:
        """GET /usage/{office}.svg: the office's weekly attendance trend from the latest usage snapshot."""
        viewer = await self.viewer(request)
        if viewer is None:
            return self._to_login(request)
        office = request.path_params["office"]
        snapshot = self.usage.snapshot
        view = snapshot.offices.get(office) if snapshot is not None else None
        if not viewer.may_see(office) or view is None:
            return _not_found()
        return Response(view.chart_svg.encode("utf-8", "replace"), media_type="image/svg+xml", headers=_NO_STORE)

    async def index(self, request: Request) -> Response:
        """GET /: the regency (or the office) at a glance, with filters by problem and by office."""
        viewer = await self.viewer(request)
        if viewer is None:
            return self._to_login(request)
        params = request.query_params
        office_filter = params.get("office") or ""
        problem_filter = params.get("problem") or ""
        if office_filter and (not _CODE.match(office_filter) or not viewer.may_see(office_filter)):
            return _forbidden("office")
        if problem_filter and not _CODE.match(problem_filter):
            return PlainTextResponse("problem: not a problem name\n", status_code=400)
        # Query and render off the event loop: a regency page is tens of milliseconds of Python.
        page = await run_in_threadpool(
            lambda: self.render_index(viewer, self.offices(viewer), office_filter, problem_filter))
        return _html(page)

    def render_index(self, viewer: Viewer, offices: list[Office], office_filter: str, problem_filter: str) -> str:
        """The dashboard HTML."""
        e = html.escape
        snapshot = self.usage.snapshot
        names = sorted({p["name"] for o in offices for t in o.terminals for p in t.problems})
        all_terms = [t for o in offices for t in o.terminals]
        shown: list[Office] = []
        for o in offices:
            if office_filter and o.code != office_filter:
                continue
            if problem_filter == FILTER_SILENT:
                if o.gateway == "silent":
                    shown.append(o)
                continue
            if problem_filter:
                terms = [t for t in o.terminals if t.matches(problem_filter)]
                if terms:
                    shown.append(Office(o.code, o.name, o.gateway, o.gateway_seen_at, o.outbox_depth, terms))
                continue
            shown.append(o)
        summary = (
            f'<span class="pill" id="n-offices">{len(offices)} kantor / offices</span>'
            f'<span class="pill{" bad" if any(o.gateway == "silent" for o in offices) else ""}" id="n-silent">'
            f'{sum(o.gateway == "silent" for o in offices)} gateway diam / silent</span>'
            f'<span class="pill">{len(all_terms)} terminal</span>'
            f'<span class="pill{" bad" if any(t.state == "offline" for t in all_terms) else ""}" id="n-offline">'
            f'{sum(t.state == "offline" for t in all_terms)} offline</span>'
            f'<span class="pill" id="n-problems">{sum(1 for t in all_terms if t.rank() < 3)} '
            f'bermasalah / with problems</span>'
            + (f'<span class="pill{" bad" if any(t.unused for t in all_terms) else ""}" id="n-unused">'
               f'{sum(t.unused for t in all_terms)} tidak dipakai / unused</span>' if snapshot else ""))
        office_opts = "".join(
            f'<option value="{e(o.code)}"{" selected" if o.code == office_filter else ""}>'
            f'{e(o.code)}{" " + e(o.name) if o.name else ""}</option>' for o in sorted(offices, key=lambda o: o.code))
        problem_opts = "".join(
            f'<option value="{e(v)}"{" selected" if v == problem_filter else ""}>{e(label)}</option>'
            for v, label in [(FILTER_ANY, "semua masalah / any problem"), (FILTER_OFFLINE, "offline"),
                             (FILTER_SILENT, "gateway diam / silent gateway"),
                             (FILTER_UNUSED, "terpasang tapi tidak dipakai / installed but unused")]
            + [(n, n.replace("_", " ")) for n in names if n != FILTER_OFFLINE])
        one_office = viewer.offices is not None and viewer.offices.single is not None
        filters = (
            '<form class="filters" method="get" action="/">'
            + ("" if one_office else
               f'<select name="office" aria-label="kantor / office"><option value="">semua kantor / all offices'
               f'</option>{office_opts}</select>')
            + f'<select name="problem" aria-label="masalah / problem"><option value="">semua terminal / all '
              f'terminals</option>{problem_opts}</select><button type="submit">Saring / filter</button></form>')
        month = (self.now().astimezone(self.tz).date().replace(day=1) - timedelta(days=1)).strftime("%Y-%m")
        report = (
            '<form class="filters" method="get" action="/report" id="report-form">'
            f'<label>Laporan bulanan / monthly report <input type="month" name="month" value="{month}" '
            'required></label><select name="format" aria-label="format"><option value="xlsx">XLSX</option>'
            '<option value="pdf">PDF</option><option value="html">HTML</option></select>'
            + (f'<input type="hidden" name="office" value="{e(office_filter)}">' if office_filter else "")
            + '<button type="submit" id="report-download">Unduh / download</button></form>')
        sections = "".join(self._office_html(o, snapshot) for o in shown)
        if not sections:
            sections = "<p>Tidak ada yang cocok / nothing matches.</p>"
        scope = "seluruh kabupaten / whole regency" if viewer.offices is None else str(viewer.offices)
        body = (
            f'<h1>Terminal absensi kabupaten / regency attendance terminals</h1>'
            f'<div class="meta bar"><span>{e(viewer.name)} &middot; {e(scope)} &middot; diperbarui/updated '
            f'{e(self.local(self.now()))}</span>{self._logout_html(viewer)}</div>'
            f'{self._usage_note(snapshot)}<div class="bar">{summary}</div>{filters}{report}{sections}')
        return _page("Dasbor BKD / BKD dashboard", body, refresh=True)

    def _logout_html(self, viewer: Viewer) -> str:
        if viewer.csrf is None:
            return ""
        return (f'<form method="post" action="/logout" style="display:inline"><input type="hidden" name="csrf" '
                f'value="{html.escape(viewer.csrf)}"><button type="submit">Keluar / sign out</button></form>')

    def _usage_note(self, snapshot: UsageSnapshot | None) -> str:
        """When the usage figures were computed and what they cover (or that they are being prepared)."""
        if snapshot is None:
            return ('<div class="meta" id="usage-at" data-ready="0">Angka pemakaian sedang disiapkan / usage '
                    'figures are being prepared (a few minutes after the central starts).</div>')
        at = snapshot.computed_at.astimezone(self.tz).strftime("%H:%M %Z")
        return (f'<div class="meta" id="usage-at" data-ready="1">Angka pemakaian per {html.escape(at)} / usage '
                f'figures of {html.escape(at)}: {snapshot.start:%Y-%m-%d} .. {snapshot.end:%Y-%m-%d}, '
                f'{snapshot.working_days} hari kerja / working days; diperbarui tiap / refreshed every '
                f'{int(USAGE_REFRESH_S // 60)} min. Tidak dipakai / unused = online tapi/but &lt; '
                f'{UNUSED_PUNCHES_PER_DAY:g} absen per hari kerja / punches per working day.</div>')

    def _office_usage_html(self, o: Office, snapshot: UsageSnapshot | None) -> str:
        """The office's attendance line and its weekly trend chart (an SVG the central serves)."""
        view = snapshot.offices.get(o.code) if snapshot is not None else None
        if view is None:
            return ""

        def pct(v: float | None) -> str:
            return "-" if v is None else f"{v:.0%}"

        basis = {"headcount": "jumlah pegawai BKD / BKD headcount", "seen": "pegawai terlihat / employees seen",
                 "seen>headcount": "pegawai terlihat, lebih dari jumlah BKD / seen, more than the headcount"}
        rate = "" if view.attendance_rate is None else f"{view.attendance_rate:.4f}"
        full = "" if view.full_day_share is None else f"{view.full_day_share:.4f}"
        src = f"/usage/{quote(o.code, safe='')}.svg"
        return (f'<div class="usage" data-attendance="{rate}" data-full-days="{full}">'
                f'<div class="usetext"><b>Pemakaian / usage</b> ({view.working_days} hari kerja / working days)<br>'
                f'Hadir per hari / punching per day: <b>{view.employees_per_day:.1f}</b> dari/of {view.basis} '
                f'pegawai/employees (<b>{pct(view.attendance_rate)}</b>)<br>'
                f'Hari lengkap (datang + pulang) / full days (arrival + leave): <b>{pct(view.full_day_share)}</b>'
                f'<div class="sub">basis: {html.escape(basis.get(view.basis_source, view.basis_source))}</div></div>'
                f'<img class="trend" src="{html.escape(src)}" loading="lazy" width="340" height="150" '
                f'alt="tren hadir per minggu / weekly attendance trend"></div>')

    def _office_html(self, o: Office, snapshot: UsageSnapshot | None = None) -> str:
        e = html.escape
        colour = _STATE_COLOUR[o.gateway]
        seen = f" &middot; terakhir/last {self.local(o.gateway_seen_at)}" if o.gateway_seen_at else ""
        backlog = (f" &middot; antrian/backlog {o.outbox_depth}" if o.outbox_depth else "")
        rows = []
        for t in o.terminals:
            tcol = _STATE_COLOUR.get(t.state, "#6b6b6b")
            probs = "".join(
                f'<span class="prob" data-problem="{e(p["name"])}" style="border-color:'
                f'{_SEV_COLOUR.get(p["severity"], "#555")}" title="{e(p["detail"])}">{e(p["name"].replace("_", " "))}'
                f' <small>sejak/since {self.local(p["since"])}</small></span>' for p in t.problems) or "-"
            records = "-" if t.records is None else (
                f"{t.records} / {t.records_cap} ({t.records / t.records_cap:.0%})" if t.records_cap else str(t.records))
            skew = "-" if t.clock_skew_s is None else f"{round(t.clock_skew_s):+d} s"
            use = "-" if t.punches_per_day is None else f"{t.punches_per_day:.1f} /hari/day"
            if t.unused:
                use += ' <span class="unused">tidak dipakai / unused</span>'
            href = f"/terminal/{quote(t.office, safe='')}/{quote(t.device_id, safe='')}"
            rows.append(
                f'<tr class="term" id="t-{e(t.office)}-{e(t.device_id)}" data-state="{e(t.state)}"'
                f' data-unused="{int(t.unused)}">'
                f'<td><a href="{e(href)}">{e(t.name)}</a><div class="sub">{e(t.device_id)}'
                + (f" &middot; {e(t.location)}" if t.location else "") + "</div></td>"
                f'<td data-label="status / state"><b style="color:{tcol}">{e(_STATE_WORD.get(t.state, t.state))}</b>'
                f'<div class="sub">sejak/since {self.local(t.state_since)}</div></td>'
                f'<td data-label="masalah / problems">{probs}</td>'
                f'<td data-label="absen terakhir / last punch">{self.local(t.last_punch_at)}</td>'
                f'<td data-label="rekaman / records">{records}</td>'
                f'<td data-label="selisih jam / clock skew">{skew}</td>'
                f'<td data-label="absen per hari kerja / punches per working day">{use}</td></tr>')
        table = ('<table class="terms"><thead><tr><th>Terminal</th><th>Status / state</th><th>Masalah / problems</th>'
                 '<th>Absen terakhir / last punch</th><th>Rekaman / records</th><th>Selisih jam / clock skew</th>'
                 '<th>Absen per hari kerja / punches per working day</th>'
                 f'</tr></thead><tbody>{"".join(rows)}</tbody></table>'
                 if rows else '<p class="sub">Belum ada terminal dilaporkan / no terminals reported.</p>')
        return (f'<section class="office" id="o-{e(o.code)}" data-gateway="{e(o.gateway)}">'
                f'<h2><span class="dot" style="background:{colour}"></span>{e(o.name or o.code)}'
                f' <span class="gw" style="color:{colour}">{e(_GW_WORD[o.gateway])}</span></h2>'
                f'<div class="sub">{e(o.code)}{seen}{backlog}</div>{self._office_usage_html(o, snapshot)}{table}'
                '</section>')

    async def terminal(self, request: Request) -> Response:
        """GET /terminal/{office}/{device}: one terminal's history (outages, problems, alerts sent)."""
        viewer = await self.viewer(request)
        if viewer is None:
            return self._to_login(request)
        office, device = request.path_params["office"], request.path_params["device"]
        # Another office's terminal is "not found", exactly like a terminal that does not exist.
        if not viewer.may_see(office) or not _CODE.match(office) or not _CODE.match(device):
            return _not_found()

        def load() -> tuple[TerminalRow | None, list[Any]]:
            rows = self.repo.terminals(viewer.offices, office, device)
            return (rows[0] if rows else None), self.events.events(office, device)

        row, events = await run_in_threadpool(load)
        if row is None:
            return _not_found()
        return _html(self.render_terminal(viewer, row, events))

    def render_terminal(self, viewer: Viewer, row: TerminalRow, events: list[Any]) -> str:
        """The history page HTML."""
        e = html.escape
        now = self.now()
        t = build_offices([row], [])[0].terminals[0]
        outs = outages(events)
        still = "masih offline / still offline"
        out_rows = "".join(
            f'<tr class="outage"><td>{e(self.local(o.since))}</td><td>{e(self.local(o.until)) if o.until else still}'
            f'</td><td>{e(_duration(o.seconds(now)))}</td></tr>' for o in outs)
        ev_rows = "".join(
            f'<tr class="event" data-kind="{e(ev.kind)}"><td>{e(self.local(ev.at))}</td>'
            f'<td>{e(_KIND_WORD.get(ev.kind, ev.kind))}</td><td>{e(ev.name.replace("_", " "))}'
            + (f' <small style="color:{_SEV_COLOUR.get(ev.severity, "#555")}">{e(ev.severity)}</small>'
               if ev.severity else "") + f'</td><td>{e(ev.detail)}</td></tr>' for ev in events)
        alerts = sum(1 for ev in events if ev.kind == "alert")
        down = sum(o.seconds(now) for o in outs)
        probs = "".join(
            f'<li><b>{e(p["name"].replace("_", " "))}</b> ({e(p["severity"])}), sejak/since '
            f'{e(self.local(p["since"]))}: {e(p["detail"])}</li>' for p in t.problems) or "<li>-</li>"
        records = "-" if t.records is None else (f"{t.records} / {t.records_cap}" if t.records_cap else str(t.records))
        skew = "-" if t.clock_skew_s is None else f"{round(t.clock_skew_s):+d} s"
        body = (
            f'<p><a href="/?office={quote(t.office, safe="")}">&larr; {e(t.office)}</a></p>'
            f'<h1 id="terminal" data-state="{e(t.state)}">{e(t.name)} '
            f'<span style="color:{_STATE_COLOUR.get(t.state, "#6b6b6b")}">{e(_STATE_WORD.get(t.state, t.state))}'
            f'</span></h1><div class="meta">{e(t.office)} &middot; {e(t.device_id)}'
            + (f" &middot; {e(t.location)}" if t.location else "")
            + f" &middot; serial {e(row.serial or '-')}"
            f'</div><table><tr><th>Status sejak / state since</th><td>{e(self.local(t.state_since))}</td></tr>'
            f'<tr><th>Absen terakhir / last punch</th><td>{e(self.local(t.last_punch_at))}</td></tr>'
            f'<tr><th>Rekaman / records</th><td>{e(records)}</td></tr>'
            f'<tr><th>Selisih jam / clock skew</th><td>{e(skew)}</td></tr>'
            f'<tr><th>Total mati / total offline</th><td id="total-offline">{e(_duration(down))} '
            f'({len(outs)}&times;)</td></tr><tr><th>Peringatan terkirim / alerts sent</th>'
            f'<td id="alerts-sent">{alerts}</td></tr></table>'
            f'<h2>Masalah terbuka / open problems</h2><ul>{probs}</ul>'
            f'<h2>Mati / offline periods</h2><table id="outages"><thead><tr><th>Dari / from</th><th>Sampai / until'
            f'</th><th>Lama / duration</th></tr></thead><tbody>{out_rows or "<tr><td colspan=3>-</td></tr>"}'
            f'</tbody></table><h2>Riwayat / history</h2><table id="events"><thead><tr><th>Waktu / time</th>'
            f'<th>Kejadian / event</th><th>Apa / what</th><th>Rincian / detail</th></tr></thead>'
            f'<tbody>{ev_rows or "<tr><td colspan=4>-</td></tr>"}</tbody></table>'
            '<p class="sub">Riwayat dicatat sejak pusat menerima laporan kesehatan / history recorded since the '
            'central receives health reports.</p>')
        return _page(f"{t.name} - riwayat / history", body)

    async def report(self, request: Request) -> Response:
        """GET /report?month=YYYY-MM&format=xlsx|pdf|html: the monthly report (an office account: its office)."""
        viewer = await self.viewer(request)
        if viewer is None:
            return self._to_login(request)
        params = request.query_params
        month, fmt = params.get("month") or "", params.get("format") or "xlsx"
        m = _MONTH.match(month)
        if m is None or not 2000 <= int(m.group(1)) <= 9998:
            return PlainTextResponse("month: give a month like 2026-11\n", status_code=400)
        if fmt not in REPORT_FORMATS:
            return PlainTextResponse(f"format: one of {', '.join(REPORT_FORMATS)}\n", status_code=400)
        office = params.get("office") or None
        if office is not None and (not _CODE.match(office) or not viewer.may_see(office)):
            return _forbidden("office")
        if office is None and viewer.offices is not None:
            if viewer.offices.single is None:
                return PlainTextResponse("office: name one of your offices\n", status_code=400)
            office = viewer.offices.single
        body: bytes = await run_in_threadpool(partial(build_report, self.store.engine, month, cast(Format, fmt),
                                                      office=office,
                                                      rules=self.rules))
        stem = f"laporan-{month}" + (f"-{office}" if office else "")
        disposition = "inline" if fmt == "html" else "attachment"
        return Response(body, media_type=REPORT_FORMATS[fmt],
                        headers={"Content-Disposition": f'{disposition}; filename="{stem}.{fmt}"', **_NO_STORE})

    # -- login -----------------------------------------------------------------------------------
    def _login_html(self, csrf: str, next_url: str, message: str = "") -> str:
        e = html.escape
        body = (
            '<h1>Masuk / sign in</h1><p class="sub">Dasbor terminal absensi / attendance terminal dashboard</p>'
            + (f'<p class="bad" id="login-error">{e(message)}</p>' if message else "")
            + '<form method="post" action="/login" style="display:grid;gap:8px;max-width:320px">'
            f'<input type="hidden" name="csrf" value="{e(csrf)}">'
            f'<input type="hidden" name="next" value="{e(next_url)}">'
            '<label>Nama pengguna / user name<br><input name="username" autocomplete="username" required></label>'
            '<label>Kata sandi / password<br><input name="password" type="password" autocomplete="current-password" '
            'required></label><button type="submit">Masuk / sign in</button></form>')
        return _page("Masuk / sign in", body)

    def _login_page(self, request: Request, message: str = "", status: int = 200,
                    headers: Mapping[str, str] | None = None) -> Response:
        csrf = secrets.token_urlsafe(24)
        response = _html(self._login_html(csrf, _safe_next(request.query_params.get("next")), message),
                         status=status, headers=headers)
        response.set_cookie(LOGIN_CSRF_COOKIE, csrf, max_age=3600, httponly=True, samesite="strict",
                            secure=request.url.scheme == "https", path="/login")
        return response

    async def login_form(self, request: Request) -> Response:
        """GET /login."""
        return self._login_page(request)

    async def login(self, request: Request) -> Response:
        """POST /login: check the CSRF pair, the rate limit and the password; open a session."""
        form = await _form(request)
        if form is None:
            return PlainTextResponse("send the login form (application/x-www-form-urlencoded, small)\n",
                                     status_code=400)
        cookie = request.cookies.get(LOGIN_CSRF_COOKIE, "")
        given = form.get("csrf", "")
        if not cookie or not hmac.compare_digest(cookie.encode(), given.encode()):
            return self._login_page(request, "Formulir kedaluwarsa, coba lagi / the form expired, try again",
                                    status=403)
        username, password = form.get("username", "")[:64], form.get("password", "")
        client = request.client.host if request.client else "?"
        wait = self.limiter.retry_after(username, client)
        if wait is not None:
            return self._login_page(request, f"Terlalu banyak percobaan / too many attempts: try again in "
                                    f"{int(wait // 60) + 1} min", status=429,
                                    headers={"Retry-After": str(int(wait) + 1)})
        account = await run_in_threadpool(self.accounts.account, username) if username else None
        ok = await run_in_threadpool(verify_password, password, account.password_hash if account else None)
        if not ok or account is None or not account.enabled:
            if self.limiter.failed(username, client):
                log.warning("dashboard logins refused for a while after repeated failures", user=username,
                            client=client)
            return self._login_page(request, "Nama atau kata sandi salah / wrong user name or password",
                                    status=401)
        self.limiter.succeeded(username)
        sid, csrf = new_session_id(), secrets.token_urlsafe(24)
        await run_in_threadpool(self.accounts.open_session, account.id, session_key(sid), csrf,
                                utcnow() + SESSION_LIFETIME)
        log.info("dashboard login", user=account.username, office=account.office_code or "*")
        response = RedirectResponse(_safe_next(form.get("next")), status_code=303)
        response.set_cookie(SESSION_COOKIE, sid, max_age=int(SESSION_LIFETIME.total_seconds()), httponly=True,
                            samesite="lax", secure=request.url.scheme == "https", path="/")
        response.delete_cookie(LOGIN_CSRF_COOKIE, path="/login")
        return response

    async def logout(self, request: Request) -> Response:
        """POST /logout (with the session's CSRF token): end the session."""
        viewer = await self.viewer(request)
        form = await _form(request)
        if viewer is None or viewer.session is None:
            return RedirectResponse("/login", status_code=303)
        if form is None or viewer.csrf is None or not hmac.compare_digest(viewer.csrf.encode(),
                                                                          form.get("csrf", "").encode()):
            return PlainTextResponse("CSRF token missing or wrong\n", status_code=403)
        await run_in_threadpool(self.accounts.close_session, viewer.session)
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response


_NO_STORE = {"Cache-Control": "no-store", "X-Frame-Options": "DENY", "Referrer-Policy": "same-origin",
             "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; "
                                        "form-action 'self'; frame-ancestors 'none'"}


def _html(text: str, *, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    """An HTML page; text a gateway forwarded may hold lone surrogates, which become '?' instead of a 500."""
    return HTMLResponse(text.encode("utf-8", "replace"), status_code=status, headers={**_NO_STORE, **(headers or {})})


def _forbidden(what: str) -> Response:
    return PlainTextResponse(f"{what}: not yours to see\n", status_code=403, headers=_NO_STORE)


def _not_found() -> Response:
    return PlainTextResponse("not found\n", status_code=404, headers=_NO_STORE)


def _safe_next(value: str | None) -> str:
    """A redirect target after login: a local path only (no open redirect to another site)."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value or len(value) > 500:
        return "/"
    return value


async def _form(request: Request) -> dict[str, str] | None:
    """A small urlencoded form body (first value of each field), or None when it is not one."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/x-www-form-urlencoded":
        return None
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            return None
    try:
        fields = parse_qs(body.decode("utf-8"), keep_blank_values=True, max_num_fields=10)
    except (UnicodeDecodeError, ValueError):
        return None
    return {k: v[0] for k, v in fields.items()}


@functools.lru_cache(maxsize=8192)
def _local_text(value: datetime, tz: ZoneInfo) -> str:
    try:
        local = value.astimezone(tz)
    except (OverflowError, ValueError):  # a forwarded time at the edge of the calendar
        return value.isoformat()
    return local.strftime("%Y-%m-%d %H:%M %Z")


def _duration(seconds: float) -> str:
    """'2 h 05 min' / '3 d 4 h' / '45 s'."""
    s = int(max(seconds, 0))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min"
    if s < 86400:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    return f"{s // 86400} d {s % 86400 // 3600} h"


def report_url(month: date, fmt: str, office: str | None = None) -> str:
    """The download link of a monthly report."""
    q = {"month": month.strftime("%Y-%m"), "format": fmt, **({"office": office} if office else {})}
    return "/report?" + urlencode(q)


__all__ = ["USAGE_REFRESH_S", "Dashboard", "UsageFigures", "UsageSnapshot", "Viewer", "build_offices", "report_url"]

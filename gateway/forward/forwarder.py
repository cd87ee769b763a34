"""Forwarding: drains the outbox to the central (BKD) instance and reports device health there.

An office gateway forwards with [forward]; a central that is a tier forwards with [central.upstream] (the
same settings, in Config.forward): the same job drains the same outbox, each punch carrying its own office
(docs/tiers.md).

    poll --save_poll(forward=True)--> outbox rows --claim_batch--> Forwarder.run_once() --HTTPS--> central
                                                 <--settle------ accepted: deleted / rejected: set aside + alert
                                                                 / kept: retried with backoff and jitter
A job on the scheduler's housekeeping pool every ``forward.interval_s``. Polling never waits for it:
the two meet only in the outbox table. Batches carry a content-derived batch_id and the central stores
idempotently, so a resend after a timeout or a crash never duplicates anything.

One bad punch never blocks the queue: a batch the upstream refuses as a whole (400/413) is halved until
the culprit stands alone and is set aside; a batch answered 5xx is halved the same way (``_isolate``),
and a punch that fails *alone* POISON_AFTER times while other punches of the same runs went through is
set aside too (outbox state "rejected", reason ``server_error: ...``; `fpgw forward status` shows it,
`fpgw forward retry-rejected` sends it again). When nothing gets through at all it is an outage, not a
poison punch: everything stays queued with the usual backoff and nothing is set aside.

Back-off: exponential with full jitter from ``forward.backoff_initial_s``. While the upstream cannot be
reached at all (OUTAGE_KINDS: timeout, refused connection, 5xx, unusable answer) it stops at
``forward.outage_retry_max_s`` (60 s) and the job is moved to the retry time, so the gateway notices the
link is back within that time, not after an hour; refusals (401/403, 429, other HTTP errors) back off
up to ``forward.backoff_max_s``: retrying them sooner changes nothing until someone fixes the cause.
"""

from __future__ import annotations

import random
import socket
import ssl
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import httpx
import structlog

from gateway import __version__, wire
from gateway.config import Config
from gateway.services import AppContext, Service
from gateway.store.outbox import Outbox, OutboxItem, next_attempt
from gateway.store.schema import utcnow

log = structlog.get_logger(__name__)

INGEST_PUNCHES = "/api/v1/ingest/punches"
INGEST_HEALTH = "/api/v1/ingest/health"
#: Bodies larger than this are gzip-compressed (office links are slow; JSON punches compress ~10x).
GZIP_ABOVE_BYTES = 4096
#: Problems the forwarder raises through the alerts table.
PROBLEM_REJECTED = "forward_rejected"
PROBLEM_BACKLOG = "forward_backlog"
#: A punch answered 5xx when sent alone this many times (in runs where other punches were accepted) is set
#: aside as rejected: a transient server error does not quarantine a punch, a punch that crashes the
#: central every time does not block the queue.
POISON_AFTER = 3
#: Requests a 5xx bisection may make before anything succeeded: beyond this it is an outage, not a
#: poison punch (keeps a central that answers 503 to everything from being hammered).
ISOLATION_BUDGET_MAX = 12
#: UpstreamError kinds that mean the upstream (or the link to it) is not there: retried within
#: forward.outage_retry_max_s. The others are refusals and back off up to forward.backoff_max_s.
OUTAGE_KINDS = frozenset({"timeout", "unreachable", "server_error", "bad_answer"})
#: Never move the forwarding job closer than this to the end of the current run (it must have ended).
MIN_RESCHEDULE_S = 1.0


#: What the maintenance team should check, sent with the alerts (same idea as gateway.health.alerts.CHECKS).
CHECKS_REJECTED = (
    "Read the reason (also in `fpgw forward status`). office_mismatch: [site] office_code differs from the office "
    "BKD registered for this gateway's token - fix the config or ask BKD for the right token.",
    "The refused punches are kept in the outbox, nothing is lost. After fixing the cause run "
    "`fpgw forward retry-rejected`.",
)
CHECKS_BACKLOG = (
    "Is the office internet link up? From the gateway server: curl -sI <forward.url>/api/v1/openapi.json",
    "HTTP 401/403 in `fpgw forward status` or the log: the gateway token is wrong or was revoked; ask BKD.",
    "Punches are safe in the outbox and go out by themselves once the central server answers.",
)


def full_jitter(rng: random.Random, initial_s: float, max_s: float, failures: int) -> float:
    """Exponential backoff with full jitter: uniform(0, min(max, initial * 2**(failures-1))), at least 10% of it.

    Jitter keeps many office gateways from hammering the centre in step when it comes back; the 10% floor
    keeps one gateway from retrying in a tight loop.
    """
    ceiling = min(max_s, initial_s * (2 ** max(0, min(failures - 1, 30))))
    return max(ceiling * 0.1, rng.uniform(0, ceiling))


class UpstreamError(Exception):
    """The upstream did not give a usable answer; everything sent stays queued."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind, self.detail = kind, detail


@dataclass
class RunReport:
    """What one forwarding run did (tests and the CLI read it)."""

    sent: int = 0
    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0
    kept: int = 0
    requests: int = 0
    error: str | None = None
    skipped: bool = False
    health_sent: bool = False
    reasons: dict[str, int] = field(default_factory=dict)


class Forwarder:
    """Drains the outbox to ``forward.url`` (accept / reject / keep per punch) and forwards device health."""

    name = "forwarder"

    def __init__(self, config: Config, outbox: Outbox, *, scheduler: Any = None, registry: Any = None,
                 transport: httpx.BaseTransport | None = None, rng: random.Random | None = None,
                 now: Callable[[], datetime] = utcnow, health_every_s: float | None = None,
                 stop_event: threading.Event | None = None) -> None:
        self.config = config
        self.fwd = config.forward
        self.outbox = outbox
        self.office_code = config.site.office_code
        self.scheduler = scheduler
        self.now = now
        self.rng = rng or random.Random()
        #: Device health goes upstream this often (and at start): forward.health_interval_s unless overridden.
        self.health_every_s = health_every_s if health_every_s is not None else self.fwd.health_interval_s
        self.stop_event = stop_event or threading.Event()
        self._transport = transport
        self._client: httpx.Client | None = None
        self._run_lock = threading.Lock()
        # Upstream state: logged and alerted once per change.
        self.failures = 0
        self.down_since: datetime | None = None
        self.retry_at: datetime | None = None
        self.last_error: str | None = None
        self._next_health_at: datetime | None = None
        #: Set by an outage failure: run_once moves the scheduled job to this time when it ends.
        self._wake_at: datetime | None = None
        self._backlog_open: bool | None = None
        self._metrics = _Metrics(registry) if registry is not None else None
        self._hostname = socket.gethostname()
        #: Punches per request: forward.batch_size, lowered for good when the centre says it is too many.
        self.batch_limit = self.fwd.batch_size
        #: A central forwarding to an upper tier ([central.upstream], docs/tiers.md): its outbox holds the punches
        #: of all its offices, each sent with its own office_code, and its health report holds their devices.
        self.tier = config.central.enabled and config.central.upstream is not None

    # -- lifecycle -------------------------------------------------------------------------------
    def client(self) -> httpx.Client:
        """The HTTP client (created on first use)."""
        if self._client is None:
            verify: Any = ssl.create_default_context(cafile=self.fwd.ca_file) if self.fwd.ca_file else True
            # TCP_NODELAY: httpx writes headers and body separately; with Nagle on, the body waits for the
            # server's delayed ACK (40 ms per request), which dominated small batches.
            transport = self._transport or httpx.HTTPTransport(
                verify=verify, socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)])
            self._client = httpx.Client(
                base_url=self.fwd.url, transport=transport, timeout=self.fwd.timeout_s,
                headers={"Authorization": f"Bearer {self.fwd.token or ''}", "User-Agent": f"fpgw/{__version__}"})
        return self._client

    def start(self) -> None:
        """Schedule the forwarding job (first run right away)."""
        if self.scheduler is not None:
            self.scheduler.add_job(self.run_once, "interval", seconds=self.fwd.interval_s, id="forward",
                                   executor="housekeeping", replace_existing=True, max_instances=1, coalesce=True,
                                   misfire_grace_time=int(self.fwd.interval_s) + 30,
                                   next_run_time=datetime.now(self.scheduler.timezone))
        log.info("forwarding enabled", upstream=self.fwd.url, tier=self.tier, batch_size=self.fwd.batch_size,
                 interval_s=self.fwd.interval_s, health_interval_s=self.health_every_s)

    def stop(self, deadline_s: float) -> None:
        """Stop the job; a batch in flight finishes (bounded by forward.timeout_s) or is resent later."""
        self.stop_event.set()
        if self.scheduler is not None:
            try:
                self.scheduler.remove_job("forward")
            except Exception:
                pass
        acquired = self._run_lock.acquire(timeout=max(0.1, deadline_s))
        try:
            if self._client is not None:
                self._client.close()
                self._client = None
        finally:
            if acquired:
                self._run_lock.release()

    # -- the job ---------------------------------------------------------------------------------
    def run_once(self) -> RunReport:
        """One forwarding run: drain due outbox rows batch by batch, forward health when due, check backlog."""
        report = RunReport()
        if not self._run_lock.acquire(blocking=False):
            report.skipped = True
            return report
        try:
            self._drain(report)
            self._forward_health(report)
            self._check_backlog()
        except Exception:
            # A bug must not kill the job; the rows stay queued and the next run retries.
            log.exception("forwarding run failed")
            report.error = "bug"
        finally:
            self._run_lock.release()
        self._reschedule()
        return report

    def _reschedule(self) -> None:
        """Move the next run of the job to the outage retry time (the interval alone could add interval_s)."""
        wake, self._wake_at = self._wake_at, None
        if wake is None or self.scheduler is None or self.stop_event.is_set():
            return
        wake = max(wake, self.now() + timedelta(seconds=MIN_RESCHEDULE_S))
        try:
            self.scheduler.modify_job("forward", next_run_time=wake)
        except Exception:  # no such job (a one-shot `fpgw forward` run, or stopping): the next run decides
            pass

    def _drain(self, report: RunReport) -> None:
        now = self.now()
        if self.retry_at is not None and now < self.retry_at:
            report.skipped = True
            return
        # The backlog as the upstream comes back (logged with the recovery, before draining it).
        backlog = self.outbox.stats(now).depth if self.down_since is not None else 0
        while not self.stop_event.is_set():
            items = self.outbox.claim_batch(self.batch_limit, self.now())
            if not items:
                return
            try:
                try:
                    self._send(items, report)
                except UpstreamError as exc:
                    if exc.kind != "server_error" or len(items) < 2:
                        raise  # a lone punch answered 5xx proves nothing: backoff, and it joins the next batch
                    self._isolate(items, report, exc)
            except UpstreamError as exc:
                self._upstream_failed(exc, items, report)
                return
            self._upstream_ok(report, backlog)
            if len(items) < self.batch_limit:
                return

    def _meta(self) -> dict[str, Any]:
        stats = self.outbox.stats(self.now())
        return wire.gateway_meta(office_code=self.office_code, office_name=self.config.site.office_name or None,
                                 hostname=self._hostname, version=__version__, outbox_depth=stats.depth,
                                 oldest_unforwarded_s=stats.oldest_age_s, tier=self.tier)

    def _post(self, path: str, doc: dict[str, Any]) -> httpx.Response:
        body = wire.dumps(doc)
        headers = {"Content-Type": "application/json"}
        if len(body) > GZIP_ABOVE_BYTES:
            import gzip

            body = gzip.compress(body, compresslevel=5)
            headers["Content-Encoding"] = "gzip"
        try:
            client = self.client()
        except (OSError, ssl.SSLError) as exc:
            raise UpstreamError("bad_ca_file", f"forward.ca_file {self.fwd.ca_file!r} is not a usable CA bundle: "
                                f"{exc}"[:300]) from None
        try:
            return client.post(path, content=body, headers=headers)
        except httpx.TimeoutException as exc:
            raise UpstreamError("timeout", f"no answer within {self.fwd.timeout_s:g} s ({type(exc).__name__})"
                                ) from None
        except httpx.TransportError as exc:
            raise UpstreamError("unreachable", f"{type(exc).__name__}: {exc}"[:300]) from None

    def _send(self, items: Sequence[OutboxItem], report: RunReport) -> None:
        """Send items; settle what the upstream answered. Raises UpstreamError when nothing was settled."""
        doc = wire.punch_batch([wire.encode_punch(it.punch) for it in items], self._meta())
        resp = self._post(INGEST_PUNCHES, doc)
        report.requests += 1
        if resp.status_code == 413 and len(items) > 1 and len(items) <= self.batch_limit:
            # The centre's max_batch / max_body_bytes is below our batch size: remember the smaller size.
            self.batch_limit = max(1, len(items) // 2)
            log.warning("upstream refuses batches this large; sending smaller ones", batch_size=self.batch_limit,
                        configured=self.fwd.batch_size)
        if resp.status_code in (400, 413) and len(items) > 1:
            # Something in the batch is unacceptable as a whole: halve until the culprit stands alone,
            # so one bad punch is set aside and every good one still goes through.
            mid = len(items) // 2
            self._send(items[:mid], report)
            self._send(items[mid:], report)
            return
        if resp.status_code in (400, 413):
            reason = f"{_error_code(resp)}: {_error_message(resp)}"
            self._settle(items, {}, {items[0].punch_id: reason}, report)
            return
        if resp.status_code != 200:
            kind = {401: "unauthorized", 403: "forbidden", 429: "throttled"}.get(
                resp.status_code, "server_error" if resp.status_code >= 500 else "http_error")
            raise UpstreamError(kind, f"HTTP {resp.status_code} {_error_message(resp)}"[:300])
        try:
            answer = resp.json()
            results = answer["results"]
            if not isinstance(results, list) or len(results) != len(items) or any(
                    not isinstance(r, dict) or r.get("index", i) != i for i, r in enumerate(results)):
                raise ValueError("results do not match the batch")
        except (ValueError, KeyError, TypeError) as exc:
            raise UpstreamError("bad_answer", f"unusable answer from upstream: {exc}"[:300]) from None
        statuses: dict[int, dict[str, Any]] = {}
        for it, res in zip(items, results, strict=True):
            statuses[it.punch_id] = res if isinstance(res, dict) else {}
        self._settle(items, statuses, {}, report)

    def _isolate(self, items: Sequence[OutboxItem], report: RunReport, first: UpstreamError) -> None:
        """The upstream answered 5xx to ``items``: find the punches it fails on by halving the batch.

        Both halves of a failing group are sent before going deeper, so an upstream that works proves it
        within a few requests. Halves it accepts are settled as usual. Raises UpstreamError (everything
        unsettled stays queued, nothing set aside) when nothing got through within the budget or at all:
        that is an outage. Otherwise each punch that failed alone is kept with its own backoff, or set
        aside as rejected once it failed alone POISON_AFTER times.
        """
        budget = min(ISOLATION_BUDGET_MAX, len(items).bit_length() + 2)
        failed, ok_seen, last = 1, False, first
        groups: list[Sequence[OutboxItem]] = [items]
        suspects: list[OutboxItem] = []
        while groups:
            group = groups.pop(0)
            if len(group) == 1:
                suspects.append(group[0])
                continue
            mid = len(group) // 2
            for half in (group[:mid], group[mid:]):
                try:
                    self._send(half, report)
                    ok_seen = True
                except UpstreamError as exc:
                    if exc.kind != "server_error":
                        raise  # the link itself failed: the usual backoff, nothing set aside
                    failed, last = failed + 1, exc
                    if not ok_seen and failed > budget:
                        raise
                    groups.append(half)
        if not ok_seen:
            raise last
        rejected: dict[int, str] = {}
        for it in suspects:
            if it.attempts + 1 >= POISON_AFTER:
                rejected[it.punch_id] = (f"server_error: {last.detail} - the central failed on this punch alone "
                                         f"{it.attempts + 1} times while other punches went through")[:2000]
        # Suspects below the threshold are kept with their own backoff (the rest of the queue moves on).
        self._settle(suspects, {}, rejected, report)
        if rejected:
            log.warning("punch set aside: the central fails on it every time", punches=len(rejected),
                        error=last.detail)

    def _settle(self, items: Sequence[OutboxItem], statuses: dict[int, dict[str, Any]], rejected: dict[int, str],
                report: RunReport) -> None:
        accepted: list[int] = []
        kept: dict[int, datetime] = {}
        rejected = dict(rejected)
        now = self.now()
        for it in items:
            if it.punch_id in rejected:
                continue
            res = statuses.get(it.punch_id, {})
            status = res.get("status")
            if status == "accepted":
                accepted.append(it.punch_id)
                if res.get("duplicate"):
                    report.duplicates += 1
            elif status == "rejected":
                rejected[it.punch_id] = str(res.get("reason") or "rejected by upstream")[:2000]
            else:  # "retry" or anything unknown: keep, with this row's own backoff
                delay = full_jitter(self.rng, self.fwd.backoff_initial_s, self.fwd.backoff_max_s, it.attempts + 1)
                kept[it.punch_id] = next_attempt(now, delay)
        by_reason: dict[str, int] = {}
        for reason in rejected.values():
            code = reason.split(":")[0].strip() or "rejected"
            by_reason[code] = by_reason.get(code, 0) + 1
        alerts = [self._rejected_alert(code, n, next(r for r in rejected.values() if r.startswith(code)))
                  for code, n in sorted(by_reason.items()) if self._should_alert_rejected(code)]
        self.outbox.settle(accepted=accepted, rejected=rejected, kept=kept,
                      error="kept by upstream for a later try", alerts=alerts)
        for code, n in by_reason.items():
            log.warning("punches rejected by upstream; set aside", reason=code, punches=n,
                        hint="fix the cause, then run `fpgw forward retry-rejected`")
            report.reasons[code] = report.reasons.get(code, 0) + n
        report.sent += len(items)
        report.accepted += len(accepted)
        report.rejected += len(rejected)
        report.kept += len(kept)
        if self._metrics:
            self._metrics.punches.labels("accepted").inc(len(accepted))
            self._metrics.punches.labels("rejected").inc(len(rejected))
            self._metrics.punches.labels("kept").inc(len(kept))

    def _should_alert_rejected(self, code: str) -> bool:
        window = self.config.alerts.reminder_s or 86400.0
        last = self.outbox.last_alert_event(PROBLEM_REJECTED, reason=code,
                                       since=self.now() - timedelta(seconds=window))
        return last is None

    def _rejected_alert(self, code: str, n: int, example: str) -> dict[str, Any]:
        return {"office_code": self.office_code, "problem": PROBLEM_REJECTED, "event": "start",
                "severity": "warning",
                "title": f"{n} punch(es) refused by the central server ({code})",
                "message": (f"The central server (BKD) refused {n} punch(es): {example}. They are kept aside in the "
                            "outbox, nothing is lost. Fix the cause, then run `fpgw forward retry-rejected`."),
                "details": {"reason": code, "punches": n, "example": example, "upstream": self.fwd.url},
                "checks": CHECKS_REJECTED, "office_name": self.config.site.office_name}

    # -- upstream state --------------------------------------------------------------------------
    def _upstream_failed(self, exc: UpstreamError, items: Sequence[OutboxItem], report: RunReport) -> None:
        now = self.now()
        self.failures += 1
        outage = exc.kind in OUTAGE_KINDS
        ceiling = min(self.fwd.backoff_max_s, self.fwd.outage_retry_max_s) if outage else self.fwd.backoff_max_s
        delay = full_jitter(self.rng, self.fwd.backoff_initial_s, ceiling, self.failures)
        self.retry_at = now + timedelta(seconds=delay)
        self._wake_at = self.retry_at if outage else None
        report.error = exc.kind
        if items:
            self.outbox.settle(kept={it.punch_id: self.retry_at for it in items}, error=str(exc))
            report.kept += len(items)
        if self._metrics:
            self._metrics.up.set(0)
            self._metrics.requests.labels(exc.kind).inc()
        # One WARNING per outage; during it only a turn to a refused token is news worth a line.
        previous = (self.last_error or "").split(":")[0]
        changed = self.down_since is None or (exc.kind in ("unauthorized", "forbidden") and exc.kind != previous)
        if self.down_since is None:
            self.down_since = now
        self.last_error = str(exc)
        if changed:
            stats = self.outbox.stats(now)
            log.warning("upstream not accepting punches; keeping them in the outbox", upstream=self.fwd.url,
                        problem=exc.kind, error=exc.detail, backlog=stats.depth, retry_in_s=round(delay, 1))

    def _upstream_ok(self, report: RunReport, backlog: int) -> None:
        if self._metrics:
            self._metrics.up.set(1)
            self._metrics.requests.labels("ok").inc()
        if self.down_since is not None:
            now = self.now()
            log.info("upstream accepting punches again", upstream=self.fwd.url,
                     outage_s=round((now - self.down_since).total_seconds()), backlog=backlog,
                     failed_tries=self.failures)
        self.failures = 0
        self.down_since = None
        self.retry_at = None
        self.last_error = None

    def _forward_health(self, report: RunReport) -> None:
        now = self.now()
        if self._next_health_at is not None and now < self._next_health_at:
            return
        if (self.retry_at is not None and now < self.retry_at) or self.stop_event.is_set():
            return
        self._next_health_at = now + timedelta(seconds=self.health_every_s)
        doc = wire.health_report(self._meta(), [wire.encode_device(row, with_office=self.tier) for row in
                                                self.outbox.device_health_snapshot(every_office=self.tier)])
        try:
            resp = self._post(INGEST_HEALTH, doc)
            if resp.status_code != 200:
                raise UpstreamError("http_error", f"HTTP {resp.status_code} {_error_message(resp)}"[:300])
        except UpstreamError as exc:
            # Retry soon rather than in health_every_s; the punch path owns the up/down state.
            self._next_health_at = now + timedelta(seconds=min(self.health_every_s, self.fwd.interval_s))
            log.debug("device health not forwarded", error=str(exc))
            return
        report.health_sent = True

    def _check_backlog(self) -> None:
        now = self.now()
        stats = self.outbox.stats(now)
        if self._metrics:
            self._metrics.rejected.set(stats.rejected)
        if self._backlog_open is None:
            last = self.outbox.last_alert_event(PROBLEM_BACKLOG)
            self._backlog_open = last is not None and last[0] != "end"
        late = stats.oldest_age_s is not None and stats.oldest_age_s > self.fwd.alert_after_s
        if late and not self._backlog_open:
            hours = stats.oldest_age_s / 3600 if stats.oldest_age_s else 0.0
            self.outbox.add_alert(problem=PROBLEM_BACKLOG, event="start",
                             severity="warning",
                             title=f"Punches not forwarded to BKD for {hours:.1f} h ({stats.depth} waiting)",
                             message=(f"{stats.depth} punch(es) wait in the outbox; the oldest is {hours:.1f} h old. "
                                      f"Last upstream error: {self.last_error or 'none'}. They are safe here and go "
                                      "out automatically once the central server answers; check the office's "
                                      "internet link and forward.url / token."),
                             details={"depth": stats.depth, "oldest_age_s": stats.oldest_age_s,
                                      "upstream": self.fwd.url, "last_error": self.last_error},
                             checks=CHECKS_BACKLOG, office_name=self.config.site.office_name)
            log.warning("forwarding backlog too old", depth=stats.depth, oldest_age_s=round(stats.oldest_age_s or 0),
                        alert_after_s=self.fwd.alert_after_s)
            self._backlog_open = True
        elif not late and self._backlog_open:
            self.outbox.add_alert(problem=PROBLEM_BACKLOG, event="end",
                             severity="info", title="Forwarding to BKD caught up",
                             message=f"The outbox is back to normal ({stats.depth} waiting).",
                             details={"depth": stats.depth, "oldest_age_s": stats.oldest_age_s},
                             office_name=self.config.site.office_name)
            log.info("forwarding backlog cleared", depth=stats.depth)
            self._backlog_open = False


def _error_code(resp: httpx.Response) -> str:
    try:
        return str(resp.json().get("error") or f"http_{resp.status_code}")
    except (ValueError, AttributeError):
        return f"http_{resp.status_code}"


def _error_message(resp: httpx.Response) -> str:
    try:
        return str(resp.json().get("message") or "")[:300]
    except (ValueError, AttributeError):
        return resp.text[:200]


class _Metrics:
    """Prometheus series of the forwarder (only when the daemon has a registry)."""

    def __init__(self, registry: Any) -> None:
        from prometheus_client import Counter, Gauge

        # Depth and age of the outbox are exported by gateway.web.metrics (through outbox_stats).
        self.rejected = Gauge("fpgw_outbox_rejected", "Punches the upstream refused (set aside)", registry=registry)
        self.up = Gauge("fpgw_forward_upstream_up", "1 when the last forward request succeeded", registry=registry)
        self.punches = Counter("fpgw_forward_punches", "Punches settled by the upstream's answer", ["result"],
                               registry=registry)
        self.requests = Counter("fpgw_forward_requests", "Forward requests by outcome", ["outcome"],
                                registry=registry)


def services(ctx: AppContext) -> list[Service]:
    """The forwarder, when ``[forward] url`` is set."""
    if not ctx.config.forward.url:
        return []
    return [Forwarder(ctx.config, ctx.outbox, scheduler=ctx.scheduler, registry=ctx.metrics_registry,
                      stop_event=ctx.stop_event)]

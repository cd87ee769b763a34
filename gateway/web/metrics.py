"""Prometheus metrics of the gateway: a service registering its collectors on ctx.metrics_registry
(served by gateway.web.status at /metrics).

    poller --PollOutcome (ctx.poll_observers)--> PollMetrics (duration histogram, polls by outcome)
    scrape --> HealthCollector.collect(): device state, problems, counts, skew, ages from ctx.health (the health
               monitor) and the devices table; outbox depth/age (forwarding's outbox_stats); alerts sent/failed
Labels are always ``device`` (and ``serial`` where it identifies the terminal), as in the logs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from gateway.health.gateway import GATEWAY_PROBLEMS
from gateway.models import PollOutcome
from gateway.services import AppContext, HealthView, Service
from gateway.store.db import StorageError
from gateway.store.health import HealthRepo
from gateway.store.outbox import Outbox

#: Poll durations from a quick count check (~0.1 s) to a full download of a big log (minutes).
POLL_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class PollMetrics:
    """Per-poll counters, fed as a poll observer (cheap: no I/O)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.duration = Histogram("fpgw_poll_duration_seconds", "Wall time of one device poll", ["device"],
                                  buckets=POLL_BUCKETS, registry=registry)
        self.polls = Counter("fpgw_polls", "Device polls by outcome (ok or an error kind)", ["device", "outcome"],
                             registry=registry)
        self.new_punches = Counter("fpgw_new_punches", "New punches stored from a device", ["device"],
                                   registry=registry)

    def observe(self, outcome: PollOutcome) -> None:
        """Poll observer."""
        self.duration.labels(outcome.device_id).observe(max(outcome.duration_s, 0.0))
        self.polls.labels(outcome.device_id, "ok" if outcome.ok else (outcome.error_kind or "bug")).inc()
        if outcome.new_punches:
            self.new_punches.labels(outcome.device_id).inc(outcome.new_punches)


class HealthCollector(Collector):
    """Gauges computed at scrape time from the health monitor and the store (always current, no bookkeeping)."""

    def __init__(self, monitor: HealthView, repo: HealthRepo,
                 outbox: Callable[[], tuple[int, float | None]] | None = None,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.monitor = monitor
        self.repo = repo
        self.outbox = outbox
        self.clock = clock

    def describe(self) -> list[Any]:
        """No up-front description (metrics depend on the devices present)."""
        return []

    def collect(self) -> Iterator[Any]:
        """Build every gauge for this scrape."""
        now = self.clock()
        # The gateway's own health first: it must show even when the database cannot be read.
        gw_problems, free = self.monitor.gateway_health()
        gw = GaugeMetricFamily("fpgw_gateway_problem", "1 for every open problem of the gateway itself (database, "
                               "disk)", labels=["problem", "severity"])
        open_names = {p.name: p.severity for p in gw_problems}
        for name, (severity, _meaning) in GATEWAY_PROBLEMS.items():
            gw.add_metric([name, open_names.get(name, severity)], 1.0 if name in open_names else 0.0)
        yield gw
        if free is not None:
            disk = GaugeMetricFamily("fpgw_database_disk_free_bytes", "Free space on the SQLite database's "
                                     "filesystem (at the last health sweep)")
            disk.add_metric([], free)
            yield disk
        snap = self.monitor.snapshot()
        try:
            rows = self.repo.devices()
        except StorageError:
            rows = []  # the database is the gateway's problem (fpgw_gateway_problem above); no device gauges now
        up = GaugeMetricFamily("fpgw_device_up", "1 when the device is online, 0 offline or unknown",
                               labels=["device", "serial"])
        states = GaugeMetricFamily("fpgw_device_state", "1 for the device's current health state",
                                   labels=["device", "state"])
        records = GaugeMetricFamily("fpgw_device_records", "Attendance records held by the device", labels=["device"])
        users = GaugeMetricFamily("fpgw_device_users", "Users enrolled on the device", labels=["device"])
        ratio = GaugeMetricFamily("fpgw_device_capacity_ratio", "Used share of the device's storage (0-1)",
                                  labels=["device", "kind"])
        skew = GaugeMetricFamily("fpgw_device_clock_skew_seconds", "Device clock minus server clock",
                                 labels=["device"])
        punch_age = GaugeMetricFamily("fpgw_device_last_punch_age_seconds", "Age of the newest stored punch",
                                      labels=["device"])
        seen_age = GaugeMetricFamily("fpgw_device_last_seen_age_seconds", "Time since the device last answered",
                                     labels=["device"])
        problems = GaugeMetricFamily("fpgw_device_problem", "1 for every open problem",
                                     labels=["device", "problem", "severity"])
        open_n = GaugeMetricFamily("fpgw_device_open_problems", "Open problems per device (notices excluded)",
                                   labels=["device"])
        muted = GaugeMetricFamily("fpgw_device_muted", "1 while the device's alerts are muted", labels=["device"])
        for r in rows:
            if not r.enabled:
                continue
            h = snap.get(r.device_id)
            state = h.state if h else "unknown"
            up.add_metric([r.device_id, r.serial or ""], 1.0 if state == "online" else 0.0)
            for name in ("online", "offline", "unknown"):
                states.add_metric([r.device_id, name], 1.0 if state == name else 0.0)
            if r.last_record_count is not None:
                records.add_metric([r.device_id], r.last_record_count)
                if r.records_cap:
                    ratio.add_metric([r.device_id, "records"], r.last_record_count / r.records_cap)
            if r.last_user_count is not None:
                users.add_metric([r.device_id], r.last_user_count)
                if r.users_cap:
                    ratio.add_metric([r.device_id, "users"], r.last_user_count / r.users_cap)
            if r.clock_skew_s is not None:
                skew.add_metric([r.device_id], r.clock_skew_s)
            if r.last_punch_at is not None:
                punch_age.add_metric([r.device_id], max(0.0, (now - r.last_punch_at).total_seconds()))
            if r.last_seen_at is not None:
                seen_age.add_metric([r.device_id], max(0.0, (now - r.last_seen_at).total_seconds()))
            plist = list(h.problems.values()) if h else []
            for p in plist:
                problems.add_metric([r.device_id, p.name, p.severity], 1.0)
            open_n.add_metric([r.device_id], sum(1 for p in plist if not p.notice))
            muted.add_metric([r.device_id], 1.0 if r.muted_until is not None and r.muted_until > now else 0.0)
        yield from (up, states, records, users, ratio, skew, punch_age, seen_age, problems, open_n, muted)

        delivered, delivery_failures = self.monitor.alert_deliveries()
        sent = CounterMetricFamily("fpgw_alerts_sent", "Alerts delivered to every channel")
        sent.add_metric([], delivered)
        failed = CounterMetricFamily("fpgw_alert_delivery_failures", "Failed alert delivery attempts")
        failed.add_metric([], delivery_failures)
        yield from (sent, failed)

        if self.outbox is not None:
            try:
                depth, age = self.outbox()
            except Exception:  # a scrape must not fail because of the outbox query
                return
            g = GaugeMetricFamily("fpgw_outbox_depth", "Punches waiting to be forwarded upstream")
            g.add_metric([], depth)
            yield g
            g = GaugeMetricFamily("fpgw_outbox_oldest_age_seconds", "Age of the oldest unforwarded punch")
            g.add_metric([], age or 0.0)
            yield g


def outbox_reader(outbox: Outbox) -> Callable[[], tuple[int, float | None]]:
    """(depth, oldest age s) of the outbox."""
    def read() -> tuple[int, float | None]:
        stats = outbox.stats()
        return stats.depth, stats.oldest_age_s
    return read


class MetricsService:
    """Registers the poll metrics and the health collector; feeds the poll metrics while running."""

    name = "metrics"

    def __init__(self, ctx: AppContext) -> None:
        self.ctx = ctx
        if ctx.metrics_registry is None:
            ctx.metrics_registry = CollectorRegistry(auto_describe=True)
        self.poll_metrics = PollMetrics(ctx.metrics_registry)
        if ctx.health is not None:
            outbox = outbox_reader(ctx.outbox) if ctx.config.forward.url else None
            ctx.metrics_registry.register(HealthCollector(ctx.health, ctx.health_repo, outbox))

    def start(self) -> None:
        """Count every poll from now on."""
        self.ctx.poll_observers.append(self.poll_metrics.observe)

    def stop(self, deadline_s: float) -> None:
        """Stop counting polls (the registry keeps serving what was counted)."""
        try:
            self.ctx.poll_observers.remove(self.poll_metrics.observe)
        except ValueError:
            pass


def services(ctx: AppContext) -> list[Service]:
    """The metrics of polls and device health (after gateway.health.monitor, whose ctx.health it reads)."""
    return [MetricsService(ctx)]

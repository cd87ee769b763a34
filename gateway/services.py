"""The plug-in seam of the daemon: long-running services started and stopped by gateway.app.

gateway.app builds one ``AppContext`` (config, the repositories, scheduler, stop event) and asks each
area for its services: ``gateway.health.monitor`` (health, alerts), ``gateway.web.metrics`` (Prometheus
collectors), ``gateway.forward.forwarder`` (outbox -> upstream), ``gateway.central.service`` (central API),
``gateway.web.status`` (status page, JSON, /metrics, serves the routes the others registered). Start order
is that order; stop order is the reverse. Poll outcomes reach services through ``ctx.poll_observers``;
services find each other through the typed fields below (each says who sets it), never through a dict.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from apscheduler.schedulers.background import BackgroundScheduler
    from prometheus_client import CollectorRegistry
    from starlette.routing import BaseRoute

    from gateway.config import Config
    from gateway.models import DeviceHealth, PollOutcome
    from gateway.store.central import CentralStore
    from gateway.store.health import HealthRepo
    from gateway.store.outbox import Outbox
    from gateway.store.punches import Store


class Service(Protocol):
    """Something the daemon runs alongside polling."""

    name: str

    def start(self) -> None:
        """Start (register jobs/threads). Must not block."""
        ...

    def stop(self, deadline_s: float) -> None:
        """Stop within ``deadline_s`` seconds; never raise."""
        ...


class FailureView(Protocol):
    """The health model's count of failed polls, read by the poll scheduler to back a device off.

    Implemented by gateway.health (the one place that counts failures); gateway.polling depends only on this.
    """

    def consecutive_failures(self, device_id: str) -> int:
        """Polls of the device that failed in a row since its last good poll (0 when it is fine or unknown)."""
        ...


class HealthView(FailureView, Protocol):
    """The health monitor as the other services see it (status page, metrics, central)."""

    def snapshot(self) -> dict[str, DeviceHealth]:
        """Every device's health (a copy, safe to read from any thread)."""
        ...

    def alert_deliveries(self) -> tuple[int, int]:
        """(alerts delivered, failed delivery attempts) since start, for metrics."""
        ...

    def deliver_pending(self) -> None:
        """Send alerts other writers put in the alerts table now, not at the next sweep."""
        ...

    def gateway_health(self) -> tuple[list[Any], int | None]:
        """The gateway's own open problems (gateway.health.gateway.GatewayProblem, worst first) and the free
        bytes on the database's disk (None when not measured)."""
        ...


class RunningPolls(Protocol):
    """Which device polls are running now (the health sweep catches a poll that never reports)."""

    def running_since(self) -> dict[str, float]:
        """Device id -> ``time.monotonic()`` when its running poll started."""
        ...


@dataclass
class AppContext:
    """Everything a service may use. Built once by gateway.app."""

    config: Config
    #: Punches, devices and poll runs (gateway.store.punches).
    store: Store
    #: Device health, alerts, mutes and the devices table as health sees it (gateway.store.health).
    health_repo: HealthRepo
    scheduler: BackgroundScheduler
    #: The outbox queue the forwarder drains (gateway.store.outbox).
    outbox: Outbox
    #: The central (BKD) tables: ingest receipts, consolidated punches, gateways (gateway.store.central).
    #: Used only when [central] is enabled.
    central_store: CentralStore
    #: Set when the daemon is shutting down; long loops check it.
    stop_event: threading.Event = field(default_factory=threading.Event)
    #: Called (in the polling thread) with every PollOutcome, after it was stored. Must be quick.
    poll_observers: list[Callable[[PollOutcome], None]] = field(default_factory=list)
    #: Starlette routes registered by services; gateway.web.status serves them.
    http_routes: list[BaseRoute] = field(default_factory=list)
    #: Prometheus registry every service registers its metrics with.
    metrics_registry: CollectorRegistry | None = None
    #: Request a poll of one device now (set by gateway.app; coalesced behind a running poll).
    poll_now: Callable[[str], bool] | None = None
    #: The polls in flight (set by gateway.app: the PollScheduler).
    polls: RunningPolls | None = None
    #: The health monitor (set by gateway.health.monitor.services).
    health: HealthView | None = None
    #: Enrolment backups per device for the status page: ``{device_id: {"at", "users", "templates", "user_drop"}}``
    #: (set by gateway.app from gateway.store.enrol; None in contexts without it).
    enrol_backups: Callable[[], dict[str, dict[str, Any]]] | None = None
    #: The port the HTTP server listens on (set by gateway.web.status once it serves; useful with port 0).
    http_port: int | None = None


class HousekeepingJob:
    """A Service that runs ``run()`` every ``every_s`` on the scheduler's housekeeping pool (one at a time,
    missed runs coalesced), the first run ``first_delay_s`` after start. Subclasses set ``name``, ``JOB_ID``,
    ``every_s`` and ``first_delay_s`` and define ``run``; a run under way when the job is removed finishes on
    its own (nothing waits for it)."""

    name: str
    JOB_ID: str
    ctx: AppContext
    every_s: float
    first_delay_s: float

    def run(self) -> object:
        raise NotImplementedError

    def start(self) -> None:
        """Register the job (first run shortly after start, then every ``every_s``)."""
        self.ctx.scheduler.add_job(self.run, "interval", seconds=self.every_s, id=self.JOB_ID, replace_existing=True,
                                   executor="housekeeping", max_instances=1, coalesce=True,
                                   misfire_grace_time=int(self.every_s),
                                   next_run_time=datetime.now(UTC) + timedelta(seconds=self.first_delay_s))

    def stop(self, deadline_s: float) -> None:
        """Remove the job; never raises (it may never have been added)."""
        try:
            self.ctx.scheduler.remove_job(self.JOB_ID)
        except Exception:
            pass

"""The plug-in seam of the daemon: long-running services started and stopped by gateway.app.

gateway.app builds one ``AppContext`` (config, engine, store, scheduler, stop event) and asks each
area for its services: ``gateway.health.monitor`` (health, alerts), ``gateway.forward.forwarder``
(outbox -> upstream), ``gateway.central.api`` (central API), ``gateway.web.status`` (status page,
JSON, /metrics, serves the routes the others registered). Start order is that order; stop order is
the reverse. Poll outcomes reach services through ``ctx.poll_observers``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from apscheduler.schedulers.background import BackgroundScheduler
    from prometheus_client import CollectorRegistry
    from sqlalchemy import Engine
    from starlette.routing import BaseRoute

    from gateway.config import Config
    from gateway.models import PollOutcome
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


@dataclass
class AppContext:
    """Everything a service may use. Built once by gateway.app."""

    config: Config
    engine: Engine
    store: Store
    scheduler: BackgroundScheduler
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
    #: Free-form values services share (e.g. "health" -> the HealthMonitor for the status page).
    extras: dict[str, Any] = field(default_factory=dict)

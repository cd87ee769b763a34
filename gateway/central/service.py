"""Central mode in the daemon: gateway.app asks ``services(ctx)`` for the API's routes and housekeeping.

    gateway.app --services(ctx)--> CentralApi routes (ctx.http_routes, served by gateway.web) + CentralService
                                   + the regency dashboard's pages (gateway.central.dashboard, at / of the central)
                                   + UsageRefresh: the dashboard's usage figures, recomputed on the scheduler
"""

from __future__ import annotations

import structlog

from gateway.central.api import build_api
from gateway.central.dashboard import USAGE_REFRESH_S, Dashboard, UsageFigures
from gateway.central.silent import CentralService
from gateway.central.usage import WorkRules
from gateway.services import AppContext, HousekeepingJob, Service

log = structlog.get_logger(__name__)

#: The first usage computation waits this long after start, so start-up (migrations, first reports) comes first.
USAGE_FIRST_DELAY_S = 5.0


class UsageRefresh(HousekeepingJob):
    """Recomputes the dashboard's usage figures every ``every_s`` on the scheduler's housekeeping pool.

    The computation takes seconds for a regency; it never runs inside a request (the pages read the last
    snapshot). A failure keeps the previous snapshot and is logged once per failure streak.
    """

    name = "central-usage"
    JOB_ID = "central:usage"

    def __init__(self, ctx: AppContext, figures: UsageFigures, *, every_s: float = USAGE_REFRESH_S,
                 first_delay_s: float = USAGE_FIRST_DELAY_S) -> None:
        self.ctx = ctx
        self.figures = figures
        self.every_s = every_s
        self.first_delay_s = first_delay_s
        self._failing = False

    def run(self) -> bool:
        """One refresh; False when it failed (the page keeps showing the previous figures)."""
        try:
            snapshot = self.figures.refresh()
        except Exception:
            if not self._failing:
                log.exception("dashboard usage figures could not be computed; the page keeps the previous ones")
            self._failing = True
            return False
        if self._failing:
            log.info("dashboard usage figures computed again")
            self._failing = False
        log.debug("dashboard usage figures computed", offices=len(snapshot.offices), took_s=round(snapshot.took_s, 2))
        return True


def services(ctx: AppContext) -> list[Service]:
    """Central mode's routes (added to ctx.http_routes) and its housekeeping services."""
    if not ctx.config.central.enabled:
        return []
    if not ctx.config.http.enabled:
        log.warning("central mode is on but [http] enabled = false: the ingest and BKD API are not served")
    if not ctx.central_store.on_postgresql:
        log.warning("central mode on SQLite: fine for a trial, use PostgreSQL for a regency")
    api = build_api(ctx.config, ctx.central_store)
    ctx.http_routes.extend(api.routes())
    rules = WorkRules.from_config(ctx.config)
    usage = UsageFigures(ctx.central_store.engine, rules)
    ctx.http_routes.extend(Dashboard(ctx.central_store, api_tokens=api.api_tokens, timezone=ctx.config.site.timezone,
                                     silent_after_s=ctx.config.central.gateway_silent_after_s,
                                     rules=rules, usage=usage).routes())
    return [CentralService(ctx, api), UsageRefresh(ctx, usage)]

"""Central mode in the daemon: gateway.app asks ``services(ctx)`` for the API's routes and housekeeping.

    gateway.app --services(ctx)--> CentralApi routes (ctx.http_routes, served by gateway.web) + CentralService
                                   + the regency dashboard's pages (gateway.central.dashboard, at / of the central)
"""

from __future__ import annotations

import structlog

from gateway.central.api import build_api
from gateway.central.dashboard import Dashboard
from gateway.central.silent import CentralService
from gateway.central.usage import WorkRules
from gateway.services import AppContext, Service

log = structlog.get_logger(__name__)


def services(ctx: AppContext) -> list[Service]:
    """Central mode's routes (added to ctx.http_routes) and its housekeeping service."""
    if not ctx.config.central.enabled:
        return []
    if not ctx.config.http.enabled:
        log.warning("central mode is on but [http] enabled = false: the ingest and BKD API are not served")
    if not ctx.central_store.on_postgresql:
        log.warning("central mode on SQLite: fine for a trial, use PostgreSQL for a regency")
    api = build_api(ctx.config, ctx.central_store)
    ctx.http_routes.extend(api.routes())
    ctx.http_routes.extend(Dashboard(ctx.central_store, api_tokens=api.api_tokens, timezone=ctx.config.site.timezone,
                                     silent_after_s=ctx.config.central.gateway_silent_after_s,
                                     rules=WorkRules.from_config(ctx.config)).routes())
    return [CentralService(ctx, api)]


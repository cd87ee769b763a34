"""Placeholder until this area lands (see gateway.services); returns no services."""

from __future__ import annotations

from gateway.services import AppContext, Service


def services(ctx: AppContext) -> list[Service]:
    """The services of this area for the daemon."""
    return []

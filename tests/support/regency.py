"""A regency's history at the central for the usage and report tests: the central heard of its gateways and
terminals long before the month under test (ingest stamps first contact with the wall clock)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import update

from gateway.store import schema as s


def known_since(engine: Any, when: datetime) -> None:
    """Pretend every gateway and terminal first reported at ``when`` (first contact only; last contact stays)."""
    with engine.begin() as conn:
        conn.execute(update(s.devices).values(created_at=when))
        conn.execute(update(s.gateways).values(first_seen_at=when))

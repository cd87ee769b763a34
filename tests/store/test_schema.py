"""The migrated database matches gateway.store.schema exactly (device_health and alerts included)."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from gateway.store.db import create_db_engine, upgrade
from gateway.store.schema import metadata


@pytest.mark.timeout(60)
def test_migrations_create_exactly_the_schema(db_url: str) -> None:
    engine = create_db_engine(db_url, pool_size=1)
    try:
        upgrade(engine)
        with engine.connect() as conn:
            diffs = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), metadata)
    finally:
        engine.dispose()
    assert diffs == []

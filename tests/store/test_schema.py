"""The migrated database matches gateway.store.schema exactly (device_health and alerts included), and a new
SQLite database, created straight from the schema (gateway.store.db._create_fresh_sqlite), matches the migrated
one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, inspect, text

from gateway.store.db import HEAD_REVISION, _alembic_config, create_db_engine, upgrade, writer
from gateway.store.schema import metadata


def _migrated(url: str) -> Engine:
    """An engine on ``url`` brought to head by running every migration (never the fresh-database shortcut)."""
    engine = create_db_engine(url, pool_size=1)
    with writer(engine).begin() as conn:
        command.upgrade(_alembic_config(conn), "head")
    return engine


@pytest.mark.timeout(60)
def test_migrations_create_exactly_the_schema(db_url: str) -> None:
    engine = _migrated(db_url)
    try:
        with engine.connect() as conn:
            diffs = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), metadata)
    finally:
        engine.dispose()
    assert diffs == []


def _shape(engine: Engine) -> dict[str, Any]:
    """Every table with its columns (in order), keys and indexes, and the recorded revision."""
    with engine.connect() as conn:
        insp = inspect(conn)
        shape: dict[str, Any] = {"revision": conn.execute(text("SELECT version_num FROM alembic_version")).scalar()}
        for table in sorted(insp.get_table_names()):
            if table == "alembic_version":
                continue
            shape[table] = {
                "columns": [(c["name"], str(c["type"]), c["nullable"], str(c.get("default"))) for c in
                            insp.get_columns(table)],
                "pk": insp.get_pk_constraint(table)["constrained_columns"],
                "unique": sorted((u["name"], tuple(u["column_names"])) for u in insp.get_unique_constraints(table)),
                "fks": sorted((f["name"], tuple(f["constrained_columns"]), f["referred_table"],
                               str(f.get("options"))) for f in insp.get_foreign_keys(table)),
                "indexes": sorted((i["name"], tuple(i["column_names"]), bool(i["unique"]))
                                  for i in insp.get_indexes(table)),
            }
    return shape


@pytest.mark.timeout(60)
def test_a_new_sqlite_database_is_created_with_the_migrated_schema(tmp_path: Path) -> None:
    migrated = _migrated(f"sqlite:///{tmp_path / 'migrated.db'}")
    fresh = create_db_engine(f"sqlite:///{tmp_path / 'fresh.db'}", pool_size=1)
    try:
        assert upgrade(fresh) == (None, HEAD_REVISION)
        assert upgrade(fresh) == (HEAD_REVISION, HEAD_REVISION)
        assert _shape(fresh) == _shape(migrated)
    finally:
        migrated.dispose()
        fresh.dispose()


@pytest.mark.timeout(60)
def test_a_sqlite_database_holding_any_table_is_migrated_not_recreated(tmp_path: Path) -> None:
    engine = create_db_engine(f"sqlite:///{tmp_path / 'x.db'}", pool_size=1)
    try:
        with writer(engine).begin() as conn:
            command.upgrade(_alembic_config(conn), "0006_quarantine")
            conn.execute(text("INSERT INTO kv (key, value, updated_at) VALUES ('keep', 'me', '2026-12-01 00:00:00')"))
        assert upgrade(engine) == ("0006_quarantine", HEAD_REVISION)
        with engine.connect() as conn:
            assert conn.execute(text("SELECT value FROM kv WHERE key = 'keep'")).scalar() == "me"
    finally:
        engine.dispose()

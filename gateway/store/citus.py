"""The central's database on a Citus cluster: which tables are distributed, which are reference tables (issue 15).

    operator, once, after `fpgw db upgrade` on the coordinator --> distribute(engine) --> Citus metadata
    tests/store/test_citus.py (marker ``citus``, GW_TEST_CITUS_URL) --> distribute() + the central's paths

Not used by the daemon: a plain PostgreSQL central never calls it. The layout and its reasoning are in
docs/scale-out.md "Citus". In short: ``punches`` is distributed by ``office_code`` (every unique constraint holds
it: uq_punches_key leads with it, the primary key is (id, office_code, device_time) since migration
0011_partitions), so an office's punches, its dedup and its pull queries stay on one shard; the small tables
the ingest and the pull API join with are reference tables (a copy on every worker); the rest stays on the
coordinator. Citus cannot run the feed-order trigger (no triggers on distributed tables), so it is dropped here
and the insert paths take the trigger's lock themselves (gateway.store.punches.take_feed_lock_if_untriggered):
see FEED_TRIGGER_NOTE.
"""

from __future__ import annotations

from sqlalchemy import Engine, text

from gateway.store.db import writer
from gateway.store.punches import forget_feed_trigger

#: Distribution column of punches: the office, which every query of the pull API and every dedup key carries.
DISTRIBUTION_COLUMN = "office_code"
#: Small tables copied to every worker, in foreign-key order (a referenced table first).
REFERENCE_TABLES = ("devices", "device_identities", "device_health", "device_users", "gateways", "device_bindings",
                    "kv", "dashboard_accounts", "dashboard_sessions", "office_headcount", "holidays")
#: Distributed by office_code, co-located with punches.
DISTRIBUTED_TABLES = ("punches",)
#: Why the trigger goes, and what replaces it.
FEED_TRIGGER_NOTE = (
    "Citus does not run triggers on distributed tables (they would fire on the shards, on the workers, where an "
    "advisory lock orders nothing the coordinator reads). The feed-order guard must then be taken by the "
    "inserting transaction itself on the coordinator: pg_advisory_xact_lock_shared(FEED_LOCK_KEY) before its "
    "INSERT INTO punches; gateway.store.punches.take_feed_lock_if_untriggered does that when the trigger is gone "
    "(docs/scale-out.md).")


class CitusUnavailable(Exception):
    """The database is not a Citus coordinator (no citus extension)."""


def is_citus(engine: Engine) -> bool:
    """True when the citus extension is installed in this database."""
    if engine.dialect.name != "postgresql":
        return False
    with engine.connect() as conn:
        return bool(conn.execute(text("SELECT 1 FROM pg_extension WHERE extname = 'citus'")).scalar())


def distribute(engine: Engine, *, shard_count: int | None = None) -> list[str]:
    """Distribute a migrated central database on a Citus coordinator (idempotent); returns what was done."""
    if not is_citus(engine):
        raise CitusUnavailable("the citus extension is not installed in this database (CREATE EXTENSION citus "
                               "on the coordinator, after adding the workers)")
    done: list[str] = []
    with writer(engine).begin() as conn:
        kinds: dict[str, str] = dict(conn.execute(text(
            "SELECT logicalrelid::regclass::text, partmethod FROM pg_dist_partition")).tuples().all())
        if shard_count is not None:
            conn.execute(text(f"SET LOCAL citus.shard_count = {int(shard_count)}"))
        for table in REFERENCE_TABLES:
            if table not in kinds:
                conn.execute(text("SELECT create_reference_table(:t)"), {"t": table})
                done.append(f"reference table {table}")
        for table in DISTRIBUTED_TABLES:
            if table not in kinds:
                conn.execute(text(f"DROP TRIGGER IF EXISTS {table}_feed_order ON {table}"))
                conn.execute(text("SELECT create_distributed_table(:t, :c)"), {"t": table, "c": DISTRIBUTION_COLUMN})
                done.append(f"distributed table {table} by {DISTRIBUTION_COLUMN}")
    forget_feed_trigger(engine)
    return done


__all__ = ["DISTRIBUTED_TABLES", "DISTRIBUTION_COLUMN", "FEED_TRIGGER_NOTE", "REFERENCE_TABLES", "CitusUnavailable",
           "distribute", "is_citus"]

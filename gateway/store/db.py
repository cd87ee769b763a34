"""Engine creation and safe migrations for SQLite (default, WAL) and PostgreSQL (psycopg 3).

Called once by the composition root (gateway.app / CLI) before anything touches the database.
SQLite is set up for a long-running daemon with concurrent pollers: WAL, ``BEGIN IMMEDIATE`` for write
transactions (deferred writers can deadlock past busy_timeout), and ONE writer per process: every write
transaction of an engine goes through ``writer(engine)``, which runs them one at a time (an in-process lock),
so hundreds of polling threads queue in Python instead of racing for SQLite's lock (whose busy handler
sleeps and gives up after busy_timeout: "database is locked"). The busy timeout then only covers other
processes (``fpgw`` CLI commands beside the daemon).
Migrations run under a lock (PostgreSQL advisory lock / SQLite write lock) so two starters never
migrate at once, and a SQLite database is backed up before its schema is changed.
"""

from __future__ import annotations

import sqlite3
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Any

import structlog
from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import DBAPIError, OperationalError

log = structlog.get_logger(__name__)

# The database errors the other layers handle, named here so that only gateway.store imports SQLAlchemy:
#: Any error the database driver raised (server gone, disk full, locked, constraint...).
StorageError = DBAPIError
#: The database could not be used at all (unreachable, locked, read-only, full).
StorageUnavailable = OperationalError
__all__ = ["Engine", "StorageError", "StorageUnavailable"]


def storage_error_text(exc: DBAPIError) -> str:
    """The driver's own message of a database error (without SQLAlchemy's statement dump)."""
    return str(exc.orig or exc)


def safe_url(url: str) -> str:
    """A database URL fit for logs (password hidden)."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<unparseable url>"

#: ON CONFLICT needs 3.24, RETURNING 3.35.
MIN_SQLITE = (3, 35, 0)
#: Arbitrary constant identifying "fpgw migration" in pg_advisory_xact_lock.
_PG_MIGRATION_LOCK = 0x46504757


class DatabaseError(Exception):
    """The database cannot be used (too old SQLite, schema newer than this code, unreachable server)."""


def create_db_engine(url: str, *, pool_size: int = 10) -> Engine:
    """Create the engine for ``url`` with the settings a long-running daemon needs."""
    u = make_url(url)
    if u.get_backend_name() == "sqlite":
        if sqlite3.sqlite_version_info < MIN_SQLITE:
            raise DatabaseError(
                f"SQLite {sqlite3.sqlite_version} is too old; fpgw needs {'.'.join(map(str, MIN_SQLITE))} or newer "
                "(Debian 12 / Ubuntu 22.04 or later ship one)")
        if u.database and u.database != ":memory:":
            Path(u.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 15, "check_same_thread": False},
                               pool_size=pool_size, max_overflow=pool_size)
        _setup_sqlite(engine)
        return engine
    return create_engine(url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True)


def _setup_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Take transaction control away from the sqlite3 module (its legacy mode breaks
        # SAVEPOINT and does not BEGIN for SELECT); SQLAlchemy emits BEGIN itself below.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=15000")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        mode = conn.get_execution_options().get("sqlite_begin", "DEFERRED")
        conn.exec_driver_sql(f"BEGIN {mode}")


class Writer:
    """Write transactions on one engine: ``with writer(engine).begin() as conn: ...``.

    SQLite: one write transaction at a time per process (a re-entrant lock shared by every Writer of the
    engine, taken before a connection is checked out and held until the commit or rollback is done), each
    opened with BEGIN IMMEDIATE. Measured with 256 threads saving polls at once (benchmarks/bench_store.py):
    without the lock SQLite's busy handler let some of them fail with "database is locked"; with it none
    does. PostgreSQL: plain transactions, concurrent (row locks and ON CONFLICT keep them correct).
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.sqlite = engine.dialect.name == "sqlite"
        self._tx_engine = engine.execution_options(sqlite_begin="IMMEDIATE") if self.sqlite else engine
        self.lock = _write_lock(engine) if self.sqlite else None

    @contextmanager
    def begin(self) -> Iterator[Connection]:
        """A connection in a write transaction, committed when the block ends (rolled back on error)."""
        if self.lock is None:
            with self._tx_engine.begin() as conn:
                yield conn
            return
        with self.lock, self._tx_engine.begin() as conn:
            yield conn

    @contextmanager
    def connect(self) -> Iterator[Connection]:
        """A connection for write transactions the caller begins itself (holds the writer until closed)."""
        if self.lock is None:
            with self._tx_engine.connect() as conn:
                yield conn
            return
        with self.lock, self._tx_engine.connect() as conn:
            yield conn


#: engine pool -> its in-process write lock (the pool is shared by an engine and its execution_options copies).
_WRITE_LOCKS: weakref.WeakKeyDictionary[Any, threading.RLock] = weakref.WeakKeyDictionary()
_WRITE_LOCKS_GUARD = threading.Lock()


def _write_lock(engine: Engine) -> threading.RLock:
    with _WRITE_LOCKS_GUARD:
        lock = _WRITE_LOCKS.get(engine.pool)
        if lock is None:
            lock = _WRITE_LOCKS[engine.pool] = threading.RLock()
        return lock


def writer(engine: Engine) -> Writer:
    """The way to run write transactions on ``engine`` (SQLite: one at a time, write lock taken up front)."""
    return Writer(engine)


def _alembic_config(connection: Connection | None = None) -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(resources.files("gateway.store") / "migrations"))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str:
    """The newest migration this code knows."""
    head = ScriptDirectory.from_config(_alembic_config()).get_current_head()
    assert head is not None
    return head


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at (None for an empty database)."""
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(engine: Engine) -> tuple[str | None, str]:
    """Bring the schema to head, safely; returns (revision before, revision after).

    Refuses a database whose revision this code does not know (written by a newer fpgw).
    """
    script = ScriptDirectory.from_config(_alembic_config())
    head = script.get_current_head()
    assert head is not None
    before = current_revision(engine)
    if before == head:
        return before, head
    if before is not None and script.get_revision(before) is None:  # pragma: no cover - defensive
        raise DatabaseError(f"the database is at schema revision {before!r}, which this version of fpgw "
                            "does not know (was it written by a newer version?); refusing to start")
    if engine.dialect.name == "sqlite" and before is not None:
        _backup_sqlite(engine, before)
    with writer(engine).begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_MIGRATION_LOCK})
        # Re-read under the lock: another starter may have migrated meanwhile.
        now = MigrationContext.configure(conn).get_current_revision()
        if now != head:
            command.upgrade(_alembic_config(conn), "head")
            log.info("database migrated", from_revision=now, to_revision=head)
    return before, head


def _backup_sqlite(engine: Engine, revision: str) -> None:
    database = engine.url.database
    if not database or database == ":memory:":
        return
    src_path = Path(database)
    if not src_path.exists():
        return
    backup_dir = src_path.parent / "backups"
    backup_dir.mkdir(parents=True, exist_ok=True)
    target = backup_dir / f"{src_path.stem}-pre-{revision}.db"
    src = sqlite3.connect(str(src_path))
    try:
        dst = sqlite3.connect(str(target))
        try:
            src.backup(dst)
        finally:
            dst.close()
    finally:
        src.close()
    log.info("database backed up before migration", backup=str(target))

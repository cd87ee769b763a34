"""Engine creation and safe migrations for SQLite (default, WAL) and PostgreSQL (psycopg 3).

Called once by the composition root (gateway.app / CLI) before anything touches the database.
SQLite is set up for a long-running daemon with concurrent pollers: WAL, ``BEGIN IMMEDIATE`` for write
transactions (deferred writers can deadlock past busy_timeout), and ONE writer per process: every write
transaction of an engine goes through ``writer(engine)``, which runs them one at a time (an in-process lock;
polls through a writer thread that commits the queued ones together), so hundreds of polling threads queue
in Python instead of racing for SQLite's lock (whose busy handler sleeps and gives up after busy_timeout:
"database is locked"). The busy timeout then only covers other processes (``fpgw`` CLI commands beside
the daemon).
Migrations run under a lock (PostgreSQL advisory lock / SQLite write lock) so two starters never
migrate at once, and a SQLite database is backed up before its schema is changed.
"""

from __future__ import annotations

import sqlite3
import threading
import weakref
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import structlog
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import DBAPIError, OperationalError

if TYPE_CHECKING:  # alembic is imported only when a migration may be needed (it costs ~0.2 s per start)
    from alembic.config import Config as AlembicConfig

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


#: SQLite page cache per connection, in KiB (SQLite's default is 2 MiB). A poll's insert touches pages of the
#: punches table and its five indexes; with 2 MiB they spill to the WAL mid-transaction. Measured with
#: Store.save_poll (issue 14): 100k new punches in one poll 50,000/s -> 63,000/s with 16 MiB, no further gain
#: at 32 or 64 MiB. Pages are allocated as they are used, so idle or read-light connections stay small.
SQLITE_CACHE_KIB = 16 * 1024

#: Page size of a NEW SQLite database, in bytes (SQLite's default is 4096). A poll's commit writes every page it
#: dirtied to the write-ahead log and its checkpoint copies them into the database file: with bigger pages
#: the punches table and its indexes split less often and the same rows take fewer, larger writes. Measured
#: with Store.save_poll of a first poll (100k new punches + outbox rows, fresh database, issue 14), medians of
#: six alternated runs: 1.13 s at 4096, 0.93 s at 8192, 0.90 s at 16384 (the commit and its checkpoint 0.18 s
#: -> 0.15 s -> 0.12 s); 50 polls of 1,000 no slower. 8192, as PostgreSQL's page: most of the gain, while a
#: small commit's log frames and the cache's page count (cache_size is in KiB) change less.
#: It applies only where no table exists yet (SQLite ignores it for an existing database, which keeps its
#: page size: changing it would need a VACUUM outside WAL mode).
SQLITE_PAGE_SIZE = 8192


def _setup_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Take transaction control away from the sqlite3 module (its legacy mode breaks
        # SAVEPOINT and does not BEGIN for SELECT); SQLAlchemy emits BEGIN itself below.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        # Before journal_mode=WAL: switching to WAL writes the header of a new database, fixing its page size.
        cur.execute(f"PRAGMA page_size={SQLITE_PAGE_SIZE}")
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=15000")
        cur.execute(f"PRAGMA cache_size=-{SQLITE_CACHE_KIB}")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        mode = conn.get_execution_options().get("sqlite_begin", "DEFERRED")
        conn.exec_driver_sql(f"BEGIN {mode}")


class WriteLock:
    """A re-entrant lock that knows whether the calling thread holds it (the writer's turn)."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._owner: int | None = None
        self._depth = 0

    def __enter__(self) -> WriteLock:
        self._lock.acquire()
        self._owner = threading.get_ident()
        self._depth += 1
        return self

    def __exit__(self, *exc: object) -> None:
        self._depth -= 1
        if not self._depth:
            self._owner = None
        self._lock.release()

    def held_here(self) -> bool:
        """True when the calling thread holds it (work submitted now must run inline, not wait for itself)."""
        return self._owner == threading.get_ident()


class Writer:
    """Write transactions on one engine: ``with writer(engine).begin() as conn: ...`` or ``writer(engine).run(fn)``.

    SQLite: one write transaction at a time per process (a re-entrant lock shared by every Writer of the
    engine, taken before a connection is checked out and held until the commit or rollback is done), each
    opened with BEGIN IMMEDIATE; ``run`` (Store.save_poll) goes further and hands the work to the engine's
    writer thread, which commits the polls queued meanwhile together (group commit). Measured with 256
    threads saving polls at once (benchmarks/bench_store.py): without the writer SQLite's busy handler let
    some of them fail with "database is locked"; with it none does. PostgreSQL: plain transactions,
    concurrent (row locks and ON CONFLICT keep them correct).
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

    def run(self, work: Callable[[Connection], T]) -> T:
        """``work(conn)`` in a write transaction; returns its result once that is committed, or raises its error.

        SQLite: run by the engine's writer thread, possibly in one transaction with other callers' work,
        each in its own SAVEPOINT: a failing piece of work rolls back alone and only its caller gets the
        error (the whole group fails only when the commit itself fails). Inline when the calling thread
        already holds the writer (no waiting for itself), and on PostgreSQL.
        """
        if self.lock is None or self.lock.held_here():
            with self.begin() as conn:
                return work(conn)
        return _group_committer(self).submit(work)


T = TypeVar("T")


class _Job:
    __slots__ = ("done", "error", "result", "work")

    def __init__(self, work: Callable[[Connection], Any]) -> None:
        self.work = work
        self.done = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None


class _GroupCommitter:
    """The writer thread of one SQLite engine: takes the queued work, up to MAX_GROUP at a time, into ONE
    transaction. Started on demand; ends after IDLE_S without work, so nothing needs stopping at shutdown."""

    MAX_GROUP = 64
    IDLE_S = 0.5

    def __init__(self, writer: Writer) -> None:
        self._writer = writer
        self._jobs: deque[_Job] = deque()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None

    def queued(self) -> int:
        """Work waiting for the writer thread (not yet taken into a transaction)."""
        with self._cond:
            return len(self._jobs)

    def submit(self, work: Callable[[Connection], T]) -> T:
        job = _Job(work)
        with self._cond:
            self._jobs.append(job)
            if self._thread is None:
                # A daemon thread: a one-shot command (`fpgw poll`) then exits as soon as its work is done
                # instead of waiting out IDLE_S (0.5 s of every `fpgw poll`). Nothing is cut short: whoever
                # submitted work waits for its commit, and daemon threads only stop once every other
                # thread has ended.
                self._thread = threading.Thread(target=self._run, name="fpgw-db-writer", daemon=True)
                self._thread.start()
            self._cond.notify()
        job.done.wait()
        if job.error is not None:
            raise job.error
        return job.result

    def _run(self) -> None:
        lock = self._writer.lock
        assert lock is not None  # only SQLite engines have a writer thread
        while True:
            with self._cond:
                if not self._jobs:
                    self._cond.wait(timeout=self.IDLE_S)
                    if not self._jobs:
                        self._thread = None
                        return
            # The writer's turn first, then the group: work queued while waiting for it joins this transaction.
            with lock:
                with self._cond:
                    group = [self._jobs.popleft() for _ in range(min(len(self._jobs), self.MAX_GROUP))]
                self._commit(group)

    def _commit(self, group: list[_Job]) -> None:
        try:
            with self._writer.begin() as conn:
                if len(group) == 1:
                    group[0].result = group[0].work(conn)
                    return
                for job in group:
                    try:
                        with conn.begin_nested():
                            job.result = job.work(conn)
                    except BaseException as exc:  # this caller's error, raised in its own thread
                        job.error, job.result = exc, None
        except BaseException as exc:  # the transaction failed: nobody's work is stored
            for job in group:
                job.error, job.result = job.error or exc, None
        finally:
            for job in group:
                job.done.set()


class _Shared:
    """What every Writer of one SQLite engine shares."""

    def __init__(self) -> None:
        self.lock = WriteLock()
        self.group: _GroupCommitter | None = None


#: engine pool -> its writer state (the pool is shared by an engine and its execution_options copies).
_SHARED: weakref.WeakKeyDictionary[Any, _Shared] = weakref.WeakKeyDictionary()
_SHARED_GUARD = threading.Lock()


def _shared(engine: Engine) -> _Shared:
    with _SHARED_GUARD:
        shared = _SHARED.get(engine.pool)
        if shared is None:
            shared = _SHARED[engine.pool] = _Shared()
        return shared


def _write_lock(engine: Engine) -> WriteLock | None:
    return _shared(engine).lock


def _group_committer(writer: Writer) -> _GroupCommitter:
    shared = _shared(writer.engine)
    with _SHARED_GUARD:
        if shared.group is None:
            shared.group = _GroupCommitter(writer)
        return shared.group


def pending_writes(engine: Engine) -> int:
    """Work queued for the engine's writer thread right now (0 on PostgreSQL): a gauge, and for tests."""
    if engine.dialect.name != "sqlite":
        return 0
    group = _shared(engine).group
    return group.queued() if group is not None else 0


def writer(engine: Engine) -> Writer:
    """The way to run write transactions on ``engine`` (SQLite: one at a time, write lock taken up front)."""
    return Writer(engine)


#: The newest migration of gateway/store/migrations (a test checks it against alembic's own head). Every
#: fpgw command starts by checking the schema; with this the usual answer ("at head") needs no alembic.
HEAD_REVISION = "0014_enrol_push"


def _stored_revision(engine: Engine) -> str | None:
    """alembic_version's row read directly (None when there is no such table or row)."""
    with engine.connect() as conn:
        if not conn.dialect.has_table(conn, "alembic_version"):
            return None
        rows = conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
    return rows[0] if len(rows) == 1 else None


def _alembic_config(connection: Connection | None = None) -> AlembicConfig:
    from alembic.config import Config as AlembicConfig

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(resources.files("gateway.store") / "migrations"))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str:
    """The newest migration this code knows."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(_alembic_config()).get_current_head()
    assert head is not None
    return head


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at (None for an empty database)."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(engine: Engine) -> tuple[str | None, str]:
    """Bring the schema to head, safely; returns (revision before, revision after).

    Refuses a database whose revision this code does not know (written by a newer fpgw). An empty SQLite
    database is created straight from the schema instead of through the migrations (_create_fresh_sqlite).
    """
    if _stored_revision(engine) == HEAD_REVISION:
        return HEAD_REVISION, HEAD_REVISION  # the usual start: nothing to do, alembic not even imported
    if engine.dialect.name == "sqlite" and _create_fresh_sqlite(engine):
        return None, HEAD_REVISION
    from alembic import command
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

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


def _create_fresh_sqlite(engine: Engine) -> bool:
    """Create the schema of an EMPTY SQLite database straight from gateway.store.schema and record it as at
    HEAD_REVISION; False (nothing done) when the database holds any table.

    Why: running the seven migrations (SQLite copies tables in batch mode) and importing alembic took about
    0.5 s of a first `fpgw poll` on a new gateway (benchmarks/bench_poll.py, issue 14). The result is the
    same schema: tests/store/test_schema.py compares both with the metadata and with each other. PostgreSQL
    always migrates (its feed-order trigger and its monthly punch partitions, migration 0011_partitions, are
    created by migrations only).
    """
    from gateway.store.schema import metadata

    with writer(engine).begin() as conn:  # BEGIN IMMEDIATE: a second starter waits, then finds the tables
        if conn.exec_driver_sql("SELECT count(*) FROM sqlite_master WHERE type = 'table'").scalar():
            return False
        metadata.create_all(conn)
        # Alembic's own version table, as `alembic stamp` would write it.
        conn.exec_driver_sql("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL, "
                             "CONSTRAINT alembic_version_pkc PRIMARY KEY (version_num))")
        conn.exec_driver_sql("INSERT INTO alembic_version (version_num) VALUES (?)", (HEAD_REVISION,))
    log.info("database created", to_revision=HEAD_REVISION)
    return True


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

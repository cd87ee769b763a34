"""Punches and the devices they come from: the poll's writes, clearing a terminal, and `fpgw punches`.

    poller --(device_id, Punch[], PollOutcome)--> Store.save_poll()   one transaction:
        punches (idempotent insert on the dedup key) + outbox rows for the new ones + device row + poll run
    `fpgw punches` --PunchQuery--> iter_punches()   (outbox: gateway.store.outbox, health: gateway.store.health)

Idempotency: punches are inserted with ON CONFLICT DO NOTHING on (office_code, device_serial,
device_user_id, device_time, occurrence) and the database tells which rows were really new (PostgreSQL:
RETURNING; SQLite: the rows above the highest id read first, under the write lock), so re-reading a whole
device log (or receiving a batch twice) never duplicates anything. Speed (issue 14): rows are bound at
the DBAPI level in the same transaction (SQLite executemany, PostgreSQL binary COPY), and a big batch first
reads the keys already stored for its time span and inserts only the missing ones, so a full reconcile is
mostly one read (on PostgreSQL such a checked batch goes in without ON CONFLICT - COPY straight into punches
from 200 rows - and a unique violation - a punch stored concurrently since the read - makes save_poll run
the transaction again with it). benchmarks/bench_store.py measures it against the old insert.

Punch identity. A punch is (device serial, user, device time) - the same record read again is the same
punch - except when its time cannot tell records apart: a terminal whose clock died stamps every punch
2000-01-01 00:00:00 (flags rtc_reset / impossible_date). Those records are numbered: the n-th record of
that user at that time in one download is occurrence n (gateway.polling.normalize), so two real punches
stay two and the same log read again maps the same records to the same rows. Because a cleared log
numbers from 1 again, such numbers are lifted by the device's *log epoch* (kv ``log_epoch:<serial>``,
times OCCURRENCE_EPOCH_STRIDE) before they are stored: the epoch goes up when fpgw clears the terminal
(record_clear) and when a poll sees its record count drop (cleared at the keypad). Limits, also in
docs/operate.md: a log cleared at the keypad and refilled past its old count before the next poll, and a
rolling log that overwrites the oldest of two same-time records, renumber records the gateway cannot tell
apart - the first can store an old record twice (never lose one), the second can take a new record for
the overwritten one (losing it). Punches with a trustworthy time are unaffected (occurrence 0).

"Day X" has one meaning in every punch query, here and at the central (PunchQuery: the same type,
the pull API, `fpgw export`, the daily recap): the calendar date of the punch's local wall-clock time
(local_time: the device's clock read in the device's zone, which is the office's zone, site.timezone,
unless a device sets its own). A punch whose device date is impossible (dead clock) has no local time
and appears only in queries without a date filter.
"""

from __future__ import annotations

import weakref
from collections.abc import Collection, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, time, timedelta
from operator import attrgetter, itemgetter
from typing import Any

import structlog
from sqlalchemy import ColumnElement, Engine, Insert, Select, Table, func, or_, select, update
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError

from drivers.base import DeviceUser
from gateway.config import DeviceConfig
from gateway.models import PollOutcome, Punch
from gateway.store import schema as s
from gateway.store.db import writer
from gateway.store.quarantine import QuarantinedInput, insert_quarantined
from gateway.store.schema import utcnow
from gateway.wire import OfficeScope

log = structlog.get_logger(__name__)

#: Rows per INSERT statement (keeps SQLite under its bound-parameter limit and PG packets sane).
INSERT_CHUNK = 500
#: Occurrence numbers of one log epoch stay below this (one log never holds a million records with the
#: same user and time); stored occurrence = n + epoch * stride.
OCCURRENCE_EPOCH_STRIDE = 1_000_000

PunchKey = tuple[str, str, str, int]


@dataclass(frozen=True, slots=True)
class DeviceState:
    """What the store remembers about a device between polls."""

    pk: int
    device_id: str
    serial: str | None
    firmware: str | None
    last_record_count: int | None
    last_user_count: int | None
    last_full_read_at: datetime | None
    last_ok_at: datetime | None
    last_punch_at: datetime | None
    #: Opaque text the poller saved with its last successful read (gateway.polling: where a tail read
    #: starts); None when never saved or the serial changed since.
    log_position: str | None = None


@dataclass(frozen=True, slots=True)
class SaveResult:
    """What save_poll stored."""

    new_punches: int
    newest_punch_utc: datetime | None
    new_ids: tuple[int, ...] = ()
    #: Keys (Punch.key, as given to save_poll) of the punches that were new.
    new_keys: frozenset[PunchKey] = frozenset()


def insert_ignore(conn: Connection, table: Table, index_elements: Sequence[str]) -> Insert:
    """``INSERT ... ON CONFLICT (index_elements) DO NOTHING`` for the connection's dialect (values at execute)."""
    if conn.dialect.name == "postgresql":
        # Imported here: the PostgreSQL dialect package costs ~30 ms of every SQLite command's start (issue 14).
        from sqlalchemy.dialects import postgresql as pg_dialect

        return pg_dialect.insert(table).on_conflict_do_nothing(index_elements=list(index_elements))
    return sqlite_dialect.insert(table).on_conflict_do_nothing(index_elements=list(index_elements))


def punch_row(p: Punch, received_at: datetime, source: str = "poll") -> dict[str, Any]:
    """The punches-table row for a normalized punch."""
    return {
        "office_code": p.office_code, "device_id": p.device_id, "device_serial": p.device_serial,
        "device_user_id": p.device_user_id, "device_time": p.device_time, "local_time": p.local_time,
        "utc_time": p.utc_time, "timezone": p.timezone, "state": p.state, "state_name": p.state_name,
        "verify": p.verify, "verify_name": p.verify_name, "uid": p.uid, "workcode": p.workcode,
        "raw_time": p.raw_time, "employee_id": p.employee_id, "flags": ",".join(p.flags),
        "received_at": received_at, "source": source, "occurrence": p.occurrence,
    }


#: ON CONFLICT target: the columns of uq_punches_key (office first; see gateway.store.schema.punches).
PUNCH_KEY = ("office_code", "device_serial", "device_user_id", "device_time", "occurrence")


#: Columns of a punches row, in the order the insert paths below bind them (punch_row's keys).
PUNCH_COLUMNS = ("office_code", "device_id", "device_serial", "device_user_id", "device_time", "local_time",
                 "utc_time", "timezone", "state", "state_name", "verify", "verify_name", "uid", "workcode",
                 "raw_time", "employee_id", "flags", "received_at", "source", "occurrence")
#: A batch at least this big first reads which of its punches are already stored (one range of the punch key
#: per terminal) and inserts only the others: a full re-read (reconcile) is then mostly a read instead of
#: 100k conflicting inserts. Smaller batches go straight to the idempotent insert.
PREFETCH_MIN = 64
#: A batch of more terminals than this skips that read (a mixed batch; the insert alone is still idempotent).
PREFETCH_MAX_GROUPS = 8
#: From this many rows PostgreSQL gets them by COPY into a temporary table; smaller batches travel as one
#: array per column in the INSERT itself (one round trip instead of three).
PG_COPY_MIN = 200


def insert_punches(conn: Connection, punches: Iterable[Punch], *, received_at: datetime,
                   source: str = "poll") -> list[int]:
    """Insert punches idempotently inside the caller's transaction; returns the ids of the new rows."""
    return [row[0] for row in _insert_punch_rows(conn, punches, received_at=received_at, source=source)]


def _insert_punch_rows(conn: Connection, punches: Iterable[Punch], *, received_at: datetime, source: str = "poll",
                       outbox_at: datetime | None = None,
                       trust_stored_read: bool = False) -> list[tuple[int, PunchKey]]:
    """Idempotent insert returning (id, key) of the new rows; with ``outbox_at``, also an outbox row (due
    then) for each new row, in the same statement flow.

    Why not SQLAlchemy's executemany: its per-row parameter processing was half the time of a poll's save
    (issue 14). Rows are bound at the DBAPI level on the connection's own cursor, inside the caller's
    transaction, with the values converted here exactly as the column types would have (UtcDateTime,
    DateTime; tests/store/test_fast_insert.py reads both back and compares).

    ``trust_stored_read`` (PostgreSQL): when the already-stored read ran and the batch holds no key twice, insert
    without ON CONFLICT (its per-row speculative insertion was a fifth of the server's time for a 1,000-punch
    poll). A key stored by someone else after that read then fails the statement with a unique violation,
    which aborts the transaction: only a caller that runs the whole transaction again with the default
    (``Store.save_poll``) may pass it. SQLite ignores it.
    """
    batch = list(punches)
    checked = staged = False
    pg = conn.dialect.name == "postgresql"
    if len(batch) >= PREFETCH_MIN:
        # PostgreSQL: a batch that may take the staged COPY path gets its staging table in the same round trip as
        # the read; one that will be copied straight into punches (_copy_pg) needs none (a batch that turns out
        # to hold a key twice makes it in its own round trip: rare).
        stage = _pg_stage_statements(conn) if pg and len(batch) >= PG_COPY_MIN and not trust_stored_read else ()
        batch, checked, staged = _not_stored(conn, batch, stage)
    if not batch:
        return []
    if pg:
        plain = trust_stored_read and checked and _distinct_keys(batch)
        if plain and len(batch) >= PG_COPY_MIN:
            return _copy_pg(conn, batch, received_at, source, outbox_at)
        return _insert_pg(conn, batch, received_at, source, outbox_at, on_conflict=not plain, staged=staged)
    return _insert_sqlite(conn, batch, received_at, source, outbox_at)


def _distinct_keys(batch: list[Punch]) -> bool:
    """No two punches of ``batch`` share the punch key (uq_punches_key)."""
    return len({(p.office_code, p.device_serial, p.device_user_id, p.device_time, p.occurrence)
                for p in batch}) == len(batch)


@contextmanager
def _dbapi_cursor(conn: Connection, what: str) -> Iterator[Any]:
    """The raw cursor of ``conn`` (same transaction); driver errors come out as SQLAlchemy's (StorageError)."""
    dbapi = conn.dialect.loaded_dbapi
    cursor = conn.connection.cursor()
    try:
        yield cursor
    except dbapi.Error as exc:
        raise DBAPIError.instance(what, None, exc, dbapi.Error, dialect=conn.dialect) from exc
    finally:
        cursor.close()


def _unique_violation(exc: IntegrityError) -> bool:
    """A PostgreSQL unique violation (SQLSTATE 23505), the only error the plain punch insert may retry."""
    return getattr(exc.orig, "sqlstate", None) == "23505"


def _naive_utc_error(p: Punch) -> ValueError:
    return ValueError(f"naive utc_time {p.utc_time!r} in punch {p.key}; attach a time zone first")


def _not_stored(conn: Connection, punches: list[Punch],
                before: Sequence[str] = ()) -> tuple[list[Punch], bool, bool]:
    """(The punches whose key is not stored yet, as far as one range read per terminal can tell; whether the
    read ran: a batch of many terminals skips it; whether the statements ``before`` ran).

    ``before``: statements without parameters (PostgreSQL: the COPY stage) sent ahead of the read in one
    round trip through psycopg's pipeline mode, when the read runs and the client library offers it.

    Reads the keys stored for the batch's (office, serial) between its oldest and newest device time: a
    range of uq_punches_key itself (office, serial, device time, ...; migration 0007_punch_indexes), so it
    finds exactly the stored punches the insert would conflict with, whatever their device id or instant.
    (It used to read (device_id, utc_time), and PostgreSQL's planner, with statistics lagging a fast-growing
    table, walked the terminal's whole history by the key's (office, serial) prefix instead: 3-7 ms per
    1,000-punch poll, growing with the table.) What it misses (a punch stored concurrently) is left to the
    insert's ON CONFLICT DO NOTHING, or, on the plain insert (``trust_stored_read``), makes it fail and the
    caller run the transaction again: it never decides alone.
    """
    groups = {(p.office_code, p.device_serial) for p in punches}
    if len(groups) > PREFETCH_MAX_GROUPS:
        return punches, False, False
    sql = ("SELECT device_user_id, device_time, occurrence FROM punches "
           "WHERE office_code = ? AND device_serial = ? AND device_time >= ? AND device_time <= ?")
    if conn.dialect.name != "sqlite":
        sql = sql.replace("?", "%s")
    stored: dict[tuple[str, str], set[tuple[str, str, int]]] = {}
    pipeline = _pipeline(conn) if before else None
    with _dbapi_cursor(conn, sql) as cur, pipeline or nullcontext():
        if pipeline is not None:
            # Queued on a cursor of their own, sent with the read below in one round trip. On the read's
            # cursor, fetchall() could be handed a setup statement's result instead of the read's (psycopg
            # pipeline mode: "the last operation didn't produce records (command status: CREATE TABLE)",
            # seen under concurrent polls).
            with cur.connection.cursor() as setup:
                for statement in before:
                    setup.execute(statement)
        for group in groups:
            members = punches if len(groups) == 1 else [p for p in punches if _group(p) == group]
            times = [p.device_time for p in members]
            cur.execute(sql, (*group, min(times), max(times)))
            found = set(cur.fetchall())
            if found:
                stored[group] = found
    staged = pipeline is not None
    if not stored:
        return punches, True, staged
    key = attrgetter("device_user_id", "device_time", "occurrence")
    if len(groups) == 1:
        known = stored[next(iter(groups))]
        return [p for p in punches if key(p) not in known], True, staged
    nothing: set[tuple[str, str, int]] = set()
    return [p for p in punches if key(p) not in stored.get(_group(p), nothing)], True, staged


def _pipeline(conn: Connection) -> AbstractContextManager[Any] | None:
    """psycopg's pipeline mode on ``conn``'s DBAPI connection (queries sent without waiting for each answer),
    or None when the client library cannot (libpq older than 14)."""
    dbapi_conn = conn.connection.driver_connection
    pipeline = getattr(dbapi_conn, "pipeline", None)
    module = type(dbapi_conn).__module__.split(".")[0]
    if pipeline is None or module != "psycopg":
        return None
    import psycopg  # the driver is loaded: this only names it

    return pipeline() if psycopg.Pipeline.is_supported() else None


def _group(p: Punch) -> tuple[str, str]:
    return (p.office_code, p.device_serial)


def _sqlite_utc(value: datetime | None) -> str | None:
    """UtcDateTime's SQLite storage form: naive UTC text with microseconds, as SQLAlchemy's DATETIME writes."""
    if value is None:
        return None
    if value.tzinfo is None:
        raise ValueError(f"naive datetime {value!r} given for a UTC column; attach a time zone first")
    if value.tzinfo is not UTC:
        value = value.astimezone(UTC)
    return value.replace(tzinfo=None).isoformat(" ", "microseconds")


class _WallClockText:
    """Datetime -> its wall clock as ``YYYY-MM-DD HH:MM:SS.ffffff`` (what ``isoformat(" ", "microseconds")[:26]``
    gives, the form SQLAlchemy's DATETIME stores on SQLite), from a per-day and a per-second table.

    Why: ``isoformat`` formats every field each time (1.5-2 us a call, two calls per punch: a fifth of a 100k
    poll's insert); a batch's punches fall on few days and repeat seconds of the day. One per insert batch.
    """

    __slots__ = ("days",)

    #: Second of the day -> "HH:MM:SS", filled on first use; shared (the same for every batch).
    clocks: list[str | None] = [None] * 86400

    def __init__(self) -> None:
        self.days: dict[int, str] = {}

    def __call__(self, dt: datetime) -> str:
        """The wall-clock text of ``dt`` (its own fields, whatever its zone)."""
        day = self.days.get(ordinal := dt.toordinal())
        if day is None:
            day = self.days[ordinal] = f"{dt.year:04d}-{dt.month:02d}-{dt.day:02d} "
        second = dt.hour * 3600 + dt.minute * 60 + dt.second
        clock = self.clocks[second]
        if clock is None:
            clock = self.clocks[second] = f"{dt.hour:02d}:{dt.minute:02d}:{dt.second:02d}"
        micro = dt.microsecond
        return day + clock + (f".{micro:06d}" if micro else ".000000")


_SQLITE_INSERT = (f"INSERT INTO punches ({', '.join(PUNCH_COLUMNS)}) VALUES ({', '.join('?' * len(PUNCH_COLUMNS))}) "
                  f"ON CONFLICT ({', '.join(PUNCH_KEY)}) DO NOTHING")


def _insert_sqlite(conn: Connection, batch: list[Punch], received_at: datetime, source: str,
                   outbox_at: datetime | None) -> list[tuple[int, PunchKey]]:
    """executemany of a one-row INSERT ... ON CONFLICT DO NOTHING, then the new rows by id.

    Why not RETURNING: sqlite3's executemany cannot return rows, and multi-row VALUES statements measured
    about 1.5x slower (issue 14). The new rows are exactly those above the highest id read first: the
    transaction holds SQLite's write lock from its first write (BEGIN IMMEDIATE, writer()), a deferred
    transaction whose snapshot went stale fails its first write instead (SQLITE_BUSY_SNAPSHOT), and a rowid
    table without AUTOINCREMENT gives each new row max(id) + 1.
    """
    received = _sqlite_utc(received_at)
    rows: list[tuple[Any, ...]] = []
    append = rows.append
    text = _WallClockText()
    for p in batch:
        # _sqlite_utc inlined (the per-row cost of a big poll). local_time is stored as the wall clock given, as
        # SQLAlchemy's DATETIME does (it ignores a zone): an aware datetime's isoformat cut to its 26 characters
        # "YYYY-MM-DD HH:MM:SS.ffffff" is the naive one's; _WallClockText gives the same text from tables.
        utc, local = p.utc_time, p.local_time
        utc_text = local_text = None
        if utc is not None:
            tz = utc.tzinfo
            if tz is not UTC:
                if tz is None:
                    raise _naive_utc_error(p)
                utc = utc.astimezone(UTC)
            utc_text = text(utc)
        if local is not None:
            local_text = text(local)
        append((p.office_code, p.device_id, p.device_serial, p.device_user_id, p.device_time, local_text, utc_text,
                p.timezone, p.state, p.state_name, p.verify, p.verify_name, p.uid, p.workcode, p.raw_time,
                p.employee_id, ",".join(p.flags), received, source, p.occurrence))
    with _dbapi_cursor(conn, _SQLITE_INSERT) as cur:
        cur.execute("SELECT max(id) FROM punches")
        last = cur.fetchone()[0] or 0
        cur.executemany(_SQLITE_INSERT, rows)
        inserted = cur.rowcount
        cur.execute("SELECT max(id) FROM punches")
        if inserted == len(batch) and cur.fetchone()[0] == last + inserted:
            # Every row went in (none met ON CONFLICT), one after the other above ``last``: their ids are
            # last + 1, last + 2, ... in batch order, so the rows need not be read back (reading 100k rows back
            # was a quarter of a first poll's insert; issue 14).
            new = [(row_id, (p.device_serial, p.device_user_id, p.device_time, p.occurrence))
                   for row_id, p in enumerate(batch, last + 1)]
        else:
            cur.execute("SELECT id, device_serial, device_user_id, device_time, occurrence FROM punches "
                        "WHERE id > ?", (last,))
            new = [(r[0], (r[1], r[2], r[3], r[4])) for r in cur.fetchall()]
        if outbox_at is not None and new:
            due = _sqlite_utc(outbox_at)
            cur.execute("INSERT INTO outbox (punch_id, state, attempts, next_attempt_at, created_at) "
                        "SELECT id, 'pending', 0, ?, ? FROM punches WHERE id > ?", (due, due, last))
    return new


#: PostgreSQL type of each column as bound (text for the varchar columns: the INSERT casts to the column).
_PG_TYPES = {"local_time": "timestamp", "utc_time": "timestamptz", "received_at": "timestamptz",
             "state": "int4", "verify": "int4", "uid": "int4", "workcode": "int4", "raw_time": "int8",
             "occurrence": "int8"}
_PG_COPY_TYPES = [_PG_TYPES.get(c, "text") for c in PUNCH_COLUMNS]
#: PostgreSQL binary COPY types of PUNCH_COLUMNS, in order (also used by gateway.store.central's ingest).
PUNCH_COPY_TYPES: tuple[str, ...] = tuple(_PG_COPY_TYPES)
_PG_STAGE = "fpgw_punch_in"

#: pg_advisory_xact_lock key of the feed-order guard (same literal as in migrations 0002 and 0007;
#: gateway.store.central explains the guard and re-exports it).
FEED_LOCK_KEY = 0x46505746
_FEED_WRITE_LOCK = f"SELECT pg_advisory_xact_lock_shared({FEED_LOCK_KEY})"
#: Engine -> whether its punches table lacks the feed-order trigger (weak: a disposed engine drops out, and a
#: new engine never inherits an old one's answer).
_NO_FEED_TRIGGER: weakref.WeakKeyDictionary[Engine, bool] = weakref.WeakKeyDictionary()


def forget_feed_trigger(engine: Engine) -> None:
    """Look the feed-order trigger up again on ``engine`` (gateway.store.citus.distribute drops it)."""
    _NO_FEED_TRIGGER.pop(engine, None)


def take_feed_lock_if_untriggered(conn: Connection, cur: Any) -> None:
    """Take the feed-order guard's shared lock with ``cur`` when no trigger takes it for this database.

    On PostgreSQL the statement-level trigger ``punches_feed_order`` takes the lock for every INSERT into
    punches. A Citus coordinator cannot run it (gateway.store.citus drops it), so there the inserting
    transaction takes the same shared lock itself, on the coordinator, before its rows draw ids. Looked up
    once per engine: one catalogue query, then nothing on a database that has the trigger.
    """
    key = conn.engine
    missing = _NO_FEED_TRIGGER.get(key)
    if missing is None:
        cur.execute("SELECT count(*) FROM pg_trigger WHERE tgrelid = 'punches'::regclass "
                    "AND tgname = 'punches_feed_order'")
        row = cur.fetchone()
        missing = _NO_FEED_TRIGGER[key] = not (row and row[0])
    if missing:
        cur.execute(_FEED_WRITE_LOCK)
_PG_CREATE_STAGE = (f"CREATE TEMP TABLE IF NOT EXISTS {_PG_STAGE} ("
                    + ", ".join(f"{c} {t}" for c, t in zip(PUNCH_COLUMNS, _PG_COPY_TYPES, strict=True))
                    + ") ON COMMIT DELETE ROWS")
_PG_RETURNING = "RETURNING id, device_serial, device_user_id, device_time, occurrence"


def _pg_insert_sql(source_sql: str, outbox: bool, on_conflict: bool = True) -> str:
    conflict = f"ON CONFLICT ({', '.join(PUNCH_KEY)}) DO NOTHING " if on_conflict else ""
    insert = f"INSERT INTO punches ({', '.join(PUNCH_COLUMNS)}) {source_sql} {conflict}{_PG_RETURNING}"
    if not outbox:
        return insert
    return (f"WITH ins AS ({insert}), queued AS (INSERT INTO outbox (punch_id, state, attempts, next_attempt_at, "
            "created_at) SELECT id, 'pending', 0, %s, %s FROM ins) "
            "SELECT id, device_serial, device_user_id, device_time, occurrence FROM ins")


_PG_FROM_STAGE = f"SELECT {', '.join(PUNCH_COLUMNS)} FROM {_PG_STAGE}"
_PG_FROM_ARRAYS = "SELECT * FROM unnest(" + ", ".join(f"%s::{t}[]" for t in _PG_COPY_TYPES) + ")"


def _pg_stage_statements(conn: Connection) -> tuple[str, ...]:
    """The statements that make the session's COPY stage exist and empty in this transaction (it is emptied at
    each commit; a second batch in the same transaction empties it first)."""
    info = conn.connection.info
    tx = id(conn.get_transaction())
    again = info.get(_PG_STAGE) == tx
    info[_PG_STAGE] = tx
    return (_PG_CREATE_STAGE, f"DELETE FROM {_PG_STAGE}") if again else (_PG_CREATE_STAGE,)


def pg_punch_rows(batch: Sequence[Punch], received_at: datetime, source: str) -> list[tuple[Any, ...]]:
    """The punches as PostgreSQL rows in PUNCH_COLUMNS order, as every PostgreSQL insert binds them (the poll's two
    paths here, the central's ingest): an aware utc_time (a naive one is refused: COPY would read it in the
    session's zone), local_time as the naive wall clock, flags joined."""
    flags = ",".join
    rows = []
    for p in batch:
        utc, local = p.utc_time, p.local_time
        if utc is not None and utc.tzinfo is None:
            raise _naive_utc_error(p)
        if local is not None and local.tzinfo is not None:
            local = local.replace(tzinfo=None)
        rows.append((p.office_code, p.device_id, p.device_serial, p.device_user_id, p.device_time, local, utc,
                     p.timezone, p.state, p.state_name, p.verify, p.verify_name, p.uid, p.workcode, p.raw_time,
                     p.employee_id, flags(p.flags), received_at, source, p.occurrence))
    return rows


def _insert_pg(conn: Connection, batch: list[Punch], received_at: datetime, source: str,
               outbox_at: datetime | None, *, on_conflict: bool = True,
               staged: bool = False) -> list[tuple[int, PunchKey]]:
    """COPY into a session temp table, then ONE INSERT ... SELECT ... ON CONFLICT DO NOTHING RETURNING that
    also queues the outbox rows (a data-modifying WITH); small batches send arrays instead of the COPY.
    ``on_conflict`` False: a plain INSERT (see _insert_punch_rows, ``trust_stored_read``). ``staged``: the
    stage was already made ready in this transaction (with the already-stored read)."""
    rows = pg_punch_rows(batch, received_at, source)
    outbox = outbox_at is not None
    with _dbapi_cursor(conn, "INSERT INTO punches (fast path)") as cur:
        take_feed_lock_if_untriggered(conn, cur)
        params: list[Any]
        if len(rows) >= PG_COPY_MIN:
            if not staged:
                cur.execute("; ".join(_pg_stage_statements(conn)))
            with cur.copy(f"COPY {_PG_STAGE} ({', '.join(PUNCH_COLUMNS)}) FROM STDIN (FORMAT BINARY)") as copy:
                copy.set_types(_PG_COPY_TYPES)
                for row in rows:
                    copy.write_row(row)
            sql, params = _pg_insert_sql(_PG_FROM_STAGE, outbox, on_conflict), []
        else:
            sql, params = _pg_insert_sql(_PG_FROM_ARRAYS, outbox, on_conflict), [list(col) for col in
                                                                                  zip(*rows, strict=True)]
        if outbox:
            params += [outbox_at, outbox_at]
        cur.execute(sql, params)
        return [(r[0], (r[1], r[2], r[3], r[4])) for r in cur.fetchall()]


_PG_COPY_PUNCHES = f"COPY punches (id, {', '.join(PUNCH_COLUMNS)}) FROM STDIN (FORMAT BINARY)"
_PG_COPY_PUNCH_TYPES = ["int8", *_PG_COPY_TYPES]
#: The ids of n new punches, drawn in order (the sequence is punches.id's own, migration 0011).
_PG_DRAW_IDS = "SELECT nextval('punches_id_seq') FROM generate_series(1, %s)"
#: Their outbox rows, once the punches are in (a database still at a schema with the outbox's foreign key,
#: before 0007_punch_indexes, checks it at once), sent as runs of consecutive ids: psycopg's text dumping of
#: an array of 1,000 ids cost about 1 ms per poll, and one statement's ids are one run unless another
#: transaction drew ids meanwhile.
_PG_QUEUE_IDS = ("INSERT INTO outbox (punch_id, state, attempts, next_attempt_at, created_at) "
                 "SELECT generate_series(run.first, run.last), 'pending', 0, %s, %s "
                 "FROM unnest(%s::int8[], %s::int8[]) AS run(first, last)")


def _id_runs(ids: list[int]) -> tuple[list[int], list[int]]:
    """(first ids, last ids) of the runs of consecutive values in ``ids`` (ascending, no repeats)."""
    if ids[-1] - ids[0] == len(ids) - 1:
        return [ids[0]], [ids[-1]]
    firsts, lasts = [ids[0]], []
    for i in range(1, len(ids)):
        if ids[i] != ids[i - 1] + 1:
            lasts.append(ids[i - 1])
            firsts.append(ids[i])
    lasts.append(ids[-1])
    return firsts, lasts


def _copy_pg(conn: Connection, batch: list[Punch], received_at: datetime, source: str,
             outbox_at: datetime | None) -> list[tuple[int, PunchKey]]:
    """A checked batch (see _insert_punch_rows, ``trust_stored_read``) straight into punches by binary COPY, with
    ids drawn first (one statement), then the outbox rows of those ids (one statement).

    Why: the staged path (COPY into a temporary table, then INSERT ... SELECT ... RETURNING) writes every row
    twice, and the temporary table's COPY alone was a fifth of the server's time for a 1,000-punch poll (issue
    14); COPY routes the rows into the month partitions itself and nothing has to come back. The ids are drawn
    after the feed-order lock (the trigger takes it only when the COPY starts, which is after the ids are drawn
    here): gateway.store.central, "Feed cursor". A key stored by another writer since the already-stored read
    fails the COPY with a unique violation, as it fails the plain INSERT; save_poll then runs the transaction
    again with ON CONFLICT.
    """
    with _dbapi_cursor(conn, "COPY punches (fast path)") as cur:
        pipeline = _pipeline(conn)
        with pipeline or nullcontext(), cur.connection.cursor() as lock:
            lock.execute(_FEED_WRITE_LOCK)
            cur.execute(_PG_DRAW_IDS, (len(batch),))
            # Built while the server draws the ids (the statement is sent already in pipeline mode).
            rows = pg_punch_rows(batch, received_at, source)
            ids = sorted(r[0] for r in cur.fetchall())
        with cur.copy(_PG_COPY_PUNCHES) as copy:
            copy.set_types(_PG_COPY_PUNCH_TYPES)
            for row_id, row in zip(ids, rows, strict=True):
                copy.write_row((row_id, *row))
        if outbox_at is not None:
            cur.execute(_PG_QUEUE_IDS, (outbox_at, outbox_at, *_id_runs(ids)))
    return [(row_id, (p.device_serial, p.device_user_id, p.device_time, p.occurrence))
            for row_id, p in zip(ids, batch, strict=True)]


class Store:
    """Gateway-side repository over one engine."""

    def __init__(self, engine: Engine, office_code: str) -> None:
        self.engine = engine
        self.office_code = office_code
        self._writer = writer(engine)

    # -- devices -----------------------------------------------------------------------------------
    def sync_devices(self, devices: Iterable[DeviceConfig]) -> dict[str, int]:
        """Make the devices table match the config (insert new, update address/name); returns id -> pk.

        Devices removed from the config keep their rows (and history) but are marked disabled.
        """
        now = utcnow()
        result: dict[str, int] = {}
        with self._writer.begin() as conn:
            existing = {r.device_id: r for r in conn.execute(
                select(s.devices.c.pk, s.devices.c.device_id).where(s.devices.c.office_code == self.office_code))}
            for dev in devices:
                values = {"name": dev.name, "location": dev.location, "address": dev.address, "port": dev.port,
                          "transport": dev.transport, "enabled": dev.enabled, "updated_at": now}
                if dev.id in existing:
                    pk = existing[dev.id].pk
                    conn.execute(update(s.devices).where(s.devices.c.pk == pk).values(**values))
                else:
                    pk = conn.execute(s.devices.insert().values(
                        office_code=self.office_code, device_id=dev.id, created_at=now, **values)
                        .returning(s.devices.c.pk)).scalar_one()
                result[dev.id] = pk
            gone = [r.pk for d, r in existing.items() if d not in result]
            if gone:
                conn.execute(update(s.devices).where(s.devices.c.pk.in_(gone)).values(enabled=False, updated_at=now))
        return result

    def device_state(self, device_id: str) -> DeviceState:
        """The remembered state of a configured device (KeyError if sync_devices never saw it)."""
        d = s.devices.c
        with self.engine.connect() as conn:
            row = conn.execute(select(d.pk, d.device_id, d.serial, d.firmware, d.last_record_count,
                                      d.last_user_count, d.last_full_read_at, d.last_ok_at, d.last_punch_at)
                               .where(d.office_code == self.office_code, d.device_id == device_id)).first()
            if row is None:
                raise KeyError(device_id)
            position = conn.execute(select(s.kv.c.value).where(
                s.kv.c.key == _position_key(row.serial))).scalar() if row.serial else None
        return DeviceState(*row, log_position=position)

    # -- polls -----------------------------------------------------------------------------------
    def save_poll(self, outcome: PollOutcome, punches: Sequence[Punch] = (), *, forward: bool = False,
                  address: tuple[str, int] | None = None, log_position: str | None = None,
                  quarantined: Iterable[QuarantinedInput] = ()) -> SaveResult:
        """Store one poll's result in ONE transaction: new punches (+ outbox rows), device row, poll run.

        ``quarantined``: the input of the same read that could not be read as punches (gateway.store.quarantine),
        kept in the same transaction, so a read is stored whole or not at all.

        ``log_position`` (opaque poller text) is saved for ``outcome.serial`` in the same transaction, so
        it never runs ahead of the punches it describes; ``device_state().log_position`` returns it.

        Called for failed polls too (punches empty) so poll history and last_seen stay exact.
        Only after this returns are the punches durable; nothing may be deleted from a device before.
        """
        quarantined = tuple(quarantined)  # the writer may run the transaction again: never a spent iterator

        def work(conn: Connection, trust_stored_read: bool) -> SaveResult:
            return self._save_poll_in(conn, outcome, punches, forward=forward, address=address,
                                      log_position=log_position, quarantined=quarantined,
                                      trust_stored_read=trust_stored_read)

        if self.engine.dialect.name != "postgresql":
            # SQLite: on the writer thread, committed together with the polls that queued meanwhile (db.Writer.run).
            return self._writer.run(lambda conn: work(conn, False))
        try:
            return self._writer.run(lambda conn: work(conn, True))
        except IntegrityError as exc:
            if not _unique_violation(exc):
                raise
            # Another writer stored one of these punches after our already-stored read (the plain insert's bet,
            # _insert_punch_rows): the transaction was rolled back whole; run it again with ON CONFLICT.
            log.debug("punch stored concurrently; saving the poll again with ON CONFLICT", device=outcome.device_id)
            return self._writer.run(lambda conn: work(conn, False))

    def _save_poll_in(self, conn: Connection, outcome: PollOutcome, punches: Sequence[Punch] = (), *,
                      forward: bool = False, address: tuple[str, int] | None = None,
                      log_position: str | None = None,
                      quarantined: Iterable[QuarantinedInput] = (), trust_stored_read: bool = False) -> SaveResult:
        """save_poll inside the caller's write transaction (writer(engine)); durable only once it commits."""
        now = utcnow()
        d = s.devices.c
        # One read of the device row (its id and what this poll compares with); the write lock is held.
        pk, prev_count, prev_punch_at = conn.execute(
            select(d.pk, d.last_record_count, d.last_punch_at)
            .where(d.office_code == self.office_code, d.device_id == outcome.device_id)).one()
        counts = outcome.counts
        if outcome.ok and outcome.serial and counts is not None and outcome.previous_serial is None \
                and not outcome.cleared_records and prev_count is not None and counts.records < prev_count:
            # Cleared at the keypad: the refilled log numbers its same-time records from 1 again.
            _bump_log_epoch(conn, outcome.serial)
        as_stored: dict[PunchKey, PunchKey] = {}
        if outcome.serial and any(map(attrgetter("occurrence"), punches)):
            punches, as_stored = _in_epoch(punches, _log_epoch(conn, outcome.serial))
        new_rows = _insert_punch_rows(conn, punches, received_at=now, outbox_at=now if forward else None,
                                      trust_stored_read=trust_stored_read) if punches else []
        new_ids = [r[0] for r in new_rows]
        # Every punch of the batch is stored now (new or from an earlier poll).
        newest = _newest_valid(punches)
        values: dict[str, Any] = {"updated_at": now}
        info = outcome.info
        if info is not None or counts is not None:
            values["last_seen_at"] = outcome.finished_at
        if info is not None:
            values.update(serial=info.serial, firmware=info.firmware or None, platform=info.platform or None,
                          device_name=info.device_name or None, mac=info.mac or None)
        if outcome.clock_skew_s is not None:
            values["clock_skew_s"] = outcome.clock_skew_s
        if counts is not None and outcome.ok:
            values.update(last_record_count=counts.records, last_user_count=counts.users,
                          records_cap=counts.records_cap or None, users_cap=counts.users_cap or None)
        if outcome.ok:
            values["last_ok_at"] = outcome.finished_at
            if outcome.mode == "full":
                values["last_full_read_at"] = outcome.finished_at
        if new_ids:
            values["last_new_punch_at"] = outcome.finished_at
        if newest is not None and (prev_punch_at is None or newest > prev_punch_at):
            values["last_punch_at"] = newest
        run_values = dict(
            device_pk=pk, serial=outcome.serial, started_at=outcome.started_at,
            finished_at=outcome.finished_at, duration_s=outcome.duration_s,
            outcome=_run_outcome(outcome),
            mode=outcome.mode if outcome.mode != "none" else "count",
            records_on_device=counts.records if counts else None, records_read=outcome.records_read,
            new_records=len(new_ids), bytes_read=outcome.bytes_read, error=outcome.error)
        identity = (pk, info.serial, address, info.firmware, outcome.finished_at) \
            if info is not None and address is not None else None
        position = (_position_key(outcome.serial), log_position) if log_position is not None and outcome.serial \
            else None
        if conn.dialect.name == "postgresql":
            _finish_poll_pg(conn, pk, values, run_values, identity, position, now)
        else:
            conn.execute(update(s.devices).where(d.pk == pk).values(**values))
            if identity is not None:
                self._touch_identity(conn, *identity)
            if position is not None:
                _set_kv(conn, *position, now)
            conn.execute(s.poll_runs.insert().values(**run_values))
        insert_quarantined(conn, quarantined)
        keys = map(itemgetter(1), new_rows)
        return SaveResult(new_punches=len(new_ids), newest_punch_utc=newest, new_ids=tuple(new_ids),
                          new_keys=frozenset(as_stored.get(k, k) for k in keys) if as_stored else frozenset(keys))

    @staticmethod
    def _touch_identity(conn: Connection, pk: int, serial: str, address: tuple[str, int], firmware: str,
                        at: datetime) -> None:
        # Update first, insert only when nothing matched: one statement per poll instead of a read and a write
        # (every round trip counts in a 1,000-punch poll on PostgreSQL; issue 14).
        i = s.device_identities.c
        touched = conn.execute(update(s.device_identities)
                               .where(i.device_pk == pk, i.serial == serial, i.address == address[0],
                                      i.port == address[1])
                               .values(last_seen_at=at, firmware=firmware or None)).rowcount
        if not touched:
            conn.execute(s.device_identities.insert().values(device_pk=pk, serial=serial, address=address[0],
                                                             port=address[1], firmware=firmware or None,
                                                             first_seen_at=at, last_seen_at=at))

    # -- clearing a terminal (gateway.polling.poller.DevicePoller.clear_device / the clear policy) ----------
    def missing_keys(self, serial: str, keys: Iterable[PunchKey]) -> set[PunchKey]:
        """The keys (Punch.key, as given to save_poll) among ``keys`` that are NOT in the punches table
        (empty = all stored).

        Read back from the database after save_poll committed, so a clear is decided on what is
        durably there, not on what the insert believed it wrote. Occurrence numbers are looked up in
        the device's current log epoch, as save_poll stored them.
        """
        wanted = set(keys)
        p = s.punches.c
        with self.engine.connect() as conn:
            epoch = _log_epoch(conn, serial)
            stored = {(serial, r[0], r[1], r[2]) for r in conn.execute(
                select(p.device_user_id, p.device_time, p.occurrence)
                # office_code first: the read is then a range of uq_punches_key instead of a table scan.
                .where(p.office_code == self.office_code, p.device_serial == serial))}
        return {k for k in wanted if _stored_key(k, epoch) not in stored}

    def outbox_waiting(self, device_id: str) -> tuple[int, int]:
        """(pending, rejected) outbox rows of this device's punches: not yet accepted upstream."""
        o, p = s.outbox.c, s.punches.c
        with self.engine.connect() as conn:
            rows = conn.execute(select(o.state, func.count()).select_from(s.outbox.join(s.punches, p.id == o.punch_id))
                                .where(p.office_code == self.office_code, p.device_id == device_id)
                                .group_by(o.state)).all()
        by_state = {r[0]: int(r[1]) for r in rows}
        return by_state.get("pending", 0), by_state.get("rejected", 0)

    def record_clear(self, device_id: str, serial: str, *, started_at: datetime, finished_at: datetime,
                     records_cleared: int) -> None:
        """Record a clear done by fpgw: a poll_runs row (outcome "cleared") and the device's count set to 0.

        Setting last_record_count to 0 in the same transaction is what keeps the next poll from
        mistaking our own clear for a clear at the keypad (the log_shrank notice).
        """
        d = s.devices.c
        with self._writer.begin() as conn:
            pk = conn.execute(select(d.pk).where(d.office_code == self.office_code,
                                                 d.device_id == device_id)).scalar_one()
            conn.execute(update(s.devices).where(d.pk == pk).values(last_record_count=0, updated_at=utcnow()))
            _bump_log_epoch(conn, serial)  # the emptied log numbers its same-time records from 1 again
            conn.execute(s.poll_runs.insert().values(
                device_pk=pk, serial=serial, started_at=started_at, finished_at=finished_at,
                duration_s=(finished_at - started_at).total_seconds(), outcome="cleared", mode="full",
                records_on_device=0, records_read=records_cleared, new_records=0, bytes_read=0, error=None))

    def new_log_epoch(self, serial: str) -> int:
        """Start a new log epoch for this terminal (its log restarted: cleared, or replaced by a rolling
        overwrite the caller detected); returns it. Same-time records read afterwards get new identities
        (see "Punch identity" above). Call it before the save_poll of the first download of the new log."""
        with self._writer.begin() as conn:
            return _bump_log_epoch(conn, serial)

    def cleared_since_last_poll(self, device_id: str) -> int | None:
        """Records cleared by fpgw after the last good poll started (None when there was no such clear).

        Why: `fpgw devices clear` runs in another process than the daemon; a daemon poll that read the
        count before the clear and stored it after would otherwise make the next poll see a shrink.
        """
        d, r = s.devices.c, s.poll_runs.c
        with self.engine.connect() as conn:
            pk = conn.execute(select(d.pk).where(d.office_code == self.office_code,
                                                 d.device_id == device_id)).scalar_one_or_none()
            if pk is None:
                return None
            clear = conn.execute(select(r.finished_at, r.records_read).where(r.device_pk == pk, r.outcome == "cleared")
                                 .order_by(r.id.desc()).limit(1)).first()
            if clear is None or clear.finished_at is None:
                return None
            last_poll = conn.execute(select(func.max(r.started_at)).where(
                r.device_pk == pk, r.outcome.in_(("ok", "unchanged")))).scalar_one()
        if last_poll is not None and clear.finished_at < last_poll:
            return None
        return int(clear.records_read or 0)

    def save_users(self, serial: str, users: Sequence[DeviceUser]) -> None:
        """Replace the stored user table of one device."""
        now = utcnow()
        with self._writer.begin() as conn:
            conn.execute(s.device_users.delete().where(s.device_users.c.device_serial == serial))
            rows = [{"device_serial": serial, "user_id": u.user_id, "uid": u.uid, "name": u.name,
                     "privilege": u.privilege, "card": u.card, "updated_at": now} for u in users]
            first: dict[Any, dict[str, Any]] = {}
            for row in rows:  # a device can list one user id twice: the first entry wins
                first.setdefault(row["user_id"], row)
            unique_rows = list(first.values())
            for i in range(0, len(unique_rows), INSERT_CHUNK):
                conn.execute(s.device_users.insert(), unique_rows[i:i + INSERT_CHUNK])

    # -- terminals we disable, and durability before a clear ---------------------------------------------
    # Why a durable mark: a process killed while it held a terminal disabled ("Working...") cannot re-enable
    # it; whoever talks to that terminal next must know to. One kv row per (device, process): the daemon must
    # not re-enable a terminal that a live `fpgw devices clear` holds locked. The kv table needs no migration.
    @staticmethod
    def _disable_prefix(device_id: str) -> str:
        return f"disabling:{device_id}:"

    def mark_disabling(self, device_id: str, owner: str) -> None:
        """Record (committed) that ``owner`` is about to disable the terminal; call BEFORE disabling it."""
        key, now = (self._disable_prefix(device_id) + owner)[:100], utcnow()
        with self._writer.begin() as conn:
            if not conn.execute(update(s.kv).where(s.kv.c.key == key).values(value=owner, updated_at=now)).rowcount:
                conn.execute(insert_ignore(conn, s.kv, ("key",)), {"key": key, "value": owner, "updated_at": now})

    def disable_marks(self, device_id: str) -> list[tuple[str, datetime]]:
        """(owner, marked at) of every mark_disabling() of this terminal not yet cleared."""
        prefix = self._disable_prefix(device_id)
        with self.engine.connect() as conn:
            rows = conn.execute(select(s.kv.c.key, s.kv.c.value, s.kv.c.updated_at)
                                .where(s.kv.c.key.startswith(prefix, autoescape=True))).all()
        return [(r.value, r.updated_at) for r in rows]  # device ids hold no ':' (config), so no overlap

    def clear_disable_marks(self, device_id: str, owners: Iterable[str]) -> None:
        """The terminal is known enabled again (a session ended cleanly, or we re-enabled it)."""
        keys = [(self._disable_prefix(device_id) + o)[:100] for o in owners]
        if keys:
            with self._writer.begin() as conn:
                conn.execute(s.kv.delete().where(s.kv.c.key.in_(keys)))

    def make_durable(self) -> str:
        """Make every committed transaction survive a power cut; call before deleting anything from a device.

        SQLite runs in WAL mode with synchronous=NORMAL (ops-notes §2.1): a commit is atomic but may be lost
        by a power cut until the WAL is synced. ``PRAGMA wal_checkpoint(FULL)`` syncs the WAL and copies it
        into the database file (waiting for writers via the busy timeout). Raises StorageError when the
        checkpoint could not complete, so the caller clears nothing. PostgreSQL: a commit is already durable.
        Returns what was done (for logs and tests).
        """
        if self.engine.dialect.name != "sqlite":
            return "commit"
        # Holding this process's writer: the checkpoint then waits only for other processes' writers.
        with self._writer.lock or nullcontext():
            raw = self.engine.raw_connection()
            try:
                # Straight on the DBAPI connection (autocommit: isolation_level None): a checkpoint inside the
                # BEGIN that SQLAlchemy would emit could not complete.
                row = raw.driver_connection.execute(  # type: ignore[union-attr]
                    "PRAGMA wal_checkpoint(FULL)").fetchone()
            finally:
                raw.close()
        busy, wal_frames, done = (int(v) for v in row) if row is not None else (0, -1, -1)
        if wal_frames < 0:
            return "no-wal"  # not in WAL mode (in-memory database): each commit synced its journal
        if busy or done < wal_frames:
            raise OperationalError("PRAGMA wal_checkpoint(FULL)", {}, Exception(
                f"could not checkpoint the SQLite write-ahead log ({done} of {wal_frames} frames; database busy)"))
        return "checkpoint"


def _finish_poll_pg(conn: Connection, pk: int, device_values: dict[str, Any], run_values: dict[str, Any],
                    identity: tuple[int, str, tuple[str, int], str, datetime] | None,
                    position: tuple[str, str] | None, now: datetime) -> None:
    """The end of a poll's save on PostgreSQL in ONE statement: the device row (``device_values``), its identity,
    the log position and the poll run (``run_values``) as data-modifying WITH parts of the poll run's INSERT,
    which returns whether the identity and the position rows existed; the rare missing one (a new address, the
    first position) is inserted then.

    Why: each of these was its own round trip, and a 1,000-punch poll on PostgreSQL is bounded by its round
    trips and the per-poll work (benchmarks/bench_store.py, issue 14). They touch different tables and rows, so
    sharing one snapshot changes nothing. Written as SQL text on the DBAPI cursor: building and compiling it
    through SQLAlchemy cost about a millisecond of client CPU per poll, a twentieth of a 1,000-punch poll's save;
    the instants are checked as UtcDateTime would (aware, or ValueError) and bound as timestamptz.
    """
    for column_values in (device_values, run_values):
        for value in column_values.values():
            if isinstance(value, datetime) and value.tzinfo is None:
                raise ValueError(f"naive datetime {value!r} given for a UTC column; attach a time zone first")
    parts = [f"fpgw_device AS (UPDATE devices SET {', '.join(f'{c} = %s' for c in device_values)} WHERE pk = %s)"]
    params: list[Any] = [*device_values.values(), pk]
    found = []
    if identity is not None:
        _, serial, address, firmware, at = identity
        parts.append("fpgw_identity AS (UPDATE device_identities SET last_seen_at = %s, firmware = %s "
                     "WHERE device_pk = %s AND serial = %s AND address = %s AND port = %s RETURNING id)")
        params += [at, firmware or None, pk, serial, address[0], address[1]]
        found.append("(SELECT count(*) FROM fpgw_identity)")
    if position is not None:
        parts.append("fpgw_position AS (UPDATE kv SET value = %s, updated_at = %s WHERE key = %s RETURNING key)")
        params += [position[1], now, position[0]]
        found.append("(SELECT count(*) FROM fpgw_position)")
    sql = (f"WITH {', '.join(parts)} INSERT INTO poll_runs ({', '.join(run_values)}) "
           f"VALUES ({', '.join(['%s'] * len(run_values))})")
    params += run_values.values()
    with _dbapi_cursor(conn, sql) as cur:
        if not found:
            cur.execute(sql, params)
            return
        cur.execute(f"{sql} RETURNING {', '.join(found)}", params)
        row = cur.fetchone()
    if identity is not None and not row[0]:
        pk, serial, address, firmware, at = identity
        conn.execute(s.device_identities.insert().values(device_pk=pk, serial=serial, address=address[0],
                                                         port=address[1], firmware=firmware or None,
                                                         first_seen_at=at, last_seen_at=at))
    if position is not None and not row[-1]:
        conn.execute(s.kv.insert().values(key=position[0], value=position[1], updated_at=now))


def _position_key(serial: str) -> str:
    return f"log_position:{serial}"


def _set_kv(conn: Connection, key: str, value: str, now: datetime) -> None:
    if not conn.execute(update(s.kv).where(s.kv.c.key == key).values(value=value, updated_at=now)).rowcount:
        conn.execute(s.kv.insert().values(key=key, value=value, updated_at=now))


def _epoch_key(serial: str) -> str:
    return f"log_epoch:{serial}"


def _log_epoch(conn: Connection, serial: str) -> int:
    """The device's log epoch (0 until fpgw or the keypad first cleared it)."""
    value = conn.execute(select(s.kv.c.value).where(s.kv.c.key == _epoch_key(serial))).scalar()
    try:
        return int(value) if value is not None else 0
    except ValueError:
        return 0


def _bump_log_epoch(conn: Connection, serial: str) -> int:
    """Next log epoch of the device, inside the caller's transaction; returns it."""
    epoch = _log_epoch(conn, serial) + 1
    _set_kv(conn, _epoch_key(serial), str(epoch), utcnow())
    return epoch


def _stored_key(key: PunchKey, epoch: int) -> PunchKey:
    serial, user, when, occurrence = key
    return (serial, user, when, occurrence + epoch * OCCURRENCE_EPOCH_STRIDE) if occurrence and epoch else key


def _in_epoch(punches: Sequence[Punch], epoch: int) -> tuple[Sequence[Punch], dict[PunchKey, PunchKey]]:
    """The punches with their occurrence lifted into ``epoch``, and stored key -> given key."""
    if not epoch:
        return punches, {}
    out: list[Punch] = []
    back: dict[PunchKey, PunchKey] = {}
    for p in punches:
        if p.occurrence:
            q = replace(p, occurrence=p.occurrence + epoch * OCCURRENCE_EPOCH_STRIDE)
            back[q.key] = p.key
            out.append(q)
        else:
            out.append(p)
    return out, back


def _run_outcome(outcome: PollOutcome) -> str:
    if not outcome.ok:
        return outcome.error_kind or "bug"
    return "ok" if outcome.mode in ("full", "tail") else "unchanged"


def _newest_valid(punches: Sequence[Punch]) -> datetime | None:
    # The newest *valid* instant in the batch; flagged future/rtc values would mislead "last punch".
    valid = [p.utc_time for p in punches
             if p.utc_time is not None and not (p.flags and ("future" in p.flags or "rtc_reset" in p.flags))]
    return max(valid) if valid else None


# -- reading punches (`fpgw punches`) -----------------------------------------------------------------

@dataclass(frozen=True)
class PunchQuery:
    """Which punches a reader wants: `fpgw punches`, the USB import's overlap check, and at the central the
    pull API, `fpgw export` and the dashboards. One field per punches column, each with one meaning; every
    reader builds its WHERE clause with where_punches(). Dates are whole office-local days (see the module
    docstring): a punch belongs to the date of its local wall-clock time. ``offices`` is the caller's scope
    (None = every office), ``office_code`` one office asked for within it."""

    date_from: date | None = None
    #: Inclusive.
    date_to: date | None = None
    device_id: str | None = None
    employee_id: str | None = None
    device_user_id: str | None = None
    office_code: str | None = None
    offices: OfficeScope | frozenset[str] | None = None
    #: At most this many rows (readers that page, such as the central feed, pass their own page size).
    limit: int | None = None


PUNCH_FIELDS = ("id", "office_code", "device_id", "device_serial", "device_user_id", "employee_id", "device_time",
                "utc_time", "timezone", "state", "state_name", "verify", "verify_name", "flags", "received_at")


def on_local_days(q: Select[Any], date_from: date | None, date_to: date | None) -> Select[Any]:
    """Punches of the whole days ``date_from``..``date_to`` (both included, either open): the one meaning of a
    day in every punch query (see the module docstring)."""
    p = s.punches.c
    if date_from is not None:
        q = q.where(p.local_time >= datetime.combine(date_from, time(0)))
    if date_to is not None:
        q = q.where(p.local_time < datetime.combine(date_to + timedelta(days=1), time(0)))
    return q


def in_scope(column: ColumnElement[str], offices: OfficeScope | Collection[str]) -> ColumnElement[bool]:
    """``column`` (an office code) lies in ``offices``: the SQL form of OfficeScope.allows (exact codes, and
    for each ``1801.*`` pattern an exact, case-sensitive prefix test; LIKE is case-blind on SQLite)."""
    if not isinstance(offices, OfficeScope):
        return column.in_(sorted(offices))
    tests: list[ColumnElement[bool]] = []
    if offices.codes:
        tests.append(column.in_(sorted(offices.codes)))
    tests += [func.substr(column, 1, len(prefix)) == prefix for prefix in sorted(offices.prefixes)]
    return or_(*tests) if len(tests) > 1 else tests[0]


def where_punches(q: Select[Any], query: PunchQuery) -> Select[Any]:
    """``q`` restricted to the punches ``query`` selects (every field but ``limit``): the one place a punch
    query's WHERE clause is built."""
    p = s.punches.c
    if query.offices is not None:
        q = q.where(in_scope(p.office_code, query.offices))
    if query.office_code:
        q = q.where(p.office_code == query.office_code)
    if query.device_id:
        q = q.where(p.device_id == query.device_id)
    if query.employee_id:
        q = q.where(p.employee_id == query.employee_id)
    if query.device_user_id:
        q = q.where(p.device_user_id == query.device_user_id)
    return on_local_days(q, query.date_from, query.date_to)


def iter_punches(engine: Engine, query: PunchQuery, *, chunk: int = 2000) -> Iterator[dict[str, Any]]:
    """Punches matching the query, oldest first (by instant, then arrival); streams in chunks."""
    p = s.punches.c
    q = where_punches(select(*(getattr(p, f) for f in PUNCH_FIELDS)), query)
    # Punches with an impossible date have no instant: they sort last (and only appear without a date filter).
    q = q.order_by(p.utc_time.is_(None), p.utc_time, p.id)
    if query.limit:
        q = q.limit(query.limit)
    with engine.connect() as conn:
        result = conn.execution_options(stream_results=True, yield_per=chunk).execute(q)
        for row in result.mappings():
            item = dict(row)
            item["utc_time"] = _iso(item["utc_time"])
            item["received_at"] = _iso(item["received_at"])
            yield item


def _iso(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z") if value else None

"""Central side of forwarding: idempotent ingest from office gateways and the BKD pull queries.

    gateway forwarder --HTTP--> gateway.central.api (validates) --> CentralStore.ingest_punches / ingest_health
    BKD client --HTTP--> gateway.central.api --> CentralStore.feed / iter_punches / devices --> gateway.central.export

Dates (PunchQuery.date_from / date_to, the pull API's date= / from= / to=, `fpgw export`) are office-local
days: the date of each punch's own local wall-clock time (local_time, in its device's zone, which is its
office's zone unless a device sets another), the same day `fpgw punches --from/--to` shows at the office.
PunchQuery is the office's query type (gateway.store.punches), re-exported here: one meaning of each field
and of a day, one WHERE clause (where_punches) for every punch query.

Office isolation (migration 0005_office_bindings): a forwarded punch is stored under its gateway token's
office - or, sent by a lower tier (docs/tiers.md), under its own office_code, which gateway.wire checked
against the tier's token scope - and is a duplicate only of that office's punch (uq_punches_key leads with
office_code). Each device
serial is bound to the office that first reported it (device_bindings); a punch or health report for a
serial bound to another office is rejected (serial_bound_elsewhere) and alerted, never merged; only an
admin rebinding (rebind_device, `fpgw central rebind-device`) moves a serial.

Feed cursor: the punches' own monotonic ``id``. On PostgreSQL ids come from a sequence and are NOT
committed in order when transactions overlap: T1 takes id 10, T2 takes id 11 and commits first, a
reader pages past 11 and never sees 10. The guard (migration 0002's statement-level BEFORE INSERT trigger
on ``punches``, changed by 0007_punch_indexes) makes every transaction that inserts punches - ingest, or a
local poll - take ``pg_advisory_xact_lock_shared(FEED_LOCK_KEY)`` before its rows draw ids, and holds it to
its COMMIT; a feed read takes the same lock EXCLUSIVELY, in its own transaction, right before its one
SELECT (``feed``). Why that never skips a punch:

- When the reader holds the lock, no transaction that has drawn a punch id is still running (each holds
  the shared lock from before its first id to its end), so its snapshot, taken after that, sees every id
  drawn so far that will ever commit.
- A transaction that draws ids later takes the shared lock after the reader released it, so it draws
  them after every id the reader could see: the sequence (CACHE 1, the default) hands out increasing
  values in time order. So every later-visible id is above any cursor the reader returned.
- New shared requests queue behind a waiting exclusive one (PostgreSQL's lock queue), so a steady stream
  of ingests cannot starve a reader; a reader waits at most for the ingests in flight.

Ingests therefore no longer wait for each other (before 0007 the trigger took the lock exclusively and
every ingest's INSERT, index work and COMMIT ran one at a time: 18,600 punches/s with 300 gateways,
benchmarks/bench_forward.py). A transaction that inserts punches must not read the feed (the reader would
wait for its own shared lock). SQLite has one writer at a time and gives rowids in commit order, so the
same holds there without a trigger or lock.

Ingest order within a transaction: everything that may wait for another transaction (receipt claim, serial
bindings, the gateway's row) happens before the ``INSERT ... SELECT`` into punches takes the shared lock,
and what follows it touches only rows this transaction already holds, so an ingest never waits for a row
while holding the lock a reader waits for. At a central that forwards upstream ([central.upstream]) the
same statement also inserts the new punches' outbox rows (keyed by the ids it just drew, so they conflict
with no other transaction's row); on SQLite it is the next statement of the transaction.
"""

from __future__ import annotations

import base64
import binascii
import json
import weakref
from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, delete, func, literal, or_, select, text, update
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.engine import Connection, RowMapping

from gateway.models import Punch
from gateway.store import schema as s
from gateway.store.db import writer
from gateway.store.device_events import record_health_changes
from gateway.store.health import insert_alert
from gateway.store.punches import (
    FEED_LOCK_KEY,
    PUNCH_COLUMNS,
    PUNCH_COPY_TYPES,
    PUNCH_KEY,
    PunchQuery,
    in_scope,
    insert_ignore,
    pg_punch_rows,
    punch_row,
    take_feed_lock_if_untriggered,
    where_punches,
)
from gateway.store.schema import utcnow
from gateway.wire import OfficeScope

#: A feed read's side of the guard (held until the read's transaction ends, right after its SELECT).
_FEED_READ_LOCK = text(f"SELECT pg_advisory_xact_lock({FEED_LOCK_KEY})")
_CURSOR_PREFIX = "fpgw1:"
#: Largest feed position (punches.id is a signed 64-bit integer).
MAX_POSITION = 2 ** 63 - 1
#: The session-private staging table of the PostgreSQL ingest (COPY target; emptied at every commit).
_STAGE = "fpgw_ingest_stage"
#: alerts.problem of a punch or health report refused because its serial is bound to another office.
SERIAL_CONFLICT = "serial_bound_elsewhere"
#: One serial_bound_elsewhere alert per (serial, refused office) this often while the office keeps sending.
CONFLICT_ALERT_EVERY = timedelta(hours=24)


class BatchConflict(Exception):
    """A gateway reused a batch_id for other punches (the central answers 409 batch_conflict)."""


def _refused_serials(answer: Mapping[str, Any]) -> bool:
    """True when a stored answer refused punches for a serial bound to another office."""
    return any(str(r.get("reason", "")).startswith(SERIAL_CONFLICT) for r in answer.get("results", ()))


def _bound_elsewhere(serial: str, owner: str) -> str:
    return (f"{SERIAL_CONFLICT}: serial {serial} belongs to office {owner} (BKD must run "
            f"`fpgw central rebind-device {serial} --office <code>` if the terminal moved)")


def encode_cursor(position: int) -> str:
    """The opaque cursor string for a feed position."""
    return base64.urlsafe_b64encode(f"{_CURSOR_PREFIX}{position}".encode()).decode().rstrip("=")


def decode_cursor(text: str | None) -> int:
    """The feed position of a cursor ("" or None = the beginning); ValueError when it is not ours."""
    if not text:
        return 0
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise ValueError("not a cursor returned by this API") from None
    digits = raw[len(_CURSOR_PREFIX):]
    # ASCII digits that fit the 64-bit id column ("²" is a digit to str.isdigit, and a huge number
    # would overflow the query parameter).
    if not raw.startswith(_CURSOR_PREFIX) or not digits.isascii() or not digits.isdigit() or len(digits) > 19:
        raise ValueError("not a cursor returned by this API")
    position = int(digits)
    if position > MAX_POSITION:
        raise ValueError("not a cursor returned by this API")
    return position


#: Columns a pulled punch carries, in CSV/XLSX column order.
FEED_COLUMNS = ("office_code", "device_id", "device_serial", "device_user_id", "employee_id", "device_time",
                "local_time", "utc_time", "timezone", "state", "state_name", "verify", "verify_name", "workcode",
                "flags", "source", "received_at")


def _row(r: RowMapping) -> dict[str, Any]:
    out = {k: r[k] for k in FEED_COLUMNS}
    out["flags"] = [f for f in (r["flags"] or "").split(",") if f]
    return out


#: (office, serial, user, device time, occurrence): uq_punches_key, as the ingest's insert returns it.
StoredKey = tuple[str, str, str, str, int]


class _Stage:
    """Remembers which PostgreSQL sessions already have the staging table, so it is created once per session.

    The table is created inside the ingest transaction, so it exists only once that transaction committed:
    ``committed()`` records it then (a rolled-back creation is simply created again next time).
    """

    #: psycopg connections whose session holds the staging table (weak: a closed connection drops out).
    ready: weakref.WeakSet[Any] = weakref.WeakSet()

    def __init__(self) -> None:
        self.created_on: Any = None

    def committed(self) -> None:
        if self.created_on is not None:
            _Stage.ready.add(self.created_on)


def _insert_new_punches(conn: Connection, punches: Sequence[Punch], now: datetime, stage: _Stage, *,
                        forward: bool = False) -> set[StoredKey]:
    """Insert ``punches`` (each under its own office) idempotently in the caller's transaction; the keys of
    the new rows. ``forward``: also queue an outbox row for each new row (a tier, [central.upstream]), in the
    same transaction, so a stored punch always has something that sends it upstream.

    One bulk path per dialect, no fixed statement size: PostgreSQL COPYs the batch into a session-private
    staging table and moves it with ONE ``INSERT ... SELECT ... ON CONFLICT DO NOTHING RETURNING`` (the
    outbox rows in the same statement, a data-modifying WITH); SQLite runs one prepared statement over every
    row. Rows get their ids in batch order either way.
    """
    if not punches:
        return set()
    if conn.dialect.name == "postgresql":
        return _insert_new_punches_pg(conn, punches, now, stage, forward)
    rows = [punch_row(p, now, "forward") for p in punches]
    # SQLite: the transaction holds the database's one write lock (BEGIN IMMEDIATE), so the new rows are
    # exactly those above the highest id before the insert (rowids grow from the maximum).
    c = s.punches.c
    before = conn.execute(select(func.coalesce(func.max(c.id), 0))).scalar_one()
    conn.execute(insert_ignore(conn, s.punches, PUNCH_KEY), rows)
    if forward:
        stamp = literal(now, s.outbox.c.created_at.type)
        conn.execute(s.outbox.insert().from_select(
            ["punch_id", "state", "attempts", "next_attempt_at", "created_at"],
            select(c.id, literal("pending"), literal(0), stamp, stamp).where(c.id > before)))
    return {(r[0], r[1], r[2], r[3], r[4]) for r in conn.execute(
        select(c.office_code, c.device_serial, c.device_user_id, c.device_time, c.occurrence).where(c.id > before))}


_PG_STAGE_SQL: dict[bool, tuple[str, str, str]] = {}
_PG_RETURNING = "office_code, device_serial, device_user_id, device_time, occurrence"


def _pg_stage_sql(forward: bool, columns: Sequence[str] = PUNCH_COLUMNS) -> tuple[str, str, str]:
    """(CREATE staging table, COPY into it, INSERT ... SELECT from it) for these punches columns; with
    ``forward`` the INSERT also queues each new row in the outbox (one parameter: the time, twice)."""
    if forward not in _PG_STAGE_SQL:
        dialect = pg_dialect.dialect()
        typed = ", ".join(f"{n} {s.punches.c[n].type.compile(dialect=dialect)}" for n in columns)
        names = ", ".join(columns)
        # ORDER BY ord: ids (the feed order) follow the order the gateway sent. The INSERT fires the feed-order
        # trigger (its shared advisory lock is held from here to COMMIT; see the module docstring).
        insert = (f"INSERT INTO punches ({names}) SELECT {names} FROM {_STAGE} ORDER BY ord "
                  f"ON CONFLICT ({', '.join(PUNCH_KEY)}) DO NOTHING ")
        if forward:
            # The outbox rows only take new punch ids (its primary key): nothing here waits for another
            # transaction's row while this one holds the feed-order lock.
            insert = (f"WITH ins AS ({insert} RETURNING id, {_PG_RETURNING}), queued AS (INSERT INTO outbox "
                      "(punch_id, state, attempts, next_attempt_at, created_at) SELECT id, 'pending', 0, %(at)s, "
                      f"%(at)s FROM ins) SELECT {_PG_RETURNING} FROM ins")
        else:
            insert += f"RETURNING {_PG_RETURNING}"
        _PG_STAGE_SQL[forward] = (
            # ON COMMIT DELETE ROWS: created once per database session, empty at the start of every transaction.
            f"CREATE TEMP TABLE IF NOT EXISTS {_STAGE} (ord integer NOT NULL, {typed}) ON COMMIT DELETE ROWS",
            f"COPY {_STAGE} (ord, {names}) FROM STDIN (FORMAT BINARY)",
            insert)
    return _PG_STAGE_SQL[forward]


def _insert_new_punches_pg(conn: Connection, punches: Sequence[Punch], now: datetime, stage: _Stage,
                           forward: bool) -> set[StoredKey]:
    # One tuple per punch in PUNCH_COLUMNS order, binary COPY (punch_row dicts and text COPY cost a third of
    # the store's Python time per batch; measured with benchmarks/bench_forward.py's daemon under py-spy).
    rows = pg_punch_rows(punches, now, "forward")
    create, copy_sql, insert = _pg_stage_sql(forward)
    driver = conn.connection.driver_connection  # psycopg 3, inside the caller's transaction
    assert driver is not None
    with driver.cursor() as cur:
        take_feed_lock_if_untriggered(conn, cur)
        if driver not in _Stage.ready:
            cur.execute(create)
            stage.created_on = driver
        with cur.copy(copy_sql) as copy:
            copy.set_types(["int4", *PUNCH_COPY_TYPES])
            for i, row in enumerate(rows):
                copy.write_row((i, *row))
        if forward:
            cur.execute(insert, {"at": now})
        else:
            cur.execute(insert)
        return {(r[0], r[1], r[2], r[3], r[4]) for r in cur.fetchall()}


def ingest_answer(batch_id: str, office_code: str, punches: Sequence[Punch | None], rejected: Mapping[int, str],
                  new_keys: Collection[StoredKey]) -> dict[str, Any]:
    """The ingest answer: one result per sent punch (rejected with its reason, or accepted and new/duplicate;
    a key sent twice in one batch is new only the first time) and the counts."""
    results: list[dict[str, Any]] = []
    seen: set[StoredKey] = set()
    for i, p in enumerate(punches):
        if p is None:
            results.append({"index": i, "status": "rejected", "reason": rejected[i]})
            continue
        key = (p.office_code, p.device_serial, p.device_user_id, p.device_time, p.occurrence)
        new = key in new_keys and key not in seen
        seen.add(key)
        results.append({"index": i, "status": "accepted", "duplicate": not new})
    n_new = sum(1 for r in results if r["status"] == "accepted" and not r["duplicate"])
    return {
        "batch_id": batch_id, "office_code": office_code, "received": len(punches),
        "accepted": len(punches) - len(rejected), "new": n_new,
        "duplicates": len(punches) - len(rejected) - n_new, "rejected": len(rejected), "results": results,
    }


class CentralStore:
    """Central-instance repository over one engine."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        # On SQLite the writer queues this process's write transactions on one lock (gateway.store.db.Writer)
        # instead of in SQLite's busy handler, which sleeps and retries unfairly: with dozens of gateways sending
        # at once some waited past the busy timeout and got "database is locked" (HTTP 500).
        self._writer = writer(engine)

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        """One write transaction (queued behind this process's other writers on SQLite)."""
        with self._writer.begin() as conn:
            yield conn

    @property
    def on_postgresql(self) -> bool:
        """True on PostgreSQL (what a regency-wide central should run on); False on SQLite."""
        return self.engine.dialect.name == "postgresql"

    # -- ingest ----------------------------------------------------------------------------------
    def receipt(self, gateway: str, batch_id: str) -> tuple[str, dict[str, Any]] | None:
        """(digest, answer) stored for a batch already received from this gateway."""
        b = s.ingest_batches.c
        with self.engine.connect() as conn:
            row = conn.execute(select(b.digest, b.response)
                               .where(b.gateway == gateway, b.batch_id == batch_id)).first()
        return (row.digest, json.loads(row.response)) if row else None

    def ingest_punches(self, *, gateway: str, office_code: str, batch_id: str, digest: str,
                       punches: Sequence[Punch | None], rejected: Mapping[int, str],
                       remote_addr: str | None = None, meta: Mapping[str, Any] | None = None,
                       alert_office: str = "", replace_receipt: bool = False, forward: bool = False
                       ) -> tuple[dict[str, Any], bool]:
        """Store a validated batch in ONE transaction; returns (answer, replayed).

        Each punch is stored under its own ``office_code`` (gateway.wire set it: the token's one office, or
        for a tier's batch the punch's office within the token's scope); ``office_code`` here is the
        sender's own, for its gateways row and the answer. ``forward`` (a tier with [central.upstream]):
        every NEW punch also gets its outbox row in this transaction, for the forwarder to send upstream.

        A batch received before from this gateway gets its stored answer back (replayed), unless that
        answer refused serials bound to another office: then it is decided again. BatchConflict when the
        batch_id was used for other punches (another digest).

        ``punches[i]`` is None exactly for the indexes in ``rejected`` (index -> reason). A punch whose
        device serial is bound to another office is rejected here too (serial_bound_elsewhere, with a
        gateway-wide alert queued for ``alert_office``, the central's own office). The others are stored
        with ON CONFLICT DO NOTHING on (office, serial, user, time), so a punch this office already stored
        (resend, overlap) is accepted as a duplicate, and another office's punch never is. The answer is
        kept as the batch's receipt: a replay gets it back unchanged (``replace_receipt`` re-decides a
        batch whose serials were refused, after an admin rebinding).
        """
        now = utcnow()
        b = s.ingest_batches.c
        punches, rejected = list(punches), dict(rejected)
        receipt = (b.gateway == gateway) & (b.batch_id == batch_id)
        stage = _Stage()
        with self._write() as conn:
            if replace_receipt:
                conn.execute(delete(s.ingest_batches).where(receipt))
            # The receipt row first (its answer is filled in below): the same batch racing in on another
            # connection waits here for this transaction, then gets its answer and stores nothing.
            claim = insert_ignore(conn, s.ingest_batches, ("gateway", "batch_id")).returning(b.batch_id)
            claim_values = {"gateway": gateway, "batch_id": batch_id, "digest": digest, "received_at": now,
                            "punch_count": len(punches), "new_count": 0, "rejected_count": len(rejected),
                            "response": ""}
            if conn.execute(claim, claim_values).first() is None:
                # Received before (or just now on another connection, which this waited for).
                prior_digest, prior_text = conn.execute(select(b.digest, b.response).where(receipt)).one()
                if prior_digest != digest:
                    raise BatchConflict(f"batch_id {batch_id!r} was already used for other punches")
                prior = json.loads(prior_text)
                if not _refused_serials(prior):
                    return prior, True
                # Its serials were refused: decide again (BKD may have rebound the device meanwhile).
                conn.execute(delete(s.ingest_batches).where(receipt))
                conn.execute(claim, claim_values).one()
            # An unbound serial is bound to the office of its first punch in the batch (a tier's batch holds
            # several offices; an office's holds one).
            claims: dict[str, str] = {}
            for p in punches:
                if p is not None:
                    claims.setdefault(p.device_serial, p.office_code)
            owners = self._bind_serials(conn, claims, f"gateway:{gateway}", now)
            refused: dict[tuple[str, str], int] = {}
            for i, p in enumerate(punches):
                if p is not None and owners[p.device_serial] != p.office_code:
                    rejected[i] = _bound_elsewhere(p.device_serial, owners[p.device_serial])
                    refused[(p.device_serial, p.office_code)] = refused.get((p.device_serial, p.office_code), 0) + 1
                    punches[i] = None
            for (serial, sender), n in refused.items():
                self._alert_foreign_serial(conn, serial, owners[serial], sender, gateway, now, alert_office,
                                           what=f"{n} punch(es)")
            self._touch_gateway(conn, gateway, office_code, now, remote_addr, meta, batch=True)
            # On PostgreSQL this INSERT takes the feed-order lock (shared) to COMMIT (see the module docstring):
            # everything that may wait for another transaction happened before it; the two updates below
            # touch the receipt and gateway rows this transaction already holds.
            new_keys = _insert_new_punches(conn, [p for p in punches if p is not None], now, stage, forward=forward)
            answer = ingest_answer(batch_id, office_code, punches, rejected, new_keys)
            n_new = answer["new"]
            conn.execute(update(s.ingest_batches).where(receipt).values(
                new_count=n_new, rejected_count=len(rejected), response=json.dumps(answer)))
            if n_new:
                g = s.gateways.c
                conn.execute(update(s.gateways).where(g.name == gateway)
                             .values(punches_received=g.punches_received + n_new))
        stage.committed()
        return answer, False

    # -- device serial bindings ------------------------------------------------------------------
    @staticmethod
    def _bind_serials(conn: Connection, claims: Mapping[str, str], by: str, now: datetime) -> dict[str, str]:
        """serial -> the office it is bound to; an unbound serial is bound to the office claiming it in
        ``claims`` (serial -> office: the first reporter wins)."""
        if not claims:
            return {}
        d = s.device_bindings.c
        ordered = sorted(claims)
        owners = {r.serial: r.office_code for r in conn.execute(
            select(d.serial, d.office_code).where(d.serial.in_(ordered)))}
        fresh = [x for x in ordered if x not in owners]
        if fresh:
            conn.execute(insert_ignore(conn, s.device_bindings, ("serial",)),
                         [{"serial": x, "office_code": claims[x], "bound_at": now, "bound_by": by[:120]}
                          for x in fresh])
            # Re-read: another office's first report may have raced in and won (PostgreSQL).
            owners.update({r.serial: r.office_code for r in conn.execute(
                select(d.serial, d.office_code).where(d.serial.in_(fresh)))})
        return owners

    @staticmethod
    def _alert_foreign_serial(conn: Connection, serial: str, owner: str, sender: str, gateway: str, now: datetime,
                              alert_office: str, *, what: str) -> None:
        """Queue the gateway-wide alert for a refused serial, once per (serial, refused office) and day."""
        d = s.device_bindings.c
        done = conn.execute(update(s.device_bindings).where(
            d.serial == serial,
            or_(d.conflict_office_code.is_(None), d.conflict_office_code != sender,
                d.conflict_alerted_at.is_(None), d.conflict_alerted_at < now - CONFLICT_ALERT_EVERY))
            .values(conflict_office_code=sender, conflict_alerted_at=now)).rowcount
        if done != 1:
            return
        insert_alert(
            conn, office_code=alert_office or sender, problem=SERIAL_CONFLICT, event="start", severity="critical",
            title=f"Device serial {serial} reported by office {sender}, but it belongs to office {owner}",
            message=(f"PROBLEM [critical] The office gateway {gateway} of office {sender} sent {what} of the terminal "
                     f"with serial {serial}, which is bound to office {owner}. They were refused (not stored, not "
                     f"merged); they stay in that gateway's outbox as rejected."),
            checks=[f"Was the terminal {serial} moved to or replaced at office {sender}? Then run "
                    f"`fpgw central rebind-device {serial} --office {sender}` and have the office retry its "
                    "rejected punches.",
                    f"Otherwise office {sender}'s gateway is misconfigured or sending another office's data: check "
                    "its [[devices]] and who holds its token."],
            details={"serial": serial, "bound_to": owner, "sender_office": sender, "gateway": gateway,
                     "reason": SERIAL_CONFLICT},
            extra={"office": {"code": sender, "name": ""}}, at=now)

    def rebind_device(self, serial: str, office_code: str, *, by: str, note: str | None = None
                      ) -> tuple[str | None, str]:
        """Bind ``serial`` to ``office_code`` (an admin action, recorded); returns (previous office, office)."""
        now = utcnow()
        d = s.device_bindings.c
        with self._write() as conn:
            previous = conn.execute(select(d.office_code).where(d.serial == serial)).scalar()
            values = {"office_code": office_code, "bound_at": now, "bound_by": f"admin:{by}"[:120],
                      "previous_office_code": previous, "note": (note or "")[:500] or None,
                      "conflict_office_code": None, "conflict_alerted_at": None}
            if previous is None:
                conn.execute(s.device_bindings.insert().values(serial=serial, **values))
            else:
                conn.execute(update(s.device_bindings).where(d.serial == serial).values(**values))
        return previous, office_code

    def bindings(self, serial: str | None = None) -> list[dict[str, Any]]:
        """The serial -> office bindings (one serial, or all), newest first."""
        q = select(s.device_bindings)
        if serial is not None:
            q = q.where(s.device_bindings.c.serial == serial)
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(q.order_by(s.device_bindings.c.bound_at.desc())).mappings()]

    def ingest_health(self, *, gateway: str, office_code: str, devices: Sequence[Mapping[str, Any]],
                      remote_addr: str | None = None, meta: Mapping[str, Any] | None = None,
                      alert_office: str = "") -> tuple[int, dict[int, str]]:
        """Upsert an office's device rows and their health (one transaction); returns (devices stored,
        index -> reason of the devices refused because their serial is bound to another office).

        A device carrying ``office_code`` (a tier's report, checked against its token by gateway.wire) is
        stored under that office; the others under ``office_code``, the sender's.
        """
        now = utcnow()
        d, h = s.devices.c, s.device_health.c
        refused: dict[int, str] = {}
        sender = office_code
        with self._write() as conn:
            claims: dict[str, str] = {}
            for dev in devices:
                if dev.get("serial"):
                    claims.setdefault(dev["serial"], dev.get("office_code") or sender)
            owners = self._bind_serials(conn, claims, f"gateway:{gateway}", now)
            for i, dev in enumerate(devices):
                office_code = dev.get("office_code") or sender
                owner = owners.get(dev.get("serial") or "", office_code)
                if owner != office_code:
                    refused[i] = _bound_elsewhere(dev["serial"], owner)
                    self._alert_foreign_serial(conn, dev["serial"], owner, office_code, gateway, now, alert_office,
                                               what=f"a health report (device {dev['device_id']})")
                    continue
                values = {k: dev.get(k) for k in _DEVICE_FIELDS if k in dev}
                values["updated_at"] = now
                pk = conn.execute(select(d.pk).where(d.office_code == office_code,
                                                     d.device_id == dev["device_id"])).scalar()
                if pk is None:
                    defaults = {"name": dev["device_id"], "location": "", "address": "", "port": 4370,
                                "transport": "tcp", "enabled": True}
                    pk = conn.execute(s.devices.insert().values(
                        office_code=office_code, device_id=dev["device_id"], created_at=now,
                        **{**defaults, **{k: v for k, v in values.items() if v is not None or k not in defaults}})
                        .returning(d.pk)).scalar_one()
                else:
                    conn.execute(update(s.devices).where(d.pk == pk).values(
                        **{k: v for k, v in values.items() if v is not None or k not in _DEVICE_REQUIRED}))
                health = dict(dev.get("health") or {})
                hv = {
                    "state": health.get("state") or "unknown",
                    "state_since": health.get("state_since") or now,
                    "consecutive_failures": int(health.get("consecutive_failures") or 0),
                    "last_ok_at": dev.get("last_ok_at"), "last_failure_at": health.get("last_failure_at"),
                    "last_error_kind": health.get("last_error_kind"), "last_error": health.get("last_error"),
                    "problems": json.dumps(health.get("problems") or {}),
                    "muted_until": health.get("muted_until"), "mute_reason": health.get("mute_reason"),
                    "updated_at": now,
                }
                previous = conn.execute(select(h.state, h.problems).where(h.device_pk == pk)).first()
                record_health_changes(conn, office_code, dev["device_id"], previous, hv, now)  # the history
                if previous is None:
                    conn.execute(s.device_health.insert().values(device_pk=pk, **hv))
                else:
                    conn.execute(update(s.device_health).where(h.device_pk == pk).values(**hv))
            self._touch_gateway(conn, gateway, sender, now, remote_addr, meta, health=True)
        return len(devices) - len(refused), refused

    @staticmethod
    def _touch_gateway(conn: Connection, name: str, office_code: str, now: datetime, remote_addr: str | None,
                       meta: Mapping[str, Any] | None, *, batch: bool = False, health: bool = False,
                       received: int = 0) -> None:
        g = s.gateways.c
        meta = meta or {}
        values: dict[str, Any] = {"office_code": office_code, "last_seen_at": now, "remote_addr": remote_addr}
        for key, limit in (("hostname", 200), ("version", 50), ("office_name", 200)):
            if isinstance(meta.get(key), str):
                values[key] = meta[key][:limit]
        for key, kind in (("outbox_depth", int), ("oldest_unforwarded_s", float)):
            if key in meta and (meta[key] is None or isinstance(meta[key], int | float)):
                values[key] = kind(meta[key]) if meta[key] is not None else None
        if batch:
            values["last_batch_at"] = now
        if health:
            values["last_health_at"] = now
        # One upsert (one round trip per request): a new gateway row, or this contact added to its row.
        dialect = pg_dialect if conn.dialect.name == "postgresql" else sqlite_dialect
        stmt = dialect.insert(s.gateways).values(name=name, first_seen_at=now, punches_received=received, **values)
        conn.execute(stmt.on_conflict_do_update(
            index_elements=["name"], set_={**values, "punches_received": g.punches_received + received}))

    def prune_receipts(self, older_than: datetime) -> int:
        """Forget batch receipts older than this (a replay after that is still idempotent, just recomputed)."""
        with self._write() as conn:
            return int(conn.execute(delete(s.ingest_batches)
                                    .where(s.ingest_batches.c.received_at < older_than)).rowcount or 0)

    # -- pull ------------------------------------------------------------------------------------
    def feed(self, query: PunchQuery, after: int, limit: int) -> tuple[list[dict[str, Any]], int]:
        """Up to ``limit`` punches with feed position > ``after`` (oldest first) and the new position."""
        p = s.punches.c
        cols = [p.id, *(p[k] for k in FEED_COLUMNS)]
        with self.engine.connect() as conn:
            if conn.dialect.name == "postgresql":
                # The feed-order guard (module docstring): no punch id is in flight while the snapshot is taken.
                conn.execute(_FEED_READ_LOCK)
            rows = conn.execute(where_punches(select(*cols).where(p.id > after), query)
                                .order_by(p.id).limit(limit)).mappings().all()
        return [_row(r) for r in rows], (rows[-1]["id"] if rows else after)

    def iter_punches(self, query: PunchQuery, chunk: int = 5000) -> Iterator[dict[str, Any]]:
        """Every matching punch in feed order (chunked keyset paging: constant memory), at most query.limit."""
        after, left = 0, query.limit
        while left is None or left > 0:
            page = chunk if left is None else min(chunk, left)
            rows, after_next = self.feed(query, after, page)
            yield from rows
            if left is not None:
                left -= len(rows)
            if len(rows) < page:
                return
            after = after_next

    def devices(self, offices: OfficeScope | frozenset[str] | None = None, office: str | None = None
                ) -> list[dict[str, Any]]:
        """Every known device (regency-wide or scoped) with its health."""
        d, h = s.devices.c, s.device_health.c
        q = (select(d.office_code, d.device_id, d.name, d.location, d.address, d.serial, d.firmware, d.platform,
                    d.enabled, d.last_seen_at, d.last_ok_at, d.last_record_count, d.last_user_count, d.records_cap,
                    d.users_cap, d.last_punch_at, d.clock_skew_s, h.state, h.state_since, h.consecutive_failures,
                    h.last_error_kind, h.problems, h.updated_at.label("health_updated_at"))
             .select_from(s.devices.outerjoin(s.device_health, h.device_pk == d.pk)))
        if offices is not None:
            q = q.where(in_scope(d.office_code, offices))
        if office:
            q = q.where(d.office_code == office)
        with self.engine.connect() as conn:
            rows = conn.execute(q.order_by(d.office_code, d.device_id)).mappings().all()
        out = []
        for r in rows:
            item = dict(r)
            try:
                item["problems"] = json.loads(r["problems"]) if r["problems"] else {}
            except ValueError:
                item["problems"] = {}
            item["state"] = r["state"] or "unknown"
            item["consecutive_failures"] = r["consecutive_failures"] or 0
            out.append(item)
        return out

    def gateways(self, offices: OfficeScope | frozenset[str] | None = None, *, silent_after_s: float | None = None,
                 now: datetime | None = None) -> list[dict[str, Any]]:
        """The office gateways that reported here, with their last contact and backlog.

        With ``silent_after_s`` every row also gets ``silent``: its last contact is older than that.
        """
        g = s.gateways.c
        # The alert bookkeeping stays internal; callers get the plain ``silent`` flag instead.
        q = select(*(c for c in s.gateways.c if c.name not in ("silent_since", "silent_notified_at")))
        if offices is not None:
            q = q.where(in_scope(g.office_code, offices))
        with self.engine.connect() as conn:
            rows = [dict(r) for r in conn.execute(q.order_by(g.office_code, g.name)).mappings()]
        if silent_after_s is not None:
            now = now or utcnow()
            for r in rows:
                r["silent"] = (now - r["last_seen_at"]).total_seconds() > silent_after_s
        return rows

    # -- silent gateways -------------------------------------------------------------------------
    def silent_watch_rows(self) -> list[dict[str, Any]]:
        """Every gateway with its last contact, what it last reported, and its silent-alert state."""
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(select(s.gateways).order_by(s.gateways.c.name)).mappings()]

    def open_silent(self, name: str, *, last_seen_at: datetime, now: datetime, alert: Mapping[str, Any]) -> bool:
        """Open the gateway's silent alert (state + alert row in ONE transaction) unless it is already open
        or the gateway reported meanwhile; True when this call opened it."""
        g = s.gateways.c
        with self._write() as conn:
            done = conn.execute(update(s.gateways).where(
                g.name == name, g.silent_since.is_(None), g.last_seen_at == last_seen_at)
                .values(silent_since=last_seen_at, silent_notified_at=now)).rowcount
            if done == 1:
                insert_alert(conn, **alert)
        return done == 1

    def remind_silent(self, name: str, *, notified_at: datetime | None, now: datetime,
                      alert: Mapping[str, Any]) -> bool:
        """Record a reminder for an open silent alert (exactly once per reminder period, across processes)."""
        g = s.gateways.c
        cond = g.silent_notified_at.is_(None) if notified_at is None else g.silent_notified_at == notified_at
        with self._write() as conn:
            done = conn.execute(update(s.gateways).where(g.name == name, g.silent_since.is_not(None), cond)
                                .values(silent_notified_at=now)).rowcount
            if done == 1:
                insert_alert(conn, **alert)
        return done == 1

    def close_silent(self, name: str, *, silent_since: datetime, alert: Mapping[str, Any]) -> bool:
        """Close an open silent alert (state + end alert row in one transaction); True when this call closed it."""
        g = s.gateways.c
        with self._write() as conn:
            done = conn.execute(update(s.gateways).where(g.name == name, g.silent_since == silent_since)
                                .values(silent_since=None, silent_notified_at=None)).rowcount
            if done == 1:
                insert_alert(conn, **alert)
        return done == 1

    def get_fact(self, key: str) -> str | None:
        """A value from the kv table."""
        with self.engine.connect() as conn:
            return conn.execute(select(s.kv.c.value).where(s.kv.c.key == key)).scalar()

    def set_fact(self, key: str, value: str) -> None:
        """Upsert a value in the kv table."""
        now = utcnow()
        with self._write() as conn:
            if conn.execute(update(s.kv).where(s.kv.c.key == key).values(value=value, updated_at=now)).rowcount:
                return
            conn.execute(insert_ignore(conn, s.kv, ("key",)), {"key": key, "value": value, "updated_at": now})


#: Device fields a gateway may report (everything else in devices is the centre's own bookkeeping).
_DEVICE_FIELDS = ("name", "location", "address", "port", "transport", "serial", "firmware", "platform",
                  "device_name", "mac", "enabled", "last_seen_at", "last_ok_at", "last_full_read_at",
                  "last_record_count", "last_user_count", "records_cap", "users_cap", "last_punch_at",
                  "last_new_punch_at", "clock_skew_s")
_DEVICE_REQUIRED = frozenset({"name", "location", "address", "port", "transport", "enabled"})

__all__ = ["FEED_COLUMNS", "FEED_LOCK_KEY", "BatchConflict", "CentralStore", "PunchQuery", "decode_cursor",
           "encode_cursor"]

"""Monthly partitions of ``punches`` on PostgreSQL: list them, create months ahead, archive and drop old ones.

    gateway.retention.PartitionMaintenance (daemon, housekeeping pool) --maintain()--> here --> PostgreSQL
    `fpgw central partitions list|maintain|archive|verify|restore` (gateway.cli.partitions) --> here

Migration 0011_partitions made ``punches`` PARTITIONED BY RANGE (device_time) with one partition per month in
schema ``fpgw_partitions`` and a DEFAULT partition. Nothing here is needed for an insert to succeed (a month
without its partition lands in the default one); maintenance keeps the default small, because creating a
partition scans it. SQLite has no partitions: every function here says so (NotPartitioned) instead of acting.

Never losing a punch: a month is dropped only after its rows were written to a compressed CSV file, the file
was synced, read back and counted, its SHA-256 recorded in a manifest, and the count equals the partition's
count taken under a lock that keeps writers out of that partition until the drop commits. Any failure
rolls the drop back (ArchiveFailed) and leaves the partition as it was. A month holding punches an office
gateway has not forwarded yet (outbox rows) is refused too. Design and reasoning: docs/scale-out.md.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import structlog
from sqlalchemy import Engine, text
from sqlalchemy.engine import Connection

from gateway.store.db import writer
from gateway.store.punches import PUNCH_KEY

log = structlog.get_logger(__name__)

#: Schema holding the partitions (keeps them out of the application schema the migrations compare).
SCHEMA = "fpgw_partitions"
#: The partition that takes every row no month partition covers.
DEFAULT_PARTITION = "punches_default"
#: Months created ahead of the current one when the config does not say (migration 0011 uses the same).
MONTHS_AHEAD = 3
#: How long the drop may wait for a lock before it gives up (and rolls back) instead of stalling ingest.
LOCK_TIMEOUT = "30s"
#: ... and the exclusive locks on punches (the archive's final DETACH, a new month's move and ATTACH): everything
#: queues behind such a lock while it waits.
DETACH_LOCK_TIMEOUT = "5s"
#: pg_advisory_xact_lock key held by whoever changes the partitions (the daemon's job and `fpgw central partitions`
#: may run at once: the second waits, then finds the work done).
MAINTENANCE_LOCK_KEY = 0x46505750
_MONTH_NAME = re.compile(r"^punches_(\d{4})_(\d{2})$")
ARCHIVE_FORMAT = "fpgw-punches-archive/1"


class NotPartitioned(Exception):
    """The database has no partitioned punches table (SQLite, or PostgreSQL before migration 0011)."""


class ArchiveFailed(Exception):
    """A month could not be archived and verified; it was NOT dropped (the message says why)."""


@dataclass(frozen=True)
class Partition:
    """One partition of ``punches``."""

    name: str
    #: First day of its month; None for the default partition.
    month: date | None
    #: Row count: PostgreSQL's estimate (pg_class.reltuples, -1 = never analysed) unless counted exactly.
    rows: int
    bytes: int
    exact: bool = False


@dataclass
class MaintenanceResult:
    """What one maintenance run did."""

    created: list[str] = field(default_factory=list)
    #: partition name -> rows moved into it from the default partition.
    moved: dict[str, int] = field(default_factory=dict)
    archived: list[ArchiveResult] = field(default_factory=list)
    #: partition name -> why it was not archived (it stays).
    refused: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ArchiveResult:
    """One archived (and dropped) month."""

    partition: str
    rows: int
    file: Path
    manifest: Path
    sha256: str
    dropped: bool


def add_months(month: date, n: int) -> date:
    """The first day of the month ``n`` months after ``month``'s (n may be negative)."""
    total = month.year * 12 + month.month - 1 + n
    return date(total // 12, total % 12 + 1, 1)


def month_bounds(month: date) -> tuple[str, str]:
    """The device_time range [low, high) of a month partition."""
    return f"{month:%Y-%m}-01 00:00:00", f"{add_months(month, 1):%Y-%m}-01 00:00:00"


def partition_name(month: date) -> str:
    """``punches_YYYY_MM``."""
    return f"punches_{month:%Y_%m}"


def is_partitioned(engine: Engine) -> bool:
    """True when ``punches`` is a partitioned table (PostgreSQL after migration 0011)."""
    if engine.dialect.name != "postgresql":
        return False
    with engine.connect() as conn:
        kind = conn.execute(text("SELECT relkind FROM pg_class WHERE oid = to_regclass('punches')")).scalar()
    return bool(kind == "p")


def _require(engine: Engine) -> None:
    if not is_partitioned(engine):
        raise NotPartitioned("punches is not partitioned here: partitions exist only on PostgreSQL (migration "
                             "0011_partitions); a SQLite database keeps one table")


def list_partitions(engine: Engine, *, exact: bool = False) -> list[Partition]:
    """Every partition, months in order then the default one; ``exact`` counts rows (reads every partition)."""
    _require(engine)
    with engine.connect() as conn:
        rows = conn.execute(text(
            "SELECT c.relname, c.reltuples::bigint, pg_total_relation_size(c.oid) FROM pg_inherits i "
            "JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = 'punches'::regclass")).all()
        out = []
        for name, estimate, size in rows:
            count = conn.execute(text(f"SELECT count(*) FROM {SCHEMA}.{name}")).scalar_one() if exact else estimate
            out.append(Partition(name=name, month=_month_of(name), rows=int(count), bytes=int(size), exact=exact))
    return sorted(out, key=lambda p: (p.month is None, p.month or date.min))


def _month_of(name: str) -> date | None:
    m = _MONTH_NAME.match(name)
    return date(int(m[1]), int(m[2]), 1) if m else None


def _existing_months(conn: Connection) -> set[date]:
    names = conn.execute(text("SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                              "WHERE i.inhparent = 'punches'::regclass")).scalars()
    return {m for m in (_month_of(n) for n in names) if m is not None}


def ensure_partitions(engine: Engine, *, today: date, months_ahead: int = MONTHS_AHEAD,
                      result: MaintenanceResult | None = None) -> MaintenanceResult:
    """Create the partitions of this month and ``months_ahead`` after it, and of every month the default
    partition holds rows for (up to that horizon; a clock far in the future stays in the default), moving
    those rows into it. One transaction per month."""
    _require(engine)
    result = result or MaintenanceResult()
    this_month = today.replace(day=1)
    horizon = add_months(this_month, months_ahead)
    with engine.connect() as conn:
        existing = _existing_months(conn)
        in_default = conn.execute(text(
            f"SELECT DISTINCT left(device_time, 7) FROM {SCHEMA}.{DEFAULT_PARTITION} "
            r"WHERE device_time ~ '^[0-9]{4}-(0[1-9]|1[0-2])-'")).scalars().all()
    wanted = {add_months(this_month, n) for n in range(months_ahead + 1)}
    wanted |= {date(int(m[:4]), int(m[5:7]), 1) for m in in_default}
    for month in sorted(m for m in wanted - existing if m <= horizon):
        moved = _create_month(engine, month)
        result.created.append(partition_name(month))
        if moved:
            result.moved[partition_name(month)] = moved
        log.info("punch partition created", partition=partition_name(month), moved_from_default=moved)
    return result


def _create_month(engine: Engine, month: date) -> int:
    """Create one month's partition; rows the default partition holds for it move in, in the same transaction.

    Why not CREATE TABLE ... PARTITION OF: that fails while the default partition holds rows of the month. A
    standalone table, filled, then ATTACHed, can take the rows the default partition already has.

    Why ``punches`` itself is locked (ACCESS EXCLUSIVE, for the moment of the move): an INSERT chooses its
    partition from the partition layout it planned with. Locking only the default partition made an insert
    that had already chosen it wait, then go on after the ATTACH into a default partition that no longer
    takes its month ("new row for relation punches_default violates partition constraint": a failed ingest,
    measured with benchmarks/bench_forward.py while the job ran). An insert locks ``punches`` before it plans,
    so with the parent locked it waits and then plans with the new partition. Any weaker lock on the parent
    also lets a transaction that read punches (it holds ACCESS SHARE on the default partition) deadlock
    against the ATTACH. The lock is asked for with a short timeout, so ingest and reads queue behind it for
    seconds at most; when it cannot be had the month is made at the next run (rows wait in the default
    partition meanwhile, nothing is lost).
    """
    name, (low, high) = partition_name(month), month_bounds(month)
    in_month = "device_time >= :low AND device_time < :high"
    with writer(engine).begin() as conn:
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": MAINTENANCE_LOCK_KEY})
        if month in _existing_months(conn):
            return 0  # another run made it meanwhile
        conn.execute(text(f"SET LOCAL lock_timeout = '{DETACH_LOCK_TIMEOUT}'"))
        conn.execute(text("LOCK TABLE punches IN ACCESS EXCLUSIVE MODE"))
        conn.execute(text(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))
        conn.execute(text(f"CREATE TABLE {SCHEMA}.{name} (LIKE punches INCLUDING DEFAULTS)"))
        moved = conn.execute(text(
            f"WITH gone AS (DELETE FROM {SCHEMA}.{DEFAULT_PARTITION} WHERE {in_month} RETURNING *) "
            f"INSERT INTO {SCHEMA}.{name} SELECT * FROM gone"), {"low": low, "high": high}).rowcount
        conn.execute(text(f"ALTER TABLE punches ATTACH PARTITION {SCHEMA}.{name} "
                          f"FOR VALUES FROM ('{low}') TO ('{high}')"))
    return int(moved or 0)


# -- archive ------------------------------------------------------------------------------------------------

def archive_paths(directory: Path, name: str) -> tuple[Path, Path]:
    """(data file, manifest) for a new archive of a partition: ``punches_YYYY_MM.csv.gz`` + ``.manifest.json``, or
    ``punches_YYYY_MM.2...`` and so on when the month was archived before (late punches stored after its drop give
    it a partition again): an archive is never overwritten, since once its month is dropped it is the only copy."""
    for n in range(1, 10_000):
        stem = name if n == 1 else f"{name}.{n}"
        data, manifest = directory / f"{stem}.csv.gz", directory / f"{stem}.manifest.json"
        if not (data.exists() or manifest.exists() or data.with_name(data.name + ".part").exists()):
            return data, manifest
    raise ArchiveFailed(f"{directory}: too many archives of {name}")


def _columns(conn: Connection) -> list[str]:
    return list(conn.execute(text(
        "SELECT attname FROM pg_attribute WHERE attrelid = 'punches'::regclass AND attnum > 0 AND NOT attisdropped "
        "ORDER BY attnum")).scalars())


def _sync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def count_archive(path: Path) -> tuple[int, str]:
    """(data rows, SHA-256 of the file) of an archive file, read back from disk (the header row not counted)."""
    digest = hashlib.sha256()
    with path.open("rb") as raw:
        for chunk in iter(lambda: raw.read(1 << 20), b""):
            digest.update(chunk)
    with gzip.open(path, "rt", encoding="utf-8", newline="") as f:
        rows = sum(1 for _ in csv.reader(f)) - 1
    return max(rows, 0), digest.hexdigest()


def verify_archive(manifest_path: Path) -> dict[str, Any]:
    """The manifest, after checking its data file's SHA-256 and row count against it; ArchiveFailed if not."""
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        data = manifest_path.parent / manifest["file"]
        rows, digest = count_archive(data)
    except (OSError, ValueError, KeyError, EOFError, csv.Error) as exc:
        raise ArchiveFailed(f"{manifest_path}: cannot read the archive ({exc})") from None
    if digest != manifest.get("sha256"):
        raise ArchiveFailed(f"{data}: SHA-256 {digest} differs from the manifest's {manifest.get('sha256')}")
    if rows != manifest.get("rows"):
        raise ArchiveFailed(f"{data}: holds {rows} rows, the manifest says {manifest.get('rows')}")
    return dict(manifest)


def archive_partition(engine: Engine, name: str, directory: Path, *, drop: bool = True) -> ArchiveResult:
    """Export one month's partition to ``directory`` (CSV.gz + manifest), verify it, then detach and drop it.

    One transaction: the partition is locked SHARE (readers go on, writers into this month wait), counted,
    exported with COPY, the file synced and read back; only when its row count equals the partition's is the
    partition detached and dropped, and the transaction committed. Refused (ArchiveFailed, nothing dropped) for
    the default partition, for a month holding punches still in the outbox, and on any error.
    """
    _require(engine)
    if _month_of(name) is None:
        raise ArchiveFailed(f"{name!r} is not a month partition (punches_YYYY_MM); the default partition is never "
                            "archived (maintenance moves its rows into months)")
    data, manifest_path = archive_paths(directory, name)
    part_data = data.with_name(data.name + ".part")
    part_manifest = manifest_path.with_name(manifest_path.name + ".part")
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with writer(engine).begin() as conn:
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": MAINTENANCE_LOCK_KEY})
            conn.execute(text(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))
            if name not in {p for p in conn.execute(text(
                    "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                    "WHERE i.inhparent = 'punches'::regclass")).scalars()}:
                raise ArchiveFailed(f"no partition {name!r}")
            table = f"{SCHEMA}.{name}"
            conn.execute(text(f"LOCK TABLE {table} IN SHARE MODE"))
            rows, low_id, high_id = conn.execute(text(f"SELECT count(*), min(id), max(id) FROM {table}")).one()
            waiting = conn.execute(text(f"SELECT count(*) FROM outbox o JOIN {table} p ON p.id = o.punch_id")
                                   ).scalar_one()
            if waiting:
                raise ArchiveFailed(f"{name}: {waiting} of its punches are still in the outbox (not yet forwarded "
                                    "upstream); archive it once they are")
            columns = _columns(conn)
            _export(conn, table, columns, part_data)
            file_rows, digest = count_archive(part_data)
            if file_rows != rows:
                raise ArchiveFailed(f"{name}: the archive file holds {file_rows} rows, the partition {rows}")
            month = _month_of(name)
            assert month is not None
            low, high = month_bounds(month)
            manifest = {"format": ARCHIVE_FORMAT, "table": "punches", "partition": name, "file": data.name,
                        "device_time_from": low, "device_time_to": high, "rows": rows, "min_id": low_id,
                        "max_id": high_id, "sha256": digest, "columns": columns, "csv": "header, RFC 4180",
                        "unique_key": list(PUNCH_KEY), "created_at": datetime.now(UTC).isoformat()}
            with part_manifest.open("w", encoding="utf-8") as f:
                json.dump(manifest, f, indent=1)
                f.flush()
                os.fsync(f.fileno())
            _rename_new(part_data, data)
            _rename_new(part_manifest, manifest_path)
            _sync_dir(directory)
            verify_archive(manifest_path)  # what is on disk now, not what was written
            if drop:
                # DETACH locks punches exclusively for an instant: wait little for running statements (new ones
                # queue behind it), and give up (nothing dropped, the next run retries) rather than stall ingest.
                conn.execute(text(f"SET LOCAL lock_timeout = '{DETACH_LOCK_TIMEOUT}'"))
                conn.execute(text(f"ALTER TABLE punches DETACH PARTITION {table}"))
                conn.execute(text(f"DROP TABLE {table}"))
    except ArchiveFailed:
        _discard(part_data, part_manifest)
        raise
    except Exception as exc:
        _discard(part_data, part_manifest)
        raise ArchiveFailed(f"{name}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from exc
    log.info("punch partition archived", partition=name, rows=rows, file=str(data), dropped=drop)
    return ArchiveResult(partition=name, rows=int(rows), file=data, manifest=manifest_path, sha256=digest, dropped=drop)


def _rename_new(src: Path, dst: Path) -> None:
    """Rename ``src`` to ``dst``, failing (FileExistsError) rather than replacing an existing ``dst``."""
    os.link(src, dst)
    src.unlink()


def _discard(*paths: Path) -> None:
    for p in paths:
        try:
            p.unlink(missing_ok=True)
        except OSError:
            pass


def _export(conn: Connection, table: str, columns: list[str], path: Path) -> None:
    """COPY the partition (in id order) as CSV with a header into a gzip file, synced to disk."""
    driver = conn.connection.driver_connection  # psycopg 3, inside the caller's transaction
    assert driver is not None
    sql = f"COPY (SELECT {', '.join(columns)} FROM {table} ORDER BY id) TO STDOUT WITH (FORMAT csv, HEADER)"
    with path.open("wb") as raw:
        with gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=6) as gz, driver.cursor() as cur, \
                cur.copy(sql) as copy:
            for chunk in copy:
                gz.write(bytes(chunk))
        raw.flush()
        os.fsync(raw.fileno())


def archivable(engine: Engine, *, today: date, after_months: int) -> list[str]:
    """Month partitions whose whole month ended at least ``after_months`` months before this month began."""
    cutoff = add_months(today.replace(day=1), -after_months)
    return [p.name for p in list_partitions(engine) if p.month is not None and add_months(p.month, 1) <= cutoff]


def maintain(engine: Engine, *, today: date, months_ahead: int = MONTHS_AHEAD, archive_after_months: int = 0,
             archive_dir: Path | None = None) -> MaintenanceResult:
    """One maintenance run: partitions ahead (and out of the default), then, when ``archive_after_months`` > 0,
    archive and drop the months older than that. A month that cannot be archived stays (``refused``)."""
    result = ensure_partitions(engine, today=today, months_ahead=months_ahead)
    if archive_after_months > 0:
        if archive_dir is None:
            raise ValueError("archive_after_months is set but no archive_dir")
        for name in archivable(engine, today=today, after_months=archive_after_months):
            try:
                result.archived.append(archive_partition(engine, name, archive_dir))
            except ArchiveFailed as exc:
                result.refused[name] = str(exc)
                log.warning("punch partition kept: archive failed", partition=name, reason=str(exc))
    return result


# -- reading an archive back --------------------------------------------------------------------------------

def iter_archive(manifest_path: Path) -> Iterator[dict[str, str]]:
    """The rows of a verified archive as text dicts (column -> CSV text; "" for NULL)."""
    manifest = verify_archive(manifest_path)
    with gzip.open(manifest_path.parent / manifest["file"], "rt", encoding="utf-8", newline="") as f:
        yield from csv.DictReader(f)


def restore_archive(engine: Engine, manifest_path: Path) -> tuple[int, int]:
    """Load a verified archive back into ``punches`` (same ids; rows already there are skipped by the punch key);
    returns (rows in the archive, rows inserted). The rows land in their month's partition, or in the default
    one until maintenance gives the month a partition again."""
    _require(engine)
    manifest = verify_archive(manifest_path)
    columns = [str(c) for c in manifest["columns"]]
    data = manifest_path.parent / manifest["file"]
    with writer(engine).begin() as conn:
        known = set(_columns(conn))
        if set(columns) - known:
            raise ArchiveFailed(f"{data}: columns {sorted(set(columns) - known)} are not in punches")
        names = ", ".join(columns)
        conn.execute(text("CREATE TEMP TABLE fpgw_restore (LIKE punches INCLUDING DEFAULTS) ON COMMIT DROP"))
        driver = conn.connection.driver_connection
        assert driver is not None
        with driver.cursor() as cur, gzip.open(data, "rb") as f, \
                cur.copy(f"COPY fpgw_restore ({names}) FROM STDIN WITH (FORMAT csv, HEADER)") as copy:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                copy.write(chunk)
        inserted = conn.execute(text(
            f"INSERT INTO punches ({names}) SELECT {names} FROM fpgw_restore ORDER BY id "
            f"ON CONFLICT ({', '.join(PUNCH_KEY)}) DO NOTHING")).rowcount
    return int(manifest["rows"]), int(inserted or 0)


def read_manifest(manifest_path: Path) -> dict[str, Any]:
    """The manifest as stored (not verified)."""
    return dict(json.loads(manifest_path.read_text(encoding="utf-8")))


__all__ = ["DEFAULT_PARTITION", "MONTHS_AHEAD", "SCHEMA", "ArchiveFailed", "ArchiveResult", "MaintenanceResult",
           "NotPartitioned", "Partition", "archivable", "archive_partition", "ensure_partitions", "is_partitioned",
           "iter_archive", "list_partitions", "maintain", "month_bounds", "partition_name", "restore_archive",
           "verify_archive"]

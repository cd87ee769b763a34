"""Monthly partitions of punches on PostgreSQL (migration 0011_partitions, gateway.store.partitions): inserts into
any month (one without a partition lands in the default one), maintenance moving default rows into a new month,
archive + drop round trip (the file holds exactly the rows and loads back), the feed's order across partitions,
existing rows surviving the migration, and retention refusing to drop a month whose archive failed."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from sqlalchemy import Engine, text

from gateway.config import DeviceConfig
from gateway.models import Punch
from gateway.store import partitions as parts
from gateway.store import schema as s
from gateway.store.central import CentralStore, PunchQuery
from gateway.store.db import _alembic_config, create_db_engine, upgrade, writer
from gateway.store.punches import PUNCH_KEY, Store, insert_ignore, insert_punches, punch_row
from tests.support.punches import make_punch, store_punches

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(120)]

TODAY = date(2026, 12, 2)


@pytest.fixture
def engine(pg_url: str) -> Iterator[Engine]:
    e = create_db_engine(pg_url, pool_size=2)
    upgrade(e)
    yield e
    e.dispose()


def at(month: date, user: str, day: int = 3, office: str = "1801.01") -> Punch:
    return make_punch(user, datetime(month.year, month.month, day, 7, 30), office_code=office, employee_id=f"NIP{user}")


def ingest(engine: Engine, punches: list[Punch], batch: str, office: str = "1801.01") -> dict[str, Any]:
    answer, _ = CentralStore(engine).ingest_punches(gateway=f"gw-{office}", office_code=office, batch_id=batch,
                                                    digest=batch, punches=punches, rejected={})
    return answer


def where_rows(engine: Engine) -> dict[str, str]:
    """device_user_id -> the partition holding it."""
    with engine.connect() as conn:
        return {r[0]: r[1] for r in conn.execute(text(
            "SELECT device_user_id, tableoid::regclass::text FROM punches"))}


def test_punches_are_partitioned_and_any_month_takes_inserts_even_one_without_its_partition(engine: Engine) -> None:
    assert parts.is_partitioned(engine)
    months = {p.month for p in parts.list_partitions(engine)}
    this_month = datetime.now(UTC).date().replace(day=1)
    assert {parts.add_months(this_month, n) for n in range(parts.MONTHS_AHEAD + 1)} <= months
    far = date(2031, 5, 1)  # no partition: the default one takes it
    assert far not in months
    answer = ingest(engine, [at(this_month, "now"), at(far, "far"), at(date(2000, 1, 1), "rtc")], "b1")
    assert answer["new"] == 3
    placed = where_rows(engine)
    assert placed["now"] == f"{parts.SCHEMA}.{parts.partition_name(this_month)}"
    assert placed["far"] == placed["rtc"] == f"{parts.SCHEMA}.{parts.DEFAULT_PARTITION}"
    # ON CONFLICT still deduplicates across the partitioned table (same batch again under another id).
    assert ingest(engine, [at(far, "far"), at(this_month, "now")], "b2")["new"] == 0


def test_maintenance_creates_months_ahead_and_moves_default_rows_into_their_new_month(engine: Engine) -> None:
    target = parts.add_months(TODAY.replace(day=1), 6)  # beyond the migration's horizon
    ingest(engine, [at(target, "a"), at(target, "b", day=20), at(date(2099, 1, 1), "clock")], "b1")
    with engine.connect() as conn:
        before = {r[0]: r[1] for r in conn.execute(text("SELECT device_user_id, id FROM punches"))}
    result = parts.ensure_partitions(engine, today=TODAY, months_ahead=6)
    assert parts.partition_name(target) in result.created
    assert result.moved == {parts.partition_name(target): 2}
    placed = where_rows(engine)
    assert placed["a"] == placed["b"] == f"{parts.SCHEMA}.{parts.partition_name(target)}"
    assert placed["clock"].endswith(parts.DEFAULT_PARTITION)  # 2099 is past the horizon: stays in default
    with engine.connect() as conn:
        after = {r[0]: r[1] for r in conn.execute(text("SELECT device_user_id, id FROM punches"))}
    assert after == before  # same rows, same ids (feed positions)
    # A second run has nothing to do, and the new month keeps deduplicating.
    again = parts.ensure_partitions(engine, today=TODAY, months_ahead=6)
    assert again.created == [] and again.moved == {}
    assert ingest(engine, [at(target, "a")], "b2")["new"] == 0


def test_the_feed_pages_in_id_order_across_partitions(engine: Engine) -> None:
    months = [date(2026, m, 1) for m in (9, 12, 10, 11)] + [date(2031, 1, 1)]  # ids do not follow months
    parts.ensure_partitions(engine, today=date(2026, 9, 1), months_ahead=3)
    sent = []
    for i in range(40):
        p = at(months[i % len(months)], f"u{i}", day=1 + i % 27)
        sent.append(p.device_user_id)
        ingest(engine, [p], f"b{i}")
    store = CentralStore(engine)
    seen: list[str] = []
    positions: list[int] = []
    after = 0
    while True:
        rows, after_next = store.feed(PunchQuery(), after, 7)
        if not rows:
            break
        seen += [r["device_user_id"] for r in rows]
        positions.append(after_next)
        after = after_next
    assert seen == sent  # every punch once, in the order it was stored
    assert positions == sorted(positions)
    assert len({p for p in where_rows(engine).values()}) == len(months)  # really spread over partitions


def _old_month_with_rows(engine: Engine) -> tuple[str, list[Punch]]:
    month = date(2024, 3, 1)
    punches = [at(month, f"u{i}", day=1 + i) for i in range(25)]
    punches.append(at(month, "quote,\"and\nnewline", day=28))  # CSV quoting survives the round trip
    ingest(engine, punches, "old")
    parts.ensure_partitions(engine, today=TODAY)
    return parts.partition_name(month), punches


def _table_rows(engine: Engine, where: str = "") -> list[tuple[Any, ...]]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(text(f"SELECT * FROM punches {where} ORDER BY id"))]


def test_archive_writes_exactly_the_rows_then_drops_and_the_file_loads_back(engine: Engine, tmp_path: Path) -> None:
    name, punches = _old_month_with_rows(engine)
    ingest(engine, [at(date(2026, 11, 1), "recent")], "recent")
    expected = _table_rows(engine, "WHERE device_time < '2024-04'")
    assert len(expected) == len(punches)
    assert name in parts.archivable(engine, today=TODAY, after_months=24)
    assert parts.partition_name(date(2026, 11, 1)) not in parts.archivable(engine, today=TODAY, after_months=24)

    result = parts.archive_partition(engine, name, tmp_path / "archive")
    assert result.rows == len(punches) and result.dropped
    assert name not in {p.name for p in parts.list_partitions(engine)}
    assert _table_rows(engine, "WHERE device_time < '2024-04'") == []
    assert [r["device_user_id"] for r in CentralStore(engine).iter_punches(PunchQuery())] == ["recent"]
    manifest = parts.verify_archive(result.manifest)
    assert manifest["rows"] == len(punches) and manifest["partition"] == name
    assert sorted(r["device_user_id"] for r in parts.iter_archive(result.manifest)) == sorted(
        p.device_user_id for p in punches)

    assert parts.restore_archive(engine, result.manifest) == (len(punches), len(punches))
    assert _table_rows(engine, "WHERE device_time < '2024-04'") == expected  # every column, same ids
    assert parts.restore_archive(engine, result.manifest) == (len(punches), 0)  # idempotent


def test_a_month_archived_twice_keeps_both_archives(engine: Engine, tmp_path: Path) -> None:
    name, punches = _old_month_with_rows(engine)
    first = parts.archive_partition(engine, name, tmp_path)
    ingest(engine, [at(date(2024, 3, 1), "late", day=30)], "late")  # a gateway back from a long outage
    parts.ensure_partitions(engine, today=TODAY)
    second = parts.archive_partition(engine, name, tmp_path)
    assert first.file.name == f"{name}.csv.gz" and second.file.name == f"{name}.2.csv.gz"
    assert parts.verify_archive(first.manifest)["rows"] == len(punches)
    assert [r["device_user_id"] for r in parts.iter_archive(second.manifest)] == ["late"]


def test_a_damaged_archive_file_fails_verification(engine: Engine, tmp_path: Path) -> None:
    name, _ = _old_month_with_rows(engine)
    result = parts.archive_partition(engine, name, tmp_path)
    with gzip.open(result.file, "ab") as f:
        f.write(b"1,extra,row\n")
    with pytest.raises(parts.ArchiveFailed, match="SHA-256"):
        parts.verify_archive(result.manifest)
    manifest = json.loads(result.manifest.read_text())
    manifest["sha256"] = parts.count_archive(result.file)[1]
    result.manifest.write_text(json.dumps(manifest))
    with pytest.raises(parts.ArchiveFailed, match="holds 27 rows"):
        parts.verify_archive(result.manifest)


def test_retention_keeps_a_month_whose_archive_failed(engine: Engine, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    name, punches = _old_month_with_rows(engine)
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("a file where the archive folder should be")
    result = parts.maintain(engine, today=TODAY, archive_after_months=24, archive_dir=blocked)
    assert name in result.refused and result.archived == []
    assert len(_table_rows(engine, "WHERE device_time < '2024-04'")) == len(punches)

    # The file was written but reads back short: nothing is dropped, no archive left behind.
    monkeypatch.setattr(parts, "count_archive", lambda path: (len(punches) - 1, "0" * 64))
    with pytest.raises(parts.ArchiveFailed, match="holds 25 rows, the partition 26"):
        parts.archive_partition(engine, name, tmp_path / "archive")
    assert name in {p.name for p in parts.list_partitions(engine)}
    assert len(_table_rows(engine, "WHERE device_time < '2024-04'")) == len(punches)
    assert list((tmp_path / "archive").iterdir()) == []


def test_a_month_with_punches_still_in_the_outbox_is_not_archived(engine: Engine, tmp_path: Path) -> None:
    store = Store(engine, "1801.01.02")
    store.sync_devices([DeviceConfig(id="lobby", name="Lobby", address="127.0.0.1")])
    store_punches(store, [make_punch("1", datetime(2024, 3, 5, 7, 0))], forward=True)
    parts.ensure_partitions(engine, today=TODAY)
    with pytest.raises(parts.ArchiveFailed, match="still in the outbox"):
        parts.archive_partition(engine, "punches_2024_03", tmp_path)
    assert parts.list_partitions(engine, exact=True)[0].rows == 1


def test_the_default_partition_is_never_archived(engine: Engine, tmp_path: Path) -> None:
    with pytest.raises(parts.ArchiveFailed, match="not a month partition"):
        parts.archive_partition(engine, parts.DEFAULT_PARTITION, tmp_path)


def test_0011_converts_an_existing_table_keeping_rows_ids_and_the_sequence(pg_url: str) -> None:
    engine = create_db_engine(pg_url, pool_size=1)
    try:
        with writer(engine).begin() as conn:
            command.upgrade(_alembic_config(conn), "0010_dashboard_accounts")
        now = datetime.now(UTC)
        punches = [at(date(2025, 1, 1), "jan"), at(date(2026, 7, 1), "jul"), at(date(2099, 9, 1), "future")]
        with writer(engine).begin() as conn:
            ids = insert_punches(conn, punches, received_at=now)
        before = _table_rows(engine)
        upgrade(engine)
        assert parts.is_partitioned(engine)
        assert _table_rows(engine) == before
        placed = where_rows(engine)
        assert placed["jan"].endswith("punches_2025_01") and placed["jul"].endswith("punches_2026_07")
        assert placed["future"].endswith(parts.DEFAULT_PARTITION)
        with writer(engine).begin() as conn:
            new = insert_punches(conn, [at(date(2025, 1, 1), "next")], received_at=now)
            assert insert_punches(conn, punches, received_at=now) == []  # still deduplicated
        assert new[0] > max(ids)  # the same sequence goes on
        with writer(engine).begin() as conn:  # and back
            command.downgrade(_alembic_config(conn), "0010_dashboard_accounts")
        assert not parts.is_partitioned(engine)
        assert len(_table_rows(engine)) == 4
    finally:
        engine.dispose()


def test_sqlite_has_no_partitions(tmp_path: Path) -> None:
    engine = create_db_engine(f"sqlite:///{tmp_path / 'x.db'}", pool_size=1)
    try:
        upgrade(engine)
        assert not parts.is_partitioned(engine)
        with pytest.raises(parts.NotPartitioned):
            parts.list_partitions(engine)
    finally:
        engine.dispose()



def _wait_for(engine: Engine, sql: str, what: str) -> None:
    """Poll pg_locks until ``sql`` counts more than zero (bounded; the waits are real lock waits)."""
    import time
    deadline = time.monotonic() + 30
    with engine.connect() as conn:
        while conn.execute(text(sql)).scalar_one() <= 0:
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            conn.rollback()
            time.sleep(0.05)


def test_an_insert_waiting_while_its_month_is_made_goes_into_the_new_partition_not_an_error(pg_url: str) -> None:
    """An insert queued while its month's partition is made ends in the new partition, without an error.

    bench_forward (300 concurrent ingests while the daemon's first maintenance run moved January out of the
    default partition) hit "new row for relation punches_default violates partition constraint" when only the
    default partition was locked. This sequence does not reproduce that failure deterministically (the old
    lock passes it too); it pins what the parent lock must keep true."""
    import threading
    eng = create_db_engine(pg_url, pool_size=4)
    try:
        upgrade(eng)
        target = parts.add_months(TODAY.replace(day=1), 8)  # no partition yet: rows go to the default one
        errors: list[BaseException] = []
        with eng.connect() as first:
            tx = first.begin()
            insert_punches(first, [at(target, "first")], received_at=datetime.now(UTC), source="forward")

            def run(job: Any) -> None:
                try:
                    job()
                except BaseException as exc:  # reported by the assertion below
                    errors.append(exc)

            maintenance = threading.Thread(target=run, name="partition-maintenance", args=(
                lambda: parts.ensure_partitions(eng, today=TODAY, months_ahead=8),))
            maintenance.start()
            _wait_for(eng, "SELECT count(*) FROM pg_locks WHERE NOT granted",
                      "the maintenance to wait for the open insert")
            def plain_insert() -> None:  # a multi-row INSERT ... VALUES ... ON CONFLICT, as bench_forward's baseline
                with eng.begin() as conn:
                    conn.execute(insert_ignore(conn, s.punches, PUNCH_KEY),
                                 [punch_row(at(target, "second", day=9), datetime.now(UTC), "forward")])

            second = threading.Thread(target=run, name="second-ingest", args=(plain_insert,))
            second.start()
            _wait_for(eng, "SELECT count(DISTINCT pid) - 1 FROM pg_locks WHERE NOT granted",
                      "the second insert to queue behind it")
            tx.commit()
        maintenance.join(30)
        second.join(30)
        assert not maintenance.is_alive() and not second.is_alive()
        assert errors == []
        placed = where_rows(eng)
        assert placed["first"] == placed["second"] == f"{parts.SCHEMA}.{parts.partition_name(target)}"
    finally:
        eng.dispose()

"""Store on SQLite and PostgreSQL: idempotent punch insert, one-transaction save_poll, users, read queries."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select

from drivers.base import Counts, DeviceInfo, DeviceUser
from gateway.config import Config, parse_config
from gateway.models import PollOutcome, Punch
from gateway.store import schema as s
from gateway.store.db import HEAD_REVISION, create_db_engine, current_revision, head_revision, upgrade, writer
from gateway.store.health import device_overview
from gateway.store.punches import PunchQuery, Store, insert_punches, iter_punches
from tests.support.punches import make_punch


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    eng = create_db_engine(db_url)
    upgrade(eng)
    try:
        yield eng
    finally:
        eng.dispose()


def config(tmp_path: Path, *ids: str) -> Config:
    return parse_config({"site": {"office_code": "1801.01.02"},
                         "devices": [{"id": i, "address": f"10.0.0.{n + 1}"} for n, i in enumerate(ids)]},
                        base_dir=tmp_path)


def punch(user: str, minute: int, serial: str = "SN1", device: str = "lobby", flags: tuple[str, ...] = ()) -> Punch:
    return make_punch(user, datetime(2026, 11, 20, 7, 0) + timedelta(minutes=minute), device_id=device, serial=serial,
                      verify_name="fingerprint", flags=flags)


def outcome(device: str = "lobby", ok: bool = True, records: int = 0, mode: str = "full", **kw) -> PollOutcome:
    now = datetime.now(UTC)
    info = DeviceInfo("SN1", "Ver 6.60", "ZEM560") if ok else None
    counts = Counts(records=records, users=3, records_cap=100000, users_cap=3000) if ok else None
    return PollOutcome(device_id=device, started_at=now - timedelta(seconds=1), finished_at=now, ok=ok,
                       mode=mode if ok else "none", serial="SN1" if ok else None, info=info, counts=counts, **kw)


def count(engine: Engine, table) -> int:  # type: ignore[no-untyped-def]
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


@pytest.mark.timeout(60)
def test_the_fast_head_check_names_alembics_head() -> None:
    # upgrade() skips alembic when the database is at HEAD_REVISION: a new migration must move it too.
    assert head_revision() == HEAD_REVISION


def test_migrations_reach_head_and_are_idempotent(engine: Engine) -> None:
    assert current_revision(engine) == head_revision()
    assert upgrade(engine) == (head_revision(), head_revision())


@pytest.mark.timeout(60)
def test_punch_insert_is_idempotent_and_reports_only_new_rows(engine: Engine) -> None:
    batch = [punch(str(1000 + i % 50), i) for i in range(1200)]  # more than one insert chunk
    now = datetime.now(UTC)
    with writer(engine).begin() as conn:
        first = insert_punches(conn, batch, received_at=now)
    with writer(engine).begin() as conn:
        again = insert_punches(conn, [*batch, punch("9999", 5000)], received_at=now)
    assert len(first) == 1200 and len(set(first)) == 1200
    assert len(again) == 1 and again[0] > max(first)  # ids are monotonic
    assert count(engine, s.punches) == 1201


@pytest.mark.timeout(60)
def test_save_poll_stores_punches_device_row_and_poll_run_in_one_go(engine: Engine, tmp_path: Path) -> None:
    store = Store(engine, "1801.01.02")
    store.sync_devices(config(tmp_path, "lobby").devices)
    punches = [punch("1001", 0), punch("1002", 1), punch("1003", 2, flags=("future",))]
    r1 = store.save_poll(outcome(records=3), punches, forward=True, address=("10.0.0.1", 4370))
    r2 = store.save_poll(outcome(records=3), punches, forward=True, address=("10.0.0.1", 4370))
    assert (r1.new_punches, r2.new_punches) == (3, 0)
    assert r1.new_keys == {p.key for p in punches} and r2.new_keys == frozenset()
    # The newest *valid* punch: the one flagged "future" does not count.
    assert r1.newest_punch_utc == punches[1].utc_time
    assert count(engine, s.outbox) == 3  # forward=True: an outbox row per new punch, none for repeats
    state = store.device_state("lobby")
    assert (state.serial, state.last_record_count, state.last_user_count) == ("SN1", 3, 3)
    assert state.last_full_read_at is not None and state.last_punch_at == punches[1].utc_time
    store.save_poll(outcome(ok=False, error_kind="unreachable", error="timed out"))
    with engine.connect() as conn:
        runs = conn.execute(select(s.poll_runs.c.outcome, s.poll_runs.c.new_records, s.poll_runs.c.error)
                            .order_by(s.poll_runs.c.id)).all()
    assert [tuple(r) for r in runs] == [("ok", 3, None), ("ok", 0, None), ("unreachable", 0, "timed out")]
    # A failed poll keeps what the last good one learned.
    assert store.device_state("lobby").last_record_count == 3


@pytest.mark.timeout(60)
def test_concurrent_pollers_never_duplicate(engine: Engine, tmp_path: Path) -> None:
    ids = [f"d{i}" for i in range(6)]
    store = Store(engine, "1801.01.02")
    store.sync_devices(config(tmp_path, *ids).devices)
    shared = [punch(str(u), u, serial="SHARED") for u in range(300)]
    errors: list[BaseException] = []

    def work(dev: str) -> None:
        try:
            for _ in range(3):
                store.save_poll(outcome(dev, records=300), shared)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(d,), name=f"test-writer-{d}") for d in ids]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert count(engine, s.punches) == 300
    assert count(engine, s.poll_runs) == 18


@pytest.mark.timeout(60)
def test_users_replace_and_devices_removed_from_config_are_disabled(engine: Engine, tmp_path: Path) -> None:
    store = Store(engine, "1801.01.02")
    store.sync_devices(config(tmp_path, "lobby", "hall").devices)
    store.save_users("SN1", [DeviceUser(1, "1001", "Budi"), DeviceUser(2, "1002", "Sari"),
                             DeviceUser(3, "1002", "dup")])
    store.save_users("SN1", [DeviceUser(1, "1001", "Budi Santoso")])
    with engine.connect() as conn:
        users = conn.execute(select(s.device_users.c.user_id, s.device_users.c.name)).all()
    assert [tuple(u) for u in users] == [("1001", "Budi Santoso")]
    store.sync_devices(config(tmp_path, "lobby").devices)
    listed = device_overview(engine, "1801.01.02")
    assert [d["device_id"] for d in listed] == ["lobby"]
    everything = device_overview(engine, "1801.01.02", include_disabled=True)
    assert {d["device_id"]: d["enabled"] for d in everything} == {"hall": False, "lobby": True}
    assert {d["state"] for d in everything} == {"unknown"}  # no health rows yet


@pytest.mark.timeout(60)
def test_punch_query_filters_by_office_day_device_and_user(engine: Engine, tmp_path: Path) -> None:
    store = Store(engine, "1801.01.02")
    store.sync_devices(config(tmp_path, "lobby", "hall").devices)
    day1 = [punch("1001", 0), punch("1002", 60)]                        # 2026-11-20 07:00, 08:00 WIB
    late = [punch("1001", 17 * 60)]                                     # 2026-11-21 00:00 WIB = 20th 17:00 UTC
    hall = [punch("1003", 30, serial="SN2", device="hall")]
    store.save_poll(outcome(records=3), day1 + late)
    store.save_poll(outcome("hall", records=1), hall)
    got = list(iter_punches(engine, PunchQuery(date_from=date(2026, 11, 20), date_to=date(2026, 11, 20))))
    # The 00:00 WIB punch on the 21st belongs to the 21st even though it is still the 20th in UTC.
    assert [r["device_time"] for r in got] == ["2026-11-20 07:00:00", "2026-11-20 07:30:00", "2026-11-20 08:00:00"]
    assert [r["device_user_id"] for r in iter_punches(engine, PunchQuery(device_id="hall"))] == ["1003"]
    assert len(list(iter_punches(engine, PunchQuery(device_user_id="1001")))) == 2
    assert len(list(iter_punches(engine, PunchQuery(date_from=date(2026, 11, 21))))) == 1
    assert len(list(iter_punches(engine, PunchQuery(limit=2)))) == 2


def test_sqlite_connections_get_the_store_settings(tmp_path: Path) -> None:
    # WAL + NORMAL (durability model of docs/guarantees.md), FK checks (outbox -> punches) and the page cache
    # the insert path was measured with (gateway.store.db.SQLITE_CACHE_KIB).
    from gateway.store.db import SQLITE_CACHE_KIB

    engine = create_db_engine(f"sqlite:///{tmp_path / 'settings.db'}")
    try:
        with engine.connect() as conn:
            got = {p: conn.exec_driver_sql(f"PRAGMA {p}").scalar()
                   for p in ("journal_mode", "synchronous", "foreign_keys", "cache_size")}
    finally:
        engine.dispose()
    assert got == {"journal_mode": "wal", "synchronous": 1, "foreign_keys": 1, "cache_size": -SQLITE_CACHE_KIB}


def test_a_new_sqlite_database_gets_the_page_size_and_an_existing_one_keeps_its_own(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # gateway.store.db.SQLITE_PAGE_SIZE applies to a new database only: one created with SQLite's old default
    # of 4096 (as gateways installed before it were) keeps its pages when opened again, and still stores.
    import gateway.store.db as store_db

    page_size = store_db.SQLITE_PAGE_SIZE
    assert page_size != 4096
    monkeypatch.setattr(store_db, "SQLITE_PAGE_SIZE", 4096)
    old = create_db_engine(f"sqlite:///{tmp_path / 'old.db'}")
    upgrade(old)
    old.dispose()
    monkeypatch.setattr(store_db, "SQLITE_PAGE_SIZE", page_size)
    sizes = {}
    for name in ("new.db", "old.db"):
        engine = create_db_engine(f"sqlite:///{tmp_path / name}")
        try:
            upgrade(engine)
            with writer(engine).begin() as conn:
                insert_punches(conn, [make_punch("1001", datetime(2026, 11, 20, 7, 30))], received_at=datetime.now(UTC))
            with engine.connect() as conn:
                sizes[name] = conn.exec_driver_sql("PRAGMA page_size").scalar()
                assert conn.exec_driver_sql("SELECT count(*) FROM punches").scalar() == 1
        finally:
            engine.dispose()
    assert sizes == {"new.db": page_size, "old.db": 4096}

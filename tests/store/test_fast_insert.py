"""The fast punch insert of save_poll (issue 14) on SQLite and PostgreSQL: rows read back exactly as the
SQLAlchemy-typed insert wrote them, the "already stored" read never hides a new punch, exactly-once under many
concurrent pollers, and SQLite's single writer (a poll waits for the writer instead of failing; a bad poll
fails alone)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import replace as replace_dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import Engine, func, select, text

from drivers.base import Counts, DeviceInfo
from gateway.config import parse_config
from gateway.models import PollOutcome, Punch
from gateway.store import punches as punches_module
from gateway.store import schema as s
from gateway.store.db import StorageError, create_db_engine, pending_writes, upgrade, writer
from gateway.store.punches import (
    OCCURRENCE_EPOCH_STRIDE,
    PG_COPY_MIN,
    PREFETCH_MIN,
    PUNCH_COLUMNS,
    Store,
    insert_punches,
    punch_row,
)
from tests.support.punches import make_punch
from tests.support.wait import wait_until

pytestmark = pytest.mark.timeout(120)
OFFICE = "1801.01.02"


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    eng = create_db_engine(db_url)
    upgrade(eng)
    try:
        yield eng
    finally:
        eng.dispose()


def new_store(engine: Engine, tmp_path: Path, *ids: str) -> Store:
    store = Store(engine, OFFICE)
    store.sync_devices(parse_config({"site": {"office_code": OFFICE},
                                     "devices": [{"id": i, "address": f"10.0.0.{n + 1}"} for n, i in enumerate(ids)]},
                                    base_dir=tmp_path).devices)
    return store


def outcome(device: str = "lobby", serial: str = "SN1", records: int = 0) -> PollOutcome:
    now = datetime.now(UTC)
    return PollOutcome(device_id=device, started_at=now - timedelta(seconds=1), finished_at=now, ok=True, mode="full",
                       serial=serial, counts=Counts(records=records, users=3))


def varied_punches(serial: str, n: int) -> list[Punch]:
    """Punches that exercise every column: instants in other zones and with microseconds, no instant (a dead
    clock), flags, no employee, occurrence numbers, large raw values."""
    jakarta, plus_530 = ZoneInfo("Asia/Jakarta"), timezone(timedelta(hours=5, minutes=30))
    out = []
    for i in range(n):
        local = datetime(2026, 3, 1, 7, 0, 0, 123456 * (i % 2)) + timedelta(minutes=i)
        p = make_punch(str(1000 + i % 7), local, serial=serial, office_code=OFFICE, state=i % 5,
                       state_name=f"s{i % 5}", verify=i % 16, verify_name="fingerprint" if i % 3 else "card",
                       uid=i, workcode=i * 3, raw_time=2**40 + i, employee_id=f"NIP{i}" if i % 4 else None,
                       flags=("future", "unmapped_user") if i % 6 == 0 else ())
        utc = p.utc_time
        assert utc is not None
        kind = i % 4
        if kind == 1:  # the same instant given in the device's zone
            p = replace_punch(p, utc_time=utc.astimezone(jakarta))
        elif kind == 2:  # ... or in an odd fixed offset
            p = replace_punch(p, utc_time=utc.astimezone(plus_530))
        elif kind == 3 and i % 8 == 3:  # a dead clock: no local time, no instant, numbered
            p = replace_punch(p, device_time="2000-01-01 00:00:00", local_time=None, utc_time=None,
                              flags=("rtc_reset",), occurrence=1 + i)
        out.append(p)
    return out


def replace_punch(p: Punch, **changes: object) -> Punch:
    from dataclasses import replace
    return replace(p, **changes)  # type: ignore[arg-type]


def stored_rows(engine: Engine, serial: str) -> list[dict[str, object]]:
    """Every column but id and the serial, typed (through SQLAlchemy) and raw (what the database holds)."""
    p = s.punches.c
    cols = [c for c in PUNCH_COLUMNS if c != "device_serial"]
    with engine.connect() as conn:
        typed = [dict(r._mapping) for r in conn.execute(
            select(*(p[c] for c in cols)).where(p.device_serial == serial).order_by(p.device_user_id, p.device_time,
                                                                                     p.occurrence))]
        # CAST(... AS TEXT): the stored form itself (SQLite keeps the text it got; PostgreSQL prints its value).
        raw = [tuple(r) for r in conn.execute(text(
            f"SELECT {', '.join(f'CAST({c} AS TEXT)' for c in cols)} FROM punches WHERE device_serial = :s "
            "ORDER BY device_user_id, device_time, occurrence"), {"s": serial})]
    assert len(typed) == len(raw)
    return [{**t, "raw": r} for t, r in zip(typed, raw, strict=True)]


@pytest.mark.parametrize("size", [10, PG_COPY_MIN + 10])  # PostgreSQL: the array path and the COPY path
def test_fast_rows_read_back_identical_to_the_typed_insert(engine: Engine, size: int) -> None:
    received = datetime(2026, 3, 1, 1, 2, 3, 456789, tzinfo=UTC)
    old = varied_punches("SN-OLD", size)
    new = [replace_punch(p, device_serial="SN-NEW") for p in old]
    with writer(engine).begin() as conn:  # the reference: SQLAlchemy with the columns' types
        conn.execute(s.punches.insert(), [punch_row(p, received) for p in old])
    with writer(engine).begin() as conn:
        assert len(insert_punches(conn, new, received_at=received.astimezone(ZoneInfo("Asia/Jakarta")))) == size
    reference, fast = stored_rows(engine, "SN-OLD"), stored_rows(engine, "SN-NEW")
    assert fast == reference
    assert all(r["utc_time"] is None or r["utc_time"].tzinfo is not None for r in fast)  # type: ignore[union-attr]


def test_a_naive_instant_is_refused_and_nothing_of_the_poll_is_stored(engine: Engine, tmp_path: Path) -> None:
    store = new_store(engine, tmp_path, "lobby")
    for size in (3, PREFETCH_MIN + 5, PG_COPY_MIN + 5):
        batch = varied_punches("SN1", size)
        bad = replace_punch(batch[-1], utc_time=datetime(2026, 3, 1, 0, 0))
        with pytest.raises(ValueError, match="naive"):
            store.save_poll(outcome(), [*batch[:-1], bad], forward=True)
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(s.punches)).scalar_one() == 0
        assert conn.execute(select(func.count()).select_from(s.poll_runs)).scalar_one() == 0


def test_reconcile_stores_only_what_is_missing_with_epochs_and_occurrences(engine: Engine, tmp_path: Path) -> None:
    store = new_store(engine, tmp_path, "lobby", "hall")
    log = varied_punches("SN1", 3 * PREFETCH_MIN)
    first = store.save_poll(outcome(records=len(log)), log[::2], forward=True)
    assert first.new_keys == {p.key for p in log[::2]}
    # A full re-read: the stored half is recognized, only the other half is new (and queued once).
    again = store.save_poll(outcome(records=len(log)), log, forward=True)
    assert again.new_keys == {p.key for p in log[1::2]}
    assert store.save_poll(outcome(records=len(log)), log, forward=True).new_punches == 0
    # The same punches reported under another device id (a terminal moved) are still the same punches.
    moved = [replace_punch(p, device_id="hall") for p in log]
    assert store.save_poll(outcome("hall", records=len(log)), moved, forward=True).new_punches == 0
    # A changed zone gives other instants: still the same keys, still nothing new.
    shifted = [replace_punch(p, utc_time=p.utc_time + timedelta(hours=1)) if p.utc_time else p for p in log]
    assert store.save_poll(outcome(records=len(log)), shifted, forward=True).new_punches == 0
    # After a new log epoch the dead-clock records are new records again (their numbers are lifted) ...
    epoch = store.new_log_epoch("SN1")
    numbered = {p.key for p in log if p.occurrence}
    assert numbered
    after = store.save_poll(outcome(records=len(log)), log, forward=True)
    assert after.new_keys == numbered  # given keys back, not the lifted ones
    assert store.missing_keys("SN1", {p.key for p in log}) == set()
    with engine.connect() as conn:
        occurrences = set(conn.execute(select(s.punches.c.occurrence).where(s.punches.c.occurrence > 0)).scalars())
        total = conn.execute(select(func.count()).select_from(s.punches)).scalar_one()
        queued = conn.execute(select(func.count()).select_from(s.outbox)).scalar_one()
        recorded = conn.execute(select(func.sum(s.poll_runs.c.new_records))).scalar_one()
    assert {o for o in occurrences if o >= OCCURRENCE_EPOCH_STRIDE} == {o + epoch * OCCURRENCE_EPOCH_STRIDE
                                                                       for _, _, _, o in numbered}
    assert total == queued == recorded == len(log) + len(numbered)


def test_a_punch_stored_after_the_already_stored_read_is_neither_duplicated_nor_fails_the_poll(
        engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # On PostgreSQL a batch the already-stored read has checked goes in without ON CONFLICT; a punch another
    # writer stored after that read makes the insert fail, and the poll must be saved again with ON CONFLICT.
    store = new_store(engine, tmp_path, "lobby")
    log = varied_punches("SN1", 3 * PG_COPY_MIN)
    store.save_poll(outcome(records=len(log)), log[::3], forward=True)
    # The read sees nothing stored, as if the stored third had been committed just after it.
    monkeypatch.setattr(punches_module, "_not_stored", lambda conn, batch, before=(): (batch, True, False))
    saved = store.save_poll(outcome(records=len(log)), log, forward=True)
    missing = [p for i, p in enumerate(log) if i % 3]
    assert saved.new_keys == {p.key for p in missing} and saved.new_punches == len(missing)
    assert store.missing_keys("SN1", {p.key for p in log}) == set()
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(s.punches)).scalar_one() == len(log)
        assert conn.execute(select(func.count()).select_from(s.outbox)).scalar_one() == len(log)
        assert conn.execute(select(func.sum(s.poll_runs.c.new_records))).scalar_one() == len(log)


def test_the_new_ids_a_poll_reports_are_the_rows_of_its_new_punches(engine: Engine, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    # SQLite names the new rows without reading them back when every row went in; with conflicts it reads them.
    store = new_store(engine, tmp_path, "lobby")
    log = varied_punches("SN1", 2 * PG_COPY_MIN + 3)
    first = store.save_poll(outcome(records=len(log)), log[:PG_COPY_MIN], forward=True)
    # The already-stored read skipped: the conflicts reach the insert.
    monkeypatch.setattr(punches_module, "_not_stored", lambda conn, batch, before=(): (batch, False, False))
    second = store.save_poll(outcome(records=len(log)), log, forward=True)
    p = s.punches.c
    for result, expected in ((first, log[:PG_COPY_MIN]), (second, log[PG_COPY_MIN:])):
        with engine.connect() as conn:
            rows = conn.execute(select(p.id, p.device_serial, p.device_user_id, p.device_time, p.occurrence)
                                .where(p.id.in_(result.new_ids))).all()
        assert len(result.new_ids) == len(expected)
        assert {(r[1], r[2], r[3], r[4]) for r in rows} == result.new_keys == {q.key for q in expected}


def test_a_poll_keeps_its_device_row_identity_position_and_run_together(engine: Engine, tmp_path: Path) -> None:
    # PostgreSQL writes these in one statement (data-modifying WITH), SQLite one by one: the same rows either way.
    store = new_store(engine, tmp_path, "lobby")
    log = varied_punches("SN1", 5)

    def poll(firmware: str, address: tuple[str, int], position: str | None, ok: bool = True) -> None:
        base = outcome(records=len(log))
        done = replace_dataclass(base, info=DeviceInfo("SN1", firmware, "ZEM560"), ok=ok,
                                 error_kind=None if ok else "busy", mode="full" if ok else "none")
        store.save_poll(done, log if ok else (), forward=True, address=address, log_position=position)

    poll("Ver 1", ("10.0.0.1", 4370), "p1")
    poll("Ver 2", ("10.0.0.1", 4370), "p2")  # the same identity and position, updated
    poll("Ver 2", ("10.0.0.9", 4370), None)  # a new address; the position kept
    poll("Ver 3", ("10.0.0.9", 4370), "p3", ok=False)  # a failed poll: no count, no position moved by it
    state = store.device_state("lobby")
    assert (state.serial, state.firmware, state.last_record_count, state.log_position) == ("SN1", "Ver 3", 5, "p3")
    i = s.device_identities.c
    with engine.connect() as conn:
        identities = {(r.address, r.firmware) for r in conn.execute(select(i.address, i.firmware))}
        runs = conn.execute(select(s.poll_runs.c.outcome, s.poll_runs.c.new_records)
                            .order_by(s.poll_runs.c.id)).all()
    assert identities == {("10.0.0.1", "Ver 2"), ("10.0.0.9", "Ver 3")}
    assert [tuple(r) for r in runs] == [("ok", 5), ("ok", 0), ("ok", 0), ("busy", 0)]


def test_a_batch_holding_one_key_twice_stores_it_once(engine: Engine, tmp_path: Path) -> None:
    # Two records with the same user and time in one read: one punch (the plain insert must not be used).
    store = new_store(engine, tmp_path, "lobby")
    log = varied_punches("SN1", PG_COPY_MIN + PREFETCH_MIN)
    saved = store.save_poll(outcome(records=len(log) + 1), [*log, log[7]], forward=True)
    assert saved.new_keys == {p.key for p in log} and saved.new_punches == len(log)
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(s.punches)).scalar_one() == len(log)
        assert conn.execute(select(func.count()).select_from(s.outbox)).scalar_one() == len(log)


def test_concurrent_pollers_store_and_report_every_punch_exactly_once(engine: Engine, tmp_path: Path) -> None:
    devices = [f"d{i}" for i in range(4)]
    store = new_store(engine, tmp_path, *devices)
    # Overlapping batches of one shared log, big (read of the stored keys, COPY) and small (straight insert).
    log = [make_punch(str(u % 40), datetime(2026, 3, 2, 7, 0) + timedelta(seconds=7 * u), serial="SHARED",
                      office_code=OFFICE) for u in range(600)]
    slices = [log[a:b] for a, b in ((0, 300), (150, 600), (0, 600), (290, 310), (599, 600), (0, 5), (100, 400))]
    new_keys: list[frozenset[tuple[str, str, str, int]]] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    go = threading.Barrier(len(devices) * 3)

    def work(device: str, shift: int) -> None:
        try:
            go.wait(timeout=30)
            for k in range(len(slices)):
                batch = slices[(k + shift) % len(slices)]
                result = store.save_poll(outcome(device, "SHARED", 600),
                                         [replace_punch(p, device_id=device) for p in batch], forward=True)
                with lock:
                    new_keys.append(result.new_keys)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(d, k), name=f"test-poller-{d}-{k}")
               for d in devices for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=100)
    assert not errors and not any(t.is_alive() for t in threads)
    reported = [k for keys in new_keys for k in keys]
    assert sorted(reported) == sorted(p.key for p in log)  # each punch reported new by exactly one poll
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(s.punches)).scalar_one() == len(log)
        assert conn.execute(select(func.count()).select_from(s.outbox)).scalar_one() == len(log)
        assert conn.execute(select(func.count()).select_from(s.poll_runs)).scalar_one() == len(threads) * len(slices)


def test_a_bad_poll_fails_alone_among_concurrent_polls(engine: Engine, tmp_path: Path) -> None:
    devices = [f"d{i}" for i in range(8)]
    store = new_store(engine, tmp_path, *devices)
    results: dict[str, BaseException | int] = {}
    go = threading.Barrier(len(devices))

    def work(device: str) -> None:
        batch = [make_punch(str(u), datetime(2026, 3, 3, 7, 0) + timedelta(minutes=u), serial=f"SN-{device}",
                            device_id=device, office_code=OFFICE) for u in range(PREFETCH_MIN + 1)]
        if device == "d3":  # a value its column refuses (NOT NULL): the database rejects the statement
            batch[10] = replace_punch(batch[10], state_name=None)
        go.wait(timeout=30)
        try:
            results[device] = store.save_poll(outcome(device, f"SN-{device}", len(batch)), batch,
                                              forward=True).new_punches
        except BaseException as exc:
            results[device] = exc

    threads = [threading.Thread(target=work, args=(d,), name=f"test-poller-{d}") for d in devices]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert isinstance(results["d3"], StorageError)
    assert {d: r for d, r in results.items() if d != "d3"} == {d: PREFETCH_MIN + 1 for d in devices if d != "d3"}
    with engine.connect() as conn:
        bad = conn.execute(select(func.count()).select_from(s.punches)
                           .where(s.punches.c.device_id == "d3")).scalar_one()
        runs = conn.execute(select(func.count()).select_from(s.poll_runs)).scalar_one()
    assert bad == 0 and runs == len(devices) - 1
    # The failed poll left nothing behind: the next good save of that device works.
    assert store.save_poll(outcome("d3", "SN-d3"), []).new_punches == 0


def test_sqlite_poll_waits_for_the_writer_instead_of_failing(sqlite_url: str, tmp_path: Path) -> None:
    eng = create_db_engine(sqlite_url)
    try:
        upgrade(eng)
        store = new_store(eng, tmp_path, "lobby")
        held, release = threading.Event(), threading.Event()
        saved: list[int] = []

        def hold_the_writer() -> None:
            with writer(eng).begin() as conn:
                conn.execute(s.kv.insert().values(key="k", value="v", updated_at=datetime.now(UTC)))
                held.set()
                release.wait(timeout=30)

        def poll() -> None:
            saved.append(store.save_poll(outcome(), [make_punch("1", datetime(2026, 3, 4, 7, 0),
                                                                office_code=OFFICE)]).new_punches)

        holder = threading.Thread(target=hold_the_writer, name="test-writer-holder")
        holder.start()
        assert held.wait(timeout=30)
        # The engine's busy timeout would end a wait for SQLite's own lock with "database is locked"; make it
        # short so a poll that raced for that lock instead of the in-process writer fails fast.
        with eng.connect() as conn:
            conn.exec_driver_sql("PRAGMA busy_timeout=50")
        poller = threading.Thread(target=poll, name="test-writer-poller")
        poller.start()
        poller.join(timeout=0.5)
        assert poller.is_alive() and not saved  # waiting for the writer, not failing
        release.set()
        holder.join(timeout=30)
        poller.join(timeout=30)
        assert saved == [1]
    finally:
        eng.dispose()


def test_sqlite_group_commit_fails_only_the_bad_poll_and_its_thread_ends(sqlite_url: str, tmp_path: Path) -> None:
    eng = create_db_engine(sqlite_url)
    try:
        upgrade(eng)
        devices = [f"d{i}" for i in range(6)]
        store = new_store(eng, tmp_path, *devices)
        results: dict[str, BaseException | int] = {}

        def poll(device: str) -> None:
            batch = [make_punch(str(u), datetime(2026, 3, 5, 7, 0) + timedelta(minutes=u), serial=f"SN-{device}",
                                device_id=device, office_code=OFFICE) for u in range(3)]
            if device == "d2":
                batch[1] = replace_punch(batch[1], state_name=None)  # NOT NULL: the database refuses it
            try:
                results[device] = store.save_poll(outcome(device, f"SN-{device}", 3), batch, forward=True).new_punches
            except BaseException as exc:
                results[device] = exc

        threads = [threading.Thread(target=poll, args=(d,), name=f"test-poller-{d}") for d in devices]
        # Hold the writer so that every poll queues; they are then committed as ONE group.
        with writer(eng).begin():
            for t in threads:
                t.start()
            # The writer thread waits for the writer's turn before taking its group: every poll queues.
            wait_until(lambda: pending_writes(eng) == len(devices), 30, "every poll queued for the writer",
                       every_s=0.02)
        for t in threads:
            t.join(timeout=60)
        assert isinstance(results.pop("d2"), StorageError)
        assert results == {d: 3 for d in devices if d != "d2"}
        with eng.connect() as conn:
            stored = dict(conn.execute(select(s.punches.c.device_id, func.count()).group_by(s.punches.c.device_id))
                          .all())
            runs = conn.execute(select(func.count()).select_from(s.poll_runs)).scalar_one()
        assert stored == {d: 3 for d in devices if d != "d2"} and runs == len(devices) - 1
        # The writer thread ends by itself once idle: nothing to stop at shutdown.
        for t in threading.enumerate():
            if t.name == "fpgw-db-writer":
                t.join(timeout=10)
                assert not t.is_alive()
    finally:
        eng.dispose()


def test_two_big_batches_in_one_transaction_each_report_their_own_new_rows(engine: Engine) -> None:
    # PostgreSQL: the second COPY reuses the session's staging table in the same transaction.
    log = varied_punches("SN1", 3 * PG_COPY_MIN)
    now = datetime.now(UTC)
    with writer(engine).begin() as conn:
        first = insert_punches(conn, log[:PG_COPY_MIN + 20], received_at=now)
        second = insert_punches(conn, log[PG_COPY_MIN - 20:], received_at=now)  # 40 already stored above
    assert len(first) == PG_COPY_MIN + 20 and len(second) == 2 * PG_COPY_MIN - 20
    assert not set(first) & set(second)
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(s.punches)).scalar_one() == len(log)

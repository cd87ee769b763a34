"""PostgreSQL's direct COPY of a poll's punches (gateway.store.punches._copy_pg): a checked batch of new punches goes
straight into the partitioned punches table with ids drawn first. What it must keep: the ids are drawn only after
the feed-order lock (a feed reader holding it exclusively makes the poll wait before it draws any id, trigger or
no trigger), a key stored concurrently still ends in one row (the COPY fails and the poll is saved again with ON
CONFLICT), and every new punch gets its outbox row and its own id back."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, func, select, text

from drivers.base import Counts, DeviceInfo
from gateway.config import parse_config
from gateway.models import PollOutcome, Punch
from gateway.store import punches as punches_module
from gateway.store import schema as s
from gateway.store.db import create_db_engine, upgrade
from gateway.store.punches import FEED_LOCK_KEY, PG_COPY_MIN, Store
from tests.support.punches import make_punch

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(120)]
OFFICE = "1801.01.02"


@pytest.fixture
def engine(pg_url: str) -> Iterator[Engine]:
    eng = create_db_engine(pg_url, pool_size=6)
    upgrade(eng)
    try:
        yield eng
    finally:
        eng.dispose()


def new_store(engine: Engine, tmp_path: Path) -> Store:
    store = Store(engine, OFFICE)
    store.sync_devices(parse_config({"site": {"office_code": OFFICE},
                                     "devices": [{"id": "lobby", "address": "10.0.0.1"}]}, base_dir=tmp_path).devices)
    return store


def outcome(records: int) -> PollOutcome:
    now = datetime.now(UTC)
    return PollOutcome(device_id="lobby", started_at=now - timedelta(seconds=1), finished_at=now, ok=True, mode="full",
                       serial="SN1", info=DeviceInfo("SN1", "Ver 6.60", "ZEM560"),
                       counts=Counts(records=records, users=10, records_cap=100000, users_cap=1000),
                       records_read=records)


def log_of(n: int, start: int = 0) -> list[Punch]:
    # The end of this month and the start of the next (both have partitions from the migration), so the COPY
    # routes rows into more than one partition.
    today = datetime.now(UTC)
    next_month = datetime(today.year + today.month // 12, today.month % 12 + 1, 1)
    base = next_month - timedelta(hours=30)
    return [make_punch(str(i % 37), base + timedelta(minutes=7 * i), serial="SN1", device_id="lobby",
                       office_code=OFFICE) for i in range(start, start + n)]


def copies(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Sizes of the batches that went through the direct COPY (the path under test must really be taken)."""
    seen: list[int] = []
    real = punches_module._copy_pg

    def spy(conn: Any, batch: list[Punch], *args: Any) -> Any:
        seen.append(len(batch))
        return real(conn, batch, *args)

    monkeypatch.setattr(punches_module, "_copy_pg", spy)
    return seen


def test_new_punches_get_their_rows_outbox_and_ids_and_a_reread_stores_nothing(
        engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store, seen = new_store(engine, tmp_path), copies(monkeypatch)
    log = log_of(3 * PG_COPY_MIN)
    first = store.save_poll(outcome(PG_COPY_MIN), log[:PG_COPY_MIN], forward=True)
    second = store.save_poll(outcome(len(log)), log, forward=True)  # the first third stored already
    again = store.save_poll(outcome(len(log)), log, forward=True)
    assert seen == [PG_COPY_MIN, 2 * PG_COPY_MIN]
    assert again.new_punches == 0
    p, o = s.punches.c, s.outbox.c
    with engine.connect() as conn:
        stored = {r.id: (r.device_serial, r.device_user_id, r.device_time, r.occurrence) for r in conn.execute(
            select(p.id, p.device_serial, p.device_user_id, p.device_time, p.occurrence))}
        queued = conn.execute(select(o.punch_id, o.state)).all()
        partitions = conn.execute(text("SELECT count(DISTINCT tableoid) FROM punches")).scalar_one()
    assert len(stored) == len(log) and set(stored.values()) == {q.key for q in log}
    for result, batch in ((first, log[:PG_COPY_MIN]), (second, log[PG_COPY_MIN:])):
        assert {stored[i] for i in result.new_ids} == result.new_keys == {q.key for q in batch}
    assert sorted(i for i, _ in queued) == sorted(stored) and {st for _, st in queued} == {"pending"}
    assert partitions == 2
    # Ids follow the batch's order, as the INSERT ... SELECT gave them.
    assert list(second.new_ids) == sorted(second.new_ids)


def test_a_key_stored_after_the_read_fails_the_copy_and_the_poll_is_saved_again(
        engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = new_store(engine, tmp_path)
    log = log_of(2 * PG_COPY_MIN)
    store.save_poll(outcome(len(log)), log[::2], forward=True)
    seen = copies(monkeypatch)
    # The read sees nothing stored, as if the stored half had been committed just after it.
    monkeypatch.setattr(punches_module, "_not_stored", lambda conn, batch, before=(): (batch, True, False))
    saved = store.save_poll(outcome(len(log)), log, forward=True)
    assert seen == [len(log)]  # the direct COPY was tried, and failed
    assert saved.new_keys == {q.key for q in log[1::2]}
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(s.punches)).scalar_one() == len(log)
        assert conn.execute(select(func.count()).select_from(s.outbox)).scalar_one() == len(log)


@pytest.mark.parametrize("guard", ["trigger", "no trigger (Citus layout)"])
def test_a_poll_draws_its_ids_only_after_a_feed_reader_let_go_of_the_lock(
        engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, guard: str) -> None:
    # A reader holding the feed lock exclusively has its snapshot; an id drawn while it holds the lock could
    # commit below a cursor it returns. So the poll must wait BEFORE drawing ids, not only before its COPY
    # (the trigger fires at the COPY, after the ids are drawn).
    if guard != "trigger":
        with engine.begin() as conn:
            conn.execute(text("DROP TRIGGER punches_feed_order ON punches"))
    store, seen = new_store(engine, tmp_path), copies(monkeypatch)
    results: list[Any] = []
    with engine.connect() as reader:
        tx = reader.begin()
        reader.execute(text(f"SELECT pg_advisory_xact_lock({FEED_LOCK_KEY})"))
        poll = threading.Thread(target=lambda: results.append(
            store.save_poll(outcome(PG_COPY_MIN), log_of(PG_COPY_MIN), forward=True)), name="poll")
        poll.start()
        poll.join(1.0)
        assert poll.is_alive() and not results  # waiting for the reader
        with engine.connect() as other:  # an id drawn while the reader holds the lock
            drawn = other.execute(text("SELECT nextval('punches_id_seq')")).scalar_one()
        tx.commit()
    poll.join(30)
    assert not poll.is_alive() and seen == [PG_COPY_MIN]
    assert min(results[0].new_ids) > drawn


@pytest.mark.parametrize("ids", [[5], [5, 6, 7], [1, 2, 4, 5, 9], [3, 10, 11, 12, 40], list(range(7, 1007))])
def test_outbox_id_runs_cover_exactly_the_ids(ids: list[int]) -> None:
    # The outbox rows are sent as runs of consecutive ids (another transaction may draw ids in between).
    firsts, lasts = punches_module._id_runs(ids)
    assert [i for first, last in zip(firsts, lasts, strict=True) for i in range(first, last + 1)] == ids


def test_ids_drawn_by_another_writer_in_between_leave_no_outbox_row_out(
        engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Another session draws ids while the poll draws its own, so the poll's ids are not one run.
    store = new_store(engine, tmp_path)
    real = punches_module._id_runs
    runs: list[int] = []

    def interleaved(ids: list[int]) -> tuple[list[int], list[int]]:
        firsts, lasts = real(ids)
        runs.append(len(firsts))
        return firsts, lasts

    monkeypatch.setattr(punches_module, "_id_runs", interleaved)
    # Every other id taken by someone else: each of the poll's ids is a run of its own.
    monkeypatch.setattr(punches_module, "_PG_DRAW_IDS",
                        "SELECT 2 * nextval('punches_id_seq') FROM generate_series(1, %s)")
    log = log_of(PG_COPY_MIN)
    saved = store.save_poll(outcome(len(log)), log, forward=True)
    assert runs == [len(log)]
    o = s.outbox.c
    with engine.connect() as conn:
        queued = set(conn.execute(select(o.punch_id)).scalars())
    assert queued == set(saved.new_ids) and len(queued) == len(log)

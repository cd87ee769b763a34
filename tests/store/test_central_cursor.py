"""The BKD feed cursor on PostgreSQL never skips a punch, even with ingest transactions overlapping.

Sequence ids are handed out at INSERT and become visible at COMMIT, so without the feed-order guard
(migration 0002's trigger, shared among writers since 0007; the feed read takes it exclusively) a reader
can page past a row that commits later with a lower id. The first test shows that hazard happens without
the guard; the others show the guard closes it (the reader waits for the transactions in flight, later
ingests wait behind the reader), including under many concurrent ingests with a reader pulling all the time.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import text

from gateway.models import Punch
from gateway.store import punches as punches_module
from gateway.store.central import CentralStore, PunchQuery
from gateway.store.db import create_db_engine, upgrade
from gateway.store.punches import insert_punches

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(120)]


def mk(user: str, minute: int, serial: str = "SN1", office: str = "1801.01") -> Punch:
    local = datetime(2026, 11, 2, 7, 0) + timedelta(minutes=minute)
    return Punch(office_code=office, device_id="lobby", device_serial=serial, device_user_id=user,
                 device_time=local.strftime("%Y-%m-%d %H:%M:%S"), local_time=local,
                 utc_time=(local - timedelta(hours=7)).replace(tzinfo=UTC), timezone="Asia/Jakarta", state=0,
                 state_name="check_in", verify=1, verify_name="finger")


def pull_all(store: CentralStore, after: int) -> tuple[list[str], int]:
    rows, last = store.feed(PunchQuery(), after, 1000)
    return [r["device_user_id"] for r in rows], last


@pytest.fixture
def engine(pg_url: str) -> Any:
    eng = create_db_engine(pg_url, pool_size=12)
    upgrade(eng)
    yield eng
    eng.dispose()


def drop_feed_trigger(engine: Any) -> None:
    """The Citus layout (gateway.store.citus drops the trigger); the insert paths then take the lock themselves."""
    with engine.begin() as conn:
        conn.execute(text("DROP TRIGGER punches_feed_order ON punches"))


def test_without_the_guard_a_reader_skips_a_punch_that_commits_late(engine: Any,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    drop_feed_trigger(engine)
    # No trigger and no explicit lock either: nothing guards the feed.
    monkeypatch.setattr(punches_module, "take_feed_lock_if_untriggered", lambda conn, cur: None)
    store = CentralStore(engine)
    now = datetime.now(UTC)
    with engine.connect() as a:
        tx = a.begin()
        insert_punches(a, [mk("A", 1)], received_at=now, source="forward")      # takes the lower id, not committed
        with engine.begin() as b:
            insert_punches(b, [mk("B", 2)], received_at=now, source="forward")  # higher id, commits first
        seen, cursor = pull_all(store, 0)
        tx.commit()
    later, _ = pull_all(store, cursor)
    assert seen == ["B"] and later == []  # "A" was stepped over: the hazard the guard exists for


@pytest.mark.parametrize("guard", ["trigger", "explicit lock without the trigger (Citus layout)"])
def test_with_the_guard_a_late_commit_is_never_stepped_over(engine: Any, guard: str) -> None:
    if guard != "trigger":
        drop_feed_trigger(engine)
    store = CentralStore(engine)
    now = datetime.now(UTC)
    done = threading.Event()
    pulled: list[tuple[list[str], int]] = []

    def other_gateway() -> None:
        store.ingest_punches(gateway="gw-b", office_code="1801.02", batch_id="b", digest="d",
                             punches=[mk("B", 2, serial="SN2", office="1801.02")], rejected={})
        done.set()

    with engine.connect() as a:
        tx = a.begin()
        insert_punches(a, [mk("A", 1)], received_at=now, source="forward")  # the lower id, not committed
        t = threading.Thread(target=other_gateway, name="ingest-b")
        t.start()
        # Ingests do not wait for each other (the guard is shared among writers): B commits a higher id first.
        assert done.wait(30)
        reader = threading.Thread(target=lambda: pulled.append(pull_all(store, 0)), name="bkd-reader")
        reader.start()
        # The reader waits for the transaction holding the lower id instead of paging past it.
        reader.join(0.5)
        assert reader.is_alive() and not pulled
        tx.commit()
    reader.join(30)
    t.join(30)
    assert [seen for seen, _ in pulled] == [["A", "B"]]


def test_a_reader_waiting_for_the_guard_is_not_starved_by_later_ingests(engine: Any) -> None:
    store = CentralStore(engine)
    now = datetime.now(UTC)
    pulled: list[tuple[list[str], int]] = []
    later_done = threading.Event()

    def later_gateway() -> None:
        store.ingest_punches(gateway="gw-c", office_code="1801.03", batch_id="c", digest="d",
                             punches=[mk("C", 3, serial="SN3", office="1801.03")], rejected={})
        later_done.set()

    with engine.connect() as a:
        tx = a.begin()
        insert_punches(a, [mk("A", 1)], received_at=now, source="forward")
        reader = threading.Thread(target=lambda: pulled.append(pull_all(store, 0)), name="bkd-reader")
        reader.start()
        reader.join(0.5)
        assert reader.is_alive()
        # An ingest starting after the reader queued waits behind it (it would draw an id the reader's
        # snapshot cannot order), so it cannot commit before the reader has read.
        t = threading.Thread(target=later_gateway, name="ingest-c")
        t.start()
        assert not later_done.wait(0.5)
        tx.commit()
    reader.join(30)
    t.join(30)
    assert later_done.is_set()
    assert [seen for seen, _ in pulled] == [["A"]]
    seen, _ = pull_all(store, pulled[0][1])
    assert seen == ["C"]


def test_concurrent_ingests_while_pulling_give_every_punch_exactly_once(engine: Any) -> None:
    store = CentralStore(engine)
    writers, batches, size = 6, 15, 20
    errors: list[BaseException] = []
    stop = threading.Event()
    pulled: list[tuple[str, str, str]] = []

    def ingest(w: int) -> None:
        try:
            for b in range(batches):
                items = [mk(f"u{w}-{b}-{i}", i, serial=f"SN{w}") for i in range(size)]
                # Some overlap with the previous batch: duplicates must not appear twice in the feed.
                if b:
                    items += [mk(f"u{w}-{b - 1}-0", 0, serial=f"SN{w}")]
                store.ingest_punches(gateway=f"gw{w}", office_code="1801.01", batch_id=f"{w}-{b}", digest="x",
                                     punches=items, rejected={})
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    def reader() -> None:
        cursor = 0
        try:
            while True:
                finished = stop.is_set()  # read before pulling: one last full pass after the writers end
                rows, cursor = store.feed(PunchQuery(), cursor, 7)
                pulled.extend((r["device_serial"], r["device_user_id"], r["device_time"]) for r in rows)
                if finished and not rows:
                    return
                if not rows:
                    time.sleep(0.002)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=ingest, args=(w,), name=f"ingest-{w}") for w in range(writers)]
    r = threading.Thread(target=reader, name="bkd-reader")
    r.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    stop.set()
    r.join(60)
    assert not errors, errors
    assert len(pulled) == writers * batches * size
    assert len(set(pulled)) == len(pulled)
    with engine.connect() as conn:
        stored = conn.execute(text("SELECT count(*) FROM punches")).scalar_one()
    assert stored == len(pulled)

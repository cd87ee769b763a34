"""CentralStore.ingest_punches' bulk path (PostgreSQL COPY + one INSERT ... SELECT; SQLite one prepared statement).

Large batches are stored whole (no statement-size cut) with one answer per punch, new / duplicate decided
against the stored punches and within the batch, ids in the order the gateway sent; a failed ingest
leaves nothing behind and the next one on the same database session works; the same batch racing in on
two connections is stored once.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import event, func, select

from gateway.store import schema as s
from gateway.store.central import CentralStore, PunchQuery
from gateway.store.db import create_db_engine, upgrade
from tests.support.punches import make_punch

pytestmark = pytest.mark.timeout(120)
OFFICE = "1801.01"
BASE = datetime(2026, 11, 2, 7, 0)


@pytest.fixture
def engine(db_url: str) -> Iterator[Any]:
    # One pooled connection: every ingest below runs on the same database session.
    eng = create_db_engine(db_url, pool_size=1)
    upgrade(eng)
    yield eng
    eng.dispose()


def punches(start: int, n: int, serial: str = "SN1") -> list[Any]:
    return [make_punch(str(i), BASE + timedelta(seconds=i), office_code=OFFICE, serial=serial, uid=i % 3000)
            for i in range(start, start + n)]


def stored(engine: Any) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(s.punches)).scalar_one())


def ingest(store: CentralStore, batch: list[Any], batch_id: str, rejected: dict[int, str] | None = None
           ) -> dict[str, Any]:
    answer, replayed = store.ingest_punches(gateway="gw-a", office_code=OFFICE, batch_id=batch_id, digest=batch_id,
                                            punches=batch, rejected=rejected or {})
    assert not replayed
    return answer


def test_a_large_batch_is_stored_whole_with_one_answer_per_punch_in_the_order_sent(engine: Any) -> None:
    store = CentralStore(engine)
    assert ingest(store, punches(0, 300), "first")["new"] == 300
    # 2,500 punches: 300 already stored, one sent twice within the batch, one rejected upstream (None).
    batch: list[Any] = [*punches(0, 2500)]
    batch.insert(1000, punches(1500, 1)[0])
    batch[2000] = None
    answer = ingest(store, batch, "second", {2000: "bad_device_time: x"})
    results = answer["results"]
    assert [r["index"] for r in results] == list(range(2501))
    assert all(results[i]["duplicate"] for i in range(300))
    assert results[1000]["duplicate"] is False and results[1501]["duplicate"] is True  # the later copy
    assert results[2000] == {"index": 2000, "status": "rejected", "reason": "bad_device_time: x"}
    assert (answer["new"], answer["duplicates"], answer["rejected"]) == (2500 - 300 - 1, 301, 1)
    assert stored(engine) == 2499
    # Feed order (ids) follows the order the gateway sent.
    feed = [r["device_user_id"] for r in store.iter_punches(PunchQuery(), chunk=700)]
    expected = list(dict.fromkeys(p.device_user_id for p in batch[300:] if p is not None))  # first copy counts
    assert feed == [str(i) for i in range(300)] + expected
    assert store.receipt("gw-a", "second") == ("second", answer)
    assert [g["punches_received"] for g in store.gateways()] == [300 + 2199]


def test_a_failed_ingest_stores_nothing_and_the_next_on_the_same_session_works(engine: Any) -> None:
    store = CentralStore(engine)
    bad = punches(0, 5)
    # Refused mid-ingest (the API's validation would catch both first): PostgreSQL refuses a text longer than
    # its column while copying, after the staging table was created; SQLite takes any length, but the UTC
    # column type refuses a time without a zone.
    if engine.dialect.name == "postgresql":
        bad[3] = make_punch("x" * 100, BASE, office_code=OFFICE, serial="SN1")
    else:
        bad[3] = dataclasses.replace(bad[3], utc_time=bad[3].utc_time.replace(tzinfo=None))
    with pytest.raises(Exception):  # noqa: B017 - the driver's own error class differs per database
        ingest(store, bad, "bad")
    assert stored(engine) == 0 and store.receipt("gw-a", "bad") is None and store.gateways() == []
    assert ingest(store, punches(0, 5), "good")["new"] == 5
    assert ingest(store, punches(5, 5), "more")["new"] == 5
    assert stored(engine) == 10


def test_the_same_batch_on_two_connections_at_once_is_stored_once(db_url: str) -> None:
    eng = create_db_engine(db_url, pool_size=4)
    upgrade(eng)
    try:
        store = CentralStore(eng)
        batch = punches(0, 400)
        answers: list[tuple[dict[str, Any], bool]] = []
        start = threading.Barrier(2)

        def send() -> None:
            start.wait(10)
            answers.append(store.ingest_punches(gateway="gw-a", office_code=OFFICE, batch_id="same", digest="d",
                                                punches=batch, rejected={}))

        threads = [threading.Thread(target=send, name=f"ingest-{i}") for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert sorted(replayed for _, replayed in answers) == [False, True]
        assert answers[0][0] == answers[1][0] and answers[0][0]["new"] == 400
        assert stored(eng) == 400
        assert [g["punches_received"] for g in store.gateways()] == [400]
    finally:
        eng.dispose()


def test_many_gateways_at_once_on_sqlite_queue_for_the_write_lock_instead_of_failing(sqlite_url: str) -> None:
    # SQLite's busy handler made to give up after 1 ms: only writers queued in the process (CentralStore's
    # lock) get through; without it, concurrent ingests fail with "database is locked" (HTTP 500).
    eng = create_db_engine(sqlite_url, pool_size=8)
    upgrade(eng)

    @event.listens_for(eng, "connect")
    def impatient(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.execute("PRAGMA busy_timeout=1")

    eng.dispose()  # reconnect with the listener above
    store = CentralStore(eng)
    errors: list[BaseException] = []

    def gateway(g: int) -> None:
        try:
            for b in range(6):
                store.ingest_punches(gateway=f"gw-{g}", office_code=f"1801.{g:02d}", batch_id=f"{g}-{b}",
                                     digest="d", punches=[make_punch(str(i), BASE + timedelta(seconds=i),
                                                                     office_code=f"1801.{g:02d}", serial=f"SN{g}")
                                                          for i in range(b * 50, b * 50 + 50)], rejected={})
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=gateway, args=(g,), name=f"gw-{g}") for g in range(8)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors, errors[:1]
        assert stored(eng) == 8 * 6 * 50
    finally:
        eng.dispose()

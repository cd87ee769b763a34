"""Migration 0007_punch_indexes on a database holding data: punches (ids included) and the outbox survive the
re-keyed punches table and the outbox losing its foreign key, the key keeps deduplicating, the downgrade
restores the old shape; and an outbox row whose punch was deleted by hand no longer blocks the queue."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from alembic import command
from sqlalchemy import inspect, select

from gateway.models import Punch
from gateway.store import schema as s
from gateway.store.db import _alembic_config, create_db_engine, upgrade, writer
from gateway.store.outbox import Outbox
from gateway.store.punches import insert_punches, punch_row

OFFICE = "1801.01.02"


def mk(user: str, minute: int, serial: str = "SN1") -> Punch:
    local = datetime(2026, 11, 2, 7, 0) + timedelta(minutes=minute)
    return Punch(office_code=OFFICE, device_id="lobby", device_serial=serial, device_user_id=user,
                 device_time=local.strftime("%Y-%m-%d %H:%M:%S"), local_time=local,
                 utc_time=(local - timedelta(hours=7)).replace(tzinfo=UTC), timezone="Asia/Jakarta", state=0,
                 state_name="check_in", verify=1, verify_name="finger", employee_id=f"NIP{user}")


def shape(engine: object) -> tuple[list[str], set[str], int]:
    """(uq_punches_key columns in order, index names of punches, foreign keys of the outbox)."""
    with engine.connect() as conn:  # type: ignore[attr-defined]
        insp = inspect(conn)
        key = next(u["column_names"] for u in insp.get_unique_constraints("punches") if u["name"] == "uq_punches_key")
        indexes = {i["name"] for i in insp.get_indexes("punches") if i["name"].startswith("ix_")}
        fks = len(insp.get_foreign_keys("outbox"))
    return key, indexes, fks


@pytest.mark.timeout(90)
def test_0007_keeps_punches_and_outbox_and_the_downgrade_restores_the_old_shape(db_url: str) -> None:
    engine = create_db_engine(db_url, pool_size=1)
    try:
        with writer(engine).begin() as conn:
            command.upgrade(_alembic_config(conn), "0006_quarantine")
        assert shape(engine) == (["office_code", "device_serial", "device_user_id", "device_time", "occurrence"],
                                 {"ix_punches_utc_time", "ix_punches_office_code_utc_time",
                                  "ix_punches_employee_id_utc_time", "ix_punches_device_id_utc_time"}, 1)
        now = datetime.now(UTC)
        with writer(engine).begin() as conn:
            ids = [int(conn.execute(s.punches.insert().values(**punch_row(mk(u, m), now))
                                    .returning(s.punches.c.id)).scalar_one())
                   for u, m in (("1", 0), ("2", 1), ("3", 2))]
            conn.execute(s.outbox.insert(), [{"punch_id": i, "state": state, "attempts": 3, "next_attempt_at": now,
                                              "last_error": "nope" if state == "rejected" else None, "created_at": now}
                                             for i, state in zip(ids, ("pending", "rejected", "pending"), strict=True)])
        upgrade(engine)
        assert shape(engine) == (["office_code", "device_serial", "device_time", "device_user_id", "occurrence"],
                                 {"ix_punches_device_id_utc_time", "ix_punches_local_time_employee_id"}, 0)
        with engine.connect() as conn:
            box = conn.execute(select(s.outbox.c.punch_id, s.outbox.c.state, s.outbox.c.attempts,
                                      s.outbox.c.last_error).order_by(s.outbox.c.punch_id)).all()
            stored = conn.execute(select(s.punches.c.id, s.punches.c.device_user_id).order_by(s.punches.c.id)).all()
        assert [tuple(r) for r in box] == [(ids[0], "pending", 3, None), (ids[1], "rejected", 3, "nope"),
                                           (ids[2], "pending", 3, None)]
        assert [tuple(r) for r in stored] == [(ids[0], "1"), (ids[1], "2"), (ids[2], "3")]
        with writer(engine).begin() as conn:
            # The same key is still one punch; a new one is new.
            assert insert_punches(conn, [mk("1", 0), mk("2", 1)], received_at=now) == []
            assert len(insert_punches(conn, [mk("1", 0), mk("4", 3)], received_at=now)) == 1
            conn.execute(s.punches.delete().where(s.punches.c.id == ids[2]))  # by hand: its outbox row stays
        with writer(engine).begin() as conn:
            command.downgrade(_alembic_config(conn), "0006_quarantine")
        assert shape(engine)[1:] == ({"ix_punches_utc_time", "ix_punches_office_code_utc_time",
                                      "ix_punches_employee_id_utc_time", "ix_punches_device_id_utc_time"}, 1)
        assert shape(engine)[0][2] == "device_user_id"
        with engine.connect() as conn:
            # The row without its punch could not satisfy the restored key: dropped; the others kept.
            assert list(conn.execute(select(s.outbox.c.punch_id).order_by(s.outbox.c.punch_id)).scalars()) == ids[:2]
        upgrade(engine)
        assert shape(engine)[2] == 0
    finally:
        engine.dispose()


@pytest.mark.timeout(60)
def test_an_outbox_row_whose_punch_was_deleted_is_dropped_not_stuck(db_url: str) -> None:
    engine = create_db_engine(db_url, pool_size=2)
    try:
        upgrade(engine)
        now = datetime.now(UTC)
        with writer(engine).begin() as conn:
            ids = insert_punches(conn, [mk("1", 0), mk("2", 1), mk("3", 2)], received_at=now)
            conn.execute(s.outbox.insert(), [{"punch_id": i, "state": "pending", "attempts": 0,
                                              "next_attempt_at": now, "created_at": now} for i in ids])
            conn.execute(s.punches.delete().where(s.punches.c.id == ids[0]))  # e.g. a hand repair
        outbox = Outbox(engine, OFFICE)
        assert outbox.stats(now).depth == 3
        claimed = outbox.claim_batch(10, now)
        assert [i.punch_id for i in claimed] == ids[1:]
        assert [i.punch["device_user_id"] for i in claimed] == ["2", "3"]
        assert outbox.stats(now).depth == 2
        outbox.settle(accepted=ids[1:])
        assert outbox.stats(now).depth == 0 and outbox.claim_batch(10, now) == []
    finally:
        engine.dispose()

"""Migration 0005_office_bindings on a database holding data: punches, outbox and feed ids survive the
re-keyed punches table (SQLite copies the table: its outbox must not be cascade-deleted), serials already
forwarded are bound to their office, and two offices may then hold the same (serial, user, time)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from alembic import command
from sqlalchemy import func, select

from gateway.models import Punch
from gateway.store import schema as s
from gateway.store.db import _alembic_config, create_db_engine, upgrade
from gateway.store.punches import insert_punches, punch_row


def mk(user: str, serial: str, office: str, minute: int = 0) -> Punch:
    local = datetime(2026, 11, 2, 7, 0) + timedelta(minutes=minute)
    return Punch(office_code=office, device_id="lobby", device_serial=serial, device_user_id=user,
                 device_time=local.strftime("%Y-%m-%d %H:%M:%S"), local_time=local,
                 utc_time=(local - timedelta(hours=7)).replace(tzinfo=UTC), timezone="Asia/Jakarta", state=0,
                 state_name="check_in", verify=1, verify_name="finger")


@pytest.mark.timeout(90)
def test_0005_keeps_punches_and_outbox_and_binds_forwarded_serials(db_url: str) -> None:
    engine = create_db_engine(db_url, pool_size=1)
    try:
        with engine.begin() as conn:
            command.upgrade(_alembic_config(conn), "0004_punch_occurrence")
        now = datetime.now(UTC)
        with engine.begin() as conn:
            # Plain inserts: today's ON CONFLICT target does not exist before 0005.
            def put(p: Punch, source: str) -> int:
                return int(conn.execute(s.punches.insert().values(**punch_row(p, now, source))
                                        .returning(s.punches.c.id)).scalar_one())
            # An office's own polls (outbox rows) and forwarded punches: SN-A mostly from 1801.01.
            ids = [put(mk("1", "SN-L", "1801.01"), "poll"), put(mk("2", "SN-L", "1801.01"), "poll")]
            conn.execute(s.outbox.insert(), [{"punch_id": i, "state": "pending", "attempts": 0,
                                              "next_attempt_at": now, "created_at": now} for i in ids])
            for p in (mk("1", "SN-A", "1801.01"), mk("2", "SN-A", "1801.01"), mk("3", "SN-A", "1801.02"),
                      mk("1", "SN-B", "1801.02", 5)):
                put(p, "forward")
        upgrade(engine)
        with engine.connect() as conn:
            assert sorted(conn.execute(select(s.outbox.c.punch_id)).scalars()) == sorted(ids)
            assert conn.execute(select(func.count()).select_from(s.punches)).scalar_one() == 6
            bound = dict(conn.execute(select(s.device_bindings.c.serial, s.device_bindings.c.office_code)).all())
        assert bound == {"SN-A": "1801.01", "SN-B": "1801.02"}
        with engine.begin() as conn:
            # The same (serial, user, time) from another office is now its own punch; from the same office a
            # duplicate, as before.
            assert len(insert_punches(conn, [mk("1", "SN-A", "1801.02")], received_at=now, source="forward")) == 1
            assert insert_punches(conn, [mk("1", "SN-A", "1801.01")], received_at=now, source="forward") == []
            assert insert_punches(conn, [mk("2", "SN-L", "1801.01")], received_at=now) == []
    finally:
        engine.dispose()

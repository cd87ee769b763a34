"""Punch identity in the store (SQLite and PostgreSQL): migration 0004_punch_occurrence keeps existing rows'
identities, and the log epoch keeps a cleared log's same-time records apart from the earlier ones."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import Engine, select, text

from drivers.base import Counts, RawPunch
from gateway.config import parse_config
from gateway.models import PollOutcome
from gateway.polling.normalize import DeviceContext, normalize_punches
from gateway.store import schema as s
from gateway.store.db import _alembic_config, create_db_engine, upgrade, writer
from gateway.store.punches import OCCURRENCE_EPOCH_STRIDE, Store

pytestmark = pytest.mark.timeout(60)
RESET = "2000-01-01 00:00:00"
CTX = DeviceContext(office_code="1801.01.02", device_id="lobby", serial="SN1", timezone="Asia/Jakarta")


def raw(user: str, text_time: str) -> RawPunch:
    return RawPunch(user, text_time, datetime.strptime(text_time, "%Y-%m-%d %H:%M:%S"), 0, 1)


def save(store: Store, raws: list[RawPunch], records: int | None = None) -> int:
    now = datetime.now(UTC)
    outcome = PollOutcome(device_id="lobby", started_at=now, finished_at=now, ok=True, mode="full", serial="SN1",
                          counts=Counts(records=len(raws) if records is None else records, users=1))
    return store.save_poll(outcome, normalize_punches(raws, CTX), forward=True).new_punches


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    eng = create_db_engine(db_url)
    try:
        yield eng
    finally:
        eng.dispose()


def test_migration_keeps_the_identity_of_punches_stored_before_it(engine: Engine, tmp_path: Path) -> None:
    with writer(engine).begin() as conn:
        command.upgrade(_alembic_config(conn), "0003")
    now = datetime.now(UTC).replace(tzinfo=None).isoformat(sep=" ")
    with writer(engine).begin() as conn:
        for user, when, flags in (("7", RESET, "rtc_reset"), ("7", "2026-11-20 07:00:00", "")):
            conn.execute(text(
                "INSERT INTO punches (office_code, device_id, device_serial, device_user_id, device_time, timezone,"
                " state, state_name, verify, verify_name, uid, workcode, raw_time, flags, received_at, source) "
                "VALUES ('1801.01.02', 'lobby', 'SN1', :u, :t, 'Asia/Jakarta', 0, 'check_in', 1, 'fingerprint',"
                " 0, 0, -1, :f, :r, 'poll')"), {"u": user, "t": when, "f": flags, "r": now})
        # Both still wait to be forwarded.
        conn.execute(text("INSERT INTO outbox (punch_id, state, attempts, next_attempt_at, created_at) "
                          "SELECT id, 'pending', 2, :r, :r FROM punches"), {"r": now})
    assert upgrade(engine)[0] == "0003"
    with engine.connect() as conn:
        got = sorted(tuple(r) for r in conn.execute(select(s.punches.c.device_time, s.punches.c.occurrence)))
        # The table rebuild (SQLite) must not cascade into the outbox: the queue survives the upgrade.
        box = conn.execute(select(s.outbox.c.punch_id, s.outbox.c.attempts)).all()
        ids = set(conn.execute(select(s.punches.c.id)).scalars())
    assert got == [(RESET, 1), ("2026-11-20 07:00:00", 0)]
    assert {r[0] for r in box} == ids and {r[1] for r in box} == {2}
    store = Store(engine, "1801.01.02")
    store.sync_devices(parse_config({"site": {"office_code": "1801.01.02"},
                                     "devices": [{"id": "lobby", "address": "10.0.0.1"}]}, base_dir=tmp_path).devices)
    # The same log read by the new code: nothing new. A second record at the reset time: one new.
    assert save(store, [raw("7", RESET), raw("7", "2026-11-20 07:00:00")]) == 0
    assert save(store, [raw("7", RESET), raw("7", "2026-11-20 07:00:00"), raw("7", RESET)]) == 1


def test_log_epoch_moves_on_a_clear_by_fpgw_and_on_a_shrink(engine: Engine, tmp_path: Path) -> None:
    upgrade(engine)
    store = Store(engine, "1801.01.02")
    store.sync_devices(parse_config({"site": {"office_code": "1801.01.02"},
                                     "devices": [{"id": "lobby", "address": "10.0.0.1"}]}, base_dir=tmp_path).devices)
    log = [raw("7", RESET), raw("7", RESET)]
    assert save(store, log) == 2
    keys = {p.key for p in normalize_punches(log, CTX)}
    assert store.missing_keys("SN1", keys) == set()
    now = datetime.now(UTC)
    store.record_clear("lobby", "SN1", started_at=now, finished_at=now, records_cleared=2)
    # After the clear the same numbers mean other records: not stored yet, until saved.
    assert store.missing_keys("SN1", keys) == keys
    assert save(store, log) == 2 and store.missing_keys("SN1", keys) == set()
    assert save(store, [*log, raw("7", RESET)]) == 1
    assert save(store, [raw("7", RESET)]) == 1  # 3 -> 1 record: cleared at the keypad, a new punch
    with engine.connect() as conn:
        occ = sorted(conn.execute(select(s.punches.c.occurrence)).scalars())
    stride = OCCURRENCE_EPOCH_STRIDE
    assert occ == [1, 2, stride + 1, stride + 2, stride + 3, 2 * stride + 1]

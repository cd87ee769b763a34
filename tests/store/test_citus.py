"""The central's store on a Citus cluster (marker ``citus``): migrate, distribute (gateway.store.citus), then the
central's paths - idempotent ingest, office isolation, the feed in id order, partition maintenance.

Runs only when GW_TEST_CITUS_URL names a database on a Citus COORDINATOR with the citus extension created and
workers added (docs/scale-out.md "Running the citus test"). The test EMPTIES that database first (drops the public
and fpgw_partitions schemas): give it a throwaway one. Without the variable every test here is skipped with that
reason; the citus extension is not installable on the project's build machine.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, date, datetime

import pytest
from sqlalchemy import Engine, text

from gateway.models import Punch
from gateway.store import partitions as parts
from gateway.store.central import CentralStore, PunchQuery
from gateway.store.citus import distribute, is_citus
from gateway.store.db import create_db_engine, upgrade, writer
from tests.support.punches import make_punch

URL_ENV = "GW_TEST_CITUS_URL"
pytestmark = [pytest.mark.citus, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def citus() -> Iterator[Engine]:
    url = os.environ.get(URL_ENV)
    if not url:
        pytest.skip(f"citus: set {URL_ENV} to a throwaway database on a Citus coordinator (extension created, "
                    "workers added) to run these; see docs/scale-out.md")
    engine = create_db_engine(url, pool_size=4)
    try:
        if not is_citus(engine):
            pytest.fail(f"{URL_ENV} names a database without the citus extension")
        with writer(engine).begin() as conn:
            conn.execute(text("DROP SCHEMA IF EXISTS fpgw_partitions CASCADE"))
            conn.execute(text("DROP SCHEMA IF EXISTS public CASCADE"))
            conn.execute(text("CREATE SCHEMA public"))
        upgrade(engine)
        assert distribute(engine)
        assert distribute(engine) == []  # idempotent
        yield engine
    finally:
        engine.dispose()


def p(user: str, office: str = "1801.01", month: date = date(2026, 11, 1), day: int = 3) -> Punch:
    return make_punch(user, datetime(month.year, month.month, day, 7, 0), office_code=office, serial=f"SN-{office}")


def ingest(engine: Engine, punches: list[Punch], batch: str, office: str = "1801.01") -> tuple[dict[str, object], bool]:
    return CentralStore(engine).ingest_punches(gateway=f"gw-{office}", office_code=office, batch_id=batch,
                                               digest=batch, punches=punches, rejected={})


def test_punches_is_distributed_by_office_and_the_small_tables_are_reference_tables(citus: Engine) -> None:
    with citus.connect() as conn:
        kinds = dict(conn.execute(text("SELECT logicalrelid::regclass::text, partmethod FROM pg_dist_partition")
                                  ).tuples().all())
    assert kinds["punches"] == "h" and kinds["gateways"] == "n" and kinds["device_bindings"] == "n"


def test_ingest_is_idempotent_and_offices_stay_apart(citus: Engine) -> None:
    first, replayed = ingest(citus, [p("1"), p("2")], "c1")
    assert first["new"] == 2 and not replayed
    assert ingest(citus, [p("1"), p("2")], "c1") == (first, True)
    again, _ = ingest(citus, [p("1"), p("3")], "c2")
    assert again["new"] == 1 and again["duplicates"] == 1
    other, _ = ingest(citus, [p("1", office="1802.01")], "c3", office="1802.01")
    assert other["new"] == 1  # the same key in another office is another punch


def test_the_feed_pages_in_id_order_across_shards_and_months(citus: Engine) -> None:
    sent = []
    for i in range(30):
        office = f"18{i % 5:02d}.09"
        punch = p(f"f{i}", office=office, month=date(2026, 9 + i % 3, 1), day=1 + i)
        ingest(citus, [punch], f"f{i}", office=office)
        sent.append(punch.device_user_id)
    store, seen, after = CentralStore(citus), [], 0
    while True:
        rows, after = store.feed(PunchQuery(), after, 4)
        if not rows:
            break
        seen += [r["device_user_id"] for r in rows if r["device_user_id"].startswith("f")]
    assert seen == sent


def test_partition_maintenance_works_on_the_distributed_table(citus: Engine) -> None:
    far = parts.add_months(datetime.now(UTC).date().replace(day=1), 9)
    ingest(citus, [p("m1", month=far)], "m1")
    result = parts.ensure_partitions(citus, today=datetime.now(UTC).date(), months_ahead=9)
    assert result.moved.get(parts.partition_name(far)) == 1

"""One meaning of "day X" in every punch query: the date of the punch's local wall-clock time.

A terminal set to WIT (UTC+9) in a WIB (UTC+7) office: its punch at 00:30 on the 23rd is 22:30 on the 22nd in
WIB. `fpgw punches` (store.punches.iter_punches) and `fpgw export` / the BKD pull API (store.central) must put it
on the same day: the 23rd, the day the employee saw on the terminal.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from gateway.config import parse_config
from gateway.store.central import CentralStore, PunchQuery
from gateway.store.db import create_db_engine, upgrade
from gateway.store.punches import Store, iter_punches
from tests.support.punches import make_punch, store_punches

OFFICE = "1801.01.02"


def test_office_and_central_queries_agree_on_the_day_of_a_punch_from_another_zone(db_url: str, tmp_path: Path) -> None:
    engine = create_db_engine(db_url)
    try:
        upgrade(engine)
        config = parse_config({"site": {"office_code": OFFICE, "timezone": "Asia/Jakarta"},
                               "devices": [{"id": "papua", "address": "10.0.0.9", "timezone": "Asia/Jayapura"}]},
                              base_dir=tmp_path)
        store = Store(engine, OFFICE)
        store.sync_devices(config.devices)
        local = datetime(2026, 11, 23, 0, 30)
        wit = make_punch("1001", local, office_code=OFFICE, device_id="papua", serial="SN-WIT")
        wit = type(wit)(**{**{f: getattr(wit, f) for f in wit.__dataclass_fields__},
                          "timezone": "Asia/Jayapura", "utc_time": (local - timedelta(hours=9)).replace(tzinfo=UTC)})
        wib = make_punch("1002", datetime(2026, 11, 22, 23, 0), office_code=OFFICE, device_id="papua",
                         serial="SN-WIT")
        store_punches(store, [wit, wib], device_id="papua")

        def office_day(day: date) -> set[str]:
            return {r["device_user_id"] for r in iter_punches(engine, PunchQuery(date_from=day, date_to=day))}

        def central_day(day: date) -> set[str]:
            rows = CentralStore(engine).iter_punches(PunchQuery(date_from=day, date_to=day))
            return {r["device_user_id"] for r in rows}

        for day in (date(2026, 11, 22), date(2026, 11, 23)):
            assert office_day(day) == central_day(day), day
        assert office_day(date(2026, 11, 23)) == {"1001"}
        assert office_day(date(2026, 11, 22)) == {"1002"}
    finally:
        engine.dispose()


def test_one_query_type_selects_the_same_punches_at_the_office_and_the_central(db_url: str, tmp_path: Path) -> None:
    """PunchQuery is shared: every field means the same to iter_punches and CentralStore (limit included)."""
    engine = create_db_engine(db_url)
    try:
        upgrade(engine)
        config = parse_config({"site": {"office_code": OFFICE, "timezone": "Asia/Jakarta"},
                               "devices": [{"id": "lobby", "address": "10.0.0.9"},
                                           {"id": "hall", "address": "10.0.0.10"}]}, base_dir=tmp_path)
        store = Store(engine, OFFICE)
        store.sync_devices(config.devices)
        store_punches(store, [make_punch(str(i), datetime(2026, 11, 20 + i % 3, 8, i), office_code=OFFICE,
                                         employee_id=f"NIP{i % 2}") for i in range(6)], device_id="lobby")
        store_punches(store, [make_punch("9", datetime(2026, 11, 21, 9, 0), office_code=OFFICE, device_id="hall",
                                         serial="SN2")], device_id="hall")
        queries = [PunchQuery(), PunchQuery(device_id="hall"), PunchQuery(employee_id="NIP1"),
                   PunchQuery(device_user_id="4"), PunchQuery(office_code=OFFICE, date_from=date(2026, 11, 21)),
                   PunchQuery(offices=frozenset({"elsewhere"})), PunchQuery(offices=frozenset({OFFICE}),
                                                                            date_to=date(2026, 11, 20))]
        for query in queries:
            office = sorted(r["device_user_id"] for r in iter_punches(engine, query))
            central = sorted(r["device_user_id"] for r in CentralStore(engine).iter_punches(query))
            assert office == central, query
        assert len(list(iter_punches(engine, PunchQuery(limit=3)))) == 3
        assert len(list(CentralStore(engine).iter_punches(PunchQuery(limit=3), chunk=2))) == 3
        assert sorted(r["device_user_id"] for r in iter_punches(engine, PunchQuery(device_id="hall"))) == ["9"]
    finally:
        engine.dispose()

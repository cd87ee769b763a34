"""Property: whatever an export holds (good records, dead-clock duplicates, broken lines), importing it a second
time adds nothing, neither punches nor quarantine rows, and every record of the file is then stored."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.config import parse_config
from gateway.store import schema as s
from gateway.store.db import create_db_engine, upgrade
from gateway.store.punches import Store
from gateway.store.quarantine import QuarantineRepo
from gateway.usbimport.importer import ImportRefused, UsbImporter
from tests.support.config import OFFICE_CODE
from tests.support.gateway import table_rows
from tests.support.usb import attlog_text

_TIME = st.one_of(
    st.just(datetime(2000, 1, 1, 0, 0, 0)),  # a dead clock: many records share this time
    st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2030, 12, 31)).map(
        lambda d: d.replace(microsecond=0)),
)
_RECORD = st.tuples(st.sampled_from(["1", "2", "15", "NIP1990", "7"]), _TIME.map(lambda d: f"{d:%Y-%m-%d %H:%M:%S}"),
                    st.integers(0, 5), st.integers(0, 25))
_NOISE = st.sampled_from([b"garbage\r\n", b"  3\t2026-11-02 07:58\t1\t0\t1\t0\r\n", b"\t2026-11-02 07:58:03\r\n",
                          b"9\t31/12/2026 07:00:00\r\n"])


@pytest.mark.timeout(240)
def test_a_second_import_of_any_export_adds_nothing(tmp_path: Path) -> None:
    db_url = f"sqlite:///{tmp_path / 'fpgw.db'}"
    config = parse_config({"site": {"office_code": OFFICE_CODE, "state_dir": str(tmp_path)},
                           "database": {"url": db_url},
                           "devices": [{"id": "lobby", "address": "127.0.0.1", "serial": "PROP0001"}]},
                          base_dir=tmp_path)
    engine = create_db_engine(db_url)
    upgrade(engine)
    store = Store(engine, OFFICE_CODE)
    store.sync_devices(config.devices)
    importer = UsbImporter(config, store)
    counter = iter(range(10**6))

    @settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.lists(_RECORD, max_size=30), st.lists(st.tuples(st.integers(0, 30), _NOISE), max_size=4))
    def run(records: list[tuple[str, str, int, int]], noise: list[tuple[int, bytes]]) -> None:
        lines = attlog_text(records).splitlines(keepends=True)
        for at, line in noise:
            lines.insert(min(at, len(lines)), line)
        name = f"case{next(counter)}_attlog.dat"
        data = b"".join(lines)
        try:
            first = importer.import_bytes(data, device_id="lobby", file_name=name, force=True)
        except ImportRefused:
            assert not records  # only a file of noise alone is no export
            return
        assert first.records == len(records)
        again = importer.import_bytes(data, device_id="lobby", file_name=name, force=True)
        assert (again.new, again.known, again.quarantined) == (0, len(records), 0)
        assert store.missing_keys("PROP0001", [("PROP0001", u, t, 0) for u, t, _, _ in records
                                               if not t.startswith("2000-")]) == set()

    try:
        run()
        quarantined = QuarantineRepo(engine).stored("lobby")
        assert quarantined == len({(q.origin, q.raw) for q in QuarantineRepo(engine).recent("lobby", 10_000)})
        assert len(table_rows(db_url, s.punches)) > 0
    finally:
        engine.dispose()

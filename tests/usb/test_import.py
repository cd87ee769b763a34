"""UsbImporter on SQLite and PostgreSQL: punches land exactly once, the wrong file is refused with a clear reason,
unreadable lines are quarantined in the import's transaction, and an import never passes for a poll."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from sqlalchemy import select

from gateway.config import Config, parse_config
from gateway.store import schema as s
from gateway.store.db import create_db_engine, upgrade
from gateway.store.punches import Store
from gateway.store.quarantine import QuarantineRepo
from gateway.usbimport.importer import ImportRefused, UsbImporter
from tests.support.config import OFFICE_CODE
from tests.support.gateway import table_rows
from tests.support.punches import make_punch, store_punches
from tests.support.usb import attlog_text

FIXTURES = Path(__file__).parent / "fixtures"
SERIAL = "USBTEST0001"
NOW = datetime(2026, 12, 1, 12, 0)


def _config(db_url: str, tmp_path: Path, serial: str | None = SERIAL) -> Config:
    device = {"id": "lobby", "address": "127.0.0.1", **({"serial": serial} if serial else {})}
    return parse_config({"site": {"office_code": OFFICE_CODE, "timezone": "Asia/Jakarta", "state_dir": str(tmp_path)},
                         "database": {"url": db_url}, "devices": [device, {"id": "hall", "address": "127.0.0.2"}]},
                        base_dir=tmp_path)


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    engine = create_db_engine(db_url)
    upgrade(engine)
    yield Store(engine, OFFICE_CODE)
    engine.dispose()


def _importer(config: Config, store: Store) -> UsbImporter:
    store.sync_devices(config.devices)
    return UsbImporter(config, store)


def _keys(db_url: str) -> list[tuple[str, str, str, int]]:
    return sorted((r["device_serial"], r["device_user_id"], r["device_time"], r["occurrence"])
                  for r in table_rows(db_url, s.punches))


@pytest.mark.timeout(60)
def test_import_stores_each_punch_once_and_a_reimport_adds_nothing(db_url: str, tmp_path: Path, store: Store) -> None:
    importer = _importer(_config(db_url, tmp_path), store)
    first = importer.import_file(FIXTURES / "with_bad_lines_attlog.dat", device_id="lobby")
    assert (first.records, first.new, first.known, first.quarantined) == (3, 3, 0, 4)
    assert first.serial == SERIAL and first.serial_from == "config"
    assert first.flag_counts == {"impossible_date": 1}
    again = importer.import_file(FIXTURES / "with_bad_lines_attlog.dat", device_id="lobby")
    assert (again.records, again.new, again.known, again.quarantined) == (3, 0, 3, 0)
    assert _keys(db_url) == [(SERIAL, "7", "2026-02-31 17:00:00", 1), (SERIAL, "7", "2026-11-04 07:30:00", 0),
                             (SERIAL, "7", "2026-11-04 17:01:02", 0)]
    assert {r["source"] for r in table_rows(db_url, s.punches)} == {"poll"}  # save_poll's one path
    quarantined = QuarantineRepo(store.engine).recent("lobby")
    assert sorted(q.origin for q in quarantined) == [f"with_bad_lines_attlog.dat:{n}" for n in (2, 3, 4, 5)]
    assert {q.source for q in quarantined} == {"usb"}
    assert len(table_rows(db_url, s.outbox)) == 0  # [forward] not configured: nothing queued


@pytest.mark.timeout(60)
def test_an_import_is_recorded_as_such_and_never_marks_the_device_polled(db_url: str, tmp_path: Path,
                                                                         store: Store) -> None:
    importer = _importer(_config(db_url, tmp_path), store)
    importer.import_file(FIXTURES / "1_attlog.dat", device_id="lobby")
    runs = table_rows(db_url, s.poll_runs)
    assert [(r["outcome"], r["records_read"], r["new_records"]) for r in runs] == [("usb_import", 4, 4)]
    assert "1_attlog.dat" in runs[0]["error"]
    device = next(r for r in table_rows(db_url, s.devices) if r["device_id"] == "lobby")
    assert device["last_ok_at"] is None and device["last_seen_at"] is None
    assert device["last_punch_at"] is not None


@pytest.mark.timeout(60)
def test_a_file_naming_another_serial_is_refused_unless_forced(db_url: str, tmp_path: Path, store: Store) -> None:
    importer = _importer(_config(db_url, tmp_path, serial="OTHER000042"), store)
    with pytest.raises(ImportRefused, match="first line says serial USBTEST0001, but device lobby has serial "
                                            "OTHER000042"):
        importer.import_file(FIXTURES / "extended_attlog.dat", device_id="lobby")
    export = tmp_path / "ZZZ9876543_attlog.dat"
    export.write_bytes((FIXTURES / "1_attlog.dat").read_bytes())
    with pytest.raises(ImportRefused, match="file name says serial ZZZ9876543"):
        importer.import_file(export, device_id="lobby")
    assert _keys(db_url) == [] and table_rows(db_url, s.poll_runs) == []
    forced = importer.import_file(FIXTURES / "extended_attlog.dat", device_id="lobby", force=True)
    assert forced.new == 4 and forced.serial == "OTHER000042" and forced.notes[0].startswith("forced:")


@pytest.mark.timeout(60)
def test_a_file_whose_punches_are_unknown_where_the_store_has_others_is_refused(db_url: str, tmp_path: Path,
                                                                               store: Store) -> None:
    importer = _importer(_config(db_url, tmp_path), store)
    # Punches of lobby stored by polls on the same morning as the file, none of them the file's.
    store_punches(store, [make_punch("77", datetime(2026, 11, 2, 7, 0), serial=SERIAL),
                          make_punch("78", datetime(2026, 11, 2, 12, 0), serial=SERIAL)], forward=False)
    with pytest.raises(ImportRefused, match=r"does not look like an export of device lobby.*2026-11-02 12:00:00"):
        importer.import_file(FIXTURES / "1_attlog.dat", device_id="lobby")
    # The same file for a device without punches in that span is fine, and --force imports it anyway.
    assert importer.import_file(FIXTURES / "1_attlog.dat", device_id="lobby", force=True).new == 4
    # A file of later punches only (the log was cleared after the last poll) is no reason to refuse.
    later = tmp_path / "later.dat"
    later.write_bytes(attlog_text([("77", "2026-11-20 07:00:00", 0, 1)]))
    assert importer.import_file(later, device_id="lobby").new == 1


@pytest.mark.timeout(60)
def test_unknown_serial_unknown_device_and_not_an_export_are_refused(db_url: str, tmp_path: Path,
                                                                     store: Store) -> None:
    importer = _importer(_config(db_url, tmp_path, serial=None), store)
    with pytest.raises(ImportRefused, match="serial number of device lobby is not known"):
        importer.import_file(FIXTURES / "1_attlog.dat", device_id="lobby")
    with pytest.raises(ImportRefused, match="no device 'gate'"):
        importer.import_file(FIXTURES / "1_attlog.dat", device_id="gate")
    notes = tmp_path / "notes.txt"
    notes.write_text("shopping list\nmilk\n")
    with pytest.raises(ImportRefused, match="none of the 2 lines is an attendance record"):
        importer.import_file(notes, device_id="lobby")
    with pytest.raises(ImportRefused, match="cannot read"):
        importer.import_file(tmp_path / "missing.dat", device_id="lobby")
    assert _keys(db_url) == []
    # The serial from --serial, or from the file's own first line.
    assert importer.import_file(FIXTURES / "1_attlog.dat", device_id="lobby", serial="GIVEN00001").serial_from \
        == "--serial"
    report = importer.import_file(FIXTURES / "extended_attlog.dat", device_id="hall")
    assert (report.serial, report.serial_from, report.new) == ("USBTEST0001", "file", 4)


@pytest.mark.timeout(60)
def test_dry_run_reports_and_stores_nothing(db_url: str, tmp_path: Path, store: Store) -> None:
    importer = _importer(_config(db_url, tmp_path), store)
    report = importer.import_file(FIXTURES / "with_bad_lines_attlog.dat", device_id="lobby", dry_run=True)
    assert (report.dry_run, report.records, report.new, report.quarantined) == (True, 3, 3, 4)
    assert _keys(db_url) == [] and table_rows(db_url, s.poll_runs) == []
    assert QuarantineRepo(store.engine).stored("lobby") == 0


@pytest.mark.timeout(60)
def test_quarantine_rows_are_written_in_the_punches_transaction(db_url: str, tmp_path: Path, store: Store,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A failure after the punches were inserted rolls back the quarantine rows too (one transaction)."""
    importer = _importer(_config(db_url, tmp_path), store)
    import gateway.store.punches as punches_module

    def broken(conn: object, items: object) -> int:
        raise RuntimeError("disk pulled out")

    monkeypatch.setattr(punches_module, "insert_quarantined", broken)
    with pytest.raises(RuntimeError):
        importer.import_file(FIXTURES / "with_bad_lines_attlog.dat", device_id="lobby")
    assert _keys(db_url) == []
    with store.engine.connect() as conn:
        assert conn.execute(select(s.quarantine.c.id)).all() == []

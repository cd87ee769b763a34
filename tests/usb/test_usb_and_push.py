"""A push terminal's uploads and a USB export of the same terminal (SQLite and PostgreSQL): the same punches.

A terminal that pushes over HTTP can also lose its network; its USB export must then store exactly the records
the receiver did not get, in either order.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.store import schema as s
from gateway.usbimport.importer import UsbImporter
from tests.support.gateway import table_rows
from tests.support.push import SERIAL, Rig, make_rig
from tests.support.usb import attlog_text

UPLOADED = [("101", "2026-11-29 07:01:02", 0, 1), ("102", "2026-11-29 07:03:09", 0, 15)]
LATER = [("101", "2026-11-29 16:30:00", 1, 1), ("103", "2026-11-29 16:31:40", 1, 4)]


@pytest.fixture
def rig(db_url: str, tmp_path: Path) -> Iterator[Rig]:
    yield from make_rig(db_url, tmp_path)


@pytest.mark.timeout(60)
def test_push_uploads_then_usb_export_store_each_record_once(rig: Rig, tmp_path: Path) -> None:
    body = "".join(f"{u}\t{t}\t{st}\t{v}\t0\t0\t0\t0\t0\t0\n" for u, t, st, v in UPLOADED)
    assert rig.post("/iclock/cdata", body, table="ATTLOG", Stamp="1").status_code == 200
    export = tmp_path / f"{SERIAL}_attlog.dat"
    export.write_bytes(attlog_text(UPLOADED + LATER))
    importer = UsbImporter(rig.config, rig.receiver.store)
    report = importer.import_file(export, device_id="p1")
    assert (report.serial_from, report.new, report.known) == ("store", 2, 2)
    # The network is back: the terminal sends what it never got acknowledged.
    body = "".join(f"{u}\t{t}\t{st}\t{v}\t0\t0\t0\t0\t0\t0\n" for u, t, st, v in LATER)
    assert rig.post("/iclock/cdata", body, table="ATTLOG", Stamp="2").status_code == 200
    rows = table_rows(rig.db_url, s.punches)
    assert sorted((r["device_user_id"], r["device_time"]) for r in rows) == sorted(
        (u, t) for u, t, _, _ in UPLOADED + LATER)

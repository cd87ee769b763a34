"""`fpgw import usb`, the drop folder (DropFolder, and the daemon's service) and the [import] config."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest

from gateway.config import ConfigError, parse_config
from gateway.store import schema as s
from gateway.store.db import create_db_engine, upgrade
from gateway.store.punches import Store
from gateway.usbimport.importer import UsbImporter
from gateway.usbimport.watcher import DropFolder, DropFolderService
from tests.support.cli import run_cli
from tests.support.config import OFFICE_CODE, config_dict, make_config, write_toml
from tests.support.gateway import RunningGateway, table_rows

FIXTURES = Path(__file__).parent / "fixtures"
REPO = Path(__file__).resolve().parents[2]
SERIAL = "USBTEST0001"


def _doc(db_url: str, tmp_path: Path, **imports: object) -> dict[str, object]:
    return {"site": {"office_code": OFFICE_CODE, "timezone": "Asia/Jakarta", "state_dir": str(tmp_path / "state")},
            "database": {"url": db_url}, "http": {"enabled": False},
            "devices": [{"id": "lobby", "address": "127.0.0.1", "serial": SERIAL}],
            **({"import": imports} if imports else {})}


@pytest.mark.timeout(60)
def test_cli_prints_what_it_read_stored_skipped_and_quarantined(db_url: str, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str],
                                                               restore_logging: None) -> None:
    cfg = str(write_toml(_doc(db_url, tmp_path), tmp_path / "config.toml"))
    export = str(FIXTURES / "with_bad_lines_attlog.dat")
    code, out, err = run_cli(capsys, "--config", cfg, "import", "usb", export, "--device", "lobby", "--dry-run")
    assert code == 0, err
    assert "would store  3 new punches" in out and "dry run: nothing was stored" in out
    code, out, err = run_cli(capsys, "--config", cfg, "import", "usb", export, "--device", "lobby")
    assert code == 0, err
    assert "read         3 records, 2026-02-31 17:00:00 .. 2026-11-04 17:01:02" in out
    assert "stored       3 new punches" in out and "skipped      0 already stored" in out
    assert "quarantined  4 unreadable lines" in out and "serial USBTEST0001 (from config)" in out
    assert "(text, machine number 1), device lobby" in out
    code, out, err = run_cli(capsys, "--config", cfg, "import", "usb", export, "--device", "lobby", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert (report["new"], report["known"], report["quarantined"]) == (0, 3, 0)
    assert len(table_rows(db_url, s.punches)) == 3
    code, out, err = run_cli(capsys, "--config", cfg, "devices", "--json")
    assert code == 0, err
    lobby = next(d for d in json.loads(out) if d["device_id"] == "lobby")
    assert lobby["last_poll_outcome"] == "usb_import" and "with_bad_lines_attlog.dat" in lobby["last_poll_error"]
    assert lobby["last_ok_at"] is None
    code, out, err = run_cli(capsys, "--config", cfg, "devices")
    assert code == 0, err
    line = next(row for row in out.splitlines() if row.startswith("lobby"))
    assert "last read: USB import" in line and "last poll: usb_import" not in line


@pytest.mark.timeout(60)
def test_cli_refuses_the_wrong_file_with_one_clear_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                       restore_logging: None) -> None:
    db_url = f"sqlite:///{tmp_path / 'fpgw.db'}"
    doc = _doc(db_url, tmp_path)
    doc["devices"] = [{"id": "lobby", "address": "127.0.0.1", "serial": "OTHER000042"}]
    cfg = str(write_toml(doc, tmp_path / "config.toml"))
    code, out, err = run_cli(capsys, "--config", cfg, "import", "usb", str(FIXTURES / "extended_attlog.dat"),
                             "--device", "lobby")
    assert code == 1 and out == ""
    assert err.startswith("fpgw: not imported: extended_attlog.dat: the file's first line says serial USBTEST0001")
    assert "--force" in err and len(err.strip().splitlines()) == 1
    code, out, err = run_cli(capsys, "--config", cfg, "import", "usb", str(FIXTURES / "extended_attlog.dat"),
                             "--device", "lobby", "--force")
    assert code == 0 and "note         forced:" in out, err


def _folder(tmp_path: Path) -> tuple[DropFolder, Store, str]:
    db_url = f"sqlite:///{tmp_path / 'fpgw.db'}"
    config = parse_config(_doc(db_url, tmp_path), base_dir=tmp_path)
    engine = create_db_engine(db_url)
    upgrade(engine)
    store = Store(engine, OFFICE_CODE)
    store.sync_devices(config.devices)
    folder = DropFolder(tmp_path / "drop", UsbImporter(config, store))
    folder.prepare()
    return folder, store, db_url


@pytest.mark.timeout(60)
def test_drop_folder_imports_a_file_once_it_stopped_changing_and_files_it_away(tmp_path: Path) -> None:
    folder, store, db_url = _folder(tmp_path)
    try:
        prefixed = folder.folder / "lobby__1_attlog.dat"
        prefixed.write_bytes((FIXTURES / "1_attlog.dat").read_bytes())
        (folder.folder / "lobby").mkdir()
        inside = folder.folder / "lobby" / "attlog.dat"
        inside.write_bytes((FIXTURES / "with_bad_lines_attlog.dat").read_bytes()[:60])  # still being copied
        assert {d.file_name: r for d, r in folder.scan_once()} == {"1_attlog.dat": "waiting", "attlog.dat": "waiting"}
        inside.write_bytes((FIXTURES / "with_bad_lines_attlog.dat").read_bytes())  # the copy goes on
        assert {d.file_name: r for d, r in folder.scan_once()} == {"1_attlog.dat": "done", "attlog.dat": "waiting"}
        assert {d.file_name: r for d, r in folder.scan_once()} == {"attlog.dat": "done"}
        assert folder.scan_once() == []
        done = sorted(p.name for p in (folder.folder / "done").iterdir())
        assert len(done) == 4 and all("lobby__" in n for n in done)
        reason = next(p for p in (folder.folder / "done").iterdir() if p.name.endswith("1_attlog.dat.reason.txt"))
        assert "4 records read, stored 4 new" in reason.read_text()
        assert len(table_rows(db_url, s.punches)) == 7
    finally:
        store.engine.dispose()


@pytest.mark.timeout(60)
def test_drop_folder_sets_refused_files_aside_with_the_reason(tmp_path: Path) -> None:
    folder, store, _ = _folder(tmp_path)
    try:
        (folder.folder / "no_prefix.dat").write_bytes((FIXTURES / "1_attlog.dat").read_bytes())
        (folder.folder / "gate__attlog.dat").write_bytes((FIXTURES / "1_attlog.dat").read_bytes())
        (folder.folder / "lobby__ZZZ9876543_attlog.dat").write_bytes((FIXTURES / "1_attlog.dat").read_bytes())
        (folder.folder / ".lobby__partial.dat").write_bytes(b"hidden: a copy tool's temporary file")
        folder.scan_once()
        assert {r for _, r in folder.scan_once()} == {"failed"}
        reasons = {p.name.split("_", 1)[1]: p.read_text() for p in (folder.folder / "failed").iterdir()
                   if p.name.endswith(".reason.txt")}
        assert "does not say which device" in reasons["no_prefix.dat.reason.txt"]
        assert "no device 'gate'" in reasons["gate__attlog.dat.reason.txt"]
        assert "file name says serial ZZZ9876543" in reasons["lobby__ZZZ9876543_attlog.dat.reason.txt"]
        assert (folder.folder / ".lobby__partial.dat").exists()
    finally:
        store.engine.dispose()


@pytest.mark.timeout(60)
def test_a_file_that_cannot_be_moved_is_imported_once_and_then_left_alone(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    folder, store, db_url = _folder(tmp_path)
    try:
        (folder.folder / "lobby__1_attlog.dat").write_bytes((FIXTURES / "1_attlog.dat").read_bytes())

        def refuse(src: object, dst: object) -> None:
            raise PermissionError("read-only folder")

        monkeypatch.setattr("gateway.usbimport.watcher.os.replace", refuse)
        folder.scan_once()
        assert [r for _, r in folder.scan_once()] == ["done"]
        assert folder.scan_once() == [] and folder.scan_once() == []
        assert len(table_rows(db_url, s.poll_runs)) == 1  # imported once, not once per scan
    finally:
        store.engine.dispose()


def test_import_section_is_validated_and_defaults_to_the_state_dir(tmp_path: Path) -> None:
    db_url = f"sqlite:///{tmp_path / 'fpgw.db'}"
    cfg = parse_config(_doc(db_url, tmp_path), base_dir=tmp_path)
    assert (cfg.usb_import.enabled, cfg.usb_import.folder, cfg.usb_import.scan_every_s) == (
        False, tmp_path / "state" / "import", 5.0)
    cfg = parse_config(_doc(db_url, tmp_path, enabled=True, folder="drop", scan_every_s="10s"), base_dir=tmp_path)
    assert (cfg.usb_import.enabled, cfg.usb_import.folder, cfg.usb_import.scan_every_s) == (True, tmp_path / "drop",
                                                                                           10.0)
    with pytest.raises(ConfigError) as exc:
        parse_config(_doc(db_url, tmp_path, enabled="yes", scan_every_s=0, colour="red"), base_dir=tmp_path)
    text = "\n".join(exc.value.problems)
    assert "import.enabled" in text and "import.scan_every_s" in text and "import.colour" in text


def test_the_example_config_documents_the_import_section() -> None:
    data = tomllib.loads((REPO / "config.example.toml").read_text(encoding="utf-8"))
    assert set(data["import"]) == {"enabled", "scan_every_s"}


@pytest.mark.timeout(60)
def test_the_daemon_watches_the_folder_only_when_enabled(tmp_path: Path) -> None:
    db_url = f"sqlite:///{tmp_path / 'fpgw.db'}"
    with RunningGateway(make_config(db_url, [], tmp_path)) as gw:
        assert not any(isinstance(x, DropFolderService) for x in gw.gateway.services)
    config = parse_config(config_dict(db_url, [], **{"import": {"enabled": True, "folder": "drop",
                                                                 "scan_every_s": 3600}}), base_dir=tmp_path)
    with RunningGateway(config) as gw:
        service = next(x for x in gw.gateway.services if isinstance(x, DropFolderService))
        assert (tmp_path / "drop" / "done").is_dir() and (tmp_path / "drop" / "failed").is_dir()
        assert gw.gateway.scheduler.get_job("usb-import") is not None
        # The daemon's own timer is an hour away: the test scans itself (never racing the schedule).
        (tmp_path / "drop" / "nobody__x.dat").write_bytes(b"x")
        service.folder.scan_once()
        assert [r for _, r in service.folder.scan_once()] == ["failed"]
    assert gw.gateway.scheduler.get_job("usb-import") is None

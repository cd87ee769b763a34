"""CLI papercuts (issue 13): a busy port, XLSX output, unknown devices, help texts, a failed daemon-reload, office
dates for --today, and log lines without colour codes stamped in office time."""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import socket
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from gateway.cli import punches as punches_cli
from gateway.cli.common import EXIT_CANNOT_LISTEN
from gateway.cli.main import build_parser
from gateway.config import load_config
from gateway.logs import setup_logging
from gateway.store.db import create_db_engine, upgrade
from gateway.store.punches import Store
from tests.support.cli import run_cli
from tests.support.config import write_toml
from tests.support.punches import make_punch, store_punches

REPO = Path(__file__).resolve().parents[2]
OFFICE = "1801.01.02"

pytestmark = pytest.mark.usefixtures("restore_logging")


def office_config(tmp_path: Path, **sections: Any) -> Path:
    doc: dict[str, Any] = {"site": {"office_code": OFFICE, "timezone": "Asia/Jakarta", "state_dir": str(tmp_path)},
                           "database": {"url": f"sqlite:///{tmp_path / 'fpgw.db'}"},
                           "devices": [{"id": "lobby", "address": "10.0.0.5"}], **sections}
    return write_toml(doc, tmp_path / "config.toml")


def with_punches(tmp_path: Path) -> str:
    """A config whose database holds 3 punches of lobby: 20 Nov 23:30 WIB, 21 Nov 07:00 and 16:00 WIB."""
    cfg = office_config(tmp_path)
    config = load_config(str(cfg))
    engine = create_db_engine(config.database.url, pool_size=1)
    try:
        upgrade(engine)
        store = Store(engine, OFFICE)
        store.sync_devices(config.devices)
        store_punches(store, [make_punch("1", datetime(2026, 11, 20, 23, 30)),
                              make_punch("2", datetime(2026, 11, 21, 7, 0)),
                              make_punch("3", datetime(2026, 11, 21, 16, 0))])
    finally:
        engine.dispose()
    return str(cfg)


def prepared(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """with_punches, its log lines (migration) read away so the command's output is all that is captured."""
    cfg = with_punches(tmp_path)
    capsys.readouterr()
    return cfg


@pytest.mark.timeout(60)
def test_run_with_its_port_taken_exits_78_with_one_line_and_systemd_does_not_restart_it(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        cfg = office_config(tmp_path, http={"enabled": True, "listen": "127.0.0.1", "port": port})
        res = subprocess.run([sys.executable, "-m", "gateway.cli", "--config", str(cfg), "--log-format", "json",
                              "--log-level", "warning", "run"], capture_output=True, text=True, timeout=50,
                             cwd=tmp_path, env={**os.environ, "NOTIFY_SOCKET": ""})
    assert res.returncode == EXIT_CANNOT_LISTEN == 78, res.stderr[-2000:]
    assert "Traceback" not in res.stderr
    ours = [line for line in res.stderr.splitlines() if line.startswith("fpgw:")]
    assert ours == [f"fpgw: cannot start: HTTP server could not listen on 127.0.0.1:{port}: Address already in use "
                    "(change http.port / http.listen, or set http.enabled = false)"]
    unit = (REPO / "systemd" / "fpgw.service").read_text(encoding="utf-8")
    assert f"RestartPreventExitStatus={EXIT_CANNOT_LISTEN}" in unit.splitlines()


@pytest.mark.timeout(60)
def test_punches_writes_xlsx_or_refuses_and_never_text_into_an_xlsx(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from openpyxl import load_workbook

    cfg = prepared(tmp_path, capsys)
    book = tmp_path / "punches.xlsx"
    code, _, err = run_cli(capsys, "--config", cfg, "punches", "--output", str(book))
    assert code == 0 and "3 punch(es) written" in err
    rows = list(load_workbook(book, read_only=True).active.iter_rows(values_only=True))
    assert rows[0][:3] == ("id", "office_code", "device_id") and len(rows) == 4
    assert [r[rows[0].index("device_user_id")] for r in rows[1:]] == ["1", "2", "3"]
    assert not list(tmp_path.glob("*.part"))

    wrong = tmp_path / "wrong.xlsx"
    code, _, err = run_cli(capsys, "--config", cfg, "punches", "--format", "csv", "--output", str(wrong))
    assert code == 1 and "--format csv does not match" in err and not wrong.exists()
    code, out, err = run_cli(capsys, "--config", cfg, "punches", "--format", "xlsx")
    assert code == 1 and "needs --output" in err and out == ""
    as_json = tmp_path / "p.json"
    code, _, _ = run_cli(capsys, "--config", cfg, "punches", "--output", str(as_json))
    assert code == 0 and len(json.loads(as_json.read_text(encoding="utf-8"))) == 3


@pytest.mark.timeout(60)
def test_an_unknown_device_is_an_error_and_a_removed_one_still_answers(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    cfg = prepared(tmp_path, capsys)
    code, out, err = run_cli(capsys, "--config", cfg, "punches", "--device", "nosuch")
    assert code == 1 and out == "" and "unknown device 'nosuch'" in err and "lobby" in err
    code, out, _ = run_cli(capsys, "--config", cfg, "punches", "--device", "lobby", "--format", "json")
    assert code == 0 and len(json.loads(out)) == 3
    # Removed from the config, its punches stay in the database: still a valid --device.
    removed = write_toml({"site": {"office_code": OFFICE, "timezone": "Asia/Jakarta"},
                          "database": {"url": f"sqlite:///{tmp_path / 'fpgw.db'}"}}, tmp_path / "removed.toml")
    code, out, _ = run_cli(capsys, "--config", str(removed), "punches", "--device", "lobby", "--format", "json")
    assert code == 0 and len(json.loads(out)) == 3


@pytest.mark.timeout(60)
def test_today_is_the_office_day(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = prepared(tmp_path, capsys)

    class Evening(datetime):
        """20 Nov 20:00 UTC: still the 20th on a UTC machine, already 21 Nov 03:00 in the office (WIB)."""

        @classmethod
        def now(cls, tz: Any = None) -> Any:
            return datetime(2026, 11, 20, 20, 0, tzinfo=UTC).astimezone(tz)

    monkeypatch.setattr(punches_cli, "datetime", Evening)
    code, out, _ = run_cli(capsys, "--config", cfg, "punches", "--today", "--format", "json")
    assert code == 0 and [p["device_user_id"] for p in json.loads(out)] == ["2", "3"]
    code, _, err = run_cli(capsys, "--config", cfg, "punches", "--today", "--from", "2026-11-01")
    assert code == 1 and "--today cannot be combined" in err
    demo = (REPO / "gateway" / "demo.py").read_text(encoding="utf-8")
    assert "punches --today" in demo and "date +%F" not in demo


def _commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...],
                                                                                          argparse.ArgumentParser]]:
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, command in action.choices.items():
                found.append(((*path, name), command))
                found.extend(_commands(command, (*path, name)))
    return found


def test_every_command_and_option_has_help_and_devices_help_shows_its_optional_actions(
        capsys: pytest.CaptureFixture[str]) -> None:
    commands = _commands(build_parser())
    assert len(commands) > 20
    for path, command in commands:
        assert command.description, f"fpgw {' '.join(path)} --help has no description"
        for option in command._actions:
            if option.dest != "help" and not isinstance(option, argparse._SubParsersAction):
                assert option.help, f"fpgw {' '.join(path)}: {option.dest} has no help"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["devices", "--help"])
    text = capsys.readouterr().out
    assert text.startswith("usage: fpgw devices [-h] [--json] [--include-removed] [ACTION ...]")
    assert "Without an ACTION: the device table" in text
    for action in ("mute", "unmute", "clear", "sync-time", "add-push"):
        assert f"    {action} " in text


@pytest.mark.timeout(30)
def test_install_unit_reports_a_failed_daemon_reload(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    systemctl = bin_dir / "systemctl"
    systemctl.write_text("#!/bin/sh\necho 'Failed to reload daemon: Access denied' >&2\nexit 1\n")
    systemctl.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    unit = tmp_path / "fpgw.service"
    code, out, err = run_cli(capsys, "install-unit", "--output", str(unit))
    assert code == 1 and unit.is_file() and f"wrote {unit}" in out
    assert "`systemctl daemon-reload` failed (exit 1): Failed to reload daemon: Access denied" in err
    systemctl.write_text("#!/bin/sh\nexit 0\n")
    code, out, _ = run_cli(capsys, "install-unit", "--output", str(unit))
    assert code == 0 and "systemd reloaded" in out


@pytest.mark.parametrize("fmt", ["json", "journal", "console"])
def test_log_lines_carry_no_colour_codes_and_office_time(fmt: str) -> None:
    stream = io.StringIO()
    setup_logging(fmt, "info", stream=stream, timezone="Asia/Jakarta")
    # uvicorn logs this way (its colour copy of the message rides along as an extra).
    logging.getLogger("uvicorn.error").info("Started server process [%d]", 42,
                                            extra={"color_message": "Started server process [\x1b[36m%d\x1b[0m]"})
    line = stream.getvalue()
    assert "Started server process [42]" in line
    assert "\x1b" not in line and "\\u001b" not in line and "\\x1b" not in line and "color_message" not in line
    if fmt == "json":
        stamp = json.loads(line)["timestamp"]
        assert stamp.endswith("+07:00") and datetime.fromisoformat(stamp).utcoffset().total_seconds() == 7 * 3600
    elif fmt == "console":
        assert "+07:00" in line.split()[0]


@pytest.mark.timeout(60)
def test_poll_logs_download_progress_when_not_on_a_terminal(fleet: Any, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.polling.progress import DownloadProgress
    from tests.support.config import DeviceEntry, config_dict
    from tests.support.fleet import sim_spec

    # A progress line at the first callback instead of after 5 s: the download here takes a fraction of a second.
    monkeypatch.setitem(DownloadProgress.__init__.__kwdefaults__, "log_every_s", 0.0)
    sim = fleet.add(sim_spec("PC-PROG", records=300, seed=5))
    cfg = str(write_toml(config_dict(f"sqlite:///{tmp_path / 'fpgw.db'}", [DeviceEntry("lobby", sim)]),
                         tmp_path / "config.toml"))
    code, out, err = run_cli(capsys, "--config", cfg, "--log-format", "json", "poll", "lobby")
    assert code == 0 and "lobby: ok" in out
    lines = [json.loads(x) for x in err.splitlines() if x.startswith("{")]
    progress = [x for x in lines if x["event"] == "downloading the attendance log"]
    assert progress and progress[-1]["records_expected"] == 300, err[-2000:]
    assert "\r" not in err  # no live line: stderr is not a terminal

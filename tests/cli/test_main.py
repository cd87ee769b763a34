"""`fpgw` commands: check-config, poll, devices, punches, db, demo, print-config-example, install-unit."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from gateway.cli.main import main
from tests.support.cli import run_cli
from tests.support.config import DeviceEntry, config_dict, write_toml
from tests.support.fleet import sim_spec, truth_keys
from tests.support.gateway import stored_keys
from tests.support.services import REQUIRE_TOOLS, unavailable

REPO = Path(__file__).resolve().parents[2]


pytestmark = pytest.mark.usefixtures("restore_logging")




@pytest.mark.timeout(30)
def test_check_config_summarises_a_good_file_and_lists_every_problem_of_a_bad_one(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("T_KEY", "4321")
    good = write_toml({"site": {"office_code": "1801.01.02", "office_name": "BKPSDM"},
                       "devices": [{"id": "lobby", "address": "10.0.0.5", "comm_key_env": "T_KEY"}]},
                      tmp_path / "good.toml")
    code, out, err = run_cli(capsys, "--config", str(good), "check-config")
    assert code == 0 and "config OK" in out and "lobby" in out and "comm key set" in out
    assert "4321" not in out + err

    # Every kind of terminal is described by what it is, not as a polled port it does not have.
    kinds = write_toml({"site": {"office_code": "1801.01.02", "office_name": "BKPSDM"},
                        "devices": [{"id": "web", "address": "10.0.0.6", "driver": "soap", "serial": "S1"},
                                    {"id": "gate", "driver": "serial", "port": "/dev/ttyUSB0"},
                                    {"id": "annex", "driver": "push", "serial": "CKJ7201260042"}]},
                       tmp_path / "kinds.toml")
    code, out, err = run_cli(capsys, "--config", str(kinds), "check-config")
    assert code == 0, err
    assert "SOAP web service http://10.0.0.6:80/iWsService" in out
    assert "serial clock on /dev/ttyUSB0 (9600 baud, zk_attlog lines)" in out
    assert "push terminal (calls the gateway), serial CKJ7201260042" in out
    bad = write_toml({"site": {"office_code": "X", "timezone": "WIB"},
                      "polling": {"interval_s": 1},
                      "devices": [{"id": "lobby", "address": "10.0.0.5", "port": 99999}]}, tmp_path / "bad.toml")
    code, out, err = run_cli(capsys, "--config", str(bad), "check-config")
    assert code == 2 and out == ""
    for key in ("site.timezone", "polling.interval_s", "devices[0].port"):
        assert f"  - {key}: " in err, err
    code, _out, err = run_cli(capsys, "--config", str(tmp_path / "nope.toml"), "check-config")
    assert code == 2 and "cannot read" in err and "print-config-example" in err


@pytest.mark.timeout(60)
def test_poll_devices_punches_and_db_commands(fleet: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = fleet.add(sim_spec("CLI-1", records=120, seed=71))
    down = fleet.add(sim_spec("CLI-2", records=10, seed=72, faults={"port_closed": True}))
    db_url = f"sqlite:///{tmp_path / 'fpgw.db'}"
    cfg = str(write_toml(config_dict(db_url, [DeviceEntry("good", good), DeviceEntry("down", down)]),
                         tmp_path / "config.toml"))
    code, _, err = run_cli(capsys, "--config", cfg, "poll")
    assert code == 1 and "--all" in err
    code, out, _ = run_cli(capsys, "--config", cfg, "poll", "--all")
    assert code == 1  # one device failed
    assert "good: ok serial=CLI-1 mode=full records=120/200000 read=120 new=120" in out
    assert "down: FAILED unreachable" in out
    code, out, _ = run_cli(capsys, "--config", cfg, "poll", "good")
    assert code == 0 and "mode=count" in out and "new=0" in out
    assert stored_keys(db_url) == truth_keys(tmp_path / "truth.jsonl", ["CLI-1"])

    code, out, _ = run_cli(capsys, "--config", cfg, "devices", "--json")
    rows = {r["device_id"]: r for r in json.loads(out)}
    assert code == 0 and rows["good"]["serial"] == "CLI-1" and rows["good"]["records"] == 120
    assert rows["down"]["last_poll_outcome"] == "unreachable" and rows["good"]["state"] == "unknown"
    code, out, _ = run_cli(capsys, "--config", cfg, "devices")
    assert code == 0 and out.splitlines()[0].split()[:5] == ["ID", "NAME", "ADDRESS", "SERIAL", "STATE"]

    export = tmp_path / "out.csv"
    code, _, err = run_cli(capsys, "--config", cfg, "punches", "--device", "good", "--format", "csv",
                           "--output", str(export))
    with export.open(newline="") as fh:
        exported = list(csv.DictReader(fh))
    assert code == 0 and len(exported) == 120 and "120 punch(es) written" in err
    assert {r["device_serial"] for r in exported} == {"CLI-1"}
    code, out, _ = run_cli(capsys, "--config", cfg, "punches", "--user", exported[0]["device_user_id"],
                           "--format", "json")
    assert code == 0 and all(p["device_user_id"] == exported[0]["device_user_id"] for p in json.loads(out))
    code, _, err = run_cli(capsys, "--config", cfg, "punches", "--from", "2026-11-10", "--to", "2026-11-01")
    assert code == 1 and "--to is before --from" in err

    code, out, _ = run_cli(capsys, "--config", cfg, "db", "current")
    assert code == 0 and "up to date" in out
    code, out, _ = run_cli(capsys, "--config", cfg, "db", "upgrade")
    assert code == 0 and "already at" in out


@pytest.mark.timeout(30)
def test_print_config_example_and_install_unit(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, _ = run_cli(capsys, "print-config-example")
    assert code == 0 and out == (REPO / "config.example.toml").read_text(encoding="utf-8")
    code, out, _ = run_cli(capsys, "install-unit", "--stdout")
    assert code == 0 and f"ExecStart={Path(sys.executable).parent / 'fpgw'} run" in out
    target = tmp_path / "fpgw.service"
    code, out, _ = run_cli(capsys, "install-unit", "--output", str(target), "--no-reload")
    assert code == 0 and target.read_text().startswith("# fingerprint-gateway")


@pytest.mark.timeout(60)
def test_systemd_unit_verifies_cleanly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if shutil.which("systemd-analyze") is None:
        unavailable("systemd-analyze not installed", REQUIRE_TOOLS)
    unit = tmp_path / "fpgw.service"
    assert main(["install-unit", "--output", str(unit), "--no-reload"]) == 0
    capsys.readouterr()
    res = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=50)
    # verify only warns on unknown keys (rc stays 0), so the output must be empty too.
    assert res.returncode == 0 and not res.stderr.strip() and not res.stdout.strip(), res.stderr
    text = unit.read_text()
    for setting in ("Type=notify", "WatchdogSec=", "Restart=on-failure", "DynamicUser=yes", "StateDirectory=fpgw",
                    "LoadCredential=config.toml:/etc/fpgw/config.toml", "NoNewPrivileges=yes", "LimitNOFILE="):
        assert setting in text


@pytest.mark.timeout(90)
def test_demo_runs_the_real_daemon_against_a_simulated_office(tmp_path: Path) -> None:
    folder = tmp_path / "demo-office"
    res = subprocess.run([sys.executable, "-m", "gateway.cli", "demo", "--dir", str(folder), "--duration", "9",
                          "--interval", "5", "--http-port", "0", "--log-format", "json"],
                         capture_output=True, text=True, timeout=80, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "fpgw --config" in res.stderr and "devices" in res.stderr
    config = folder / "config.toml"
    assert config.is_file() and (folder / "fpgw.db").is_file()
    listed = subprocess.run([sys.executable, "-m", "gateway.cli", "--config", str(config), "devices", "--json"],
                            capture_output=True, text=True, timeout=30)
    rows = {r["device_id"]: r for r in json.loads(listed.stdout)}
    assert set(rows) == {"lobby", "hall", "secretariat", "warehouse"}
    for ok in ("lobby", "hall", "secretariat"):
        assert rows[ok]["last_poll_outcome"] in ("ok", "unchanged") and rows[ok]["records"] > 0
    assert rows["warehouse"]["last_poll_outcome"] == "unreachable"
    db_url = f"sqlite:///{folder / 'fpgw.db'}"
    truth = truth_keys(folder / "simulator-truth.jsonl", ["DEMO0000001", "DEMO0000002", "DEMO0000003"])
    stored = stored_keys(db_url)
    # Punches keep arriving while the demo runs; the last ones may come after the final poll.
    assert not (stored - truth) and sum(stored.values()) >= 1100

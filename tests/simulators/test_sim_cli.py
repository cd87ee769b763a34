"""fpgw-sim CLI, fleet files and the control API (in-process and as a real subprocess)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from zk import ZK

from simulators.cli import main
from simulators.zk import Fleet, SimDevice, read_truth
from simulators.zk.config import ConfigError, fleet_from_mapping, load_fleet_file
from simulators.zk.control import ApiError, ControlClient, start_control_server

pytestmark = pytest.mark.timeout(60)

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "simulators" / "fleet.example.toml"


def sim(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "simulators.cli", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=REPO)


# --- fleet files -------------------------------------------------------------------------


def test_example_fleet_file_loads() -> None:
    cfg = load_fleet_file(EXAMPLE)
    serials = [d.serial for d in cfg.devices]
    assert serials == ["BKD-LOBBY-01", "BKD-KEU-01", "BKD-ARSIP-01", "BKD-UPT-001", "BKD-UPT-002"]
    assert [d.host for d in cfg.devices] == [f"127.0.0.{i}" for i in range(1, 6)]
    assert {d.port for d in cfg.devices} == {4370}
    assert len({d.seed for d in cfg.devices}) == 5
    assert cfg.devices[2].faults == {"slow": 0.3, "udp_loss": 0.1}
    assert cfg.truth == EXAMPLE.parent / "truth.jsonl"


@pytest.mark.parametrize(("raw", "message"), [
    ({"devices": [{"recrods": 5}]}, "devices[0].recrods: unknown key (did you mean 'records'?)"),
    ({"devices": [{"record_layout": 12}]}, "record_layout: must be one of 8, 16, 40"),
    ({"devices": [{"records": 10, "records_cap": 5}]}, "records: 10 exceeds records_cap 5"),
    ({"devices": [{"timezone": "Mars/Olympus"}]}, "timezone: unknown IANA zone"),
    ({"devices": [{"users": "many"}]}, "devices[0].users: expected an integer"),
    ({"devices": [{"faults": {"slow": "x"}}]}, "devices[0].faults.slow"),
    ({"devices": [{"faults": {"explode": True}}]}, "unknown fault 'explode'"),
    ({"devices": [{"serial": "A"}, {"serial": "A"}]}, "serial 'A' is used twice"),
    ({"devices": []}, "needs at least one [[devices]] entry"),
    ({"fleet": {"per_device": "rack"}, "devices": [{}]}, "fleet.per_device"),
    ({"fleet": {"hots": "x"}, "devices": [{}]}, "fleet.hots: unknown key (did you mean 'host'?)"),
    ({"device": [{}]}, "unknown top-level key 'device'"),
    ({"devices": [{"start_date": "yesterday"}]}, "start_date: expected a date"),
    ({"fleet": {"host": "127.255.255.255"}, "devices": [{"count": 2}]}, "outside 127.0.0.0/8"),
])
def test_bad_fleet_definitions_name_the_key(raw: dict, message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        fleet_from_mapping(raw)
    assert message in str(exc.value)


def test_bad_toml_file(tmp_path: Path) -> None:
    f = tmp_path / "f.toml"
    f.write_text("[[devices]\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_fleet_file(f)
    with pytest.raises(ConfigError, match="file not found"):
        load_fleet_file(tmp_path / "missing.toml")


@pytest.mark.parametrize(("args", "message"), [
    (["--layout", "12"], "--layout: invalid choice"),
    (["--fault", "melt"], "unknown fault 'melt'"),
    (["--fault", "udp_loss=2"], "outside"),
    (["--devices", "0"], "--devices: expected 1..10000"),
    (["--records", "10", "--records-cap", "5"], "records: 10 exceeds records_cap 5"),
    (["--timezone", "Nowhere/City"], "unknown IANA zone"),
])
def test_bad_flags_exit_2_with_clear_error(args: list[str], message: str) -> None:
    res = sim(*args, "--duration", "0")
    assert res.returncode == 2
    assert message in res.stderr


def test_bad_fleet_file_flag(tmp_path: Path) -> None:
    f = tmp_path / "fleet.toml"
    f.write_text("[[devices]]\nserial = 'X1'\nusers_cap = -1\n")
    res = sim("--fleet", str(f), "--duration", "0")
    assert res.returncode == 2 and "users_cap: must be a non-negative integer" in res.stderr


# --- control API in-process --------------------------------------------------------------


def test_control_api_round_trip(fleet: Fleet, add_device: Callable[..., SimDevice],
                                truth_path: Path) -> None:
    dev = add_device(serial="CTL0001", records=10)
    srv = start_control_server(fleet, 0)
    c = ControlClient(srv.url)
    assert [d["serial"] for d in c.request("GET", "/devices")] == ["CTL0001"]
    rows = c.request("POST", "/devices/CTL0001/punches", {"n": 3, "at": "2025-03-04 07:15:00"})
    assert len(rows) == 3 and all(r["time"].startswith("2025-03-04 07:15:0") for r in rows)
    assert read_truth(truth_path)[-3:] == rows
    info = c.request("POST", "/devices/CTL0001/faults", {"name": "slow", "value": 0.1})
    assert info["faults"] == {"slow": 0.1} and dev.faults == {"slow": 0.1}
    assert c.request("DELETE", "/devices/CTL0001/faults/slow")["faults"] == {}
    assert c.request("POST", "/devices/CTL0001/clear-log")["records"] == 0
    info = c.request("POST", "/devices/CTL0001/replace", {"new_serial": "CTL0001B", "records": 5})
    assert (info["serial"], info["records"]) == ("CTL0001B", 5)
    added = c.request("POST", "/devices", {"serial": "CTL0002", "users": 3, "records": 4})
    assert added["records"] == 4 and fleet.device("CTL0002").port == added["port"]
    c.request("DELETE", "/devices/CTL0002")
    assert [d.serial for d in fleet.devices] == ["CTL0001B"]


@pytest.mark.parametrize(("method", "path", "body", "status", "message"), [
    ("GET", "/devices/NOPE", None, 404, "no device with serial 'NOPE'"),
    ("POST", "/devices/CTL0009/punches", {"n": "three"}, 400, "n: expected int"),
    ("POST", "/devices/CTL0009/punches", {"at": "tomorrow"}, 400, "at: expected 'YYYY-MM-DD HH:MM:SS'"),
    ("POST", "/devices/CTL0009/punches", {"user_id": "nobody"}, 400, "no user with user_id 'nobody'"),
    ("POST", "/devices/CTL0009/faults", {"value": 1}, 400, "name: required"),
    ("POST", "/devices/CTL0009/faults", {"name": "slow", "value": -1}, 400, "outside"),
    ("POST", "/devices", {"serial": "CTL0010", "record_layout": 9}, 400, "record_layout"),
    ("POST", "/devices", {"serial": "CTL0011", "colour": "red"}, 400, "colour: unknown key"),
    ("GET", "/nothing", None, 404, "no such endpoint"),
])
def test_control_api_rejects_bad_requests(fleet: Fleet, add_device: Callable[..., SimDevice],
                                          method: str, path: str, body: dict | None,
                                          status: int, message: str) -> None:
    add_device(serial="CTL0009")
    c = ControlClient(start_control_server(fleet, 0).url)
    with pytest.raises(ApiError) as exc:
        c.request(method, path, body)
    assert exc.value.status == status and message in str(exc.value)
    assert c.request("GET", "/health")["ok"] is True  # still serving


def test_control_api_rejects_non_json_body(fleet: Fleet, add_device: Callable[..., SimDevice]) -> None:
    import urllib.error
    import urllib.request

    add_device(serial="CTL0020")
    url = start_control_server(fleet, 0).url + "/devices/CTL0020/punches"
    req = urllib.request.Request(url, data=b"{not json", method="POST")
    with pytest.raises(urllib.error.HTTPError) as exc:
        urllib.request.urlopen(req, timeout=5)
    assert exc.value.code == 400
    assert "not valid JSON" in json.loads(exc.value.read())["error"]


# --- the real command --------------------------------------------------------------------


def test_fpgw_sim_serves_and_ctl_controls_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    truth = tmp_path / "truth.jsonl"
    proc = subprocess.Popen(
        [sys.executable, "-m", "simulators.cli", "--devices", "3", "--host", "127.0.0.21", "--port", "0",
         "--records", "200", "--users", "30", "--layout", "16", "--user-layout", "28",
         "--truth", str(truth), "--control-port", "0", "--fault", "clock_skew=60"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        assert proc.stdout is not None
        lines: list[str] = []
        url = ""
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not url:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if line.startswith("control API:"):
                url = line.split()[2]
        assert url, lines
        devices = [ln.split() for ln in lines if ln.startswith("  SIM")]
        assert [d[0] for d in devices] == ["SIM0001", "SIM0002", "SIM0003"]
        assert [d[1].split(":")[0] for d in devices] == ["127.0.0.21", "127.0.0.22", "127.0.0.23"]
        assert main(["ctl", "--url", url, "list"]) == 0
        listed = json.loads(capsys.readouterr().out)
        assert [d["records"] for d in listed] == [200, 200, 200]
        assert listed[0]["faults"] == {"clock_skew": 60}
        assert main(["ctl", "--url", url, "punch", "SIM0002", "-n", "2"]) == 0
        assert len(json.loads(capsys.readouterr().out)) == 2
        assert main(["ctl", "--url", url, "fault", "SIM0001", "slow=0.05"]) == 0
        capsys.readouterr()
        assert main(["ctl", "--url", url, "clear-fault", "SIM0001", "slow"]) == 0
        capsys.readouterr()
        assert main(["ctl", "--url", url, "clear-log", "SIM0003"]) == 0
        assert json.loads(capsys.readouterr().out)["records"] == 0
        assert main(["ctl", "--url", url, "replace", "SIM0001", "--new-serial", "SIM0001B"]) == 0
        capsys.readouterr()
        assert main(["ctl", "--url", url, "show", "NOPE"]) == 1
        assert "no device with serial 'NOPE'" in capsys.readouterr().err
        host, port = devices[1][1].split(":")
        conn = ZK(host, port=int(port), timeout=5, force_udp=True, ommit_ping=True).connect()
        assert conn.get_serialnumber() == "SIM0002"
        assert len(conn.get_attendance()) == 202
        conn.disconnect()
        rows = read_truth(truth)
        assert len(rows) == 602 and {r["serial"] for r in rows} == {"SIM0001", "SIM0002", "SIM0003"}
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert "fpgw-sim: stopped" in out


def test_ctl_without_a_running_simulator() -> None:
    res = sim("ctl", "--url", "http://127.0.0.1:9", "list")
    assert res.returncode == 1 and "cannot reach the simulator control API" in res.stderr

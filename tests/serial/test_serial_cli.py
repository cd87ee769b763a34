"""`fpgw` with serial clocks: check-config describes them, `fpgw poll` refuses them with a clear error, and
`fpgw devices` lists a clock the daemon read (port, baud, online) after its punches were stored."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.support.cli import run_cli
from tests.support.config import OFFICE_CODE, write_toml
from tests.support.gateway import RunningGateway, stored_keys
from tests.support.serial import device_keys, serial_clock, serial_config
from tests.support.wait import wait_until


def _doc(db_url: str, tmp_path: Path, device: dict[str, Any]) -> dict[str, Any]:
    return {"site": {"office_code": OFFICE_CODE, "state_dir": str(tmp_path)}, "database": {"url": db_url},
            "http": {"enabled": False}, "devices": [{"driver": "serial", **device}]}


@pytest.mark.timeout(60)
def test_check_config_poll_and_devices_with_a_serial_clock(sqlite_url: str, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str],
                                                           restore_logging: None) -> None:
    with serial_clock(None, tmp_path, transport="pty") as clock:
        keys = device_keys(clock, "gate", baud=19200)
        path = write_toml(_doc(sqlite_url, tmp_path, keys), tmp_path / "config.toml")
        code, out, _ = run_cli(capsys, "--config", str(path), "check-config")
        assert code == 0 and f"serial clock on {clock.path} (19200 baud, zk_attlog lines)" in out
        with RunningGateway(serial_config(sqlite_url, tmp_path, [keys])) as gw:
            wait_until(lambda: getattr(gw.gateway.ctx.health.snapshot().get("gate"), "state", None) == "online"
                       if gw.gateway.ctx.health else False, 20, "online")
            clock.punch(2)
            wait_until(lambda: sum(stored_keys(sqlite_url).values()) == 2, 20, "stored")
        code, out, err = run_cli(capsys, "--config", str(path), "poll", "gate")
        assert code != 0 and "serial-line clock(s) write their punches to the running daemon" in err
        code, out, err = run_cli(capsys, "--config", str(path), "devices", "clear", "gate", "--yes")
        assert code != 0 and "serial-line clock: it answers no commands" in err
        code, out, _ = run_cli(capsys, "--config", str(path), "devices")
        assert code == 0
        row = next(line for line in out.splitlines() if line.startswith("gate "))
        assert f"{clock.path}:19200/serial" in row and "online" in row


@pytest.mark.timeout(60)
def test_status_page_shows_a_serial_clock_with_its_quarantined_lines(sqlite_url: str, tmp_path: Path) -> None:
    import httpx

    from tests.support.serial import quarantined

    with serial_clock(None, tmp_path, transport="pty") as clock:
        cfg = serial_config(sqlite_url, tmp_path, [device_keys(clock, "gate")],
                            http={"listen": "127.0.0.1", "port": 0})
        with RunningGateway(cfg) as gw:
            wait_until(lambda: gw.gateway.ctx.http_port is not None, 20, "status server")
            wait_until(lambda: getattr(gw.gateway.ctx.health.snapshot().get("gate"), "state", None) == "online"
                       if gw.gateway.ctx.health else False, 20, "online")
            clock.punch(1)
            assert clock.write_raw(b"garbage line\r\nmore garbage\r\n")
            wait_until(lambda: len(quarantined(sqlite_url)) == 2 and sum(stored_keys(sqlite_url).values()) == 1,
                       20, "stored and quarantined")
            base = f"http://127.0.0.1:{gw.gateway.ctx.http_port}"
            doc = httpx.get(f"{base}/status", timeout=10).json()
            page = httpx.get(f"{base}/", timeout=10).text
    (dev,) = [d for d in doc["devices"] if d["id"] == "gate"]
    assert dev["quarantined"] == 2 and dev["address"] == clock.path and dev["state"] == "online"
    assert "2 baris dikarantina / quarantined lines" in page

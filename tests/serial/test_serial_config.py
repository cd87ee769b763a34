"""Config of serial-line clocks: driver = "serial", port or url, line settings, line formats checked when the
config loads (check-config), never polled, the example config's serial device."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway.config import ConfigError, parse_config
from tests.support.config import OFFICE_CODE


def doc(devices: list[dict[str, Any]]) -> dict[str, Any]:
    return {"site": {"office_code": OFFICE_CODE}, "database": {"url": "sqlite://"}, "devices": devices}


def test_serial_device_keys_are_read_and_shown_as_port_and_baud(tmp_path: Path) -> None:
    c = parse_config(doc([{"id": "s", "driver": "serial", "port": "/dev/ttyUSB0", "baud": 19200, "parity": "even",
                           "line_format": "giga_tms", "machine": 3},
                          {"id": "t", "driver": "serial", "url": "socket://10.0.0.5:4001", "line_format": "custom",
                           "line_template": "{user};{datetime}", "time_format": "%d/%m/%Y %H:%M"}]), base_dir=tmp_path)
    s, t = c.devices
    assert s.reads_serial and not s.pushes and s.serial_line is not None
    assert (s.address, s.port, s.transport) == ("/dev/ttyUSB0", 19200, "serial")
    assert (s.serial_line.parity, s.serial_line.line_format, s.serial_line.machine) == ("even", "giga_tms", "3")
    assert t.serial_line is not None and t.serial_line.url == "socket://10.0.0.5:4001"


@pytest.mark.parametrize(("device", "needle"), [
    ({}, "exactly one of port"),
    ({"port": "/dev/ttyUSB0", "url": "socket://h:1"}, "exactly one of port"),
    ({"port": "ttyUSB0"}, "device path"),
    ({"url": "tcp://10.0.0.5:4001"}, "socket:// or rfc2217://"),
    ({"port": "/dev/ttyUSB0", "baud": 9601}, "baud"),
    ({"port": "/dev/ttyUSB0", "parity": "weird"}, "parity"),
    ({"port": "/dev/ttyUSB0", "stopbits": 3}, "stopbits"),
    ({"port": "/dev/ttyUSB0", "line_format": "nope"}, "line_format"),
    ({"port": "/dev/ttyUSB0", "line_pattern": r"(?P<user>\d+)"}, "needs the time"),
    ({"port": "/dev/ttyUSB0", "line_template": "{user} {datetime}"}, "must give %Y"),
    ({"port": "/dev/ttyUSB0", "time_format": "%Y"}, "preset"),
    ({"port": "/dev/ttyUSB0", "quirks": {"record_size": 8}}, "no driver workarounds"),
    ({"port": "/dev/ttyUSB0", "transport": "udp"}, "transport"),
    ({"port": "/dev/ttyUSB0", "machine": True}, "machine"),
])
def test_bad_serial_keys_get_a_clear_error(tmp_path: Path, device: dict[str, Any], needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(doc([{"id": "s", "driver": "serial", **device}]), base_dir=tmp_path)
    assert needle in str(err.value), str(err.value)


def test_two_devices_on_one_port_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(doc([{"id": "a", "driver": "serial", "port": "/dev/ttyUSB0"},
                          {"id": "b", "driver": "serial", "port": "/dev/ttyUSB0", "baud": 19200}]), base_dir=tmp_path)
    assert "already reads /dev/ttyUSB0" in str(err.value)


def test_serial_only_keys_on_a_zk_device_are_unknown(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(doc([{"id": "z", "address": "10.0.0.1", "line_format": "zk_attlog"}]), base_dir=tmp_path)
    assert "line_format" in str(err.value)


def test_serial_clocks_are_not_polled(tmp_path: Path) -> None:
    import threading

    from gateway.polling.scheduler import PollScheduler

    c = parse_config(doc([{"id": "s", "driver": "serial", "port": "/dev/ttyUSB0"},
                          {"id": "z", "address": "10.0.0.1"}]), base_dir=tmp_path)
    sched = PollScheduler(c, None, lambda d: None, stop_event=threading.Event())  # type: ignore[arg-type,return-value]
    assert list(sched.device_ids()) == ["z"]


def test_the_example_config_shows_one_serial_clock_switched_off() -> None:
    import tomllib

    data = tomllib.loads((Path(__file__).parents[2] / "config.example.toml").read_text(encoding="utf-8"))
    serial = [d for d in data["devices"] if d.get("driver") == "serial"]
    assert len(serial) == 1 and serial[0]["enabled"] is False and serial[0]["port"].startswith("/dev/serial/by-id/")

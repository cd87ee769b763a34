"""Config of push terminals: driver = "push", serial required, push key from env/file, the [push] section."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway.config import ConfigError, parse_config
from tests.support.config import OFFICE_CODE


def doc(devices: list[dict[str, Any]], **push: Any) -> dict[str, Any]:
    return {"site": {"office_code": OFFICE_CODE}, "database": {"url": "sqlite:///x.db"}, "devices": devices,
            **({"push": push} if push else {})}


def problems(data: dict[str, Any], tmp_path: Path) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        parse_config(data, base_dir=tmp_path)
    return exc.value.problems


def test_push_device_needs_only_id_and_serial(tmp_path: Path) -> None:
    c = parse_config(doc([{"id": "a", "driver": "push", "serial": "CKJ1"}, {"id": "b", "address": "10.0.0.1"}]),
                     base_dir=tmp_path)
    a, b = c.devices
    assert a.pushes and not b.pushes and a.address == "" and a.push_key is None
    assert (c.push.port, c.push.listen, c.push.delay_s, c.push.offline_after_s) == (8081, "0.0.0.0", 10, 300.0)


@pytest.mark.parametrize(("device", "needle"), [
    ({"id": "a", "driver": "push"}, "serial"),
    ({"id": "a", "driver": "push", "serial": "has space"}, "serial"),
    ({"id": "a", "driver": "push", "serial": "S1", "quirks": {"record_size": 8}}, "quirks"),
    ({"id": "a", "driver": "push", "serial": "S1", "push_key": "inline"}, "push_key"),
    ({"id": "a", "driver": "push", "serial": "S1", "push_key_env": "FPGW_TEST_UNSET_PUSH_KEY"}, "push_key_env"),
    ({"id": "a", "driver": "bacnet", "serial": "S1"}, "driver"),
])
def test_bad_push_devices_are_named(tmp_path: Path, device: dict[str, Any], needle: str) -> None:
    assert any(needle in p for p in problems(doc([device]), tmp_path))


def test_two_push_devices_with_one_serial_are_refused(tmp_path: Path) -> None:
    devices = [{"id": "a", "driver": "push", "serial": "S1"}, {"id": "b", "driver": "push", "serial": "s1"}]
    found = problems(doc(devices), tmp_path)
    assert any("'s1'" in p for p in found)


def test_push_key_is_read_from_a_file_and_never_shown(tmp_path: Path) -> None:
    (tmp_path / "annex.key").write_text("4a9594af164f2b97\n")
    c = parse_config(doc([{"id": "a", "driver": "push", "serial": "S1", "push_key_file": "annex.key"}]),
                     base_dir=tmp_path)
    assert c.devices[0].push_key == "4a9594af164f2b97"
    assert "4a9594af164f2b97" not in repr(c.devices[0]) and "4a9594af164f2b97" in c.secrets()


@pytest.mark.parametrize(("push", "needle"), [
    ({"delay_s": 1}, "delay_s"), ({"offline_after_s": 30, "delay_s": 20}, "offline_after_s"),
    ({"tls_cert_file": "cert.pem"}, "tls_key_file"), ({"port": 70000}, "port"), ({"max_lines": 0}, "max_lines"),
    ({"bogus": 1}, "bogus"),
])
def test_bad_push_section_is_named(tmp_path: Path, push: dict[str, Any], needle: str) -> None:
    assert any(needle in p for p in problems(doc([{"id": "a", "driver": "push", "serial": "S1"}], **push), tmp_path))

"""drivers.DRIVERS: drivers looked up by the config's name, built from the device config, pyzk loaded lazily."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from drivers import DRIVERS, UnknownDriver, check_quirks, driver_names, get_driver
from gateway.config import ConfigError, parse_config
from gateway.polling.poller import registry_driver_factory


def _config(tmp_path: Path, **device: object):  # type: ignore[no-untyped-def]
    return parse_config({"site": {"office_code": "X"},
                         "devices": [{"id": "lobby", "address": "10.0.0.1", **device}]}, base_dir=tmp_path)


def test_zk_is_registered_and_built_from_the_device_config(tmp_path: Path) -> None:
    from drivers.zk import ZkDriver

    assert driver_names() == tuple(DRIVERS) and "zk" in DRIVERS
    device = _config(tmp_path, transport="udp", serial="SN1", quirks={"record_size": 40}).devices[0]
    drv = get_driver("zk")(device)
    assert isinstance(drv, ZkDriver)
    assert (drv.params.address, drv.params.transport, drv.params.expected_serial) == ("10.0.0.1", "udp", "SN1")
    assert drv.quirks.record_size == 40
    assert isinstance(registry_driver_factory(device), ZkDriver)


def test_unknown_driver_name_is_a_lookup_error_and_a_config_error_naming_the_key(tmp_path: Path) -> None:
    with pytest.raises(UnknownDriver, match=r"unknown driver 'bacnet'; known: .*zk"):
        get_driver("bacnet")
    with pytest.raises(ConfigError, match=r"devices\[0\]\.driver: must be one of 'zk', .*'push'.*, got 'bacnet'"):
        _config(tmp_path, driver="bacnet")


def test_soap_is_registered_with_port_80_by_default(tmp_path: Path) -> None:
    from drivers.soap import SoapDriver

    device = _config(tmp_path, driver="soap", serial="SN2", quirks={"punch_user": "PIN2"}).devices[0]
    assert device.port == 80
    drv = registry_driver_factory(device)
    assert isinstance(drv, SoapDriver) and drv.params.port == 80 and drv.quirks.punch_user == "PIN2"
    with pytest.raises(ConfigError, match="transport"):
        _config(tmp_path, driver="soap", transport="udp")
    with pytest.raises(ConfigError, match="unknown SOAP quirk"):
        _config(tmp_path, driver="soap", quirks={"record_size": 40})


def test_quirks_are_checked_by_the_driver_package() -> None:
    assert check_quirks("zk", {"record_size": 40}) is None
    assert "unknown ZK quirk(s): bogus" in (check_quirks("zk", {"bogus": 1}) or "")


def test_config_and_registry_do_not_import_pyzk_until_a_driver_is_built(tmp_path: Path) -> None:
    code = ("import sys\n"
            "from gateway.config import parse_config\n"
            "import drivers, drivers.zk\n"
            "parse_config({'site': {'office_code': 'X'}, 'devices': [{'id': 'a', 'address': '10.0.0.1', "
            "'quirks': {'record_size': 40}}]}, base_dir='.')\n"
            "drivers.get_driver('zk')\n"
            "assert 'zk' not in sys.modules, 'pyzk imported too early'\n"
            "from drivers.zk import ZkDriver\n"
            "assert 'zk' in sys.modules\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60, cwd=tmp_path)

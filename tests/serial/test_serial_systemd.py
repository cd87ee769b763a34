"""The systemd drop-in for serial clocks on local ports (systemd/fpgw-serial.conf): it verifies cleanly with the
shipped unit and really lifts PrivateDevices (systemd-analyze security --offline reads the drop-in), while the
base unit alone keeps the service away from every hardware device."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from gateway.cli.main import main
from tests.support.services import REQUIRE_TOOLS, unavailable

DROP_IN = Path(__file__).parents[2] / "systemd" / "fpgw-serial.conf"


def _security(unit: Path) -> str:
    res = subprocess.run(["systemd-analyze", "security", "--offline=true", str(unit)], capture_output=True,
                         text=True, timeout=50)
    return res.stdout + res.stderr


@pytest.mark.timeout(90)
def test_serial_drop_in_verifies_and_opens_only_serial_devices(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    if shutil.which("systemd-analyze") is None:
        unavailable("systemd-analyze not installed", REQUIRE_TOOLS)
    unit = tmp_path / "fpgw.service"
    assert main(["install-unit", "--output", str(unit), "--no-reload"]) == 0
    capsys.readouterr()
    base = _security(unit)
    assert "Service has no access to hardware devices" in base and "char-ttyUSB" not in base

    (tmp_path / "fpgw.service.d").mkdir()
    shutil.copy(DROP_IN, tmp_path / "fpgw.service.d" / "serial.conf")
    res = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=50)
    # verify only warns on unknown keys (rc stays 0), so the output must be empty too.
    assert res.returncode == 0 and not res.stderr.strip() and not res.stdout.strip(), res.stderr
    with_serial = _security(unit)
    assert "Service potentially has access to hardware devices" in with_serial
    for group in ("char-ttyUSB:rw", "char-ttyACM:rw", "char-ttyS:rw"):
        assert group in with_serial
    text = DROP_IN.read_text()
    assert "SupplementaryGroups=dialout" in text and "DevicePolicy=closed" in text
    # systemd refuses globs in device paths without a word from verify (ops-notes §4.3): none here.
    assert not [line for line in text.splitlines() if line.startswith("DeviceAllow=") and "*" in line]

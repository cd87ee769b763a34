"""The status page in a real headless Chromium on a phone and a desktop window: rendered DOM and screenshots.

Skips when /usr/bin/chromium is missing, unless GW_REQUIRE_BROWSER=1 (CI installs it).
The page is server-rendered with a meta refresh, so --dump-dom shows what a technician sees.
Screenshots are test artifacts: GW_SCREENSHOT_DIR=<folder> keeps status-phone.png and status-desktop.png
(GW_KEEP_SCREENSHOT=<file> keeps the phone one, as before).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.support.config import DeviceEntry, make_config
from tests.support.fleet import running_fleet, sim_spec
from tests.support.gateway import RunningGateway
from tests.support.services import REQUIRE_BROWSER, unavailable

CHROMIUM = os.environ.get("GW_CHROMIUM", "/usr/bin/chromium")
pytestmark = [pytest.mark.browser, pytest.mark.timeout(120)]


def chromium() -> str:
    path = CHROMIUM if os.path.exists(CHROMIUM) else shutil.which("chromium")
    if not path:
        unavailable(f"headless Chromium not found at {CHROMIUM} (apt-get install -y chromium)", REQUIRE_BROWSER)
    return path


PHONE, DESKTOP = (412, 915), (1280, 900)


def run_chromium(binary: str, profile: Path, *args: str,
                 size: tuple[int, int] = PHONE) -> subprocess.CompletedProcess[str]:
    cmd = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-dev-shm-usage", f"--user-data-dir={profile}", f"--window-size={size[0]},{size[1]}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_status_page_renders_in_headless_chromium_on_a_phone_and_a_desktop(tmp_path: Path) -> None:
    binary = chromium()
    with running_fleet(tmp_path / "truth.jsonl") as fleet:
        a = fleet.add(sim_spec("BR-A", records=150, records_cap=1000))
        b = fleet.add(sim_spec("BR-B", records=900, records_cap=1000))  # 90 %: storage warning
        c = fleet.add(sim_spec("BR-C", records=10, faults={"port_closed": True}))
        config = make_config(
            f"sqlite:///{tmp_path / 'fpgw.db'}",
            [DeviceEntry("lobi", a, extra={"name": "Lobi Utama", "location": "Lantai 1"}),
             DeviceEntry("staf", b, extra={"name": "Ruang Staf"}),
             DeviceEntry("gudang", c, extra={"name": "Gudang Arsip"})], tmp_path,
            http={"enabled": True, "listen": "127.0.0.1", "port": 0},
            health={"offline_after_failures": 1, "offline_after_s": 1}, alerts={"reminder_s": 0})
        with RunningGateway(config) as gw:
            gw.poll_all(["lobi", "staf", "gudang"])
            gw.gateway.polls.wait_idle(20)
            gw.gateway.ctx.health.sweep(datetime.now(UTC) + timedelta(seconds=5))
            url = f"http://127.0.0.1:{gw.gateway.ctx.http_port}/"
            dom = run_chromium(binary, tmp_path / "profile-dom", "--dump-dom", url)
            shots = {}
            for name, size in (("phone", PHONE), ("desktop", DESKTOP)):
                shot = tmp_path / f"status-{name}.png"
                png = run_chromium(binary, tmp_path / f"profile-{name}", f"--screenshot={shot}", "--hide-scrollbars",
                                   url, size=size)
                assert png.returncode == 0 and shot.exists(), png.stderr[-2000:]
                shots[name] = shot
    assert dom.returncode == 0, dom.stderr[-2000:]
    html = dom.stdout
    assert 'id="dev-lobi" data-state="online"' in html
    assert 'id="dev-staf" data-state="online"' in html and "storage" in html and "90%" in html
    assert 'id="dev-gudang" data-state="offline"' in html and "Gudang Arsip" in html
    assert "port 4370" in html  # what to check, for the technician
    # Polished: why it is offline, checks in Indonesian and open (critical), dates with year and zone, a button.
    assert f"Sebab / why: unreachable: no answer from {c.host}:{c.port}" in html
    assert '<details class="check" data-problem="offline" open="">' in html
    assert "Apakah mesin menyala" in html
    assert f"{datetime.now(UTC).year}-" in html and " WIB" in html
    assert html.count("Cek sekarang / poll now") == 3
    for name, size in (("phone", PHONE), ("desktop", DESKTOP)):
        assert png_size(shots[name].read_bytes()) == size
    keep_dir = os.environ.get("GW_SCREENSHOT_DIR")
    if keep_dir:
        Path(keep_dir).mkdir(parents=True, exist_ok=True)
        for shot in shots.values():
            shutil.copy(shot, Path(keep_dir) / shot.name)
    keep = os.environ.get("GW_KEEP_SCREENSHOT")
    if keep:
        shutil.copy(shots["phone"], keep)

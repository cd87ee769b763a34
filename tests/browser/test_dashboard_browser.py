"""The regency dashboard in a real headless Chromium (DevTools protocol over a pipe, tests/support/browser.py):
sign in through the form, the dashboard and a terminal's history at phone and desktop sizes, an office account
kept to its office, the monthly report downloaded with the dashboard's button (XLSX arrives as a file and opens
in openpyxl; HTML renders in the browser). Screenshots are saved in the test's tmp_path and, when
GW_SCREENSHOT_DIR is set, copied there (CI keeps that folder as the run's artifacts). Skips when Chromium is
missing, unless GW_REQUIRE_BROWSER=1.

The central is the real daemon (central mode, built-in HTTP server on loopback, SQLite); office gateways' health
reports are sent through its real ingest endpoint with tests/support/dashboard.py's documents.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import httpx
import pytest
from openpyxl import load_workbook

from gateway.app import Gateway
from gateway.central.auth import hash_password
from gateway.central.service import UsageRefresh
from gateway.central.tokens import add_token
from gateway.config import parse_config
from gateway.store.accounts import AccountRepo
from gateway.store.db import create_db_engine
from tests.support.browser import Browser, chromium_binary
from tests.support.dashboard import PASSWORD, terminal
from tests.support.secrets import remember

pytestmark = [pytest.mark.browser, pytest.mark.timeout(180)]
A, B, C = "1801.01", "1801.02", "1801.03"
PHONE, DESKTOP = (412, 915), (1366, 900)


@dataclass
class Central:
    url: str
    shots: list[Path]
    daemon: Gateway


def _keep(path: Path) -> None:
    target = os.environ.get("GW_SCREENSHOT_DIR")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(target) / path.name)


@pytest.fixture
def central(tmp_path: Path) -> Iterator[Central]:
    chromium_binary()
    gw_tokens, api_tokens = tmp_path / "gateways.toml", tmp_path / "api.toml"
    tokens = {o: add_token(gw_tokens, f"gw-{o}", [o], "gateway") for o in (A, B, C)}
    remember(*tokens.values())
    add_token(api_tokens, "bkd", None, "api")
    db_url = f"sqlite:///{tmp_path / 'central.db'}"
    cfg = parse_config({
        "site": {"office_code": "1801.00", "office_name": "BKD", "timezone": "Asia/Jakarta",
                 "state_dir": str(tmp_path / "central")},
        "database": {"url": db_url},
        "http": {"enabled": True, "listen": "127.0.0.1", "port": 0},
        "central": {"enabled": True, "gateway_tokens_file": str(gw_tokens), "api_tokens_file": str(api_tokens)},
    }, base_dir=tmp_path)
    offline = {"offline": {"severity": "critical", "since": "2026-11-30T02:00:00Z",
                           "detail": "no answer from 192.168.10.21:4370", "last_alert_at": "2026-11-30T02:05:00Z"}}
    skew = {"clock_skew": {"severity": "warning", "since": "2026-11-29T00:00:00Z", "detail": "clock +400 s"}}
    reports = {
        A: ("Dinas Pendidikan dan Kebudayaan", [terminal("lobi-utama"), terminal("gudang-arsip", "offline", offline,
                                                                                  since="2026-11-30T02:00:00Z")]),
        B: ("Dinas Kesehatan", [terminal("depan", problems=skew, clock_skew_s=400.0), terminal("belakang")]),
        C: ("Inspektorat", [terminal("aula")]),
    }
    with Gateway(cfg) as daemon:
        url = f"http://127.0.0.1:{daemon.ctx.http_port}"
        for office, (name, devices) in reports.items():
            devices = [{**d, "serial": f"{d['serial']}-{office}"} for d in devices]
            r = httpx.post(f"{url}/api/v1/ingest/health", headers={"Authorization": f"Bearer {tokens[office]}"},
                           json={"gateway": {"office_code": office, "office_name": name, "hostname": "gw",
                                             "version": "test"}, "devices": devices}, timeout=10)
            assert r.status_code == 200, r.text
        # Back online later: the terminal's history gets an outage with its end.
        back = [{**terminal("gudang-arsip", since="2026-11-30T04:15:00Z"), "serial": f"SN-gudang-arsip-{A}"},
                {**terminal("lobi-utama"), "serial": f"SN-lobi-utama-{A}"}]
        again = {"offline": {**offline["offline"], "since": "2026-12-01T01:00:00Z",
                             "last_alert_at": "2026-12-01T01:05:00Z"}}
        down = [{**terminal("gudang-arsip", "offline", again, since="2026-12-01T01:00:00Z"),
                 "serial": f"SN-gudang-arsip-{A}"}, {**terminal("lobi-utama"), "serial": f"SN-lobi-utama-{A}"}]
        for devices in (back, down):
            httpx.post(f"{url}/api/v1/ingest/health", headers={"Authorization": f"Bearer {tokens[A]}"},
                       json={"gateway": {"office_code": A}, "devices": devices}, timeout=10).raise_for_status()
        engine = create_db_engine(db_url, pool_size=1)
        try:
            AccountRepo(engine).add("bkd.siti", hash_password(PASSWORD), None)
            AccountRepo(engine).add("tu-dinkes", hash_password(PASSWORD), B)
        finally:
            engine.dispose()
        yield Central(url, [], daemon)


def _sign_in(browser: Browser, url: str, name: str) -> None:
    browser.open(f"{url}/")
    assert "/login" in browser.url()
    browser.submit(f"document.querySelector('[name=username]').value={json.dumps(name)};"
                   f"document.querySelector('[name=password]').value={json.dumps(PASSWORD)};"
                   "document.querySelector('form[action=\"/login\"]').submit()")


def _fits(browser: Browser) -> bool:
    return bool(browser.run("document.documentElement.scrollWidth <= window.innerWidth + 1"))


def test_dashboard_and_history_on_a_phone_and_a_desktop(central: Central, tmp_path: Path) -> None:
    with Browser(tmp_path / "profile") as browser:
        browser.size(*PHONE, mobile=True)
        _sign_in(browser, central.url, "bkd.siti")
        assert browser.url() == f"{central.url}/"
        page = browser.html()
        offices = browser.run("[...document.querySelectorAll('section.office')].map(s => s.id)")
        assert offices == [f"o-{A}", f"o-{B}", f"o-{C}"]  # the offline terminal's office first
        states = browser.run("Object.fromEntries([...document.querySelectorAll('tr.term')]"
                             ".map(r => [r.id, r.dataset.state]))")
        assert states[f"t-{A}-gudang-arsip"] == "offline" and states[f"t-{B}-depan"] == "online"
        assert "Laporan bulanan / monthly report" in page and "Keluar / sign out" in page
        assert _fits(browser), "the dashboard scrolls sideways on a phone"
        shot = tmp_path / "dashboard-phone.png"
        assert browser.screenshot(shot)[:8] == b"\x89PNG\r\n\x1a\n"
        _keep(shot)

        row_id = json.dumps(f"t-{A}-gudang-arsip")
        browser.submit(f"document.getElementById({row_id}).querySelector('a').click()")
        assert browser.url().endswith(f"/terminal/{A}/gudang-arsip")
        outages = browser.run("[...document.querySelectorAll('tr.outage')].map(r => r.innerText)")
        assert len(outages) == 2 and "still offline" in outages[0] and "2 h 15 min" in outages[1]
        assert browser.run("document.getElementById('alerts-sent').innerText") == "2"  # one per outage
        assert _fits(browser)
        shot = tmp_path / "history-phone.png"
        browser.screenshot(shot, full_page=True)
        _keep(shot)

        browser.size(*DESKTOP, mobile=False)
        browser.open(f"{central.url}/?problem=any")
        rows = browser.run("[...document.querySelectorAll('tr.term')].map(r => r.id)")
        assert rows == [f"t-{A}-gudang-arsip", f"t-{B}-depan"]
        assert browser.run("getComputedStyle(document.querySelector('table.terms thead')).display") != "none"
        shot = tmp_path / "dashboard-desktop.png"
        browser.screenshot(shot)
        _keep(shot)
        browser.open(f"{central.url}/terminal/{A}/gudang-arsip")
        shot = tmp_path / "history-desktop.png"
        browser.screenshot(shot, full_page=True)
        _keep(shot)


def test_an_office_account_sees_its_office_only_in_the_browser(central: Central, tmp_path: Path) -> None:
    with Browser(tmp_path / "profile") as browser:
        browser.size(*PHONE, mobile=True)
        _sign_in(browser, central.url, "tu-dinkes")
        assert browser.run("[...document.querySelectorAll('section.office')].map(s => s.id)") == [f"o-{B}"]
        assert "Dinas Pendidikan" not in browser.html()
        shot = tmp_path / "dashboard-office-phone.png"
        browser.screenshot(shot)
        _keep(shot)
        browser.open(f"{central.url}/terminal/{A}/gudang-arsip")
        assert "not found" in browser.html() and "gudang" not in browser.html().replace(browser.url(), "")
        browser.open(f"{central.url}/?office={A}")
        assert "not yours" in browser.html()


@pytest.mark.parametrize("size", ["phone", "desktop"])
def test_monthly_report_download_from_the_dashboard(central: Central, tmp_path: Path, size: str) -> None:
    # The usage figures as the daemon's job computes them (run here, not awaited from its schedule).
    refresh = next(svc for svc in central.daemon.services if isinstance(svc, UsageRefresh))
    assert refresh.run()
    month = datetime.now(ZoneInfo("Asia/Jakarta")).strftime("%Y-%m")
    downloads = tmp_path / "downloads"
    with Browser(tmp_path / "profile") as browser:
        width, height = PHONE if size == "phone" else DESKTOP
        browser.size(width, height, mobile=size == "phone")
        browser.allow_downloads(downloads)
        _sign_in(browser, central.url, "bkd.siti")
        assert browser.run("document.getElementById('usage-at').dataset.ready") == "1"
        assert browser.run("document.querySelectorAll('img.trend').length") == 3
        assert _fits(browser)
        shot = tmp_path / f"dashboard-usage-{size}.png"
        browser.screenshot(shot, full_page=True)
        _keep(shot)

        pick = (f"const f=document.getElementById('report-form');f.querySelector('[name=month]').value="
                f"{json.dumps(month)};f.querySelector('[name=format]').value=")
        browser.run(pick + "'xlsx';document.getElementById('report-download').click()")
        file = browser.wait_download(downloads, ".xlsx")
        assert file.name == f"laporan-{month}.xlsx"
        wb = load_workbook(file, read_only=True)
        assert wb.sheetnames[0].startswith("Ringkasan")
        terminals = wb[next(n for n in wb.sheetnames if n == "Terminal")]
        listed = {(r[0], r[1]) for r in terminals.iter_rows(values_only=True) if r and r[0] in (A, B, C)}
        assert listed == {(A, "lobi-utama"), (A, "gudang-arsip"), (B, "depan"), (B, "belakang"), (C, "aula")}
        wb.close()
        assert browser.url() == f"{central.url}/"  # an attachment: the dashboard stays on screen

        # HTML opens in the browser (Content-Disposition: inline); from a fresh dashboard, as a user would after
        # a download (Chromium ignores a second submission of a form whose first one became a download).
        browser.open(f"{central.url}/")
        browser.submit(pick + "'html';document.getElementById('report-download').click()")
        assert browser.url().startswith(f"{central.url}/report?month={month}&format=html")
        assert "Laporan" in browser.run("document.querySelector('h1').innerText")
        assert browser.run("document.querySelectorAll('svg').length") >= 1
        shot = tmp_path / f"report-html-{size}.png"
        browser.screenshot(shot, full_page=True)
        _keep(shot)

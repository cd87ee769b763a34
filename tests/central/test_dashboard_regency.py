"""A regency end to end: office gateways poll simulated terminals and forward to a real central daemon; the
dashboard at / of the central and the monthly report show exactly the broken terminal, the unused terminal and
the silent office.

Offices: Dinas Kesehatan (one used terminal, one online terminal nobody punches on: unused), Dinas Pendidikan
(one used, one whose port is closed: offline), Bappeda (one used terminal; its gateway then stops reporting:
silent). Each office is a real daemon polling the simulators (polls requested by the test, health swept at an
explicit instant), stopped, then its real forwarder sends punches and health once. Silence is made by moving
Bappeda's last contact into the past, as tests/central/test_silent.py does, instead of waiting two hours.

Usage: a used terminal holds its generated history (ending yesterday) plus USED_TODAY punches made today, so it
has more than UNUSED_PUNCHES_PER_DAY punches per working day over the dashboard's weeks and over this month so
far whatever today's date. Every day of the week is a working day here (the central's [health.working_hours]),
so the figures do not depend on the weekday the test runs. The dashboard's usage snapshot is refreshed by the
test after the data is in (the daemon's own first refresh may run too; refreshes are serialized and see the
same data), never awaited from the schedule.
"""

from __future__ import annotations

import io
import re
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
from openpyxl import load_workbook
from sqlalchemy import update

from gateway.app import Gateway
from gateway.central.auth import hash_password
from gateway.central.report import build_report
from gateway.central.service import UsageRefresh
from gateway.central.tokens import add_token
from gateway.central.usage import WorkRules
from gateway.config import parse_config
from gateway.store import schema as s
from gateway.store.accounts import AccountRepo
from gateway.store.db import create_db_engine, upgrade
from tests.support.central import make_forwarder
from tests.support.config import DeviceEntry, make_config
from tests.support.dashboard import PASSWORD
from tests.support.fleet import running_fleet, sim_spec
from tests.support.gateway import RunningGateway
from tests.support.secrets import remember

pytestmark = pytest.mark.timeout(900)  # see _clear_of_midnight: up to ~9 minutes of waiting once a month
OFFICES = {"dinkes": ("1801.01", "Dinas Kesehatan"), "disdik": ("1801.02", "Dinas Pendidikan"),
           "bappeda": ("1801.03", "Bappeda")}
WIB = ZoneInfo("Asia/Jakarta")
EVERY_DAY = [1, 2, 3, 4, 5, 6, 7]
#: Punches made today on each used terminal: > 2 per day over a 31-day month even with no other punch in it.
USED_TODAY = 100


def _clear_of_midnight(margin_s: float = USED_TODAY + 120, run_s: float = 300) -> None:
    """Start where today's punches (made just before now) fall on today and stay in this month until checked.

    Waits only in the first minutes of a WIB day (17:00 UTC), and in the last ``run_s`` seconds of a month
    (then past midnight): otherwise it returns at once.
    """
    now = datetime.now(WIB)
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    since_midnight = (now - midnight).total_seconds()
    next_midnight = midnight + timedelta(days=1)
    if next_midnight.month != now.month and (next_midnight - now).total_seconds() < run_s:
        since_midnight = -(next_midnight - now).total_seconds()
    if since_midnight < margin_s:
        time.sleep(margin_s - since_midnight)


def _punch_today(sim: Any, n: int) -> None:
    """n punches at distinct seconds just before now (device-local time), newest first."""
    now = datetime.now(WIB).replace(tzinfo=None, microsecond=0)
    for k in range(n):
        sim.add_punches(1, at=now - timedelta(seconds=2 + k))


def _sheet_rows(wb: Any, prefix: str) -> list[list[Any]]:
    """The data rows of the report sheet whose name starts with ``prefix`` (after its header row)."""
    ws = wb[next(n for n in wb.sheetnames if n.startswith(prefix))]
    rows = [list(r) for r in ws.iter_rows(values_only=True)]
    header = next(i for i, r in enumerate(rows) if "Kode / Code" in r)
    return [r for r in rows[header + 1:] if any(v is not None for v in r)]


def _forward_once(tmp_path: Path, name: str, db_url: str, central_url: str) -> None:
    code, office_name = OFFICES[name]
    cfg = parse_config({
        "site": {"office_code": code, "office_name": office_name, "timezone": "Asia/Jakarta",
                 "state_dir": str(tmp_path / name)},
        "database": {"url": db_url},
        "forward": {"url": central_url, "token_file": str(tmp_path / f"{name}.token"), "timeout_s": 5},
    }, base_dir=tmp_path)
    engine = create_db_engine(db_url, pool_size=2)
    upgrade(engine)
    fwd = make_forwarder(cfg, engine, health_every_s=0.01)
    try:
        for _ in range(5):  # punches first, in batches; the health report goes with a run
            result = fwd.run_once()
            if result.health_sent:
                break
        assert result.health_sent
    finally:
        fwd.stop(1)
        engine.dispose()


def test_regency_dashboard_shows_exactly_the_broken_terminal_and_the_silent_office(
        db_url: str, tmp_path: Path) -> None:
    _clear_of_midnight()
    gw_tokens, api_tokens = tmp_path / "gateways.toml", tmp_path / "api.toml"
    for name, (code, _) in OFFICES.items():
        token = add_token(gw_tokens, name, [code], "gateway")
        remember(token)
        (tmp_path / f"{name}.token").write_text(token)
    bkd = add_token(api_tokens, "bkd", None, "api")
    remember(bkd)
    central_cfg = parse_config({
        "site": {"office_code": "1801.00", "office_name": "BKD", "timezone": "Asia/Jakarta",
                 "state_dir": str(tmp_path / "central")},
        "database": {"url": db_url},
        "http": {"enabled": True, "listen": "127.0.0.1", "port": 0},
        "central": {"enabled": True, "gateway_tokens_file": str(gw_tokens), "api_tokens_file": str(api_tokens)},
        "health": {"working_hours": {"days": EVERY_DAY}},
    }, base_dir=tmp_path)
    # dinkes t1: online, never punched on (unused); disdik t1: port closed (offline).
    terminals = {"dinkes": [{}, {"records": 0}], "disdik": [{}, {"faults": {"port_closed": True}}], "bappeda": [{}]}

    with Gateway(central_cfg) as central, running_fleet(tmp_path / "truth.jsonl") as fleet:
        url = f"http://127.0.0.1:{central.ctx.http_port}"
        for n, (name, specs) in enumerate(terminals.items()):
            code, office_name = OFFICES[name]
            sims = [fleet.add(sim_spec(f"{name.upper()}-{i}", **{"records": 200 + i, "records_cap": 1000,
                                                                 "seed": 10 * n + i, **spec}))
                    for i, spec in enumerate(specs)]
            for sim, spec in zip(sims, specs, strict=True):
                if not spec:
                    _punch_today(sim, USED_TODAY)
            db = f"sqlite:///{tmp_path / name}.db"
            cfg = make_config(db, [DeviceEntry(f"t{i}", sim) for i, sim in enumerate(sims)], tmp_path / name,
                              site={"office_code": code, "office_name": office_name, "timezone": "Asia/Jakarta"},
                              health={"offline_after_failures": 1, "offline_after_s": 1},
                              # Punches enter the outbox only with [forward]; the daemon's own forwarder points
                              # at a closed loopback port so it never races _forward_once, which delivers them.
                              forward={"url": "http://127.0.0.1:9", "token_file": str(tmp_path / f"{name}.token"),
                                       "timeout_s": 1})
            with RunningGateway(cfg) as gw:
                gw.poll_all([f"t{i}" for i in range(len(sims))])
                gw.gateway.polls.wait_idle(20)
                health = gw.gateway.ctx.health
                assert health is not None
                health.sweep(datetime.now(UTC) + timedelta(seconds=5))
            _forward_once(tmp_path, name, db, url)

        engine = create_db_engine(db_url, pool_size=2)
        try:
            with engine.begin() as conn:
                conn.execute(update(s.gateways).where(s.gateways.c.office_code == OFFICES["bappeda"][0])
                             .values(last_seen_at=datetime.now(UTC) - timedelta(hours=5)))
            AccountRepo(engine).add("tu-disdik", hash_password(PASSWORD), OFFICES["disdik"][0])
            month = datetime.now(WIB).strftime("%Y-%m")
            rules = WorkRules(workdays=tuple(EVERY_DAY), timezone="Asia/Jakarta")
            workbook = load_workbook(io.BytesIO(build_report(engine, month, "xlsx", rules=rules)), read_only=False)
        finally:
            engine.dispose()
        refresh = next(svc for svc in central.services if isinstance(svc, UsageRefresh))
        assert refresh.run()

        page = httpx.get(f"{url}/", headers={"Authorization": f"Bearer {bkd}"}, timeout=10).text
        offline = httpx.get(f"{url}/", params={"problem": "offline"}, headers={"Authorization": f"Bearer {bkd}"},
                            timeout=10).text
        # An office account through the real login form on the real server.
        with httpx.Client(base_url=url, timeout=10) as browser:
            form = browser.get("/login").text
            csrf = re.search(r'name="csrf" value="([^"]+)"', form)
            assert csrf
            r = browser.post("/login", data={"csrf": csrf.group(1), "username": "tu-disdik", "password": PASSWORD,
                                             "next": "/"})
            assert r.status_code == 303
            scoped = browser.get("/").text
            other = browser.get(f"/terminal/{OFFICES['dinkes'][0]}/t0")
            own = browser.get(f"/terminal/{OFFICES['disdik'][0]}/t1").text

    offices = re.findall(r'<section class="office" id="o-([^"]+)" data-gateway="([a-z]+)"', page)
    assert offices == [("1801.03", "silent"), ("1801.02", "online"), ("1801.01", "online")]
    states = dict(re.findall(r'<tr class="term" id="t-([^"]+)" data-state="([a-z]+)"', page))
    assert states == {"1801.01-t0": "online", "1801.01-t1": "online", "1801.02-t0": "online",
                      "1801.02-t1": "offline", "1801.03-t0": "online"}
    # Usage: exactly the online terminal nobody punches on is "unused" (not the offline one, not the silent
    # office's), and every office with punches has its attendance line and trend chart.
    assert 'id="usage-at" data-ready="1"' in page
    unused = dict(re.findall(r'<tr class="term" id="t-([^"]+)" data-state="[a-z]+" data-unused="(\d)"', page))
    assert unused == {"1801.01-t0": "0", "1801.01-t1": "1", "1801.02-t0": "0", "1801.02-t1": "0", "1801.03-t0": "0"}
    assert re.search(r'id="n-unused">1 tidak dipakai', page)
    assert sorted(re.findall(r'src="/usage/([^"]+)\.svg"', page)) == ["1801.01", "1801.02", "1801.03"]

    # The monthly report of this month shows exactly the same ones.
    broken = _sheet_rows(workbook, "Rusak")
    assert [(r[0], r[1], r[4]) for r in broken] == [("1801.02", "t1", "offline")]
    assert [(r[0], r[1]) for r in _sheet_rows(workbook, "Tidak dipakai")] == [("1801.01", "t1")]
    assert [r[0] for r in _sheet_rows(workbook, "Diam")] == ["1801.03"]
    ranking = {r[1]: r for r in _sheet_rows(workbook, "Peringkat")}
    assert {code: (r[4], r[5]) for code, r in ranking.items()} == {
        "1801.01": (0, 1), "1801.02": (1, 0), "1801.03": (0, 0)}  # (broken, unused) per office
    assert re.findall(r'<tr class="term" id="t-([^"]+)"', offline) == ["1801.02-t1"]
    assert 'data-problem="offline"' in page and "Dinas Pendidikan" in page and "Bappeda" in page
    assert re.findall(r'<section class="office" id="o-([^"]+)"', scoped) == ["1801.02"]
    assert other.status_code == 404
    assert 'id="terminal" data-state="offline"' in own and 'data-kind="state"' in own

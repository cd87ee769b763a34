"""End to end over real HTTP on loopback: office gateways -> regency central -> national central.

Three offices of regency 1801 (and one misconfigured office, 1802.05, that the regency accepts but the national
tier does not let regency 1801 speak for) store punches and forward them with their own Forwarders to the
regency's central API. The regency ([central.upstream]) queues every new punch in its outbox in the ingest
transaction and its Forwarder sends them to the national central with a token scoped ``1801.*``. The national
tier is stopped for a while, then refuses the regency's token, then comes back; punches keep arriving at the
regency meanwhile and an office resends a batch. At the end the national database holds exactly the ground truth
once, each punch under its office of origin, and each tier's pull API sees exactly its token's offices.

Every forwarding run is an explicit ``run_once`` on a settable clock (nothing races a schedule); the servers are
uvicorn threads on 127.0.0.1:0, stopped at the end.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from gateway import wire
from gateway.central.api import build_api
from gateway.central.tokens import add_token
from gateway.config import Config, parse_config
from gateway.forward.forwarder import Forwarder
from gateway.models import Punch
from gateway.store import schema as s
from gateway.store.central import CentralStore
from gateway.store.db import create_db_engine, upgrade
from gateway.store.outbox import Outbox
from gateway.store.punches import Store
from gateway.web.server import ThreadedServer
from tests.support import pg
from tests.support.clock import FakeClock
from tests.support.config import forward_config
from tests.support.punches import make_punch, store_punches
from tests.support.secrets import remember

pytestmark = pytest.mark.timeout(240)

REGENCY = "1801"
OFFICES = ("1801.01", "1801.02", "1801.03")
#: Accepted by the regency (its token names it) but outside the regency's scope at the national tier.
STRAY = "1802.05"

Key = tuple[str, str, str, str, int]


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def tier_urls(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """(regency database, national database): both SQLite files, or two throwaway PostgreSQL databases."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'regency.db'}", f"sqlite:///{tmp_path / 'national.db'}"
        return
    server = request.getfixturevalue("pg_server_url")
    with pg.fresh_database(server, "fpgw_regency") as regency, pg.fresh_database(server, "fpgw_national") as national:
        yield regency, national


@dataclass
class Office:
    code: str
    store: Store
    fwd: Forwarder
    engine: Any
    serial: str


def _central_config(tmp_path: Path, name: str, db_url: str, office_code: str, **central: Any) -> Config:
    return parse_config({
        "site": {"office_code": office_code, "timezone": "Asia/Jakarta", "state_dir": str(tmp_path / name)},
        "database": {"url": db_url},
        "central": {"enabled": True, "gateway_tokens_file": str(tmp_path / f"{name}-gateways.toml"),
                    "api_tokens_file": str(tmp_path / f"{name}-api.toml"), **central},
    }, base_dir=tmp_path)


def _keys(engine: Any) -> Counter[Key]:
    p = s.punches.c
    with engine.connect() as conn:
        return Counter((r[0], r[1], r[2], r[3], r[4]) for r in conn.execute(
            select(p.office_code, p.device_serial, p.device_user_id, p.device_time, p.occurrence)))


def _key(p: Punch) -> Key:
    return (p.office_code, p.device_serial, p.device_user_id, p.device_time, p.occurrence)


def _pull_all(base: str, token: str, **params: Any) -> list[dict[str, Any]]:
    """Every punch a BKD client gets by following the cursor (pages of 37, so several pages)."""
    out: list[dict[str, Any]] = []
    cursor = ""
    with httpx.Client(base_url=base, timeout=10) as client:
        while True:
            r = client.get("/api/v1/punches", params={"cursor": cursor, "limit": 37, **params},
                           headers={"Authorization": f"Bearer {token}"})
            assert r.status_code == 200, r.text
            doc = r.json()
            out += doc["items"]
            cursor = doc["next_cursor"]
            if not doc["has_more"]:
                return out


def _get(base: str, path: str, token: str, **params: Any) -> httpx.Response:
    return httpx.get(base + path, params=params, headers={"Authorization": f"Bearer {token}"}, timeout=10)


def _backlog_alerts(engine: Any) -> list[str]:
    a = s.alerts.c
    with engine.connect() as conn:
        return [r[0] for r in conn.execute(select(a.event).where(a.problem == "forward_backlog").order_by(a.id))]


def _pending(engine: Any) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(s.outbox)
                                .where(s.outbox.c.state == "pending")).scalar_one())


def test_offices_to_regency_to_national_with_the_national_tier_down_then_refusing_then_back(
        tier_urls: tuple[str, str], tmp_path: Path) -> None:
    regency_url, national_url = tier_urls
    clock = FakeClock(datetime.now(UTC) + timedelta(minutes=5))  # ahead of the rows' real creation times
    truth: list[Punch] = []
    with ExitStack() as stack:
        # -- national tier: the regency's token may speak for 1801.* only ------------------------------------
        nat_cfg_tokens = tmp_path / "national-gateways.toml"
        regency_token = add_token(nat_cfg_tokens, "kab-1801", ["1801.*"], "gateway")
        other_regency = add_token(nat_cfg_tokens, "kab-1802", ["1802.*"], "gateway")
        nat_api_file = tmp_path / "national-api.toml"
        bkn_all = add_token(nat_api_file, "bkn", None, "api")
        bkn_one = add_token(nat_api_file, "bkn-1801-01", ["1801.01"], "api")
        bkn_kab = add_token(nat_api_file, "bkn-kab-1801", ["1801.*"], "api")
        remember(regency_token, other_regency, bkn_all, bkn_one, bkn_kab)
        national_cfg = _central_config(tmp_path, "national", national_url, "00")
        nat_engine = create_db_engine(national_url, pool_size=4)
        stack.callback(nat_engine.dispose)
        upgrade(nat_engine)
        nat_app = build_api(national_cfg, CentralStore(nat_engine)).app()
        national = ThreadedServer(nat_app, thread_name="fpgw-http-national")
        national.start()
        nat_port = national.port
        assert nat_port is not None
        stack.callback(lambda: national.stop(5))
        nat_base = national.url

        # -- regency tier: offices' tokens, BKD readers, and [central.upstream] to the national tier ---------
        (tmp_path / "upstream-token").write_text(regency_token + "\n")
        reg_gw_file, reg_api_file = tmp_path / "regency-gateways.toml", tmp_path / "regency-api.toml"
        office_tokens = {code: add_token(reg_gw_file, f"gw-{code}", [code], "gateway") for code in (*OFFICES, STRAY)}
        bkd_all = add_token(reg_api_file, "bkd", None, "api")
        bkd_two = add_token(reg_api_file, "bkd-1801-02", ["1801.02"], "api")
        remember(*office_tokens.values(), bkd_all, bkd_two)
        regency_cfg = _central_config(tmp_path, "regency", regency_url, REGENCY, upstream={
            "url": nat_base, "token_file": str(tmp_path / "upstream-token"), "batch_size": 40, "interval_s": 30,
            "backoff_initial_s": 5, "backoff_max_s": 3600, "health_interval_s": 60})
        assert regency_cfg.forward == regency_cfg.central.upstream  # the one forwarding link of this daemon
        reg_engine = create_db_engine(regency_url, pool_size=4)
        stack.callback(reg_engine.dispose)
        upgrade(reg_engine)
        regency = ThreadedServer(build_api(regency_cfg, CentralStore(reg_engine)).app(),
                                 thread_name="fpgw-http-regency")
        regency.start()
        stack.callback(lambda: regency.stop(5))
        up = Forwarder(regency_cfg, Outbox(reg_engine, REGENCY), now=clock, rng=random.Random(1))
        stack.callback(lambda: up.stop(1))
        assert up.tier

        # -- offices: SQLite gateways forwarding to the regency -----------------------------------------------
        offices: list[Office] = []
        for n, code in enumerate((*OFFICES, STRAY)):
            folder = tmp_path / f"office-{code}"
            folder.mkdir()
            (folder / "office-token").write_text(office_tokens[code] + "\n")
            cfg = forward_config(folder, f"sqlite:///{folder / 'gw.db'}", office_code=code, url=regency.url,
                                 batch_size=25, token_file=str(folder / "office-token"))
            engine = create_db_engine(cfg.database.url)
            stack.callback(engine.dispose)
            upgrade(engine)
            store = Store(engine, code)
            store.sync_devices(cfg.devices)
            fwd = Forwarder(cfg, Outbox(engine, code), now=clock, rng=random.Random(n))
            stack.callback(fwd.stop, 1)
            offices.append(Office(code, store, fwd, engine, f"SN-{code}"))

        def punch_day(day: int, users: int) -> None:
            base = datetime(2026, 11, 2, 7, 0) + timedelta(days=day)
            for office in offices:
                items = [make_punch(str(u), base + timedelta(minutes=u), office_code=office.code,
                                    serial=office.serial, employee_id=f"NIP{u}") for u in range(users)]
                store_punches(office.store, items)
                truth.extend(items)

        def offices_forward() -> None:
            for office in offices:
                report = office.fwd.run_once()
                assert report.error is None and report.rejected == 0, report

        # -- day 0: everything flows to the top -------------------------------------------------------------
        punch_day(0, 30)
        offices_forward()
        assert sum(_keys(reg_engine).values()) == len(truth) and _pending(reg_engine) == len(truth)
        first = up.run_once()
        assert first.error is None and first.health_sent
        assert first.accepted == 30 * len(OFFICES) and first.rejected == 30  # STRAY's punches: out of scope

        # -- the national tier is stopped: the regency keeps everything, its offices go on ------------------
        national.stop(5)
        punch_day(1, 45)
        offices_forward()
        down = up.run_once()
        assert down.error == "unreachable" and down.accepted == 0 and up.down_since is not None
        assert _pending(reg_engine) == 45 * len(offices)
        # A week later it is still down: still nothing lost, and one backlog alert at the regency.
        clock.advance(7 * 86400)
        assert up.run_once().error == "unreachable" and up.run_once().skipped
        assert _backlog_alerts(reg_engine) == ["start"] and _pending(reg_engine) == 45 * len(offices)
        # An office resends punches the regency already has (a gateway restored from a backup, say): duplicates,
        # so no outbox row and nothing twice anywhere.
        resent = [wire.encode_punch(p) for p in truth if p.office_code == OFFICES[0]][:10]
        answer = httpx.post(regency.url + "/api/v1/ingest/punches", json=wire.punch_batch(resent, {}),
                            headers={"Authorization": f"Bearer {office_tokens[OFFICES[0]]}"}, timeout=10).json()
        assert answer["duplicates"] == 10 and answer["new"] == 0
        assert _pending(reg_engine) == 45 * len(offices)

        # -- it comes back but refuses the regency's token (revoked by mistake) ----------------------------
        national = ThreadedServer(nat_app, port=nat_port, thread_name="fpgw-http-national")
        national.start()
        original = nat_cfg_tokens.read_text()
        nat_cfg_tokens.write_text("# every token revoked for a moment\n")
        nat_cfg_tokens.chmod(0o600)
        assert up.retry_at is not None
        clock.now = up.retry_at + timedelta(seconds=1)
        refused = up.run_once()
        assert refused.error == "unauthorized" and refused.accepted == 0
        punch_day(2, 20)
        offices_forward()

        # -- the token is restored: the next due run drains the whole backlog in batches -------------------
        nat_cfg_tokens.write_text(original)
        clock.now = up.retry_at + timedelta(seconds=1)
        back = up.run_once()
        assert back.error is None and up.down_since is None
        assert back.requests >= (65 * len(offices)) // 40  # many batches, one run
        assert _pending(reg_engine) == 0 and _backlog_alerts(reg_engine) == ["start", "end"]

        # -- the national tier holds exactly the ground truth of regency 1801, once, under each origin office
        in_scope = Counter(_key(p) for p in truth if p.office_code != STRAY)
        assert _keys(nat_engine) == in_scope
        assert _keys(reg_engine) == Counter(_key(p) for p in truth)
        rejected = Outbox(reg_engine, REGENCY).rejected(1000)
        assert len(rejected) == 95 and {r["device_serial"] for r in rejected} == {f"SN-{STRAY}"}
        assert all(r["last_error"].startswith("office_out_of_scope") for r in rejected)

        # -- each tier's pull API sees exactly its token's offices -----------------------------------------
        national_all = _pull_all(nat_base, bkn_all)
        assert Counter((r["office_code"], r["device_serial"], r["device_user_id"], r["device_time"])
                       for r in national_all) == Counter(k[:4] for k in in_scope.elements())
        one = _pull_all(nat_base, bkn_one)
        assert one and {r["office_code"] for r in one} == {"1801.01"}
        assert len(one) == sum(1 for k in in_scope.elements() if k[0] == "1801.01")
        kab = _pull_all(nat_base, bkn_kab)
        assert len(kab) == len(national_all)
        assert _get(nat_base, "/api/v1/punches", bkn_one, office="1801.02").status_code == 403
        assert _get(nat_base, "/api/v1/punches", bkn_kab, office="1801.02").status_code == 200
        regency_two = _pull_all(regency.url, bkd_two)
        assert {r["office_code"] for r in regency_two} == {"1801.02"}
        assert len(regency_two) == sum(1 for p in truth if p.office_code == "1801.02")
        assert len(_pull_all(regency.url, bkd_all)) == len(truth)

        # -- the national tier knows the regency's terminals, each under its office --------------------------
        devices = _get(nat_base, "/api/v1/devices", bkn_all).json()["items"]
        assert {d["office_code"] for d in devices} == set(OFFICES)
        assert {d["office_code"] for d in _get(nat_base, "/api/v1/devices", bkn_one).json()["items"]} == {"1801.01"}
        # ...and the regency as one gateway under its own code, seen by a national-wide reader.
        gateways = _get(nat_base, "/api/v1/gateways", bkn_all).json()["items"]
        assert [(g["name"], g["office_code"]) for g in gateways] == [("kab-1801", REGENCY)]

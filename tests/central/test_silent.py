"""Silent office gateways on the central instance: one start, reminders, one end, never twice across a restart.

The central API runs in-process (Starlette TestClient) on SQLite and PostgreSQL; gateways report through
the real ingest endpoint. Time is explicit: a gateway's last contact is moved into the past in the
gateways table, and ``CentralService.check_silent(now)`` is called with the instant to judge.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import select, update

from gateway.central.api import CentralApi
from gateway.central.silent import PROBLEM_SILENT, CentralService
from gateway.central.tokens import add_token
from gateway.config import Config, ConfigError, parse_config
from gateway.store import schema as s
from gateway.store.central import CentralStore
from gateway.store.db import create_db_engine, upgrade

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

pytestmark = pytest.mark.timeout(60)
CENTRE, OFFICE_A, OFFICE_B = "1801.00", "1801.01", "1801.02"


@dataclass
class Centre:
    config: Config
    engine: Any
    api: CentralApi
    client: TestClient
    tokens: dict[str, str]
    tmp_path: Path

    def report(self, gateway: str, **meta: Any) -> None:
        r = self.client.post("/api/v1/ingest/health", json={"gateway": meta, "devices": []},
                             headers={"Authorization": f"Bearer {self.tokens[gateway]}"})
        assert r.status_code == 200, r.text

    def backdate(self, gateway: str, seconds: float) -> datetime:
        return self.contact(gateway, datetime.now(UTC) - timedelta(seconds=seconds))

    def contact(self, gateway: str, at: datetime) -> datetime:
        """Set a gateway's last contact (as if it had reported at ``at``)."""
        with self.engine.begin() as conn:
            conn.execute(update(s.gateways).where(s.gateways.c.name == gateway).values(last_seen_at=at))
        return at

    def service(self, *, fresh_start: bool = False) -> CentralService:
        ctx = SimpleNamespace(config=self.config, health=None, scheduler=None)
        svc = CentralService(ctx, self.api)  # type: ignore[arg-type]
        if fresh_start:
            svc.grace_from = svc._outage_grace(datetime.now(UTC))
        return svc

    def alerts(self) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(select(s.alerts).where(s.alerts.c.problem == PROBLEM_SILENT)
                                                  .order_by(s.alerts.c.id)).mappings()]

    def gateways(self) -> dict[str, dict[str, Any]]:
        r = self.client.get("/api/v1/gateways", headers={"Authorization": f"Bearer {self.tokens['bkd']}"})
        assert r.status_code == 200
        return {g["name"]: g for g in r.json()["items"]}


@pytest.fixture
def centre(db_url: str, tmp_path: Path) -> Iterator[Centre]:
    gw_file, api_file = tmp_path / "gateways.toml", tmp_path / "api.toml"
    tokens = {"gw-a": add_token(gw_file, "gw-a", [OFFICE_A], "gateway"),
              "gw-b": add_token(gw_file, "gw-b", [OFFICE_B], "gateway"),
              "bkd": add_token(api_file, "bkd", None, "api")}
    config = parse_config({
        "site": {"office_code": CENTRE, "office_name": "BKD", "timezone": "Asia/Jakarta"},
        "database": {"url": db_url},
        "alerts": {"reminder_s": "1d"},
        "central": {"enabled": True, "gateway_tokens_file": str(gw_file), "api_tokens_file": str(api_file),
                    "gateway_silent_after_s": "2h"},
    }, base_dir=tmp_path)
    engine = create_db_engine(db_url, pool_size=4)
    upgrade(engine)
    api = CentralApi(config.central, CentralStore(engine))
    client = TestClient(api.app())
    try:
        yield Centre(config, engine, api, client, tokens, tmp_path)
    finally:
        client.close()
        engine.dispose()


def test_config_key_defaults_and_bounds(tmp_path: Path) -> None:
    base = {"site": {"office_code": CENTRE, "timezone": "Asia/Jakarta"}, "database": {"url": "sqlite://"}}
    assert parse_config(base, base_dir=tmp_path).central.gateway_silent_after_s == 7200.0
    assert parse_config({**base, "central": {"gateway_silent_after_s": "30m"}},
                        base_dir=tmp_path).central.gateway_silent_after_s == 1800.0
    with pytest.raises(ConfigError, match="gateway_silent_after_s"):
        parse_config({**base, "central": {"gateway_silent_after_s": 60}}, base_dir=tmp_path)


def test_silent_gateway_alerts_once_reminds_recovers_once_and_survives_a_restart(centre: Centre) -> None:
    centre.report("gw-a", office_name="Dinas Kesehatan", hostname="gw-dinkes", version="1.2.3", outbox_depth=12,
                  oldest_unforwarded_s=300.0)
    centre.report("gw-b")
    svc = centre.service()
    assert svc.check_silent() == []
    assert {n: g["silent"] for n, g in centre.gateways().items()} == {"gw-a": False, "gw-b": False}

    last = centre.backdate("gw-a", 3 * 3600)  # gw-a stopped reporting three hours ago
    assert svc.check_silent() == [("gw-a", "start")]
    for _ in range(3):
        assert svc.check_silent() == []
    gws = centre.gateways()
    assert gws["gw-a"]["silent"] is True and gws["gw-b"]["silent"] is False
    assert gws["gw-a"]["office_name"] == "Dinas Kesehatan"
    assert "silent_since" not in gws["gw-a"] and "silent_notified_at" not in gws["gw-a"]

    # A restart of the central: the open alert is known, nothing is sent again.
    restarted = centre.service(fresh_start=True)
    assert restarted.grace_from is None  # the check ran moments ago: a restart, not an outage
    assert restarted.check_silent() == []

    # Reminders at alerts.reminder_s, once per period (gw-b keeps reporting meanwhile).
    now = datetime.now(UTC)

    def check_at(service: CentralService, later: timedelta) -> list[tuple[str, str]]:
        centre.contact("gw-b", now + later - timedelta(minutes=1))
        return service.check_silent(now + later)

    assert check_at(restarted, timedelta(hours=23)) == []
    assert check_at(restarted, timedelta(hours=24, seconds=1)) == [("gw-a", "reminder")]
    assert check_at(restarted, timedelta(hours=24, seconds=30)) == []
    assert check_at(svc, timedelta(hours=30)) == []
    assert check_at(restarted, timedelta(hours=48, seconds=2)) == [("gw-a", "reminder")]
    centre.contact("gw-b", now)

    centre.report("gw-a", outbox_depth=4000, oldest_unforwarded_s=3 * 3600.0)
    assert centre.gateways()["gw-a"]["silent"] is False
    assert svc.check_silent() == [("gw-a", "end")]
    assert svc.check_silent() == [] and restarted.check_silent() == []

    rows = centre.alerts()
    assert [(r["event"], r["severity"]) for r in rows] == [("start", "critical"), ("reminder", "critical"),
                                                           ("reminder", "critical"), ("end", "info")]
    # Rows belong to the central's own office (its alert sender delivers them); the document names the office.
    assert {r["office_code"] for r in rows} == {CENTRE} and all(r["device_id"] is None for r in rows)
    start = json.loads(rows[0]["details"])
    assert start["office"] == {"code": OFFICE_A, "name": "Dinas Kesehatan"}
    assert start["gateway"]["name"] == "gw-a" and start["gateway"]["outbox_depth"] == 12
    assert datetime.fromisoformat(start["gateway"]["last_contact_at"]) == last
    assert start["title"].startswith("[PROBLEM] Office gateway gw-a - Dinas Kesehatan (1801.01) silent for 3.0 h")
    assert "12 punch(es) waiting" in start["message"] and "gw-dinkes" in start["message"]
    checks = " ".join(start["check"])
    assert "systemctl status fpgw" in checks and "fpgw forward status" in checks and "powered" in checks
    assert "What to check:" in start["message"] and start["problem"] == PROBLEM_SILENT
    end = json.loads(rows[-1]["details"])
    assert end["title"].startswith("[RESOLVED] Office gateway gw-a") and "after 3.0 h" in end["title"]
    assert end["check"] == [] and "4000 punch(es) waiting" in end["message"]


def test_after_an_outage_of_the_central_itself_gateways_get_time_to_come_back(centre: Centre) -> None:
    centre.report("gw-a")
    centre.backdate("gw-a", 5 * 3600)
    svc = centre.service(fresh_start=True)  # never checked before: treated like coming back from an outage
    assert svc.grace_from is not None
    assert svc.check_silent() == []
    now = datetime.now(UTC)
    assert svc.check_silent(now + timedelta(hours=1)) == []
    assert svc.check_silent(now + timedelta(hours=2, seconds=5)) == [("gw-a", "start")]

    # The central is down for an hour: the open alert stays open, no new start after the restart.
    later = centre.service()
    later.grace_from = later._outage_grace(now + timedelta(hours=3, seconds=5))
    assert later.grace_from is not None
    assert later.check_silent(now + timedelta(hours=3, seconds=6)) == []
    assert [r["event"] for r in centre.alerts()] == ["start"]


def test_a_gateway_whose_token_was_removed_is_no_longer_watched(centre: Centre) -> None:
    centre.report("gw-a")
    centre.report("gw-b")
    centre.backdate("gw-a", 3 * 3600)
    centre.backdate("gw-b", 3 * 3600)
    svc = centre.service()
    assert sorted(svc.check_silent()) == [("gw-a", "start"), ("gw-b", "start")]
    gw_file = centre.tmp_path / "gateways.toml"
    entries = gw_file.read_text().split("[[token]]")
    gw_file.write_text("[[token]]".join(e for e in entries if 'name = "gw-b"' not in e))
    assert svc.check_silent() == [("gw-b", "end")]
    assert svc.check_silent(datetime.now(UTC) + timedelta(days=3)) == [("gw-a", "reminder")]
    end = json.loads(centre.alerts()[-2]["details"])
    assert end["event"] == "end" and "token was removed" in end["message"]


def test_fpgw_central_gateways_marks_silent_gateways(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from gateway.cli.main import main
    from gateway.store.central import CentralStore

    db = f"sqlite:///{tmp_path / 'central.db'}"
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'[site]\noffice_code = "{CENTRE}"\ntimezone = "Asia/Jakarta"\nstate_dir = "{tmp_path}"\n'
                   f'[database]\nurl = "{db}"\n[central]\ngateway_silent_after_s = "1h"\n')
    engine = create_db_engine(db)
    upgrade(engine)
    store = CentralStore(engine)
    for name, office in (("dinkes-gw", OFFICE_A), ("disdik-gw", OFFICE_B)):
        store.ingest_health(gateway=name, office_code=office, devices=[], meta={"outbox_depth": 3})
    with engine.begin() as conn:
        conn.execute(update(s.gateways).where(s.gateways.c.name == "disdik-gw")
                     .values(last_seen_at=datetime.now(UTC) - timedelta(hours=5)))
    engine.dispose()
    capsys.readouterr()
    assert main(["-c", str(cfg), "central", "gateways"]) == 0
    out = capsys.readouterr().out
    lines = {ln.split()[0]: ln.split() for ln in out.splitlines()[1:3]}
    assert lines["dinkes-gw"][5] == "ok" and lines["disdik-gw"][5] == "SILENT"
    assert "1 gateway(s) SILENT" in out and "systemctl status fpgw" in out
    assert main(["-c", str(cfg), "central", "gateways", "--json"]) == 0
    assert {g["name"]: g["silent"] for g in json.loads(capsys.readouterr().out)} == {"dinkes-gw": False,
                                                                                    "disdik-gw": True}


def test_a_failing_check_is_logged_once_per_streak(centre: Centre, monkeypatch: pytest.MonkeyPatch) -> None:
    import gateway.central.silent

    events: list[str] = []
    monkeypatch.setattr(gateway.central.silent.log, "exception", lambda msg, **kw: events.append(msg))
    monkeypatch.setattr(gateway.central.silent.log, "info", lambda msg, **kw: events.append(msg))
    svc = centre.service()
    broken = True
    real = centre.api.store.silent_watch_rows

    def rows() -> list[dict[str, Any]]:
        if broken:
            raise OSError("database gone")
        return real()

    monkeypatch.setattr(centre.api.store, "silent_watch_rows", rows)
    for _ in range(3):
        assert svc.check_silent() == []
    broken = False
    assert svc.check_silent() == []
    assert events == ["silent-gateway check failed; retrying every check", "silent-gateway check works again"]

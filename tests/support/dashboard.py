"""The central's regency dashboard for tests and benchmarks: a central with N office gateway tokens, the dashboard
beside the JSON API behind a Starlette TestClient, accounts, logins and health reports through the real ingest."""

from __future__ import annotations

import json
import re
import warnings
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import update
from starlette.applications import Starlette

from gateway.central.api import CentralApi
from gateway.central.auth import LoginLimiter, hash_password
from gateway.central.dashboard import Dashboard
from gateway.central.tokens import TokenFile, add_token
from gateway.config import CentralConfig
from gateway.store import schema as s
from gateway.store.accounts import AccountRepo
from gateway.store.central import CentralStore
from gateway.store.db import create_db_engine, upgrade
from tests.support.secrets import remember

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

PASSWORD = "kata-sandi-yang-panjang"


@dataclass
class Regency:
    """A central with one gateway token per office, BKD API tokens, and the dashboard + API app."""

    engine: Any
    store: CentralStore
    api: CentralApi
    dashboard: Dashboard
    app: Starlette
    gateway_tokens: dict[str, str] = field(default_factory=dict)
    api_tokens: dict[str, str] = field(default_factory=dict)

    def client(self) -> TestClient:
        """A new browser-like client (own cookie jar); close it after use."""
        return TestClient(self.app, follow_redirects=False)

    def report_health(self, client: TestClient, office: str, devices: list[dict[str, Any]],
                      office_name: str = "") -> Any:
        """POST /api/v1/ingest/health as the office's gateway (serials get the office appended: unique per office)."""
        devices = [{**d, "serial": f"{d['serial']}-{office}"} for d in devices]
        doc = {"gateway": {"office_code": office, "office_name": office_name or f"Kantor {office}",
                           "hostname": f"gw-{office}", "version": "test"}, "devices": devices}
        # ASCII JSON: a lone surrogate in a test document travels as its \u escape, as a gateway would send it.
        r = client.post("/api/v1/ingest/health", content=json.dumps(doc).encode(),
                        headers={"Authorization": f"Bearer {self.gateway_tokens[office]}",
                                 "Content-Type": "application/json"})
        assert r.status_code == 200, r.text
        return r

    def ingest_punches(self, client: TestClient, office: str, punches: list[dict[str, Any]],
                       batch_id: str = "b1") -> Any:
        """POST /api/v1/ingest/punches as the office's gateway (wire punches, e.g. tests.support.central.punch)."""
        r = client.post("/api/v1/ingest/punches", json={"batch_id": batch_id, "punches": punches},
                        headers={"Authorization": f"Bearer {self.gateway_tokens[office]}"})
        assert r.status_code == 200, r.text
        return r

    def silence(self, office: str, hours: float = 5) -> None:
        """Move the office gateway's last contact into the past (as if it stopped reporting then)."""
        with self.engine.begin() as conn:
            conn.execute(update(s.gateways).where(s.gateways.c.office_code == office)
                         .values(last_seen_at=datetime.now(UTC) - timedelta(hours=hours)))

    def add_account(self, name: str, office: str | None, password: str = PASSWORD) -> None:
        """A dashboard account (office None = regency-wide)."""
        AccountRepo(self.engine).add(name, hash_password(password), office)


def make_regency(db_url: str, tmp_path: Path, offices: list[str], *, limiter: LoginLimiter | None = None,
                 pool_size: int = 4) -> Regency:
    """Migrated database, tokens for every office's gateway, BKD tokens 'all' and one per office."""
    engine = create_db_engine(db_url, pool_size=pool_size)
    upgrade(engine)
    gw_file, api_file = tmp_path / "gateways.toml", tmp_path / "api.toml"
    gw = {o: add_token(gw_file, f"gw-{o}", [o], "gateway") for o in offices}
    api_tokens = {"all": add_token(api_file, "bkd", None, "api")}
    for o in offices[:3]:
        api_tokens[o] = add_token(api_file, f"bkd-{o}", [o], "api")
    remember(*gw.values(), *api_tokens.values())
    config = CentralConfig(enabled=True, gateway_tokens_file=gw_file, api_tokens_file=api_file,
                           gateway_silent_after_s=7200.0)
    store = CentralStore(engine)
    api = CentralApi(config, store, gateway_tokens=TokenFile(gw_file, "gateway"),
                     api_tokens=TokenFile(api_file, "api"))
    dash = Dashboard(store, api_tokens=api.api_tokens, timezone="Asia/Jakarta", silent_after_s=7200.0,
                     limiter=limiter)
    app = Starlette(routes=[*api.routes(), *dash.routes()])
    return Regency(engine, store, api, dash, app, gw, api_tokens)


def login(client: TestClient, name: str, password: str = PASSWORD, next_url: str = "/") -> Any:
    """Sign in through the login form (GET for the CSRF pair, then POST); the session cookie stays in client."""
    page = client.get("/login")
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert csrf, page.text
    return client.post("/login", data={"csrf": csrf.group(1), "username": name, "password": password,
                                       "next": next_url})


def terminal(device_id: str, state: str = "online", problems: dict[str, Any] | None = None,
             since: str = "2026-11-30T00:00:00Z", **kw: Any) -> dict[str, Any]:
    """A wire device health object as an office gateway forwards it."""
    doc: dict[str, Any] = {
        "device_id": device_id, "name": f"Terminal {device_id}", "location": "lobi", "address": "10.0.0.5",
        "port": 4370, "transport": "tcp", "serial": f"SN-{device_id}", "firmware": "Ver 6.60", "enabled": True,
        "last_seen_at": "2026-12-01T01:00:00Z", "last_ok_at": "2026-12-01T01:00:00Z",
        "last_record_count": 812, "last_user_count": 40, "records_cap": 100000, "users_cap": 3000,
        "last_punch_at": "2026-12-01T00:45:00Z", "clock_skew_s": 3.0,
        "health": {"state": state, "state_since": since, "consecutive_failures": 3 if state == "offline" else 0,
                   "problems": problems or {}}}
    doc.update(kw)
    return doc

"""Both ends of forwarding for tests: an office Forwarder over a database, and the central API behind a Starlette
TestClient (two office gateway tokens, two BKD tokens, wire punch documents)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from gateway.central.api import CentralApi
from gateway.central.tokens import add_token
from gateway.config import CentralConfig, Config
from gateway.forward.forwarder import Forwarder
from gateway.store import schema as s
from gateway.store.central import CentralStore
from gateway.store.db import create_db_engine, upgrade
from gateway.store.outbox import Outbox
from tests.support.secrets import remember

OFFICE_A = "1801.01"
OFFICE_B = "1801.02"


with warnings.catch_warnings():
    # Starlette 1.x nudges towards httpx2 for its TestClient; httpx is what the project ships.
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient


def make_forwarder(config: Config, engine: Any, **kw: Any) -> Forwarder:
    """The office's forwarder over ``engine``'s outbox (keywords go to Forwarder)."""
    return Forwarder(config, Outbox(engine, config.site.office_code), **kw)


@dataclass
class Central:
    """A central API with tokens for two offices (gw_a, gw_b) and two BKD readers (all offices, office A)."""

    client: TestClient
    engine: Any
    gw_a: str
    gw_b: str
    bkd_all: str
    bkd_a: str
    api: CentralApi

    def ingest(self, punches: list[dict[str, Any]], *, token: str | None = None, batch_id: str = "b1",
               **extra: Any) -> Any:
        doc = {"batch_id": batch_id, "punches": punches, **extra}
        return self.client.post("/api/v1/ingest/punches", json=doc,
                                headers={"Authorization": f"Bearer {token or self.gw_a}"})

    def get(self, path: str, token: str | None = None, **params: Any) -> Any:
        return self.client.get(path, params=params, headers={"Authorization": f"Bearer {token or self.bkd_all}"})

    def count(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(s.punches)).scalar_one())


def make_central(db_url: str, tmp_path: Path, **cfg: Any) -> Central:
    """A migrated database, token files in tmp_path, and the API app behind a TestClient."""
    engine = create_db_engine(db_url, pool_size=4)
    upgrade(engine)
    gw_file, api_file = tmp_path / "gateways.toml", tmp_path / "api.toml"
    gw_a = add_token(gw_file, "gw-a", [OFFICE_A], "gateway")
    gw_b = add_token(gw_file, "gw-b", [OFFICE_B], "gateway")
    bkd_all = add_token(api_file, "bkd", None, "api")
    bkd_a = add_token(api_file, "bkd-a", [OFFICE_A], "api")
    remember(gw_a, gw_b, bkd_all, bkd_a)  # the session's log scan looks for them
    config = CentralConfig(enabled=True, gateway_tokens_file=gw_file, api_tokens_file=api_file, **cfg)
    api = CentralApi(config, CentralStore(engine))
    return Central(TestClient(api.app()), engine, gw_a, gw_b, bkd_all, bkd_a, api)


def punch(user: str = "7", t: str = "2026-11-02 07:31:05", serial: str = "SN1", device: str = "lobby",
          **kw: Any) -> dict[str, Any]:
    """A wire punch as an office gateway sends it (07:31 WIB = 00:31 UTC)."""
    local = t.replace(" ", "T")
    hh = int(t[11:13]) - 7
    day = t[:10]
    if hh < 0:
        hh += 24
        day = f"{day[:8]}{int(day[8:]) - 1:02d}"
    doc = {"office_code": OFFICE_A, "device_id": device, "device_serial": serial, "device_user_id": user,
           "device_time": t, "local_time": local, "utc_time": f"{day}T{hh:02d}{t[13:]}Z", "timezone": "Asia/Jakarta",
           "state": 0, "state_name": "check_in", "verify": 1, "verify_name": "finger", "uid": int(user) if
           user.isdigit() else 0, "workcode": 0, "raw_time": -1, "employee_id": f"NIP{user}", "flags": []}
    doc.update(kw)
    return doc


def device_doc(device_id: str, **kw: Any) -> dict[str, Any]:
    """A device health document as an office gateway forwards it."""
    doc = {"device_id": device_id, "name": f"Terminal {device_id}", "location": "lobby", "address": "10.0.0.5",
           "port": 4370, "transport": "tcp", "serial": f"SN-{device_id}", "firmware": "Ver 6.60", "enabled": True,
           "last_seen_at": "2026-11-02T01:00:00Z", "last_ok_at": "2026-11-02T01:00:00Z", "last_record_count": 812,
           "last_user_count": 40, "records_cap": 100000, "users_cap": 3000, "clock_skew_s": 12.5,
           "health": {"state": "online", "state_since": "2026-11-01T00:00:00Z", "consecutive_failures": 0,
                      "problems": {"clock_skew": {"severity": "warning", "since": "2026-11-02T00:00:00Z"}}}}
    doc.update(kw)
    return doc

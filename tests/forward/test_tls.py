"""Forwarding over HTTPS to a centre whose certificate comes from a private CA (forward.ca_file).

Certificates are made with the openssl command line for 127.0.0.1; the test skips without it.
"""

from __future__ import annotations

import random
import shutil
import subprocess
from datetime import datetime
from pathlib import Path

import pytest
from sqlalchemy import func, select

from gateway.central.api import CentralApi
from gateway.central.tokens import add_token
from gateway.config import CentralConfig, parse_config
from gateway.forward.forwarder import Forwarder
from gateway.store import schema as s
from gateway.store.central import CentralStore
from gateway.store.db import create_db_engine, upgrade
from gateway.store.outbox import Outbox
from gateway.store.punches import Store
from gateway.web.server import ThreadedServer
from tests.support.central import make_forwarder
from tests.support.punches import make_punch, store_punches
from tests.support.services import REQUIRE_TOOLS, unavailable

pytestmark = pytest.mark.timeout(60)
OFFICE = "1801.05"


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=30)


@pytest.fixture
def certs(tmp_path: Path) -> Path:
    if shutil.which("openssl") is None:
        unavailable("the openssl command is needed to make test certificates", REQUIRE_TOOLS)
    d = tmp_path / "pki"
    d.mkdir()
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=Test BKD CA",
             "-keyout", "ca.key", "-out", "ca.pem", cwd=d)
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", "server.key",
             "-out", "server.csr", cwd=d)
    (d / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
             "-days", "2", "-extfile", "ext.cnf", "-out", "server.pem", cwd=d)
    return d


def _office(tmp_path: Path, url: str, token: str, ca_file: str) -> tuple[Forwarder, object]:
    db = f"sqlite:///{tmp_path / ('office-' + str(bool(ca_file)) + '.db')}"
    (tmp_path / "tok").write_text(token)
    cfg = parse_config({"site": {"office_code": OFFICE}, "database": {"url": db},
                        "devices": [{"id": "lobby", "address": "127.0.0.1"}],
                        "forward": {"url": url, "token_file": str(tmp_path / "tok"), "ca_file": ca_file}})
    engine = create_db_engine(db)
    upgrade(engine)
    store = Store(engine, OFFICE)
    store.sync_devices(cfg.devices)
    store_punches(store, [make_punch("5", datetime(2026, 11, 2, 7, 30), office_code=OFFICE, serial="TLS1")])
    return make_forwarder(cfg, engine, rng=random.Random(1)), engine


def test_forwarding_over_https_needs_and_uses_the_private_ca(certs: Path, tmp_path: Path) -> None:
    central_db = create_db_engine(f"sqlite:///{tmp_path / 'central.db'}")
    upgrade(central_db)
    token = add_token(tmp_path / "gw.toml", "office", [OFFICE], "gateway")
    add_token(tmp_path / "api.toml", "bkd", None, "api")
    api = CentralApi(CentralConfig(enabled=True, gateway_tokens_file=tmp_path / "gw.toml",
                                   api_tokens_file=tmp_path / "api.toml"), CentralStore(central_db))
    with ThreadedServer(api.app(), ssl_certfile=str(certs / "server.pem"),
                        ssl_keyfile=str(certs / "server.key")) as server:
        assert server.url.startswith("https://")
        # System CAs only: the private certificate is refused, the punch stays queued.
        fwd, engine = _office(tmp_path, server.url, token, "")
        try:
            report = fwd.run_once()
            assert report.error == "unreachable" and "CERTIFICATE" in (fwd.last_error or "").upper()
            assert Outbox(engine, "").stats().depth == 1
        finally:
            fwd.stop(1)
            engine.dispose()
        # With forward.ca_file the same punch goes through.
        fwd, engine = _office(tmp_path, server.url, token, str(certs / "ca.pem"))
        try:
            report = fwd.run_once()
            assert report.error is None and report.accepted == 1 and Outbox(engine, "").stats().depth == 0
        finally:
            fwd.stop(1)
            engine.dispose()
    with central_db.connect() as conn:
        assert conn.execute(select(func.count()).select_from(s.punches)).scalar_one() == 1
    central_db.dispose()

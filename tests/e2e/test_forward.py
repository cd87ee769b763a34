"""End-to-end forwarding: three office gateways (real daemons polling simulated terminals) forward through a
fault-injecting proxy (refused, 502, dropped mid-response, too slow, flapping) to a central daemon on
PostgreSQL, while a BKD client pulls by cursor over HTTP the whole time.

The central store must equal the union of the simulators' ground truth exactly once, each punch under
its gateway's office, and the BKD client must receive every punch exactly once.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, select

from gateway.app import Gateway
from gateway.central.tokens import add_token
from gateway.config import parse_config
from gateway.store import schema as s
from gateway.store.outbox import Outbox
from tests.support.bkd import BkdPuller
from tests.support.config import DeviceEntry, make_config
from tests.support.fleet import running_fleet, sim_spec, truth_keys
from tests.support.gateway import RunningGateway, diff, stored_keys
from tests.support.proxy import FaultyProxy
from tests.support.wait import wait_until

pytestmark = pytest.mark.postgres


@pytest.mark.timeout(240)
def test_offices_forward_through_a_flapping_link_and_bkd_gets_everything_exactly_once(
        pg_url: str, tmp_path: Path) -> None:
    # -- central daemon on PostgreSQL with its API on the built-in HTTP server ---------------------------
    gw_tokens, api_tokens = tmp_path / "gateways.toml", tmp_path / "api.toml"
    offices = {"dinkes": "1801.01", "disdik": "1801.02", "bappeda": "1801.03"}
    for name, code in offices.items():
        (tmp_path / f"{name}.token").write_text(add_token(gw_tokens, name, [code], "gateway"))
    bkd_token = add_token(api_tokens, "bkd", None, "api")
    central_cfg = parse_config({
        "site": {"office_code": "1801.00", "office_name": "BKD", "timezone": "Asia/Jakarta"},
        "database": {"url": pg_url},
        "http": {"enabled": True, "listen": "127.0.0.1", "port": 0},
        "central": {"enabled": True, "gateway_tokens_file": str(gw_tokens), "api_tokens_file": str(api_tokens)},
    }, base_dir=tmp_path)

    with Gateway(central_cfg) as central, running_fleet(tmp_path / "truth.jsonl") as fleet, \
            FaultyProxy(central.ctx.http_port) as proxy:
        central_url = f"http://127.0.0.1:{central.ctx.http_port}"
        proxy.set_mode("refuse")
        sims: dict[str, list[Any]] = {}
        gateways: dict[str, RunningGateway] = {}
        for n, (name, code) in enumerate(offices.items()):
            sims[name] = [fleet.add(sim_spec(f"{name.upper()}-{i}", records=150 + 40 * i, seed=10 * n + i))
                          for i in range(2)]
            db = f"sqlite:///{tmp_path / name}.db"
            cfg = make_config(
                db, [DeviceEntry(f"t{i}", sim) for i, sim in enumerate(sims[name])], tmp_path / name,
                site={"office_code": code, "timezone": "Asia/Jakarta"},
                forward={"url": proxy.url, "token_file": str(tmp_path / f"{name}.token"), "interval_s": 1,
                         "batch_size": 60, "backoff_initial_s": 0.2, "backoff_max_s": 1, "timeout_s": 1})
            gateways[name] = RunningGateway(cfg)
        for gw in gateways.values():
            gw.__enter__()
        puller = BkdPuller(central_url, bkd_token)
        try:
            puller.start()
            # Upstream refused: everything polled waits in the outboxes, polling is not held up.
            for gw in gateways.values():
                outcomes = gw.poll_all(["t0", "t1"])
                assert all(o.ok and o.new_punches for o in outcomes.values())
            time.sleep(1.5)
            depth = sum(Outbox(gw.gateway.engine, "").stats().depth for gw in gateways.values())
            assert depth == sum(150 + 40 * i for _ in offices for i in range(2))

            # The link flaps through every failure while new punches keep arriving.
            for step, mode in enumerate(["502", "pass", "drop_mid_response", "slow", "refuse", "pass",
                                         "drop_mid_response", "502", "slow", "pass", "refuse"]):
                proxy.set_mode(mode)
                name = list(offices)[step % 3]
                for sim in sims[name]:
                    sim.add_punches(7)
                gateways[name].poll_all(["t0", "t1"])
                time.sleep(1.3)

            proxy.set_mode("pass")
            truth = truth_keys(tmp_path / "truth.jsonl")
            wait_until(lambda: all(Outbox(gw.gateway.engine, "").stats()[::2] == (0, 0) for gw in gateways.values()),
                  90, "every outbox to drain")
            assert stored_keys(pg_url) == truth, diff(truth, stored_keys(pg_url))
        finally:
            puller.finish()
            for gw in gateways.values():
                gw.__exit__(None, None, None)

        # Every fault really happened on the way.
        assert all(proxy.hits[m] for m in ("refuse", "502", "cut", "stalled")), proxy.hits
        # BKD saw every punch exactly once, each under the office of the gateway that polled it.
        assert Counter(puller.keys) == truth, diff(truth, Counter(puller.keys))
        assert len(puller.keys) == sum(truth.values()) and puller.pages > 10
        assert puller.offices == {code: {s.serial for s in sims[name]} for name, code in offices.items()}
        # The centre knows every terminal of the regency from the forwarded health snapshots.
        r = httpx.get(f"{central_url}/api/v1/devices", headers={"Authorization": f"Bearer {bkd_token}"})
        devices = {(d["office_code"], d["device_id"], d["serial"]) for d in r.json()["items"]}
        assert devices == {(code, f"t{i}", sims[name][i].serial) for name, code in offices.items() for i in range(2)}

    engine = create_engine(pg_url)
    try:
        with engine.connect() as conn:
            gws = {r.name: r for r in conn.execute(select(s.gateways))}
            sources = {r[0] for r in conn.execute(select(s.punches.c.source).distinct())}
    finally:
        engine.dispose()
    assert set(gws) == set(offices) and sources == {"forward"}
    assert sum(g.punches_received for g in gws.values()) == sum(truth.values())

"""Status page, /status JSON, /metrics and /healthz through real HTTP, and the access rule for other clients."""

from __future__ import annotations

import warnings
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from gateway.store.health import HealthRepo
from gateway.web.status import build_app, check_access, is_loopback
from tests.support.config import DeviceEntry, make_config
from tests.support.fleet import sim_spec
from tests.support.gateway import RunningGateway


def http_config(db_url: str, entries: list[DeviceEntry], tmp_path: Path, **http: Any) -> Any:
    return make_config(db_url, entries, tmp_path, http={"enabled": True, "listen": "127.0.0.1", "port": 0, **http},
                       health={"offline_after_failures": 1, "offline_after_s": 1, "clock_skew_warn_s": 60},
                       alerts={"reminder_s": 0})


@pytest.mark.timeout(90)
def test_status_json_html_metrics_show_devices_and_problems(fleet, db_url: str, tmp_path: Path) -> None:
    a = fleet.add(sim_spec("ST-A", records=120, records_cap=1000))
    b = fleet.add(sim_spec("ST-B", records=40, faults={"clock_skew": 900}))
    config = http_config(db_url, [DeviceEntry("a", a, extra={"name": "Lobi Utama", "location": "Lantai 1"}),
                                  DeviceEntry("b", b, extra={"name": "Ruang <Staf>"})], tmp_path)
    with RunningGateway(config) as gw:
        gw.poll_all(["a", "b"])
        gw.gateway.polls.wait_idle(20)
        HealthRepo(gw.gateway.engine, "1801.01.02").set_mute("b", datetime.now(UTC) + timedelta(hours=1), "servis")
        gw.gateway.ctx.health.sweep()
        port = gw.gateway.ctx.http_port
        base = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=base, timeout=10) as client:
            doc = client.get("/status").json()
            page = client.get("/")
            metrics = client.get("/metrics")
            healthz = client.get("/healthz")
    assert doc["office"]["code"] == "1801.01.02"
    assert doc["summary"] == {"devices": 2, "online": 2, "offline": 0, "unknown": 0, "open_problems": 1}
    devs = {d["id"]: d for d in doc["devices"]}
    assert devs["a"]["state"] == "online" and devs["a"]["records"] == 120 and devs["a"]["records_cap"] == 1000
    assert devs["a"]["serial"] == "ST-A" and devs["a"]["problems"] == [] and devs["a"]["last_punch_at"]
    [skew] = devs["b"]["problems"]
    assert skew["name"] == "clock_skew" and skew["severity"] == "warning" and skew["check"]
    assert 850 < devs["b"]["clock_skew_s"] < 950
    assert devs["b"]["muted_until"] and devs["b"]["mute_reason"] == "servis"
    assert [(x["problem"], x["event"], x["muted"]) for x in doc["recent_alerts"]] == [("clock_skew", "start", False)]

    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    html = page.text
    assert '<meta http-equiv="refresh" content="30">' in html and 'name="viewport"' in html
    assert "Lobi Utama" in html and "Ruang &lt;Staf&gt;" in html and "<Staf>" not in html
    assert 'id="dev-a" data-state="online"' in html and "clock skew" in html
    assert "120 / 1000 (12%)" in html

    assert metrics.status_code == 200
    text = metrics.text
    assert 'fpgw_device_up{device="a",serial="ST-A"} 1.0' in text
    assert 'fpgw_device_state{device="a",state="online"} 1.0' in text
    assert 'fpgw_device_state{device="a",state="offline"} 0.0' in text
    assert 'fpgw_device_capacity_ratio{device="a",kind="records"} 0.12' in text
    assert 'fpgw_device_problem{device="b",problem="clock_skew",severity="warning"} 1.0' in text
    assert 'fpgw_device_muted{device="b"} 1.0' in text
    assert 'fpgw_polls_total{device="a",outcome="ok"} 1.0' in text
    assert 'fpgw_poll_duration_seconds_count{device="a"} 1.0' in text
    assert "fpgw_device_last_punch_age_seconds" in text and "fpgw_device_clock_skew_seconds" in text
    assert healthz.json() == {"ok": True}


@pytest.mark.timeout(60)
def test_offline_device_is_red_on_the_page(fleet, sqlite_url: str, tmp_path: Path) -> None:
    a = fleet.add(sim_spec("ST-OFF", records=10, faults={"port_closed": True}))
    config = http_config(sqlite_url, [DeviceEntry("a", a)], tmp_path)
    with RunningGateway(config) as gw:
        gw.poll("a")
        gw.gateway.polls.wait_idle(20)
        gw.gateway.ctx.health.sweep(datetime.now(UTC) + timedelta(seconds=5))
        port = gw.gateway.ctx.http_port
        doc = httpx.get(f"http://127.0.0.1:{port}/status", timeout=10).json()
        html = httpx.get(f"http://127.0.0.1:{port}/", timeout=10).text
    [dev] = doc["devices"]
    assert dev["state"] == "offline" and [p["name"] for p in dev["problems"]] == ["offline"]
    assert any("4370" in c for c in dev["problems"][0]["check"])
    assert 'data-state="offline"' in html and "#b3261e" in html


def test_loopback_detection() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("127.0.0.2") and is_loopback("::1")
    assert is_loopback("::ffff:127.0.0.1")
    assert not is_loopback("192.168.1.20") and not is_loopback("10.0.0.1") and not is_loopback(None)


def test_access_rule() -> None:
    assert check_access("127.0.0.1", {}, None, None) is None
    assert check_access("192.168.1.20", {}, None, None) == 403
    assert check_access("192.168.1.20", {}, None, "s3cret") == 401
    assert check_access("192.168.1.20", {"authorization": "Bearer wrong"}, None, "s3cret") == 401
    assert check_access("192.168.1.20", {"authorization": "Bearer s3cret"}, None, "s3cret") is None
    assert check_access("192.168.1.20", {}, "s3cret", "s3cret") is None


@pytest.mark.timeout(60)
def test_remote_clients_need_the_token_but_service_routes_keep_their_own_auth(
        sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # starlette suggests httpx2; httpx is what we ship
        from starlette.testclient import TestClient

    monkeypatch.setenv("T_STATUS_TOKEN", "s3cret-token")
    config = make_config(sqlite_url, [], tmp_path, http={"enabled": True, "port": 0,
                                                         "status_token_env": "T_STATUS_TOKEN"})
    with RunningGateway(config) as gw:
        ctx = gw.gateway.ctx
        ctx.http_routes.append(Route("/api/v1/ping", lambda request: PlainTextResponse("pong")))
        app = build_app(ctx)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            remote = TestClient(app, client=("192.0.2.10", 50000))
            local = TestClient(app, client=("127.0.0.1", 50000))
        with remote, local:
            assert remote.get("/status").status_code == 401
            assert remote.get("/").status_code == 401
            assert remote.get("/metrics").status_code == 401
            assert remote.get("/status", headers={"Authorization": "Bearer s3cret-token"}).status_code == 200
            assert remote.get("/?token=s3cret-token").status_code == 200
            assert remote.get("/healthz").status_code == 200  # liveness only, no details
            assert remote.get("/api/v1/ping").text == "pong"  # the central API does its own auth
            assert local.get("/status").status_code == 200


@pytest.mark.timeout(60)
def test_outbox_depth_on_status_and_metrics_when_forwarding(fleet, sqlite_url: str, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("T_FWD_TOKEN", "tok")
    a = fleet.add(sim_spec("ST-FWD", records=25))
    # Upstream on a closed loopback port: nothing gets accepted, so the outbox keeps every punch.
    config = make_config(sqlite_url, [DeviceEntry("a", a)], tmp_path,
                         http={"enabled": True, "listen": "127.0.0.1", "port": 0},
                         forward={"url": "http://127.0.0.1:9", "token_env": "T_FWD_TOKEN", "interval_s": 3600})
    with RunningGateway(config) as gw:
        assert gw.poll("a").new_punches == 25
        gw.gateway.polls.wait_idle(20)
        port = gw.gateway.ctx.http_port
        doc = httpx.get(f"http://127.0.0.1:{port}/status", timeout=10).json()
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        page = httpx.get(f"http://127.0.0.1:{port}/", timeout=10).text
    assert doc["outbox"]["depth"] == 25 and doc["outbox"]["oldest_age_s"] is not None
    assert "fpgw_outbox_depth 25.0" in text
    assert "outbox: 25 punch" in page


@pytest.mark.timeout(60)
def test_port_in_use_is_a_clear_start_error(sqlite_url: str, tmp_path: Path) -> None:
    import socket

    from gateway.app import Gateway

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        config = make_config(sqlite_url, [], tmp_path, http={"enabled": True, "listen": "127.0.0.1", "port": port})
        gateway = Gateway(config)
        with pytest.raises(RuntimeError, match=f"could not listen on 127.0.0.1:{port}: Address already in use"):
            gateway.start()
        gateway.stop()

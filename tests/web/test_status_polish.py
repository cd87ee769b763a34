"""The polished office status page: why a terminal is not online, bilingual checks, dates, chips, a punch in the
future, and the "poll now" POST (access rule, CSRF, unknown and push devices) through the daemon's scheduler."""

from __future__ import annotations

import re
import warnings
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.config import Config, parse_config
from gateway.health.alerts import CHECKS
from gateway.health.gateway import GATEWAY_CHECKS
from gateway.models import DeviceHealth
from gateway.web.checks_id import CHECKS_ID
from gateway.web.status import StatusView, build_app, state_reason
from tests.support.config import DeviceEntry, config_dict, make_config
from tests.support.fleet import sim_spec
from tests.support.gateway import RunningGateway

PUSH_SERIAL = "PUSH-POLISH-1"


def polish_config(db_url: str, entries: list[DeviceEntry], tmp_path: Path, *, push: bool = False,
                  **http: Any) -> Config:
    """Status page on loopback; three failed polls before offline (one failure leaves a terminal unknown);
    with ``push``, also a push terminal (the push receiver on a loopback port)."""
    doc = config_dict(db_url, entries, http={"enabled": True, "listen": "127.0.0.1", "port": 0, **http},
                      health={"offline_after_failures": 3, "offline_after_s": 3600}, alerts={"reminder_s": 0})
    if push:
        doc["push"] = {"listen": "127.0.0.1", "port": 0}
        doc["devices"].append({"id": "pusher", "driver": "push", "serial": PUSH_SERIAL})
    doc["site"]["state_dir"] = str(tmp_path)
    return parse_config(doc, base_dir=tmp_path)


def test_every_check_list_has_an_indonesian_line_per_english_line() -> None:
    for name, english in {**CHECKS, **GATEWAY_CHECKS}.items():
        assert name in CHECKS_ID, f"no Indonesian checks for {name}"
        assert len(CHECKS_ID[name]) == len(english), name
        assert all(text.strip() for text in CHECKS_ID[name])


def test_state_reason_names_the_classified_error_and_the_address() -> None:
    never = DeviceHealth("a")
    assert state_reason(never, "192.168.10.21", 4370).startswith("not polled yet")
    assert state_reason(None, "192.168.10.21", 4370, pushes=True).startswith("waiting for the terminal")
    down = DeviceHealth("a", consecutive_failures=1, last_error_kind="unreachable", last_error="timed out")
    assert state_reason(down, "192.168.10.21", 4370) == "unreachable: no answer from 192.168.10.21:4370 (timed out)"
    key = DeviceHealth("a", consecutive_failures=2, last_error_kind="auth_rejected", last_error="Unauthenticated")
    assert state_reason(key, "10.0.0.5", 4370) == "auth rejected: 10.0.0.5:4370 refused the comm key"
    odd = DeviceHealth("a", consecutive_failures=1, last_error_kind="protocol_error", last_error="short reply")
    assert state_reason(odd, "10.0.0.5", 4370) == "protocol error: short reply"


def _doc(**device: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
            "id": "lobi", "name": "Lobi", "location": "", "address": "10.0.0.5", "port": 4370, "serial": "SN1",
            "firmware": None, "state": "online", "state_since": None, "muted_until": None, "mute_reason": None,
            "last_seen_at": "2026-12-01T01:00:00Z", "last_ok_at": None, "last_punch_at": "2026-12-01T00:30:00Z",
            "last_new_punch_at": None, "records": 10, "records_cap": 1000, "users": 5, "users_cap": None,
            "clock_skew_s": None, "consecutive_failures": 0, "last_error_kind": None, "problems": [],
            "last_error": None, "reason": "", "last_punch_in_future": False, "pushes": False, "poll_now": False}
    base.update(device)
    return {"gateway": {"state": "ok", "disk_free_bytes": None, "database_error": None, "problems": []},
            "office": {"code": "1801.01", "name": "Kantor", "timezone": "Asia/Jakarta"},
            "generated_at": "2026-12-01T01:00:00Z",
            "summary": {"devices": 1, "online": 1 if base["state"] == "online" else 0,
                        "offline": 1 if base["state"] == "offline" else 0,
                        "unknown": 1 if base["state"] == "unknown" else 0,
                        "open_problems": len(base["problems"])},
            "devices": [base], "outbox": None, "recent_alerts": [], "unknown_terminals": []}


class _Ctx:
    """The parts of AppContext StatusView.page reads."""

    def __init__(self, config: Any) -> None:
        self.config = config
        self.health = None
        self.health_repo = None


def _view(tmp_path: Path) -> StatusView:
    config = make_config(f"sqlite:///{tmp_path / 'x.db'}", [], tmp_path)
    return StatusView(_Ctx(config))  # type: ignore[arg-type]


def test_page_dates_chips_future_punch_and_critical_checks_open(tmp_path: Path) -> None:
    view = _view(tmp_path)
    html = view.page(_doc())
    assert "2026-12-01 08:00 WIB" in html  # year, office time and zone
    assert re.search(r'data-count="0" *>0 offline', html), "a zero offline chip carries no colour"
    assert "in the future" not in html
    future = view.page(_doc(last_punch_at="2027-01-01T00:00:00Z", last_punch_in_future=True))
    assert 'class="future"' in future and "in the future" in future
    offline = {"name": "offline", "severity": "critical", "since": "2026-12-01T00:00:00Z", "detail": "no answer",
               "notice": False, "check": list(CHECKS["offline"]), "check_id": list(CHECKS_ID["offline"])}
    skew = {"name": "clock_skew", "severity": "warning", "since": "2026-12-01T00:00:00Z", "detail": "+900 s",
            "notice": False, "check": list(CHECKS["clock_skew"]), "check_id": list(CHECKS_ID["clock_skew"])}
    page = view.page(_doc(state="offline", problems=[offline, skew], reason="unreachable: no answer from "
                          "10.0.0.5:4370", consecutive_failures=3))
    assert 'data-count="1" style="color:#b3261e">1 offline' in page
    assert '<details class="check" data-problem="offline" open>' in page
    assert '<details class="check" data-problem="clock_skew">' in page  # warnings stay folded
    assert CHECKS_ID["offline"][0] in page and CHECKS["offline"][0] in page
    assert "Sebab / why: unreachable: no answer from 10.0.0.5:4370" in page
    assert "poll now" not in page  # no button where the daemon cannot poll
    assert "@media (max-width:600px)" in page


@pytest.mark.timeout(90)
def test_a_terminal_that_never_answered_says_why_in_json_and_html(fleet: Any, sqlite_url: str,
                                                                  tmp_path: Path) -> None:
    down = fleet.add(sim_spec("PL-DOWN", records=5, faults={"port_closed": True}))
    fresh = fleet.add(sim_spec("PL-NEW", records=5))
    config = polish_config(sqlite_url, [DeviceEntry("gudang", down), DeviceEntry("baru", fresh)], tmp_path)
    with RunningGateway(config) as gw:
        outcome = gw.poll("gudang")
        assert not outcome.ok and outcome.error_kind == "unreachable"
        base = f"http://127.0.0.1:{gw.gateway.ctx.http_port}"
        doc = httpx.get(f"{base}/status", timeout=10).json()
        html = httpx.get(f"{base}/", timeout=10).text
    devs = {d["id"]: d for d in doc["devices"]}
    # Backward compatible: every field clients read before is still there with its name.
    before = {"id", "name", "location", "address", "port", "serial", "firmware", "state", "state_since",
              "muted_until", "mute_reason", "last_seen_at", "last_ok_at", "last_punch_at", "last_new_punch_at",
              "records", "records_cap", "users", "users_cap", "clock_skew_s", "consecutive_failures",
              "last_error_kind", "problems"}
    assert before <= set(devs["gudang"]) and {"code", "name"} <= set(doc["office"])
    assert set(doc) >= {"gateway", "office", "generated_at", "summary", "devices", "outbox", "recent_alerts",
                        "unknown_terminals"}
    assert devs["gudang"]["state"] == "unknown"  # one failure of three: not offline yet, but not silent either
    assert devs["gudang"]["reason"].startswith(f"unreachable: no answer from {down.host}:{down.port}")
    assert devs["gudang"]["last_error_kind"] == "unreachable" and devs["gudang"]["poll_now"] is True
    assert devs["baru"]["reason"].startswith("not polled yet")
    assert doc["office"]["timezone"] == "Asia/Jakarta"
    assert f"Sebab / why: unreachable: no answer from {down.host}:{down.port}" in html
    assert "Cek sekarang / poll now" in html and 'action="/devices/gudang/poll"' in html


def _client(app: Any, host: str) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # starlette suggests httpx2; httpx is what we ship
        from starlette.testclient import TestClient

        return TestClient(app, client=(host, 50000), follow_redirects=False)


def _csrf(page: str) -> str:
    found = re.search(r'name="csrf" value="([0-9a-f]+)"', page)
    assert found, "the page carries no form token"
    return found.group(1)


@pytest.mark.timeout(90)
def test_poll_now_post_polls_through_the_scheduler_behind_the_access_rule_and_csrf(
        fleet: Any, sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("T_STATUS_TOKEN", "s3cret-token")
    sim = fleet.add(sim_spec("PL-POLL", records=7))
    config = polish_config(sqlite_url, [DeviceEntry("lobi", sim)], tmp_path, push=True,
                           status_token_env="T_STATUS_TOKEN")
    with RunningGateway(config) as gw:
        app = build_app(gw.gateway.ctx)
        local, remote = _client(app, "127.0.0.1"), _client(app, "192.0.2.10")
        with local, remote:
            page = local.get("/").text
            token = _csrf(page)
            assert 'action="/devices/pusher/poll"' not in page  # push terminals get no button
            # Refusals: no form token, a wrong one, another site, GET, no login from another machine.
            assert local.post("/devices/lobi/poll", data={}).status_code == 403
            assert local.post("/devices/lobi/poll", data={"csrf": "0" * 64}).status_code == 403
            assert local.post("/devices/lobi/poll", data={"csrf": token},
                              headers={"Origin": "http://evil.example"}).status_code == 403
            assert local.post("/devices/lobi/poll", data={"csrf": token},
                              headers={"Sec-Fetch-Site": "cross-site"}).status_code == 403
            assert local.get("/devices/lobi/poll").status_code == 405
            assert remote.post("/devices/lobi/poll", data={"csrf": token}).status_code == 401
            # Unknown and push devices.
            assert local.post("/devices/nosuch/poll", data={"csrf": token}).status_code == 404
            pushed = local.post("/devices/pusher/poll", data={"csrf": token})
            assert pushed.status_code == 409 and "push terminal" in pushed.text
            assert not [o for o in gw.recorder.outcomes if o.device_id == "lobi"]  # nothing polled so far
            # Accepted: from this machine's browser, and from another one with the token in the URL.
            asked = datetime.now(UTC)
            ok = local.post("/devices/lobi/poll", data={"csrf": token})
            assert ok.status_code == 303 and ok.headers["location"] == "/?polled=lobi#dev-lobi"
            outcome = gw.recorder.wait_for("lobi", asked - timedelta(seconds=1))
            assert outcome.ok and outcome.new_punches == 7
            remote_page = remote.get("/?token=s3cret-token").text
            assert 'action="/devices/lobi/poll?token=s3cret-token"' in remote_page
            ok = remote.post("/devices/lobi/poll?token=s3cret-token", data={"csrf": _csrf(remote_page)})
            assert ok.status_code == 303 and ok.headers["location"].startswith("/?token=s3cret-token&polled=lobi")
            # A script with the token in a header is not a browser form: no CSRF token needed.
            api = remote.post("/devices/lobi/poll", headers={"Authorization": "Bearer s3cret-token",
                                                             "Accept": "application/json"})
            assert api.status_code == 202 and api.json() == {"device": "lobi", "poll_requested": True}
            gw.gateway.polls.wait_idle(20)
            notice = local.get("/?polled=lobi").text
            assert 'id="polled"' in notice and "poll of lobi requested" in notice
            # A kind of terminal the scheduler does not poll (as a serial line could be): no button, 409.
            monkeypatch.setattr(gw.gateway.polls, "device_ids", lambda: [])
            assert 'action="/devices/lobi/poll"' not in local.get("/").text
            other = local.post("/devices/lobi/poll", data={"csrf": token})
            assert other.status_code == 409 and "does not poll this kind" in other.text

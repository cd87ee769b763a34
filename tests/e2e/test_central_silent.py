"""A silent office gateway, end to end: real central daemon (scheduler job, alerts table, alert sender), an
office forwarder reporting over HTTP, and a local webhook receiver standing in for the team's channel.

The threshold is shortened to a few seconds (``dataclasses.replace`` on the parsed config, which refuses
values below 5 minutes). Expected at the receiver: exactly one start while the office is quiet (also
across a restart of the central), and exactly one recovery when it reports again.
"""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.app import Gateway
from gateway.central.silent import PROBLEM_SILENT, CentralService
from gateway.central.tokens import add_token
from gateway.config import Config, parse_config
from gateway.forward.forwarder import Forwarder
from gateway.health.monitor import HealthMonitor
from gateway.store.db import create_db_engine, upgrade
from tests.support.central import make_forwarder
from tests.support.webhook import WebhookReceiver, count

OFFICE, CENTRE = "1801.01", "1801.00"
SILENT_AFTER_S = 6.0


def _central_config(db_url: str, tmp_path: Path) -> tuple[Config, str]:
    gw_tokens, api_tokens = tmp_path / "gateways.toml", tmp_path / "api.toml"
    (tmp_path / "dinkes.token").write_text(add_token(gw_tokens, "dinkes-gw", [OFFICE], "gateway"))
    bkd = add_token(api_tokens, "bkd", None, "api")
    cfg = parse_config({
        "site": {"office_code": CENTRE, "office_name": "BKD", "timezone": "Asia/Jakarta",
                 "state_dir": str(tmp_path / "central")},
        "database": {"url": db_url},
        "http": {"enabled": True, "listen": "127.0.0.1", "port": 0},
        "alerts": {"webhooks_env": "T_SILENT_HOOK", "reminder_s": 3600},
        "central": {"enabled": True, "gateway_tokens_file": str(gw_tokens), "api_tokens_file": str(api_tokens)},
    }, base_dir=tmp_path)
    return dataclasses.replace(cfg, central=dataclasses.replace(cfg.central,
                                                                gateway_silent_after_s=SILENT_AFTER_S)), bkd


def _office(tmp_path: Path, url: str) -> tuple[Forwarder, Any]:
    cfg = parse_config({
        "site": {"office_code": OFFICE, "office_name": "Dinas Kesehatan", "timezone": "Asia/Jakarta",
                 "state_dir": str(tmp_path / "office")},
        "database": {"url": f"sqlite:///{tmp_path / 'office.db'}"},
        "forward": {"url": url, "token_file": str(tmp_path / "dinkes.token"), "timeout_s": 5},
    }, base_dir=tmp_path)
    engine = create_db_engine(cfg.database.url, pool_size=2)
    upgrade(engine)
    # health_every_s override: every run reports (the office's only contact when it has no punches).
    return make_forwarder(cfg, engine, health_every_s=0.01), engine


def _report(tmp_path: Path, central: Gateway) -> None:
    fwd, engine = _office(tmp_path, f"http://127.0.0.1:{central.ctx.http_port}")
    try:
        assert fwd.run_once().health_sent
    finally:
        fwd.stop(1)
        engine.dispose()


def central_service(central: Gateway) -> CentralService:
    """The central's housekeeping service (silent-gateway watch) among the daemon's services."""
    found = [svc for svc in central.services if isinstance(svc, CentralService)]
    assert len(found) == 1, "central mode is not on"
    return found[0]


class CheckCounter:
    """Counts the central's scheduled silent-gateway checks, so the test waits for checks, not for seconds."""

    def __init__(self, central: Gateway) -> None:
        svc = central_service(central)
        self._check = svc.check_silent
        self._cond = threading.Condition()
        self.done = 0
        svc.check_silent = self  # the scheduler job is registered at start(), with this in its place

    def __call__(self, now: Any = None) -> Any:
        try:
            return self._check(now)
        finally:
            with self._cond:
                self.done += 1
                self._cond.notify_all()

    def wait_more(self, n: int, timeout_s: float = 20.0) -> None:
        """Wait until ``n`` more checks have finished."""
        with self._cond:
            target = self.done + n
            if not self._cond.wait_for(lambda: self.done >= target, timeout_s):
                raise AssertionError(f"fewer than {n} silent-gateway checks ran in {timeout_s} s")


def settle_alerts(central: Gateway) -> None:
    """Every alert the checks wrote has been handed to the receiver (or given up on)."""
    monitor = central.ctx.health
    assert isinstance(monitor, HealthMonitor)
    assert monitor.router.wait_idle(20)


def _silent_flag(central: Gateway, token: str) -> bool:
    r = httpx.get(f"http://127.0.0.1:{central.ctx.http_port}/api/v1/gateways",
                  headers={"Authorization": f"Bearer {token}"}, timeout=5)
    [gw] = r.json()["items"]
    return bool(gw["silent"])


@pytest.mark.timeout(90)
def test_silent_office_gateway_one_alert_one_recovery_none_repeated_across_a_restart(
        db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with WebhookReceiver() as hook:
        monkeypatch.setenv("T_SILENT_HOOK", hook.url)
        config, bkd = _central_config(db_url, tmp_path)

        central = Gateway(config)
        checks = CheckCounter(central)
        with central:
            assert central_service(central).check_every_s == 1.5
            _report(tmp_path, central)
            assert _silent_flag(central, bkd) is False
            # The office goes quiet: one alert after SILENT_AFTER_S, and only one however often the job runs.
            hook.wait_for(lambda got: count(got, PROBLEM_SILENT, "start") == 1, timeout_s=20)
            checks.wait_more(2)
            settle_alerts(central)
            assert hook.events() == [(PROBLEM_SILENT, "start")]
            assert _silent_flag(central, bkd) is True

        # The central restarts while the office is still quiet: nothing is sent again.
        central = Gateway(config)
        checks = CheckCounter(central)
        with central:
            checks.wait_more(2)
            settle_alerts(central)
            assert hook.events() == [(PROBLEM_SILENT, "start")]
            _report(tmp_path, central)
            hook.wait_for(lambda got: count(got, PROBLEM_SILENT, "end") == 1, timeout_s=20)
            checks.wait_more(1)  # another check runs; the office is not silent again before SILENT_AFTER_S
            settle_alerts(central)
            assert hook.events() == [(PROBLEM_SILENT, "start"), (PROBLEM_SILENT, "end")]
            assert _silent_flag(central, bkd) is False

    start, end = hook.received
    assert start["office"] == {"code": OFFICE, "name": "Dinas Kesehatan"} and start["device"] is None
    assert start["gateway"]["name"] == "dinkes-gw" and start["gateway"]["outbox_depth"] == 0
    assert start["severity"] == "critical" and start["title"].startswith("[PROBLEM] Office gateway dinkes-gw")
    assert any("systemctl status fpgw" in c and "fpgw forward status" in c for c in start["check"])
    assert "What to check:" in start["message"]
    assert end["title"].startswith("[RESOLVED] Office gateway dinkes-gw") and end["severity"] == "info"
    assert end["since"] == start["since"] == start["gateway"]["last_contact_at"]

"""AlertRouter against a real local webhook receiver and apprise json://: persist first, retry, restart, mute."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from gateway.config import Config, parse_config
from gateway.health.alerts import AlertRouter
from gateway.health.tracker import Transition
from gateway.store import schema as s
from gateway.store.db import create_db_engine, upgrade
from gateway.store.health import HealthRepo
from gateway.store.punches import Store
from tests.support.webhook import WebhookReceiver, count

pytestmark = pytest.mark.timeout(60)

T0 = datetime(2026, 11, 23, 2, 0, tzinfo=UTC)


def config(db_url: str, webhooks: list[str] = (), urls: list[str] = (), max_attempts: int = 5,
           monkeypatch: pytest.MonkeyPatch | None = None) -> Config:
    alerts: dict[str, Any] = {"max_attempts": max_attempts, "reminder_s": 0}
    if webhooks:
        assert monkeypatch is not None
        monkeypatch.setenv("T_HOOKS", " ".join(webhooks))
        alerts["webhooks_env"] = "T_HOOKS"
    if urls:
        assert monkeypatch is not None
        monkeypatch.setenv("T_URLS", " ".join(urls))
        alerts["urls_env"] = "T_URLS"
    return parse_config({
        "site": {"office_code": "1801.01.02", "office_name": "Dinas Uji", "timezone": "Asia/Jakarta"},
        "database": {"url": db_url},
        "devices": [{"id": "lobby", "name": "Lobby", "address": "127.0.0.5", "location": "Lantai 1"}],
        "alerts": alerts,
    })


@pytest.fixture
def engine(db_url: str):
    eng = create_db_engine(db_url, pool_size=2)
    upgrade(eng)
    yield eng
    eng.dispose()


def offline_start(at: datetime = T0) -> Transition:
    return Transition("lobby", "offline", "start", "critical", at, at, "no answer for 3 polls in a row",
                      {"failures": 3})


def alert_rows(engine) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(select(s.alerts).order_by(s.alerts.c.id)).mappings())


def test_alert_is_recorded_then_delivered_with_what_to_check(engine, db_url: str,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    with WebhookReceiver() as hook:
        cfg = config(db_url, [hook.url], monkeypatch=monkeypatch)
        Store(engine, "1801.01.02").sync_devices(cfg.devices)
        repo = HealthRepo(engine, "1801.01.02")
        router = AlertRouter(cfg, repo, retry_base_s=0.05)
        router.start()
        try:
            [alert_id] = router.handle([offline_start()], {"lobby": "SN-1"})
            got = hook.wait_for(lambda r: len(r) == 1)
            assert router.wait_idle(10)
        finally:
            router.stop()
    doc = got[0]
    assert doc["_content_type"] == "application/json"
    assert doc["problem"] == "offline" and doc["event"] == "start" and doc["severity"] == "critical"
    assert doc["office"] == {"code": "1801.01.02", "name": "Dinas Uji"}
    assert doc["device"]["id"] == "lobby" and doc["device"]["serial"] == "SN-1"
    assert doc["device"]["address"] == "127.0.0.5" and doc["device"]["location"] == "Lantai 1"
    assert any("4370" in c for c in doc["check"]) and any("DHCP" in c for c in doc["check"])
    assert "What to check" in doc["message"]
    [row] = alert_rows(engine)
    assert row["id"] == alert_id and row["delivered_at"] is not None and row["attempts"] == 1
    assert row["muted"] is False


def test_failed_delivery_is_retried_until_it_succeeds(engine, db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with WebhookReceiver() as hook:
        hook.fail_next = 2
        cfg = config(db_url, [hook.url], monkeypatch=monkeypatch)
        Store(engine, "1801.01.02").sync_devices(cfg.devices)
        router = AlertRouter(cfg, HealthRepo(engine, "1801.01.02"), retry_base_s=0.05)
        router.start()
        try:
            router.handle([offline_start()])
            hook.wait_for(lambda r: len(r) == 1)
            assert router.wait_idle(10)
        finally:
            router.stop()
        assert hook.requests == 3
    [row] = alert_rows(engine)
    assert row["attempts"] == 3 and row["delivered_at"] is not None and row["last_error"] is None


def test_undelivered_alert_survives_restart_and_is_sent_once(engine, db_url: str,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    with WebhookReceiver() as hook:
        # First run: the receiver is down for good (max_attempts 1): the row stays undelivered.
        cfg_down = config(db_url, ["http://127.0.0.1:9/unreachable"], max_attempts=3, monkeypatch=monkeypatch)
        Store(engine, "1801.01.02").sync_devices(cfg_down.devices)
        repo = HealthRepo(engine, "1801.01.02")
        router = AlertRouter(cfg_down, repo, retry_base_s=30)  # next retry far away: stop before it
        router.start()
        router.handle([offline_start()])
        router.wait_idle(10)
        router.stop()
        [row] = alert_rows(engine)
        assert row["delivered_at"] is None and row["attempts"] == 1 and "webhook#1" in row["last_error"]
        # Restart with a working channel: the pending alert goes out, once.
        cfg_up = config(db_url, [hook.url], max_attempts=3, monkeypatch=monkeypatch)
        router2 = AlertRouter(cfg_up, repo, retry_base_s=0.05)
        router2.start()
        try:
            hook.wait_for(lambda r: len(r) == 1)
            assert router2.wait_idle(10)
            assert router2.queue_pending() == 0
        finally:
            router2.stop()
        assert count(hook.received, "offline", "start") == 1
    [row] = alert_rows(engine)
    assert row["delivered_at"] is not None and row["attempts"] == 2


def test_gives_up_after_max_attempts(sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    eng = create_db_engine(sqlite_url)
    upgrade(eng)
    try:
        with WebhookReceiver() as hook:
            hook.fail_next = 100
            cfg = config(sqlite_url, [hook.url], max_attempts=3, monkeypatch=monkeypatch)
            Store(eng, "1801.01.02").sync_devices(cfg.devices)
            router = AlertRouter(cfg, HealthRepo(eng, "1801.01.02"), retry_base_s=0.02)
            router.start()
            try:
                router.handle([offline_start()])
                hook.wait_for(lambda r: True)
                deadline = time.monotonic() + 10
                while not router.gave_up and time.monotonic() < deadline:
                    time.sleep(0.02)
            finally:
                router.stop()
            assert hook.requests == 3 and router.gave_up == 1
        [row] = alert_rows(eng)
        assert row["delivered_at"] is None and row["attempts"] == 3
        assert HealthRepo(eng, "1801.01.02").pending_alerts(3) == []
    finally:
        eng.dispose()


def test_muted_device_alert_is_recorded_not_sent(sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    eng = create_db_engine(sqlite_url)
    upgrade(eng)
    try:
        with WebhookReceiver() as hook:
            cfg = config(sqlite_url, [hook.url], monkeypatch=monkeypatch)
            Store(eng, "1801.01.02").sync_devices(cfg.devices)
            repo = HealthRepo(eng, "1801.01.02")
            router = AlertRouter(cfg, repo, retry_base_s=0.05)
            router.set_mutes({"lobby": T0 + timedelta(hours=2)})
            router.start()
            try:
                router.handle([offline_start(T0)])
                router.handle([offline_start(T0 + timedelta(hours=3))])  # mute over by then
                got = hook.wait_for(lambda r: len(r) == 1)
                assert router.wait_idle(10)
            finally:
                router.stop()
        assert len(got) == 1 and got[0]["at"].startswith("2026-11-23T05:00")
        rows = alert_rows(eng)
        assert [r["muted"] for r in rows] == [True, False]
        assert rows[0]["delivered_at"] is None
    finally:
        eng.dispose()


# apprise keeps one process-wide worker pool for its deadlines (apprise/apprise.py get_shared_executor),
# started on the first notification and kept by design.
@pytest.mark.allow_thread_leak
def test_apprise_json_url_delivers_title_and_body(sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    eng = create_db_engine(sqlite_url)
    upgrade(eng)
    try:
        with WebhookReceiver() as hook:
            host_port = hook.url.split("//", 1)[1].split("/", 1)[0]
            cfg = config(sqlite_url, urls=[f"json://{host_port}/hook?+X-Office=1801"], monkeypatch=monkeypatch)
            Store(eng, "1801.01.02").sync_devices(cfg.devices)
            router = AlertRouter(cfg, HealthRepo(eng, "1801.01.02"), retry_base_s=0.05)
            router.start()
            try:
                router.handle([offline_start()])
                got = hook.wait_for(lambda r: len(r) == 1)
                assert router.wait_idle(10)
            finally:
                router.stop()
        assert "[PROBLEM] Lobby (lobby) offline" in got[0]["title"]
        assert "What to check" in got[0]["message"] and got[0]["type"] == "failure"
    finally:
        eng.dispose()


def test_rows_from_other_writers_are_delivered(sqlite_url: str, monkeypatch: pytest.MonkeyPatch,
                                               tmp_path: Path) -> None:
    eng = create_db_engine(sqlite_url)
    upgrade(eng)
    try:
        with WebhookReceiver() as hook:
            cfg = config(sqlite_url, [hook.url], monkeypatch=monkeypatch)
            repo = HealthRepo(eng, "1801.01.02")
            router = AlertRouter(cfg, repo, retry_base_s=0.05)
            router.start()
            try:
                # The forwarder writes its own alert rows (no device); the sender picks them up.
                with eng.begin() as conn:
                    conn.execute(s.alerts.insert().values(
                        created_at=T0, office_code="1801.01.02", problem="forward_backlog", event="start",
                        severity="warning", title="Forwarding behind", message="oldest punch 7 h old",
                        details='{"oldest_age_s": 25200}', muted=False, attempts=0))
                assert router.queue_pending() == 1
                got = hook.wait_for(lambda r: len(r) == 1)
                assert router.wait_idle(10)
            finally:
                router.stop()
        assert got[0]["problem"] == "forward_backlog" and got[0]["title"] == "Forwarding behind"
        assert got[0]["seen"] == {"oldest_age_s": 25200}
    finally:
        eng.dispose()


def test_without_channels_the_log_is_the_delivery(sqlite_url: str) -> None:
    eng = create_db_engine(sqlite_url)
    upgrade(eng)
    try:
        cfg = config(sqlite_url)
        Store(eng, "1801.01.02").sync_devices(cfg.devices)
        repo = HealthRepo(eng, "1801.01.02")
        router = AlertRouter(cfg, repo)
        router.start()
        try:
            router.handle([offline_start()])
            assert router.queue_pending() == 0
        finally:
            router.stop()
        [row] = alert_rows(eng)
        assert row["delivered_at"] is not None and row["attempts"] == 0
    finally:
        eng.dispose()

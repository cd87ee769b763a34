"""The gateway's own health (issue 8 item 10): a locked or full office database is the gateway's problem, with
its own alert, status line, /status field and gauge, and never a protocol_error on the terminals."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest
from sqlalchemy import event

from gateway.health.gateway import GatewayHealth, classify_storage_error
from gateway.store import schema as s
from gateway.web.status import StatusView
from simulators.zk import Fleet
from tests.support.config import DeviceEntry, make_config
from tests.support.fleet import sim_spec
from tests.support.gateway import RunningGateway, table_rows
from tests.support.webhook import WebhookReceiver


def _config(db_url: str, fleet: Fleet, tmp_path: Path, hook: WebhookReceiver, monkeypatch: pytest.MonkeyPatch,
            **health: Any) -> Any:
    monkeypatch.setenv("T_HOOK", hook.url)
    a = fleet.add(sim_spec("GW-DB-A", records=30))
    b = fleet.add(sim_spec("GW-DB-B", records=30))
    config = make_config(db_url, [DeviceEntry("a", a), DeviceEntry("b", b)], tmp_path,
                         health={"offline_after_failures": 2, **health},
                         alerts={"webhooks_env": "T_HOOK", "reminder_s": 0})
    return config, a, b


@contextmanager
def _short_busy_timeout(gw: RunningGateway) -> Iterator[dict[str, Any]]:
    """The gateway's SQLite connections wait 0.3 s for a lock (not 15 s) and obey a page limit when set."""
    engine = gw.gateway.engine
    knobs: dict[str, Any] = {"max_pages": None}

    def on_connect(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA busy_timeout=300")
        if knobs["max_pages"]:
            cur.execute(f"PRAGMA max_page_count={int(knobs['max_pages'])}")
        cur.close()

    event.listen(engine, "connect", on_connect)
    engine.dispose()
    try:
        yield knobs
    finally:
        event.remove(engine, "connect", on_connect)


def _locked(path: Path) -> sqlite3.Connection:
    """Another program holding the office database's write lock (BEGIN EXCLUSIVE)."""
    other = sqlite3.connect(path, isolation_level=None, timeout=5)
    other.execute("BEGIN EXCLUSIVE")
    return other


def _assert_devices_untouched(gw: RunningGateway) -> None:
    for device_id in ("a", "b"):
        h = gw.gateway.ctx.health.snapshot()[device_id]
        assert "protocol_error" not in h.problems and h.consecutive_failures == 0, (device_id, h)
        assert h.state == "online"


@pytest.mark.timeout(90)
def test_locked_database_is_a_gateway_problem_not_a_device_fault(
        fleet: Fleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "fpgw.db"
    url = f"sqlite:///{db}"
    with WebhookReceiver() as hook:
        config, a, b = _config(url, fleet, tmp_path, hook, monkeypatch)
        with RunningGateway(config) as gw, _short_busy_timeout(gw):
            monitor = gw.gateway.ctx.health
            assert all(o.ok for o in gw.poll_all(["a", "b"]).values())
            other = _locked(db)
            try:
                for _ in range(3):  # past offline_after_failures: today's code opens protocol_error here
                    a.add_punches(2)
                    b.add_punches(2)
                    outcomes = gw.poll_all(["a", "b"])
                    assert {o.error_kind for o in outcomes.values()} == {"storage"}
                _assert_devices_untouched(gw)
                problems, _free = monitor.gateway_health()
                assert [p.name for p in problems] == ["database_locked"]
                monitor.sweep()  # the alert row cannot be written (locked): sent to the channels directly
                got = hook.wait_for(lambda r: any(d["problem"] == "database_locked" for d in r))
                start = next(d for d in got if d["problem"] == "database_locked")
                assert start["event"] == "start" and start["device"] is None and start["severity"] == "critical"
                assert "do not check the cabling" in start["message"]
                doc = StatusView(gw.gateway.ctx).document()
                assert doc["gateway"]["state"] == "problem"
                assert [p["name"] for p in doc["gateway"]["problems"]] == ["database_locked"]
                assert "Gateway: database locked" in StatusView(gw.gateway.ctx).page(doc)
                metrics = generate_latest(gw.gateway.ctx.metrics_registry).decode()
                assert 'fpgw_gateway_problem{problem="database_locked",severity="critical"} 1.0' in metrics
            finally:
                other.rollback()
                other.close()
            monitor.sweep()  # the probe takes the write lock again: resolved, and this alert is a table row
            assert monitor.gateway_health()[0] == []
            rows = [r for r in table_rows(url, s.alerts) if r["problem"] == "database_locked"]
            assert [r["event"] for r in rows] == ["end"] and rows[0]["device_id"] is None
            # Nothing was lost: the punches stayed on the terminals and the next poll stores them.
            assert all(o.ok and o.new_punches == 6 for o in gw.poll_all(["a", "b"]).values())
            _assert_devices_untouched(gw)
            assert StatusView(gw.gateway.ctx).document()["gateway"]["state"] == "ok"


@pytest.mark.timeout(90)
def test_full_database_is_a_gateway_problem_until_a_poll_stores_again(
        fleet: Fleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "fpgw.db"
    url = f"sqlite:///{db}"
    with WebhookReceiver() as hook:
        config, a, _b = _config(url, fleet, tmp_path, hook, monkeypatch)
        with RunningGateway(config) as gw, _short_busy_timeout(gw) as knobs:
            monitor = gw.gateway.ctx.health
            assert all(o.ok for o in gw.poll_all(["a", "b"]).values())
            pages = sqlite3.connect(db).execute("PRAGMA page_count").fetchone()[0]
            knobs["max_pages"] = pages  # "disk full": not one more page
            gw.gateway.engine.dispose()
            for _ in range(3):
                a.add_punches(400)
                outcome = gw.poll("a")
                assert outcome.error_kind == "storage" and "full" in (outcome.error or ""), outcome
            _assert_devices_untouched(gw)
            assert [p.name for p in monitor.gateway_health()[0]] == ["database_full"]
            monitor.sweep()  # a probe allocates nothing: it cannot prove room, the problem stays
            assert [p.name for p in monitor.gateway_health()[0]] == ["database_full"]
            got = hook.wait_for(lambda r: any(d["problem"] == "database_full" for d in r))
            assert next(d for d in got if d["problem"] == "database_full")["event"] == "start"
            knobs["max_pages"] = None
            gw.gateway.engine.dispose()
            outcome = gw.poll("a")
            assert outcome.ok and outcome.new_punches == 1200
            assert monitor.gateway_health()[0] == []
            _assert_devices_untouched(gw)


@pytest.mark.timeout(60)
def test_disk_nearly_full_from_the_sweep(fleet: Fleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"sqlite:///{tmp_path / 'fpgw.db'}"
    with WebhookReceiver() as hook:
        # A threshold no test machine reaches: 10 TB must be free.
        config, _a, _b = _config(url, fleet, tmp_path, hook, monkeypatch, disk_free_min_mb=10_000_000)
        with RunningGateway(config) as gw:
            monitor = gw.gateway.ctx.health
            monitor.sweep()
            problems, free = monitor.gateway_health()
            assert [p.name for p in problems] == ["disk_nearly_full"] and free is not None and free > 0
            assert problems[0].severity == "warning" and "health.disk_free_min_mb" in problems[0].detail
            monitor.sweep()  # still open: one alert, not one per sweep
            got = hook.wait_for(lambda r: any(d["problem"] == "disk_nearly_full" for d in r))
            rows = [r for r in table_rows(url, s.alerts) if r["problem"] == "disk_nearly_full"]
            assert [r["event"] for r in rows] == ["start"] and got[0]["device"] is None
            assert StatusView(gw.gateway.ctx).document()["gateway"]["disk_free_bytes"] == monitor.gateway_health()[1]
            metrics = generate_latest(gw.gateway.ctx.metrics_registry).decode()
            assert "fpgw_database_disk_free_bytes" in metrics


@pytest.mark.parametrize(("text", "problem"), [
    ("database or disk is full", "database_full"),
    ('could not extend file "base/16384/2619": No space left on device', "database_full"),
    ("database is locked", "database_locked"),
    ("canceling statement due to lock timeout", "database_locked"),
    ("unable to open database file", "database_unreachable"),
    ('connection to server at "127.0.0.1", port 5432 failed: Connection refused', "database_unreachable"),
])
def test_classify_storage_errors(text: str, problem: str) -> None:
    assert classify_storage_error(text) == problem


def test_gateway_health_open_once_and_one_database_problem_at_a_time() -> None:
    from datetime import UTC, datetime

    g = GatewayHealth()
    now = datetime(2026, 12, 1, tzinfo=UTC)
    assert g.storage_failed("database is locked", now) == "database_locked"
    assert g.storage_failed("database is locked", now) == "database_locked"
    assert g.storage_failed("database or disk is full", now) == "database_full"
    assert [p.name for p in g.snapshot()] == ["database_full"]
    assert [(e.problem.name, e.event) for e in g.pending] == [
        ("database_locked", "start"), ("database_locked", "end"), ("database_full", "start")]


@pytest.mark.timeout(60)
def test_status_and_metrics_still_answer_when_the_database_cannot_be_read(
        fleet: Fleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from sqlalchemy.exc import OperationalError

    url = f"sqlite:///{tmp_path / 'fpgw.db'}"
    with WebhookReceiver() as hook:
        config, _a, _b = _config(url, fleet, tmp_path, hook, monkeypatch)
        with RunningGateway(config) as gw:
            ctx = gw.gateway.ctx

            def unreadable(*_a: Any, **_k: Any) -> Any:
                raise OperationalError("SELECT", {}, sqlite3.OperationalError("unable to open database file"))

            monkeypatch.setattr(ctx.health_repo, "devices", unreadable)
            view = StatusView(ctx)
            doc = view.document()
            assert doc["gateway"]["state"] == "problem" and "unable to open" in doc["gateway"]["database_error"]
            assert doc["devices"] == []
            assert "Gateway: database unreadable" in view.page(doc)
            metrics = generate_latest(ctx.metrics_registry).decode()
            assert 'fpgw_gateway_problem{problem="database_full",severity="critical"} 0.0' in metrics

"""Forwarder against a scripted upstream (httpx.MockTransport): accept / reject / keep, backoff, logs, alerts.

Asserts through the outbox and alerts tables, the requests the upstream received, and the log events.
Time is explicit (a settable clock), nothing sleeps.
"""

from __future__ import annotations

import gzip
import json
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import select

from gateway.config import Config
from gateway.forward.forwarder import Forwarder, RunReport, full_jitter
from gateway.store import schema as s
from gateway.store.db import create_db_engine, upgrade
from gateway.store.outbox import Outbox
from gateway.store.punches import Store
from tests.support.central import make_forwarder
from tests.support.cli import run_cli
from tests.support.clock import FakeClock
from tests.support.config import forward_config, write_toml
from tests.support.punches import punch_batch, store_punches

pytestmark = pytest.mark.timeout(60)
OFFICE = "1801.01"


@dataclass
class Upstream:
    """Scripted central: ``decide(punch) -> result dict`` or a whole-request ``mode``."""

    mode: str = "ok"  # ok | down | timeout | http500 | http401 | garbage | reject400
    decide: Callable[[dict[str, Any]], dict[str, Any]] = lambda p: {"status": "accepted", "duplicate": False}
    requests: list[dict[str, Any]] = field(default_factory=list)
    bad_user: str | None = None
    #: A punch that makes the central answer 500 to every batch holding it (e.g. a work code of 2^31).
    poison_users: set[str] = field(default_factory=set)

    def handler(self, request: httpx.Request) -> httpx.Response:
        body = request.content
        if request.headers.get("content-encoding") == "gzip":
            body = gzip.decompress(body)
        doc = json.loads(body)
        self.requests.append({"path": request.url.path, "doc": doc, "auth": request.headers.get("authorization")})
        if self.mode == "down":
            raise httpx.ConnectError("connection refused", request=request)
        if self.mode == "timeout":
            raise httpx.ReadTimeout("timed out", request=request)
        if self.mode == "http500":
            return httpx.Response(502, text="<html>bad gateway</html>")
        if self.mode == "http401":
            return httpx.Response(401, json={"error": "bad_token", "message": "the token is not valid"})
        if self.mode == "garbage":
            return httpx.Response(200, json={"results": []})
        if request.url.path.endswith("/health"):
            return httpx.Response(200, json={"office_code": OFFICE, "devices": len(doc["devices"])})
        if any(p["device_user_id"] in self.poison_users for p in doc["punches"]):
            return httpx.Response(500, text="Internal Server Error")
        if self.bad_user is not None and any(p["device_user_id"] == self.bad_user for p in doc["punches"]):
            return httpx.Response(400, json={"error": "bad_payload", "message": "punches[0].state: must be an integer"})
        return httpx.Response(200, json={"results": [{"index": i, **self.decide(p)}
                                                     for i, p in enumerate(doc["punches"])]})

    def sent_users(self) -> list[str]:
        return [p["device_user_id"] for r in self.requests if r["path"].endswith("/punches")
                for p in r["doc"]["punches"]]


class LogRecorder:
    """Stands in for a module's structlog logger: records (level, event, fields) whatever the global config."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def __getattr__(self, level: str) -> Callable[..., None]:
        def record(event: str, *args: Any, **fields: Any) -> None:
            self.events.append({"log_level": "error" if level == "exception" else level, "event": event, **fields})
        return record


@pytest.fixture
def logs(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Log events of gateway.forward.forwarder during the test."""
    import gateway.forward.forwarder

    rec = LogRecorder()
    monkeypatch.setattr(gateway.forward.forwarder, "log", rec)
    return rec.events


def _due_clock() -> FakeClock:
    """Five seconds ahead: rows stored "now" are due."""
    return FakeClock(datetime.now(UTC) + timedelta(seconds=5))


@dataclass
class Office:
    config: Config
    engine: Any
    store: Store
    upstream: Upstream
    clock: FakeClock
    fwd: Forwarder
    registry: CollectorRegistry

    def outbox(self) -> dict[str, Any]:
        o, p = s.outbox.c, s.punches.c
        with self.engine.connect() as conn:
            return {r.device_user_id: r for r in conn.execute(
                select(p.device_user_id, o.state, o.attempts, o.next_attempt_at, o.last_error)
                .join(s.punches, p.id == o.punch_id))}

    def alerts(self) -> list[Any]:
        with self.engine.connect() as conn:
            return list(conn.execute(select(s.alerts).order_by(s.alerts.c.id)).mappings())


@pytest.fixture
def office(db_url: str, tmp_path: Path) -> Iterator[Office]:
    config = forward_config(tmp_path, db_url)
    engine = create_db_engine(db_url, pool_size=4)
    upgrade(engine)
    store = Store(engine, OFFICE)
    store.sync_devices(config.devices)
    upstream = Upstream()
    clock = _due_clock()
    registry = CollectorRegistry()
    fwd = make_forwarder(config, engine, transport=httpx.MockTransport(upstream.handler), rng=random.Random(1),
                    now=clock, registry=registry, health_every_s=3600)
    try:
        yield Office(config, engine, store, upstream, clock, fwd, registry)
    finally:
        fwd.stop(1)
        engine.dispose()


def test_accepted_leave_the_outbox_rejected_are_set_aside_with_one_alert_per_reason_kept_wait(office: Office) -> None:
    store_punches(office.store, punch_batch(8))

    def decide(p: dict[str, Any]) -> dict[str, Any]:
        n = int(p["device_user_id"])
        if n in (1, 2):
            return {"status": "rejected", "reason": "office_mismatch: punch says 9999"}
        if n == 3:
            return {"status": "rejected", "reason": "bad_device_time: '2026-02-31'"}
        if n == 4:
            return {"status": "retry"}
        return {"status": "accepted", "duplicate": n == 5}

    office.upstream.decide = decide
    report = office.fwd.run_once()
    assert (report.sent, report.accepted, report.duplicates, report.rejected, report.kept) == (8, 4, 1, 3, 1)
    box = office.outbox()
    assert set(box) == {"1", "2", "3", "4"}
    assert box["1"].state == "rejected" and box["1"].last_error.startswith("office_mismatch")
    assert box["3"].state == "rejected" and "bad_device_time" in box["3"].last_error
    assert box["4"].state == "pending" and box["4"].attempts == 1 and box["4"].next_attempt_at > office.clock()
    alerts = office.alerts()
    assert sorted(json.loads(a["details"])["reason"] for a in alerts) == ["bad_device_time", "office_mismatch"]
    assert all(a["problem"] == "forward_rejected" and a["device_id"] is None for a in alerts)
    doc = json.loads(alerts[[json.loads(a["details"])["reason"] for a in alerts].index("office_mismatch")]["details"])
    assert doc["seen"]["punches"] == 2 and doc["office"]["code"] == OFFICE and doc["device"] is None
    assert doc["check"] and "retry-rejected" in doc["message"] and doc["title"].startswith("2 punch(es) refused")
    # The token went out as a Bearer header; the office code travels in the batch.
    req = office.upstream.requests[0]
    assert req["auth"] == "Bearer secret-gateway-token" and req["doc"]["gateway"]["office_code"] == OFFICE
    # The kept punch is not resent before its time; then it is, and no new alert for known reasons.
    office.fwd.run_once()
    assert office.upstream.sent_users().count("4") == 1
    office.clock.advance(700)
    store_punches(office.store, punch_batch(1, start=20))
    office.upstream.decide = lambda p: ({"status": "rejected", "reason": "office_mismatch: again"}
                                       if p["device_user_id"] == "20" else {"status": "accepted"})
    office.fwd.run_once()
    assert office.upstream.sent_users().count("4") == 2 and "4" not in office.outbox()
    assert len(office.alerts()) == 2
    assert Outbox(office.engine, "").stats(office.clock()) == (0, None, 4)


def test_upstream_down_keeps_everything_logs_once_and_recovery_logs_outage_and_backlog(
        office: Office, logs: list[dict[str, Any]]) -> None:
    store_punches(office.store, punch_batch(25))
    office.upstream.mode = "down"
    r1 = office.fwd.run_once()
    assert r1.error == "unreachable" and r1.kept == 10
    # During the backoff nothing is even tried.
    n_req = len(office.upstream.requests)
    office.fwd.run_once()
    assert len(office.upstream.requests) == n_req
    for _ in range(5):  # more failures: still the one warning
        office.clock.advance(700)
        office.fwd.run_once()
    office.upstream.mode = "ok"
    office.clock.advance(700)
    r = office.fwd.run_once()
    assert r.accepted == 25 and Outbox(office.engine, "").stats(office.clock()).depth == 0
    warnings = [e for e in logs if e["log_level"] == "warning"]
    infos = [e for e in logs if e["event"] == "upstream accepting punches again"]
    assert [e["event"] for e in warnings] == ["upstream not accepting punches; keeping them in the outbox"]
    assert warnings[0]["backlog"] == 25 and "secret-gateway-token" not in json.dumps(logs, default=str)
    assert len(infos) == 1 and infos[0]["outage_s"] >= 6 * 700 and infos[0]["backlog"] == 25
    # Every punch went out exactly once successfully (failed tries may have carried the same ones).
    assert sorted(office.upstream.sent_users()[-25:], key=int) == [str(i) for i in range(25)]


@pytest.mark.parametrize("mode", ["timeout", "http500", "http401", "garbage"])
def test_no_usable_answer_means_every_punch_is_kept_not_rejected(office: Office, mode: str) -> None:
    store_punches(office.store, punch_batch(3))
    office.upstream.mode = mode
    report = office.fwd.run_once()
    assert report.error and report.rejected == 0
    box = office.outbox()
    assert {r.state for r in box.values()} == {"pending"} and {r.attempts for r in box.values()} == {1}
    assert all(r.next_attempt_at > office.clock() for r in box.values())
    assert office.alerts() == []


def test_a_punch_the_upstream_cannot_parse_is_isolated_by_halving_and_the_rest_goes_through(office: Office) -> None:
    store_punches(office.store, punch_batch(10))
    office.upstream.bad_user = "6"
    report = office.fwd.run_once()
    assert report.accepted == 9 and report.rejected == 1
    box = office.outbox()
    assert list(box) == ["6"] and box["6"].state == "rejected" and box["6"].last_error.startswith("bad_payload")


def test_backoff_is_exponential_with_full_jitter_and_capped() -> None:
    rng = random.Random(7)
    for failures, ceiling in ((1, 5), (2, 10), (3, 20), (10, 300), (40, 300)):
        values = [full_jitter(rng, 5, 300, failures) for _ in range(200)]
        assert all(ceiling * 0.1 <= v <= ceiling for v in values)
        assert max(values) - min(values) > ceiling * 0.5  # really jittered


def test_backlog_older_than_alert_after_raises_one_alert_and_one_end(office: Office) -> None:
    store_punches(office.store, punch_batch(2))
    office.upstream.mode = "down"
    office.fwd.run_once()
    assert office.alerts() == []
    office.clock.advance(3700)
    office.fwd.run_once()
    office.clock.advance(60)
    office.fwd.run_once()
    alerts = office.alerts()
    assert [(a["problem"], a["event"]) for a in alerts] == [("forward_backlog", "start")]
    assert json.loads(alerts[0]["details"])["seen"]["depth"] == 2 and "What to check" in alerts[0]["message"]
    # A restarted forwarder knows the alert is open (no second start).
    fwd2 = make_forwarder(office.config, office.engine, transport=httpx.MockTransport(office.upstream.handler),
                     now=office.clock, rng=random.Random(2))
    fwd2.run_once()
    assert len(office.alerts()) == 1
    office.upstream.mode = "ok"
    office.clock.advance(4000)
    fwd2.run_once()
    assert [(a["problem"], a["event"]) for a in office.alerts()] == [("forward_backlog", "start"),
                                                                    ("forward_backlog", "end")]
    fwd2.stop(1)


def test_retry_rejected_requeues_and_they_go_out(office: Office) -> None:
    store_punches(office.store, punch_batch(3))
    office.upstream.decide = lambda p: {"status": "rejected", "reason": "office_mismatch: x"}
    office.fwd.run_once()
    assert Outbox(office.engine, "").stats().rejected == 3
    assert Outbox(office.engine, "").retry_rejected() == 3
    office.upstream.decide = lambda p: {"status": "accepted"}
    office.fwd.run_once()
    assert office.outbox() == {}


def test_device_health_is_forwarded_with_the_backlog(office: Office) -> None:
    store_punches(office.store, punch_batch(1))
    office.upstream.mode = "down"
    office.fwd.run_once()
    office.upstream.mode = "ok"
    office.clock.advance(700)
    report = office.fwd.run_once()
    assert report.health_sent
    health = [r for r in office.upstream.requests if r["path"] == "/api/v1/ingest/health"]
    assert len(health) == 1
    devices = health[0]["doc"]["devices"]
    assert [d["device_id"] for d in devices] == ["lobby"] and devices[0]["health"]["state"] == "unknown"
    assert health[0]["doc"]["gateway"]["outbox_depth"] == 0


def test_metrics_count_results_and_upstream_state(office: Office) -> None:
    store_punches(office.store, punch_batch(3))
    office.upstream.decide = lambda p: ({"status": "rejected", "reason": "x: y"} if p["device_user_id"] == "0"
                                        else {"status": "accepted"})
    office.fwd.run_once()
    reg = office.registry
    assert reg.get_sample_value("fpgw_forward_punches_total", {"result": "accepted"}) == 2
    assert reg.get_sample_value("fpgw_forward_punches_total", {"result": "rejected"}) == 1
    assert reg.get_sample_value("fpgw_forward_upstream_up") == 1
    assert reg.get_sample_value("fpgw_outbox_rejected") == 1


def test_batches_too_large_for_the_centre_are_split_and_the_smaller_size_is_kept(
        office: Office, logs: list[dict[str, Any]]) -> None:
    store_punches(office.store, punch_batch(10))
    limit = 3

    def handler(request: httpx.Request) -> httpx.Response:
        doc = json.loads(request.content)
        office.upstream.requests.append({"path": request.url.path, "doc": doc})
        if request.url.path.endswith("/health"):
            return httpx.Response(200, json={"office_code": OFFICE, "devices": 1})
        if len(doc["punches"]) > limit:
            return httpx.Response(413, json={"error": "batch_too_large", "message": "at most 3"})
        return httpx.Response(200, json={"results": [{"index": i, "status": "accepted"}
                                                     for i in range(len(doc["punches"]))]})

    fwd = make_forwarder(office.config, office.engine, transport=httpx.MockTransport(handler), now=office.clock,
                    rng=random.Random(3), health_every_s=3600)
    try:
        report = fwd.run_once()
        assert report.accepted == 10 and report.rejected == 0 and office.outbox() == {}
        assert fwd.batch_limit <= limit
        assert [e["event"] for e in logs if e["log_level"] == "warning"].count(
            "upstream refuses batches this large; sending smaller ones") <= 2
        office.upstream.requests.clear()
        store_punches(office.store, punch_batch(6, start=50))
        fwd.run_once()
        sizes = [len(r["doc"]["punches"]) for r in office.upstream.requests if r["path"].endswith("/punches")]
        assert sizes and max(sizes) <= limit  # no more 413s: the smaller size stuck
    finally:
        fwd.stop(1)


def test_unreadable_ca_file_is_one_clear_warning_and_nothing_is_lost(db_url: str, tmp_path: Path,
                                                                    logs: list[dict[str, Any]]) -> None:
    config = forward_config(tmp_path, db_url, ca_file=str(tmp_path / "missing-ca.pem"))
    engine = create_db_engine(db_url)
    upgrade(engine)
    store = Store(engine, OFFICE)
    store.sync_devices(config.devices)
    store_punches(store, punch_batch(2))
    clock = _due_clock()
    fwd = make_forwarder(config, engine, now=clock, rng=random.Random(5))
    try:
        for _ in range(3):
            report = fwd.run_once()
            clock.advance(700)
        assert report.error == "bad_ca_file" and Outbox(engine, "").stats(clock()).depth == 2
        warnings = [e for e in logs if e["log_level"] in ("warning", "error")]
        assert len(warnings) == 1 and "missing-ca.pem" in warnings[0]["error"]
    finally:
        fwd.stop(1)
        engine.dispose()


def test_weeks_of_outage_and_a_restart_lose_nothing_alert_once_and_retry_within_the_cap(
        office: Office, logs: list[dict[str, Any]]) -> None:
    store_punches(office.store, punch_batch(30))
    office.upstream.mode = "down"
    fwd = office.fwd
    cap = office.config.forward.backoff_max_s
    for step in range(14 * 12):  # two weeks, a run every two hours
        if step == 7 * 12:  # the daemon restarts mid-outage
            fwd = make_forwarder(office.config, office.engine, transport=httpx.MockTransport(office.upstream.handler),
                            now=office.clock, rng=random.Random(9), health_every_s=3600)
        fwd.run_once()
        box = office.outbox()
        assert len(box) == 30 and {r.state for r in box.values()} == {"pending"}
        assert all(r.next_attempt_at <= office.clock() + timedelta(seconds=cap + 1) for r in box.values())
        office.clock.advance(7200)
    assert [(a["problem"], a["event"]) for a in office.alerts()] == [("forward_backlog", "start")]
    # It kept trying (the oldest batch) the whole time; nothing was given up on.
    assert max(r.attempts for r in office.outbox().values()) >= 14 * 12 - 2
    office.upstream.mode = "ok"
    fwd.run_once()
    assert office.outbox() == {}
    assert sorted(office.upstream.sent_users()[-30:], key=int) == [str(i) for i in range(30)]
    assert [(a["problem"], a["event"]) for a in office.alerts()] == [("forward_backlog", "start"),
                                                                    ("forward_backlog", "end")]
    # One warning per forwarder life (the restart starts a fresh one), not one per failed try.
    assert [e["event"] for e in logs if e["log_level"] == "warning"].count(
        "upstream not accepting punches; keeping them in the outbox") == 2
    fwd.stop(1)


def test_rejection_reason_survives_when_the_link_fails_later_in_the_same_run(office: Office) -> None:
    store_punches(office.store, punch_batch(4))
    calls = {"n": 0}

    def handler(request: httpx.Request) -> httpx.Response:
        calls["n"] += 1
        if calls["n"] == 1:
            return httpx.Response(400, json={"error": "bad_payload", "message": "punches[1].state"})
        if calls["n"] == 2:  # first half: user 0 rejected, user 1 accepted
            return httpx.Response(200, json={"results": [
                {"index": 0, "status": "rejected", "reason": "office_mismatch: x"},
                {"index": 1, "status": "accepted"}]})
        raise httpx.ConnectError("link gone", request=request)  # second half: the link drops

    fwd = make_forwarder(office.config, office.engine, transport=httpx.MockTransport(handler), now=office.clock,
                    rng=random.Random(4), health_every_s=3600)
    try:
        report = fwd.run_once()
    finally:
        fwd.stop(1)
    assert report.error == "unreachable" and report.reasons == {"office_mismatch": 1}
    box = office.outbox()
    assert box["0"].state == "rejected" and box["0"].last_error == "office_mismatch: x"
    assert "1" not in box and {box["2"].state, box["3"].state} == {"pending"}
    assert "link gone" in box["2"].last_error


def test_an_answer_for_other_rows_is_not_trusted(office: Office) -> None:
    store_punches(office.store, punch_batch(2))

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"results": [{"index": 1, "status": "accepted"},
                                                     {"index": 0, "status": "accepted"}]})

    fwd = make_forwarder(office.config, office.engine, transport=httpx.MockTransport(handler), now=office.clock,
                    rng=random.Random(4), health_every_s=3600)
    try:
        report = fwd.run_once()
    finally:
        fwd.stop(1)
    assert report.error == "bad_answer" and len(office.outbox()) == 2


def test_forwarding_alerts_reach_the_team_through_the_alert_sender(office: Office) -> None:
    from gateway.health.alerts import AlertRouter, Channel
    from gateway.store.health import HealthRepo

    store_punches(office.store, punch_batch(2))
    office.upstream.decide = lambda p: {"status": "rejected", "reason": "office_mismatch: punch says 9999"}
    office.fwd.run_once()
    received: list[dict[str, Any]] = []
    router = AlertRouter(office.config, HealthRepo(office.engine, OFFICE),
                         channels=[Channel("test", received.append)])
    router.start()  # queues alerts other writers left pending
    try:
        assert router.wait_idle(10)
    finally:
        router.stop(5)
    assert [(d["problem"], d["event"], d["reason"]) for d in received] == [
        ("forward_rejected", "start", "office_mismatch")]
    assert received[0]["check"] and "retry-rejected" in received[0]["message"]
    assert all(a["delivered_at"] is not None for a in office.alerts())


def test_health_snapshot_interval_comes_from_the_config(db_url: str, tmp_path: Path) -> None:
    from gateway.config import ConfigError

    assert forward_config(tmp_path, db_url).forward.health_interval_s == 300.0
    with pytest.raises(ConfigError, match="health_interval_s"):
        forward_config(tmp_path, db_url, health_interval_s=10)
    config = forward_config(tmp_path, db_url, health_interval_s="2m")
    assert config.forward.health_interval_s == 120.0
    engine = create_db_engine(db_url, pool_size=2)
    upgrade(engine)
    Store(engine, OFFICE).sync_devices(config.devices)
    upstream, clock = Upstream(), _due_clock()
    fwd = make_forwarder(config, engine, transport=httpx.MockTransport(upstream.handler), rng=random.Random(5),
                         now=clock)
    try:
        sent = []
        for _ in range(9):  # 4.5 minutes of runs, one every 30 s
            sent.append(fwd.run_once().health_sent)
            clock.advance(30)
        # At start, then every 120 s (not every 300 s).
        assert sent == [True, False, False, False, True, False, False, False, True]
        health = [r["doc"] for r in upstream.requests if r["path"] == "/api/v1/ingest/health"]
        assert health[0]["gateway"]["office_code"] == OFFICE
    finally:
        fwd.stop(1)
        engine.dispose()


def _run_later(office: Office, *new_users: int) -> RunReport:
    """Past every row's backoff, with new punches of these users stored, one forwarding run."""
    office.clock.advance(700)
    for n in new_users:
        store_punches(office.store, punch_batch(1, start=n))
    return office.fwd.run_once()


def test_a_punch_the_central_answers_500_to_is_isolated_then_set_aside_and_the_queue_moves_on(
        office: Office, tmp_path: Path, capsys: pytest.CaptureFixture[str], restore_logging: None) -> None:
    store_punches(office.store, punch_batch(25))
    office.upstream.poison_users = {"3"}
    first = office.fwd.run_once()
    # Everything but the poison punch went through in the very first run; it waits alone, not rejected yet
    # (a transient 500 never sets a punch aside).
    assert first.error is None and first.accepted == 24 and first.rejected == 0
    box = office.outbox()
    assert list(box) == ["3"] and box["3"].state == "pending" and box["3"].attempts == 1
    # While it waits for its retry, new punches are not held behind it.
    store_punches(office.store, punch_batch(2, start=30))
    assert office.fwd.run_once().accepted == 2 and list(office.outbox()) == ["3"]
    # It fails alone again (attempt 2), then a third time: set aside with the reason, one alert.
    assert _run_later(office, 40).accepted == 1 and office.outbox()["3"].state == "pending"
    third = _run_later(office, 41, 42)
    assert (third.accepted, third.rejected) == (2, 1)
    box = office.outbox()
    assert list(box) == ["3"] and box["3"].state == "rejected"
    assert box["3"].last_error.startswith("server_error: HTTP 500") and "alone 3 times" in box["3"].last_error
    assert [json.loads(a["details"])["reason"] for a in office.alerts()] == ["server_error"]
    # Later punches keep flowing; the rejected one is not sent again.
    n_sent = office.upstream.sent_users().count("3")
    assert _run_later(office, 43).accepted == 1 and office.upstream.sent_users().count("3") == n_sent
    # `fpgw forward status` shows it with the reason; retry-rejected queues it again and, fixed, it goes.
    doc = {"site": {"office_code": OFFICE, "timezone": "Asia/Jakarta", "state_dir": str(tmp_path)},
           "database": {"url": office.config.database.url},
           "devices": [{"id": "lobby", "address": "127.0.0.1"}],
           "forward": {"url": "https://bkd.example.invalid", "token_file": str(tmp_path / "token")}}
    cfg = write_toml(doc, tmp_path / "fpgw.toml")
    code, out, _ = run_cli(capsys, "-c", str(cfg), "forward", "status")
    assert code == 0 and "rejected:        1 punch(es)" in out and "server_error: HTTP 500" in out
    code, out, _ = run_cli(capsys, "-c", str(cfg), "forward", "retry-rejected")
    assert code == 0 and out.startswith("1 rejected punch(es) queued again")
    office.upstream.poison_users = set()
    assert office.fwd.run_once().accepted == 1 and office.outbox() == {}


def test_a_500_outage_sets_nothing_aside_and_asks_little(office: Office) -> None:
    store_punches(office.store, punch_batch(25))
    office.upstream.mode = "http500"  # every request: 502 from a proxy in front of a dead central
    for _ in range(6):
        before = len(office.upstream.requests)
        report = office.fwd.run_once()
        assert report.error == "server_error" and report.rejected == 0 and report.accepted == 0
        # One batch, halved a few times to look for a culprit, then given up as an outage.
        assert len(office.upstream.requests) - before <= 7
        office.clock.advance(700)
    box = office.outbox()
    assert len(box) == 25 and {r.state for r in box.values()} == {"pending"}
    assert [a["problem"] for a in office.alerts()] == []
    office.upstream.mode = "ok"
    office.clock.advance(700)
    assert office.fwd.run_once().accepted == 25 and office.outbox() == {}


def test_refused_connections_never_set_anything_aside_even_with_old_rows(office: Office) -> None:
    store_punches(office.store, punch_batch(12))
    office.upstream.mode = "down"
    for _ in range(8):
        assert office.fwd.run_once().rejected == 0
        office.clock.advance(700)
    box = office.outbox()
    assert {r.state for r in box.values()} == {"pending"} and max(r.attempts for r in box.values()) >= 3
    office.upstream.mode = "ok"
    assert office.fwd.run_once().accepted == 12

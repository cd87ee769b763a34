"""Gateway composition root in-process over FakeDriver: service order, observers, stop during a poll."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from drivers.fake import FakeDevice, FakeDriver, make_punch
from gateway.app import Gateway
from gateway.config import parse_config
from gateway.services import AppContext
from gateway.store import schema as s
from tests.support.gateway import Recorder, table_rows


class RecordingService:
    """A service that records its lifecycle in a shared journal."""

    def __init__(self, name: str, journal: list[str], ctx: AppContext) -> None:
        self.name = name
        self.journal = journal
        self.ctx = ctx

    def start(self) -> None:
        self.journal.append(f"start {self.name} scheduler_running={self.ctx.scheduler.running}")

    def stop(self, deadline_s: float) -> None:
        self.journal.append(f"stop {self.name} stop_event={self.ctx.stop_event.is_set()}")


def config(tmp_path: Path, **polling: Any):  # type: ignore[no-untyped-def]
    return parse_config({"site": {"office_code": "1801.01.02"},
                         "database": {"url": f"sqlite:///{tmp_path / 'fpgw.db'}"},
                         "polling": {"interval_s": 3600, "shutdown_deadline_s": 5, **polling},
                         "http": {"enabled": False},
                         "devices": [{"id": "lobby", "address": "10.0.0.1"}]}, base_dir=tmp_path)


@pytest.mark.timeout(30)
def test_services_start_in_order_stop_in_reverse_and_see_every_poll(tmp_path: Path) -> None:
    journal: list[str] = []
    factories = [(area, (lambda ctx, a=area: [RecordingService(a, journal, ctx)]))
                 for area in ("monitor", "forwarder", "central", "http")]
    driver = FakeDriver(FakeDevice(serial="SN1", punches=[make_punch("1001", "2026-11-20 07:30:00")]))
    gw = Gateway(config(tmp_path), driver_factory=lambda d: driver, service_factories=factories)
    rec = Recorder()
    gw.ctx.poll_observers.append(rec)
    with gw:
        from datetime import UTC, datetime

        when = datetime.now(UTC)
        assert gw.ctx.poll_now is not None and gw.ctx.poll_now("lobby")
        outcome = rec.wait_for("lobby", when)
        assert outcome.ok and outcome.new_punches == 1
        assert "1/1 perangkat OK, poll terakhir" in gw.status_text()
        assert gw.healthy()
    # Started while the scheduler runs (paused), stopped in reverse order after polling stopped.
    assert journal == ["start monitor scheduler_running=True", "start forwarder scheduler_running=True",
                       "start central scheduler_running=True", "start http scheduler_running=True",
                       "stop http stop_event=True", "stop central stop_event=True",
                       "stop forwarder stop_event=True", "stop monitor stop_event=True"]
    assert [r["device_time"] for r in table_rows(f"sqlite:///{tmp_path / 'fpgw.db'}", s.punches)] == [
        "2026-11-20 07:30:00"]


@pytest.mark.timeout(30)
def test_stop_during_a_poll_abandons_it_before_the_download_and_reenables_the_terminal(tmp_path: Path) -> None:
    driver = FakeDriver(FakeDevice(serial="SN1", punches=[make_punch("1001", "2026-11-20 07:30:00")]))
    driver.delay("counts", 0.5)  # the stop request lands while the device answers "counts"
    gw = Gateway(config(tmp_path), driver_factory=lambda d: driver, service_factories=[])
    rec = Recorder()
    gw.ctx.poll_observers.append(rec)
    gw.start()
    assert gw.ctx.poll_now is not None and gw.ctx.poll_now("lobby")
    deadline = time.monotonic() + 10
    while "counts" not in driver.calls and time.monotonic() < deadline:
        time.sleep(0.01)
    gw.stop()
    (outcome,) = rec.outcomes
    assert (outcome.ok, outcome.error_kind) == (False, "abandoned")
    assert "read_punches" not in driver.calls
    assert driver.sessions_opened == driver.sessions_closed == 1 and driver.device.enabled
    runs = table_rows(f"sqlite:///{tmp_path / 'fpgw.db'}", s.poll_runs)
    assert [r["outcome"] for r in runs] == ["abandoned"]
    assert gw.ctx.poll_now("lobby") is False  # nothing new starts once stopped


@pytest.mark.timeout(30)
def test_gateway_refuses_an_old_schema_when_auto_migrate_is_off(tmp_path: Path) -> None:
    from gateway.store.db import DatabaseError

    cfg = parse_config({"site": {"office_code": "X"},
                        "database": {"url": f"sqlite:///{tmp_path / 'fpgw.db'}", "auto_migrate": False},
                        "devices": []}, base_dir=tmp_path)
    with pytest.raises(DatabaseError, match="fpgw db upgrade"):
        Gateway(cfg, service_factories=[])


@pytest.mark.timeout(60)
def test_an_outage_logs_one_warning_when_it_starts_and_one_info_with_its_duration_when_it_ends(
        tmp_path: Path) -> None:
    from datetime import UTC, datetime, timedelta

    from structlog.testing import capture_logs

    from drivers.base import Unreachable

    cfg = parse_config({"site": {"office_code": "1801.01.02"},
                        "database": {"url": f"sqlite:///{tmp_path / 'fpgw.db'}"},
                        "polling": {"interval_s": 3600, "shutdown_deadline_s": 5},
                        "health": {"offline_after_failures": 2, "offline_after_s": 1},
                        "http": {"enabled": False},
                        "devices": [{"id": "lobby", "address": "10.0.0.1"}]}, base_dir=tmp_path)
    driver = FakeDriver(FakeDevice(serial="SN1"))
    gw = Gateway(cfg, driver_factory=lambda d: driver)  # the default services: health, metrics
    rec = Recorder()
    gw.ctx.poll_observers.append(rec)

    def poll() -> Any:
        when = datetime.now(UTC)
        assert gw.ctx.poll_now is not None and gw.ctx.poll_now("lobby")
        return rec.wait_for("lobby", when)

    with capture_logs() as logs, gw:
        assert poll().ok
        driver.script("connect", Unreachable("no answer"), Unreachable("no answer"), Unreachable("no answer"))
        for _ in range(3):
            assert poll().error_kind == "unreachable"
        assert gw.ctx.health is not None
        gw.ctx.health.sweep(datetime.now(UTC) + timedelta(seconds=5))
        assert gw.ctx.health.consecutive_failures("lobby") == 3
        assert poll().ok
        assert gw.ctx.health.consecutive_failures("lobby") == 0
    said = [(e["log_level"], e["event"], e.get("problem")) for e in logs
            if e["log_level"] in ("warning", "info") and "device" in e["event"]
            and e.get("problem") in (None, "offline")]  # (the fake's clock is off too: clock_skew)
    assert said == [("warning", "device problem", "offline"), ("info", "device problem resolved", "offline")]
    (ended,) = [e for e in logs if e["event"] == "device problem resolved"]
    assert ended["duration"]  # how long the outage lasted, in words


@pytest.mark.timeout(60)
def test_the_daemon_reads_every_device_at_start_with_at_most_pool_size_polls_at_once(tmp_path: Path) -> None:
    """Cold start through the real schedule (this test is about it): 12 devices, a pool of 3 workers."""
    import threading
    from datetime import UTC, datetime

    from structlog.testing import capture_logs

    cfg = parse_config({"site": {"office_code": "1801.01.02"},
                        "database": {"url": f"sqlite:///{tmp_path / 'fpgw.db'}"},
                        "polling": {"interval_s": 3600, "shutdown_deadline_s": 5, "pool_size": 3},
                        "http": {"enabled": False},
                        "devices": [{"id": f"t{i}", "address": f"10.0.0.{i + 1}"} for i in range(12)]},
                       base_dir=tmp_path)
    gate = threading.Semaphore(0)
    in_flight: list[int] = [0, 0]  # now, most at once
    count_lock = threading.Lock()

    class CountingDriver(FakeDriver):
        def connect(self, *args: Any, **kw: Any) -> Any:
            with count_lock:
                in_flight[0] += 1
                in_flight[1] = max(in_flight[1], in_flight[0])
            gate.acquire(timeout=10)  # held until the test has seen the pool fill up
            with count_lock:
                in_flight[0] -= 1
            return super().connect(*args, **kw)

    rec = Recorder()
    with capture_logs() as logs:
        gw = Gateway(cfg, driver_factory=lambda d: CountingDriver(FakeDevice(serial=f"SN-{d.id}")),
                     service_factories=[])
        gw.ctx.poll_observers.append(rec)
        with gw:
            deadline = time.monotonic() + 20
            while in_flight[0] < 3 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert in_flight[0] == 3  # the pool is full...
            for _ in range(12):
                gate.release()
            since = datetime.min.replace(tzinfo=UTC)
            polled = {rec.wait_for(f"t{i}", since).device_id for i in range(12)}
            assert polled == {f"t{i}" for i in range(12)}  # ...and every device was read once
            assert len([t for t in threading.enumerate() if t.name.startswith("fpgw-poll-")]) == 3 + 1  # + dispatcher
    assert in_flight[1] == 3  # never more than pool_size at once
    assert [e["devices"] for e in logs if e["event"] == "first read of every terminal done"] == [12]

"""The user_drop problem through the daemon's health monitor, on SQLite and PostgreSQL: a terminal whose user count
falls sharply (factory reset) raises one alert, survives a restart without a second one, and ends once when an
operator runs `fpgw enrol ack-drop` (read by the monitor's sweep from the database) or when the count is back.
Time is passed explicitly; nothing sleeps."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from apscheduler.schedulers.background import BackgroundScheduler
from prometheus_client import CollectorRegistry

from drivers.base import Counts
from gateway.config import Config, load_config
from gateway.health.monitor import HealthMonitor
from gateway.models import PollOutcome
from gateway.services import AppContext
from gateway.store import schema as s
from gateway.store.central import CentralStore
from gateway.store.db import create_db_engine, upgrade
from gateway.store.health import HealthRepo
from gateway.store.outbox import Outbox
from gateway.store.punches import Store
from tests.support.cli import run_cli
from tests.support.config import write_toml
from tests.support.gateway import table_rows

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("restore_logging")]
T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)


def polled(users: int, at: datetime) -> PollOutcome:
    return PollOutcome(device_id="gate", started_at=at - timedelta(seconds=1), finished_at=at, ok=True,
                       counts=Counts(records=10, users=users, users_cap=1000, records_cap=10000))


class Daemon:
    """A health monitor over a real database (what the daemon builds), restartable."""

    def __init__(self, config: Config, db_url: str) -> None:
        self.config, self.db_url = config, db_url
        self.engine = create_db_engine(db_url)
        upgrade(self.engine)
        Store(self.engine, config.site.office_code).sync_devices(config.devices)
        self.monitor = self.start()

    def start(self) -> HealthMonitor:
        code = self.config.site.office_code
        ctx = AppContext(config=self.config, store=Store(self.engine, code), health_repo=HealthRepo(self.engine, code),
                         outbox=Outbox(self.engine, code), central_store=CentralStore(self.engine),
                         scheduler=BackgroundScheduler(), metrics_registry=CollectorRegistry())
        mon = HealthMonitor(ctx, clock=lambda: T0)
        mon.start()
        return mon

    def restart(self) -> None:
        self.monitor.stop(5)
        self.monitor = self.start()

    def events(self) -> list[tuple[str, str]]:
        return [(a["problem"], a["event"]) for a in table_rows(self.db_url, s.alerts) if a["problem"] == "user_drop"]


@pytest.fixture
def daemon(tmp_path: Path, db_url: str) -> Iterator[tuple[Daemon, Path]]:
    doc = {"site": {"office_code": "1801.01", "timezone": "Asia/Jakarta", "state_dir": str(tmp_path)},
           "database": {"url": db_url}, "devices": [{"id": "gate", "address": "127.0.0.1", "port": 4370}],
           "alerts": {"reminder_s": 0}}
    path = write_toml(doc, tmp_path / "config.toml")
    d = Daemon(load_config(path), db_url)
    try:
        yield d, path
    finally:
        d.monitor.stop(5)
        d.engine.dispose()


def test_factory_reset_alerts_once_survives_a_restart_and_ends_on_ack_drop(
        daemon: tuple[Daemon, Path], capsys: pytest.CaptureFixture[str]) -> None:
    d, config_path = daemon
    d.monitor.observe(polled(300, T0))
    d.monitor.observe(polled(0, T0 + timedelta(minutes=1)))
    d.monitor.observe(polled(0, T0 + timedelta(minutes=2)))
    assert d.events() == [("user_drop", "start")]
    assert "user_drop" in d.monitor.snapshot()["gate"].problems
    d.restart()  # persisted: no second alert, still open
    d.monitor.observe(polled(0, T0 + timedelta(minutes=3)))
    d.monitor.sweep(T0 + timedelta(minutes=3))
    assert d.events() == [("user_drop", "start")] and "user_drop" in d.monitor.snapshot()["gate"].problems
    code, out, err = run_cli(capsys, "--config", str(config_path), "devices", "--json")  # what operators see
    assert code == 0 and "user_drop" in out, (out, err)

    code, out, err = run_cli(capsys, "--config", str(config_path), "enrol", "ack-drop", "gate")
    assert code == 0 and "acknowledged" in out, (out, err)
    d.monitor.sweep(T0 + timedelta(hours=2))
    assert d.events() == [("user_drop", "start"), ("user_drop", "end")]
    assert "user_drop" not in d.monitor.snapshot()["gate"].problems
    d.monitor.sweep(T0 + timedelta(hours=2, minutes=1))
    d.monitor.observe(polled(0, T0 + timedelta(hours=2, minutes=2)))  # the accepted count is quiet
    assert d.events() == [("user_drop", "start"), ("user_drop", "end")]


def test_a_reset_while_the_daemon_was_down_is_noticed_and_a_restore_ends_it(daemon: tuple[Daemon, Path]) -> None:
    d, _ = daemon
    d.monitor.observe(polled(250, T0))
    # What the poller stores with every poll (devices.last_user_count) is what the monitor reads at start.
    Store(d.engine, d.config.site.office_code).save_poll(polled(250, T0))
    d.restart()
    d.monitor.observe(polled(3, T0 + timedelta(minutes=5)))
    assert d.events() == [("user_drop", "start")]
    d.monitor.observe(polled(250, T0 + timedelta(minutes=6)))  # restored from the backup
    assert d.events() == [("user_drop", "start"), ("user_drop", "end")]

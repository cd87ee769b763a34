"""The daemon's daily enrolment backup: never beside a poll of the same terminal (PollScheduler.run_exclusive),
polls held off while it runs and a manual poll asked meanwhile kept; every polled terminal backed up with the
"daemon" actor in the audit; without a key it skips with a warning and contacts no terminal."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from gateway.config import DeviceConfig, parse_config
from gateway.enrol.crypto import new_key_text
from gateway.enrol.daily import DailyBackup
from gateway.models import PollOutcome
from gateway.polling.scheduler import PollScheduler, build_scheduler
from gateway.services import AppContext
from gateway.store.db import create_db_engine, upgrade
from gateway.store.enrol import EnrolRepo
from tests.support.config import DeviceEntry, make_config
from tests.support.fleet import sim_spec


@pytest.mark.timeout(30)
def test_run_exclusive_waits_for_the_running_poll_and_holds_polls_off(tmp_path: Path, fleet: Any) -> None:
    dev = fleet.add(sim_spec("DAILY-X", users=1, records=0))
    config = make_config(f"sqlite:///{tmp_path / 'x.db'}", [DeviceEntry("a", dev)], tmp_path)
    in_poll, release_poll = threading.Event(), threading.Event()
    events: list[str] = []

    def poll(device: DeviceConfig) -> PollOutcome:
        events.append("poll start")
        in_poll.set()
        assert release_poll.wait(10)
        events.append("poll end")
        now = datetime.now(UTC)
        return PollOutcome(device.id, now, now, True)

    ps = PollScheduler(config, build_scheduler(config), poll, stop_event=threading.Event())
    poller = threading.Thread(target=ps.run_device, args=("a", True))
    poller.start()
    assert in_poll.wait(10)

    job_started, job_may_end = threading.Event(), threading.Event()
    held_results: list[Any] = []

    def job() -> str:
        events.append("backup")
        job_started.set()
        assert job_may_end.wait(10)
        return "done"

    holder = threading.Thread(target=lambda: held_results.append(ps.run_exclusive("a", job)))
    holder.start()
    assert not job_started.wait(0.3)  # the poll still runs: the backup waits
    release_poll.set()
    assert job_started.wait(10)
    # While the backup holds the terminal no poll starts; a manual one is remembered.
    assert ps.run_device("a") is None and ps.run_device("a", manual=True) is None
    assert ps.states["a"].pending
    job_may_end.set()
    holder.join(10)
    poller.join(10)
    assert held_results == ["done"]
    assert events == ["poll start", "poll end", "backup"]
    assert not ps.states["a"].held


@pytest.mark.timeout(60)
def test_daily_backup_backs_up_every_polled_terminal_as_the_daemon(tmp_path: Path, fleet: Any) -> None:
    sims = [fleet.add(sim_spec(f"DAILY-{i}", users=10, records=0, templates_per_user=1)) for i in range(2)]
    key = tmp_path / "enrol.key"
    key.write_text(new_key_text())
    key.chmod(0o600)
    url = f"sqlite:///{tmp_path / 'd.db'}"
    config = make_config(url, [DeviceEntry(f"t{i}", d) for i, d in enumerate(sims)], tmp_path,
                         enrol={"key_file": str(key)})
    engine = create_db_engine(url, pool_size=1)
    try:
        upgrade(engine)
        repo = EnrolRepo(engine)
        ctx = AppContext(config=config, store=None, health_repo=None, scheduler=build_scheduler(config),  # type: ignore[arg-type]
                         outbox=None, central_store=None)  # type: ignore[arg-type]
        held: list[str] = []

        def hold(device_id: str, job: Any) -> Any:
            held.append(device_id)
            return job()

        results = DailyBackup(ctx, repo, hold).run()
        assert [(r.device_id, r.ok, r.users, r.templates) for r in results] == [("t0", True, 10, 10),
                                                                                 ("t1", True, 10, 10)]
        assert held == ["t0", "t1"]
        assert {(a.actor, a.action) for a in repo.audit_rows()} == {("daemon", "backup")}

        # Without a key: one warning, no terminal contacted.
        key.unlink()
        before = [d.requests_received for d in sims]
        with capture_logs() as logs:
            assert DailyBackup(ctx, repo, hold).run() == []
        assert [e["event"] for e in logs if e["log_level"] == "warning"] == ["daily enrolment backup skipped"]
        assert [d.requests_received for d in sims] == before
    finally:
        engine.dispose()


@pytest.mark.timeout(60)
def test_the_daemon_schedules_the_daily_backup_at_backup_at_and_backs_up_under_the_poll_hold(
        tmp_path: Path, fleet: Any) -> None:
    from gateway.enrol.daily import DailyBackup
    from tests.support.gateway import RunningGateway

    dev = fleet.add(sim_spec("DAILY-GW", users=8, records=5, templates_per_user=1))
    key = tmp_path / "enrol.key"
    key.write_text(new_key_text())
    key.chmod(0o600)
    url = f"sqlite:///{tmp_path / 'gw.db'}"
    config = make_config(url, [DeviceEntry("gw", dev)], tmp_path,
                         enrol={"key_file": str(key), "backup_at": "03:15"})
    with RunningGateway(config) as running:
        gateway = running.gateway
        job = gateway.scheduler.get_job("enrol-backup")
        assert job is not None and (job.next_run_time.hour, job.next_run_time.minute) == (3, 15)
        assert str(job.next_run_time.tzinfo) == "Asia/Jakarta"
        [service] = [s for s in gateway.services if isinstance(s, DailyBackup)]
        # Run now, as the cron would (the test does not wait for 03:15).
        [result] = service.run()
        assert result.ok and result.users == 8 and result.templates == 8
        assert gateway.polls.states["gw"].held is False
        # The status page shows the backup; after a factory reset and another backup, the drop notice.
        from gateway.web.status import StatusView

        view = StatusView(gateway.ctx)
        [card] = view.document()["devices"]
        assert card["enrol_backup"]["users"] == 8 and card["enrol_backup"]["user_drop"] is None
        dev.factory_reset()
        service.run()
        doc = view.document()
        assert doc["devices"][0]["enrol_backup"]["user_drop"] == [8, 0]
        assert "user count dropped</b> 8 &rarr; 0" in view.page(doc)
    config_off = make_config(url, [DeviceEntry("gw", dev)], tmp_path, enrol={"daily": False})
    with RunningGateway(config_off) as running:
        assert running.gateway.scheduler.get_job("enrol-backup") is None


@pytest.mark.timeout(30)
def test_a_driver_without_the_ability_fails_the_backup_cleanly_and_is_audited(tmp_path: Path) -> None:
    from drivers.fake import FakeDriver
    from gateway.enrol.backup import backup_device
    from gateway.enrol.crypto import Keyring, load_key

    key = tmp_path / "enrol.key"
    key.write_text(new_key_text())
    key.chmod(0o600)
    url = f"sqlite:///{tmp_path / 'f.db'}"
    config = parse_config({"site": {"office_code": "1801.01"}, "database": {"url": url},
                           "devices": [{"id": "fake", "address": "127.0.0.1"}]}, base_dir=tmp_path)
    engine = create_db_engine(url, pool_size=1)
    try:
        upgrade(engine)
        repo = EnrolRepo(engine)
        fake = FakeDriver()
        result = backup_device(config.device("fake"), repo, Keyring(load_key(key)), actor="cli:test", timeout_s=5,
                               driver_factory=lambda _device: fake)
        assert not result.ok and "cannot read enrolments" in result.error
        assert fake.sessions_opened == fake.sessions_closed == 1 and fake.device.enabled
        [row] = repo.audit_rows()
        assert (row.action, row.ok, row.actor) == ("backup", False, "cli:test") and repo.latest("fake") is None
    finally:
        engine.dispose()

"""The daemon's office sync: it runs after the daily backup, only with ``[enrol] sync = true``, holds each terminal
through the poll scheduler's hold (never beside a poll of it) and is audited with the "daemon" actor."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from gateway.enrol.crypto import new_key_text
from gateway.enrol.daily import DailyBackup
from gateway.polling.scheduler import build_scheduler
from gateway.services import AppContext
from gateway.store.db import create_db_engine, upgrade
from gateway.store.enrol import EnrolRepo
from simulators.zk.protocol import User
from simulators.zk.templates import StoredTemplate, make_template
from tests.support.config import DeviceEntry, make_config
from tests.support.fleet import sim_spec


@pytest.mark.timeout(60)
@pytest.mark.parametrize("sync", [False, True])
def test_daily_run_syncs_after_the_backups_under_the_hold(tmp_path: Path, fleet: Any, sync: bool) -> None:
    rng = random.Random(3)
    sims = [fleet.add(sim_spec(f"DSYNC-{i}", users=0, records=0)) for i in range(2)]
    assert sims[0].save_upload([User(1, "11", "Ani")], [StoredTemplate(1, 0, 1, make_template(rng, 10))]) is None
    key = tmp_path / "enrol.key"
    key.write_text(new_key_text())
    key.chmod(0o600)
    url = f"sqlite:///{tmp_path / 'd.db'}"
    config = make_config(url, [DeviceEntry(f"t{i}", d) for i, d in enumerate(sims)], tmp_path,
                         enrol={"key_file": str(key), "sync": sync})
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

        daily = DailyBackup(ctx, repo, hold)
        assert [r.ok for r in daily.run()] == [True, True]
        if not sync:
            assert held == ["t0", "t1"] and sims[1].user_count == 0 and daily.last_sync == []
            return
        # Backups, then the sync's reads, then its one write: every terminal contact under the hold.
        assert held == ["t0", "t1", "t0", "t1", "t1"]
        assert [u.user_id for u in sims[1].users()] == ["11"]
        assert [t.data for t in sims[1].templates().values()] == [t.data for t in sims[0].templates().values()]
        assert [g.ok for g in daily.last_sync] == [True]
        assert {(a.actor, a.action, a.device_id) for a in repo.audit_rows() if a.action == "sync"} == {
            ("daemon", "sync", "t1")}
    finally:
        engine.dispose()

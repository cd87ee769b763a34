"""Incremental enrolment backups against the simulator, on SQLite and PostgreSQL: after any sequence of adds,
deletes and template changes, the stored (incremental) backup holds exactly what a full read of the terminal
holds; a finger re-enrolled in place (same count) is noticed by the template table's size; the weekly full
backup comes when due; and a restore from an incremental backup is byte-identical.
"""

from __future__ import annotations

import itertools
import random
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.config import Config
from gateway.enrol.backup import backup_device, full_backup_due, template_context
from gateway.enrol.crypto import Keyring, load_key, new_key_text
from gateway.store.db import create_db_engine, upgrade
from gateway.store.enrol import EnrolRepo
from gateway.store.schema import utcnow
from simulators.zk.protocol import User
from simulators.zk.templates import StoredTemplate, make_template
from tests.support.config import DeviceEntry, make_config
from tests.support.fleet import sim_spec

_serials = itertools.count(1)


@pytest.fixture
def keyring(tmp_path: Path) -> Keyring:
    path = tmp_path / "enrol.key"
    path.write_text(new_key_text())
    path.chmod(0o600)
    return Keyring(load_key(path))


@pytest.fixture
def repo(db_url: str) -> Any:
    engine = create_db_engine(db_url, pool_size=2)
    upgrade(engine)
    yield EnrolRepo(engine)
    engine.dispose()


def stored(repo: EnrolRepo, keyring: Keyring, head_id: int) -> tuple[dict[int, str], dict[tuple[int, int], bytes]]:
    """A stored backup opened: uid -> PIN, (uid, finger) -> template bytes."""
    serial = next(h.serial for h in repo.history(repo_device(repo, head_id)) if h.id == head_id)
    users = {u.uid: u.user_id for u in repo.users(head_id)}
    return users, {(t.uid, t.finger): keyring.open(t.blob, template_context(serial, t.uid, t.finger))
                   for t in repo.templates(head_id)}


def repo_device(repo: EnrolRepo, head_id: int) -> str:
    return next(device for device, head in repo.last_ok_backups().items() if head.id == head_id)


def on_terminal(dev: Any) -> tuple[dict[int, str], dict[tuple[int, int], bytes]]:
    return {u.uid: u.user_id for u in dev.users()}, {k: t.data for k, t in dev.templates().items()}


def new_device(fleet: Any, tmp_path: Path, db_url: str, transport: str, users: int = 12) -> tuple[Any, Config]:
    n = next(_serials)
    dev = fleet.add(sim_spec(f"INC-{n}", users=users, records=0, templates_per_user=2, seed=n, tcp_buffered=True))
    config = make_config(db_url, [DeviceEntry(f"t{n}", dev, transport=transport)], tmp_path)
    return dev, config


# add: a new user with 0-3 fingers; delete: a user; finger+/finger-: one finger enrolled / deleted;
# reenrol: a finger replaced by a template of another size (in place: same count).
OPS = st.lists(st.tuples(st.sampled_from(["add", "delete", "finger+", "finger-", "reenrol", "rename"]),
                         st.integers(0, 10_000)), min_size=1, max_size=6)


def apply(dev: Any, ops: list[tuple[str, int]], rng: random.Random) -> None:
    for op, pick in ops:
        users = sorted(u.uid for u in dev.users())
        templates = dev.templates()
        if op == "add" or not users:
            uid = max(users, default=0) + 1 + pick % 5
            fingers = [StoredTemplate(uid, f, 1, make_template(rng, 10)) for f in range(pick % 4)]
            assert dev.save_upload([User(uid, str(5000 + uid), f"new {uid}")], fingers) is None
        elif op == "delete":
            dev.delete_user(users[pick % len(users)])
        elif op == "rename":
            u = next(u for u in dev.users() if u.uid == users[pick % len(users)])
            assert dev.upsert_user(User(u.uid, u.user_id, u.name + "x", u.privilege, u.password, u.card))
        elif op == "finger+":
            uid = users[pick % len(users)]
            free = [f for f in range(10) if (uid, f) not in templates]
            if free:
                assert dev.save_upload([], [StoredTemplate(uid, free[0], 1, make_template(rng, 10))]) is None
        elif op == "finger-" and templates:
            uid, finger = sorted(templates)[pick % len(templates)]
            dev.delete_template(uid, finger)
        elif op == "reenrol" and templates:
            key = sorted(templates)[pick % len(templates)]
            old = templates[key].data
            new = make_template(rng, 10)
            while len(new) == len(old):  # same size in place: see test_same_size_in_place_change_waits_for_full
                new = make_template(rng, 10)
            assert dev.save_upload([], [StoredTemplate(key[0], key[1], 1, new)]) is None


@pytest.mark.timeout(300)
@pytest.mark.parametrize("transport", ["tcp", "udp"])
def test_incremental_backup_equals_the_terminal_after_any_changes(
        fleet: Any, tmp_path: Path, db_url: str, repo: EnrolRepo, keyring: Keyring, transport: str) -> None:
    kinds: set[bool] = set()

    @settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(rounds=st.lists(OPS, min_size=1, max_size=3), seed=st.integers(0, 2**32 - 1))
    def check(rounds: list[list[tuple[str, int]]], seed: int) -> None:
        dev, config = new_device(fleet, tmp_path, db_url, transport, users=60)
        device = config.devices[0]
        rng = random.Random(seed)
        first = backup_device(device, repo, keyring, actor="test", timeout_s=30, incremental=True)
        assert first.ok and not first.incremental, first  # nothing to compare with yet: full
        for ops in rounds:
            apply(dev, ops, rng)
            result = backup_device(device, repo, keyring, actor="test", timeout_s=30, incremental=True)
            assert result.ok, result
            kinds.add(result.incremental)
            assert result.snapshot is not None
            assert stored(repo, keyring, result.snapshot.id) == on_terminal(dev)
            assert result.templates == len(dev.templates()) and result.users == len(dev.users())

    check()
    assert True in kinds  # the incremental path was exercised (a count or size mismatch reads in full)


@pytest.mark.timeout(120)
def test_same_size_in_place_change_waits_for_the_full_backup(
        fleet: Any, tmp_path: Path, db_url: str, repo: EnrolRepo, keyring: Keyring) -> None:
    """The documented limit: a template replaced by one of exactly its size changes no count and no size; the
    incremental backup carries the old one, the full backup (due after full_every) reads the new one."""
    dev, config = new_device(fleet, tmp_path, db_url, "tcp", users=40)
    device = config.devices[0]
    assert backup_device(device, repo, keyring, actor="t", timeout_s=30, incremental=True).ok
    (uid, finger), old = sorted(dev.templates().items())[0]
    same_size = old.data[:4] + bytes(b ^ 0xFF for b in old.data[4:])
    assert dev.save_upload([], [StoredTemplate(uid, finger, 1, same_size)]) is None
    inc = backup_device(device, repo, keyring, actor="t", timeout_s=30, incremental=True, full_every_s=3600)
    assert inc.ok and inc.incremental and inc.templates_read == 0 and inc.snapshot is not None
    assert stored(repo, keyring, inc.snapshot.id)[1][(uid, finger)] == old.data
    assert not full_backup_due(repo, device.id, 3600)
    assert full_backup_due(repo, device.id, 3600, now=utcnow() + timedelta(hours=2))
    full = backup_device(device, repo, keyring, actor="t", timeout_s=30, incremental=True, full_every_s=0)
    assert full.ok and not full.incremental and full.snapshot is not None
    assert stored(repo, keyring, full.snapshot.id) == on_terminal(dev)


@pytest.mark.timeout(120)
def test_restore_from_an_incremental_backup_is_byte_identical(
        fleet: Any, tmp_path: Path, db_url: str, repo: EnrolRepo, keyring: Keyring) -> None:
    from gateway.enrol.restore import restore

    dev, _ = new_device(fleet, tmp_path, db_url, "tcp", users=300)  # a table worth sparing
    blank = fleet.add(sim_spec("INC-BLANK", users=0, records=0, tcp_buffered=True))
    config = make_config(db_url, [DeviceEntry("old", dev), DeviceEntry("new", blank)], tmp_path)
    assert backup_device(config.device("old"), repo, keyring, actor="t", timeout_s=30, incremental=True).ok
    apply(dev, [("add", 3), ("add", 7), ("delete", 2)], random.Random(5))
    inc = backup_device(config.device("old"), repo, keyring, actor="t", timeout_s=30, incremental=True)
    assert inc.ok and inc.incremental and 0 < inc.templates_read < inc.templates
    report = restore(config.device("new"), "old", repo, keyring, actor="t", timeout_s=60)
    assert report.count("restored") == len(dev.users())
    pin = {u.uid: u.user_id for u in dev.users()}
    new_pin = {u.uid: u.user_id for u in blank.users()}
    assert {(new_pin[u], f): t.data for (u, f), t in blank.templates().items()} == \
        {(pin[u], f): t.data for (u, f), t in dev.templates().items()}


@pytest.mark.timeout(120)
def test_a_previous_backup_changed_under_the_carry_over_is_read_again_in_full(
        fleet: Any, tmp_path: Path, db_url: str, repo: EnrolRepo, keyring: Keyring,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from sqlalchemy import delete

    from gateway.store import schema as sch

    dev, config = new_device(fleet, tmp_path, db_url, "udp", users=80)
    device = config.devices[0]
    first = backup_device(device, repo, keyring, actor="t", timeout_s=30, incremental=True)
    assert first.ok and first.snapshot is not None
    source = first.snapshot.id
    apply(dev, [("add", 1)], random.Random(3))
    real_save = repo.save_snapshot
    calls: list[bool] = []

    def save_after_a_row_vanished(*args: Any, **kw: Any) -> Any:
        calls.append(kw.get("carry") is not None)
        if kw.get("carry") is not None:  # e.g. trimmed or damaged meanwhile: one carried row is gone
            with repo.engine.begin() as conn:
                t = sch.enrol_template
                uid = min(u.uid for u in repo.users(source))
                conn.execute(delete(t).where((t.c.snapshot_id == source) & (t.c.uid == uid)))
        return real_save(*args, **kw)

    monkeypatch.setattr(repo, "save_snapshot", save_after_a_row_vanished)
    result = backup_device(device, repo, keyring, actor="t", timeout_s=30, incremental=True)
    assert calls == [True, False]  # the carry was refused (nothing stored), then a full backup
    assert result.ok and not result.incremental and result.snapshot is not None
    assert stored(repo, keyring, result.snapshot.id) == on_terminal(dev)
    assert len(repo.history(device.id)) == 2

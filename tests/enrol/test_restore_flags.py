"""The valid/duress flag of a finger: read by a backup, not carried by the ZK upload (command 110 has no flag
field; the simulator, like a terminal, stores every uploaded finger as valid), and said per user by restore."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from drivers.base import Template
from gateway.enrol.backup import backup_device
from gateway.enrol.crypto import Keyring, load_key, new_key_text
from gateway.enrol.restore import flags_note, restore
from gateway.store.db import create_db_engine, upgrade
from gateway.store.enrol import EnrolRepo
from simulators.zk.templates import StoredTemplate
from tests.support.config import DeviceEntry, make_config
from tests.support.fleet import sim_spec


def test_flags_note_names_only_fingers_an_upload_cannot_reproduce() -> None:
    assert flags_note([Template(1, 0, 1, b"x"), Template(1, 1, 1, b"y")]) == ""
    note = flags_note([Template(1, 0, 1, b"x"), Template(1, 6, 3, b"y")])
    assert note.startswith("duress flag not restored") and "finger 6 (flag 3)" in note and "finger 0" not in note


@pytest.mark.timeout(120)
def test_restore_reports_a_duress_finger_restored_as_a_normal_one(tmp_path: Path, db_url: str, fleet: Any) -> None:
    old = fleet.add(sim_spec("FLAG-OLD", users=4, records=0, templates_per_user=2))
    new = fleet.add(sim_spec("FLAG-NEW", users=0, records=0))
    (uid, finger), t = sorted(old.templates().items())[0]
    assert old.save_upload([], [StoredTemplate(uid, finger, 3, t.data)]) is None  # a duress finger
    assert old.templates()[(uid, finger)].valid == 3
    key = tmp_path / "enrol.key"
    key.write_text(new_key_text())
    key.chmod(0o600)
    keyring = Keyring(load_key(key))
    config = make_config(db_url, [DeviceEntry("old", old), DeviceEntry("new", new)], tmp_path)
    engine = create_db_engine(db_url, pool_size=2)
    try:
        upgrade(engine)
        repo = EnrolRepo(engine)
        result = backup_device(config.device("old"), repo, keyring, actor="t", timeout_s=30)
        assert result.ok and result.snapshot is not None
        assert {(r.uid, r.finger): r.valid for r in repo.templates(result.snapshot.id)}[(uid, finger)] == 3
        pin = next(u.user_id for u in old.users() if u.uid == uid)
        dry = restore(config.device("new"), "old", repo, keyring, actor="t", timeout_s=30, dry_run=True)
        report = restore(config.device("new"), "old", repo, keyring, actor="t", timeout_s=30)
    finally:
        engine.dispose()
    for rep in (dry, report):
        flagged = {o.user_id: o.reason for o in rep.outcomes if "duress flag not restored" in o.reason}
        assert list(flagged) == [pin] and f"finger {finger} (flag 3)" in flagged[pin]
    assert report.count("restored") == 4  # the finger itself is there, byte-identical, as a normal finger
    new_uid = next(u.uid for u in new.users() if u.user_id == pin)
    stored = new.templates()[(new_uid, finger)]
    assert stored.data == t.data and stored.valid == 1

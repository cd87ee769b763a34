"""The office sync end to end, through `fpgw enrol sync`, against simulated terminals, on SQLite and PostgreSQL.

Three terminals with users enrolled on different ones are made to agree (users and byte-identical templates read
back); a PIN held as two persons is reported and left alone; a delete is propagated only with sync_deletes; a
terminal of another algorithm gets users without templates, reported; nothing logged or printed carries
template bytes; every write is audited. The config refuses groups it cannot keep in step.
"""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import select

from gateway.config import load_config
from gateway.configlib import ConfigError
from gateway.store import schema as s
from gateway.store.db import create_db_engine
from simulators.zk.protocol import User
from simulators.zk.templates import StoredTemplate, make_template
from tests.support.cli import run_cli
from tests.support.config import DeviceEntry, config_dict, write_toml
from tests.support.fleet import sim_spec

pytestmark = pytest.mark.usefixtures("restore_logging")


def enrol(dev: Any, uid: int, pin: str, name: str, fingers: int, rng: random.Random, version: int = 10) -> None:
    """Enrol one person at the terminal (as its menu would)."""
    templates = [StoredTemplate(uid, f, 1, make_template(rng, version)) for f in range(fingers)]
    assert dev.save_upload([User(uid, pin, name)], templates) is None


def state(dev: Any) -> tuple[dict[str, str], dict[tuple[str, int], bytes]]:
    """PIN -> name, and (PIN, finger) -> template, as the terminal holds them (uids differ between units)."""
    pin_of = {u.uid: u.user_id for u in dev.users()}
    return ({u.user_id: u.name for u in dev.users()},
            {(pin_of[uid], finger): t.data for (uid, finger), t in dev.templates().items()})


class Office:
    def __init__(self, tmp_path: Path, db_url: str, capsys: pytest.CaptureFixture[str]) -> None:
        self.tmp_path, self.db_url, self.capsys = tmp_path, db_url, capsys
        self.entries: list[DeviceEntry] = []
        self.enrol: dict[str, Any] = {"daily": False, "sync": True}

    def write(self) -> Path:
        return write_toml(config_dict(self.db_url, self.entries, enrol=self.enrol), self.tmp_path / "config.toml")

    def cli(self, *argv: str) -> tuple[int, str, str]:
        return run_cli(self.capsys, "--config", str(self.write()), *argv)

    def audit(self) -> list[Any]:
        engine = create_db_engine(self.db_url, pool_size=1)
        try:
            with engine.connect() as conn:
                return list(conn.execute(select(s.enrol_audit)).mappings())
        finally:
            engine.dispose()


@pytest.fixture
def office(tmp_path: Path, db_url: str, capsys: pytest.CaptureFixture[str]) -> Office:
    return Office(tmp_path, db_url, capsys)


def assert_no_template_bytes(text: bytes, templates: dict[Any, bytes]) -> None:
    for data in templates.values():
        for start in (8, len(data) // 2, len(data) - 24):
            piece = data[start:start + 24]
            assert piece not in text and piece.hex() not in text.decode("latin-1")


@pytest.mark.timeout(180)
def test_three_terminals_agree_conflicts_stay_and_deletes_follow_only_when_enabled(
        office: Office, fleet: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    rng = random.Random(12)
    sims = {name: fleet.add(sim_spec(f"SYNC-{name.upper()}", users=0, records=0)) for name in ("a", "b", "c")}
    office.entries = [DeviceEntry(name, dev) for name, dev in sims.items()]
    a, b, c = sims["a"], sims["b"], sims["c"]
    enrol(a, 1, "101", "Ani", 2, rng)
    enrol(a, 2, "102", "Budi", 2, rng)
    enrol(b, 1, "201", "Citra", 2, rng)  # uid 1 on b too: uids are the terminal's own
    enrol(c, 5, "301", "Dewi", 1, rng)
    enrol(c, 6, "302", "Eko", 0, rng)  # card/password only
    enrol(a, 9, "900", "Fajar", 1, rng)
    enrol(b, 9, "900", "Gita", 1, rng)  # same PIN, another person: a conflict
    originals = {k: v for dev in sims.values() for k, v in state(dev)[1].items()}

    code, out, err = office.cli("enrol", "sync", "--dry-run")
    assert code == 0, (out, err)
    assert "DRY RUN" in out and "CONFLICT PIN 900 (a, b)" in out and "different names" in out
    assert [a.user_count, b.user_count, c.user_count] == [3, 2, 2]

    code, out, err = office.cli("enrol", "sync")
    assert code == 0, (out, err)
    views = {name: state(dev) for name, dev in sims.items()}
    agreed = {pin: name for pin, name in views["a"][0].items() if pin != "900"}
    assert agreed == {"101": "Ani", "102": "Budi", "201": "Citra", "301": "Dewi", "302": "Eko"}
    for name in ("b", "c"):
        assert {p: n for p, n in views[name][0].items() if p != "900"} == agreed
    # Byte-identical templates everywhere, as they were enrolled.
    for name in sims:
        held = {k: v for k, v in views[name][1].items() if k[0] != "900"}
        assert held == {k: v for k, v in originals.items() if k[0] != "900"}
    # The conflict is left as it was, reported, and listed by status.
    assert views["a"][0]["900"] == "Fajar" and views["b"][0]["900"] == "Gita" and "900" not in views["c"][0]
    assert "CONFLICT PIN 900" in out
    assert all(dev.enabled for dev in sims.values())
    code, out2, err2 = office.cli("enrol", "status")
    assert code == 0 and "900@a,b" in out2, (out2, err2)
    code, listed, _ = office.cli("enrol", "status", "--json")
    by_device = {r["device"]: r["sync_conflicts"] for r in json.loads(listed)}
    assert by_device["a"] == by_device["b"] == [{"pin": "900", "reason": "different names: a='Fajar', b='Gita'"}]
    assert by_device["c"] == []
    # Every write audited: who, which terminal, how many.
    sync_rows = {r["device_id"]: r for r in office.audit() if r["action"] == "sync"}
    assert sync_rows["a"]["users"] == 3 and sync_rows["a"]["templates"] == 3  # 201 (2) + 301 (1) + 302
    assert sync_rows["c"]["users"] == 3 and sync_rows["c"]["templates"] == 6
    assert all(r["ok"] and r["actor"].startswith("cli:") for r in sync_rows.values())
    # A second sync has nothing to do.
    code, out, err = office.cli("enrol", "sync")
    assert code == 0 and "0 action(s), 1 conflict(s)" in out, (out, err)

    # A delete on a is not propagated by default, and the user is not copied back to a.
    [uid_102] = [u.uid for u in a.users() if u.user_id == "102"]
    a.delete_user(uid_102)
    code, out, err = office.cli("enrol", "sync")
    assert code == 0 and "PIN 102 was deleted on a" in out, (out, err)
    assert "102" not in state(a)[0] and "102" in state(b)[0] and "102" in state(c)[0]
    # With sync_deletes it follows to the other terminals.
    office.enrol["sync_deletes"] = True
    code, out, err = office.cli("enrol", "sync")
    assert code == 0, (out, err)
    assert all("102" not in state(dev)[0] for dev in sims.values())
    assert all(("102", f) not in state(dev)[1] for dev in sims.values() for f in range(10))
    assert "101" in state(b)[0] and "900" in state(b)[0]
    delete_rows = [r for r in office.audit() if r["action"] == "sync" and "1 deleted" in r["detail"]]
    assert sorted(r["device_id"] for r in delete_rows) == ["b", "c"]

    logs = "\n".join(r.getMessage() + " " + str(r.__dict__) for r in caplog.records)
    assert_no_template_bytes((logs + out + err + out2).encode("utf-8", "replace"), originals)
    assert sum(1 for r in caplog.records if "sync conflict" in r.getMessage()) == 1  # once, not at every run


@pytest.mark.timeout(120)
def test_another_algorithm_gets_the_users_without_templates_and_says_so(office: Office, fleet: Any) -> None:
    rng = random.Random(5)
    ten = fleet.add(sim_spec("SYNC-V10", users=0, records=0))
    nine = fleet.add(sim_spec("SYNC-V9", users=0, records=0, fp_version=9))
    office.entries = [DeviceEntry("ten", ten), DeviceEntry("nine", nine)]
    enrol(ten, 1, "501", "Hadi", 2, rng)
    enrol(ten, 2, "502", "Indah", 1, rng)
    code, out, err = office.cli("enrol", "sync")
    assert code == 0, (out, err)
    assert "2 user(s) copied to nine without templates" in out and "copy user only" in out
    assert state(nine)[0] == {"501": "Hadi", "502": "Indah"} and nine.templates() == {}
    code, out, err = office.cli("enrol", "sync")
    assert code == 0 and "0 action(s)" in out and "2 user(s) have no template on nine (PIN 501, 502)" in out


def test_groups_the_sync_cannot_keep_are_refused_with_where(tmp_path: Path) -> None:
    entries = [DeviceEntry(name, SimpleNamespace(host="127.0.0.1", port=4370 + i))
               for i, name in enumerate(("lobby", "annex", "gate"))]
    doc = config_dict("sqlite:///x.db", entries, enrol={"sync": True, "sync_groups": [
        ["lobby", "annex"], ["annex", "gate"], ["lobby", "nowhere"]]})
    # A serial clock holds no enrolments; a push terminal (driver "push") may be in a group since 0014_enrol_push.
    doc["devices"].append({"id": "face", "driver": "serial", "port": "/dev/ttyUSB0", "line_format": "giga_tms"})
    doc["devices"].append({"id": "hall", "driver": "push", "serial": "CKJ1"})
    doc["enrol"]["sync_groups"].append(["gate", "face"])
    doc["enrol"]["sync_groups"].append(["hall", "lobby"])
    path = write_toml(doc, tmp_path / "config.toml")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    text = str(err.value)
    assert "unknown device id 'nowhere'" in text
    assert "device 'annex' is in group 1 and group 2" in text
    assert "device 'face' uses driver 'serial'" in text and "no enrolments" in text
    assert "'hall'" not in text
    doc["enrol"]["sync_groups"] = [["lobby", "annex"], ["gate"]]
    with pytest.raises(ConfigError, match="at least two"):
        load_config(write_toml(doc, tmp_path / "config.toml"))
    doc["enrol"]["sync_groups"] = [["lobby", "annex"]]
    cfg = load_config(write_toml(doc, tmp_path / "config.toml"))
    assert cfg.enrol.sync and cfg.enrol.sync_groups == (("lobby", "annex"),) and not cfg.enrol.sync_deletes


@pytest.mark.timeout(120)
def test_a_group_with_an_unreadable_terminal_is_not_synced_and_groups_are_separate(office: Office, fleet: Any) -> None:
    rng = random.Random(8)
    sims = {name: fleet.add(sim_spec(f"SYNC-G{name.upper()}", users=0, records=0)) for name in ("p", "q", "x", "y")}
    office.entries = [DeviceEntry(name, dev) for name, dev in sims.items()]
    office.enrol["sync_groups"] = [["p", "q"], ["x", "y"]]
    enrol(sims["p"], 1, "701", "Joko", 1, rng)
    enrol(sims["x"], 1, "801", "Kartika", 1, rng)
    sims["q"].set_fault("offline", True)
    code, out, err = office.cli("enrol", "sync")
    assert code == 1 and "NOT SYNCED: q could not be read" in out, (out, err)
    # The other group is synced, and only within itself.
    assert state(sims["y"])[0] == {"801": "Kartika"} and "701" not in state(sims["y"])[0]
    assert state(sims["p"])[0] == {"701": "Joko"}
    sims["q"].set_fault("offline", False)
    code, out, err = office.cli("enrol", "sync", "--group", "q")
    assert code == 0 and "group p, q: 1 action(s)" in out and "group x, y" not in out, (out, err)
    assert state(sims["q"]) == state(sims["p"])
    code, out, err = office.cli("enrol", "sync", "--group", "nowhere")
    assert code == 1 and "unknown device id 'nowhere'" in err

"""Enrolment backup and restore end to end, through `fpgw enrol`, against the simulator, on SQLite and PostgreSQL.

An office of three terminals (300 users, 2 fingers each) is backed up; one is reset to factory settings and
restored from its own backup; one dies and a blank replacement is restored from the dead unit's backup; a
replacement of another fingerprint algorithm gets the users but no templates, with the reason. Nothing stored,
logged or printed contains template bytes; a wrong or missing key stops before anything is read or written.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from gateway.store import schema as s
from gateway.store.db import create_db_engine
from gateway.store.enrol import EnrolRepo
from tests.support.cli import run_cli
from tests.support.config import DeviceEntry, config_dict, write_toml
from tests.support.fleet import sim_spec

pytestmark = pytest.mark.usefixtures("restore_logging")


def sim_state(dev: Any) -> tuple[dict[str, tuple[str, int, int, str]], dict[tuple[str, int], bytes]]:
    """What a terminal holds, keyed by PIN (uids may differ between units): users and templates."""
    users = {u.user_id: (u.name, u.privilege, u.card, u.password) for u in dev.users()}
    pin_of = {u.uid: u.user_id for u in dev.users()}
    return users, {(pin_of[uid], finger): t.data for (uid, finger), t in dev.templates().items()}


class Office:
    """Config file, key file and the `fpgw` runner of one test."""

    def __init__(self, tmp_path: Path, db_url: str, capsys: pytest.CaptureFixture[str]) -> None:
        self.tmp_path, self.db_url, self.capsys = tmp_path, db_url, capsys
        self.entries: list[DeviceEntry] = []
        self.key = tmp_path / "enrol.key"
        self.enrol: dict[str, Any] = {"key_file": str(self.key), "daily": False}

    def write(self) -> Path:
        return write_toml(config_dict(self.db_url, self.entries, enrol=self.enrol), self.tmp_path / "config.toml")

    def cli(self, *argv: str) -> tuple[int, str, str]:
        return run_cli(self.capsys, "--config", str(self.write()), *argv)

    def rows(self, table: Any) -> list[Any]:
        engine = create_db_engine(self.db_url, pool_size=1)
        try:
            with engine.connect() as conn:
                return list(conn.execute(select(table)).mappings())
        finally:
            engine.dispose()


@pytest.fixture
def office(tmp_path: Path, db_url: str, capsys: pytest.CaptureFixture[str]) -> Office:
    o = Office(tmp_path, db_url, capsys)
    code, out, err = o.cli("enrol", "new-key", "--output", str(o.key))
    assert code == 0 and o.key.stat().st_mode & 0o077 == 0, (out, err)
    return o


def assert_no_template_bytes(haystacks: list[bytes], templates: dict[Any, bytes]) -> None:
    # Any 24-byte piece of a template (past its common header) would betray it.
    for data in templates.values():
        for start in (8, len(data) // 2, len(data) - 24):
            piece = data[start:start + 24]
            for hay in haystacks:
                assert piece not in hay and piece.hex() not in hay.decode("latin-1")


@pytest.mark.timeout(240)
def test_office_backup_factory_reset_and_dead_terminal_restored_byte_identical(
        office: Office, fleet: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    sims = {name: fleet.add(sim_spec(f"ENR-{name.upper()}", users=300, records=50, seed=i + 3, templates_per_user=2))
            for i, name in enumerate(("a", "b", "c"))}
    office.entries = [DeviceEntry(name, dev) for name, dev in sims.items()]
    before = {name: sim_state(dev) for name, dev in sims.items()}
    assert all(len(t) == 600 for _, t in before.values())

    code, out, err = office.cli("enrol", "backup")
    assert code == 0, (out, err)
    for name in sims:
        assert f"{name}: ok" in out and "users=300 templates=600 algorithm=10" in out
    assert all(dev.enabled for dev in sims.values())

    # Factory reset of b, then restore b from its own backup.
    sims["b"].factory_reset()
    code, out, err = office.cli("enrol", "restore", "b", "--from", "b")
    assert code == 0, (out, err)
    assert "300 restored" in out
    assert sim_state(sims["b"]) == before["b"]

    # a dies; a blank replacement unit (another serial) is configured as a2 and restored from a's backup.
    sims["a"].set_fault("offline", True)
    new_unit = fleet.add(sim_spec("ENR-A2", users=0, records=0, seed=99))
    office.entries.append(DeviceEntry("a2", new_unit))
    code, out, err = office.cli("enrol", "restore", "a2", "--from", "a", "--dry-run")
    assert code == 0 and "DRY RUN" in out and "300 would restore" in out, (out, err)
    assert new_unit.user_count == 0
    code, out, err = office.cli("enrol", "restore", "a2", "--from", "a")
    assert code == 0, (out, err)
    assert sim_state(new_unit) == before["a"] and new_unit.enabled

    # The dead terminal's next backup fails; its good backup stays and status says both.
    code, out, err = office.cli("enrol", "backup", "a")
    assert code == 1 and "a: FAILED unreachable" in out
    code, out, err = office.cli("enrol", "status")
    [line] = [ln for ln in out.splitlines() if ln.startswith("a ")]
    assert " 300 " in line and "LAST ATTEMPT FAILED" in line and "unreachable" in line

    # Nothing in the database, the logs or the output carries template bytes.
    stored = [bytes(r["blob"]) for r in office.rows(s.enrol_template)]
    stored += [bytes(r["secret"]) for r in office.rows(s.enrol_user) if r["secret"] is not None]
    assert len(office.rows(s.enrol_template)) == 1800
    logs = "\n".join(r.getMessage() + " " + str(r.__dict__) for r in caplog.records).encode("utf-8", "replace")
    for name in sims:
        assert_no_template_bytes([*stored, logs, (out + err).encode()], before[name][1])
    key_text = office.key.read_text().strip()
    assert key_text not in logs.decode() and key_text not in out + err

    audit = office.rows(s.enrol_audit)
    assert sorted({(r["action"], r["device_id"]) for r in audit if r["ok"]}) == [
        ("backup", "a"), ("backup", "b"), ("backup", "c"), ("read", "a"), ("restore", "a2"), ("restore", "b")]
    assert [(r["action"], r["device_id"]) for r in audit if not r["ok"]] == [("backup", "a")]
    assert all(r["actor"].startswith("cli:") for r in audit)


@pytest.mark.timeout(180)
def test_restore_to_an_incompatible_algorithm_writes_users_and_refuses_templates(office: Office, fleet: Any) -> None:
    old = fleet.add(sim_spec("ENR-V10", users=40, records=0, templates_per_user=2))
    nine = fleet.add(sim_spec("ENR-V9", users=0, records=0, fp_version=9))
    office.entries = [DeviceEntry("old", old), DeviceEntry("nine", nine)]
    assert office.cli("enrol", "backup", "old")[0] == 0
    pins = ",".join(u.user_id for u in old.users()[:2])
    code, out, err = office.cli("enrol", "restore", "nine", "--from", "old", "--users", pins)
    assert code == 0, (out, err)
    assert "TEMPLATES NOT WRITTEN: old used fingerprint algorithm 10 and nine uses 9" in out
    assert "2 user only" in out
    assert nine.user_count == 2 and nine.templates() == {}
    assert {u.user_id for u in nine.users()} == {u.user_id for u in old.users()[:2]}
    # `fpgw devices` shows when each terminal was last backed up.
    code, out, err = office.cli("devices", "--json")
    listed = {r["device_id"]: r for r in json.loads(out)}
    assert listed["old"]["last_enrol_backup_at"] is not None and listed["nine"]["last_enrol_backup_at"] is None
    code, out, err = office.cli("devices")
    assert out.splitlines()[0].split()[-2:] == ["LAST", "BACKUP"]


@pytest.mark.timeout(180)
def test_wrong_or_missing_key_stops_before_anything_is_read_or_written(office: Office, fleet: Any,
                                                                       tmp_path: Path) -> None:
    dev = fleet.add(sim_spec("ENR-K", users=20, records=0, templates_per_user=1))
    blank = fleet.add(sim_spec("ENR-K2", users=0, records=0))
    office.entries = [DeviceEntry("k", dev), DeviceEntry("k2", blank)]
    code, out, err = office.cli("enrol", "status")  # listings never migrate: a clear word, no traceback
    assert code == 1 and "fpgw db upgrade" in err
    assert office.cli("enrol", "backup", "k")[0] == 0
    requests = dev.requests_received

    office.enrol["key_file"] = str(tmp_path / "nowhere.key")
    code, out, err = office.cli("enrol", "backup", "k")
    assert code == 1 and "nowhere.key does not exist" in err and "new-key" in err
    assert dev.requests_received == requests and len(office.rows(s.enrol_snapshot)) == 1

    other = tmp_path / "other.key"
    assert office.cli("enrol", "new-key", "-o", str(other))[0] == 0
    office.enrol["key_file"] = str(other)
    code, out, err = office.cli("enrol", "restore", "k2", "--from", "k")
    assert code == 1 and "cannot be opened with the configured key" in err, (out, err)
    assert blank.user_count == 0 and blank.requests_received == 0

    # The stored rows are unreadable without the key: no template of the terminal appears in them.
    templates = {k: t.data for k, t in dev.templates().items()}
    assert_no_template_bytes([bytes(r["blob"]) for r in office.rows(s.enrol_template)], templates)


@pytest.mark.timeout(180)
def test_rotate_key_reseals_everything_and_status_reports_a_drop(office: Office, fleet: Any, tmp_path: Path) -> None:
    dev = fleet.add(sim_spec("ENR-ROT", users=30, records=0, templates_per_user=2))
    blank = fleet.add(sim_spec("ENR-ROT2", users=0, records=0))
    office.entries = [DeviceEntry("r", dev), DeviceEntry("r2", blank)]
    assert office.cli("enrol", "backup", "r")[0] == 0
    new_key = tmp_path / "new.key"
    assert office.cli("enrol", "new-key", "-o", str(new_key))[0] == 0
    office.enrol.update(key_file=str(new_key), old_key_files=[str(office.key)])
    code, out, err = office.cli("enrol", "rotate-key")
    sealed = 60 + sum(1 for u in dev.users() if u.password)  # every template and every password
    assert code == 0 and f"re-encrypted {sealed} value(s)" in out, (out, err)
    # Only the new key is needed from now on.
    office.enrol.pop("old_key_files")
    code, out, err = office.cli("enrol", "restore", "r2", "--from", "r")
    assert code == 0 and "30 restored" in out, (out, err)
    assert sim_state(blank) == sim_state(dev)

    # A reset terminal backed up again: status flags the drop, restore refuses the near-empty backup by default.
    dev.factory_reset()
    code, out, err = office.cli("enrol", "backup", "r")
    assert code == 0 and "NOTICE: 0 users now, 30 at the previous backup" in out
    code, out, err = office.cli("enrol", "status")
    assert "USER COUNT DROPPED 30 -> 0" in out
    engine = create_db_engine(office.db_url, pool_size=1)
    try:  # what the status page shows (a window query: both databases)
        overview = EnrolRepo(engine).overview(0.2)
    finally:
        engine.dispose()
    assert overview["r"]["user_drop"] == [30, 0] and overview["r"]["users"] == 0
    code, out, err = office.cli("enrol", "restore", "r", "--from", "r")
    assert code == 1 and "--snapshot" in err and dev.user_count == 0
    first = min(r["id"] for r in office.rows(s.enrol_snapshot) if r["device_id"] == "r")
    code, out, err = office.cli("enrol", "restore", "r", "--from", "r", "--snapshot", str(first))
    assert code == 0 and dev.user_count == 30, (out, err)


@pytest.mark.timeout(180)
def test_a_full_replacement_keeps_the_users_reports_the_lost_fingers_and_fails(office: Office, fleet: Any) -> None:
    old = fleet.add(sim_spec("ENR-FULL", users=30, records=0, templates_per_user=2))
    small = fleet.add(sim_spec("ENR-SMALL", users=0, records=0, templates_cap=20))
    office.entries = [DeviceEntry("old", old), DeviceEntry("small", small)]
    assert office.cli("enrol", "backup", "old")[0] == 0
    code, out, err = office.cli("enrol", "restore", "small", "--from", "old")
    assert code == 1, (out, err)
    assert "30 user only" in out and "template capacity" not in out  # the terminal only said "refused"
    assert "not stored identically" in out and small.user_count == 30 and small.enabled
    [row] = [r for r in office.rows(s.enrol_audit) if r["action"] == "restore"]
    assert row["device_id"] == "small" and row["users"] == 30 and row["templates"] == 0

"""Push terminals' enrolments end to end on SQLite and PostgreSQL: the simulated terminal uploads its users and
templates (OPERLOG USER/FP, or BIODATA) to the real receiver; they are kept sealed; a backup is a snapshot of them;
the terminal dies and its backup is restored through the command queue to another push terminal and to a ZK
terminal, byte-identical and verified by the terminal's own re-upload; another algorithm gets users only.
Malformed upload lines are quarantined without their template or password values; the parser is fuzzed."""

from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from gateway.config import Config, parse_config
from gateway.enrol.backup import backup_device
from gateway.enrol.crypto import Keyring, new_key_text
from gateway.enrol.push import enrol_driver_factory
from gateway.enrol.restore import restore
from gateway.push.enrolment import card_number, parse_enrolment_lines, redacted_line
from gateway.push.receiver import PushReceiver
from gateway.store import schema as s
from gateway.store.db import create_db_engine, upgrade
from gateway.store.enrol import EnrolRepo
from gateway.store.punches import Store
from gateway.store.push import PushRepo
from gateway.store.pushenrol import PushEnrolRepo
from gateway.web.server import ThreadedServer
from simulators.push.terminal import PushSpec, PushTerminal
from tests.enrol.test_enrol_e2e import assert_no_template_bytes
from tests.support.cli import run_cli
from tests.support.config import OFFICE_CODE, write_toml
from tests.support.fleet import sim_spec

pytestmark = pytest.mark.timeout(240)


@dataclass
class PushOffice:
    config: Config
    engine: Any
    receiver: PushReceiver
    url: str
    keyring: Keyring
    terminals: list[PushTerminal]
    #: The config document (for `fpgw` run in this process against the same database).
    doc: dict[str, Any]
    #: The simulated ZK terminal z1 (blank), a restore target.
    zk: Any = None

    def terminal(self, serial: str, **kw: Any) -> PushTerminal:
        term = PushTerminal(PushSpec(serial=serial, server=self.url, max_wait_s=0.1, timeout_s=5, **kw))
        term.start()
        self.terminals.append(term)
        return term

    def rows(self, table: Any) -> list[Any]:
        with self.engine.connect() as conn:
            return list(conn.execute(select(table)).mappings())


def push_devices(zk_port: int) -> list[dict[str, Any]]:
    return [{"id": "p1", "driver": "push", "serial": "PE1"}, {"id": "p2", "driver": "push", "serial": "PE2"},
            {"id": "p9", "driver": "push", "serial": "PE9"},
            {"id": "z1", "driver": "zk", "address": "127.0.0.1", "port": zk_port, "timeout_s": 3}]


@pytest.fixture
def office(db_url: str, tmp_path: Path, fleet: Any) -> Iterator[PushOffice]:
    key = tmp_path / "enrol.key"
    key.write_text(new_key_text() + "\n")
    key.chmod(0o600)
    zk = fleet.add(sim_spec("PE-ZK", users=0, records=0))
    doc = {
        "site": {"office_code": OFFICE_CODE, "timezone": "Asia/Jakarta", "state_dir": str(tmp_path)},
        "database": {"url": db_url},
        "http": {"enabled": False},
        "push": {"port": 0, "delay_s": 2, "error_delay_s": 10, "rate_per_device": 1000},
        "enrol": {"key_file": str(key), "daily": False, "timeout_s": 60},
        "devices": push_devices(zk.port),
    }
    config = parse_config(doc, base_dir=tmp_path)
    engine = create_db_engine(db_url, pool_size=4)
    upgrade(engine)
    store = Store(engine, OFFICE_CODE)
    store.sync_devices(config.devices)
    receiver = PushReceiver(config, store, PushRepo(engine), [])
    terminals: list[PushTerminal] = []
    try:
        with ThreadedServer(receiver.app(), date_header=False) as server:
            o = PushOffice(config, engine, receiver, server.url, Keyring.from_config(config.enrol), terminals, doc)
            o.zk = zk
            yield o
            for term in terminals:
                term.stop()
    finally:
        for term in terminals:
            term.stop()
        engine.dispose()


def wait_for(check: Any, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def mirror_counts(o: PushOffice, serial: str) -> tuple[int, int]:
    rows = PushEnrolRepo(o.engine).rows(serial)
    return sum(1 for r in rows if r.finger < 0), sum(1 for r in rows if r.finger >= 0)


def test_push_uploads_backed_up_and_restored_to_push_and_zk_terminals(
        office: PushOffice, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    o = office
    old = o.terminal("PE1", users=30, templates_per_user=2, biodata=True)
    wait_for(lambda: mirror_counts(o, "PE1") == (30, 60))
    before = old.enrolments()
    repo = EnrolRepo(o.engine)
    factory = enrol_driver_factory(o.config, o.engine)
    result = backup_device(o.config.device("p1"), repo, o.keyring, actor="test", timeout_s=60,
                           driver_factory=factory)
    assert result.ok, result.error
    assert (result.serial, result.users, result.templates, result.algorithm) == ("PE1", 30, 60, 10)

    old.stop()  # the terminal dies; its backup is in the database
    new = o.terminal("PE2", users=0)
    report = restore(o.config.device("p2"), "p1", repo, o.keyring, actor="test", timeout_s=60,
                     driver_factory=factory)
    assert report.count("restored") == 30 and not report.templates_refused, report.outcomes[:3]
    assert new.enrolments() == before

    # The same backup onto a ZK terminal (same algorithm 10): the ZK driver writes and reads back.
    zk = o.zk
    report = restore(o.config.device("z1"), "p1", repo, o.keyring, actor="test", timeout_s=60,
                     driver_factory=factory)
    assert report.count("restored") == 30
    pin_of = {u.uid: u.user_id for u in zk.users()}
    assert {(pin_of[uid], f): t.data for (uid, f), t in zk.templates().items()} == before[1]

    # A push terminal of another algorithm gets the users, no template, and says why.
    nine = o.terminal("PE9", users=0, fp_version=9)
    wait_for(lambda: o.receiver.enrol.algorithm("PE9") == 9)
    report = restore(o.config.device("p9"), "p1", repo, o.keyring, actor="test", timeout_s=60,
                     driver_factory=factory)
    assert "algorithm 10" in report.templates_refused and report.count("user only") == 30
    assert len(nine.enrolments()[0]) == 30 and nine.enrolments()[1] == {}

    # Nothing stored, queued or logged carries a template or the key.
    stored = [bytes(r["blob"]) for r in o.rows(s.enrol_template)] + \
        [bytes(r["blob"]) for r in o.rows(s.enrol_push) if r["blob"] is not None]
    stored += [r["value"].encode() for r in o.rows(s.kv)] + [r["raw"].encode() for r in o.rows(s.quarantine)]
    status = httpx.get(f"{o.url}/iclock/ping", params={"SN": "PE2"}).text.encode()
    logs = "\n".join(r.getMessage() + " " + str(r.__dict__) for r in caplog.records).encode("utf-8", "replace")
    assert_no_template_bytes([*stored, logs, status], before[1])
    b64 = [base64.b64encode(d)[16:48] for d in before[1].values()]
    assert not any(piece in hay for piece in b64 for hay in [*stored, logs])
    key_text = Path(str(o.config.enrol.key_file)).read_text().strip()
    assert key_text.encode() not in logs


def test_a_fresh_read_drops_what_the_terminal_no_longer_holds_and_sync_agrees(office: PushOffice) -> None:
    from gateway.enrol.sync import sync_group

    o = office
    a = o.terminal("PE1", users=6, templates_per_user=1)
    b = o.terminal("PE2", users=0)
    wait_for(lambda: mirror_counts(o, "PE1") == (6, 6))
    a.enrol("77", "Late Joiner", fingers=2)
    wait_for(lambda: mirror_counts(o, "PE1") == (7, 8))
    with a._lock:  # a user deleted at the keypad: the terminal uploads nothing about it
        a.users.pop("1")
        a.fingers.pop(("1", 0))
    factory = enrol_driver_factory(o.config, o.engine)
    group = [o.config.device("p1"), o.config.device("p2")]
    result = sync_group(group, EnrolRepo(o.engine), actor="test", timeout_s=60, sync_deletes=False,
                        driver_factory=factory)
    assert result.ok, (result.unreadable, result.writes)
    assert mirror_counts(o, "PE1") == (6, 7)
    assert b.enrolments() == a.enrolments()


def test_malformed_enrolment_lines_are_quarantined_without_secrets(office: PushOffice) -> None:
    o = office
    good = base64.b64encode(bytes.fromhex("a1ca2c82") + bytes(500)).decode()
    body = ("OPLOG 4\t0\t2026-11-30 08:00:00\t0\t0\t0\t0\n"
            "USER PIN=1\tName=Ani\tPri=0\tPasswd=4321\tCard=[15CD5B07]\tGrp=1\n"
            f"FP PIN=1\tFID=6\tSize=504\tValid=1\tTMP={good}\n"
            "FP PIN=1\tFID=7\tSize=1184\tValid=1\tTMP=SECRETSECRETSECRETAA\n"
            "USER PIN=\tName=Nobody\tPasswd=9999\n"
            "BIODATA Pin=1\tNo=0\tIndex=0\tValid=1\tDuress=0\tType=9\tMajorVer=5\tTmp=QUJD\n")
    r = httpx.post(f"{o.url}/iclock/cdata", params={"SN": "PE1", "table": "OPERLOG", "Stamp": "9999"},
                   content=body.encode())
    assert (r.status_code, r.text) == (200, "OK: 6")
    assert mirror_counts(o, "PE1") == (1, 1)
    enrol = o.receiver.enrol
    [user] = [row for row in enrol.rows("PE1") if row.finger < 0]
    assert (user.name, user.card) == ("Ani", 123456789) and user.blob is not None and b"4321" not in user.blob
    quarantined = o.rows(s.quarantine)
    assert sorted(q["reason"] for q in quarantined) == ["FP line: Size 1184 but the template has 15 bytes",
                                                        "USER line: no usable PIN"]
    raw = " ".join(q["raw"] for q in quarantined)
    assert "SECRETSECRET" not in raw and "9999" not in raw and "withheld" in raw
    kept = PushRepo(o.engine).operlog_uploads("PE1")
    assert kept == ["OPLOG 4\t0\t2026-11-30 08:00:00\t0\t0\t0\t0"]
    assert good not in " ".join(r["value"] for r in o.rows(s.kv))


@pytest.mark.usefixtures("restore_logging")
def test_fpgw_enrol_backs_up_a_push_terminal_and_lists_its_commands_sealed(
        office: PushOffice, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    o = office
    o.terminal("PE1", users=8, templates_per_user=1)
    wait_for(lambda: mirror_counts(o, "PE1") == (8, 8))
    path = str(write_toml(o.doc, tmp_path / "config.toml"))
    code, out, err = run_cli(capsys, "--config", path, "enrol", "backup", "p1")
    assert code == 0 and "p1: ok serial=PE1 users=8 templates=8 algorithm=10" in out, (out, err)
    code, out, err = run_cli(capsys, "--config", path, "enrol", "status")
    [line] = [ln for ln in out.splitlines() if ln.startswith("p1 ")]
    assert " 8 " in line, out
    # A restore queues sealed commands: listings show what they do, never the template or password.
    o.terminal("PE2", users=0)
    code, out, err = run_cli(capsys, "--config", path, "enrol", "restore", "p2", "--from", "p1")
    assert code == 0 and "8 restored" in out, (out, err)
    code, out, err = run_cli(capsys, "--config", path, "devices", "commands", "p2", "--json")
    listed = json.loads(out)
    kinds = {c["kind"] for c in listed}
    assert {"enrol-query", "enrol-write"} <= kinds and all(c["state"] == "done" for c in listed)
    texts = [c["text"] for c in listed if c["kind"] == "enrol-write"]
    assert texts and all(t.endswith("(sealed)") and "TMP=" not in t and "ENC1" not in t for t in texts)


def test_the_daily_backup_stores_what_push_terminals_uploaded_without_waiting_for_them(office: PushOffice) -> None:
    from gateway.enrol.daily import DailyBackup
    from gateway.polling.scheduler import build_scheduler
    from gateway.services import AppContext

    o = office
    o.terminal("PE1", users=5, templates_per_user=2)
    wait_for(lambda: mirror_counts(o, "PE1") == (5, 10))
    ctx = AppContext(config=o.config, store=None, health_repo=None,  # type: ignore[arg-type]
                     scheduler=build_scheduler(o.config), outbox=None, central_store=None)  # type: ignore[arg-type]
    results = DailyBackup(ctx, EnrolRepo(o.engine), lambda device_id, job: job()).run()
    by_id = {r.device_id: (r.ok, r.users, r.templates) for r in results}
    # p2 and p9 never called (nothing uploaded): an empty backup, not a wait; z1 is the blank ZK terminal.
    assert by_id == {"p1": (True, 5, 10), "p2": (True, 0, 0), "p9": (True, 0, 0), "z1": (True, 0, 0)}
    assert [c for c in PushRepo(o.engine).commands() if c.kind.startswith("enrol")] == []


# -- the parser, fuzzed ----------------------------------------------------------------------------------------

PARSER_FUZZ = settings(max_examples=500, deadline=None, derandomize=True,
                       suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
_PIECES = st.one_of(
    st.sampled_from(["USER ", "FP ", "BIODATA ", "OPLOG ", "PIN=", "Pin=", "FID=", "No=", "Size=", "Valid=", "TMP=",
                     "Tmp=", "Type=1", "MajorVer=", "Pri=", "Card=", "[15CD5B07]", "[zz]", "Passwd=", "Name=", "\t",
                     "\t", " ", "=", "AAAA", "oco=", "-1", "10", "99999999999999999999", "\x00", "é"]),
    st.text(max_size=8),
)


@PARSER_FUZZ
@given(st.lists(st.lists(_PIECES, max_size=25).map("".join), max_size=8))
def test_fuzzed_upload_lines_are_sorted_never_raise(lines: list[str]) -> None:
    upload = parse_enrolment_lines(lines)
    assert len(upload.users) + len(upload.fingers) + len(upload.refused) + upload.other_biometrics \
        + len(upload.other_lines) == len(lines)
    for u in upload.users:
        assert u.pin and len(u.pin) <= 64 and 0 <= u.privilege <= 255 and u.card >= 0
    for f in upload.fingers:
        assert 0 <= f.finger <= 9 and 0 < len(f.data) <= 16 * 1024
    for _, raw, why in upload.refused:
        assert why and len(raw) <= 2000
    for line in lines:
        redacted_line(line)
        card_number(line)


@pytest.mark.timeout(90)
def test_0014_strips_raw_user_and_template_lines_kept_before(db_url: str) -> None:
    from alembic import command

    from gateway.store.db import _alembic_config, writer

    engine = create_db_engine(db_url, pool_size=1)
    try:
        with writer(engine).begin() as conn:
            command.upgrade(_alembic_config(conn), "0010_dashboard_accounts")
            now = datetime.now(UTC)
            conn.execute(s.kv.insert(), [
                {"key": "push_op:pe1:1", "value": "OPLOG 4\t0\t2026-11-30 08:00:00\t0\t0\t0\t0\n"
                 "USER PIN=1\tName=Ani\tPasswd=4321\nFP PIN=1\tFID=0\tSize=3\tValid=1\tTMP=QUJD", "updated_at": now},
                {"key": "push_op:pe1:2", "value": "FP PIN=2\tFID=0\tSize=3\tValid=1\tTMP=QUJD", "updated_at": now},
                {"key": "push_opx", "value": "FP kept: not an upload row", "updated_at": now}])
        upgrade(engine)
        with engine.connect() as conn:
            rows = dict(conn.execute(select(s.kv.c.key, s.kv.c.value).where(s.kv.c.key.like("push_op%"))).all())
        assert rows == {"push_op:pe1:1": "OPLOG 4\t0\t2026-11-30 08:00:00\t0\t0\t0\t0",
                        "push_opx": "FP kept: not an upload row"}
    finally:
        engine.dispose()

"""Clearing a terminal safely with `fpgw devices clear`, on SQLite and PostgreSQL.

Against the simulator: nothing leaves a device unless every record read from it is in the database
(ground truth ⊆ stored), a punch landing between download and clear stops the clear, forwarding
requires an empty outbox for the device (unless --local-only), a database failure while storing
clears nothing, and a clear done by fpgw is not reported as a keypad clear (log_shrank) while a
real keypad clear still is. (The clear_when_full_ratio policy is tested in tests/polling/test_clear_policy.py.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway.store import schema as s
from tests.support.cli import run_cli
from tests.support.config import DeviceEntry, config_dict, make_config, write_toml
from tests.support.fleet import sim_spec, truth_keys
from tests.support.gateway import RunningGateway, clear_runs, diff, shrank_alerts, stored_keys, table_rows

pytestmark = pytest.mark.usefixtures("restore_logging")


def cli(capsys: pytest.CaptureFixture[str], config_path: Path, *argv: str) -> tuple[int, str, str]:
    return run_cli(capsys, "--config", str(config_path), *argv)


def write_config(tmp_path: Path, db_url: str, entries: list[DeviceEntry], **kw: Any) -> Path:
    return write_toml(config_dict(db_url, entries, **kw), tmp_path / "config.toml")


@pytest.mark.timeout(120)
def test_cli_clear_stores_everything_verifies_then_clears(fleet: Any, db_url: str, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    a = fleet.add(sim_spec("CLR-A", records=300, seed=11))
    path = write_config(tmp_path, db_url, [DeviceEntry("a", a)])

    # Dry run: stored and verified, but the terminal keeps its log.
    code, out, err = cli(capsys, path, "devices", "clear", "a", "--dry-run")
    assert code == 0, (out, err)
    assert "300 of 300 records, all present" in out and "dry run" in out
    assert a.record_count == 300 and a.enabled
    assert clear_runs(db_url) == []

    # Without --yes and without a terminal to ask on: refused politely, nothing touched.
    code, out, err = cli(capsys, path, "devices", "clear", "a")
    assert code == 1 and "--yes" in err and a.record_count == 300

    a.add_punches(4)
    code, out, err = cli(capsys, path, "devices", "clear", "a", "--yes")
    assert code == 0, (out, err)
    assert "read 304 records" in out and "4 were new" in out and "304 of 304 records, all present" in out
    assert "CLEARED" in out
    assert a.record_count == 0 and a.enabled
    truth = truth_keys(tmp_path / "truth.jsonl", [a.serial])
    stored = stored_keys(db_url, [a.serial])
    assert not truth - stored, diff(truth, stored)
    runs = clear_runs(db_url)
    assert len(runs) == 1 and runs[0]["records_read"] == 304 and runs[0]["error"] is None
    assert runs[0]["records_on_device"] == 0

    # An empty log: nothing to clear is a refusal (exit 1), not an error.
    code, out, err = cli(capsys, path, "devices", "clear", "a", "--yes")
    assert code == 1 and "already empty" in err

    # The daemon afterwards: new punches are read; no log_shrank for our own clear.
    a.add_punches(3)
    config = make_config(db_url, [DeviceEntry("a", a)], tmp_path)
    with RunningGateway(config) as gw:
        o = gw.poll("a")
        assert o.ok and o.new_punches == 3
        gw.poll("a")
        assert "log_shrank" not in gw.problems("a")
    assert shrank_alerts(db_url) == []
    truth = truth_keys(tmp_path / "truth.jsonl", [a.serial])
    assert not truth - stored_keys(db_url, [a.serial])


@pytest.mark.timeout(90)
def test_a_daemon_poll_racing_the_cli_clear_is_not_a_keypad_clear(fleet: Any, db_url: str, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """The daemon read the count before `fpgw devices clear` and stored it after: still no log_shrank."""
    from datetime import timedelta

    from sqlalchemy import create_engine, update

    a = fleet.add(sim_spec("CLR-DAEMON", records=100, seed=19))
    path = write_config(tmp_path, db_url, [DeviceEntry("a", a)])
    code, out, err = cli(capsys, path, "devices", "clear", "a", "--yes")
    assert code == 0, (out, err)
    (run,) = clear_runs(db_url)
    # What the racing daemon poll leaves behind: an ok run that started before the clear and the old count.
    engine = create_engine(db_url)
    with engine.begin() as conn:
        conn.execute(update(s.devices).values(last_record_count=100))
        conn.execute(s.poll_runs.insert().values(
            device_pk=run["device_pk"], serial=a.serial, started_at=run["started_at"] - timedelta(seconds=1),
            finished_at=run["finished_at"] + timedelta(seconds=1), duration_s=2.0, outcome="ok", mode="full",
            records_on_device=100, records_read=100, new_records=0, bytes_read=0))
    engine.dispose()
    config = make_config(db_url, [DeviceEntry("a", a)], tmp_path)
    with RunningGateway(config) as gw:
        o = gw.poll("a")
        assert o.ok and o.cleared_records == 100
        gw.poll("a")
        assert "log_shrank" not in gw.problems("a")
        # A later clear at the keypad is reported again.
        a.add_punches(5)
        assert gw.poll("a").new_punches == 5
        a.clear_log()
        gw.poll("a")
        gw.poll("a")
        assert "log_shrank" in gw.problems("a")


@pytest.mark.timeout(90)
def test_a_punch_between_download_and_clear_stops_the_clear(fleet: Any, db_url: str, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from drivers.zk.driver import ZkSession

    a = fleet.add(sim_spec("CLR-RACE", records=120, seed=12))
    path = write_config(tmp_path, db_url, [DeviceEntry("a", a)])
    original = ZkSession.clear_punches

    def punch_first(self: Any, expected_records: int | None = None, **kw: Any) -> None:
        a.add_punches(1)  # someone punches after the download was stored, before the clear
        original(self, expected_records=expected_records, **kw)

    monkeypatch.setattr(ZkSession, "clear_punches", punch_first)
    code, out, err = cli(capsys, path, "devices", "clear", "a", "--yes")
    assert code == 1, (out, err)
    assert "refused" in err and "new punch" in err and "retry" in err
    assert a.record_count == 121 and a.enabled
    assert clear_runs(db_url) == []

    # Retrying (without the interference) stores the new punch too, then clears.
    monkeypatch.setattr(ZkSession, "clear_punches", original)
    code, out, err = cli(capsys, path, "devices", "clear", "a", "--yes")
    assert code == 0, (out, err)
    assert a.record_count == 0
    truth = truth_keys(tmp_path / "truth.jsonl", [a.serial])
    assert not truth - stored_keys(db_url, [a.serial])


@pytest.mark.timeout(90)
def test_clear_requires_forwarded_requires_an_empty_outbox_unless_local_only(
        fleet: Any, db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("T_FWD_TOKEN", "x" * 32)
    a = fleet.add(sim_spec("CLR-FWD", records=80, seed=13))
    # Nothing listens on port 9: the CLI never forwards, so the new punches stay in the outbox.
    path = write_config(tmp_path, db_url, [DeviceEntry("a", a)],
                        forward={"url": "http://127.0.0.1:9", "token_env": "T_FWD_TOKEN"},
                        polling={"clear_requires_forwarded": True})
    code, out, err = cli(capsys, path, "devices", "clear", "a", "--yes")
    assert code == 1, (out, err)
    assert "80 of 80 records, all present" in out
    assert "80 pending, 0 rejected" in out and "refused" in err and "not yet accepted" in err
    assert a.record_count == 80 and a.enabled

    # Accepted upstream (the forwarder deletes the outbox rows): now it clears.
    from sqlalchemy import create_engine

    engine = create_engine(db_url)
    with engine.begin() as conn:
        conn.execute(s.outbox.delete())
    engine.dispose()
    a.add_punches(2)
    code, out, err = cli(capsys, path, "devices", "clear", "a", "--yes")
    assert code == 1 and "2 pending" in out and a.record_count == 82  # the 2 new ones wait now

    code, out, err = cli(capsys, path, "devices", "clear", "a", "--yes", "--local-only")
    assert code == 0, (out, err)
    assert "--local-only: 2 pending" in out and "CLEARED" in out
    assert a.record_count == 0 and a.enabled
    assert len(table_rows(db_url, s.outbox)) == 2  # still forwarded later
    truth = truth_keys(tmp_path / "truth.jsonl", [a.serial])
    assert not truth - stored_keys(db_url, [a.serial])


@pytest.mark.timeout(90)
def test_database_failure_while_storing_clears_nothing(fleet: Any, db_url: str, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from sqlalchemy.exc import OperationalError

    from gateway.store.punches import Store

    a = fleet.add(sim_spec("CLR-DB", records=150, seed=14))
    path = write_config(tmp_path, db_url, [DeviceEntry("a", a)])

    def broken(self: Any, *args: Any, **kw: Any) -> Any:
        raise OperationalError("INSERT INTO punches", {}, Exception("disk I/O error"))

    monkeypatch.setattr(Store, "save_poll", broken)
    code, out, err = cli(capsys, path, "devices", "clear", "a", "--yes")
    assert code == 1 and "database" in err, (out, err)
    assert a.record_count == 150 and a.enabled
    assert not stored_keys(db_url, [a.serial])
    assert clear_runs(db_url) == []


@pytest.mark.timeout(90)
def test_a_punch_on_a_full_rolling_terminal_between_download_and_clear_stops_the_clear(
        fleet: Any, db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A full log that overwrites its oldest record keeps its count: the guard compares the records themselves."""
    from drivers.zk.driver import ZkSession

    a = fleet.add(sim_spec("CLR-ROLL", records=100, records_cap=100, overwrite_oldest=True, seed=21))
    path = write_config(tmp_path, db_url, [DeviceEntry("a", a)])
    original = ZkSession.clear_punches

    def punch_first(self: Any, *args: Any, **kw: Any) -> None:
        a.add_punches(1)  # overwrites the oldest record: still 100 records, one of them new
        assert a.record_count == 100
        original(self, *args, **kw)

    monkeypatch.setattr(ZkSession, "clear_punches", punch_first)
    code, out, err = cli(capsys, path, "devices", "clear", "a", "--yes")
    assert code == 1, (out, err)
    assert "refused" in err and "new punch" in err
    assert a.record_count == 100 and a.enabled
    assert clear_runs(db_url) == []

    monkeypatch.setattr(ZkSession, "clear_punches", original)
    code, out, err = cli(capsys, path, "devices", "clear", "a", "--yes")
    assert code == 0, (out, err)
    assert a.record_count == 0 and a.enabled
    truth = truth_keys(tmp_path / "truth.jsonl", [a.serial])
    stored = stored_keys(db_url, [a.serial])
    assert not truth - stored, diff(truth, stored)


@pytest.mark.timeout(90)
def test_the_stored_punches_are_made_durable_before_the_clear(fleet: Any, db_url: str, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """SQLite (WAL, synchronous=NORMAL): a checkpoint(FULL) syncs them first; PostgreSQL: the commit suffices."""
    from drivers.zk.driver import ZkSession
    from gateway.store.punches import Store

    a = fleet.add(sim_spec("CLR-SYNC", records=50, seed=22))
    path = write_config(tmp_path, db_url, [DeviceEntry("a", a)])
    events: list[str] = []
    make_durable, clear_punches = Store.make_durable, ZkSession.clear_punches

    def spy_durable(self: Store) -> str:
        how = make_durable(self)
        events.append(f"durable:{how}")
        return how

    def spy_clear(self: Any, *args: Any, **kw: Any) -> None:
        events.append("clear")
        clear_punches(self, *args, **kw)

    monkeypatch.setattr(Store, "make_durable", spy_durable)
    monkeypatch.setattr(ZkSession, "clear_punches", spy_clear)
    code, out, err = cli(capsys, path, "devices", "clear", "a", "--yes")
    assert code == 0, (out, err)
    expected = "durable:checkpoint" if db_url.startswith("sqlite") else "durable:commit"
    assert events == [expected, "clear"]

    # A checkpoint that cannot complete stops the clear.
    from sqlalchemy.exc import OperationalError

    def busy(self: Store) -> str:
        raise OperationalError("PRAGMA wal_checkpoint(FULL)", {}, Exception("database is locked"))

    monkeypatch.setattr(Store, "make_durable", busy)
    a.add_punches(3)
    events.clear()
    code, out, err = cli(capsys, path, "devices", "clear", "a", "--yes")
    assert code == 1 and "durable" in err and events == [] and a.record_count == 3 and a.enabled

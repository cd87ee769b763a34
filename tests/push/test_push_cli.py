"""`fpgw devices` actions for push terminals: commands through the queue (answered by a simulated terminal through
the daemon's receiver), the guarded clear, unknown terminals and adding one with one command."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from gateway.cli.main import main
from gateway.config import load_config
from gateway.store import schema as s
from simulators.push.terminal import PushSpec, PushTerminal
from simulators.zk.truth import TruthWriter
from tests.support.config import OFFICE_CODE
from tests.support.fleet import truth_keys
from tests.support.gateway import RunningGateway, diff, stored_keys, table_rows
from tests.support.push import receiver_port
from tests.support.wait import wait_until


def write_config(tmp_path: Path, db_url: str, serials: list[str]) -> Path:
    devices = "".join(f'\n[[devices]]\nid = "p{i}"\ndriver = "push"\nserial = "{sn}"\n' for i, sn in enumerate(serials))
    path = tmp_path / "config.toml"
    path.write_text(f'[site]\noffice_code = "{OFFICE_CODE}"\nstate_dir = "{tmp_path}"\n[database]\nurl = "{db_url}"\n'
                    f'[http]\nenabled = false\n[polling]\nshutdown_deadline_s = 5\n'
                    f'[push]\nlisten = "127.0.0.1"\nport = 0\ndelay_s = 2\n{devices}')
    return path


def run_cli(argv: list[str], result: dict[str, int]) -> threading.Thread:
    t = threading.Thread(target=lambda: result.__setitem__("rc", main(argv)), name="cli")
    t.start()
    return t


def test_query_log_repairs_a_gap_and_reboot_is_answered(sqlite_url: str, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    path = write_config(tmp_path, sqlite_url, ["PSH001"])
    truth = TruthWriter(tmp_path / "truth.jsonl")
    with RunningGateway(load_config(path)) as gw:
        term = PushTerminal(PushSpec(serial="PSH001", server=f"http://127.0.0.1:{receiver_port(gw)}",
                                     max_wait_s=0.2, records=0), truth)
        term.start()
        try:
            wait_until(lambda: term.stats.handshakes >= 1, 20, "handshake")
            term.punch(1, at="2026-11-29 08:00:00", user_id="5")
            term.punch(1, at="2026-11-30 08:00:00", user_id="6")
            wait_until(lambda: term.pending == 0, 20, "uploaded")
            # A gap: the punch of the 29th is lost from the database (e.g. restored from an old backup).
            with gw.gateway.engine.begin() as conn:
                conn.execute(s.punches.delete().where(s.punches.c.device_user_id == "5"))
            result: dict[str, int] = {}
            run_cli(["-c", str(path), "devices", "query-log", "p0", "--from", "2026-11-29", "--to", "2026-11-29",
                     "--wait", "20"], result).join(30)
            assert result["rc"] == 0
            wait_until(lambda: stored_keys(sqlite_url) == truth_keys(tmp_path / "truth.jsonl"), 20, "gap repaired")
            run_cli(["-c", str(path), "devices", "reboot", "p0", "--wait", "20"], result).join(30)
            assert result["rc"] == 0
            wait_until(lambda: term.stats.handshakes >= 2, 20, "handshake after the reboot")
        finally:
            term.stop()
            truth.close()
    out = capsys.readouterr().out
    assert "query-log done" in out and "reboot done" in out
    expected = truth_keys(tmp_path / "truth.jsonl")
    assert stored_keys(sqlite_url) == expected, diff(expected, stored_keys(sqlite_url))


def test_clear_of_a_push_terminal_is_refused_until_every_record_is_stored(sqlite_url: str, tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    path = write_config(tmp_path, sqlite_url, ["PSH001"])
    truth = TruthWriter(tmp_path / "truth.jsonl")
    with RunningGateway(load_config(path)) as gw:
        term = PushTerminal(PushSpec(serial="PSH001", server=f"http://127.0.0.1:{receiver_port(gw)}",
                                     max_wait_s=0.2, records=4), truth)
        term.start()
        try:
            wait_until(lambda: term.pending == 0, 20, "uploaded")
            wait_until(lambda: table_rows(sqlite_url, s.devices)[0]["last_record_count"] == 4, 20, "INFO count")
            with gw.gateway.engine.begin() as conn:
                conn.execute(s.punches.delete().where(s.punches.c.id == conn.execute(
                    s.punches.select().limit(1)).first()[0]))  # type: ignore[index]
            assert main(["-c", str(path), "devices", "clear", "p0", "--yes"]) == 1
            assert term.record_count == 4
            assert "only 3 are stored" in capsys.readouterr().err
            # Stored again (the terminal's records are re-uploaded on request), then the clear goes through.
            result: dict[str, int] = {}
            run_cli(["-c", str(path), "devices", "query-log", "p0", "--from", "2000-01-01", "--to", "2100-01-01"],
                    result).join(30)
            wait_until(lambda: sum(stored_keys(sqlite_url).values()) == 4, 20, "re-uploaded")
            run_cli(["-c", str(path), "devices", "clear", "p0", "--yes"], result).join(30)
            assert result["rc"] == 0
            assert term.record_count == 0
        finally:
            term.stop()
            truth.close()


def test_unknown_terminal_listed_then_added_with_one_command(sqlite_url: str, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    path = write_config(tmp_path, sqlite_url, ["PSH001"])
    with RunningGateway(load_config(path)) as gw:
        term = PushTerminal(PushSpec(serial="NEW42", server=f"http://127.0.0.1:{receiver_port(gw)}", max_wait_s=0.2,
                                     records=2))
        term.start()
        try:
            wait_until(lambda: term.stats.failed_calls >= 1, 20, "refused upload")
        finally:
            term.stop()
    assert main(["-c", str(path), "devices", "unknown"]) == 0
    out = capsys.readouterr().out
    assert "NEW42" in out and "127.0.0.1" in out and "fpgw devices add-push NEW42 --id" in out
    assert main(["-c", str(path), "devices", "add-push", "NEW42", "--id", "annex", "--name", "Annex"]) == 0
    config = load_config(path)
    assert [(d.id, d.serial, d.pushes) for d in config.devices][-1] == ("annex", "NEW42", True)
    assert main(["-c", str(path), "devices", "unknown", "--json"]) == 0
    assert capsys.readouterr().out.strip().endswith("[]")
    assert main(["-c", str(path), "devices", "add-push", "NEW42", "--id", "again"]) == 1  # already configured

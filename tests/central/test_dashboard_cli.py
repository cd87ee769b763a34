"""`fpgw central users`: accounts made, listed, disabled and re-passworded from the command line, the password read
from standard input (never argv), only its scrypt hash stored, and a login through the dashboard proving it."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from gateway.central.auth import verify_password
from gateway.store.accounts import AccountRepo
from gateway.store.db import create_db_engine
from tests.support.cli import run_cli

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("restore_logging")]


@pytest.fixture
def config(tmp_path: Path) -> Path:
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'[site]\noffice_code = "1801.00"\ntimezone = "Asia/Jakarta"\nstate_dir = "{tmp_path}"\n'
                   f'[database]\nurl = "sqlite:///{tmp_path / "central.db"}"\n')
    return cfg


def _stdin(monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(text))


def test_users_add_list_disable_passwd(config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    c = str(config)
    _stdin(monkeypatch, "satu-dua-tiga-empat\n")
    code, out, _ = run_cli(capsys, "-c", c, "central", "users", "add", "siti.bkd", "--regency", "--password-stdin")
    assert code == 0 and "every office" in out
    _stdin(monkeypatch, "kantor-dinkes-2026\n")
    code, out, _ = run_cli(capsys, "-c", c, "central", "users", "add", "tu-dinkes", "--office", "1801.02")
    assert code == 0 and "office 1801.02" in out
    _stdin(monkeypatch, "another-password\n")
    code, _, err = run_cli(capsys, "-c", c, "central", "users", "add", "tu-dinkes", "--office", "1801.02")
    assert code != 0 and "already exists" in err
    _stdin(monkeypatch, "short\n")
    code, _, err = run_cli(capsys, "-c", c, "central", "users", "add", "x", "--regency")
    assert code != 0 and "at least 10 characters" in err

    code, out, _ = run_cli(capsys, "-c", c, "central", "users", "list", "--json")
    listed = {a["name"]: a for a in json.loads(out)}
    assert code == 0 and set(listed) == {"siti.bkd", "tu-dinkes"}
    assert listed["siti.bkd"]["office"] is None and listed["tu-dinkes"]["office"] == "1801.02"
    assert "password" not in out and "scrypt" not in out

    assert run_cli(capsys, "-c", c, "central", "users", "disable", "tu-dinkes")[0] == 0
    _stdin(monkeypatch, "ganti-kata-sandi-ini\n")
    assert run_cli(capsys, "-c", c, "central", "users", "passwd", "siti.bkd", "--password-stdin")[0] == 0
    code, _, err = run_cli(capsys, "-c", c, "central", "users", "disable", "nobody")
    assert code != 0 and "no account named 'nobody'" in err

    engine = create_db_engine(f"sqlite:///{tmp_path / 'central.db'}")
    try:
        repo = AccountRepo(engine)
        siti, tu = repo.account("siti.bkd"), repo.account("tu-dinkes")
    finally:
        engine.dispose()
    assert siti is not None and tu is not None and not tu.enabled
    assert siti.password_hash.startswith("scrypt$") and "ganti" not in siti.password_hash
    assert verify_password("ganti-kata-sandi-ini", siti.password_hash)
    assert not verify_password("satu-dua-tiga-empat", siti.password_hash)


def test_users_help_names_every_action(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        run_cli(capsys, "central", "users", "--help")
    out = capsys.readouterr().out
    for action in ("add", "list", "disable", "enable", "passwd"):
        assert action in out
    with pytest.raises(SystemExit):
        run_cli(capsys, "central", "users", "add", "--help")
    out = capsys.readouterr().out
    assert "--password-stdin" in out and "--office" in out and "--password " not in out

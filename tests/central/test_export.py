"""Recap / completeness rules, the writers, and the `fpgw export`, `fpgw forward`, `fpgw central` commands."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest
from openpyxl import load_workbook

from gateway.central import export
from gateway.central.tokens import load_tokens
from gateway.cli.main import main
from gateway.store.db import create_db_engine, upgrade
from gateway.store.outbox import Outbox
from gateway.store.punches import Store
from tests.support.punches import make_punch, store_punches

pytestmark = pytest.mark.timeout(60)
OFFICE = "1801.03"


def row(user: str, local: str, device: str = "lobby", employee: str | None = "auto", flags: list[str] | None = None,
        office: str = OFFICE) -> dict[str, Any]:
    return {"office_code": office, "device_id": device, "device_user_id": user,
            "employee_id": f"NIP{user}" if employee == "auto" else employee,
            "local_time": datetime.fromisoformat(local) if local else None, "flags": flags or []}


def test_recap_first_in_last_out_across_devices_with_untrusted_times_counted_apart() -> None:
    rows = [row("1", "2026-11-02T07:05:00"), row("1", "2026-11-02T12:00:00", device="hall"),
            row("1", "2026-11-02T16:45:10"), row("1", "2026-11-02T23:59:00", flags=["future"]),
            row("2", "2026-11-02T07:30:00"),                       # one punch: no last_out
            row("9", "2026-11-02T08:00:00", employee=None),        # unmapped: keyed by PIN
            row("1", "2026-11-03T06:59:59"), row("3", "", flags=["impossible_date"])]
    recap = export.daily_recap(rows)
    got = [(r["date"], r["employee_id"], r["device_user_id"], r["first_in"], r["last_out"], r["punches"],
            r["devices"], r["flagged"]) for r in recap]
    assert got == [
        ("2026-11-02", None, "9", "08:00:00", None, 1, ["lobby"], 0),
        ("2026-11-02", "NIP1", None, "07:05:00", "16:45:10", 3, ["hall", "lobby"], 1),
        ("2026-11-02", "NIP2", None, "07:30:00", None, 1, ["lobby"], 0),
        ("2026-11-03", "NIP1", None, "06:59:59", None, 1, ["lobby"], 0),
    ]


def test_completeness_marks_working_days_without_punches() -> None:
    rows = [row("1", "2026-11-02T07:00:00"), row("2", "2026-11-02T07:01:00"), row("1", "2026-11-07T09:00:00"),
            row("1", "2026-11-04T07:00:00", device="hall"), row("1", "2026-10-30T07:00:00")]
    devices = [{"office_code": OFFICE, "device_id": "lobby", "name": "Lobby", "serial": "SN1", "state": "online",
                "last_seen_at": None}, {"office_code": OFFICE, "device_id": "dead", "state": "offline"}]
    rep = export.completeness(rows, devices, date(2026, 11, 2), date(2026, 11, 8))
    by = {d["device_id"]: d for d in rep["devices"]}
    assert rep["workdays"] == ["2026-11-02", "2026-11-03", "2026-11-04", "2026-11-05", "2026-11-06"]
    assert by["lobby"]["by_day"]["2026-11-02"] == 2 and by["lobby"]["by_day"]["2026-11-07"] == 1
    assert by["lobby"]["missing_workdays"] == ["2026-11-03", "2026-11-04", "2026-11-05", "2026-11-06"]
    assert by["lobby"]["days_reported"] == 2 and by["lobby"]["punches"] == 3  # the October punch is outside
    assert by["dead"]["punches"] == 0 and len(by["dead"]["missing_workdays"]) == 5
    assert by["hall"]["name"] is None and by["hall"]["missing_workdays"] == ["2026-11-02", "2026-11-03",
                                                                             "2026-11-05", "2026-11-06"]
    saturday_work = export.completeness(rows, devices, date(2026, 11, 2), date(2026, 11, 8), workdays=(6,))
    assert {d["device_id"]: d["missing_workdays"] for d in saturday_work["devices"]}["lobby"] == []
    table, columns = export.completeness_table(rep)
    assert columns[-7:] == rep["days"] and table[0]["2026-11-02"] in (0, 2)


def test_spreadsheet_never_turns_device_text_into_a_formula() -> None:
    body = export.to_xlsx([{"device_user_id": "=1+1", "flags": ["a", "b"]}], ["device_user_id", "flags"])
    ws = load_workbook(io.BytesIO(body)).active
    assert [c.value for c in ws[2]] == ["=1+1", "a,b"] and ws["A2"].data_type == "s"
    text = export.to_csv([{"x": None, "y": datetime(2026, 11, 2, 0, 30, tzinfo=UTC)}], ["x", "y"]).decode("utf-8-sig")
    assert text.splitlines()[1] == ",2026-11-02T00:30:00Z"
    with pytest.raises(ValueError, match="unknown format"):
        export.render([], "pdf", [])


# -- the commands ------------------------------------------------------------------------------------------

def _office(tmp_path: Path, forward: bool = True) -> tuple[Path, str]:
    db = f"sqlite:///{tmp_path / 'office.db'}"
    (tmp_path / "tok").write_text("t0ken\n")
    (tmp_path / "gw.toml").write_text("")
    (tmp_path / "api.toml").write_text("")
    cfg = tmp_path / "config.toml"
    cfg.write_text(f"""
[site]
office_code = "{OFFICE}"
timezone = "Asia/Jakarta"
state_dir = "{tmp_path}"
[database]
url = "{db}"
[[devices]]
id = "lobby"
address = "127.0.0.1"
[forward]
url = "{'http://127.0.0.1:9' if forward else ''}"
token_file = "{tmp_path / 'tok'}"
alert_after_s = 3600
[central]
gateway_tokens_file = "{tmp_path / 'gw.toml'}"
api_tokens_file = "{tmp_path / 'api.toml'}"
""")
    engine = create_db_engine(db)
    upgrade(engine)
    store = Store(engine, OFFICE)
    store.sync_devices([__import__("gateway.config", fromlist=["load_config"]).load_config(cfg).devices[0]])
    items = []
    for day, user, hhmm in (("2026-11-02", "1", "07:10"), ("2026-11-02", "1", "16:20"), ("2026-11-03", "2", "07:00"),
                            ("2026-11-04", "1", "07:05")):
        local = datetime.fromisoformat(f"{day}T{hhmm}:00")
        items.append(make_punch(user, local, office_code=OFFICE, employee_id=f"NIP{user}"))
    store_punches(store, items)
    engine.dispose()
    return cfg, db


def test_fpgw_export_writes_punches_recap_and_completeness(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg, _ = _office(tmp_path)
    capsys.readouterr()
    out = tmp_path / "p.csv"
    assert main(["-c", str(cfg), "export", "--from", "2026-11-02", "--to", "2026-11-03", "-o", str(out)]) == 0
    rows = list(csv.DictReader(io.StringIO(out.read_text(encoding="utf-8-sig"))))
    assert [(r["device_user_id"], r["device_time"]) for r in rows] == [
        ("1", "2026-11-02 07:10:00"), ("1", "2026-11-02 16:20:00"), ("2", "2026-11-03 07:00:00")]
    assert main(["-c", str(cfg), "export", "--employee", "NIP1", "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["count"] == 3 and {i["employee_id"] for i in doc["items"]} == {"NIP1"}
    xlsx = tmp_path / "recap.xlsx"
    assert main(["-c", str(cfg), "export", "--recap", "--from", "2026-11-02", "--to", "2026-11-04",
                 "-o", str(xlsx)]) == 0
    values = list(load_workbook(xlsx).active.iter_rows(values_only=True))
    assert values[0][:6] == export.RECAP_COLUMNS[:6]
    assert values[1][1:6] == ("2026-11-02", "NIP1", None, "07:10:00", "16:20:00")
    assert main(["-c", str(cfg), "export", "--completeness", "--from", "2026-11-02", "--to", "2026-11-06",
                 "--format", "json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["devices"][0]["missing_workdays"] == ["2026-11-05", "2026-11-06"]
    assert main(["-c", str(cfg), "export", "--recap"]) == 1
    assert "need --from and --to" in capsys.readouterr().err


def test_fpgw_forward_status_and_retry_rejected(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg, db = _office(tmp_path)
    capsys.readouterr()
    engine = create_db_engine(db)
    Outbox(engine, "").settle(rejected={1: "office_mismatch: punch says 9999"})
    assert main(["-c", str(cfg), "forward", "status"]) == 0
    out = capsys.readouterr().out
    assert "waiting:         3 punch(es)" in out and "rejected:        1 punch(es)" in out and "office_mismatch" in out
    assert main(["-c", str(cfg), "forward", "retry-rejected"]) == 0
    assert capsys.readouterr().out.startswith("1 rejected punch(es) queued again")
    assert Outbox(engine, "").stats()[::2] == (4, 0)
    assert main(["-c", str(cfg), "forward", "status", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["depth"] == 4 and doc["rejected"] == 0 and doc["late"] is False
    # Nothing listens on port 9: one forwarding run keeps everything and says why.
    assert main(["-c", str(cfg), "forward", "now"]) == 1
    assert "upstream problem" in capsys.readouterr().out
    assert Outbox(engine, "").stats().depth == 4
    engine.dispose()


def test_fpgw_central_add_token_prints_it_once_and_stores_only_the_hash(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    cfg, _ = _office(tmp_path, forward=False)
    capsys.readouterr()
    assert main(["-c", str(cfg), "central", "add-token", "--kind", "gateway", "--name", "dinas-a",
                 "--offices", "1801.01"]) == 0
    token = capsys.readouterr().out.strip()
    assert len(token) >= 40
    text = (tmp_path / "gw.toml").read_text()
    assert token not in text and "sha256:" in text
    [tok] = load_tokens(tmp_path / "gw.toml", "gateway")
    assert tok.name == "dinas-a" and tok.office == "1801.01" and tok.offices is not None
    # A gateway token must name its office (never every office); names are unique.
    assert main(["-c", str(cfg), "central", "add-token", "--kind", "gateway", "--name", "x", "--offices", "*"]) == 1
    assert main(["-c", str(cfg), "central", "add-token", "--kind", "gateway", "--name", "dinas-a",
                 "--offices", "1801.02"]) == 1
    assert main(["-c", str(cfg), "central", "add-token", "--name", "bkd", "--offices", "1801.01,1801.02"]) == 0
    capsys.readouterr()
    assert main(["-c", str(cfg), "central", "list-tokens"]) == 0
    assert capsys.readouterr().out.strip() == "bkd\t1801.01,1801.02"
    # A new token file is created readable by its owner only.
    fresh = tmp_path / "secret" / "api.toml"
    assert main(["-c", str(cfg), "central", "add-token", "--name", "ops", "--file", str(fresh)]) == 0
    assert fresh.stat().st_mode & 0o077 == 0


def test_streamed_json_is_valid_even_when_empty_and_counts_rows() -> None:
    buf = io.BytesIO()
    assert export.write(iter([]), "json", [], buf, extra=lambda n: {"count": n}) == 0
    assert json.loads(buf.getvalue()) == {"items": [], "count": 0}
    buf = io.BytesIO()
    rows = ({"a": i, "t": datetime(2026, 11, 2, tzinfo=UTC)} for i in range(3))
    assert export.write(rows, "json", [], buf, extra=lambda n: {"count": n}) == 3
    assert json.loads(buf.getvalue()) == {"items": [{"a": i, "t": "2026-11-02T00:00:00Z"} for i in range(3)],
                                          "count": 3}


def test_export_to_a_missing_folder_is_a_clear_error_and_leaves_no_file(tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    cfg, _ = _office(tmp_path)
    capsys.readouterr()
    assert main(["-c", str(cfg), "export", "-o", str(tmp_path / "nope" / "x.csv")]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert main(["-c", str(cfg), "export", "-o", str(tmp_path / "all.csv")]) == 0
    assert sorted(p.name for p in tmp_path.glob("all.csv*")) == ["all.csv"]


def test_fpgw_central_gateways_lists_who_forwarded(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from gateway.store.central import CentralStore

    cfg, db = _office(tmp_path, forward=False)
    capsys.readouterr()
    assert main(["-c", str(cfg), "central", "gateways"]) == 0
    assert "no gateway" in capsys.readouterr().out
    engine = create_db_engine(db)
    CentralStore(engine).ingest_health(gateway="dinkes-gw", office_code="1801.01", devices=[],
                                       meta={"outbox_depth": 12, "oldest_unforwarded_s": 7200.0, "version": "0.1.0"})
    engine.dispose()
    assert main(["-c", str(cfg), "central", "gateways"]) == 0
    line = capsys.readouterr().out.splitlines()[1].split()
    assert line[:2] == ["dinkes-gw", "1801.01"] and line[-4:] == ["12", "2.0", "h", "0"]
    assert main(["-c", str(cfg), "central", "gateways", "--json"]) == 0
    [g] = json.loads(capsys.readouterr().out)
    assert (g["name"], g["outbox_depth"], g["oldest_unforwarded_s"], g["version"]) == ("dinkes-gw", 12, 7200.0, "0.1.0")

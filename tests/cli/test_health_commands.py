"""`fpgw devices mute|unmute`, `fpgw alerts` and `fpgw report` against a database the daemon filled."""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from gateway.cli.main import main
from gateway.config import load_config
from gateway.health.report import build_report
from gateway.store import schema as s
from gateway.store.health import HealthRepo
from simulators.zk import read_truth
from tests.support.config import DeviceEntry, config_dict, write_toml
from tests.support.fleet import running_fleet, sim_spec
from tests.support.gateway import RunningGateway, table_rows

pytestmark = pytest.mark.timeout(90)
TZ = ZoneInfo("Asia/Jakarta")


@pytest.fixture
def office(tmp_path: Path):
    """A config file + database: device a (simulated history), b and c (no punches)."""
    with running_fleet(tmp_path / "truth.jsonl") as fleet:
        a = fleet.add(sim_spec("CLI-A", records=300, seed=11))
        b = fleet.add(sim_spec("CLI-B", records=0, seed=12))
        c = fleet.add(sim_spec("CLI-C", records=0, seed=13))
        db_url = f"sqlite:///{tmp_path / 'fpgw.db'}"
        doc = config_dict(db_url, [DeviceEntry("a", a), DeviceEntry("b", b), DeviceEntry("c", c)],
                          health={"working_hours": {"start": "07:00", "end": "16:00", "days": [1, 2, 3, 4, 5, 6, 7]}},
                          alerts={"reminder_s": 0})
        path = write_toml(doc, tmp_path / "config.toml")
        config = load_config(path)
        with RunningGateway(config) as gw:
            gw.poll_all(["a", "b", "c"])
            gw.gateway.polls.wait_idle(20)
        yield path, config, db_url, read_truth(tmp_path / "truth.jsonl")


def test_mute_unmute_and_devices_still_lists(office, capsys: pytest.CaptureFixture[str]) -> None:
    path, _config, db_url, _ = office
    assert main(["-c", str(path), "devices", "mute", "b", "--for", "1h30m", "--reason", "ganti adaptor"]) == 0
    out = capsys.readouterr().out
    assert "b: alerts muted until" in out and "ganti adaptor" in out
    [row] = [r for r in table_rows(db_url, s.device_health) if r["mute_reason"]]
    left = row["muted_until"] - datetime.now(UTC)
    assert timedelta(minutes=85) < left <= timedelta(minutes=90)
    assert main(["-c", str(path), "devices"]) == 0  # the core listing still works with the sub-actions added
    assert "b" in capsys.readouterr().out
    assert main(["-c", str(path), "devices", "unmute", "b"]) == 0
    assert all(r["muted_until"] is None for r in table_rows(db_url, s.device_health))
    assert main(["-c", str(path), "devices", "mute", "nope"]) == 1
    assert "unknown device 'nope'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["-c", str(path), "devices", "mute", "b", "--for", "soon"])


def test_alerts_lists_history_and_open_problems(office, capsys: pytest.CaptureFixture[str]) -> None:
    path, config, db_url, _ = office
    from sqlalchemy import create_engine

    engine = create_engine(db_url)
    try:
        repo = HealthRepo(engine, config.site.office_code)
        [h] = [x for x in repo.load_health() if x.device_id == "c"]
        t0 = datetime.now(UTC) - timedelta(hours=3)
        from gateway.health.tracker import Problem

        h.problems["storage"] = Problem("storage", "warning", t0, "records storage 85% full (850 of 1000)")
        repo.record([h], [
            {"created_at": t0, "device_id": "c", "device_serial": "CLI-C", "problem": "storage", "event": "start",
             "severity": "warning", "title": "storage", "message": "m", "details": {}, "muted": False},
            {"created_at": t0 + timedelta(hours=1), "device_id": "b", "device_serial": "CLI-B", "problem": "offline",
             "event": "start", "severity": "critical", "title": "offline", "message": "m", "details": {},
             "muted": True}])
    finally:
        engine.dispose()
    assert main(["-c", str(path), "alerts"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:5] == ["time", "device", "event", "severity", "problem"]
    assert "offline" in out[1] and "muted" in out[1] and "storage" in out[2] and "pending" in out[2]
    assert main(["-c", str(path), "alerts", "--device", "c", "--json"]) == 0
    rows = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [(r["device"], r["problem"], r["event"]) for r in rows] == [("c", "storage", "start")]
    assert main(["-c", str(path), "alerts", "--since", "1h"]) == 0
    assert "no alerts" in capsys.readouterr().out
    assert main(["-c", str(path), "alerts", "--open"]) == 0
    out = capsys.readouterr().out
    assert "storage" in out and "85% full" in out


def test_report_counts_match_the_simulator_and_shows_offline_and_silent(
        office, capsys: pytest.CaptureFixture[str]) -> None:
    path, config, db_url, truth = office
    from sqlalchemy import create_engine, update

    engine = create_engine(db_url)
    try:
        # The devices were "installed" 10 days ago (the report shows no data before that).
        with engine.begin() as conn:
            conn.execute(update(s.devices).values(created_at=datetime.now(UTC) - timedelta(days=10)))
        repo = HealthRepo(engine, config.site.office_code)
        yesterday = datetime.now(TZ).date() - timedelta(days=1)
        # Device b was offline yesterday 08:00-10:00 local (the health model's start/end events).
        start = datetime.combine(yesterday, time(8, 0), tzinfo=TZ)
        repo.record([], [
            {"created_at": at, "device_id": "b", "device_serial": "CLI-B", "problem": "offline", "event": ev,
             "severity": "critical", "title": "t", "message": "m", "details": {}, "muted": False}
            for at, ev in ((start, "start"), (start + timedelta(hours=2), "end"))])
        first = yesterday - timedelta(days=6)
        rows = build_report(repo, config, first, yesterday)
    finally:
        engine.dispose()
    per_day = Counter(r["time"][:10] for r in truth if r["serial"] == "CLI-A")
    got = {r.day: r.punches for r in rows if r.device_id == "a"}
    assert got == {d: per_day.get(d, 0) for d in got}
    assert sum(got.values()) > 0
    b_yesterday = next(r for r in rows if r.device_id == "b" and r.day == yesterday.isoformat())
    assert b_yesterday.offline_min == 120 and b_yesterday.status == "partly_offline" and b_yesterday.punches == 0
    c_days = [r for r in rows if r.device_id == "c"]
    assert {r.status for r in c_days} == {"silent"} and all(r.offline_min == 0 for r in c_days)

    assert main(["-c", str(path), "report", "--from", first.isoformat(), "--to", yesterday.isoformat(),
                 "--format", "csv"]) == 0
    csv_rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert len(csv_rows) == 7 * 3
    assert {(r["day"], r["device_id"]): int(r["punches"]) for r in csv_rows if r["device_id"] == "a"} == \
        {(d, "a"): n for d, n in got.items()}
    assert main(["-c", str(path), "report", "--from", first.isoformat(), "--to", yesterday.isoformat()]) == 0
    text = capsys.readouterr().out
    silent = sorted({r.device_id for r in rows if r.status == "silent"})
    assert "c" in silent and f"silent on a working day: {', '.join(silent)}" in text
    assert "offline during working hours: b" in text
    assert main(["-c", str(path), "report", "--from", "2026-01-02", "--to", "2026-01-01"]) == 1

"""The push receiver's endpoints through HTTP (in-process client): exact replies, limits, bad input, commands,
health for terminals that call us. Time is driven by fake clocks; the database is real (SQLite and PostgreSQL)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.health.tracker import HealthTracker
from tests.support.gateway import stored_keys
from tests.support.push import SERIAL, Rig, make_rig


@pytest.fixture
def rig(db_url: str, tmp_path: Path) -> Iterator[Rig]:
    yield from make_rig(db_url, tmp_path)


@pytest.fixture
def lite(sqlite_url: str, tmp_path: Path) -> Iterator[Rig]:
    yield from make_rig(sqlite_url, tmp_path)


ATTLOG = "1452\t2026-11-30 08:16:28\t0\t1\t0\t0\t0\n8965\t2026-11-30 08:16:37\t1\t15\t0\t0\t0\n"


def test_handshake_is_the_documented_option_block_with_a_date_header(lite: Rig) -> None:
    r = lite.get("/iclock/cdata", options="all", pushver="2.2.14", language="73")
    assert r.status_code == 200
    lines = r.text.split("\n")
    assert lines[0] == f"GET OPTION FROM: {SERIAL}"
    options = dict(line.split("=", 1) for line in lines[1:] if line)
    assert options["Delay"] == "10" and options["ErrorDelay"] == "30" and options["Realtime"] == "1"
    assert options["TimeZone"] == "7"  # WIB in hours (the unit the firmware expects for whole hours)
    assert options["ATTLOGStamp"] == "None" and options["TransFlag"].startswith("TransData AttLog\tOpLog")
    assert r.headers["date"] == "Mon, 30 Nov 2026 01:00:00 GMT"
    assert "\r" not in r.text


@pytest.mark.parametrize(("zone", "value"), [("Asia/Makassar", "8"), ("Asia/Jayapura", "9"),
                                              ("Asia/Kolkata", "330"), ("America/St_Johns", "-210")])
def test_timezone_option_is_hours_when_whole_else_minutes(sqlite_url: str, tmp_path: Path, zone: str,
                                                          value: str) -> None:
    for rig in make_rig(sqlite_url, tmp_path, devices=[{"id": "p1", "driver": "push", "serial": SERIAL,
                                                       "timezone": zone}]):
        options = dict(line.split("=", 1) for line in rig.get("/iclock/cdata", options="all").text.split("\n")[1:]
                       if line)
        assert options["TimeZone"] == value


def test_attlog_is_acknowledged_after_commit_and_a_resend_is_stored_once(rig: Rig) -> None:
    first = rig.post("/iclock/cdata", ATTLOG, table="ATTLOG", Stamp="9999")
    assert (first.status_code, first.text) == (200, "OK: 2")
    again = rig.post("/iclock/cdata", ATTLOG, table="ATTLOG", Stamp="9999")
    assert (again.status_code, again.text) == (200, "OK: 2")
    keys = stored_keys(rig.db_url)
    assert keys == {(SERIAL, "1452", "2026-11-30 08:16:28", 0, 1): 1, (SERIAL, "8965", "2026-11-30 08:16:37", 1, 15): 1}
    news = [o.new_punches for o in rig.outcomes if o.mode == "full"]
    assert news == [2, 0]


@pytest.mark.parametrize(("path", "body", "ctype"), [
    ("/iclock/cdata", ATTLOG.replace("\n", "\r\n"), "text/plain"),
    ("/iclock/cdata.aspx", ATTLOG, "text/plain"),
    ("/iclock/cdata/", ATTLOG, "text/plain"),
    ("/iclock/cdata", ATTLOG.replace("\t", "%09").replace("\n", "%0A").replace(" ", "+"),
     "application/x-www-form-urlencoded"),
    ("/iclock/cdata", ATTLOG.replace("\t0\t0\t0\n", "\t0\t0\t0\t1\t36.5\t36.5\n"), "text/plain"),
    ("/iclock/cdata", ATTLOG.rstrip("\n"), "text/plain"),
])
def test_attlog_variants_store_the_same_punches(lite: Rig, path: str, body: str, ctype: str) -> None:
    r = lite.post(path, body, {"Content-Type": ctype}, table="ATTLOG")
    assert (r.status_code, r.text) == (200, "OK: 2")
    assert sum(stored_keys(lite.db_url).values()) == 2


def test_unusable_lines_are_acknowledged_not_stored_and_good_ones_kept(lite: Rig) -> None:
    body = "\t2026-11-30 08:00:00\t0\t1\n77\tyesterday\t0\t1\nA-12\t2026-11-30 08:00:00\tx\ty\tz\n"
    r = lite.post("/iclock/cdata", body, table="ATTLOG")
    assert (r.status_code, r.text) == (200, "OK: 1")  # never a reply that makes the terminal resend forever
    assert stored_keys(lite.db_url) == {(SERIAL, "A-12", "2026-11-30 08:00:00", 0, 0): 1}


def test_limits_refuse_the_whole_upload_and_store_nothing(sqlite_url: str, tmp_path: Path) -> None:
    for rig in make_rig(sqlite_url, tmp_path, max_lines=10, max_body_bytes=4096):
        many = "".join(f"{i}\t2026-11-30 08:00:00\t0\t1\n" for i in range(11))
        assert rig.post("/iclock/cdata", many, table="ATTLOG").status_code == 413
        big = "1\t2026-11-30 08:00:00\t0\t1\n" + "x" * 5000
        assert rig.post("/iclock/cdata", big, table="ATTLOG").status_code == 413
        assert sum(stored_keys(rig.db_url).values()) == 0


@pytest.mark.parametrize("params", [{}, {"SN": ""}, {"SN": "bad serial"}, {"SN": "x" * 65}, {"SN": "ab/../c"}])
def test_missing_or_malformed_serial_is_400(lite: Rig, params: dict[str, str]) -> None:
    r = lite.client.post("/iclock/cdata", params={"table": "ATTLOG", **params}, content=ATTLOG.encode())
    assert r.status_code == 400


def test_unknown_serial_gets_a_slow_option_block_refused_uploads_and_is_recorded(lite: Rig) -> None:
    r = lite.client.get("/iclock/cdata", params={"SN": "NEW777", "options": "all"})
    assert r.status_code == 200 and r.text.startswith("GET OPTION FROM: NEW777\n") and "Delay=600" in r.text
    up = lite.client.post("/iclock/cdata", params={"SN": "NEW777", "table": "ATTLOG"}, content=ATTLOG.encode())
    assert up.status_code == 403
    assert lite.client.get("/iclock/getrequest", params={"SN": "NEW777"}).text == "OK"
    assert sum(stored_keys(lite.db_url).values()) == 0
    unknown = lite.repo.unknown_terminals()
    assert [u["serial"] for u in unknown] == ["NEW777"] and unknown[0]["address"]


def test_wrong_push_key_is_refused_and_reported_to_health(sqlite_url: str, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FPGW_TEST_PUSH_KEY", "4a9594af164f2b9779b59e8554b5df26")
    for rig in make_rig(sqlite_url, tmp_path, devices=[{"id": "p1", "driver": "push", "serial": SERIAL,
                                                       "push_key_env": "FPGW_TEST_PUSH_KEY"}]):
        assert rig.get("/iclock/cdata", options="all", pushcommkey="nope").status_code == 403
        assert [o.error_kind for o in rig.outcomes] == ["auth_rejected"]
        # Until a handshake with the right key, its other calls are refused too (no "healthy" heartbeat).
        assert rig.get("/iclock/getrequest").status_code == 403
        assert rig.post("/iclock/cdata", ATTLOG, table="ATTLOG").status_code == 403
        assert [o.error_kind for o in rig.outcomes] == ["auth_rejected"]
        ok = rig.get("/iclock/cdata", options="all", pushcommkey="4A9594AF164F2B9779B59E8554B5DF26")
        assert ok.status_code == 200
        assert rig.post("/iclock/cdata", ATTLOG, table="ATTLOG").text == "OK: 2"


def test_a_disabled_push_device_is_refused_and_not_listed_as_unknown(sqlite_url: str, tmp_path: Path) -> None:
    for rig in make_rig(sqlite_url, tmp_path, devices=[{"id": "p1", "driver": "push", "serial": SERIAL,
                                                       "enabled": False}]):
        assert rig.post("/iclock/cdata", ATTLOG, table="ATTLOG").status_code == 403
        assert rig.repo.unknown_terminals() == [] and sum(stored_keys(rig.db_url).values()) == 0


def test_operlog_is_counted_and_only_operation_lines_kept_raw(lite: Rig) -> None:
    # Users and templates are never kept raw (biometric data: sealed, with a key; tests/push/test_push_enrol.py).
    body = ("OPLOG 4\t0\t2026-11-30 08:00:00\t0\t0\t0\t0\nUSER PIN=1\tName=Ani\tPri=0\tPasswd=\tCard=[15CD5B07]\n"
            "FP PIN=1\tFID=6\tSize=3\tValid=1\tTMP=ABCD\n")
    r = lite.post("/iclock/cdata", body, table="OPERLOG", Stamp="9999")
    assert (r.status_code, r.text) == (200, "OK: 3")
    kept = lite.repo.operlog_uploads(SERIAL)
    assert kept == ["OPLOG 4\t0\t2026-11-30 08:00:00\t0\t0\t0\t0"]
    assert sum(stored_keys(lite.db_url).values()) == 0


def test_commands_are_handed_out_once_and_results_recorded(lite: Rig) -> None:
    reboot = lite.repo.queue_command("p1", SERIAL, "reboot", "REBOOT")
    query = lite.repo.queue_command("p1", SERIAL, "query-log", "DATA QUERY ATTLOG StartTime=2026-11-30 00:00:00"
                                                               "\tEndTime=2026-11-30 23:59:59")
    r = lite.get("/iclock/getrequest")
    assert r.text.split("\n")[:2] == [f"C:{reboot.id}:REBOOT", f"C:{query.id}:{query.text}"]
    assert lite.get("/iclock/getrequest").text == "OK"
    done = lite.post("/iclock/devicecmd", f"ID={reboot.id}&Return=0&CMD=REBOOT\nID={query.id}&Return=-1&CMD=DATA\n")
    assert done.text == "OK"
    states = {c.id: (c.state, c.return_code) for c in lite.repo.commands(SERIAL)}
    assert states == {reboot.id: ("done", 0), query.id: ("failed", -1)}


def test_a_clear_is_handed_out_only_when_the_terminal_holds_no_record_that_is_not_stored(lite: Rig) -> None:
    assert lite.post("/iclock/cdata", ATTLOG, table="ATTLOG").text == "OK: 2"
    first = lite.repo.queue_command("p1", SERIAL, "clear", "CLEAR LOG")
    # This very call says the terminal holds 3 records: one is not stored yet, so the clear is withdrawn.
    assert lite.get("/iclock/getrequest", INFO="Ver 8,1,1,3,10.0.0.9").text == "OK"
    assert lite.repo.commands(SERIAL)[0].state == "refused"
    second = lite.repo.queue_command("p1", SERIAL, "clear", "CLEAR LOG")
    assert lite.get("/iclock/getrequest").text == "OK"  # no INFO in this call: not handed out either
    third = lite.repo.queue_command("p1", SERIAL, "clear", "CLEAR LOG")
    reply = lite.get("/iclock/getrequest", INFO="Ver 8,1,1,2,10.0.0.9").text
    assert reply == f"C:{third.id}:CLEAR LOG\n"
    assert {c.id: c.state for c in lite.repo.commands(SERIAL)} == {first.id: "refused", second.id: "refused",
                                                                   third.id: "sent"}


def test_a_command_never_answered_times_out(lite: Rig) -> None:
    cmd = lite.repo.queue_command("p1", SERIAL, "reboot", "REBOOT", at=lite.clock())
    lite.receiver.sweep()
    assert lite.repo.commands(SERIAL)[0].state == "queued"
    lite.clock.advance(lite.config.push.command_timeout_s + 1)
    lite.receiver.sweep()
    assert [(c.id, c.state) for c in lite.repo.commands(SERIAL)] == [(cmd.id, "timeout")]
    # Kept for `fpgw devices commands` for a while, then deleted by the sweep.
    lite.clock.advance(31 * 86400)
    lite.receiver.sweep()
    assert lite.repo.commands(SERIAL) == []


def test_answered_commands_do_not_fill_the_queue(lite: Rig) -> None:
    for _ in range(60):
        lite.mono.now += 1  # within push.rate_per_device
        cmd = lite.repo.queue_command("p1", SERIAL, "info", "INFO")
        assert lite.get("/iclock/getrequest").text.startswith(f"C:{cmd.id}:INFO")
        lite.post("/iclock/devicecmd", f"ID={cmd.id}\nReturn=0\nCMD=INFO\nFWVersion=Ver 8")
    assert len(lite.repo.commands(SERIAL)) == 60 and lite.repo.commands(SERIAL)[-1].state == "done"
    for _ in range(50):
        lite.repo.queue_command("p1", SERIAL, "reboot", "REBOOT")
    with pytest.raises(ValueError, match="already wait"):
        lite.repo.queue_command("p1", SERIAL, "reboot", "REBOOT")


def test_a_replaced_terminal_new_serial_is_a_notice_and_keeps_the_history(sqlite_url: str, tmp_path: Path) -> None:
    for old in make_rig(sqlite_url, tmp_path):
        assert old.post("/iclock/cdata", ATTLOG, table="ATTLOG").text == "OK: 2"
    tracker = None
    for new in make_rig(sqlite_url, tmp_path, devices=[{"id": "p1", "driver": "push", "serial": "NEW0001"}]):
        tracker = HealthTracker(new.config)
        r = new.client.post("/iclock/cdata", params={"SN": "NEW0001", "table": "ATTLOG"},
                            content=b"5\t2026-11-30 09:00:00\t0\t1\n")
        assert r.text == "OK: 1"
        assert new.outcomes[0].previous_serial == SERIAL and new.outcomes[0].serial == "NEW0001"
        for o in new.outcomes:
            tracker.record(o)
        assert "replaced" in tracker.health("p1").problems
    assert {k[0] for k in stored_keys(sqlite_url)} == {SERIAL, "NEW0001"}


def test_info_counts_and_firmware_reach_health_and_a_silent_terminal_goes_offline(lite: Rig) -> None:
    tracker = HealthTracker(lite.config)
    info = "Ver 2.0.12-20150625,12,24,345,192.168.16.27,10,7,15,0,111"
    assert lite.get("/iclock/getrequest", INFO=info).text == "OK"
    for o in lite.outcomes:
        tracker.record(o)
    last = lite.outcomes[-1]
    assert last.ok and last.counts is not None and (last.counts.records, last.counts.users) == (345, 12)
    assert last.info is not None and last.info.firmware == "Ver 2.0.12-20150625"
    assert tracker.health("p1").state == "online"
    seen = len(lite.outcomes)
    # Calls within push.offline_after_s: nothing reported by the sweep.
    lite.mono.now += lite.config.push.offline_after_s - 1
    lite.receiver.sweep()
    assert len(lite.outcomes) == seen
    for _ in range(lite.config.health.offline_after_failures):
        lite.mono.now += 30
        lite.clock.advance(lite.config.push.offline_after_s)
        lite.receiver.sweep()
        for o in lite.outcomes[seen:]:
            tracker.record(o)
        seen = len(lite.outcomes)
    assert tracker.health("p1").state == "offline"
    assert lite.outcomes[-1].error_kind == "unreachable"
    # The next call brings it back at once.
    lite.clock.advance(5)
    lite.get("/iclock/ping")
    for o in lite.outcomes[seen:]:
        tracker.record(o)
    assert tracker.health("p1").state == "online"


def test_clock_skew_from_a_realtime_upload_of_a_regularly_calling_terminal_only(lite: Rig) -> None:
    # 01:00 UTC is 08:00 in Jakarta; the terminal's clock is 5 minutes ahead.
    lite.get("/iclock/getrequest")
    lite.mono.now += 5
    lite.get("/iclock/getrequest")
    lite.mono.now += 5
    lite.post("/iclock/cdata", "7\t2026-11-30 08:05:00\t0\t1\n", table="ATTLOG")
    assert lite.outcomes[-1].clock_skew_s == 300.0
    # A backlog after an outage (a long silence, many records) says nothing about the clock: the last value stays.
    lite.mono.now += 3600
    backlog = "".join(f"{u}\t2026-11-30 06:{u:02d}:00\t0\t1\n" for u in range(10))
    lite.post("/iclock/cdata", backlog, table="ATTLOG")
    assert lite.outcomes[-1].mode == "full" and lite.outcomes[-1].clock_skew_s == 300.0


def test_rate_limit_answers_503_without_storing(sqlite_url: str, tmp_path: Path) -> None:
    for rig in make_rig(sqlite_url, tmp_path, rate_per_device=1):
        codes = [rig.get("/iclock/ping").status_code for _ in range(6)]
        assert codes[:4] == [200] * 4 and codes[4:] == [503, 503]
        rig.mono.now += 2
        assert rig.get("/iclock/ping").status_code == 200

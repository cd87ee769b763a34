"""Central ingest and BKD pull API through HTTP (Starlette TestClient) on SQLite and PostgreSQL.

Asserts through the API answers and the punches / devices tables: validation answers 4xx and stores
nothing, tokens decide the office, replays are answered from the receipt, the cursor feed is exact.
"""

from __future__ import annotations

import gzip
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from gateway.central.tokens import add_token
from gateway.store import schema as s
from tests.support.central import OFFICE_A, OFFICE_B, Central, device_doc, make_central, punch


@pytest.fixture
def central(db_url: str, tmp_path: Path) -> Iterator[Central]:
    c = make_central(db_url, tmp_path, max_body_bytes=64 * 1024, max_batch=50)
    try:
        yield c
    finally:
        c.client.close()
        c.engine.dispose()


# -- ingest ---------------------------------------------------------------------------------------------

@pytest.mark.timeout(60)
def test_batch_is_stored_once_and_a_replay_gets_the_same_answer(central: Central) -> None:
    batch = [punch("1"), punch("2"), punch("1")]  # the same punch twice in one batch
    r1 = central.ingest(batch)
    assert r1.status_code == 200, r1.text
    a1 = r1.json()
    assert (a1["received"], a1["accepted"], a1["new"], a1["duplicates"], a1["rejected"]) == (3, 3, 2, 1, 0)
    assert [r["status"] for r in a1["results"]] == ["accepted"] * 3
    assert [r["duplicate"] for r in a1["results"]] == [False, False, True]
    r2 = central.ingest(batch)
    assert r2.status_code == 200 and r2.json() == a1 and r2.headers.get("x-fpgw-replayed") == "1"
    # A new batch with a punch stored earlier: accepted as a duplicate, nothing stored twice.
    r3 = central.ingest([punch("2"), punch("3")], batch_id="b2").json()
    assert [r["duplicate"] for r in r3["results"]] == [True, False]
    assert central.count() == 3
    with central.engine.connect() as conn:
        rows = conn.execute(select(s.punches.c.office_code, s.punches.c.source)).all()
    assert set(rows) == {(OFFICE_A, "forward")}


@pytest.mark.timeout(60)
def test_same_batch_id_with_other_punches_is_a_conflict(central: Central) -> None:
    assert central.ingest([punch("1")]).status_code == 200
    r = central.ingest([punch("9")])
    assert r.status_code == 409 and r.json()["error"] == "batch_conflict"
    assert central.count() == 1


@pytest.mark.timeout(60)
def test_office_comes_from_the_token_and_unacceptable_rows_are_rejected_one_by_one(central: Central) -> None:
    batch = [punch("1"), punch("2", office_code=OFFICE_B), punch("3", device_time="2026-11-02T07:00:00"),
             punch("4", timezone="Mars/Olympus"), punch("5", device_serial="X" * 65), punch("6", utc_time="yesterday"),
             punch("7", office_code=None)]
    r = central.ingest(batch)
    assert r.status_code == 200, r.text
    res = r.json()["results"]
    assert [x["status"] for x in res] == ["accepted", "rejected", "rejected", "rejected", "rejected", "rejected",
                                          "accepted"]
    assert [x["reason"].split(":")[0] for x in res if x["status"] == "rejected"] == [
        "office_mismatch", "bad_device_time", "unknown_timezone", "field_too_long", "bad_time"]
    with central.engine.connect() as conn:
        stored = conn.execute(select(s.punches.c.device_user_id, s.punches.c.office_code)).all()
    assert sorted(stored) == [("1", OFFICE_A), ("7", OFFICE_A)]
    # Office B's gateway storing the same kind of punch gets office B, whatever the payload omits.
    r = central.ingest([punch("8", office_code=None, serial="SN2")], token=central.gw_b, batch_id="b9")
    assert r.json()["office_code"] == OFFICE_B


@pytest.mark.timeout(60)
def test_batch_claiming_another_office_is_forbidden_and_stores_nothing(central: Central) -> None:
    r = central.ingest([punch("1")], gateway={"office_code": OFFICE_B})
    assert r.status_code == 403 and r.json()["error"] == "office_forbidden"
    assert central.count() == 0


def _raw_post(central: Central, body: bytes, ctype: str = "application/json", **headers: str) -> Any:
    return central.client.post("/api/v1/ingest/punches", content=body,
                               headers={"Authorization": f"Bearer {central.gw_a}", "Content-Type": ctype, **headers})


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("case", "status", "code"), [
    ("not_json", 400, "bad_json"),
    ("json_list", 400, "bad_payload"),
    ("no_batch_id", 400, "bad_payload"),
    ("form_encoded", 415, "unsupported_media_type"),
    ("too_many", 413, "batch_too_large"),
    ("too_big", 413, "too_large"),
    ("gzip_bomb", 413, "too_large"),
    ("bad_gzip", 400, "bad_payload"),
])
def test_malformed_or_oversized_requests_get_a_clear_4xx_and_store_nothing(central: Central, case: str,
                                                                           status: int, code: str) -> None:
    good = punch("1")
    bodies: dict[str, tuple[bytes, str, dict[str, str]]] = {
        "not_json": (b'{"batch_id": "b1", "punches": [', "application/json", {}),
        "json_list": (b"[]", "application/json", {}),
        "no_batch_id": (json.dumps({"punches": [good]}).encode(), "application/json", {}),
        "form_encoded": (b"batch_id=b", "application/x-www-form-urlencoded", {}),
        "too_many": (json.dumps({"batch_id": "b", "punches": [punch(str(i)) for i in range(51)]}).encode(),
                     "application/json", {}),
        "too_big": (json.dumps({"batch_id": "b", "punches": [good], "pad": "x" * 70000}).encode(),
                    "application/json", {}),
        "gzip_bomb": (gzip.compress(json.dumps({"batch_id": "b", "punches": [good], "pad": " " * 2_000_000}).encode()),
                      "application/json", {"Content-Encoding": "gzip"}),
        "bad_gzip": (b"definitely not gzip", "application/json", {"Content-Encoding": "gzip"}),
    }
    body, ctype, headers = bodies[case]
    r = _raw_post(central, body, ctype, **headers)
    assert r.status_code == status, r.text
    assert r.json()["error"] == code and r.json()["message"]
    assert central.count() == 0


@pytest.mark.timeout(60)
def test_a_malformed_punch_is_rejected_alone_and_the_rest_of_its_batch_is_stored(central: Central) -> None:
    # Before: each of these made the whole batch a 400, so one bad punch blocked the office's queue.
    good = punch("1")
    bad = [{**punch("2"), "state": "in"}, {k: v for k, v in punch("3").items() if k != "device_serial"}, 5,
           {**punch("4"), "flags": 3}]
    r = central.ingest([good, *bad])
    assert r.status_code == 200, r.text
    res = r.json()["results"]
    assert [x["status"] for x in res] == ["accepted"] + ["rejected"] * 4
    assert [x["reason"] for x in res[1:]] == [
        "malformed: punches[1].state: must be an integer", "malformed: punches[2].device_serial: required",
        "malformed: punches[3]: must be an object", "malformed: punches[4].flags: must be a list of strings"]
    assert central.count() == 1


@pytest.mark.timeout(60)
def test_gzip_body_is_accepted(central: Central) -> None:
    body = gzip.compress(json.dumps({"batch_id": "gz", "punches": [punch("1"), punch("2")]}).encode())
    r = _raw_post(central, body, **{"Content-Encoding": "gzip"})
    assert r.status_code == 200 and r.json()["new"] == 2


@pytest.mark.timeout(60)
def test_missing_wrong_or_misused_tokens_are_refused(central: Central) -> None:
    url = "/api/v1/ingest/punches"
    doc = {"batch_id": "b", "punches": [punch("1")]}
    r = central.client.post(url, json=doc)
    assert r.status_code == 401 and "Bearer" in r.headers["www-authenticate"]
    assert central.client.post(url, json=doc, headers={"Authorization": "Bearer nope"}).status_code == 401
    assert central.client.post(url, json=doc, headers={"Authorization": "Basic Zm9vOmJhcg=="}).status_code == 401
    # A BKD (api) token cannot ingest, a gateway token cannot pull.
    assert central.client.post(url, json=doc, headers={"Authorization": f"Bearer {central.bkd_all}"}).status_code == 401
    assert central.get("/api/v1/punches", token=central.gw_a).status_code == 401
    assert central.client.get("/api/v1/punches").status_code == 401
    assert central.count() == 0


@pytest.mark.timeout(60)
def test_token_added_while_running_works_without_restart(central: Central, tmp_path: Path) -> None:
    new = add_token(tmp_path / "api.toml", "late", None, "api")
    assert central.get("/api/v1/punches", token=new).status_code == 200


# -- health ---------------------------------------------------------------------------------------------

@pytest.mark.timeout(60)
def test_device_health_from_gateways_makes_a_regency_wide_device_list(central: Central) -> None:
    post = central.client.post
    r = post("/api/v1/ingest/health", json={"gateway": {"hostname": "gw-a"}, "devices": [device_doc("lobby")]},
             headers={"Authorization": f"Bearer {central.gw_a}"})
    assert r.status_code == 200 and r.json() == {"office_code": OFFICE_A, "devices": 1, "rejected": []}
    r = post("/api/v1/ingest/health", json={"devices": [device_doc("lobby", serial="SN-B-lobby",
                                                                   health={"state": "offline",
                                                                           "consecutive_failures": 4})]},
             headers={"Authorization": f"Bearer {central.gw_b}"})
    assert r.status_code == 200
    # Second report from office A updates, does not duplicate.
    post("/api/v1/ingest/health", json={"devices": [device_doc("lobby", last_record_count=900)]},
         headers={"Authorization": f"Bearer {central.gw_a}"})
    items = central.get("/api/v1/devices").json()["items"]
    assert [(d["office_code"], d["device_id"], d["state"]) for d in items] == [
        (OFFICE_A, "lobby", "online"), (OFFICE_B, "lobby", "offline")]
    assert items[0]["last_record_count"] == 900 and items[0]["problems"]["clock_skew"]["severity"] == "warning"
    scoped = central.get("/api/v1/devices", token=central.bkd_a).json()["items"]
    assert [d["office_code"] for d in scoped] == [OFFICE_A]
    gws = central.get("/api/v1/gateways").json()["items"]
    assert {(g["name"], g["office_code"]) for g in gws} == {("gw-a", OFFICE_A), ("gw-b", OFFICE_B)}
    # A device that cannot be stored is rejected alone; the rest of the report is stored.
    bad = post("/api/v1/ingest/health", json={"devices": [device_doc("lobby", health={"state": "sleeping"}),
                                                          device_doc("hall")]},
               headers={"Authorization": f"Bearer {central.gw_a}"})
    assert bad.status_code == 200 and bad.json()["devices"] == 1
    assert [(x["index"], x["reason"].split(":")[0]) for x in bad.json()["rejected"]] == [(0, "malformed")]
    assert "health.state" in bad.json()["rejected"][0]["reason"]


# -- pull -----------------------------------------------------------------------------------------------

def _fill(central: Central) -> None:
    days = ["2026-11-02", "2026-11-03", "2026-11-04"]
    batch = [punch(u, f"{d} {h}", device=dev, serial=f"SN-{dev}")
             for d in days for u in ("1", "2", "3") for h, dev in (("07:1" + u + ":00", "lobby"),
                                                                    ("16:3" + u + ":00", "hall"))]
    assert central.ingest(batch, batch_id="fill-a").json()["new"] == 18
    b = [punch(u, f"{d} 08:00:00", serial="SN-B", office_code=OFFICE_B, device="main") for d in days for u in ("1",)]
    assert central.ingest(b, token=central.gw_b, batch_id="fill-b").json()["new"] == 3


@pytest.mark.timeout(60)
def test_cursor_feed_returns_every_punch_exactly_once_with_stable_opaque_cursors(central: Central) -> None:
    _fill(central)
    seen: list[tuple[str, str, str]] = []
    cursor = ""
    cursors = []
    for _ in range(20):
        r = central.get("/api/v1/punches", cursor=cursor, limit=4)
        assert r.status_code == 200
        doc = r.json()
        seen += [(i["device_serial"], i["device_user_id"], i["device_time"]) for i in doc["items"]]
        assert doc["next_cursor"] == r.headers["x-next-cursor"]
        cursors.append(doc["next_cursor"])
        cursor = doc["next_cursor"]
        if not doc["has_more"]:
            break
    assert len(seen) == 21 and len(set(seen)) == 21
    assert all(not c.isdigit() for c in cursors)
    # Nothing new: the same cursor comes back, and pulling again from the start repeats the same first page.
    again = central.get("/api/v1/punches", cursor=cursor).json()
    assert again["items"] == [] and again["next_cursor"] == cursor
    assert central.get("/api/v1/punches", limit=4).json()["next_cursor"] == cursors[0]
    central.ingest([punch("9", "2026-11-05 07:00:00")], batch_id="late")
    late = central.get("/api/v1/punches", cursor=cursor).json()["items"]
    assert [i["device_user_id"] for i in late] == ["9"]


@pytest.mark.timeout(60)
def test_feed_filters_and_scopes(central: Central) -> None:
    _fill(central)

    def users(**params: Any) -> list[tuple[str, str, str]]:
        token = params.pop("token", None)
        r = central.get("/api/v1/punches", token=token, **params)
        assert r.status_code == 200, r.text
        return [(i["office_code"], i["device_id"], i["device_user_id"]) for i in r.json()["items"]]

    assert len(users(office=OFFICE_B)) == 3
    assert {u[1] for u in users(device="hall")} == {"hall"} and len(users(device="hall")) == 9
    assert {u[2] for u in users(employee="NIP2")} == {"2"} and len(users(employee="NIP2")) == 6
    assert len(users(date="2026-11-03")) == 7
    assert len(users(**{"from": "2026-11-03", "to": "2026-11-04"})) == 14
    assert {u[0] for u in users(token=central.bkd_a)} == {OFFICE_A}
    r = central.get("/api/v1/punches", token=central.bkd_a, office=OFFICE_B)
    assert r.status_code == 403 and r.json()["error"] == "office_forbidden"
    for params in ({"cursor": "garbage!"}, {"cursor": "MTIz"}, {"limit": "0"}, {"limit": "x"}, {"format": "pdf"},
                   {"from": "2026-13-01"}, {"from": "2026-11-04", "to": "2026-11-01"}):
        r = central.get("/api/v1/punches", **params)
        assert r.status_code == 400, params
        assert r.json()["message"]


@pytest.mark.timeout(60)
def test_csv_and_xlsx_carry_the_same_rows_as_json(central: Central) -> None:
    _fill(central)
    js = central.get("/api/v1/punches", office=OFFICE_A).json()["items"]
    r = central.get("/api/v1/punches", office=OFFICE_A, format="csv")
    assert r.headers["content-type"].startswith("text/csv") and r.headers["x-next-cursor"]
    import csv

    rows = list(csv.DictReader(io.StringIO(r.content.decode("utf-8-sig"))))
    assert [(x["device_serial"], x["device_user_id"], x["device_time"]) for x in rows] == [
        (x["device_serial"], x["device_user_id"], x["device_time"]) for x in js]
    assert rows[0]["utc_time"] == js[0]["utc_time"]
    r = central.get("/api/v1/punches", office=OFFICE_A, format="xlsx")
    from openpyxl import load_workbook

    ws = load_workbook(io.BytesIO(r.content)).active
    values = list(ws.iter_rows(values_only=True))
    header = list(values[0])
    assert len(values) == 1 + len(js)
    assert values[1][header.index("device_time")] == js[0]["device_time"]
    assert values[1][header.index("employee_id")] == js[0]["employee_id"]


@pytest.mark.timeout(60)
def test_daily_recap_and_completeness_over_the_api(central: Central) -> None:
    _fill(central)
    central.client.post("/api/v1/ingest/health", json={"devices": [device_doc("lobby"), device_doc("hall"),
                                                                    device_doc("spare")]},
                        headers={"Authorization": f"Bearer {central.gw_a}"})
    r = central.get("/api/v1/recap/daily", office=OFFICE_A, date="2026-11-03")
    assert r.status_code == 200
    items = r.json()["items"]
    assert [(i["employee_id"], i["first_in"], i["last_out"], i["punches"]) for i in items] == [
        ("NIP1", "07:11:00", "16:31:00", 2), ("NIP2", "07:12:00", "16:32:00", 2), ("NIP3", "07:13:00", "16:33:00", 2)]
    assert central.get("/api/v1/recap/daily", office=OFFICE_A).status_code == 400
    assert central.get("/api/v1/recap/daily", **{"from": "2025-01-01", "to": "2026-11-01"}).status_code == 400
    rep = central.get("/api/v1/completeness", office=OFFICE_A, **{"from": "2026-11-02", "to": "2026-11-08"}).json()
    by_dev = {d["device_id"]: d for d in rep["devices"]}
    assert set(by_dev) == {"hall", "lobby", "spare"}
    # 2026-11-02 is a Monday: Mon-Wed reported, Thu-Fri missing, weekend not a working day.
    assert by_dev["lobby"]["days_reported"] == 3 and by_dev["lobby"]["missing_workdays"] == ["2026-11-05",
                                                                                           "2026-11-06"]
    assert by_dev["spare"]["punches"] == 0 and len(by_dev["spare"]["missing_workdays"]) == 5
    csv_body = central.get("/api/v1/completeness", office=OFFICE_A, format="csv",
                           **{"from": "2026-11-02", "to": "2026-11-03"}).content.decode("utf-8-sig")
    assert csv_body.splitlines()[0].endswith("2026-11-02,2026-11-03")
    assert central.get("/api/v1/completeness", token=central.bkd_a, office=OFFICE_B,
                       **{"from": "2026-11-02", "to": "2026-11-03"}).status_code == 403


@pytest.mark.timeout(60)
def test_a_broken_token_file_keeps_the_previous_tokens_and_is_logged_once(
        central: Central, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import gateway.central.tokens

    logs: list[dict[str, Any]] = []
    monkeypatch.setattr(gateway.central.tokens, "log", type("Rec", (), {
        "__getattr__": lambda self, level: lambda event, **kw: logs.append({"event": event, "level": level, **kw})})())
    (tmp_path / "api.toml").write_text("[[token]]\nname = 'half-written")
    for _ in range(3):
        assert central.get("/api/v1/devices").status_code == 200
    assert [e["event"] for e in logs].count("token file unreadable; keeping the previous tokens") == 1
    assert not any(central.bkd_all in json.dumps(e, default=str) for e in logs)


@pytest.mark.timeout(60)
def test_a_gateway_refused_again_and_again_is_logged_once_and_once_more_when_it_recovers(
        central: Central, monkeypatch: pytest.MonkeyPatch) -> None:
    import gateway.central.api

    logs: list[tuple[str, str, dict[str, Any]]] = []
    monkeypatch.setattr(gateway.central.api, "log", type("Rec", (), {
        "__getattr__": lambda self, level: lambda event, **kw: logs.append((level, event, kw))})())
    assert central.ingest([punch("1")], batch_id="ok-0").status_code == 200  # first contact: no line
    for i in range(4):
        assert central.ingest([punch("2")], batch_id=f"bad-{i}", gateway={"office_code": OFFICE_B}).status_code == 403
    assert central.ingest([punch("3")], batch_id="ok-1").status_code == 200
    assert central.ingest([punch("4")], batch_id="ok-2").status_code == 200
    assert [(lvl, ev, kw.get("problem")) for lvl, ev, kw in logs] == [
        ("warning", "api request refused", "office_forbidden"), ("info", "api client requests accepted again", None)]


@pytest.mark.timeout(60)
def test_a_replay_after_receipts_were_pruned_is_still_idempotent(central: Central) -> None:
    from datetime import UTC, datetime, timedelta

    first = central.ingest([punch("1"), punch("2")]).json()
    assert first["new"] == 2
    assert central.api.store.prune_receipts(datetime.now(UTC) + timedelta(seconds=1)) == 1
    again = central.ingest([punch("1"), punch("2")])
    assert again.status_code == 200 and "x-fpgw-replayed" not in again.headers
    assert again.json()["new"] == 0 and again.json()["duplicates"] == 2 and central.count() == 2

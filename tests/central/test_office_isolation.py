"""One office can never hide or erase another office's punches at the central (issue 8, item 1).

Through the HTTP API on SQLite and PostgreSQL: a punch is a duplicate only of the same office's punch, a
device serial belongs to the office that first reported it, a punch or health report for a serial bound to
another office is rejected per item with a reason and alerted once, and moving a terminal is an explicit,
recorded rebinding.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from gateway.store import schema as s
from gateway.store.central import CentralStore
from tests.support.central import OFFICE_A, OFFICE_B, Central, device_doc, make_central, punch
from tests.support.cli import run_cli
from tests.support.config import write_toml


@pytest.fixture
def central(db_url: str, tmp_path: Path) -> Iterator[Central]:
    c = make_central(db_url, tmp_path)
    c.api.alert_office = "9999"
    try:
        yield c
    finally:
        c.client.close()
        c.engine.dispose()


def _pull(central: Central, office: str) -> list[tuple[str, str, str, str]]:
    items = central.get("/api/v1/punches", office=office).json()["items"]
    return [(i["office_code"], i["device_serial"], i["device_user_id"], i["device_time"]) for i in items]


def _alerts(central: Central) -> list[dict[str, Any]]:
    with central.engine.connect() as conn:
        rows = conn.execute(select(s.alerts).where(s.alerts.c.problem == "serial_bound_elsewhere")
                            .order_by(s.alerts.c.id)).mappings().all()
    return [{**r, "details": json.loads(r["details"])} for r in rows]


B_PUNCH = {"serial": "SN-B", "office_code": OFFICE_B, "device": "main"}


@pytest.mark.timeout(60)
def test_another_office_sending_b_serial_first_cannot_hide_b_punch(central: Central) -> None:
    # Office B's terminal SN-B has reported here before (health at start-up, or earlier punches).
    r = central.client.post("/api/v1/ingest/health", json={"devices": [device_doc("main", serial="SN-B")]},
                            headers={"Authorization": f"Bearer {central.gw_b}"})
    assert r.status_code == 200 and r.json()["devices"] == 1
    # Office A's gateway sends a punch carrying B's serial first (misconfigured, or hostile)...
    forged = punch("7", "2026-11-02 07:31:05", serial="SN-B", device="main")
    r = central.ingest([forged, punch("8", serial="SN-A")], token=central.gw_a, batch_id="a1")
    assert r.status_code == 200, r.text
    res = r.json()["results"]
    assert res[0]["status"] == "rejected" and res[1]["status"] == "accepted"
    assert res[0]["reason"].startswith(f"serial_bound_elsewhere: serial SN-B belongs to office {OFFICE_B}")
    # ...and B's real punch with the same key still arrives as new (before: "accepted, duplicate").
    real = punch("7", "2026-11-02 07:31:05", **B_PUNCH)
    r = central.ingest([real], token=central.gw_b, batch_id="b1")
    assert r.json()["results"] == [{"index": 0, "status": "accepted", "duplicate": False}]
    assert _pull(central, OFFICE_B) == [(OFFICE_B, "SN-B", "7", "2026-11-02 07:31:05")]
    assert _pull(central, OFFICE_A) == [(OFFICE_A, "SN-A", "8", "2026-11-02 07:31:05")]
    # One gateway-wide alert at BKD, naming both offices; a retry of the same forgery does not re-alert.
    central.ingest([forged], token=central.gw_a, batch_id="a2")
    alerts = _alerts(central)
    assert len(alerts) == 1 and alerts[0]["office_code"] == "9999" and alerts[0]["severity"] == "critical"
    assert alerts[0]["details"]["seen"] == {"serial": "SN-B", "bound_to": OFFICE_B, "sender_office": OFFICE_A,
                                            "gateway": "gw-a", "reason": "serial_bound_elsewhere"}
    assert "rebind-device SN-B" in alerts[0]["message"]


@pytest.mark.timeout(60)
def test_a_squatted_serial_is_refused_to_its_real_office_until_bkd_rebinds_it(central: Central) -> None:
    # Office A sends B's brand-new terminal's punch before B ever reported it: A binds the serial first.
    forged = punch("7", "2026-11-02 07:31:05", serial="SN-B", device="main")
    assert central.ingest([forged], token=central.gw_a, batch_id="a1").json()["new"] == 1
    # B's real punch is refused with the reason (stays in B's outbox as rejected), never "duplicate".
    real = punch("7", "2026-11-02 07:31:05", **B_PUNCH)
    r = central.ingest([real, punch("9", **B_PUNCH)], token=central.gw_b, batch_id="b1").json()
    assert [x["status"] for x in r["results"]] == ["rejected", "rejected"]
    assert r["results"][0]["reason"].startswith(f"serial_bound_elsewhere: serial SN-B belongs to office {OFFICE_A}")
    assert _pull(central, OFFICE_B) == [] and len(_alerts(central)) == 1
    # BKD rebinds the serial to B (recorded); B's retry of the very same batch now stores both punches.
    store = CentralStore(central.engine)
    assert store.rebind_device("SN-B", OFFICE_B, by="bkd-admin", note="terminal of office B") == (OFFICE_A, OFFICE_B)
    r = central.ingest([real, punch("9", **B_PUNCH)], token=central.gw_b, batch_id="b1")
    assert r.status_code == 200 and r.headers.get("X-Fpgw-Replayed") is None
    assert [(x["status"], x.get("duplicate")) for x in r.json()["results"]] == [("accepted", False)] * 2
    assert sorted(_pull(central, OFFICE_B)) == [(OFFICE_B, "SN-B", "7", "2026-11-02 07:31:05"),
                                                (OFFICE_B, "SN-B", "9", "2026-11-02 07:31:05")]
    # A's earlier punch stays A's (never merged into B); A's next one for SN-B is refused.
    assert _pull(central, OFFICE_A) == [(OFFICE_A, "SN-B", "7", "2026-11-02 07:31:05")]
    r = central.ingest([punch("7", "2026-11-03 07:31:05", serial="SN-B")], token=central.gw_a, batch_id="a2")
    assert r.json()["results"][0]["reason"].startswith("serial_bound_elsewhere")
    [binding] = store.bindings("SN-B")
    assert (binding["office_code"], binding["previous_office_code"], binding["bound_by"], binding["note"]) == (
        OFFICE_B, OFFICE_A, "admin:bkd-admin", "terminal of office B")


@pytest.mark.timeout(60)
def test_a_health_report_for_a_serial_bound_elsewhere_is_rejected_alone(central: Central) -> None:
    assert central.ingest([punch("1", **B_PUNCH)], token=central.gw_b).json()["new"] == 1
    r = central.client.post("/api/v1/ingest/health",
                            json={"devices": [device_doc("lobby", serial="SN-A"), device_doc("main", serial="SN-B")]},
                            headers={"Authorization": f"Bearer {central.gw_a}"})
    assert r.status_code == 200 and r.json()["devices"] == 1
    [rej] = r.json()["rejected"]
    assert rej["index"] == 1 and rej["reason"].startswith(f"serial_bound_elsewhere: serial SN-B belongs to office "
                                                          f"{OFFICE_B}")
    items = central.get("/api/v1/devices").json()["items"]
    assert [(d["office_code"], d["device_id"], d["serial"]) for d in items] == [(OFFICE_A, "lobby", "SN-A")]
    assert len(_alerts(central)) == 1


@pytest.mark.timeout(60)
@pytest.mark.usefixtures("restore_logging")
def test_rebind_device_from_the_command_line_is_recorded(central: Central, db_url: str, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    assert central.ingest([punch("1", serial="SN-X")], token=central.gw_a).json()["new"] == 1
    cfg = str(write_toml({"site": {"office_code": "9999", "timezone": "Asia/Jakarta"}, "database": {"url": db_url},
                          "http": {"enabled": False}}, tmp_path / "central.toml"))
    code, out, _ = run_cli(capsys, "--config", cfg, "central", "rebind-device", "SN-X")
    assert code == 0 and f"serial SN-X: office {OFFICE_A}" in out and "by gateway:gw-a" in out
    code, out, _ = run_cli(capsys, "--config", cfg, "central", "rebind-device", "SN-X", "--office", OFFICE_B,
                           "--note", "moved, ticket 12", "--by", "admin-rina")
    assert code == 0 and f"now bound to office {OFFICE_B} (was: {OFFICE_A})" in out
    code, out, _ = run_cli(capsys, "--config", cfg, "central", "rebind-device", "SN-X")
    assert (f"office {OFFICE_B}" in out and "by admin:admin-rina" in out and f"before: office {OFFICE_A}" in out
            and "note: moved, ticket 12" in out)
    r = central.ingest([punch("2", serial="SN-X", office_code=OFFICE_B)], token=central.gw_b, batch_id="b2")
    assert r.json()["new"] == 1
    code, _, err = run_cli(capsys, "--config", cfg, "central", "rebind-device", "SN-X", "--office", "")
    assert code != 0 and "--office" in err

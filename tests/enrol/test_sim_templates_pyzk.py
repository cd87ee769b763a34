"""The simulator's template commands as pyzk 0.9 itself uses them (an independent client: the gateway's driver is
not involved): get_templates, get_user_template (command 88), save_user_template (upload + 110) and
delete_user_template (19), over TCP and UDP; a v9 terminal refuses v10 templates; capacity is enforced."""

from __future__ import annotations

from typing import Any

import pytest
from zk import ZK
from zk.finger import Finger
from zk.user import User

from tests.support.fleet import sim_spec


def connect(dev: Any, transport: str) -> Any:
    return ZK(dev.host, port=dev.port, timeout=5, ommit_ping=True, force_udp=transport == "udp").connect()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("transport", ["tcp", "udp"])
def test_pyzk_reads_and_writes_templates_on_the_simulator(fleet: Any, transport: str) -> None:
    dev = fleet.add(sim_spec("PYZK-T", users=20, records=0, templates_per_user=2))
    conn = connect(dev, transport)
    try:
        fingers = conn.get_templates()
        assert {(f.uid, f.fid): f.template for f in fingers} == {k: t.data for k, t in dev.templates().items()}
        one = conn.get_user_template(uid=3, temp_id=1)
        assert one.template == dev.templates()[(3, 1)].data  # pyzk dropped the trailing byte

        users = conn.get_users()
        ani = User(uid=99, name="Ani", privilege=0, password="12", group_id="1", user_id="77001")
        blob = bytes.fromhex("a1ca2c82") + bytes(range(256)) * 3
        conn.save_user_template(ani, [Finger(99, 4, 1, blob)])
        assert dev.templates()[(99, 4)].data == blob
        assert {u.user_id for u in dev.users()} == {u.user_id for u in users} | {"77001"}

        assert conn.delete_user_template(uid=99, temp_id=4)
        assert (99, 4) not in dev.templates()
    finally:
        conn.disconnect()


@pytest.mark.timeout(60)
def test_uploads_of_another_algorithm_or_beyond_capacity_are_refused(fleet: Any) -> None:
    nine = fleet.add(sim_spec("PYZK-9", users=2, records=0, fp_version=9, templates_cap=2))
    conn = connect(nine, "tcp")
    try:
        assert conn.get_fp_version() == 9
        conn.get_users()
        user = User(uid=1, name="A", privilege=0, user_id=nine.users()[0].user_id)
        with pytest.raises(Exception, match="Can't save utemp"):
            conn.save_user_template(user, [Finger(1, 0, 1, bytes.fromhex("a1ca2c82") + bytes(600))])
        v9 = b"SIM9" + bytes(400)
        conn.save_user_template(user, [Finger(1, 0, 1, v9), Finger(1, 1, 1, v9)])
        with pytest.raises(Exception, match="Can't save utemp"):
            conn.save_user_template(user, [Finger(1, 2, 1, v9)])  # a third template: capacity 2
        assert sorted(nine.templates()) == [(1, 0), (1, 1)]
    finally:
        conn.disconnect()


@pytest.mark.timeout(30)
def test_control_api_resets_a_terminal_and_swaps_in_a_blank_unit_of_another_algorithm(fleet: Any) -> None:
    from simulators.zk.control import ApiError, ControlClient, start_control_server

    dev = fleet.add(sim_spec("CTL-ENR", users=5, records=3, templates_per_user=1))
    client = ControlClient(start_control_server(fleet, 0).url)
    info = client.request("POST", "/devices/CTL-ENR/factory-reset")
    assert info["users"] == 0 and info["records"] == 0 and dev.templates() == {}
    with pytest.raises(ApiError, match="fp_version"):
        client.request("POST", "/devices/CTL-ENR/replace", {"fp_version": 0})
    info = client.request("POST", "/devices/CTL-ENR/replace", {"new_serial": "CTL-ENR9", "fp_version": 9})
    assert info["serial"] == "CTL-ENR9" and info["users"] == 0
    conn = connect(dev, "tcp")
    try:
        assert conn.get_fp_version() == 9 and conn.get_templates() == []
    finally:
        conn.disconnect()

"""ZkDriver's enrolment abilities against the simulator (TCP and UDP): what is read is what the terminal holds,
byte for byte; writes read back equal; the keypad is unlocked afterwards whatever happened; capacity and size
limits refuse instead of storing part of a table; the simulator's own enrolment behaviour (reset, replacement)."""

from __future__ import annotations

import time
from typing import Any

import pytest

from drivers.base import DriverError, EnrolledUser, ProtocolError, ReadsEnrolments, Template, WritesEnrolments
from drivers.zk.quirks import ZkQuirks
from tests.support.drivers import zk_driver_for
from tests.support.fleet import DRIVER_READY_PROFILES, profile_spec, sim_spec


def sim_truth(dev: Any) -> tuple[dict[str, tuple[int, str, int, int, str]], dict[tuple[int, int], bytes]]:
    users = {u.user_id: (u.uid, u.name, u.privilege, u.card, u.password) for u in dev.users()}
    return users, {k: t.data for k, t in dev.templates().items()}


def read(dev: Any, transport: str = "tcp", **kw: Any) -> Any:
    with zk_driver_for(dev, transport, **kw).connect(deadline=time.monotonic() + 30) as session:
        assert isinstance(session, ReadsEnrolments)
        return session.read_enrolments()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("transport", ["tcp", "udp"])
def test_read_enrolments_returns_every_user_and_template_byte_for_byte(fleet: Any, transport: str) -> None:
    dev = fleet.add(sim_spec("ENR-R", users=120, records=20, templates_per_user=2))
    got = read(dev, transport)
    users, templates = sim_truth(dev)
    assert {u.user_id: (u.uid, u.name, u.privilege, u.card, u.password) for u in got.users} == users
    assert {(t.uid, t.finger): t.data for t in got.templates} == templates and len(templates) == 240
    assert got.algorithm == 10 and got.user_layout == 72
    assert all(t.data.startswith(bytes.fromhex("a1ca2c82")) and 500 <= t.size <= 1600 for t in got.templates)
    assert dev.enabled


@pytest.mark.timeout(60)
@pytest.mark.parametrize("transport", ["tcp", "udp"])
def test_written_users_and_templates_read_back_equal(fleet: Any, transport: str) -> None:
    source = fleet.add(sim_spec("ENR-S", users=60, records=0, templates_per_user=2))
    blank = fleet.add(sim_spec("ENR-B", users=0, records=0))
    got = read(source, transport)
    with zk_driver_for(blank, transport).connect() as session:
        assert isinstance(session, WritesEnrolments)
        session.write_users(got.users)
        session.write_templates(got.templates, got.users)
    assert sim_truth(blank) == sim_truth(source)
    assert blank.enabled


@pytest.mark.timeout(60)
def test_a_full_template_store_refuses_the_upload_and_keeps_the_keypad_unlocked(fleet: Any) -> None:
    blank = fleet.add(sim_spec("ENR-CAP", users=0, records=0, templates_cap=3))
    users = [EnrolledUser(1, "1001", "Ani"), EnrolledUser(2, "1002", "Budi")]
    items = [Template(u.uid, f, 1, bytes.fromhex("a1ca2c82") + bytes(600)) for u in users for f in (0, 1)]
    with pytest.raises(DriverError), zk_driver_for(blank).connect() as session:
        session.write_users(users)
        session.write_templates(items, users)
    assert blank.templates() == {} and blank.enabled
    assert {u.user_id for u in blank.users()} == {"1001", "1002"}


@pytest.mark.timeout(60)
def test_a_template_table_beyond_the_download_limit_is_refused_not_read(fleet: Any) -> None:
    dev = fleet.add(sim_spec("ENR-BIG", users=100, records=0, templates_per_user=2))
    with pytest.raises(ProtocolError, match="download fingerprint templates failed"):
        read(dev, quirks=ZkQuirks(max_download_bytes=64 * 1024))
    assert dev.enabled


@pytest.mark.timeout(60)
def test_factory_reset_and_blank_replacement_of_another_algorithm(fleet: Any) -> None:
    dev = fleet.add(sim_spec("ENR-F", users=30, records=10, templates_per_user=1))
    dev.factory_reset()
    got = read(dev)
    assert got.users == () and got.templates == ()
    dev.replace_blank("ENR-F9", fp_version=9)
    got = read(dev)
    assert got.users == () and got.algorithm == 9
    # A v9 terminal refuses v10 templates (it could not match them): the upload fails, nothing is stored.
    user = EnrolledUser(1, "1001", "Ani")
    with pytest.raises(DriverError), zk_driver_for(dev).connect() as session:
        session.write_templates([Template(1, 0, 1, bytes.fromhex("a1ca2c82") + bytes(600))], [user])
    assert dev.templates() == {} and dev.enabled


def test_simulator_without_templates_reports_fingers_as_before() -> None:
    from simulators.zk import SimDevice

    dev = SimDevice(sim_spec("ENR-OLD", users=5, records=0, fingers=7))
    assert dev.sizes().fingers == 7 and dev.sizes().fingers_cap == 3000 and dev.templates() == {}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("profile", sorted(DRIVER_READY_PROFILES))
def test_backup_and_restore_work_on_every_driver_ready_profile(fleet: Any, profile: str) -> None:
    source = fleet.add(profile_spec(f"ENR-P-{profile}", profile, users=25, records=5, templates_per_user=2))
    blank = fleet.add(profile_spec(f"ENR-Q-{profile}", profile, users=0, records=0))
    transport = "tcp" if source.spec.tcp else "udp"
    got = read(source, transport)
    assert got.user_layout == source.spec.user_layout and len(got.templates) == 50
    with zk_driver_for(blank, transport).connect() as session:
        session.write_users(got.users)
        session.write_templates(got.templates, got.users)
    assert sim_truth(blank) == sim_truth(source)

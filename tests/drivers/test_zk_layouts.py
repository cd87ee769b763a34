"""ZkDriver end to end on the simulator: every record layout x user layout x transport x comm key
equals the truth file; the 8-byte uid mapping and its cache; live capture."""

from __future__ import annotations

import itertools
import time
from typing import Any

import pytest

from drivers.zk import ZkDriver, ZkQuirks
from drivers.zk.driver import _HookedZK
from tests.support.drivers import punch_key, zk_driver_for
from tests.support.fleet import add_sim_device, sim_truth

pytestmark = pytest.mark.timeout(60)

MATRIX = [
    pytest.param(rec, usr, tr, key, id=f"rec{rec}-user{usr}-{tr}-{'key' if key else 'nokey'}")
    for rec, usr, tr, key in itertools.product((8, 16, 40), (28, 72), ("tcp", "udp"), (0, 987654))
]


@pytest.mark.parametrize(("record_layout", "user_layout", "transport", "comm_key"), MATRIX)
def test_layout_matrix_equals_truth(
    fleet: Any, record_layout: int, user_layout: int, transport: str, comm_key: int
) -> None:
    dev = add_sim_device(
        fleet, record_layout=record_layout, user_layout=user_layout, comm_key=comm_key, records=700, users=40
    )
    drv = zk_driver_for(dev, transport, comm_key=comm_key)
    with drv.connect() as s:
        counts = s.counts()
        punches = s.read_punches()
        users = s.read_users()
    truth = sim_truth(fleet.truth_file, dev.serial)
    assert [punch_key(p) for p in punches] == truth
    assert counts.records == len(truth) == 700
    assert len(users) == counts.users == 40
    assert {p.user_id for p in punches} <= {u.user_id for u in users}
    if record_layout == 8:
        assert not any(p.user_id == str(p.uid) for p in punches if p.uid not in {u.uid for u in users})
    assert dev.enabled


def test_tcp_buffered_answers_large_log(fleet: Any) -> None:
    # > one 65472-byte chunk on TCP, several 16 KiB chunks on UDP.
    dev = add_sim_device(fleet, records=5000, tcp_buffered=True)
    for transport in ("tcp", "udp"):
        with zk_driver_for(dev, transport).connect() as s:
            punches = s.read_punches()
            assert s.bytes_read > 5000 * 40
        assert [punch_key(p) for p in punches] == sim_truth(fleet.truth_file, dev.serial)


# ---------------------------------------------------------------------------------------------
# 8-byte layout: uid -> user id through a cache kept on the driver
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def user_reads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts every 1503 user-table read pyzk performs for the driver (independent of ZkStats)."""
    calls: list[int] = []
    real = _HookedZK.prepare_dataset

    def counting(self: Any, command: int, fct: int = 0, ext: int = 0) -> Any:
        if fct == 5:  # FCT_USER
            calls.append(command)
        return real(self, command, fct, ext)

    monkeypatch.setattr(_HookedZK, "prepare_dataset", counting)
    return calls


def read(drv: ZkDriver) -> list[Any]:
    with drv.connect() as s:
        return s.read_punches()


@pytest.mark.parametrize("transport", ["tcp", "udp"])
def test_8_byte_user_cache_is_reused_while_user_count_is_unchanged(
    fleet: Any, transport: str, user_reads: list[int]
) -> None:
    dev = add_sim_device(fleet, record_layout=8, records=200, users=30)
    drv = zk_driver_for(dev, transport)
    assert [punch_key(p) for p in read(drv)] == sim_truth(fleet.truth_file, dev.serial)
    assert len(user_reads) == 1
    dev.add_punches(5)
    for _ in range(3):
        assert [punch_key(p) for p in read(drv)] == sim_truth(fleet.truth_file, dev.serial)
    assert len(user_reads) == 1, "user table re-downloaded although nothing changed"
    assert drv.stats.user_downloads == 1


@pytest.mark.parametrize("record_layout", [16, 40])
def test_16_and_40_byte_layouts_never_download_users(
    fleet: Any, record_layout: int, user_reads: list[int]
) -> None:
    dev = add_sim_device(fleet, record_layout=record_layout, records=100)
    drv = zk_driver_for(dev)
    for _ in range(2):
        read(drv)
    assert user_reads == []


def test_8_byte_cache_refreshes_when_user_count_changes(fleet: Any, user_reads: list[int]) -> None:
    from simulators.zk.protocol import User

    dev = add_sim_device(fleet, record_layout=8, records=50, users=10)
    drv = zk_driver_for(dev)
    read(drv)
    assert len(user_reads) == 1
    new_uid = max(u.uid for u in dev.users()) + 1
    dev.upsert_user(User(uid=new_uid, user_id="77001", name="Baru"))
    read(drv)
    assert len(user_reads) == 2
    read(drv)
    assert len(user_reads) == 2


def test_8_byte_cache_refreshes_on_unknown_uid(fleet: Any, user_reads: list[int]) -> None:
    from simulators.zk.protocol import User

    dev = add_sim_device(fleet, record_layout=8, records=50, users=10)
    drv = zk_driver_for(dev)
    read(drv)
    # Same user count, but one user replaced by a new one with a new uid who then punches.
    victim = dev.users()[-1]
    dev.delete_user(victim.uid)
    new_uid = max(u.uid for u in dev.users()) + 10
    dev.upsert_user(User(uid=new_uid, user_id="88002", name="Pengganti"))
    assert dev.user_count == 10
    dev.add_punches(3, user_id="88002")
    punches = read(drv)
    assert len(user_reads) == 2
    # The deleted user's earlier punches keep their user id: the cache remembered the uid.
    assert [punch_key(p) for p in punches] == sim_truth(fleet.truth_file, dev.serial)


def test_8_byte_without_user_downloads_falls_back_to_uid_and_says_so(
    fleet: Any, user_reads: list[int], caplog: pytest.LogCaptureFixture
) -> None:
    dev = add_sim_device(fleet, record_layout=8, records=20, users=5)
    drv = zk_driver_for(dev, quirks=ZkQuirks(read_users=False))
    with drv.connect() as s:
        punches = s.read_punches()
        unmapped = s.unmapped_uids
    assert user_reads == []
    assert all(p.user_id == str(p.uid) for p in punches)
    assert unmapped == {p.uid for p in punches}
    assert drv.stats.unmapped_punches == 20
    assert "not in the user table" in caplog.text


def test_cache_is_dropped_when_the_serial_changes(fleet: Any, user_reads: list[int]) -> None:
    dev = add_sim_device(fleet, serial="A1", record_layout=8, records=20, users=5)
    drv = zk_driver_for(dev)
    read(drv)
    dev.replace("B2")
    dev.add_punches(2)
    punches = read(drv)
    assert len(user_reads) == 2
    assert [punch_key(p) for p in punches] == sim_truth(fleet.truth_file, "B2")


# ---------------------------------------------------------------------------------------------
# Live capture
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["tcp", "udp"])
def test_live_punches_yield_events_and_stop_cleanly(fleet: Any, transport: str) -> None:
    dev = add_sim_device(fleet, records=10, users=10)
    drv = zk_driver_for(dev, transport)
    with drv.connect() as s:
        gen = s.live_punches(idle_timeout_s=0.3)
        assert next(gen) is None  # registered, nothing happened yet
        dev.add_punches(2)
        got = []
        deadline = time.monotonic() + 10
        for ev in gen:
            if ev is not None:
                got.append(ev.punch)
            if len(got) == 2 or time.monotonic() > deadline:
                break
        gen.close()
        # the session is usable again and sees the same punches in the log
        log = s.read_punches()
    assert [punch_key(p) for p in got] == sim_truth(fleet.truth_file, dev.serial)[-2:]
    assert [punch_key(p) for p in log[-2:]] == [punch_key(p) for p in got]
    assert dev.enabled


def test_stop_live_ends_the_generator(fleet: Any) -> None:
    dev = add_sim_device(fleet, records=5, users=5)
    drv = zk_driver_for(dev)
    with drv.connect() as s:
        events = []
        for ev in s.live_punches(idle_timeout_s=0.2):
            events.append(ev)
            s.stop_live()
        assert events == [None]
        assert s.counts().records == 5

"""ZkSession.read_punches_after (tail reads), info(clock=False) round trips, download progress.

Against the simulator on loopback: a tail read must return exactly the records the truth file added after
the known position, read only those bytes (plus the overlap record), and refuse (None) whenever it cannot
prove that the log still continues the earlier read.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from drivers.base import LogPosition, RawPunch, ReadsNewPunches
from drivers.zk import ZkDriver
from drivers.zk.driver import _ProgressReporter
from tests.support.drivers import punch_key, zk_driver_for
from tests.support.fleet import add_sim_device, sim_truth

CMD_EXIT = 1001


def full_read(drv: ZkDriver) -> list[RawPunch]:
    with drv.connect() as s:
        return s.read_punches()


def tail_read(drv: ZkDriver, known: LogPosition, progress: Any = None) -> tuple[list[RawPunch] | None, int]:
    """The tail read's answer and the wire bytes its session received."""
    with drv.connect() as s:
        assert isinstance(s, ReadsNewPunches)
        new = s.read_punches_after(known, progress)
        return new, s.bytes_read


def position(punches: list[RawPunch]) -> LogPosition:
    return LogPosition(len(punches), punches[-1])


@pytest.mark.timeout(60)
@pytest.mark.parametrize("transport", ["tcp", "udp"])
@pytest.mark.parametrize("layout", [8, 16, 40])
def test_tail_read_returns_exactly_the_new_records(fleet: Any, transport: str, layout: int) -> None:
    dev = add_sim_device(fleet, record_layout=layout, user_layout=28 if layout != 40 else 72, records=2000,
                         tcp_buffered=True)
    drv = zk_driver_for(dev, transport)
    before = full_read(drv)
    with drv.connect() as s:
        full_bytes = (s.read_punches(), s.bytes_read)[1]
    dev.add_punches(3)
    new, tail_bytes = tail_read(drv, position(before))
    assert new is not None
    truth = sim_truth(fleet.truth_file, dev.serial)
    assert [punch_key(p) for p in new] == truth[len(before):]
    assert len(new) == 3
    # Only the overlap record and the new ones were transferred, not the log.
    assert tail_bytes < full_bytes / 10
    assert dev.enabled
    assert drv.stats.tail_reads == 1 and drv.stats.tail_refused == 0


@pytest.mark.timeout(60)
def test_tail_read_with_nothing_new_is_empty_and_with_real_framing(fleet: Any) -> None:
    dev = add_sim_device(fleet, records=3000, profile="iclock880")  # 1008-byte DATA packets, counters
    drv = zk_driver_for(dev)
    before = full_read(drv)
    assert tail_read(drv, position(before))[0] == []
    dev.add_punches(2)
    new, _ = tail_read(drv, position(before))
    assert new is not None and [punch_key(p) for p in new] == sim_truth(fleet.truth_file, dev.serial)[-2:]


@pytest.mark.timeout(60)
def test_tail_read_of_a_direct_answer_slices_the_whole_dataset(fleet: Any) -> None:
    dev = add_sim_device(fleet, records=500)  # TCP 1503 answered directly with the whole dataset
    drv = zk_driver_for(dev)
    before = full_read(drv)
    dev.add_punches(4)
    new, _ = tail_read(drv, position(before))
    assert new is not None and [punch_key(p) for p in new] == sim_truth(fleet.truth_file, dev.serial)[-4:]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("transport", ["tcp", "udp"])
def test_cleared_or_rewritten_log_is_refused(fleet: Any, transport: str) -> None:
    dev = add_sim_device(fleet, records=400, tcp_buffered=True)
    drv = zk_driver_for(dev, transport)
    before = full_read(drv)
    dev.set_fault("log_cleared")
    assert tail_read(drv, position(before))[0] is None  # fewer records than known
    dev.add_punches(len(before) + 5)  # longer again, but other records at the overlap
    assert tail_read(drv, position(before))[0] is None
    assert drv.stats.tail_refused == 2
    assert dev.enabled
    # The full read the caller falls back to still works in the same way.
    assert [punch_key(p) for p in full_read(drv)] == [punch_key(p) for p in full_read(drv)]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("field", ["user_id", "time_text", "state", "verify", "raw_time"])
def test_overlap_record_mismatch_is_refused(fleet: Any, field: str) -> None:
    dev = add_sim_device(fleet, records=300, tcp_buffered=True)
    drv = zk_driver_for(dev)
    before = full_read(drv)
    dev.add_punches(1)
    last = before[-1]
    changed = {"user_id": last.user_id + "9", "time_text": last.time_text[:-1] + "9", "state": last.state + 1,
               "verify": last.verify + 1, "raw_time": last.raw_time + 1}[field]
    assert tail_read(drv, LogPosition(len(before), last._replace(**{field: changed})))[0] is None
    # The genuine position still works (nothing was lost by refusing).
    new = tail_read(drv, position(before))[0]
    assert new is not None and len(new) == 1


@pytest.mark.timeout(60)
def test_8_byte_overlap_compares_the_mapped_user_id(fleet: Any) -> None:
    dev = add_sim_device(fleet, record_layout=8, user_layout=28, records=300, tcp_buffered=True)
    drv = zk_driver_for(dev)
    before = full_read(drv)
    dev.add_punches(2)
    assert tail_read(drv, LogPosition(len(before), before[-1]._replace(user_id="someone else")))[0] is None
    new = tail_read(drv, position(before))[0]
    assert new is not None and [punch_key(p) for p in new] == sim_truth(fleet.truth_file, dev.serial)[-2:]


@pytest.mark.timeout(30)
def test_tail_read_needs_an_earlier_full_read_or_a_record_size(fleet: Any) -> None:
    dev = add_sim_device(fleet, records=100, tcp_buffered=True)
    first = full_read(zk_driver_for(dev))
    fresh = zk_driver_for(dev)  # never read this device: the record size is not decided
    assert tail_read(fresh, position(first))[0] is None
    assert tail_read(fresh, LogPosition(0, first[0]))[0] is None
    assert dev.enabled


@pytest.mark.timeout(90)
def test_tail_read_over_lossy_udp_with_comm_key(fleet: Any) -> None:
    dev = add_sim_device(fleet, records=3000, comm_key=4321, seed=3)
    drv = zk_driver_for(dev, "udp", comm_key=4321, timeout_s=5)
    before = full_read(drv)
    dev.add_punches(600)  # ~24 kB of new records: several chunks, some datagrams lost
    dev.set_fault("udp_loss", 0.05)
    try:
        new, _ = tail_read(drv, position(before))
    finally:
        dev.clear_fault("udp_loss")
    assert new is not None
    assert [punch_key(p) for p in new] == sim_truth(fleet.truth_file, dev.serial)[len(before):]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("transport", ["tcp", "udp"])
def test_steady_session_costs_three_round_trips(fleet: Any, transport: str) -> None:
    dev = add_sim_device(fleet, records=100)
    drv = zk_driver_for(dev, transport)

    def session(clock: bool) -> tuple[int, Any]:
        before = dev.requests_by_command.copy()
        with drv.connect() as s:
            info = s.info(clock=clock)
            s.counts()
        sent = dev.requests_by_command - before
        # Every other request was answered before the session ended; the goodbye is not awaited, so the
        # simulator may count it a moment later.
        give_up = time.monotonic() + 5
        while not sent[CMD_EXIT] and time.monotonic() < give_up:
            time.sleep(0.01)
            sent = dev.requests_by_command - before
        assert sent[CMD_EXIT] == 1  # goodbye is sent (its answer not awaited)
        return sum(sent.values()) - sent[CMD_EXIT], info

    first, info1 = session(clock=False)
    assert first > 3  # firmware, platform, name, MAC read once
    steady, info2 = session(clock=False)
    assert steady == 3  # CONNECT, ~SerialNumber, GET_FREE_SIZES
    assert (info2.firmware, info2.platform, info2.device_name, info2.mac) == \
        (info1.firmware, info1.platform, info1.device_name, info1.mac)
    assert info2.device_time is None and info2.firmware
    with_clock, info3 = session(clock=True)
    assert with_clock == steady + 5  # the static fields re-read, and the clock
    assert info3.device_time is not None
    assert drv.stats.info_cache_hits == 1


@pytest.mark.timeout(60)
def test_static_info_is_reread_when_the_serial_changes(fleet: Any) -> None:
    dev = add_sim_device(fleet, records=10)
    drv = zk_driver_for(dev)
    with drv.connect() as s:
        s.info(clock=False)
    dev.set_fault("replaced", "SIMNEW")
    before = sum(dev.requests_by_command.values())
    with drv.connect() as s:
        assert s.info(clock=False).serial == "SIMNEW"
    assert sum(dev.requests_by_command.values()) - before > 4


@pytest.mark.timeout(60)
@pytest.mark.parametrize("transport", ["tcp", "udp"])
def test_progress_is_reported_per_chunk_and_at_the_end(
    fleet: Any, transport: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_ProgressReporter, "INTERVAL_S", 0.0)  # report every chunk
    dev = add_sim_device(fleet, records=6000, tcp_buffered=True)
    drv = zk_driver_for(dev, transport)
    calls: list[tuple[int, int]] = []
    with drv.connect() as s:
        punches = s.read_punches(progress=lambda done, total: calls.append((done, total)))
    assert len(calls) >= 3  # 240 kB: several chunks on either transport
    assert calls[-1] == (len(punches), len(punches))
    assert all(total == len(punches) for _done, total in calls)
    assert [done for done, _ in calls] == sorted(done for done, _ in calls)
    dev.add_punches(700)
    tail: list[tuple[int, int]] = []
    new, _ = tail_read(drv, position(punches), lambda done, total: tail.append((done, total)))
    assert new is not None and tail[-1] == (700, 700)


@pytest.mark.timeout(60)
def test_a_failing_progress_callback_never_breaks_the_download(fleet: Any) -> None:
    dev = add_sim_device(fleet, records=3000, tcp_buffered=True)
    drv = zk_driver_for(dev)

    def broken(done: int, total: int) -> None:
        raise RuntimeError("progress display crashed")

    with drv.connect() as s:
        punches = s.read_punches(progress=broken)
    assert [punch_key(p) for p in punches] == sim_truth(fleet.truth_file, dev.serial)


def test_progress_reporter_throttles() -> None:
    calls: list[tuple[int, int]] = []
    rep = _ProgressReporter(lambda a, b: calls.append((a, b)), 10)
    for i in range(100):
        rep.update(i)  # all within the first 0.25 s
    rep.done(10)
    assert calls == [(10, 10)]


@pytest.mark.timeout(60)
def test_a_position_kept_without_uid_and_raw_time_still_gets_a_tail_read(fleet: Any) -> None:
    dev = add_sim_device(fleet, records=300, tcp_buffered=True)
    drv = zk_driver_for(dev)
    before = full_read(drv)
    dev.add_punches(2)
    last = before[-1]
    bare = RawPunch(last.user_id, last.time_text, last.local_time, last.state, last.verify)  # uid 0, raw_time -1
    new = tail_read(drv, LogPosition(len(before), bare))[0]
    assert new is not None and [punch_key(p) for p in new] == sim_truth(fleet.truth_file, dev.serial)[-2:]
    wrong_uid = last._replace(uid=last.uid + 1)
    assert tail_read(drv, LogPosition(len(before), wrong_uid))[0] is None

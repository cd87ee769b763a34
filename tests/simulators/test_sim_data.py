"""Generated users and punches: deterministic, office-like, compact; ground-truth file."""

from __future__ import annotations

import json
import re
import tracemalloc
from collections import Counter
from datetime import date, datetime
from pathlib import Path

import pytest

from simulators.zk import DeviceSpec, Fleet, SimDevice, read_truth
from simulators.zk import protocol as p
from simulators.zk.truth import TruthWriter

pytestmark = pytest.mark.timeout(60)


def make(**kw: object) -> SimDevice:
    kw.setdefault("serial", "GEN0001")
    return SimDevice(DeviceSpec(**kw))  # type: ignore[arg-type]


def test_same_spec_same_data() -> None:
    a = make(users=40, records=2000, seed=7, start_date=date(2025, 1, 6))
    b = make(users=40, records=2000, seed=7, start_date=date(2025, 1, 6))
    c = make(users=40, records=2000, seed=8, start_date=date(2025, 1, 6))
    assert a.punches() == b.punches() and a.users() == b.users()
    assert a.punches() != c.punches()


def test_users_look_like_an_indonesian_office() -> None:
    users72 = make(users=200, user_layout=72, record_layout=40).users()
    nip = re.compile(r"^(19[6-9]\d)(0[1-9]|1[0-2])(0[1-9]|[12]\d|3[01])(19|20)\d{2}(0[1-9]|1[0-2])[12]\d{3}$")
    assert all(nip.match(u.user_id) for u in users72), [u.user_id for u in users72[:5]]
    assert len({u.user_id for u in users72}) == 200
    assert all(0 < len(u.name) <= 23 for u in users72)
    users28 = make(users=200, user_layout=28, record_layout=40).users()
    assert all(u.user_id.isdigit() and int(u.user_id) < 2**32 for u in users28)
    assert all(0 < len(u.name) <= 7 for u in users28)
    # 16-byte records carry a u32 user id: numeric ids even with 72-byte users.
    assert all(u.user_id.isdigit() and len(u.user_id) <= 9 for u in make(record_layout=16).users())
    assert sum(1 for u in users72 if u.privilege == 14) >= 1


def test_punches_on_working_days_in_office_hours() -> None:
    dev = make(users=100, records=20_000, seed=3)
    rows = dev.punches()
    assert len(rows) == 20_000
    times = [datetime.strptime(r["time"], "%Y-%m-%d %H:%M:%S") for r in rows]
    assert all(t.weekday() < 5 for t in times)
    assert max(times).date() < dev.now().date()
    arrivals = [t for t, r in zip(times, rows, strict=True) if r["state"] == 0]
    leaves = [t for t, r in zip(times, rows, strict=True) if r["state"] == 1]
    assert all(7 <= t.hour < 9 and (t.hour, t.minute) <= (8, 30) for t in arrivals)
    assert all((15, 30) <= (t.hour, t.minute) < (17, 0) for t in leaves)
    states = Counter(r["state"] for r in rows)
    assert states[0] + states[1] > 0.9 * len(rows) and states[2] and states[4]
    verify = Counter(r["verify"] for r in rows)
    assert verify[1] > 0.6 * len(rows) and verify[15] and verify[4] and verify[3]
    assert times == sorted(times)  # the log is chronological


def test_no_user_punches_twice_in_one_second() -> None:
    dev = make(users=5, records=500)
    at = datetime(2025, 5, 5, 8, 0, 0)
    rows = dev.add_punches(40, at=at)  # more punches than users at the same instant
    keys = [(r["user_id"], r["time"]) for r in dev.punches()]
    assert len(keys) == len(set(keys))
    assert len(rows) == 40 and rows[0]["time"] == "2025-05-05 08:00:00"
    one = dev.users()[0].user_id
    again = dev.add_punches(3, at=at, user_id=one)
    assert [r["time"] for r in again] == [
        "2025-05-05 08:00:0" + str(i) for i in range(1, 4)] or len({r["time"] for r in again}) == 3


def test_start_date_and_default_history_window() -> None:
    dev = make(users=50, records=1000, start_date=date(2024, 7, 1))
    assert dev.punches()[0]["time"].startswith("2024-07-01")


def test_200k_log_is_compact() -> None:
    # Memory only: how fast it builds is benchmarks/bench_simulator.py's job (a timed test flakes under load).
    tracemalloc.start()
    dev = make(users=300, records=200_000, records_cap=250_000, seed=11)
    current, _peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert dev.record_count == 200_000
    assert current < 4_000_000, current  # ~8 bytes a record plus users
    ds = dev.dataset("attlog")
    assert len(ds) == 4 + 40 * 200_000
    assert dev.dataset("attlog") is ds  # cached until the log changes
    dev.add_punches(1)
    assert dev.dataset("attlog") is not ds


def test_truth_file_rows_and_reader(tmp_path: Path) -> None:
    path = tmp_path / "t" / "truth.jsonl"
    with Fleet(truth_path=path) as fleet:
        dev = fleet.add(DeviceSpec(serial="TRU0001", users=10, records=25, faults={"garbage_timestamps": 0.3}))
        rows = read_truth(path)
        assert len(rows) == 25
        assert [(r["user_id"], r["time"], r["state"], r["verify"]) for r in rows] == [
            (r["user_id"], r["time"], r["state"], r["verify"]) for r in dev.punches()]
        assert set(rows[0]) == {"serial", "user_id", "time", "state", "verify"}
        assert any(not p.is_valid_time(r["encoded_time"]) for r in dev.punches())
        line = path.read_text().splitlines()[0]
        assert json.loads(line)["serial"] == "TRU0001"
    w = TruthWriter(path)
    w.close()
    with pytest.raises(RuntimeError):
        w.write([{"a": 1}])


def test_dataset_cache_is_bounded() -> None:
    from simulators.zk.device import DatasetCache

    cache = DatasetCache(budget=100)
    cache.put((1, "attlog", 40, 1), b"a" * 60)
    cache.put((1, "attlog", 40, 2), b"b" * 60)  # same dataset, newer version: old one dropped
    assert cache.get((1, "attlog", 40, 1)) is None and cache.size == 60
    cache.put((2, "attlog", 40, 1), b"c" * 30)
    assert cache.size == 90
    cache.get((1, "attlog", 40, 2))  # most recently used now
    cache.put((3, "users", 72, 1), b"d" * 30)  # over budget: evict the least recently used
    assert cache.get((2, "attlog", 40, 1)) is None
    assert cache.get((1, "attlog", 40, 2)) == b"b" * 60 and cache.size == 90
    cache.put((4, "attlog", 40, 1), b"x" * 101)  # larger than the budget: not cached
    assert cache.get((4, "attlog", 40, 1)) is None

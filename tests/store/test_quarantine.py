"""The quarantine table keeps unreadable input with its reason, bounded, and counts it per device."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.store import quarantine as qmod
from gateway.store.db import create_db_engine, upgrade
from gateway.store.quarantine import QuarantinedInput, QuarantineRepo


@pytest.fixture()
def repo(tmp_path: Path) -> QuarantineRepo:
    engine = create_db_engine(f"sqlite:///{tmp_path / 'q.db'}")
    upgrade(engine)
    return QuarantineRepo(engine)


def test_kept_with_reason_and_counted(repo: QuarantineRepo) -> None:
    assert repo.add([QuarantinedInput("clock-1", "serial", "1\x002026-13-01", "no format matched", "/dev/ttyUSB0"),
                     QuarantinedInput("usb-2", "usb", "garbage", "bad date", "attlog.dat:7")]) == 2
    assert repo.counts() == {"clock-1": 1, "usb-2": 1}
    (row,) = repo.recent("clock-1")
    assert row.raw == "1\\x002026-13-01"  # NUL made visible, not refused by the database
    assert row.reason == "no format matched" and row.origin == "/dev/ttyUSB0" and row.source == "serial"
    assert row.received_at is not None and row.received_at.tzinfo is not None


def test_values_bounded(repo: QuarantineRepo) -> None:
    repo.add([QuarantinedInput("d", "a-very-long-source-name", "x" * 10_000, "r" * 2_000, "o" * 2_000)])
    (row,) = repo.recent("d")
    assert len(row.raw) == qmod.RAW_MAX and len(row.reason) == qmod.TEXT_MAX and len(row.origin) == qmod.TEXT_MAX
    assert len(row.source) == qmod.SOURCE_MAX


def test_table_trimmed_per_device_but_total_kept(repo: QuarantineRepo, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(qmod, "KEEP_PER_DEVICE", 5)
    for i in range(3):
        repo.add([QuarantinedInput("d", "serial", f"line {i}-{j}", "no format matched") for j in range(4)])
    repo.add([QuarantinedInput("other", "usb", "x", "bad")])
    assert repo.stored("d") == 5 and repo.stored("other") == 1
    assert repo.counts() == {"d": 12, "other": 1}
    assert repo.recent("d", limit=1)[0].raw == "line 2-3"

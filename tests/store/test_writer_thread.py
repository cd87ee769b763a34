"""The SQLite writer thread (gateway.store.db): what it keeps once a caller's work is committed."""

from __future__ import annotations

import gc
import time
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from gateway.store import db
from gateway.store.db import create_db_engine, upgrade, writer


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    eng = create_db_engine(f"sqlite:///{tmp_path / 'w.db'}")
    upgrade(eng)
    try:
        yield eng
    finally:
        eng.dispose()


class PollData:
    """Stands for what a poll hands the writer (its punches): only weak references are kept by the test."""


def holding(data: PollData) -> Callable[[object], bool]:
    """Work whose closure holds ``data``, as Store.save_poll's holds the poll's punches."""
    return lambda conn: data is not None


@pytest.mark.timeout(30)
def test_the_writer_thread_lets_go_of_committed_work_while_it_waits_for_more(
        engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    # Idle for longer than the test waits: only dropping the finished group frees the work, not the thread's end.
    monkeypatch.setattr(db._GroupCommitter, "IDLE_S", 20.0)
    data = PollData()
    gone = weakref.ref(data)
    assert writer(engine).run(holding(data)) is True
    del data
    committer = db._shared(engine).group
    assert committer is not None and committer._thread is not None
    thread = committer._thread
    try:
        for _ in range(100):
            gc.collect()
            if gone() is None:
                break
            time.sleep(0.05)
        assert gone() is None, "the writer thread still holds the committed work"
        assert thread.is_alive()  # waiting for more work, not ended
        assert writer(engine).run(lambda conn: conn.execute(text("SELECT 7")).scalar()) == 7
    finally:
        committer.IDLE_S = 0.0
        with committer._cond:
            committer._cond.notify_all()
        thread.join(5)
    assert not thread.is_alive()

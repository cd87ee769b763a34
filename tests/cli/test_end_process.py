"""`fpgw poll` as its own process ends through gateway.cli.main.end_process (no interpreter teardown): what a
normal exit does outside the process must still happen (exit code, flushed output and logs, atexit handlers,
non-daemon threads waited for, every punch committed). And the garbage collector is paused per poll only."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from tests.support.cli import run_cli
from tests.support.config import DeviceEntry, config_dict, write_toml
from tests.support.fleet import sim_spec, truth_keys
from tests.support.gateway import stored_keys

REPO = Path(__file__).resolve().parents[2]


def run_python(code: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO, capture_output=True, text=True,
                          timeout=30, env={**os.environ, "MARK": str(tmp_path / "atexit.txt")})


@pytest.mark.timeout(40)
def test_end_process_runs_atexit_handlers_flushes_output_and_keeps_the_exit_code(tmp_path: Path) -> None:
    res = run_python("""
        import atexit, os, sys
        from gateway.cli.main import end_process
        atexit.register(lambda: open(os.environ["MARK"], "w").write("ran"))
        sys.stdout.write("buffered, no newline")
        sys.stderr.write("on stderr")
        end_process(3)
        print("not reached")
        """, tmp_path)
    assert res.returncode == 3
    assert res.stdout == "buffered, no newline" and res.stderr == "on stderr"
    assert (tmp_path / "atexit.txt").read_text() == "ran"


@pytest.mark.timeout(40)
def test_end_process_leaves_the_exit_to_the_interpreter_while_another_thread_runs(tmp_path: Path) -> None:
    res = run_python("""
        import atexit, os, sys, threading, time
        from gateway.cli.main import end_process
        done = []
        worker = threading.Thread(target=lambda: (time.sleep(0.5), done.append(1)))
        worker.start()
        atexit.register(lambda: open(os.environ["MARK"], "w").write(f"worker done: {bool(done)}"))
        code = end_process(4)
        print(f"returned {code}")
        sys.exit(code)
        """, tmp_path)
    assert res.returncode == 4 and res.stdout == "returned 4\n"
    # The interpreter waited for the worker before the atexit handlers, as a normal exit does.
    assert (tmp_path / "atexit.txt").read_text() == "worker done: True"


@pytest.mark.timeout(60)
def test_fpgw_poll_process_stores_every_punch_and_prints_its_line_and_logs(fleet: Any, tmp_path: Path) -> None:
    sim = fleet.add(sim_spec("END-1", records=3000, seed=81))
    db_url = f"sqlite:///{tmp_path / 'fpgw.db'}"
    cfg = write_toml(config_dict(db_url, [DeviceEntry("lobby", sim)]), tmp_path / "config.toml")
    res = subprocess.run([sys.executable, "-m", "gateway.cli", "--config", str(cfg), "--log-format", "json",
                          "--log-level", "info", "poll", "lobby"], cwd=REPO, capture_output=True, text=True,
                         timeout=50)
    assert res.returncode == 0, res.stderr
    assert "lobby: ok serial=END-1 mode=full records=3000/200000 read=3000 new=3000" in res.stdout
    assert '"new punches stored"' in res.stderr  # the log line of the store, written before the exit
    assert stored_keys(db_url) == truth_keys(tmp_path / "truth.jsonl", ["END-1"])
    # The database was closed cleanly (its last connection checkpointed and removed the write-ahead log).
    assert not (tmp_path / "fpgw.db-wal").exists()


@pytest.mark.usefixtures("restore_logging")
@pytest.mark.timeout(60)
def test_fpgw_poll_pauses_the_garbage_collector_during_each_poll_only(
        fleet: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.polling.poller import DevicePoller

    sims = [fleet.add(sim_spec(f"GC-{i}", records=50, seed=90 + i)) for i in range(2)]
    db_url = f"sqlite:///{tmp_path / 'fpgw.db'}"
    cfg = write_toml(config_dict(db_url, [DeviceEntry(f"d{i}", sim) for i, sim in enumerate(sims)]),
                     tmp_path / "config.toml")
    seen: list[bool] = []
    real = DevicePoller.poll_once

    def poll_once(self: DevicePoller, device: Any) -> Any:
        seen.append(gc.isenabled())
        return real(self, device)

    monkeypatch.setattr(DevicePoller, "poll_once", poll_once)
    assert gc.isenabled()
    code, out, _ = run_cli(capsys, "--config", str(cfg), "poll", "--all")
    assert code == 0 and out.count(": ok serial=GC-") == 2
    assert seen == [False, False]  # off while each device is polled ...
    assert gc.isenabled()  # ... and on again afterwards

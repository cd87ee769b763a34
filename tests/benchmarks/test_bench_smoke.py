"""Every benchmark script still runs: each one once with tiny sizes, as a subprocess, checking it ends cleanly.

Benchmarks are not timed here (figures come from running them by hand, docs/benchmarks.md); this only keeps
them from rotting when the code they drive changes, which the type checker does not see (benchmarks/ is not
in mypy's files).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

#: script -> tiny arguments, and a phrase its output must contain (it got to its figures).
RUNS: dict[str, tuple[list[str], str]] = {
    "bench_driver.py": (["--quick"], "round trips"),
    "bench_poll.py": (["--quick"], "poll when nothing changed"),
    "bench_health.py": (["--quick"], "/metrics"),
    "bench_fleet.py": (["--quick"], "cold start"),
    "bench_store.py": (["--quick"], "duplicates/s"),
    "bench_simulator.py": (["--quick"], "simulator RSS"),
    "bench_forward.py": (["--quick"], "one punch per request"),
    "bench_push.py": (["--quick"], "uploads accepted per second"),
    "bench_enrol.py": (["--quick"], "keypad locked: full backup / incremental backup"),
    "bench_dashboard.py": (["--quick"], "dashboard / (whole regency)"),
    "bench_report.py": (["--quick"], "monthly report"),
    "bench_partitions.py": (["--quick"], "feed page of 1,000"),
    "bench_national.py": (["--quick"], "backlog (generated - accepted) at the end of the peak"),
}


#: Scripts that measure PostgreSQL too (they take the tests' throwaway server).
NEEDS_PG = {"bench_store.py", "bench_forward.py", "bench_enrol.py", "bench_dashboard.py", "bench_report.py",
            "bench_partitions.py", "bench_national.py"}


def test_every_benchmark_script_is_covered() -> None:
    assert sorted(RUNS) == sorted(p.name for p in (ROOT / "benchmarks").glob("bench_*.py"))


@pytest.mark.timeout(240)
@pytest.mark.parametrize("script", sorted(RUNS))
def test_benchmark_runs_with_tiny_sizes(script: str, request: pytest.FixtureRequest) -> None:
    args, marker = RUNS[script]
    env = dict(os.environ)
    if script in NEEDS_PG:
        env["GW_TEST_PG_URL"] = request.getfixturevalue("pg_server_url")
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=200)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    assert marker in res.stdout, res.stdout[-2000:]


@pytest.mark.timeout(240)
def test_run_all_merges_the_scripts_rows_into_one_table_and_json(tmp_path: Path) -> None:
    out = tmp_path / "all.json"
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run_all.py"), "--quick", "--only", "bench_health",
                          "--json", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=200)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    doc = json.loads(out.read_text(encoding="utf-8"))
    assert [s["script"] for s in doc["scripts"]] == ["bench_health"] and doc["failed"] == [] and doc["quick"]
    rows = doc["scripts"][0]["rows"]
    assert rows and all(r["ok"] is None for r in rows)  # quick: nothing judged
    assert "## all benchmarks (quick: verdicts not judged)" in res.stdout
    assert f"{len(rows)} rows from 1 scripts" in res.stdout
    unknown = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run_all.py"), "--only", "bench_nothing"],
                             cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert unknown.returncode == 2 and "no benchmark matches" in unknown.stderr

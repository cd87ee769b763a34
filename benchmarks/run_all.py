"""Run every benchmark script and print one table of goals, figures and verdicts (and one JSON file).

Where it sits: the one command behind docs/benchmarks.md. Each ``bench_*.py`` runs in its own process (a
benchmark must not inherit another's warm caches, threads or memory) with ``--json``; this merges them.

    .venv/bin/python benchmarks/run_all.py                      # full sizes: takes a while, loads both cores
    .venv/bin/python benchmarks/run_all.py --quick              # tiny sizes: proves every script runs (CI)
    .venv/bin/python benchmarks/run_all.py --only bench_store --json results.json

PostgreSQL rows need ``GW_TEST_PG_URL`` (a throwaway database; the scripts create and drop their tables).
Exit status: 0 when every script ran (a MISSED goal is reported, not an error), unless ``--strict``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.harness import Report, Row, machine

HERE = Path(__file__).resolve().parent


def scripts() -> list[Path]:
    return sorted(HERE.glob("bench_*.py"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes, no verdicts (CI)")
    ap.add_argument("--only", action="append", default=[], metavar="NAME",
                    help="run only this script (e.g. bench_store); repeatable")
    ap.add_argument("--json", metavar="PATH", help="write every row as JSON to PATH")
    ap.add_argument("--strict", action="store_true", help="exit 1 when a goal is missed")
    ap.add_argument("--timeout", type=float, default=3600.0, help="seconds allowed per script")
    args = ap.parse_args(argv)

    chosen = [p for p in scripts() if not args.only or p.stem in args.only or p.name in args.only]
    if not chosen:
        print(f"no benchmark matches {args.only}", file=sys.stderr)
        return 2
    documents, failed = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for path in chosen:
            out = Path(tmp) / f"{path.stem}.json"
            cmd = [sys.executable, str(path), "--json", str(out)] + (["--quick"] if args.quick else [])
            print(f"# {path.name} ...", flush=True)
            t0 = time.perf_counter()
            try:
                res = subprocess.run(cmd, timeout=args.timeout)
            except subprocess.TimeoutExpired:
                failed.append(f"{path.name}: timed out after {args.timeout:g} s")
                continue
            took = time.perf_counter() - t0
            if res.returncode != 0 or not out.exists():
                failed.append(f"{path.name}: exit status {res.returncode}")
                continue
            doc = json.loads(out.read_text(encoding="utf-8"))
            doc["seconds"] = round(took, 1)
            documents.append(doc)

    merged = Report("all benchmarks", quick=args.quick)
    for doc in documents:
        for r in doc["rows"]:
            merged.rows.append(Row(**r))
    merged.finish()
    missed = [r for r in merged.rows if r.ok is False]
    print(f"\n{len(merged.rows)} rows from {len(documents)} scripts; "
          f"{sum(r.ok is True for r in merged.rows)} goals met, {len(missed)} missed"
          + (" (quick run: not judged)" if args.quick else ""))
    for f in failed:
        print(f"FAILED {f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine(), "quick": args.quick, "scripts": documents,
                                               "failed": failed}, indent=2) + "\n", encoding="utf-8")
    if failed:
        return 1
    return 1 if args.strict and missed else 0


if __name__ == "__main__":
    raise SystemExit(main())

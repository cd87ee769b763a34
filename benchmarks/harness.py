"""What every benchmark script reports: rows of goal, measured value and verdict, as a table and as JSON.

Where it sits: imported by each ``benchmarks/bench_*.py`` (never by the product); ``benchmarks/run_all.py``
runs every script and merges their JSON. A row compares a figure with the goal of issue 14 (or a
script's own goal); ratios are measured against a baseline in the same run, because absolute figures on a
shared 2-core machine are noisy. ``--quick`` runs tiny sizes to prove a script still works: its verdicts
are printed as "n/a (quick)" because tiny sizes say nothing about speed.

    from benchmarks.harness import Report, bench_args
    args = bench_args(__doc__, extra=lambda ap: ap.add_argument("--records", type=int, default=100_000))
    report = Report("bench_poll", quick=args.quick)
    report.at_most("poll.first.100k.wall_s", "first poll of a 100k log, wall", measured=1.7, goal=2.0, unit="s")
    report.finish(args.json)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


@dataclass
class Row:
    """One measured figure against its goal."""

    #: Stable dotted key, e.g. ``download.vs_pyzk.40.200k`` (the JSON is compared across runs by it).
    key: str
    #: What was measured, in words a reader of docs/benchmarks.md understands.
    what: str
    measured: float
    unit: str
    #: ">=" or "<=" against ``goal``; "" for a figure that is reported without a goal.
    op: str = ""
    goal: float | None = None
    #: True/False against the goal; None in --quick runs and for figures without a goal.
    ok: bool | None = None
    #: Baseline figures, sizes, anything that explains the number.
    detail: str = ""

    def goal_text(self) -> str:
        if self.goal is None or not self.op:
            return "-"
        return f"{'≥' if self.op == '>=' else '≤'} {_num(self.goal)}{_unit(self.unit)}"

    def verdict_text(self, quick: bool) -> str:
        if self.ok is None:
            return "n/a (quick)" if quick and self.op else "-"
        return "MET" if self.ok else "MISSED"


def _num(x: float) -> str:
    if x == 0:
        return "0"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    if abs(x) >= 100:
        return f"{x:.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    if abs(x) >= 0.01:
        return f"{x:.2f}"
    return f"{x:.2g}"


def _unit(unit: str) -> str:
    return unit if unit in ("x", "×", "%") else f" {unit}" if unit else ""


@dataclass
class Report:
    """Collects a script's rows; ``finish`` prints the table and writes the JSON."""

    script: str
    quick: bool = False
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def figure(self, key: str, what: str, measured: float, unit: str, detail: str = "") -> Row:
        """A figure reported without a goal (a baseline, a context value)."""
        row = Row(key, what, float(measured), unit, detail=detail)
        self.rows.append(row)
        return row

    def at_least(self, key: str, what: str, *, measured: float, goal: float, unit: str, detail: str = "") -> Row:
        row = Row(key, what, float(measured), unit, ">=", float(goal),
                  None if self.quick else measured >= goal, detail)
        self.rows.append(row)
        return row

    def at_most(self, key: str, what: str, *, measured: float, goal: float, unit: str, detail: str = "") -> Row:
        row = Row(key, what, float(measured), unit, "<=", float(goal),
                  None if self.quick else measured <= goal, detail)
        self.rows.append(row)
        return row

    def note(self, text: str) -> None:
        self.notes.append(text)

    def table(self) -> str:
        head = ("what", "goal", "measured", "verdict", "detail")
        body = [(r.what, r.goal_text(), f"{_num(r.measured)}{_unit(r.unit)}", r.verdict_text(self.quick), r.detail)
                for r in self.rows]
        widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)]
        widths[-1] = len(head[-1])  # the detail column is last and not padded
        lines = ["| " + " | ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)) + " |",
                 "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
        lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(b, widths, strict=True)) + " |" for b in body]
        return "\n".join(lines)

    def document(self) -> dict[str, Any]:
        return {"script": self.script, "quick": self.quick, "at": datetime.now(UTC).isoformat(timespec="seconds"),
                "machine": machine(), "rows": [asdict(r) for r in self.rows], "notes": self.notes}

    def finish(self, json_path: str | None = None) -> None:
        print(f"\n## {self.script}{' (quick: verdicts not judged)' if self.quick else ''}\n")
        print(self.table())
        for n in self.notes:
            print(f"  note: {n}")
        if json_path:
            Path(json_path).write_text(json.dumps(self.document(), indent=2) + "\n", encoding="utf-8")


def machine() -> dict[str, Any]:
    """The machine the figures come from (docs/benchmarks.md prints it)."""
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_mb = 0
    try:
        mem_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
    except (ValueError, OSError):
        pass
    return {"cpus": os.cpu_count(), "cpu": cpu, "memory_mb": mem_mb, "python": sys.version.split()[0],
            "platform": platform.platform()}


def bench_args(doc: str | None, extra: Callable[[argparse.ArgumentParser], object] | None = None,
               argv: list[str] | None = None) -> argparse.Namespace:
    """The common options: ``--quick`` (tiny sizes, no verdicts) and ``--json PATH``."""
    ap = argparse.ArgumentParser(description=(doc or "").strip().splitlines()[0] if doc else None,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="tiny sizes: proves the script runs; timing verdicts are not judged")
    ap.add_argument("--json", metavar="PATH", help="also write the rows as JSON to PATH")
    if extra is not None:
        extra(ap)
    return ap.parse_args(argv)


@contextmanager
def migrated_database(kind: str, sqlite_file: Path) -> Iterator[str]:
    """A fresh database migrated to the head, as a URL: a throwaway PostgreSQL database on the server of
    GW_TEST_PG_URL (dropped afterwards) when ``kind`` is "postgresql", else the SQLite file ``sqlite_file``."""
    from contextlib import ExitStack

    from gateway.store.db import create_db_engine, upgrade

    with ExitStack() as stack:
        if kind == "postgresql":
            from tests.support.pg import fresh_database

            url = stack.enter_context(fresh_database(os.environ["GW_TEST_PG_URL"], prefix="fpgw_bench"))
        else:
            url = f"sqlite:///{sqlite_file}"
        engine = create_db_engine(url, pool_size=1)
        upgrade(engine)
        engine.dispose()
        yield url

"""Compatibility table: every simulator profile x (pyzk, our driver, node-zklib, zkteco-js) x TCP/UDP.

Each cell is one small device (profile, one transport) and one client doing connect + read sizes + download
of the attendance log, checked against the device's own log. The outcome class (ok / partial / fail / n/a)
of every cell must match docs/simulator-compat.md; ``GW_WRITE_COMPAT=1`` rewrites that file from what was
measured (the reasons in it are informative; only the classes are compared, so timing-worded reasons do
not make the test flaky). Expected failures are recorded, not hidden: that is the point of the table.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from zk import ZK

from drivers import get_driver
from simulators.zk import DeviceSpec, Fleet, SimDevice
from simulators.zk.profiles import PROFILES
from tests.support.fleet import DRIVER_READY_PROFILES, profile_spec
from tests.support.services import REQUIRE_JS, unavailable

pytestmark = pytest.mark.timeout(600)

ROOT = Path(__file__).resolve().parents[2]
TABLE = ROOT / "docs" / "simulator-compat.md"
JS = Path(__file__).resolve().parent / "js"
NODE = shutil.which("node")
CLIENTS = ("pyzk", "driver", "node-zklib", "zkteco-js")
CLIENT_TITLES = {"pyzk": "pyzk 0.9", "driver": "our driver (drivers.zk)", "node-zklib": "node-zklib 1.3.0",
                 "zkteco-js": "zkteco-js 1.7.2"}
TRANSPORTS = ("tcp", "udp")
USERS, RECORDS = 8, 60  # 2,404-byte attendance set: three 1008-byte TCP packets, three UDP datagrams
CELL_TIMEOUT_S = 90
#: Rows: every profile, then option variants worth a line of their own (label, DeviceSpec overrides).
ROWS: list[tuple[str, dict[str, Any]]] = [(name, {"profile": name}) for name in PROFILES] + [
    # the simulator's original UDP framing (session id in every datagram), still an option (docs/simulator.md)
    ("generic + udp_framing=session", {"udp_framing": "session"}),
    # real TCP framing with a pause between packets (issue 9: larger gaps worked for pyzk)
    ("k40 + tcp_packet_gap_ms=60", {"profile": "k40", "tcp_packet_gap_ms": 60}),
    # stress: every byte its own TCP segment
    ("generic + tcp_write_size=1", {"tcp_write_size": 1}),
]


@dataclass(frozen=True)
class _Target:
    """A drivers.base.DeviceTarget for one simulated device."""

    address: str
    port: int
    transport: str
    comm_key: int = 0
    timeout_s: float = 1.0
    serial: str | None = None
    quirks: dict[str, Any] = field(default_factory=dict)


def _clean(text: str) -> str:
    """Addresses and ports vary per run; the table must not."""
    text = re.sub(r"(tcp|udp)://[\d.]+(:\d+)?: ", "", text)
    return re.sub(r"\d+\.\d+\.\d+\.\d+(:\d+)?", "<addr>", text).replace("|", "/")


def _short(exc: BaseException) -> str:
    text = _clean(str(exc).strip().splitlines()[0] if str(exc).strip() else "")
    text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text[:100]


def _judge(got: list[tuple[str, str]], want: list[tuple[str, str]]) -> str:
    """ok when every record came back with its user id and time; partial/fail with what is wrong."""
    if got == want:
        return "ok"
    if not got:
        return f"fail: no records (device holds {len(want)})"
    if sorted(t for _, t in got) == sorted(t for _, t in want):
        return "partial: times right, user ids differ"
    same = len(set(got) & set(want))
    return f"partial: {same} of {len(want)} records right ({len(got)} returned)"


def _expected(dev: SimDevice) -> list[tuple[str, str]]:
    return [(r["user_id"], r["time"]) for r in dev.punches()]


def _run_pyzk(dev: SimDevice, transport: str) -> str:
    zk = ZK(dev.host, port=dev.port, timeout=2, force_udp=transport == "udp", ommit_ping=True)
    conn = None
    try:
        conn = zk.connect()
        conn.read_sizes()
        atts = conn.get_attendance()
        got = [(str(a.user_id), a.timestamp.strftime("%Y-%m-%d %H:%M:%S")) for a in atts]
    except Exception as e:  # every failure is an outcome here
        return f"fail: {_short(e)}"
    finally:
        if conn is not None:
            try:
                conn.disconnect()
            except Exception:
                pass  # a failed EXIT does not change the outcome
    return _judge(got, _expected(dev))


def _run_driver(dev: SimDevice, transport: str) -> str:
    driver = get_driver("zk")(_Target(dev.host, dev.port, transport))
    try:
        with driver.connect() as session:
            session.counts()
            got = [(p.user_id, p.time_text) for p in session.read_punches()]
    except Exception as e:
        return f"fail: {_short(e)}"
    return _judge(got, _expected(dev))


def _run_js(lib: str, dev: SimDevice) -> str:
    assert NODE is not None
    try:
        res = subprocess.run([NODE, "client.js", lib, dev.host, str(dev.port), "download"], cwd=JS,
                             capture_output=True, text=True, timeout=60, env={**os.environ, "TZ": "UTC"})
    except subprocess.TimeoutExpired:
        return "fail: client hung (60 s)"
    lines = res.stdout.strip().splitlines()
    if not lines:
        return f"fail: no output (exit {res.returncode})"
    out = json.loads(lines[-1])
    if "error" in out:
        return "fail: " + _clean(str(out["error"]))[:100]
    got = [(str(r["userId"]), r["time"]) for r in out.get("records", [])]
    return _judge(got, _expected(dev))


def _cell(fleet: Fleet, n: int, row: str, transport: str, client: str) -> str:
    overrides = dict(ROWS)[row]
    settings = PROFILES[overrides.get("profile", "generic")].settings
    if not settings.get(transport, True):
        return f"n/a: the model has no {transport.upper()}"
    # One device per cell (parallel cells never share a session); short numeric PINs as most units use.
    dev = fleet.add(DeviceSpec(serial=f"CM{n:04d}", tcp=transport == "tcp", udp=transport == "udp",
                               users=USERS, records=RECORDS, seed=500 + n, user_ids="numeric", **overrides))
    try:
        if client == "pyzk":
            return _run_pyzk(dev, transport)
        if client == "driver":
            return _run_driver(dev, transport)
        return _run_js(client, dev)
    finally:
        fleet.remove(dev.serial)


def _measure(fleet: Fleet) -> dict[tuple[str, str, str], str]:
    cells = [(row, t, c) for row, _ in ROWS for t in TRANSPORTS for c in CLIENTS]
    with ThreadPoolExecutor(max_workers=8, thread_name_prefix="compat") as pool:
        futures = {cell: pool.submit(_cell, fleet, i, *cell) for i, cell in enumerate(cells)}
        out = {}
        for cell, fut in futures.items():
            try:
                out[cell] = fut.result(timeout=CELL_TIMEOUT_S * 4)
            except Exception as e:
                out[cell] = f"fail: {_short(e)}"
    return out


def _render(results: dict[tuple[str, str, str], str]) -> str:
    lines = [
        "# Simulator compatibility table",
        "",
        "Generated by `tests/simulators/test_compat_matrix.py` — do not edit by hand. Regenerate with",
        "`GW_WRITE_COMPAT=1 .venv/bin/python -m pytest -q tests/simulators/test_compat_matrix.py`; without the",
        "variable the test fails when a cell's outcome (ok / partial / fail / n/a) differs from this file.",
        "",
        f"Each cell: one simulated device of that profile listening only on that transport ({USERS} users,",
        f"{RECORDS} attendance records, numeric PINs), one client doing connect + read sizes + download of",
        "the log, compared with the device's own log. *ok* = every record with its user id and time;",
        "*partial* = records came back but not all right; *fail* = no usable answer (first line of the error).",
        "zkteco-js never falls back to UDP and node-zklib uses UDP only when TCP is refused (docs/simulator.md).",
        "Profiles are described in docs/simulator.md, \"Profiles\"; the last rows are option variants.",
        "",
        "| profile | transport | " + " | ".join(CLIENT_TITLES[c] for c in CLIENTS) + " |",
        "|---|---|" + "---|" * len(CLIENTS),
    ]
    for row, _ in ROWS:
        for t in TRANSPORTS:
            lines.append(f"| {row} | {t.upper()} | " + " | ".join(results[(row, t, c)] for c in CLIENTS) + " |")
    return "\n".join(lines) + "\n"


def _classes(markdown: str) -> dict[tuple[str, str, str], str]:
    out = {}
    for line in markdown.splitlines():
        cols = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cols) == 2 + len(CLIENTS) and cols[0] in dict(ROWS) and cols[1].lower() in TRANSPORTS:
            for c, text in zip(CLIENTS, cols[2:], strict=True):
                out[(cols[0], cols[1].lower(), c)] = text.split(":", 1)[0]
    return out


@pytest.fixture
def js_available() -> None:
    if NODE is None:
        unavailable("node is not installed", REQUIRE_JS)
    if not all((JS / "node_modules" / lib).is_dir() for lib in ("node-zklib", "zkteco-js")):
        unavailable("JS clients not installed: run `npm ci --prefix tests/simulators/js`", REQUIRE_JS)


def test_compat_table_matches_measurement(fleet: Fleet, js_available: None,
                                          caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("ERROR")  # the failing cells log plenty; the table is the record
    results = _measure(fleet)
    text = _render(results)
    if os.environ.get("GW_WRITE_COMPAT") == "1":
        TABLE.write_text(text, encoding="utf-8")
        return
    assert TABLE.exists(), f"{TABLE} missing: run with GW_WRITE_COMPAT=1 to create it"
    committed = _classes(TABLE.read_text(encoding="utf-8"))
    measured = _classes(text)
    # Eight cells at once on a busy 2-core machine can run a client into its own fixed timeouts; a cell that
    # differs is measured once more alone before it counts (the table is about protocol, not about load).
    for i, cell in enumerate(k for k in measured if committed.get(k) != measured[k]):
        results[cell] = _cell(fleet, 9500 + i, *cell)
        measured[cell] = results[cell].split(":", 1)[0]
    diff = {k: (committed.get(k), results[k]) for k in measured if committed.get(k) != measured[k]}
    assert not diff, ("outcomes differ from docs/simulator-compat.md (committed class, measured): "
                      + "; ".join(f"{'/'.join(k)}: {v}" for k, v in sorted(diff.items())))


def test_generic_profile_works_for_every_client_on_tcp(fleet: Fleet, js_available: None) -> None:
    """The baseline the other rows are read against: the default simulator serves every client on TCP."""
    outcomes: dict[str, Callable[[], str]] = {c: (lambda c=c: _cell(fleet, 9000 + CLIENTS.index(c), "generic",
                                                                    "tcp", c)) for c in CLIENTS}
    assert {c: f() for c, f in outcomes.items()} == dict.fromkeys(CLIENTS, "ok")


@pytest.mark.parametrize("profile", list(DRIVER_READY_PROFILES))
def test_driver_ready_profiles_are_read_by_the_driver_today(fleet: Fleet, profile: str) -> None:
    """The mix the demo office and the test fleet use: our driver reads every one on every transport it has."""
    for transport in TRANSPORTS:
        if not PROFILES[profile].settings.get(transport, True):
            continue  # the model lacks this transport (x100c: UDP only)
        spec = profile_spec(f"DR-{profile}-{transport}", profile, tcp=transport == "tcp",
                            udp=transport == "udp", users=USERS, records=150, user_ids="numeric")
        dev = fleet.add(spec)
        assert _run_driver(dev, transport) == "ok", (profile, transport)

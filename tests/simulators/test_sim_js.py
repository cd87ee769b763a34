"""Independent clients: node-zklib 1.3.0 and zkteco-js 1.7.2 (npm) against the simulator.

Needs node and ``npm ci --prefix tests/simulators/js``; skipped otherwise, or failed when GW_REQUIRE_JS=1
(CI sets it).
They read the transport's profile (§3.7): TCP = 72-byte users, 40-byte records with user
ids of at most 9 characters; UDP (node-zklib only, TCP refused) = 28-byte users, 16-byte
records.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from simulators.zk import SimDevice
from tests.support.services import REQUIRE_JS, unavailable

JS = Path(__file__).resolve().parent / "js"
NODE = shutil.which("node")

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(autouse=True)
def _js_clients() -> None:
    """node and both npm clients, or skip (fail with GW_REQUIRE_JS=1)."""
    if NODE is None:
        unavailable("node is not installed", REQUIRE_JS)
    if not all((JS / "node_modules" / lib).is_dir() for lib in ("node-zklib", "zkteco-js")):
        unavailable("JS clients not installed: run `npm ci --prefix tests/simulators/js`", REQUIRE_JS)


def _env() -> dict[str, str]:
    # The libraries build local-time Dates from the device wall clock; UTC keeps them equal.
    return {**os.environ, "TZ": "UTC"}


def run_js(lib: str, dev: SimDevice, mode: str = "download") -> dict[str, Any]:
    assert NODE is not None
    res = subprocess.run([NODE, "client.js", lib, dev.host, str(dev.port), mode], cwd=JS,
                         capture_output=True, text=True, timeout=90, env=_env())
    lines = res.stdout.strip().splitlines()
    assert lines, res.stderr
    out = json.loads(lines[-1])
    assert "error" not in out, (out, res.stderr[-2000:])
    return out


def expected_records(dev: SimDevice, *, udp: bool) -> list[dict[str, Any]]:
    rows = []
    for r in dev.punches():
        if udp:  # node-zklib UDP reads the low 16 bits of the u32 user id
            rows.append({"userId": str(int(r["user_id"]) & 0xFFFF), "time": r["time"]})
        else:
            rows.append({"userId": r["user_id"], "time": r["time"]})
    return rows


@pytest.mark.parametrize("lib", ["node-zklib", "zkteco-js"])
@pytest.mark.parametrize("buffered", [False, True], ids=["direct", "buffered"])
def test_js_clients_download_over_tcp(add_device: Callable[..., SimDevice], lib: str,
                                      buffered: bool) -> None:
    dev = add_device(users=120, records=3000, user_ids="numeric", tcp_buffered=buffered,
                     record_layout=40, user_layout=72)
    out = run_js(lib, dev)
    assert out["transport"] == "tcp"
    assert out["info"] == {"userCounts": 120, "logCounts": 3000, "logCapacity": 200_000}
    assert out["users"] == [{"uid": u.uid, "name": u.name, "userId": u.user_id, "role": u.privilege}
                            for u in dev.users()]
    got = [{"userId": r["userId"], "time": r["time"]} for r in out["records"]]
    assert got == expected_records(dev, udp=False)
    if lib == "zkteco-js":
        assert [(r["state"], r["type"]) for r in out["records"]] == [
            (r["state"], r["verify"]) for r in dev.punches()]
        assert out["serial"] == dev.serial
        assert out["firmware"].rstrip("\0") == dev.spec.firmware
        assert (out["platform"], out["deviceName"]) == (dev.spec.platform, dev.spec.device_name)


def test_node_zklib_falls_back_to_udp_when_tcp_is_refused(
        add_device: Callable[..., SimDevice]) -> None:
    dev = add_device(users=300, records=20_000, tcp=False, record_layout=16, user_layout=28)
    out = run_js("node-zklib", dev)
    assert out["transport"] == "udp"
    assert [(u["uid"], u["userId"], u["name"]) for u in out["users"]] == [
        (u.uid, u.user_id, u.name) for u in dev.users()]
    assert [{"userId": r["userId"], "time": r["time"]} for r in out["records"]] == \
        expected_records(dev, udp=True)


@pytest.mark.parametrize(("lib", "udp"), [("node-zklib", False), ("zkteco-js", False),
                                          ("node-zklib", True)])
def test_js_clients_receive_realtime_events(add_device: Callable[..., SimDevice], lib: str,
                                            udp: bool) -> None:
    assert NODE is not None
    kw: dict[str, Any] = {"tcp": False, "record_layout": 16, "user_layout": 28} if udp else {
        "user_ids": "numeric"}
    dev = add_device(records=10, **kw)
    proc = subprocess.Popen([NODE, "client.js", lib, dev.host, str(dev.port), "realtime", "3"],
                            cwd=JS, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=_env())
    try:
        assert proc.stderr is not None
        while True:
            line = proc.stderr.readline()
            if not line or "READY" in line:
                break
        rows = dev.add_punches(3)
        out_text, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    out = json.loads(out_text.strip().splitlines()[-1])
    assert "error" not in out, (out, err)
    # node-zklib's UDP event decoder keeps only the low byte of the user id.
    want = [{"userId": str(int(r["user_id"]) & 0xFF) if udp else r["user_id"], "time": r["time"]}
            for r in rows]
    assert out["events"] == want

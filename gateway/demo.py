"""`fpgw demo`: the real daemon against a simulated office, for a first look without any hardware.

Starts a simulators.zk Fleet of four terminals on 127.0.0.1 (TCP with 40-byte records, UDP with
16-byte records, one with a comm key and 8-byte records, one broken: offline), writes a real config
file for them into the demo folder (SQLite database beside it), and runs gateway.app.Gateway on it,
exactly as `fpgw run` would. New punches arrive while it runs. Ctrl-C (or --duration) stops it.
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from gateway.config import load_config
from gateway.logs import setup_logging

log = structlog.get_logger(__name__)

DEMO_OFFICE_CODE = "1801.01.02"
DEMO_OFFICE_NAME = "Badan Kepegawaian dan Pengembangan SDM (demo)"
DEMO_COMM_KEY = 246810


@dataclass(frozen=True)
class DemoDevice:
    """One simulated terminal of the demo office and how the gateway is configured for it."""

    id: str
    name: str
    serial: str
    transport: str
    record_layout: int
    user_layout: int
    records: int
    punches_per_minute: float
    comm_key: int = 0
    faults: tuple[tuple[str, Any], ...] = ()
    note: str = ""


DEMO_DEVICES = (
    DemoDevice("lobby", "Lobby, ground floor", "DEMO0000001", "tcp", 40, 72, 600, 6.0,
               note="TCP, 40-byte records, NIP user ids"),
    DemoDevice("hall", "Meeting hall", "DEMO0000002", "udp", 16, 28, 300, 3.0,
               faults=(("clock_skew", 420),), note="UDP, 16-byte records, clock 7 minutes fast"),
    DemoDevice("secretariat", "Secretariat, 2nd floor", "DEMO0000003", "tcp", 8, 28, 200, 2.0,
               comm_key=DEMO_COMM_KEY, note="TCP with a comm key, old 8-byte records"),
    DemoDevice("warehouse", "Warehouse gate", "DEMO0000004", "tcp", 40, 72, 100, 0.0,
               faults=(("offline", True),), note="broken: does not answer (offline)"),
)


#: Simulated models of the demo terminals (simulators/zk/profiles.py), real-terminal framing included
#: (docs/simulator-compat.md).
_DEMO_PROFILES: dict[str, dict[str, Any]] = {
    "lobby": {"profile": "iclock880"},
    "hall": {"profile": "x100c"},
    "secretariat": {"profile": "ma300"},
    "warehouse": {"profile": "generic"},
}


def _free_port(host: str, preferred: int) -> int:
    for port in (preferred, 0):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return int(s.getsockname()[1])
    return 0


def write_demo_config(folder: Path, fleet_devices: list[tuple[DemoDevice, Any]], *, interval_s: float,
                      http_port: int) -> Path:
    """Write config.toml (+ the comm key file) for the running simulated devices; returns its path."""
    folder.mkdir(parents=True, exist_ok=True)
    secrets = folder / "secrets"
    secrets.mkdir(exist_ok=True)
    key_file = secrets / "secretariat.key"
    key_file.write_text(f"{DEMO_COMM_KEY}\n", encoding="utf-8")
    os.chmod(key_file, 0o600)
    lines = [
        "# Written by `fpgw demo` for its simulated devices (their ports change on every demo run).",
        "# Edit freely to experiment; the demo rewrites it when it starts again.",
        "",
        "[site]",
        f'office_code = "{DEMO_OFFICE_CODE}"',
        f'office_name = "{DEMO_OFFICE_NAME}"',
        'timezone = "Asia/Jakarta"',
        'state_dir = "."',
        "",
        "[database]",
        '# empty url = SQLite file fpgw.db in state_dir',
        'url = ""',
        "",
        "[polling]",
        f"interval_s = {interval_s:g}",
        "timeout_s = 3",
        "full_reconcile_s = 600",
        f"backoff_max_s = {max(interval_s * 4, 60):g}",
        "shutdown_deadline_s = 10",
        "",
        "[logging]",
        'format = "auto"',
        'level = "info"',
        "",
        "[http]",
        "enabled = true",
        'listen = "127.0.0.1"',
        f"port = {http_port}",
        "",
    ]
    for spec, sim in fleet_devices:
        lines += [
            "[[devices]]",
            f'id = "{spec.id}"',
            f'name = "{spec.name}"',
            f'address = "{sim.host}"',
            f"port = {sim.port}",
            f'transport = "{spec.transport}"',
        ]
        if spec.comm_key:
            lines.append('comm_key_file = "secrets/secretariat.key"')
        lines.append(f"# simulated: {spec.note}")
        lines.append("")
    path = folder / "config.toml"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def run_demo(folder: Path, *, duration_s: float | None = None, interval_s: float = 15.0, http_port: int = 8470,
             log_format: str | None = None, log_level: str = "info", keep: bool = False) -> int:
    """Run the demo until Ctrl-C or ``duration_s``; returns the exit code."""
    from gateway.app import Gateway
    from simulators.zk import DeviceSpec, Fleet

    setup_logging(log_format or "auto", log_level, timezone="Asia/Jakarta")  # the demo office's zone (see below)
    folder = folder.resolve()
    folder.mkdir(parents=True, exist_ok=True)
    if not keep:
        _forget_previous_run(folder)
    interval_s = max(interval_s, 5.0)
    with Fleet(truth_path=folder / "simulator-truth.jsonl") as fleet:
        started = []
        for i, spec in enumerate(DEMO_DEVICES):
            sim = fleet.add(DeviceSpec(
                serial=spec.serial, host="127.0.0.1", port=0, tcp=spec.transport == "tcp",
                udp=spec.transport == "udp", record_layout=spec.record_layout, user_layout=spec.user_layout,
                comm_key=spec.comm_key, users=40, records=spec.records, seed=100 + i, timezone="Asia/Jakarta",
                punches_per_minute=spec.punches_per_minute, faults=dict(spec.faults),
                **_DEMO_PROFILES.get(spec.id, {})))
            started.append((spec, sim))
        port = _free_port("127.0.0.1", http_port)
        config_path = write_demo_config(folder, started, interval_s=interval_s, http_port=port)
        config = load_config(config_path)
        gateway = Gateway(config)
        http_on = any("http" in s.name for s in gateway.services)
        _print_banner(folder, config_path, started, interval_s, port if http_on else None, duration_s)
        timer: threading.Timer | None = None
        if duration_s is not None:
            timer = threading.Timer(duration_s, gateway.ctx.stop_event.set)
            timer.daemon = True
            timer.name = "fpgw-demo-timer"
            timer.start()
        try:
            code = gateway.run_forever(install_signals=threading.current_thread() is threading.main_thread())
        finally:
            if timer is not None:
                timer.cancel()
                timer.join()
    print(f"\nDemo stopped. The database stays in {folder}; look at it with:\n"
          f"  {_fpgw()} --config {_rel(config_path)} devices\n"
          f"  {_fpgw()} --config {_rel(config_path)} punches --format csv --output punches.csv", file=sys.stderr)
    return code


def _forget_previous_run(folder: Path) -> None:
    # The simulated terminals are rebuilt from their seeds every run, so an old database would see
    # their logs "shrink" (the punches that arrived during the last run are gone) and report it.
    for name in ("fpgw.db", "fpgw.db-wal", "fpgw.db-shm", "simulator-truth.jsonl"):
        (folder / name).unlink(missing_ok=True)
    shutil.rmtree(folder / "backups", ignore_errors=True)


def _fpgw() -> str:
    """How to call fpgw again from this shell: plain `fpgw` when it is on PATH, else the path used now."""
    here = Path(sys.argv[0]).absolute() if sys.argv and sys.argv[0] else None
    found = shutil.which("fpgw")
    if here is None or here.name != "fpgw" or (found and Path(found).absolute() == here):
        return "fpgw"
    return _rel(here)


def _rel(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _print_banner(folder: Path, config_path: Path, devices: list[tuple[DemoDevice, Any]], interval_s: float,
                  http_port: int | None, duration_s: float | None) -> None:
    cfg = _rel(config_path)
    exe = _fpgw()
    out = [
        "",
        "fpgw demo: a simulated office of 4 fingerprint terminals, polled by the real gateway daemon",
        "",
    ]
    for spec, sim in devices:
        out.append(f"  {spec.id:<12} {spec.transport}://{sim.host}:{sim.port:<6} serial {spec.serial}  ({spec.note})")
    out += [
        "",
        f"  config file : {cfg}",
        f"  database    : {_rel(folder / 'fpgw.db')} (SQLite)",
        f"  poll every  : {interval_s:g} s; new punches arrive on the simulated devices while it runs",
    ]
    if http_port:
        out.append(f"  status page : http://127.0.0.1:{http_port}/")
    out += [
        "",
        "  In another terminal, try:",
        f"    {exe} --config {cfg} devices",
        f"    {exe} --config {cfg} punches --today",
        f"    {exe} --config {cfg} punches --device lobby --format csv --output lobby.csv",
        f"    {exe} --config {cfg} poll lobby",
        "",
        f"  Stops by itself after {duration_s:g} s." if duration_s else "  Press Ctrl-C to stop.",
        "",
    ]
    print("\n".join(out), file=sys.stderr, flush=True)

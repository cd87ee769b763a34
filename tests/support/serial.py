"""Serial-line clocks in tests: gateway configs with ``driver = "serial"`` devices, simulated clocks
(simulators.serial) on a pty or a loopback socket, and views of the quarantine table."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from gateway.config import Config, parse_config
from gateway.store import schema as s
from simulators.serial.clock import SerialClock, SerialClockSpec
from simulators.zk.truth import TruthWriter
from tests.support.config import OFFICE_CODE
from tests.support.gateway import RunningGateway, table_rows


def serial_config(db_url: str, tmp_path: Path, devices: list[dict[str, Any]], *,
                  health: dict[str, Any] | None = None, http: dict[str, Any] | None = None) -> Config:
    """A gateway whose devices are these serial clocks (each a dict of device keys; driver set here)."""
    return parse_config({
        "site": {"office_code": OFFICE_CODE, "timezone": "Asia/Jakarta", "state_dir": str(tmp_path)},
        "database": {"url": db_url},
        "polling": {"shutdown_deadline_s": 5},
        "http": http or {"enabled": False},
        # Offline after 3 failed opens (one a second with reconnect_max_s = 1), not after minutes.
        "health": {"offline_after_s": 1, **(health or {})},
        "devices": [{"driver": "serial", "reconnect_max_s": 1, "interval_s": 5, **d} for d in devices],
    }, base_dir=tmp_path)


def device_keys(clock: SerialClock, device_id: str = "s1", **extra: Any) -> dict[str, Any]:
    """The gateway device keys that read this simulated clock."""
    where = {"port": clock.path} if clock.spec.transport == "pty" else {"url": clock.path}
    return {"id": device_id, "serial": clock.spec.serial, "line_format": clock.spec.line_format, **where, **extra}


@contextmanager
def serial_clock(truth: TruthWriter | None, tmp_path: Path, **spec: Any) -> Iterator[SerialClock]:
    """A started simulated clock (pty clocks get a stable link under tmp_path); stopped afterwards."""
    if spec.get("transport", "pty") == "pty":
        spec.setdefault("link", str(tmp_path / f"tty-{spec.get('serial', 'SER0001')}"))
    clock = SerialClock(SerialClockSpec(**spec), truth)
    clock.start()
    try:
        yield clock
    finally:
        clock.stop()


def quarantined(db_url: str, device_id: str | None = None) -> list[Any]:
    """Rows of the quarantine table (of one device when given)."""
    return table_rows(db_url, s.quarantine, *([s.quarantine.c.device_id == device_id] if device_id else []))


def reader_stats(gw: RunningGateway, device_id: str) -> Any:
    """The running reader's counters (gateway.serial.reader.ReaderStats)."""
    svc = next(x for x in gw.gateway.services if x.name == "serial")
    return svc.stats()[device_id]  # type: ignore[attr-defined]

"""Helpers for the core end-to-end tests: simulated fleets, configs for them, a Gateway driven by poll_now.

Everything here goes through public surfaces: the simulator's API and truth file, gateway.config,
gateway.app.Gateway (poll_now + poll observers), and the database tables.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, select

from gateway.app import Gateway
from gateway.config import Config, parse_config
from gateway.models import PollOutcome
from gateway.store import schema as s

PunchKey = tuple[str, str, str, int, int]


def sim_spec(serial: str, **kw: Any) -> Any:
    """A DeviceSpec with small, fast defaults."""
    from simulators.zk import DeviceSpec

    values: dict[str, Any] = dict(serial=serial, host="127.0.0.1", port=0, tcp=True, udp=True, record_layout=40,
                                  user_layout=72, comm_key=0, users=30, records=200, seed=7,
                                  timezone="Asia/Jakarta", punches_per_minute=0.0, faults={})
    values.update(kw)
    return DeviceSpec(**values)


@dataclass
class DeviceEntry:
    """How the gateway is configured for one simulated device."""

    id: str
    sim: Any
    transport: str = "tcp"
    comm_key_env: str | None = None
    serial: str | None = None
    extra: dict[str, Any] | None = None


def config_dict(db_url: str, devices: Iterable[DeviceEntry], *, interval_s: float = 3600,
                polling: dict[str, Any] | None = None, **sections: Any) -> dict[str, Any]:
    """A config document for simulated devices on loopback (HTTP off unless asked)."""
    devs = []
    for d in devices:
        entry: dict[str, Any] = {"id": d.id, "address": d.sim.host, "port": d.sim.port, "transport": d.transport,
                                 "timeout_s": 2}
        if d.comm_key_env:
            entry["comm_key_env"] = d.comm_key_env
        if d.serial:
            entry["serial"] = d.serial
        entry.update(d.extra or {})
        devs.append(entry)
    doc: dict[str, Any] = {
        "site": {"office_code": "1801.01.02", "office_name": "Test office", "timezone": "Asia/Jakarta"},
        "database": {"url": db_url},
        "polling": {"interval_s": interval_s, "shutdown_deadline_s": 10, **(polling or {})},
        "http": {"enabled": False},
        "devices": devs,
    }
    doc.update(sections)
    return doc


def make_config(db_url: str, devices: Iterable[DeviceEntry], base_dir: Path, **kw: Any) -> Config:
    """Validated Config for simulated devices."""
    return parse_config(config_dict(db_url, devices, **kw), base_dir=base_dir)


class Recorder:
    """Poll observer: remembers every outcome and lets a test wait for the next poll of a device."""

    def __init__(self) -> None:
        self.outcomes: list[PollOutcome] = []
        self._cond = threading.Condition()

    def __call__(self, outcome: PollOutcome) -> None:
        with self._cond:
            self.outcomes.append(outcome)
            self._cond.notify_all()

    def wait_for(self, device_id: str, after: datetime, timeout_s: float = 30.0) -> PollOutcome:
        """The first outcome of ``device_id`` whose poll started at/after ``after``."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while True:
                for o in self.outcomes:
                    if o.device_id == device_id and o.started_at >= after:
                        return o
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no poll of {device_id} finished within {timeout_s} s")
                self._cond.wait(left)


class RunningGateway:
    """A started in-process Gateway with a Recorder attached."""

    def __init__(self, config: Config, **kw: Any) -> None:
        self.gateway = Gateway(config, **kw)
        self.recorder = Recorder()
        self.gateway.ctx.poll_observers.append(self.recorder)

    def __enter__(self) -> RunningGateway:
        self.gateway.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.gateway.stop()

    def poll(self, device_id: str, timeout_s: float = 30.0) -> PollOutcome:
        """Request a poll now and wait for a poll that started after the request."""
        when = datetime.now(UTC)
        assert self.gateway.ctx.poll_now is not None
        assert self.gateway.ctx.poll_now(device_id)
        return self.recorder.wait_for(device_id, when, timeout_s)

    def poll_all(self, device_ids: Iterable[str], timeout_s: float = 60.0) -> dict[str, PollOutcome]:
        """Request polls of several devices at once, wait for all."""
        when = datetime.now(UTC)
        ids = list(device_ids)
        for i in ids:
            assert self.gateway.ctx.poll_now is not None and self.gateway.ctx.poll_now(i)
        return {i: self.recorder.wait_for(i, when, timeout_s) for i in ids}


def truth_keys(truth_path: Path, serials: Iterable[str] | None = None) -> Counter[PunchKey]:
    """Multiset of (serial, user_id, time, state, verify) every simulated device ever held."""
    from simulators.zk import read_truth

    wanted = set(serials) if serials is not None else None
    return Counter((r["serial"], r["user_id"], r["time"], int(r["state"]), int(r["verify"]))
                   for r in read_truth(truth_path) if wanted is None or r["serial"] in wanted)


def stored_keys(db_url: str, serials: Iterable[str] | None = None) -> Counter[PunchKey]:
    """Multiset of the same fields from the punches table."""
    engine = create_engine(db_url)
    try:
        p = s.punches.c
        with engine.connect() as conn:
            rows = conn.execute(select(p.device_serial, p.device_user_id, p.device_time, p.state, p.verify)).all()
    finally:
        engine.dispose()
    wanted = set(serials) if serials is not None else None
    return Counter((r[0], r[1], r[2], int(r[3]), int(r[4])) for r in rows if wanted is None or r[0] in wanted)


def diff(expected: Counter[PunchKey], actual: Counter[PunchKey]) -> str:
    """Short description of a multiset difference for assertion messages."""
    missing = expected - actual
    extra = actual - expected
    return (f"{sum(missing.values())} missing (e.g. {list(missing)[:3]}), "
            f"{sum(extra.values())} unexpected (e.g. {list(extra)[:3]})")


def table_rows(db_url: str, table: Any, *where: Any) -> list[Any]:
    """All rows of a table (optionally filtered)."""
    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            q = select(table)
            for w in where:
                q = q.where(w)
            return list(conn.execute(q).mappings())
    finally:
        engine.dispose()

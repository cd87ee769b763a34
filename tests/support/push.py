"""Push terminals in tests: a receiver on a real database behind the daemon's HTTP server (``make_rig``),
push configs, the receiver port of a running gateway, and simulated push terminals (simulators.push)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from gateway.config import Config, parse_config
from gateway.models import PollOutcome
from gateway.push.receiver import PushReceiver
from gateway.store.db import create_db_engine, upgrade
from gateway.store.punches import Store
from gateway.store.push import PushRepo
from gateway.web.server import ThreadedServer
from simulators.push.terminal import PushSpec, PushTerminal
from simulators.zk.truth import TruthWriter
from tests.support.clock import FakeClock
from tests.support.config import OFFICE_CODE
from tests.support.gateway import RunningGateway

SERIAL = "PSH001"


class FakeMonotonic:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Rig:
    client: httpx.Client
    receiver: PushReceiver
    repo: PushRepo
    outcomes: list[PollOutcome]
    clock: FakeClock
    mono: FakeMonotonic
    config: Config
    db_url: str

    def get(self, path: str, **params: str) -> Any:
        return self.client.get(path, params={"SN": SERIAL, **params})

    def post(self, path: str, body: bytes | str, headers: dict[str, str] | None = None, **params: str) -> Any:
        return self.client.post(path, params={"SN": SERIAL, **params},
                                content=body.encode() if isinstance(body, str) else body, headers=headers or {})


def make_rig(db_url: str, tmp_path: Path, *, devices: list[dict[str, Any]] | None = None,
             **push: Any) -> Iterator[Rig]:
    config = parse_config({
        "site": {"office_code": OFFICE_CODE, "timezone": "Asia/Jakarta", "state_dir": str(tmp_path)},
        "database": {"url": db_url},
        "push": {"port": 0, "delay_s": 10, **push},
        "devices": devices or [{"id": "p1", "driver": "push", "serial": SERIAL}],
    }, base_dir=tmp_path)
    engine = create_db_engine(db_url, pool_size=4)
    upgrade(engine)
    store = Store(engine, OFFICE_CODE)
    store.sync_devices(config.devices)
    outcomes: list[PollOutcome] = []
    clock, mono = FakeClock(datetime(2026, 11, 30, 1, 0, tzinfo=UTC)), FakeMonotonic()
    repo = PushRepo(engine)
    receiver = PushReceiver(config, store, repo, [outcomes.append], clock=clock, monotonic=mono)
    try:
        # The daemon's own server (uvicorn in a thread, without its Date header) on loopback.
        with ThreadedServer(receiver.app(), date_header=False) as server, \
                httpx.Client(base_url=server.url, timeout=10) as client:
            yield Rig(client, receiver, repo, outcomes, clock, mono, config, db_url)
    finally:
        engine.dispose()



#: Sim waits (Delay, ErrorDelay) are clamped to this, so a test takes seconds, not minutes.
SIM_WAIT_S = 0.2


def push_config(db_url: str, tmp_path: Path, serials: list[str], *, http: dict[str, Any] | None = None,
                **push: Any) -> Config:
    """A gateway with push terminals of these serials (ids p0, p1, ...); the receiver on a free loopback port."""
    return parse_config({
        "site": {"office_code": OFFICE_CODE, "timezone": "Asia/Jakarta", "state_dir": str(tmp_path)},
        "database": {"url": db_url},
        "polling": {"shutdown_deadline_s": 5},
        "http": http or {"enabled": False},
        "push": {"listen": "127.0.0.1", "port": 0, "delay_s": 2, "error_delay_s": 10, **push},
        "devices": [{"id": f"p{i}", "driver": "push", "serial": sn} for i, sn in enumerate(serials)],
    }, base_dir=tmp_path)


def receiver_port(gw: RunningGateway) -> int:
    svc = next(x for x in gw.gateway.services if x.name == "push")
    port = getattr(svc, "port", None)
    assert isinstance(port, int)
    return port


@contextmanager
def terminal(server: str, truth: TruthWriter, **spec: Any) -> Iterator[PushTerminal]:
    term = PushTerminal(PushSpec(server=server, max_wait_s=SIM_WAIT_S, timeout_s=3, **spec), truth)
    term.start()
    try:
        yield term
    finally:
        term.stop()

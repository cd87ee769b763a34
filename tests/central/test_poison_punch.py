"""One punch the central cannot store never blocks an office's forwarding (issue 8, item 2, central side).

A real office gateway (forwarder over its own SQLite database) forwards to the real central API (Starlette
app over SQLite or PostgreSQL). A device record with workcode >= 2**31 made the central answer 500 on
PostgreSQL, and the office retried the same batch forever; now that punch alone is rejected with its reason
and the rest of the queue is delivered.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from gateway.store import schema as s
from gateway.store.db import create_db_engine, upgrade
from gateway.store.punches import Store
from tests.support.central import OFFICE_A, Central, make_central, make_forwarder
from tests.support.config import forward_config
from tests.support.punches import punch_batch, store_punches


@pytest.fixture
def central(db_url: str, tmp_path: Path) -> Iterator[Central]:
    c = make_central(db_url, tmp_path)
    c.client.raise_server_exceptions = False  # a crash must reach the office as the 500 it would see
    try:
        yield c
    finally:
        c.client.close()
        c.engine.dispose()


@pytest.mark.timeout(90)
def test_a_workcode_beyond_32_bits_is_rejected_alone_and_the_queue_moves_on(central: Central, tmp_path: Path) -> None:
    office_url = f"sqlite:///{tmp_path / 'office.db'}"
    config = forward_config(tmp_path, office_url, office_code=OFFICE_A)
    engine = create_db_engine(office_url)
    upgrade(engine)
    store = Store(engine, config.site.office_code)
    store.sync_devices(config.devices)
    punches = punch_batch(5, office_code=OFFICE_A)
    punches[2] = dataclasses.replace(punches[2], workcode=2**31)
    store_punches(store, punches)
    statuses: list[int] = []

    def to_central(request: httpx.Request) -> httpx.Response:
        # The office's token file holds a placeholder; the central knows it as gw-a.
        headers = {k: v for k, v in request.headers.items() if k.lower() in ("content-type", "content-encoding")}
        headers["Authorization"] = f"Bearer {central.gw_a}"
        r = central.client.request(request.method, request.url.path, content=request.content, headers=headers)
        statuses.append(r.status_code)
        return httpx.Response(r.status_code, headers=r.headers, content=r.content)

    fwd = make_forwarder(config, engine, transport=httpx.MockTransport(to_central), rng=random.Random(1))
    try:
        fwd.run_once()
    finally:
        fwd.stop(1)
    try:
        assert statuses and all(code == 200 for code in statuses), statuses
        with engine.connect() as conn:
            left = conn.execute(select(s.outbox.c.state, s.outbox.c.last_error)).all()
        # Only the poison punch is left, set aside with the central's reason; the other four arrived.
        assert [state for state, _ in left] == ["rejected"]
        assert "out_of_range: workcode 2147483648" in (left[0][1] or "")
        pulled = central.get("/api/v1/punches").json()["items"]
        assert sorted(int(p["device_user_id"]) for p in pulled) == [0, 1, 3, 4]
    finally:
        engine.dispose()

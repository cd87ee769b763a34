"""Shared fixtures: database URLs for SQLite and PostgreSQL, and a leak check on threads.

PostgreSQL comes from ``GW_TEST_PG_URL`` first (CI starts a throwaway cluster, see .ci/run), then from
testcontainers when a Docker engine answers, else the PostgreSQL tests skip, or fail when
``GW_REQUIRE_PG=1`` so CI can never silently run fewer tests.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

_PG_ENV = "GW_TEST_PG_URL"


def _start_container() -> tuple[str, object] | str:
    """Start a PostgreSQL container; returns (url, container) or the reason it could not."""
    try:
        import docker  # type: ignore[import-untyped]
        from docker.errors import DockerException  # type: ignore[import-untyped]
    except ImportError as exc:  # pragma: no cover - testcontainers pulls docker in
        return f"docker client library missing: {exc}"
    try:
        docker.from_env(timeout=3).ping()
    except DockerException as exc:
        return f"no Docker engine reachable ({str(exc).splitlines()[0][:120]})"
    try:
        from testcontainers.community.postgres import PostgresContainer  # type: ignore[import-untyped]

        container = PostgresContainer("postgres:16-alpine", driver="psycopg")
        container.start()
    except Exception as exc:  # DockerException subclasses for pull failures, etc.
        return f"could not start a PostgreSQL container: {exc}"
    return container.get_connection_url(), container


@pytest.fixture(scope="session")
def pg_server_url() -> Iterator[str]:
    """URL of a PostgreSQL server the tests may create databases on."""
    url = os.environ.get(_PG_ENV)
    container = None
    if not url:
        started = _start_container()
        if isinstance(started, str):
            reason = f"PostgreSQL tests need {_PG_ENV} or Docker: {started}"
            if os.environ.get("GW_REQUIRE_PG") == "1":
                pytest.fail(reason + " (GW_REQUIRE_PG=1 forbids skipping)")
            pytest.skip(reason)
        url, container = started
    try:
        yield url
    finally:
        if container is not None:
            container.stop()  # type: ignore[attr-defined]


def _fresh_pg_database(server_url: str) -> tuple[str, callable]:  # type: ignore[valid-type]
    base = make_url(server_url)
    if base.drivername in ("postgresql", "postgresql+psycopg2"):
        base = base.set(drivername="postgresql+psycopg")
    name = f"fpgw_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = base.set(database=name).render_as_string(hide_password=False)

    def drop() -> None:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    return url, drop


@pytest.fixture
def pg_url(pg_server_url: str) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test."""
    url, drop = _fresh_pg_database(pg_server_url)
    try:
        yield url
    finally:
        drop()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A fresh SQLite database file for one test."""
    return f"sqlite:///{tmp_path / 'fpgw.db'}"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh empty database, once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'fpgw.db'}"
        return
    server = request.getfixturevalue("pg_server_url")
    url, drop = _fresh_pg_database(server)
    try:
        yield url
    finally:
        drop()


# --------------------------------------------------------------------------------------------------
# Leak check: every test cleans up its threads (servers, schedulers, pollers).
# --------------------------------------------------------------------------------------------------

# Threads that libraries start once per process and keep by design.
_ALLOWED_THREAD_PREFIXES = ("pydevd", "ThreadPoolExecutor-0", "asyncio_", "Dummy-", "QueueFeederThread")


@pytest.fixture(autouse=True)
def _no_leaked_threads(request: pytest.FixtureRequest) -> Iterator[None]:
    before = set(threading.enumerate())
    yield
    if request.node.get_closest_marker("allow_thread_leak"):
        return
    deadline = time.monotonic() + 5.0
    while True:
        leaked = [t for t in threading.enumerate()
                  if t not in before and t.is_alive() and not t.name.startswith(_ALLOWED_THREAD_PREFIXES)]
        if not leaked or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert not leaked, f"test left threads running: {[t.name for t in leaked]}"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "allow_thread_leak: the test knowingly leaves a library thread behind")

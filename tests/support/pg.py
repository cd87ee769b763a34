"""PostgreSQL for tests and benchmarks: one server per test session, one throwaway database per use.

Where the server comes from, in order:
1. ``GW_TEST_PG_URL`` (any server the tests may create databases on);
2. a container through testcontainers when a Docker engine answers.
Otherwise ``PgUnavailable`` says why; the session fixture (tests/conftest.py) skips the PostgreSQL tests
with that reason, or fails when ``GW_REQUIRE_PG=1``.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

URL_ENV = "GW_TEST_PG_URL"
#: The unprivileged account initdb and postgres run as when the tests run as root (Debian's package makes it).
SERVER_USER = "postgres"


class PgUnavailable(Exception):
    """No PostgreSQL server could be found or started; the message says why."""


@contextmanager
def fresh_database(server_url: str, prefix: str = "fpgw_test") -> Iterator[str]:
    """A new empty database on ``server_url`` (its URL, psycopg 3 driver); dropped afterwards."""
    base = make_url(server_url)
    if base.drivername in ("postgresql", "postgresql+psycopg2"):
        base = base.set(drivername="postgresql+psycopg")
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            yield base.set(database=name).render_as_string(hide_password=False)
        finally:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


# -- Docker ------------------------------------------------------------------------------------------------

def _start_container() -> tuple[str, Callable[[], None]]:
    try:
        import docker  # type: ignore[import-untyped]
        from docker.errors import DockerException  # type: ignore[import-untyped]
    except ImportError as exc:  # pragma: no cover - testcontainers pulls docker in
        raise PgUnavailable(f"docker client library missing: {exc}") from None
    try:
        docker.from_env(timeout=3).ping()
    except DockerException as exc:
        raise PgUnavailable(f"no Docker engine reachable ({str(exc).splitlines()[0][:120]})") from None
    try:
        from testcontainers.community.postgres import PostgresContainer  # type: ignore[import-untyped]

        container = PostgresContainer("postgres:16-alpine", driver="psycopg")
        container.start()
    except Exception as exc:  # DockerException subclasses for pull failures, etc.
        raise PgUnavailable(f"could not start a PostgreSQL container: {exc}") from None
    return container.get_connection_url(), container.stop


def start_server() -> tuple[str, Callable[[], None]]:
    """(server URL, stop) from GW_TEST_PG_URL or Docker, in that order; PgUnavailable if none."""
    url = os.environ.get(URL_ENV)
    if url:
        return url, lambda: None
    try:
        return _start_container()
    except PgUnavailable as exc:
        raise PgUnavailable(f"no {URL_ENV} and {exc}") from None

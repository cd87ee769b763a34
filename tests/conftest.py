"""Shared fixtures: databases (SQLite, PostgreSQL), a simulated fleet, logging reset, a leak check on threads,
and a scan of every log record and rendered log line of the run for known test secrets (tests.support.secrets).

The helpers behind them are in tests/support (importable as ``tests.support``). PostgreSQL comes from
tests.support.pg: ``GW_TEST_PG_URL``, else a throwaway local cluster when server binaries exist, else
Docker; without any the PostgreSQL tests skip, or fail when ``GW_REQUIRE_PG=1`` so CI can never silently
run fewer tests.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from gateway.logs import redact, reset_logging
from simulators.zk import Fleet
from tests.support import pg
from tests.support.fleet import running_fleet
from tests.support.secrets import leaked
from tests.support.services import REQUIRE_PG, unavailable


@pytest.fixture(scope="session")
def pg_server_url() -> Iterator[str]:
    """URL of a PostgreSQL server the tests may create databases on (one per session)."""
    try:
        url, stop = pg.start_server()
    except pg.PgUnavailable as exc:
        unavailable(f"PostgreSQL tests need a server: {exc}", REQUIRE_PG)
    try:
        yield url
    finally:
        stop()


@pytest.fixture
def pg_url(pg_server_url: str) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test."""
    with pg.fresh_database(pg_server_url) as url:
        yield url


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
    with pg.fresh_database(request.getfixturevalue("pg_server_url")) as url:
        yield url


@pytest.fixture
def truth_path(tmp_path: Path) -> Path:
    """Where the simulated fleet writes its ground truth."""
    return tmp_path / "truth.jsonl"


@pytest.fixture
def fleet(truth_path: Path) -> Iterator[Fleet]:
    """A started simulator fleet on loopback (truth in ``truth_path``); stopped, sockets closed, afterwards."""
    with running_fleet(truth_path) as f:
        yield f


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """For tests that run ``fpgw`` in-process: main() configures logging onto the captured stderr; undo it."""
    yield
    reset_logging()


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


# --------------------------------------------------------------------------------------------------
# Secrets scan: no known test secret (tokens, comm keys) in any log line the run produces.
# --------------------------------------------------------------------------------------------------

class _SecretScan(logging.Handler):
    """Sees every log record (as gateway.logs would render it), every line our formatter renders, and every
    test's captured stdout/stderr; remembers where a known test secret showed up."""

    def __init__(self) -> None:
        super().__init__(logging.NOTSET)
        self.hits: list[str] = []
        self._lock2 = threading.Lock()

    def note(self, where: str, text: str) -> None:
        found = leaked(text)
        if found:
            line = next((ln for ln in text.splitlines() if leaked(ln)), text)[:300]
            hit = f"{where}: {', '.join(found)} in: {line}"
            with self._lock2:
                if hit not in self.hits:  # a test's sections reappear in its teardown report
                    self.hits.append(hit)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
        except Exception:
            text = str(record.msg)
        if record.exc_info and record.exc_info[1] is not None:
            text += "\n" + "".join(traceback.format_exception(*record.exc_info))
        # Every record the daemon writes goes through gateway.logs' renderer, which redacts.
        self.note(f"log record {record.name}", redact(text))

    def count(self) -> int:
        with self._lock2:
            return len(self.hits)


_SCAN = _SecretScan()
_original_format = structlog.stdlib.ProcessorFormatter.format


def _scanned_format(self: Any, record: logging.LogRecord) -> str:
    out = _original_format(self, record)
    _SCAN.note("rendered log line", out)
    return out


@pytest.fixture(autouse=True)
def _no_secret_in_logs() -> Iterator[None]:
    before = _SCAN.count()
    yield
    new = _SCAN.hits[before:]
    assert not new, "a known test secret reached the logs:\n" + "\n".join(new)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    for title, content in report.sections:
        if "Captured log" not in title:  # raw records (scanned redacted by the handler above)
            _SCAN.note(f"{report.nodeid} {title}", content)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _SCAN.hits:
        terminalreporter.section("secrets in logs", sep="=", red=True)
        for hit in _SCAN.hits:
            terminalreporter.line(hit)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _SCAN.hits and session.exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "allow_thread_leak: the test knowingly leaves a library thread behind")
    logging.getLogger().addHandler(_SCAN)
    structlog.stdlib.ProcessorFormatter.format = _scanned_format  # type: ignore[method-assign]


def pytest_unconfigure(config: pytest.Config) -> None:
    logging.getLogger().removeHandler(_SCAN)
    structlog.stdlib.ProcessorFormatter.format = _original_format  # type: ignore[method-assign]

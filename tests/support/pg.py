"""PostgreSQL for tests and benchmarks: one server per test session, one throwaway database per use.

Where the server comes from, in order:
1. ``GW_TEST_PG_URL`` (any server the tests may create databases on);
2. PostgreSQL server binaries on this machine (``initdb`` on PATH, or the newest
   /usr/lib/postgresql/*/bin): a throwaway cluster in a temp dir on a free loopback port, fsync off,
   stopped and deleted at the end (as root, initdb refuses to run, so it runs as user ``postgres``);
3. a container through testcontainers when a Docker engine answers.
Otherwise ``PgUnavailable`` says why; the session fixture (tests/conftest.py) skips the PostgreSQL tests
with that reason, or fails when ``GW_REQUIRE_PG=1``.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

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


# -- local server binaries ---------------------------------------------------------------------------------

def find_server_bin() -> Path | None:
    """The folder holding initdb and pg_ctl: from PATH, else the newest /usr/lib/postgresql/<version>/bin."""
    on_path = shutil.which("initdb")
    if on_path and shutil.which("pg_ctl", path=str(Path(on_path).parent)):
        return Path(on_path).parent

    def version(p: Path) -> tuple[int, ...]:
        return tuple(int(x) for x in re.findall(r"\d+", p.parent.name)) or (0,)

    found = [p for p in Path("/usr/lib/postgresql").glob("*/bin") if (p / "initdb").is_file() and
             (p / "pg_ctl").is_file()]
    return max(found, key=version) if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LocalCluster:
    """A throwaway cluster: initdb into a temp dir, pg_ctl start on a free loopback port, stop + delete."""

    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir = bin_dir
        self.prefix: list[str] = []
        owner: pwd.struct_passwd | None = None
        if os.geteuid() == 0:
            try:
                owner = pwd.getpwnam(SERVER_USER)
            except KeyError:
                raise PgUnavailable(f"PostgreSQL binaries in {bin_dir}, but initdb refuses to run as root and "
                                    f"there is no {SERVER_USER!r} user to run it as") from None
            self.prefix = ["runuser", "-u", SERVER_USER, "--"]
        self.dir = Path(tempfile.mkdtemp(prefix="fpgw-test-pg-"))
        if owner is not None:
            os.chown(self.dir, owner.pw_uid, owner.pw_gid)
        self.data = self.dir / "data"
        self.port = _free_port()
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *cmd: str) -> None:
        done = subprocess.run([*self.prefix, *cmd], capture_output=True, text=True, timeout=120, check=False,
                              cwd=self.dir)  # a folder the server's user can enter
        if done.returncode != 0:
            log = self.dir / "server.log"
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise PgUnavailable(f"{Path(cmd[0]).name} failed ({done.returncode}): "
                                f"{(done.stderr or done.stdout).strip()[-2000:]}\n{tail}".rstrip())

    def start(self) -> None:
        """initdb + pg_ctl start (waits until it accepts connections); cleans up after itself on failure."""
        try:
            self._run(str(self.bin_dir / "initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust",
                      "-E", "UTF8", "--no-sync")
            options = (f"-c listen_addresses=127.0.0.1 -c port={self.port} -c unix_socket_directories={self.dir} "
                       "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
            self._run(str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-l", str(self.dir / "server.log"),
                      "-w", "-t", "60", "-o", options, "start")
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop the server (immediate: nothing in it is worth keeping) and delete its directory."""
        if (self.data / "postmaster.pid").exists():
            subprocess.run([*self.prefix, str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-m", "immediate",
                            "stop"], capture_output=True, timeout=60, check=False, cwd=self.dir)
        shutil.rmtree(self.dir, ignore_errors=True)


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
    """(server URL, stop) from GW_TEST_PG_URL, local binaries or Docker, in that order; PgUnavailable if none."""
    url = os.environ.get(URL_ENV)
    if url:
        return url, lambda: None
    bin_dir = find_server_bin()
    if bin_dir is not None:
        cluster = LocalCluster(bin_dir)
        cluster.start()
        return cluster.url, cluster.stop
    try:
        return _start_container()
    except PgUnavailable as exc:
        raise PgUnavailable(f"no {URL_ENV}, no PostgreSQL server binaries (initdb), and {exc}") from None

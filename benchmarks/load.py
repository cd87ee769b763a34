"""Load-generation pieces the central benchmarks share: the real central daemon as a subprocess, gateway
tokens, request bodies exactly as the forwarder sends them, the senders' HTTP clients, a PostgreSQL server.

Where it sits: imported by ``benchmarks/bench_forward.py`` (300 gateways at once, one punch per request)
and ``benchmarks/bench_national.py`` (hundreds of regency tiers replaying a national morning); never by the
product. The daemon is `fpgw run` with ``[central] enabled`` in its own process, started through a script's
``--serve-central CONFIG`` entry (``serve_central``), so a benchmark can put a baseline into that process
before it runs (bench_forward's pre-issue-14 ingest).
"""

from __future__ import annotations

import gzip
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
#: The central's own office code in the benchmarks' configs.
CENTRE = "1801.00"


def free_port() -> int:
    """A free TCP port on loopback (for the daemon's HTTP listener)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_gateway_tokens(path: Path, offices: Sequence[str], scopes: Sequence[Sequence[str]] | None = None
                         ) -> list[str]:
    """One gateway token per office (gw-<office>) in a token file, as `fpgw central add-token` writes it;
    ``scopes[i]`` (when given) is token i's ``offices`` list instead of ``[offices[i]]``."""
    from gateway.central.tokens import hash_token

    tokens, lines = [], ["# fpgw gateway tokens: only SHA-256 hashes are stored.\n"]
    for i, office in enumerate(offices):
        token = secrets.token_urlsafe(32)
        tokens.append(token)
        scope = ", ".join(f'"{o}"' for o in (scopes[i] if scopes is not None else [office]))
        lines.append(f'\n[[token]]\nname = "gw-{office}"\nhash = "{hash_token(token)}"\noffices = [{scope}]\n'
                     f'created = "2026-01-01T00:00:00+00:00"\n')
    path.write_text("".join(lines), encoding="utf-8")
    path.chmod(0o600)
    return tokens


@dataclass
class Daemon:
    """A running central daemon: its process, base URL, log file and a BKD API token (every office)."""

    proc: subprocess.Popen[bytes]
    url: str
    log: Path
    api_token: str = ""


@contextmanager
def central_daemon(tmp: Path, name: str, db_url: str, gateway_tokens: Path, *, max_connections: int,
                   serve: Sequence[str] = (), office_code: str = CENTRE) -> Iterator[Daemon]:
    """`fpgw run` in central mode on ``db_url``, started as ``python <serve[0]> --serve-central CONFIG
    <serve[1:]>`` (default: this module's own entry), answering on loopback; stopped after."""
    port = free_port()
    api_tokens = tmp / "api.toml"
    api_token_file = tmp / "api.token"
    if not api_tokens.exists():
        from gateway.central.tokens import add_token

        api_token_file.write_text(add_token(api_tokens, "bkd", None, "api"), encoding="utf-8")
    cfg = tmp / f"{name}.toml"
    cfg.write_text(f"""
[site]
office_code = "{office_code}"
office_name = "BKD"
timezone = "Asia/Jakarta"
state_dir = "{tmp / name}"
[database]
url = "{db_url}"
[http]
listen = "127.0.0.1"
port = {port}
max_connections = {max_connections}
[logging]
format = "json"
level = "warning"
[central]
enabled = true
gateway_tokens_file = "{gateway_tokens}"
api_tokens_file = "{api_tokens}"
""", encoding="utf-8")
    log = tmp / f"{name}.log"
    script, *extra = serve or (str(Path(__file__).resolve()),)
    cmd = [sys.executable, script, "--serve-central", str(cfg), *extra]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"the central daemon exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{url}/api/v1/openapi.json", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"the central daemon did not answer within 60 s:\n{log.read_text()[-3000:]}")
            time.sleep(0.1)
        token = api_token_file.read_text(encoding="utf-8") if api_token_file.exists() else ""
        yield Daemon(proc, url, log, token)
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def serve_central(config: str) -> int:
    """The daemon process's body: ``fpgw -c CONFIG run`` (a script's ``--serve-central CONFIG`` entry)."""
    from gateway.cli.main import main

    return main(["-c", config, "run"])


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds a process has used so far (Linux /proc; 0.0 where it cannot be read)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def machine_busy_s() -> tuple[float, float]:
    """(busy CPU seconds, total CPU seconds) of the whole machine so far, from /proc/stat ((0, 0) elsewhere)."""
    try:
        cpu = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, IndexError, ValueError):
        return 0.0, 0.0
    tick = os.sysconf("SC_CLK_TCK")
    idle = cpu[3] + (cpu[4] if len(cpu) > 4 else 0)
    return (sum(cpu) - idle) / tick, sum(cpu) / tick


# --------------------------------------------------------------------------------------------------
# Requests as the forwarder sends them
# --------------------------------------------------------------------------------------------------

def forward_body(punches: Sequence[Mapping[str, Any]], meta: Mapping[str, Any]) -> bytes:
    """The POST /ingest/punches body for these wire punches: the forwarder's document (gateway.wire), gzipped
    as gateway.forward.forwarder does when it is larger than GZIP_ABOVE_BYTES."""
    from gateway import wire
    from gateway.forward.forwarder import GZIP_ABOVE_BYTES

    body = wire.dumps(wire.punch_batch(punches, meta))
    return gzip.compress(body, compresslevel=5) if len(body) > GZIP_ABOVE_BYTES else body


def body_headers(body: bytes) -> dict[str, str]:
    """The request headers of a body from ``forward_body`` (Content-Encoding when it is gzipped)."""
    headers = {"Content-Type": "application/json"}
    if body[:2] == b"\x1f\x8b":
        headers["Content-Encoding"] = "gzip"
    return headers


def sender_client(token: str, timeout_s: float) -> httpx.AsyncClient:
    """One simulated sender's HTTP client: its own kept-alive connection with TCP_NODELAY, as the forwarder's."""
    return httpx.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=timeout_s,
                             limits=httpx.Limits(max_connections=1),
                             transport=httpx.AsyncHTTPTransport(
                                 socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]))


# --------------------------------------------------------------------------------------------------
# Databases
# --------------------------------------------------------------------------------------------------

def stored_punches(db_url: str) -> int:
    """How many rows the punches table of ``db_url`` holds."""
    from sqlalchemy import func, select

    from gateway.store import schema as s
    from gateway.store.db import create_db_engine

    engine = create_db_engine(db_url, pool_size=1)
    try:
        with engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(s.punches)).scalar_one())
    finally:
        engine.dispose()


@contextmanager
def postgres_server(notes: list[str]) -> Iterator[str | None]:
    """A PostgreSQL server URL the benchmark may create databases on: GW_TEST_PG_URL, else a throwaway local
    cluster (tests/support/pg.py: initdb, fsync off) or a container; None (with a note) when there is none."""
    url = os.environ.get("GW_TEST_PG_URL")
    if url:
        yield url
        return
    from tests.support.pg import PgUnavailable, start_server

    try:
        url, stop = start_server()
    except PgUnavailable as exc:
        notes.append(f"PostgreSQL rows skipped: GW_TEST_PG_URL is not set and no server could be started ({exc})")
        yield None
        return
    notes.append("GW_TEST_PG_URL is not set: ran on a throwaway local PostgreSQL cluster (fsync and synchronous_commit "
                 "off, so commits cost less than on a production server)")
    try:
        yield url
    finally:
        stop()


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--serve-central":
        raise SystemExit(serve_central(sys.argv[2]))
    raise SystemExit("usage: load.py --serve-central CONFIG (started by the benchmarks)")

"""A throwaway HTTPS certificate for loopback listeners (status server, push receiver tests)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from tests.support.services import REQUIRE_TOOLS, unavailable


def self_signed_cert(d: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key in ``d`` (openssl; the test is skipped without it)."""
    if shutil.which("openssl") is None:
        unavailable("the openssl command is needed to make a test certificate", REQUIRE_TOOLS)
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", "key.pem", "-out", "cert.pem"],
                   cwd=d, check=True, capture_output=True, timeout=30)
    return d / "cert.pem", d / "key.pem"

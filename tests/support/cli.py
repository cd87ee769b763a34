"""Run ``fpgw`` in-process: ``main(argv)`` with its exit code and captured output."""

from __future__ import annotations

import pytest

from gateway.cli.main import main


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """``fpgw *argv`` in this process; returns (exit code, stdout, stderr) captured since the last read.

    main() configures logging onto the captured stderr: use the ``restore_logging`` fixture to undo it.
    """
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err

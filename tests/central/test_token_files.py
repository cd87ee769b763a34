"""Token files stay private (issue 8 item 11): `fpgw central add-token` makes them 0600 whatever the umask, and a
file other users can read is refused at load with the fix in the message."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from gateway.central.tokens import TokenFile, TokenFileError, add_token, load_tokens
from tests.support.secrets import remember


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_add_token_creates_the_file_0600_even_with_a_loose_umask(tmp_path: Path) -> None:
    path = tmp_path / "gateways.toml"
    old = os.umask(0)
    try:
        remember(add_token(path, "gw-a", ["1801.01"], "gateway"))
    finally:
        os.umask(old)
    assert _mode(path) == 0o600
    assert [t.name for t in load_tokens(path, "gateway")] == ["gw-a"]


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620])
def test_a_token_file_open_to_others_is_refused_with_the_fix(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "api.toml"
    remember(add_token(path, "bkd", None, "api"))
    path.chmod(mode)
    for attempt in (lambda: load_tokens(path, "api"), lambda: TokenFile(path, "api"),
                    lambda: add_token(path, "bkd-2", None, "api")):
        with pytest.raises(TokenFileError) as err:
            attempt()
        assert f"chmod 600 {path}" in str(err.value) and f"{mode:04o}" in str(err.value)
    path.chmod(0o600)
    assert [t.name for t in load_tokens(path, "api")] == ["bkd"]

"""External services the suite cannot install itself: a missing one skips its tests, unless its switch requires it.

Switches (CI sets all four): ``GW_REQUIRE_PG`` (a PostgreSQL server), ``GW_REQUIRE_BROWSER`` (headless
Chromium), ``GW_REQUIRE_JS`` (node and the npm clients in tests/simulators/js), ``GW_REQUIRE_TOOLS`` (the
``openssl`` and ``systemd-analyze`` commands). Anything of the project's
own (the simulator, the servers) is imported plainly and fails when broken; it never skips.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest

REQUIRE_PG = "GW_REQUIRE_PG"
REQUIRE_BROWSER = "GW_REQUIRE_BROWSER"
REQUIRE_JS = "GW_REQUIRE_JS"
REQUIRE_TOOLS = "GW_REQUIRE_TOOLS"


def required(switch: str) -> bool:
    """True when the switch is set to 1: a missing service fails the run instead of skipping."""
    return os.environ.get(switch) == "1"


def unavailable(reason: str, switch: str) -> NoReturn:
    """Skip the test with ``reason``, or fail it when ``switch`` is set to 1."""
    if required(switch):
        pytest.fail(f"{reason} ({switch}=1 forbids skipping)")
    pytest.skip(reason)

"""Known test secrets, so the session's log scan (tests/conftest.py) can prove none reaches a log line.

Every secret a test helper makes carries MARKER (status tokens, forward tokens) or is remembered here
(central tokens minted by gateway.central.tokens.add_token, random by design); the test comm key is COMM_KEY.
"""

from __future__ import annotations

import re
import threading

#: Substring of every fixed test secret: any log line containing it leaks a credential.
MARKER = "fpgw-test-secret"
#: The gateway's forward token in tests.support.config.forward_config (its old value, which tests assert on).
GATEWAY_TOKEN = "secret-gateway-token"
#: The status page token in test configs.
STATUS_TOKEN = f"{MARKER}-status-token"
#: A comm key for test configs and simulated terminals (whole-number matches count as leaks).
COMM_KEY = 918273

_lock = threading.Lock()
_minted: set[str] = {GATEWAY_TOKEN}
_COMM_KEY = re.compile(rf"(?<!\d){COMM_KEY}(?!\d)")


def remember(*tokens: str) -> None:
    """Note tokens minted at random (central gateway / API tokens) as secrets to look for."""
    with _lock:
        _minted.update(t for t in tokens if t)


def leaked(text: str) -> list[str]:
    """The known secrets found in ``text`` (masked, for the report)."""
    if not text:
        return []
    found = []
    if MARKER in text:
        found.append(MARKER + "...")
    if _COMM_KEY.search(text):
        found.append("comm key")
    with _lock:
        minted = list(_minted)
    found += [t[:4] + "..." for t in minted if t in text]
    return found

"""Who may read the regency dashboard: password hashing, session ids and the login rate limit.

    gateway.central.dashboard --verify_password / new_session_id / LoginLimiter--> a login
    `fpgw central users add|passwd` --hash_password--> gateway.store.accounts (only the hash is stored)
Passwords are hashed with the standard library's scrypt (memory-hard; n=2**14, r=8, p=1, 16-byte salt). A session
id is 256 random bits: the browser gets it in an HttpOnly cookie, the database keeps its SHA-256 only. No password,
session id or token is ever logged.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import threading
import time
from collections import deque

#: scrypt cost: about 16 MiB and a few tens of milliseconds per check (slow for a guesser, fine for a login).
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2 ** 14, 8, 1
#: Shortest password `fpgw central users` accepts.
MIN_PASSWORD = 10
MAX_PASSWORD = 1024


class PasswordRefused(ValueError):
    """A new password is not acceptable (the message says why)."""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def check_new_password(password: str) -> None:
    """Raise PasswordRefused unless the password is long enough to stand a guesser."""
    if len(password) < MIN_PASSWORD:
        raise PasswordRefused(f"use at least {MIN_PASSWORD} characters (a phrase of a few words is good)")
    if len(password) > MAX_PASSWORD:
        raise PasswordRefused(f"at most {MAX_PASSWORD} characters")


def hash_password(password: str) -> str:
    """The stored form: ``scrypt$n$r$p$salt$hash`` (base64 parts)."""
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=32)
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(digest)}"


#: Checked against when the user name is unknown, so a wrong name costs as long as a wrong password.
_DUMMY = hash_password(secrets.token_urlsafe(16))


def verify_password(password: str, stored: str | None) -> bool:
    """True when ``password`` matches the stored hash (constant-time; a None/garbled hash never matches)."""
    if len(password) > MAX_PASSWORD:
        return False
    target = stored or _DUMMY
    try:
        kind, n, r, p, salt, digest = target.split("$")
        if kind != "scrypt":
            raise ValueError(kind)
        want = base64.b64decode(digest, validate=True)
        got = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt, validate=True), n=int(n), r=int(r),
                             p=int(p), dklen=len(want))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, want) and stored is not None


def new_session_id() -> str:
    """A fresh session id (256 random bits, URL-safe)."""
    return secrets.token_urlsafe(32)


def session_key(session_id: str) -> str:
    """What the database keeps of a session id: its SHA-256 (the id itself is random, so no salt is needed)."""
    return hashlib.sha256(session_id.encode()).hexdigest()


class LoginLimiter:
    """Failed logins per user name and per client address in a sliding window; past the limit a login is
    refused before the password is even checked (HTTP 429), so guessing costs hours, not minutes."""

    def __init__(self, *, per_user: int = 5, per_client: int = 20, window_s: float = 900.0) -> None:
        self.per_user, self.per_client, self.window_s = per_user, per_client, window_s
        self._now = time.monotonic
        self._lock = threading.Lock()
        self._fails: dict[str, deque[float]] = {}

    def _recent(self, key: str, now: float) -> deque[float]:
        q = self._fails.setdefault(key, deque())
        while q and q[0] <= now - self.window_s:
            q.popleft()
        return q

    def retry_after(self, username: str, client: str) -> float | None:
        """Seconds until another try is allowed, or None when one may try now."""
        now = self._now()
        with self._lock:
            waits = []
            for key, limit in ((f"u:{username.lower()}", self.per_user), (f"c:{client}", self.per_client)):
                q = self._recent(key, now)
                if len(q) >= limit:
                    waits.append(q[0] + self.window_s - now)
            return max(waits) if waits else None

    def failed(self, username: str, client: str) -> bool:
        """Count a failed login; True when this failure just reached a limit (log that once)."""
        now = self._now()
        with self._lock:
            if len(self._fails) > 10000:  # someone cycling names or addresses: start over, bounded memory
                self._fails.clear()
            reached = False
            for key, limit in ((f"u:{username.lower()}", self.per_user), (f"c:{client}", self.per_client)):
                q = self._recent(key, now)
                q.append(now)
                reached = reached or len(q) == limit
            return reached

    def succeeded(self, username: str) -> None:
        """A good login clears the user name's failures (not the address's)."""
        with self._lock:
            self._fails.pop(f"u:{username.lower()}", None)

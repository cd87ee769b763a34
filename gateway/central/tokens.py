"""Bearer tokens of the central API: gateway tokens and BKD API tokens, kept hashed in TOML files.

    `fpgw central add-token` --add_token()--> tokens file (SHA-256 hashes only, 0600)
    gateway.central.api --TokenFile.lookup(presented)--> Token (name, office scope) or None
A token's ``offices`` are exact office codes and prefix patterns (``1801.*``: every office under 1801;
``*`` only as the last segment, gateway.wire.OfficeScope), or ``["*"]`` for all. ``Token.allows(code)`` is
the one check of a scope. A gateway token names one office (an office gateway) or, for a tier forwarding
its offices upstream (docs/tiers.md), several codes or patterns; it never means "every office".
A TokenFile re-reads its file when it changes, so a new token works without a restart; an unreadable
file keeps the tokens it had (logged once). A token file other users could read or write (any group/other
permission bit) is refused with the fix (``chmod 600 PATH``): the hashes are not the tokens, but who may add
a token must stay the service's business.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
import stat
import threading
import tomllib
from dataclasses import dataclass
from pathlib import Path

import structlog

from gateway.store.schema import utcnow
from gateway.wire import OfficeScope

log = structlog.get_logger(__name__)

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")

class TokenFileError(Exception):
    """A token file cannot be used (the message names the file and the entry)."""


@dataclass(frozen=True)
class Token:
    """One token entry: who it is, its hash, and the offices it may act for (None = every office)."""

    name: str
    digest: str
    offices: OfficeScope | None

    def allows(self, office_code: str) -> bool:
        """Whether this token may act for (send or read) ``office_code``."""
        return self.offices is None or self.offices.allows(office_code)

    @property
    def office(self) -> str | None:
        """The one office of a single-office token (an office gateway's); None for a wider scope."""
        return self.offices.single if self.offices is not None else None

    @property
    def scope_text(self) -> str:
        """The scope as written in the file ("*" for every office)."""
        return str(self.offices) if self.offices is not None else "*"


def parse_offices(offices: object, kind: str) -> OfficeScope | None:
    """A token entry's ``offices`` as a scope (None = every office); TokenFileError-ready ValueError otherwise."""
    if offices is None or offices == ["*"]:
        scope = None
    elif isinstance(offices, list) and offices and all(isinstance(o, str) and o for o in offices):
        scope = OfficeScope.parse(offices)
    else:
        raise ValueError("offices must be a list of office codes or patterns like \"1801.*\", or [\"*\"] for all")
    if kind == "gateway" and scope is None:
        raise ValueError("a gateway token must name its office (or a tier's offices, e.g. [\"1801.*\"]), "
                         "never every office")
    return scope


def hash_token(token: str) -> str:
    """The stored form of a token. Tokens are 256 random bits, so a plain SHA-256 cannot be reversed."""
    return "sha256:" + hashlib.sha256(token.encode()).hexdigest()


def check_private(path: Path) -> None:
    """Raise TokenFileError when group or others have any permission on ``path`` (the fix is in the message)."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError as exc:
        raise TokenFileError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if mode & 0o077:
        raise TokenFileError(f"{path}: token file is open to other users (mode {mode:04o}); make it private to "
                             f"the service: chmod 600 {path}")


def load_tokens(path: Path, kind: str) -> list[Token]:
    """Read a token file (refused unless private, see check_private); ``kind`` "gateway" entries must name exactly
    one office."""
    check_private(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise TokenFileError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise TokenFileError(f"{path}: not a valid TOML token file: {exc}") from None
    entries = data.get("token", [])
    if not isinstance(entries, list):
        raise TokenFileError(f"{path}: 'token' must be an array of tables ([[token]])")
    tokens: list[Token] = []
    names: set[str] = set()
    for i, e in enumerate(entries):
        where = f"{path}: token #{i + 1}"
        if not isinstance(e, dict):
            raise TokenFileError(f"{where}: must be a table")
        name, digest, offices = e.get("name"), e.get("hash"), e.get("offices")
        if not isinstance(name, str) or not _NAME.match(name):
            raise TokenFileError(f"{where}: name must be 1-100 letters, digits, '_', '.' or '-'")
        if name in names:
            raise TokenFileError(f"{where}: duplicate name {name!r}")
        names.add(name)
        if not isinstance(digest, str) or not re.fullmatch(r"sha256:[0-9a-f]{64}", digest):
            raise TokenFileError(f"{where} ({name}): hash must be 'sha256:' + 64 hex digits "
                                 "(create entries with `fpgw central add-token`)")
        try:
            scope = parse_offices(offices, kind)
        except ValueError as exc:
            raise TokenFileError(f"{where} ({name}): {exc}") from None
        tokens.append(Token(name, digest, scope))
    return tokens


class TokenFile:
    """Tokens of one file, re-read when the file changes (so add-token needs no restart)."""

    def __init__(self, path: Path, kind: str) -> None:
        self.path = path
        self.kind = kind
        self._lock = threading.Lock()
        self._stamp: tuple[float, int] | None = None
        self._tokens: list[Token] = []
        self._broken = False
        self.reload()

    def reload(self) -> None:
        """Read the file now (raises TokenFileError)."""
        st = self.path.stat()
        tokens = load_tokens(self.path, self.kind)
        with self._lock:
            self._tokens, self._stamp = tokens, (st.st_mtime, st.st_size)

    def refresh(self) -> None:
        """Re-read the file if it changed; an unreadable file keeps the previous tokens (logged once)."""
        try:
            st = self.path.stat()
            if (st.st_mtime, st.st_size) != self._stamp:
                self.reload()
                log.info("token file reloaded", file=str(self.path), tokens=len(self._tokens))
            self._broken = False
        except (OSError, TokenFileError) as exc:
            # Keep serving with the tokens we had; a half-written file must not lock everyone out.
            if not self._broken:
                log.warning("token file unreadable; keeping the previous tokens", file=str(self.path),
                            error=str(exc))
            self._broken = True

    def lookup(self, presented: str) -> Token | None:
        """The entry matching a presented token (constant-time comparison over every entry)."""
        self.refresh()
        digest = hash_token(presented)
        found = None
        with self._lock:
            for tok in self._tokens:
                if hmac.compare_digest(tok.digest, digest):
                    found = tok
        return found

    def tokens(self) -> list[Token]:
        """The current entries."""
        with self._lock:
            return list(self._tokens)


def add_token(path: Path, name: str, offices: list[str] | None, kind: str) -> str:
    """Mint a token, append its hash to the file (created 0600), and return the token (shown once)."""
    if not _NAME.match(name):
        raise TokenFileError(f"name {name!r}: use 1-100 letters, digits, '_', '.' or '-'")
    try:
        parse_offices(offices or None, kind)
    except ValueError as exc:
        raise TokenFileError(f"--offices: {exc} (an office gateway: --offices 1801.01.02; a regency tier: "
                             "--offices '1801.*')" if kind == "gateway" else f"--offices: {exc}") from None
    if path.exists() and path.stat().st_size == 0:
        path.chmod(0o600)  # an empty placeholder (made so the config validates) holds nothing yet: tighten it
    existing = load_tokens(path, kind) if path.exists() else []
    if any(t.name == name for t in existing):
        raise TokenFileError(f"{path}: a token named {name!r} already exists")
    token = secrets.token_urlsafe(32)
    scope = ", ".join(json.dumps(o) for o in offices) if offices else '"*"'
    entry = (f"\n[[token]]\nname = {json.dumps(name)}\nhash = \"{hash_token(token)}\"\noffices = [{scope}]\n"
             f"created = \"{utcnow().isoformat(timespec='seconds')}\"\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    # 0600 whatever the umask; an existing file was already checked private by load_tokens above.
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "a", encoding="utf-8") as f:
        if not existing and f.tell() == 0:
            f.write(f"# fpgw {kind} tokens: only SHA-256 hashes are stored. Manage with `fpgw central add-token`.\n")
        f.write(entry)
    load_tokens(path, kind)  # prove the file still parses
    return token

"""The envelope that keeps fingerprint templates and passwords encrypted at rest (AES-256-GCM).

    gateway.enrol.backup --seal(plaintext, context)--> bytes --> gateway.store.enrol (opaque blob column)
    gateway.enrol.restore <--open(blob, context)-- bytes <-- gateway.store.enrol

The key is the operator's: a file of 32 random bytes in base64 (``fpgw enrol new-key``) named by
``[enrol] key_file`` or given as the systemd credential ``enrol.key``; never in the config file or the
database. Each blob says which key sealed it (``key_id``: a hash of the key, not the key), so older keys
listed in ``old_key_files`` still open old blobs and ``fpgw enrol rotate-key`` can re-seal them with the
current one. The ``context`` (terminal serial, uid, finger) is bound as associated data: a blob moved to
another row, or altered by one bit, fails to open (``EnvelopeError``) instead of restoring the wrong finger.
Blob layout: ``FPE1`` | key id (8 bytes) | nonce (12 bytes) | ciphertext + 16-byte tag.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gateway.config import EnrolConfig

MAGIC = b"FPE1"
KEY_BYTES = 32
_ID_BYTES = 8
_NONCE_BYTES = 12
_HEAD = len(MAGIC) + _ID_BYTES + _NONCE_BYTES
#: systemd credential name (LoadCredential=enrol.key:/etc/fpgw/enrol.key).
CREDENTIAL = "enrol.key"


class EnrolKeyError(Exception):
    """No usable key: missing, unreadable, readable by everyone, or not a key. The message says which and how to fix."""


class EnvelopeError(Exception):
    """A blob that does not open: sealed with a key we do not have, altered, or moved to another row."""


@dataclass(frozen=True)
class EnrolKey:
    """One key and its id. ``repr()`` shows the id only."""

    key_id: str
    source: str
    aead: AESGCM = field(repr=False, compare=False)


def new_key_text() -> str:
    """A fresh random key as the one line a key file holds."""
    return base64.urlsafe_b64encode(os.urandom(KEY_BYTES)).decode("ascii")


def key_id_of(raw: bytes) -> str:
    """The id stored with every blob: 16 hex digits of a domain-separated SHA-256 of the key (reveals nothing)."""
    return hashlib.sha256(b"fpgw-enrol-key-id\0" + raw).hexdigest()[:2 * _ID_BYTES]


def load_key(path: Path) -> EnrolKey:
    """Read one key file; refuses a file that other users can read, or that is not one base64 key."""
    try:
        st = path.stat()
        text = path.read_text("ascii").strip()
    except FileNotFoundError:
        raise EnrolKeyError(f"enrolment key file {path} does not exist (create one with `fpgw enrol new-key`, "
                            "see docs/enrolment.md)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise EnrolKeyError(f"cannot read enrolment key file {path}: {getattr(exc, 'strerror', None) or exc}") from None
    if st.st_mode & stat.S_IROTH:
        raise EnrolKeyError(f"enrolment key file {path} is readable by every user of this machine; "
                            f"run `chmod o-rwx {path}` (it protects biometric data)")
    try:
        raw = base64.urlsafe_b64decode(text.encode("ascii"))
    except (binascii.Error, ValueError, UnicodeEncodeError):
        raw = b""
    if len(raw) != KEY_BYTES:
        raise EnrolKeyError(f"enrolment key file {path} does not hold a key (expected one line of base64 for "
                            f"{KEY_BYTES} bytes, as `fpgw enrol new-key` writes)")
    return EnrolKey(key_id_of(raw), str(path), AESGCM(raw))


def current_key_path(config: EnrolConfig) -> Path | None:
    """``key_file``, else the systemd credential when the service has one, else None."""
    if config.key_file is not None:
        return config.key_file
    creds = os.environ.get("CREDENTIALS_DIRECTORY")
    if creds and (Path(creds) / CREDENTIAL).is_file():
        return Path(creds) / CREDENTIAL
    return None


class Keyring:
    """The current key (seals) and the older ones (only open)."""

    def __init__(self, current: EnrolKey, older: Iterable[EnrolKey] = ()) -> None:
        self.current = current
        self._by_id = {k.key_id: k for k in (*older, current)}

    @classmethod
    def from_config(cls, config: EnrolConfig) -> Keyring:
        """Load the configured keys; EnrolKeyError with the fix when there is none or one is unusable."""
        path = current_key_path(config)
        if path is None:
            raise EnrolKeyError("no enrolment key: set [enrol] key_file (or give the systemd credential "
                                f"{CREDENTIAL}); create one with `fpgw enrol new-key` (docs/enrolment.md)")
        return cls(load_key(path), [load_key(p) for p in config.old_key_files])

    @property
    def key_ids(self) -> set[str]:
        """Ids of every key this ring can open."""
        return set(self._by_id)

    def seal(self, plaintext: bytes, context: str) -> bytes:
        """Encrypt and authenticate ``plaintext`` bound to ``context`` with the current key."""
        nonce = os.urandom(_NONCE_BYTES)
        key = self.current
        return MAGIC + bytes.fromhex(key.key_id) + nonce + key.aead.encrypt(nonce, plaintext, context.encode())

    def open(self, blob: bytes, context: str) -> bytes:
        """The plaintext of a blob sealed for ``context``; EnvelopeError when it cannot be trusted."""
        if len(blob) < _HEAD + 16 or not blob.startswith(MAGIC):
            raise EnvelopeError("not an fpgw enrolment blob (wrong header or too short)")
        key_id = blob[len(MAGIC):len(MAGIC) + _ID_BYTES].hex()
        key = self._by_id.get(key_id)
        if key is None:
            raise EnvelopeError(f"sealed with key {key_id}, which is not configured (key_file / old_key_files)")
        nonce = blob[len(MAGIC) + _ID_BYTES:_HEAD]
        try:
            return key.aead.decrypt(nonce, blob[_HEAD:], context.encode())
        except InvalidTag:
            raise EnvelopeError("integrity check failed: the blob was altered or belongs to another row") from None


def blob_key_id(blob: bytes) -> str:
    """The key id a blob names (no key needed)."""
    return blob[len(MAGIC):len(MAGIC) + _ID_BYTES].hex() if blob.startswith(MAGIC) else ""

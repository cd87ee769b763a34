"""The envelope that seals templates and passwords (gateway/enrol/crypto.py): round trip, tamper detection,
rows bound by context, key ids, key files that are missing, public or not keys."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest

from gateway.config import EnrolConfig
from gateway.enrol.crypto import (
    EnrolKeyError,
    EnvelopeError,
    Keyring,
    blob_key_id,
    key_id_of,
    load_key,
    new_key_text,
)


def key_file(tmp_path: Path, name: str = "enrol.key", text: str | None = None, mode: int = 0o600) -> Path:
    path = tmp_path / name
    path.write_text((text if text is not None else new_key_text()) + "\n")
    path.chmod(mode)
    return path


def ring(tmp_path: Path, name: str = "enrol.key") -> Keyring:
    return Keyring(load_key(key_file(tmp_path, name)))


def test_sealed_value_opens_only_with_its_context_and_hides_the_plaintext(tmp_path: Path) -> None:
    kr = ring(tmp_path)
    template = os.urandom(700)
    blob = kr.seal(template, "fpgw-enrol/template/SN1/5/0")
    assert template not in blob and template[:16] not in blob
    assert kr.open(blob, "fpgw-enrol/template/SN1/5/0") == template
    # The same template moved to another user's row, finger or terminal does not open.
    for other in ("fpgw-enrol/template/SN1/6/0", "fpgw-enrol/template/SN1/5/1", "fpgw-enrol/template/SN2/5/0"):
        with pytest.raises(EnvelopeError, match="integrity"):
            kr.open(blob, other)
    # Two seals of the same value differ (fresh nonce): equal templates are not visible as equal rows.
    assert kr.seal(template, "c") != kr.seal(template, "c")


@pytest.mark.parametrize("where", ["key id", "nonce", "ciphertext", "tag"])
def test_any_flipped_bit_is_detected(tmp_path: Path, where: str) -> None:
    kr = ring(tmp_path)
    blob = bytearray(kr.seal(b"\xa1\xca\x2c\x82" + os.urandom(500), "ctx"))
    pos = {"key id": 5, "nonce": 4 + 8 + 3, "ciphertext": 4 + 8 + 12 + 10, "tag": len(blob) - 1}[where]
    blob[pos] ^= 0x01
    with pytest.raises(EnvelopeError):
        kr.open(bytes(blob), "ctx")


def test_truncated_or_foreign_blobs_are_refused(tmp_path: Path) -> None:
    kr = ring(tmp_path)
    blob = kr.seal(b"x" * 100, "ctx")
    for bad in (blob[:30], b"", b"NOPE" + blob[4:], blob[:-1]):
        with pytest.raises(EnvelopeError):
            kr.open(bad, "ctx")


def test_older_keys_open_old_blobs_and_the_current_key_seals(tmp_path: Path) -> None:
    old = load_key(key_file(tmp_path, "old.key"))
    new = load_key(key_file(tmp_path, "new.key"))
    sealed_old = Keyring(old).seal(b"finger", "ctx")
    both = Keyring(new, [old])
    assert both.open(sealed_old, "ctx") == b"finger"
    assert blob_key_id(both.seal(b"finger", "ctx")) == new.key_id != old.key_id
    with pytest.raises(EnvelopeError, match="not configured"):
        Keyring(new).open(sealed_old, "ctx")


def test_key_id_names_the_key_without_revealing_it(tmp_path: Path) -> None:
    text = new_key_text()
    raw = base64.urlsafe_b64decode(text)
    key = load_key(key_file(tmp_path, text=text))
    assert key.key_id == key_id_of(raw) and len(key.key_id) == 16
    assert raw.hex()[:16] != key.key_id and text not in repr(key) and raw.hex() not in repr(key)


def test_key_file_problems_say_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    with pytest.raises(EnrolKeyError, match=r"no enrolment key.*new-key"):
        Keyring.from_config(EnrolConfig())
    with pytest.raises(EnrolKeyError, match="does not exist"):
        Keyring.from_config(EnrolConfig(key_file=tmp_path / "missing.key"))
    with pytest.raises(EnrolKeyError, match="readable by every user"):
        load_key(key_file(tmp_path, "public.key", mode=0o644))
    with pytest.raises(EnrolKeyError, match="does not hold a key"):
        load_key(key_file(tmp_path, "short.key", text=base64.urlsafe_b64encode(b"x" * 16).decode()))
    with pytest.raises(EnrolKeyError, match="does not hold a key"):
        load_key(key_file(tmp_path, "junk.key", text="this is not base64 !!"))


def test_systemd_credential_is_used_when_no_key_file_is_configured(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    key_file(tmp_path, "enrol.key")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    kr = Keyring.from_config(EnrolConfig())
    assert kr.current.source == str(tmp_path / "enrol.key")

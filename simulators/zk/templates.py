"""Fingerprint templates of a simulated terminal: blob generation, the template table, the upload buffer.

``device.py`` keeps the templates; ``session.py`` serves the table (1503 with CMD_DB_RRQ 7 /
FCT_FINGERTMP 2) and applies uploads (PREPARE_DATA 1500, DATA 1501 pieces, then command 110), the
exchange pyzk 0.9's get_templates / save_user_template use (fact sheet §2.7). Own codec, sans I/O:
the driver's decoder is checked against this one, never shared with it.

Blob shapes: ZKFinger v10 templates are about 0.5-1.6 KB; the SOAP example of other-protocols.md
(§1.3, Size 514) shows one starting with base64 "ocosgoul", i.e. bytes ``a1 ca 2c 82``, which v10
blobs here start with. No public v9 header is known: v9 blobs here carry a marker of this simulator
(``SIM9``) and are 300-600 bytes. The rest is random. A terminal accepts only blobs of its own
version, as a real one cannot match templates of another algorithm.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Mapping
from dataclasses import dataclass

from simulators.zk.protocol import ProtocolError, User, unpack_user

#: Leading bytes of a template per algorithm version.
HEADERS: dict[int, bytes] = {10: bytes.fromhex("a1ca2c82"), 9: b"SIM9"}
#: Template sizes per version (inclusive range).
SIZES: dict[int, tuple[int, int]] = {10: (500, 1600), 9: (300, 600)}
#: Largest upload buffer a terminal takes (bytes).
MAX_UPLOAD = 16 * 1024 * 1024

_ENTRY = struct.Struct("<HHbb")
_TABLE = struct.Struct("<bHbI")


@dataclass(frozen=True, slots=True)
class StoredTemplate:
    """One finger of one user as the terminal keeps it."""

    uid: int
    finger: int
    valid: int
    data: bytes


def make_template(rng: random.Random, version: int) -> bytes:
    """A random blob shaped like a template of ``version`` (header + random bytes of a plausible size)."""
    header = HEADERS.get(version, b"SIM" + bytes([version & 0xFF]))
    low, high = SIZES.get(version, (400, 800))
    size = rng.randint(low, high)
    return header + rng.randbytes(size - len(header))


def fits_version(data: bytes, version: int) -> bool:
    """Whether a terminal of ``version`` can use this blob (its header is that version's)."""
    header = HEADERS.get(version, b"SIM" + bytes([version & 0xFF]))
    return data.startswith(header)


def template_table(templates: Mapping[tuple[int, int], StoredTemplate]) -> bytes:
    """Records of the template dataset: per template u16 entry size (+6), u16 uid, i8 finger, i8 valid, bytes."""
    return b"".join(_ENTRY.pack(len(t.data) + 6, t.uid, t.finger, t.valid) + t.data
                    for _, t in sorted(templates.items()))


def parse_upload(buf: bytes, user_layout: int) -> tuple[list[User], list[StoredTemplate]]:
    """The buffer before command 110: three u32 section sizes, 0x02-prefixed user records, table, templates."""
    if len(buf) < 12:
        raise ProtocolError(f"upload of {len(buf)} bytes has no section sizes")
    n_users, n_table, n_templates = struct.unpack_from("<III", buf)
    if 12 + n_users + n_table + n_templates != len(buf):
        raise ProtocolError(f"upload sections ({n_users}+{n_table}+{n_templates}) do not add up to {len(buf) - 12}")
    users_raw = buf[12:12 + n_users]
    table = buf[12 + n_users:12 + n_users + n_table]
    blobs = buf[12 + n_users + n_table:]
    record = next((size for size in (user_layout + 1, 73, 29) if n_users % size == 0), 0) if n_users else 73
    if not record:
        raise ProtocolError(f"user section of {n_users} bytes is not whole 29- or 73-byte records")
    users = []
    for pos in range(0, n_users, record):
        if users_raw[pos] != 2:
            raise ProtocolError(f"user record at {pos} does not start with 0x02")
        users.append(unpack_user(users_raw[pos + 1:pos + record]))
    if n_table % _TABLE.size:
        raise ProtocolError(f"template table of {n_table} bytes is not whole 8-byte entries")
    templates = []
    for two, uid, flag, offset in _TABLE.iter_unpack(table):
        finger = flag - 0x10
        if two != 2 or not 0 <= finger <= 9:
            raise ProtocolError(f"template table entry ({two}, {uid}, {flag:#x}) not understood")
        if offset + 2 > len(blobs):
            raise ProtocolError(f"template offset {offset} outside the {len(blobs)}-byte template section")
        (size,) = struct.unpack_from("<H", blobs, offset)
        if not size or offset + 2 + size > len(blobs):
            raise ProtocolError(f"template at offset {offset} of {size} bytes runs past the section")
        templates.append(StoredTemplate(uid, finger, 1, bytes(blobs[offset + 2:offset + 2 + size])))
    return users, templates

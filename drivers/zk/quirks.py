"""Per-device workarounds for ZK firmware differences, as configuration rather than code branches.

Flow: gateway config ``[devices.<id>.quirks]`` -> ``ZkQuirks.from_mapping()`` -> ZkDriver, which
reads these fields at the few places where firmware differs (record/user layout detection, keypad
lock during downloads, user downloads, checksum verification). Validated once, naming the bad key.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from drivers.zk.records import RECORD_SIZES, USER_SIZES


@dataclass(frozen=True, slots=True)
class ZkQuirks:
    """Firmware workarounds for one ZK terminal. The defaults suit every device we have seen."""

    #: Force the attendance record size (8, 16 or 40 bytes) instead of inferring it from the counts.
    #: Only needed when a firmware reports counts that make the inference ambiguous.
    record_size: int | None = None
    #: Force the user record size (28 or 72 bytes).
    user_size: int | None = None
    #: Lock the keypad (CMD_DISABLEDEVICE) while the log downloads so no punch lands mid-transfer.
    #: The session always re-enables it on exit. Turn off for terminals where a locked keypad during
    #: the morning rush is worse than a possibly re-read record.
    disable_while_reading: bool = True
    #: Let read_punches() download the user table when it must: only 8-byte records need it (they
    #: carry the internal uid, not the user id), and only when the user count changed or an unknown
    #: uid appears. False = never (8-byte punches then carry str(uid), logged as unmapped).
    #: Explicit read_users() calls are not affected.
    read_users: bool = True
    #: Verify the checksum of every packet the device sends (pyzk never does). A mismatch fails the
    #: operation with ProtocolError instead of storing corrupted punches. Turn off only for a
    #: firmware proven to send wrong checksums on intact data.
    verify_checksums: bool = True
    #: UDP only: largest chunk (bytes) asked for per 1504 request; None = 16384 (pyzk's size). The
    #: driver halves it after a lossy chunk and grows it back, so this rarely needs changing. 1024
    #: (one datagram per chunk) makes a download immune to datagrams reordered within a chunk --
    #: which no client can detect -- at the cost of one round trip per KB.
    udp_max_chunk: int | None = None
    #: Largest dataset (bytes) one download may declare, checked before anything is read; the
    #: device's own reported capacity (records x 40 bytes, users x 72) bounds it further. A hostile or
    #: broken terminal declaring more fails the poll with protocol_error instead of exhausting memory.
    #: 32 MiB holds 800,000 40-byte records (the largest terminals hold 200,000-500,000).
    max_download_bytes: int = 32 * 1024 * 1024

    def __post_init__(self) -> None:
        if self.record_size is not None and self.record_size not in RECORD_SIZES:
            raise ValueError(f"record_size must be one of {RECORD_SIZES} or None, got {self.record_size!r}")
        if self.user_size is not None and self.user_size not in USER_SIZES:
            raise ValueError(f"user_size must be one of {USER_SIZES} or None, got {self.user_size!r}")
        if not isinstance(self.disable_while_reading, bool):
            raise ValueError(f"disable_while_reading must be true or false, got {self.disable_while_reading!r}")
        if self.udp_max_chunk is not None and not 1024 <= self.udp_max_chunk <= 65472:
            raise ValueError(f"udp_max_chunk must be 1024-65472 bytes or None, got {self.udp_max_chunk!r}")
        if isinstance(self.max_download_bytes, bool) or not isinstance(self.max_download_bytes, int) \
                or not 1024 <= self.max_download_bytes <= 1 << 30:
            raise ValueError(f"max_download_bytes must be 1024 to 1073741824, got {self.max_download_bytes!r}")
        for name in ("read_users", "verify_checksums"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")

    @classmethod
    def from_mapping(cls, d: Mapping[str, Any] | None) -> ZkQuirks:
        """Build from a config table; raises ValueError naming any unknown or invalid key."""
        if not d:
            return cls()
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown ZK quirk(s): {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        for key in ("record_size", "user_size", "udp_max_chunk", "max_download_bytes"):
            v = d.get(key)
            if isinstance(v, bool) or (v is not None and not isinstance(v, int)):
                raise ValueError(f"{key} must be an integer, got {v!r}")
        return cls(**dict(d))

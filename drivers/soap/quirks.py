"""Per-device workarounds for SOAP terminals (``[devices.<id>.quirks]`` of a ``driver = "soap"`` device).

Flow: gateway config -> ``SoapQuirks.from_mapping()`` (validated when the config loads, naming the bad key)
-> SoapDriver, which reads these fields where firmware differs (transport, charset, which id a punch names).
"""

from __future__ import annotations

import codecs
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any


@dataclass(frozen=True, slots=True)
class SoapQuirks:
    """Firmware workarounds for one SOAP terminal. The defaults suit what the public clients describe."""

    #: Use the raw socket (HTTP/1.0 written by hand, read until close) from the first request, instead of
    #: switching to it only after httpx refused an answer's head once.
    raw_http: bool = False
    #: Decode answers with this charset instead of the one their prolog declares (iso8859-1 when none).
    encoding: str = ""
    #: Which user id GetAttLog's ``<PIN>`` is: "PIN" (the id itself, the default) or "PIN2" (older firmware:
    #: PIN is an internal number; punches are then reported with the user's PIN2 from GetAllUserInfo).
    punch_user: str = "PIN"
    #: The terminal's log capacity (records), which SOAP does not report; 0 = unknown. Needed for
    #: ``clear_when_full_ratio`` and the "log full" checks.
    log_capacity: int = 0
    #: Ask the terminal for its serial (GetOption ~SerialNumber). False: use the device's configured serial.
    read_serial: bool = True
    #: Largest answer (bytes) read; a larger one fails the poll with protocol_error instead of filling memory.
    #: 64 MiB holds about 500,000 log rows of ~130 bytes.
    max_response_bytes: int = 64 * 1024 * 1024

    def __post_init__(self) -> None:
        for name in ("raw_http", "read_serial"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if not isinstance(self.encoding, str):
            raise ValueError(f"encoding must be a string, got {self.encoding!r}")
        if self.encoding:
            try:
                codecs.lookup(self.encoding)
            except LookupError:
                raise ValueError(f"encoding {self.encoding!r} is not a known charset (e.g. \"iso-8859-1\", "
                                 "\"utf-8\")") from None
        if self.punch_user not in ("PIN", "PIN2"):
            raise ValueError(f"punch_user must be \"PIN\" or \"PIN2\", got {self.punch_user!r}")
        for name, low, high in (("log_capacity", 0, 10_000_000), ("max_response_bytes", 1024, 1 << 30)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not low <= v <= high:
                raise ValueError(f"{name} must be an integer from {low} to {high}, got {v!r}")

    @classmethod
    def from_mapping(cls, d: Mapping[str, Any] | None) -> SoapQuirks:
        """Build from a config table; raises ValueError naming any unknown or invalid key."""
        if not d:
            return cls()
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown SOAP quirk(s): {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        return cls(**dict(d))

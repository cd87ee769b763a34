"""Fault names and value validation for simulated devices.

``device.py`` and ``server.py`` read the validated values; the CLI, the fleet file and the
control API all pass through ``normalize_fault`` so a bad value is reported the same way
everywhere. What each fault does on the wire is documented in docs/simulator.md ("Faults").
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any


class Fault(StrEnum):
    """Faults a simulated device can be put into (settable at start and at run time)."""

    OFFLINE = "offline"  #: nothing answers: TCP connects time out, UDP silent
    PORT_CLOSED = "port_closed"  #: TCP refused (listener closed), UDP silent
    SLOW = "slow"  #: seconds of delay before every reply packet
    UDP_LOSS = "udp_loss"  #: probability a UDP datagram (either direction) is lost
    DROP_MID_TRANSFER = "drop_mid_transfer"  #: dataset reads abort half way
    CORRUPT_CHUNK = "corrupt_chunk"  #: first data chunk of every read is corrupted
    HANG = "hang"  #: TCP accepted but never answered; UDP silent
    WRONG_COMM_KEY = "wrong_comm_key"  #: device key differs from the configured one
    CLOCK_SKEW = "clock_skew"  #: seconds added to the device clock
    CLOCK_RESET = "clock_reset"  #: clock restarts at 2000-01-01 00:00:00 (dead RTC battery)
    STORAGE_FULL = "storage_full"  #: log reported full; new punches refused
    LOG_CLEARED = "log_cleared"  #: action: log cleared at the keypad
    REPLACED = "replaced"  #: action: device swapped (new serial, empty log)
    GARBAGE_TIMESTAMPS = "garbage_timestamps"  #: fraction of punches with impossible dates


#: Faults that are one-shot actions: applying them changes the device; nothing stays set.
ACTIONS = frozenset({Fault.LOG_CLEARED, Fault.REPLACED})

_BOOL = frozenset({Fault.OFFLINE, Fault.PORT_CLOSED, Fault.HANG, Fault.CLOCK_RESET,
                   Fault.STORAGE_FULL, Fault.LOG_CLEARED})


def _number(name: str, value: Any, lo: float | None = None, hi: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"fault {name!r}: expected a number, got {value!r}")
    try:
        num = float(value)
    except ValueError:
        raise ValueError(f"fault {name!r}: expected a number, got {value!r}") from None
    if (lo is not None and num < lo) or (hi is not None and num > hi):
        raise ValueError(f"fault {name!r}: {num} is outside {lo}..{hi}")
    return num


def _flag(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on", ""):
        return True
    if isinstance(value, str) and value.lower() in ("0", "false", "no", "off"):
        return False
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise ValueError(f"fault {name!r}: expected true/false, got {value!r}")


def normalize_fault(name: str, value: Any = True) -> tuple[Fault, Any]:
    """Validate a fault name and value; returns the canonical (Fault, value).

    ``value`` may come from TOML/JSON (typed) or the command line (text). Raises ValueError
    naming the fault and what is wrong.
    """
    try:
        fault = Fault(name)
    except ValueError:
        known = ", ".join(f.value for f in Fault)
        raise ValueError(f"unknown fault {name!r} (known: {known})") from None
    if fault in _BOOL:
        return fault, _flag(name, value)
    if fault is Fault.SLOW:
        return fault, _number(name, 0.3 if value is True else value, 0.0, 3600.0)
    if fault is Fault.UDP_LOSS:
        return fault, _number(name, 0.2 if value is True else value, 0.0, 1.0)
    if fault is Fault.CLOCK_SKEW:
        return fault, int(_number(name, 3600 if value is True else value, -3e9, 3e9))
    if fault is Fault.GARBAGE_TIMESTAMPS:
        return fault, _number(name, 0.1 if value is True else value, 0.0, 1.0)
    if fault is Fault.DROP_MID_TRANSFER:
        if value is True or value in ("", "true"):
            return fault, 0.5
        if value is False:
            return fault, False
        return fault, _number(name, value, 0.01, 0.99)
    if fault is Fault.CORRUPT_CHUNK:
        if value is True or value in ("", "true", "checksum"):
            return fault, "checksum"
        if value == "length":
            return fault, "length"
        if value is False:
            return fault, False
        raise ValueError(f"fault {name!r}: expected true, 'checksum' or 'length', got {value!r}")
    if fault is Fault.WRONG_COMM_KEY:
        if isinstance(value, bool):
            return fault, value
        return fault, int(_number(name, value, 0, 0xFFFFFFFF))
    if fault is Fault.REPLACED:
        if value is True or value == "":
            return fault, True
        if isinstance(value, str) and 0 < len(value) <= 23 and value.isprintable():
            return fault, value
        raise ValueError(f"fault {name!r}: expected true or a new serial (≤ 23 chars), got {value!r}")
    raise AssertionError(fault)  # pragma: no cover - every Fault is handled above


def is_active(value: Any) -> bool:
    """True when a stored fault value means "on" (False/0/None mean off)."""
    return value is not None and value is not False and value != 0

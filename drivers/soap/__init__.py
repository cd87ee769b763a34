"""Terminals read through their built-in SOAP web service (``POST /iWsService``, port 80): see driver.py.

The registry entry of ``drivers.DRIVERS["soap"]``: ``open_driver(target)`` and ``check_quirks(mapping)``.
docs/drivers/soap.md says what is verified and what is relied on.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from drivers.base import DeviceTarget
from drivers.soap.driver import SoapDriver, SoapParams, SoapSession, SoapStats
from drivers.soap.quirks import SoapQuirks


def open_driver(target: DeviceTarget) -> SoapDriver:
    """The driver for one configured terminal (its transport setting does not apply: SOAP is HTTP over TCP)."""
    params = SoapParams(address=target.address, port=target.port, comm_key=target.comm_key,
                        timeout_s=target.timeout_s, expected_serial=target.serial)
    return SoapDriver(params, SoapQuirks.from_mapping(target.quirks))


def check_quirks(quirks: Mapping[str, Any]) -> str | None:
    """None when SoapQuirks accepts the table, else why not."""
    try:
        SoapQuirks.from_mapping(quirks)
    except (TypeError, ValueError) as exc:
        return str(exc)
    return None


__all__ = ["SoapDriver", "SoapParams", "SoapQuirks", "SoapSession", "SoapStats", "check_quirks", "open_driver"]

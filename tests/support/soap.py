"""Simulated SOAP terminals for tests: a running SoapFleet on loopback with small defaults, and its ground truth."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from simulators.soap import SoapFleet, SoapSpec, SoapTerminal

#: Defaults of ``soap_spec``: a WIB terminal on any free loopback port with a small log.
SOAP_DEFAULTS: dict[str, Any] = dict(host="127.0.0.1", port=0, users=25, records=120, seed=11,
                                     timezone="Asia/Jakarta")


def soap_spec(serial: str, **kw: Any) -> SoapSpec:
    """A SoapSpec with the tests' defaults (SOAP_DEFAULTS)."""
    return SoapSpec(**{**SOAP_DEFAULTS, "serial": serial, **kw})


@contextmanager
def soap_fleet(truth_path: Path | None = None) -> Iterator[SoapFleet]:
    """A started SoapFleet (terminals added later start at once); stopped, sockets closed, afterwards."""
    fleet = SoapFleet(truth_path)
    fleet.start()
    try:
        yield fleet
    finally:
        fleet.stop()


def soap_entry_extra(term: SoapTerminal, **quirks: Any) -> dict[str, Any]:
    """What a gateway device entry adds for a SOAP terminal (tests.support.config.DeviceEntry.extra)."""
    extra: dict[str, Any] = {"driver": "soap"}
    if quirks:
        extra["quirks"] = quirks
    return extra

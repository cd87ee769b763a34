"""SOAP terminals of a simulated fleet: fleet-file entries (``kind = "soap"``) -> running SoapTerminals.

    fpgw-sim --fleet fleet.toml (simulators.cli) --entries--> soap_specs_from_entries() -> SoapFleet.start()
Each terminal listens on its own address (127.0.0.x counting up from ``host``) or its own port. Errors name
the entry and key, like the ZK fleet loader (simulators.zk.config).
"""

from __future__ import annotations

import dataclasses
import ipaddress
from pathlib import Path
from typing import Any

from simulators.soap.terminal import SoapSpec, SoapTerminal
from simulators.zk.config import ConfigError
from simulators.zk.truth import TruthWriter

_FIELDS = {f.name: f for f in dataclasses.fields(SoapSpec)}


def soap_spec_from_entry(where: str, entry: dict[str, Any]) -> SoapSpec:
    """A SoapSpec from one fleet-file table (types checked against the spec's defaults)."""
    kwargs: dict[str, Any] = {}
    for key, value in entry.items():
        f = _FIELDS.get(key)
        if f is None:
            raise ConfigError(f"{where}.{key}: unknown key for a SOAP terminal (known: {', '.join(sorted(_FIELDS))})")
        default = f.default
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise ConfigError(f"{where}.{key}: expected true or false, got {value!r}")
        elif isinstance(default, int):
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"{where}.{key}: expected an integer, got {value!r}")
        elif isinstance(default, float):
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError(f"{where}.{key}: expected a number, got {value!r}")
            value = float(value)
        elif not isinstance(value, str):
            raise ConfigError(f"{where}.{key}: expected a string, got {value!r}")
        kwargs[key] = value
    if "serial" not in kwargs:
        raise ConfigError(f"{where}.serial: a SOAP terminal needs a serial")
    spec = SoapSpec(**kwargs)
    if not 0 <= spec.port <= 65535:
        raise ConfigError(f"{where}.port: expected 0..65535, got {spec.port}")
    return spec


def soap_specs_from_entries(entries: list[tuple[str, dict[str, Any]]], *, base_host: str = "127.0.1.1",
                            per_device: str = "host") -> list[SoapSpec]:
    """Every SOAP entry of a fleet file as a spec; entries without ``host`` get 127.0.0.x counting up from
    ``base_host`` (``per_device = "port"``: the base host, ports counting up from the entry's port)."""
    specs = []
    for n, (where, entry) in enumerate(entries):
        entry = dict(entry)
        if "host" not in entry:
            if per_device == "port":
                entry["host"] = base_host
                if entry.get("port"):
                    entry["port"] = int(entry["port"]) + n
            else:
                try:
                    entry["host"] = str(ipaddress.IPv4Address(base_host) + n)
                except ValueError as exc:
                    raise ConfigError(f"{where}.host: cannot count up from {base_host!r}: {exc}") from None
        specs.append(soap_spec_from_entry(where, entry))
    seen: dict[tuple[str, int], str] = {}
    for spec in specs:
        if spec.port and (spec.host, spec.port) in seen:
            raise ConfigError(f"SOAP terminals {seen[(spec.host, spec.port)]!r} and {spec.serial!r} both use "
                              f"{spec.host}:{spec.port}")
        seen[(spec.host, spec.port)] = spec.serial
    return specs


class SoapFleet:
    """SOAP terminals started and stopped together, writing one ground-truth file."""

    def __init__(self, truth_path: Path | None = None, truth: TruthWriter | None = None) -> None:
        self._own_truth = truth is None and truth_path is not None
        self.truth = truth if truth is not None else (TruthWriter(truth_path) if truth_path is not None else None)
        self.terminals: list[SoapTerminal] = []
        self._started = False

    def add(self, spec: SoapSpec) -> SoapTerminal:
        """Add a terminal (started at once when the fleet runs)."""
        term = SoapTerminal(spec, self.truth)
        self.terminals.append(term)
        if self._started:
            term.start()
        return term

    def start(self) -> None:
        """Start every terminal."""
        self._started = True
        for term in self.terminals:
            term.start()

    def stop(self) -> None:
        """Stop every terminal and close the truth file (when the fleet opened it)."""
        for term in self.terminals:
            term.stop()
        self._started = False
        if self.truth is not None and self._own_truth:
            self.truth.close()

    def __enter__(self) -> SoapFleet:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

"""Push terminals of a simulated fleet: fleet-file entries (``kind = "push"``) -> running PushTerminals.

    fpgw-sim --fleet fleet.toml (simulators.cli) --entries--> specs_from_entries() -> PushFleet.start()
Errors name the entry and key, like the ZK fleet loader (simulators.zk.config).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from simulators.push.terminal import PushSpec, PushTerminal
from simulators.zk.config import ConfigError
from simulators.zk.truth import TruthWriter

_FIELDS = {f.name: f for f in dataclasses.fields(PushSpec)}


def spec_from_entry(where: str, entry: dict[str, Any], *, server: str | None = None) -> PushSpec:
    """A PushSpec from one fleet-file table; ``server`` (the --push-server flag) fills a missing server."""
    kwargs: dict[str, Any] = {}
    for key, value in entry.items():
        f = _FIELDS.get(key)
        if f is None:
            raise ConfigError(f"{where}.{key}: unknown key for a push terminal (known: {', '.join(sorted(_FIELDS))})")
        default = f.default
        if isinstance(default, bool) and not isinstance(value, bool):
            raise ConfigError(f"{where}.{key}: expected true or false, got {value!r}")
        if isinstance(default, int) and not isinstance(default, bool) and (
                isinstance(value, bool) or not isinstance(value, int)):
            raise ConfigError(f"{where}.{key}: expected an integer, got {value!r}")
        if isinstance(default, float):
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError(f"{where}.{key}: expected a number, got {value!r}")
            value = float(value)
        if isinstance(default, str) and not isinstance(value, str):
            raise ConfigError(f"{where}.{key}: expected a string, got {value!r}")
        kwargs[key] = value
    if "serial" not in kwargs:
        raise ConfigError(f"{where}.serial: a push terminal needs a serial")
    if server and "server" not in kwargs:
        kwargs["server"] = server
    spec = PushSpec(**kwargs)
    if spec.batch_size < 1 or spec.users < 1 or spec.records < 0:
        raise ConfigError(f"{where}: batch_size and users must be at least 1, records at least 0")
    return spec


def specs_from_entries(entries: list[tuple[str, dict[str, Any]]], *, server: str | None = None) -> list[PushSpec]:
    """Every push entry of a fleet file as a spec."""
    return [spec_from_entry(where, entry, server=server) for where, entry in entries]


class PushFleet:
    """Push terminals started and stopped together, writing one ground-truth file."""

    def __init__(self, truth_path: Path | None = None) -> None:
        self.truth = TruthWriter(truth_path) if truth_path is not None else None
        self.terminals: list[PushTerminal] = []

    def add(self, spec: PushSpec) -> PushTerminal:
        """Add a terminal (started with the fleet, or at once when the fleet runs)."""
        term = PushTerminal(spec, self.truth)
        self.terminals.append(term)
        return term

    def start(self) -> None:
        """Start every terminal's thread."""
        for term in self.terminals:
            term.start()

    def stop(self) -> None:
        """Stop every terminal and close the truth file."""
        for term in self.terminals:
            term.stop()
        if self.truth is not None:
            self.truth.close()

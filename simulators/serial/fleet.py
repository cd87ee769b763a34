"""Serial clocks of a simulated fleet: fleet-file entries (``kind = "serial"``) -> running SerialClocks.

    fpgw-sim --fleet fleet.toml (simulators.cli) --entries--> specs_from_entries() -> SerialFleet.start()
Errors name the entry and key, like the ZK fleet loader (simulators.zk.config).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from simulators.serial.clock import SerialClock, SerialClockSpec
from simulators.zk.config import ConfigError
from simulators.zk.truth import TruthWriter

_FIELDS = {f.name: f for f in dataclasses.fields(SerialClockSpec)}


def spec_from_entry(where: str, entry: dict[str, Any]) -> SerialClockSpec:
    """A SerialClockSpec from one fleet-file table."""
    kwargs: dict[str, Any] = {}
    for key, value in entry.items():
        f = _FIELDS.get(key)
        if f is None:
            raise ConfigError(f"{where}.{key}: unknown key for a serial clock (known: {', '.join(sorted(_FIELDS))})")
        default = f.default
        if isinstance(default, int) and (isinstance(value, bool) or not isinstance(value, int)):
            raise ConfigError(f"{where}.{key}: expected an integer, got {value!r}")
        if isinstance(default, float):
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError(f"{where}.{key}: expected a number, got {value!r}")
            value = float(value)
            if key in ("noise", "garble", "split") and not 0 <= value <= 1:
                raise ConfigError(f"{where}.{key}: expected a probability from 0 to 1, got {value!r}")
        if isinstance(default, str) and not isinstance(value, str):
            raise ConfigError(f"{where}.{key}: expected a string, got {value!r}")
        kwargs[key] = value
    spec = SerialClockSpec(**kwargs)
    try:
        SerialClock(spec)  # checks transport, line_format and line_end without opening anything
    except ValueError as exc:
        raise ConfigError(f"{where}.{exc}") from None
    if spec.users < 1 or spec.punches_per_minute < 0:
        raise ConfigError(f"{where}: users must be at least 1, punches_per_minute at least 0")
    return spec


def specs_from_entries(entries: list[tuple[str, dict[str, Any]]]) -> list[SerialClockSpec]:
    """Every serial entry of a fleet file as a spec."""
    return [spec_from_entry(where, entry) for where, entry in entries]


class SerialFleet:
    """Serial clocks started and stopped together, writing one ground-truth file."""

    def __init__(self, truth_path: Path | None = None) -> None:
        self.truth = TruthWriter(truth_path) if truth_path is not None else None
        self.clocks: list[SerialClock] = []

    def add(self, spec: SerialClockSpec) -> SerialClock:
        """Add a clock (started with the fleet)."""
        clock = SerialClock(spec, self.truth)
        self.clocks.append(clock)
        return clock

    def start(self) -> None:
        """Plug every clock in (open its pty or listen) and start its punch thread."""
        for clock in self.clocks:
            clock.start()

    def stop(self) -> None:
        """Unplug every clock and close the truth file."""
        for clock in self.clocks:
            clock.stop()
        if self.truth is not None:
            self.truth.close()

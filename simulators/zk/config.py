"""Fleet definitions: TOML fleet files and CLI flags -> validated ``DeviceSpec`` lists.

Used by ``simulators.cli`` (``fpgw-sim --fleet fleet.toml`` / ``--devices N``) and the
control API (device specs posted as JSON). Every error names the offending key and says
what is wrong; nothing here touches sockets.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import tomllib
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

from simulators.zk.device import DeviceSpec
from simulators.zk.faults import normalize_fault

SPEC_FIELDS = {f.name: f for f in dataclasses.fields(DeviceSpec)}
_FLEET_KEYS = {"truth", "control_port", "host", "port", "per_device", "serial_prefix", "log_level"}


class ConfigError(ValueError):
    """A fleet definition problem; the message names the key."""


@dataclass
class FleetConfig:
    """A whole simulated office/fleet: where to listen and which devices to run."""

    devices: list[DeviceSpec] = field(default_factory=list)
    truth: Path | None = None  #: ground-truth JSONL path
    control_port: int | None = 7788  #: control API port on 127.0.0.1 (None = off, 0 = any)
    log_level: str = "INFO"
    #: ``[[devices]]`` entries with ``kind = "push"`` as (where, table): HTTP clients built by simulators.push.
    push_devices: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    #: ``[[devices]]`` entries with ``kind = "soap"`` as (where, table): web-service terminals (simulators.soap).
    soap_devices: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    #: ``[[devices]]`` entries with ``kind = "serial"`` as (where, table): serial clocks built by simulators.serial.
    serial_devices: list[tuple[str, dict[str, Any]]] = field(default_factory=list)


def _suggest(key: str, known: set[str] | dict[str, Any]) -> str:
    close = difflib.get_close_matches(key, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _coerce(where: str, name: str, value: Any) -> Any:
    """Type-check one DeviceSpec field coming from TOML/JSON."""
    f = SPEC_FIELDS[name]
    default = f.default if f.default is not dataclasses.MISSING else None
    if name == "start_date":
        if value is None or isinstance(value, date):
            return value
        if isinstance(value, str):
            try:
                return date.fromisoformat(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}.start_date: expected a date like 2025-01-06, got {value!r}")
    if name == "free_sizes" and isinstance(value, int) and not isinstance(value, bool):
        value = str(value)  # free_sizes = 80 reads as naturally as "80"
    if name == "faults":
        if not isinstance(value, dict):
            raise ConfigError(f"{where}.faults: expected a table of fault = value, got {value!r}")
        for k, v in value.items():
            try:
                normalize_fault(k, v)
            except ValueError as e:
                raise ConfigError(f"{where}.faults.{k}: {e}") from None
        return dict(value)
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{where}.{name}: expected true or false, got {value!r}")
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}.{name}: expected an integer, got {value!r}")
        return value
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}.{name}: expected a number, got {value!r}")
        return float(value)
    if isinstance(default, str):
        if not isinstance(value, str):
            raise ConfigError(f"{where}.{name}: expected a string, got {value!r}")
        return value
    return value


def spec_from_mapping(where: str, data: dict[str, Any]) -> DeviceSpec:
    """Build a DeviceSpec from a TOML table / JSON object, naming bad keys."""
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key not in SPEC_FIELDS:
            raise ConfigError(f"{where}.{key}: unknown key{_suggest(key, SPEC_FIELDS)}")
        kwargs[key] = _coerce(where, key, value)
    try:
        return DeviceSpec(**kwargs)
    except ValueError as e:
        raise ConfigError(f"{where}: {e}") from None


def nth_address(base: str, n: int, per_device: str, port: int) -> tuple[str, int]:
    """Address of the n-th device (0-based): 127.0.0.x counting up, or ports counting up."""
    if per_device == "port":
        return base, (port + n) if port else 0
    try:
        addr = ipaddress.IPv4Address(base) + n
    except (ValueError, ipaddress.AddressValueError) as e:
        raise ConfigError(f"host: cannot count up from {base!r} by {n}: {e}") from None
    if not addr.is_loopback and n:
        raise ConfigError(f"host: device {n + 1} would be at {addr}, outside 127.0.0.0/8; "
                          "use per_device = \"port\" or a lower base address")
    return str(addr), port


def load_fleet_file(path: Path | str) -> FleetConfig:
    """Parse and validate a fleet TOML file (see simulators/fleet.example.toml)."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    return fleet_from_mapping(raw, str(path), base_dir=path.parent)


def fleet_from_mapping(raw: dict[str, Any], where: str = "fleet",
                       base_dir: Path | None = None) -> FleetConfig:
    """Validate an already-parsed fleet definition."""
    for key in raw:
        if key not in ("fleet", "defaults", "devices"):
            raise ConfigError(f"{where}: unknown top-level key {key!r}"
                              f"{_suggest(key, {'fleet', 'defaults', 'devices'})}")
    fleet = raw.get("fleet", {})
    if not isinstance(fleet, dict):
        raise ConfigError(f"{where}: [fleet] must be a table")
    for key in fleet:
        if key not in _FLEET_KEYS:
            raise ConfigError(f"{where}: fleet.{key}: unknown key{_suggest(key, _FLEET_KEYS)}")
    defaults = raw.get("defaults", {})
    if not isinstance(defaults, dict):
        raise ConfigError(f"{where}: [defaults] must be a table")
    for key in defaults:
        if key not in SPEC_FIELDS or key == "serial":
            raise ConfigError(f"{where}: defaults.{key}: unknown key{_suggest(key, SPEC_FIELDS)}")
    devices = raw.get("devices", [])
    if not isinstance(devices, list) or not devices:
        raise ConfigError(f"{where}: needs at least one [[devices]] entry")

    base_host = fleet.get("host", "127.0.0.1")
    base_port = fleet.get("port", 4370)
    per_device = fleet.get("per_device", "host")
    prefix = fleet.get("serial_prefix", "SIM")
    if not isinstance(base_host, str):
        raise ConfigError(f"{where}: fleet.host: expected a string, got {base_host!r}")
    if isinstance(base_port, bool) or not isinstance(base_port, int) or not 0 <= base_port <= 65535:
        raise ConfigError(f"{where}: fleet.port: expected 0..65535, got {base_port!r}")
    if per_device not in ("host", "port"):
        raise ConfigError(f"{where}: fleet.per_device: expected \"host\" or \"port\", got {per_device!r}")

    specs: list[DeviceSpec] = []
    push: list[tuple[str, dict[str, Any]]] = []
    soap: list[tuple[str, dict[str, Any]]] = []
    serial_entries: list[tuple[str, dict[str, Any]]] = []
    n = 0
    for i, entry in enumerate(devices):
        loc = f"{where}: devices[{i}]"
        if not isinstance(entry, dict):
            raise ConfigError(f"{loc}: must be a table")
        entry = dict(entry)
        kind = entry.pop("kind", "zk")
        if kind == "push":
            push.append((loc, entry))
            continue
        if kind == "soap":
            soap.append((loc, entry))
            continue
        if kind == "serial":
            serial_entries.append((loc, entry))
            continue
        if kind != "zk":
            raise ConfigError(f"{loc}.kind: expected \"zk\" (default), \"push\", \"soap\" or \"serial\", got {kind!r}")
        count = entry.pop("count", 1)
        if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= 10_000:
            raise ConfigError(f"{loc}.count: expected 1..10000, got {count!r}")
        for k in range(count):
            merged = {**defaults, **entry}
            if "faults" in defaults and "faults" in entry:
                merged["faults"] = {**defaults["faults"], **entry["faults"]}
            serial = entry.get("serial")
            if serial is None:
                merged["serial"] = f"{prefix}{n + 1:04d}"
            elif count > 1:
                merged["serial"] = f"{serial}-{k + 1:03d}"
            host, port = nth_address(base_host, n, per_device, base_port)
            merged.setdefault("host", host)
            merged.setdefault("port", port)
            if "seed" not in entry:
                # Distinct data per device unless a seed is pinned on the entry itself.
                merged["seed"] = int(defaults.get("seed", 1)) + n
            specs.append(spec_from_mapping(f"{loc}", merged))
            n += 1
    _check_unique(specs, where)

    truth = fleet.get("truth")
    if truth is not None and not isinstance(truth, str):
        raise ConfigError(f"{where}: fleet.truth: expected a path string, got {truth!r}")
    control = fleet.get("control_port", 7788)
    if control is not None and (isinstance(control, bool) or not isinstance(control, int)
                                or not 0 <= control <= 65535):
        raise ConfigError(f"{where}: fleet.control_port: expected 0..65535, got {control!r}")
    truth_path = None
    if truth:
        truth_path = Path(truth)
        if base_dir is not None and not truth_path.is_absolute():
            truth_path = base_dir / truth_path
    return FleetConfig(devices=specs, truth=truth_path, control_port=control,
                       log_level=str(fleet.get("log_level", "INFO")), push_devices=push,
                       soap_devices=soap, serial_devices=serial_entries)


def _check_unique(specs: list[DeviceSpec], where: str) -> None:
    serials: set[str] = set()
    addrs: dict[tuple[str, int], str] = {}
    for s in specs:
        if s.serial in serials:
            raise ConfigError(f"{where}: serial {s.serial!r} is used twice")
        serials.add(s.serial)
        if s.port:
            other = addrs.get((s.host, s.port))
            if other is not None:
                raise ConfigError(f"{where}: devices {other!r} and {s.serial!r} both use "
                                  f"{s.host}:{s.port}")
            addrs[(s.host, s.port)] = s.serial

"""Config builders: documents for simulated devices on loopback, validated Configs, TOML files for the CLI."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.config import Config, parse_config
from tests.support.secrets import GATEWAY_TOKEN

#: The office of the gateway-level tests.
OFFICE_CODE = "1801.01.02"


@dataclass
class DeviceEntry:
    """How the gateway is configured for one simulated device."""

    id: str
    sim: Any
    transport: str = "tcp"
    comm_key_env: str | None = None
    serial: str | None = None
    extra: dict[str, Any] | None = None


def config_dict(db_url: str, devices: Iterable[DeviceEntry], *, interval_s: float = 3600,
                polling: dict[str, Any] | None = None, **sections: Any) -> dict[str, Any]:
    """A config document for simulated devices on loopback (HTTP off unless asked)."""
    devs = []
    for d in devices:
        entry: dict[str, Any] = {"id": d.id, "address": d.sim.host, "port": d.sim.port, "transport": d.transport,
                                 "timeout_s": 2}
        if d.comm_key_env:
            entry["comm_key_env"] = d.comm_key_env
        if d.serial:
            entry["serial"] = d.serial
        entry.update(d.extra or {})
        devs.append(entry)
    doc: dict[str, Any] = {
        "site": {"office_code": OFFICE_CODE, "office_name": "Test office", "timezone": "Asia/Jakarta"},
        "database": {"url": db_url},
        "polling": {"interval_s": interval_s, "shutdown_deadline_s": 10, **(polling or {})},
        "http": {"enabled": False},
        "devices": devs,
    }
    doc.update(sections)
    return doc


def make_config(db_url: str, devices: Iterable[DeviceEntry], base_dir: Path, **kw: Any) -> Config:
    """Validated Config for simulated devices."""
    return parse_config(config_dict(db_url, devices, **kw), base_dir=base_dir)


def forward_config(tmp_path: Path, db_url: str, office_code: str = "1801.01", **forward: Any) -> Config:
    """An office gateway forwarding to an unreachable centre (tests replace the transport), token in tmp_path."""
    token = tmp_path / "token"
    token.write_text(GATEWAY_TOKEN + "\n")
    return parse_config({
        "site": {"office_code": office_code, "timezone": "Asia/Jakarta", "state_dir": str(tmp_path)},
        "database": {"url": db_url},
        "devices": [{"id": "lobby", "address": "127.0.0.1"}],
        "forward": {"url": "https://bkd.example.invalid", "token_file": str(token), "batch_size": 10,
                    "backoff_initial_s": 10, "backoff_max_s": 600, "alert_after_s": 3600, **forward},
        "alerts": {"reminder_s": 86400},
    }, base_dir=tmp_path)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(x)}" for k, x in v.items()) + " }"
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(v)


def write_toml(doc: dict[str, Any], path: Path) -> Path:
    """Minimal TOML writer for config documents: top-level tables and arrays of tables, inline values below."""
    lines: list[str] = []
    for name, table in doc.items():
        if isinstance(table, list):
            for item in table:
                lines.append(f"[[{name}]]")
                lines += [f"{k} = {_toml_value(v)}" for k, v in item.items()]
                lines.append("")
        else:
            lines.append(f"[{name}]")
            lines += [f"{k} = {_toml_value(v)}" for k, v in table.items()]
            lines.append("")
    path.write_text("\n".join(lines), encoding="utf-8")
    return path

"""ZKTeco terminals (binary protocol on port 4370) through pyzk 0.9: see driver.py.

The registry entry of ``drivers.DRIVERS["zk"]``. Importing this package does not import pyzk: the driver
module is loaded by ``open_driver`` (or by naming ``ZkDriver``/``ZkParams``/... from here), so a config
check or a gateway without zk devices never needs it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

from drivers.zk.quirks import ZkQuirks

if TYPE_CHECKING:
    from drivers.base import DeviceTarget
    from drivers.zk.driver import ZkDriver, ZkParams, ZkSession, ZkStats

_LAZY = ("ZkDriver", "ZkParams", "ZkSession", "ZkStats")


def open_driver(target: DeviceTarget) -> ZkDriver:
    """The driver for one configured terminal."""
    from drivers.zk.driver import ZkDriver, ZkParams

    transport: Literal["tcp", "udp"]
    if target.transport == "tcp":
        transport = "tcp"
    elif target.transport == "udp":
        transport = "udp"
    else:
        raise ValueError(f"transport must be 'tcp' or 'udp', got {target.transport!r}")
    params = ZkParams(address=target.address, port=target.port, transport=transport, comm_key=target.comm_key,
                      timeout_s=target.timeout_s, expected_serial=target.serial)
    return ZkDriver(params, ZkQuirks.from_mapping(target.quirks))


def check_quirks(quirks: Mapping[str, Any]) -> str | None:
    """None when ZkQuirks accepts the table, else why not (the driver owns the list of quirks it knows)."""
    try:
        ZkQuirks.from_mapping(quirks)
    except (TypeError, ValueError) as exc:
        return str(exc)
    return None


def __getattr__(name: str) -> Any:
    # PEP 562: `from drivers.zk import ZkDriver` keeps working, importing pyzk only then.
    if name in _LAZY:
        from drivers.zk import driver

        return getattr(driver, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["ZkDriver", "ZkParams", "ZkQuirks", "ZkSession", "ZkStats", "check_quirks", "open_driver"]

"""Device drivers: the only code that speaks to terminals. Imports nothing from gateway/.

gateway.polling.poller looks a device's driver up here by the name its config gives (``driver = "zk"``)
and builds it from the device's settings (a ``drivers.base.DeviceTarget``). Each driver is one package
``drivers/<name>/`` exposing ``open_driver(target) -> Driver`` and, optionally, ``check_quirks(mapping)``
(the config's workaround table, validated when the config loads); adding one is that folder plus one line
in ``DRIVERS``. Packages are imported on first use, and a driver package keeps its protocol library out
of its ``__init__``: pyzk is loaded only when a zk device is polled.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from types import ModuleType
from typing import Any

from drivers.base import DeviceTarget, Driver

#: Driver name (the device config's ``driver`` key) -> package implementing it.
DRIVERS: dict[str, str] = {
    "zk": "drivers.zk",  # ZKTeco binary protocol on port 4370, through pyzk
    "soap": "drivers.soap",  # the terminals' SOAP web service (POST /iWsService, port 80), through httpx
}

DriverFactory = Callable[[DeviceTarget], Driver]


class UnknownDriver(LookupError):
    """No driver of that name is registered."""

    def __init__(self, name: str) -> None:
        super().__init__(f"unknown driver {name!r}; known: {', '.join(sorted(DRIVERS))}")
        self.name = name


def driver_names() -> tuple[str, ...]:
    """The registered driver names, in registry order."""
    return tuple(DRIVERS)


def _package(name: str) -> ModuleType:
    try:
        return importlib.import_module(DRIVERS[name])
    except KeyError:
        raise UnknownDriver(name) from None


def get_driver(name: str) -> DriverFactory:
    """The factory of the named driver: ``factory(target) -> Driver``. Raises UnknownDriver."""
    factory: DriverFactory = _package(name).open_driver
    return factory


def check_quirks(name: str, quirks: Mapping[str, Any]) -> str | None:
    """The named driver's verdict on a workaround table: None when fine, else one line saying why not."""
    check: Callable[[Mapping[str, Any]], str | None] | None = getattr(_package(name), "check_quirks", None)
    return check(quirks) if check is not None else None


__all__ = ["DRIVERS", "DriverFactory", "UnknownDriver", "check_quirks", "driver_names", "get_driver"]

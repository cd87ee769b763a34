"""Simulated terminals for tests: a running Fleet on loopback, device specs with small defaults, ground truth.

The simulator is imported plainly: a test that needs it fails (never skips) when it cannot be imported.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from simulators.zk import DeviceSpec, Fleet, SimDevice, read_truth

#: (serial, user_id, device time, state, verify): what the truth file and the punches table agree on.
PunchKey = tuple[str, str, str, int, int]

#: Defaults of ``sim_spec`` (gateway-level tests: a WIB terminal with a small log, no live punching).
GATEWAY_DEFAULTS: dict[str, Any] = dict(host="127.0.0.1", port=0, tcp=True, udp=True, record_layout=40,
                                        user_layout=72, comm_key=0, users=30, records=200, seed=7,
                                        timezone="Asia/Jakarta", punches_per_minute=0.0, faults={})
#: Device profiles (simulators/zk/profiles.py) our driver reads, real-terminal framing included (the
#: SpeedFace-style profile, whose record layout is not public, is left out). A mixed fleet picks from these
#: (checked for every transport by tests/simulators/test_compat_matrix.py).
DRIVER_READY_PROFILES: dict[str, dict[str, Any]] = {
    "generic": {},
    "k40": {},
    "iclock880": {},
    "mb360": {},
    "ma300": {},
    "x100c": {},
}
#: What ``add_sim_device`` (the driver tests) changes in them.
DRIVER_DEFAULTS: dict[str, Any] = dict(serial="SIM1", users=50, records=300, seed=1)


@contextmanager
def running_fleet(truth_path: Path) -> Iterator[Fleet]:
    """A started Fleet writing its ground truth to ``truth_path``; stopped (sockets closed) afterwards.

    The path is also on the fleet as ``truth_file`` for helpers that only get the fleet.
    """
    with Fleet(truth_path=truth_path) as fleet:
        fleet.truth_file = truth_path  # type: ignore[attr-defined]
        yield fleet


def sim_spec(serial: str, **kw: Any) -> DeviceSpec:
    """A DeviceSpec with small, fast defaults (GATEWAY_DEFAULTS)."""
    return DeviceSpec(**{**GATEWAY_DEFAULTS, "serial": serial, **kw})


def profile_spec(serial: str, profile: str, **kw: Any) -> DeviceSpec:
    """A small device of a driver-ready profile (DRIVER_READY_PROFILES), e.g. for a mixed-profile fleet."""
    return sim_spec(serial, profile=profile, **{**DRIVER_READY_PROFILES[profile], **kw})


def add_sim_device(fleet: Fleet, **spec: Any) -> SimDevice:
    """Add a device to the fleet with the driver tests' defaults (DRIVER_DEFAULTS)."""
    return fleet.add(sim_spec(**{**DRIVER_DEFAULTS, **spec}))


def truth_keys(truth_path: Path, serials: Iterable[str] | None = None) -> Counter[PunchKey]:
    """Multiset of (serial, user_id, time, state, verify) every simulated device ever held."""
    wanted = set(serials) if serials is not None else None
    return Counter((r["serial"], r["user_id"], r["time"], int(r["state"]), int(r["verify"]))
                   for r in read_truth(truth_path) if wanted is None or r["serial"] in wanted)


def sim_truth(path: Path, serial: str) -> list[tuple[str, str, int, int]]:
    """One device's log according to the truth file, in write order: (user_id, time_text, state, verify)."""
    return [(r["user_id"], r["time"], int(r["state"]), int(r["verify"])) for r in read_truth(path)
            if r["serial"] == serial]


def settle(fleet: Fleet, turns: int = 2) -> None:
    """Wait until the simulator's event loop has run what is already queued on it, ``turns`` times over.

    set_fault()/clear_fault() return once the fault is applied on the loop, but what that applying queues
    (a dropped session's socket closing, the accept task starting or stopping) runs on the following turns.
    """
    for _ in range(turns):
        fleet.call_and_wait(lambda: None)

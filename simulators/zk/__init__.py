"""Simulated ZKTeco terminals speaking the binary protocol on UDP and TCP (port 4370 style).

Public API: ``DeviceSpec`` (what to simulate), ``Fleet`` (one loop thread serving many
devices), ``SimDevice`` (a running device: punches, faults, clear, replace) and ``Fault``.
Own codec in ``protocol.py``; imports nothing from drivers/, gateway/ or pyzk.
"""

from simulators.zk.device import DeviceSpec, SimDevice
from simulators.zk.faults import Fault
from simulators.zk.server import Fleet
from simulators.zk.truth import read_truth

__all__ = ["DeviceSpec", "Fault", "Fleet", "SimDevice", "read_truth"]

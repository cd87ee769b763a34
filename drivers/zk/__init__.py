"""ZKTeco terminals (binary protocol on port 4370) through pyzk 0.9: see driver.py."""

from drivers.zk.driver import ZkDriver, ZkParams, ZkSession, ZkStats
from drivers.zk.quirks import ZkQuirks

__all__ = ["ZkDriver", "ZkParams", "ZkQuirks", "ZkSession", "ZkStats"]

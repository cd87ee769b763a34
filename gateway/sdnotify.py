"""Minimal systemd notify protocol (sd_notify) in the standard library.

Used by gateway.app: READY=1 once migrations ran and the scheduler started, STATUS= with a short
human summary for ``systemctl status``, WATCHDOG=1 from a loop that checks real progress, STOPPING=1
on SIGTERM. Outside systemd (no $NOTIFY_SOCKET) every call is a cheap no-op returning False.
"""

from __future__ import annotations

import os
import socket


def notify(*fields: str) -> bool:
    """Send ``KEY=value`` fields to systemd in one datagram; False when not under systemd or on error."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address or not fields:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # abstract namespace socket
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            # Never block the daemon's main loop on a receiver that does not read (full queue).
            sock.setblocking(False)
            sock.connect(address)
            sock.send("\n".join(fields).encode("utf-8"))
        return True
    except OSError:  # includes BlockingIOError: the message is dropped, the next one will do
        return False


def watchdog_interval_s() -> float | None:
    """Half the watchdog period systemd asks for (send WATCHDOG=1 at least this often), or None."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid.isdigit() and int(pid) != os.getpid()):
        return None
    try:
        return max(int(usec) / 2_000_000, 0.5)
    except ValueError:
        return None

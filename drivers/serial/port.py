"""Opens a serial line through pyserial and classifies what goes wrong: the only module importing pyserial.

    gateway.serial reader --open_line(PortSettings)--> SerialLine.read_some() --bytes--> framing.LineFramer

One opener for the three shapes a clock is reached by (pyserial's ``serial_for_url``): a local port
(``/dev/ttyUSB0``, better ``/dev/serial/by-id/...``), a device server in raw TCP mode (``socket://host:port``)
and one speaking RFC 2217 (``rfc2217://host:port``). Errors come out as drivers.base errors with one clear
line: a port that is missing (unplugged, renamed), refuses us, or is held by another process is
``Unreachable`` (nothing is read from it, so health must not count it as answering). Reads always have a
timeout, so the reader thread sees its stop request within it. RS-485 direction control and modem lines
are never touched (pyserial raises on a pty for both, and most USB-RS485 adapters switch direction in
hardware).
"""

from __future__ import annotations

import errno
from dataclasses import dataclass
from typing import Any

from drivers.base import DriverError, Unreachable

PARITIES = {"none": "N", "even": "E", "odd": "O", "mark": "M", "space": "S"}
BYTESIZES = (5, 6, 7, 8)
STOPBITS = (1, 1.5, 2)
BAUDS = (300, 600, 1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200, 230400)
URL_SCHEMES = ("socket://", "rfc2217://")
#: Bytes asked for per read (a clock sends a few dozen per punch).
READ_CHUNK = 4096


@dataclass(frozen=True)
class PortSettings:
    """Where and how to open the line (gateway.config builds it from a device's keys)."""

    #: A device path or a pyserial URL (socket://, rfc2217://).
    url: str
    baud: int = 9600
    bytesize: int = 8
    #: none, even, odd, mark or space.
    parity: str = "none"
    stopbits: float = 1
    #: Longest a read waits for the first byte (the reader checks its stop request in between).
    read_timeout_s: float = 0.5

    @property
    def is_url(self) -> bool:
        """True for a device server (socket://, rfc2217://), False for a local port."""
        return self.url.startswith(URL_SCHEMES)


class SerialLine:
    """An open line: ``read_some`` returns the bytes that arrived (b"" after a quiet read timeout)."""

    def __init__(self, port: Any, settings: PortSettings) -> None:
        self._port = port
        self.settings = settings

    def read_some(self) -> bytes:
        """Bytes that arrived within the read timeout; raises Unreachable when the line went away."""
        import serial

        try:
            first = self._port.read(1)
            if not first:
                return b""
            if self.settings.url.startswith("socket://"):
                # socket://'s in_waiting only says "something is there" (1): take one recv of what arrived
                # instead (timeout 0; setting it reconfigures nothing on a socket).
                self._port.timeout = 0
                try:
                    return first + self._port.read(READ_CHUNK)
                finally:
                    self._port.timeout = self.settings.read_timeout_s
            waiting = self._port.in_waiting
            return first + (self._port.read(min(waiting, READ_CHUNK)) if waiting else b"")
        except (serial.SerialException, OSError) as exc:
            raise _classify(exc, self.settings, opening=False) from None

    def close(self) -> None:
        """Close; never raises."""
        try:
            self._port.close()
        except Exception:  # closing a vanished port can fail in many ways; nothing is left to do
            pass


def open_line(settings: PortSettings) -> SerialLine:
    """Open the port or device server; raises Unreachable / Busy / DriverError with one clear line."""
    import serial

    try:
        # socket:// connects with pyserial's own 5 s timeout; rfc2217:// takes ?timeout=s in the URL. No
        # write_timeout: nothing is ever written, and rfc2217:// refuses one (NotImplementedError).
        port = serial.serial_for_url(settings.url, baudrate=settings.baud, bytesize=settings.bytesize,
                                     parity=PARITIES.get(settings.parity, "N"), stopbits=settings.stopbits,
                                     timeout=settings.read_timeout_s,
                                     exclusive=None if settings.is_url else True)
    except (serial.SerialException, OSError, ValueError) as exc:
        raise _classify(exc, settings, opening=True) from None
    return SerialLine(port, settings)


def _classify(exc: BaseException, settings: PortSettings, *, opening: bool) -> DriverError:
    """One line saying what happened to the port, as the drivers.base error that fits."""
    where = settings.url
    text = str(exc)
    code = getattr(exc, "errno", None)
    lowered = text.lower()
    if code == errno.ENOENT or "no such file" in lowered:
        return Unreachable(f"serial port {where} does not exist (unplugged, or it has another name now: "
                           "use /dev/serial/by-id/...)")
    if code in (errno.EACCES, errno.EPERM) or "permission denied" in lowered:
        return Unreachable(f"no permission to open serial port {where} (the service needs the dialout group and "
                           "the systemd drop-in fpgw-serial.conf, see docs/serial.md)")
    if "exclusively lock" in lowered or code == errno.EBUSY:
        # Unreachable, not Busy: health counts a busy device as answering, but nothing is read from this line.
        return Unreachable(f"serial port {where} is held by another program (another fpgw, a terminal program?)")
    if not opening and ("disconnected" in lowered or "returned no data" in lowered or code == errno.EIO
                        or "read failed" in lowered):
        return Unreachable(f"serial line {where} went away (unplugged, or the device server closed the "
                           "connection)")
    if settings.is_url and opening:
        return Unreachable(f"device server {where} cannot be reached: {text[:200]}")
    if isinstance(exc, ValueError):
        return DriverError(f"serial port {where}: unusable settings: {text[:200]}", transient=False)
    return Unreachable(f"serial port {where}: {text[:200]}")

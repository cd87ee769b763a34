"""HTTP for the SOAP driver: one ``POST /iWsService`` -> the answer's body bytes, bounded in size and time.

Flow: drivers.soap.driver.SoapSession -> Transport.post(body) -> terminal port 80 -> body bytes -> drivers.soap.codec.
Two ways, one contract:
- ``HttpxTransport`` (the default): httpx, already a gateway dependency. It copes with what the terminals
  are known to send: HTTP/1.0 answers closed instead of sized, bytes after Content-Length, blank lines
  before the body, LF-only header lines (checked in tests/drivers/test_soap_transport.py).
- ``RawTransport``: a plain socket writing the HTTP/1.0 request the vendor samples write by hand and reading
  until the terminal closes. Used only where httpx's HTTP parser (h11) refuses an answer's head: a header
  line without a colon, or no status line at all (a body sent bare). The driver switches to it for a
  terminal after httpx refused such a head once (or from the start with the ``raw_http`` workaround).
Both stop reading at ``max_bytes`` and at the session deadline (httpx: checked between reads, so a trickling
terminal overruns it by at most one read timeout; the raw socket shortens each read to the time left).
Errors become drivers.base errors: Unreachable (refused, timeout, reset before an answer) or ProtocolError.
"""

from __future__ import annotations

import re
import socket
import time
from typing import Protocol

import httpx

from drivers.base import ProtocolError, Unreachable

PATH = "/iWsService"
#: The HTTP head of an answer is a few hundred bytes; anything near this is not a terminal.
HEAD_MAX = 16 * 1024


class HeadRefused(ProtocolError):
    """httpx refused the answer's status line or headers: the raw socket may read it (RawTransport)."""


class Transport(Protocol):
    """Posts one SOAP body and returns the answer's body bytes."""

    #: Body bytes received through this transport so far.
    bytes_read: int

    def post(self, body: bytes, *, deadline: float | None, max_bytes: int) -> bytes:
        """The answer's body. Raises Unreachable, ProtocolError (HeadRefused for a head httpx cannot read)."""
        ...

    def close(self) -> None:
        """Release sockets; idempotent."""
        ...


def _left(deadline: float | None, timeout_s: float, what: str) -> float:
    if deadline is None:
        return timeout_s
    left = deadline - time.monotonic()
    if left <= 0:
        raise ProtocolError(f"{what}: the poll deadline passed while waiting for the terminal")
    return min(timeout_s, left)


class HttpxTransport:
    """httpx client for one session (the terminal closes after every answer: no connection is reused)."""

    def __init__(self, host: str, port: int, timeout_s: float) -> None:
        self.url = f"http://{host}:{port}{PATH}"
        self.timeout_s = timeout_s
        self.bytes_read = 0
        # No proxies from the environment: terminals sit on the office LAN.
        self._client = httpx.Client(timeout=timeout_s, trust_env=False, follow_redirects=False)

    def post(self, body: bytes, *, deadline: float | None, max_bytes: int) -> bytes:
        """POST the body, read the answer's body within ``max_bytes`` and the deadline."""
        what = _method_of(body)
        timeout = _left(deadline, self.timeout_s, what)
        # SOAPAction as the vendor's own demo sends it (§1.1); harmless for terminals that ignore it.
        headers = {"Content-Type": "text/xml", "SOAPAction": "uri:zksoftware", "Connection": "close"}
        request = self._client.build_request("POST", self.url, content=body, headers=headers, timeout=timeout)
        try:
            response = self._client.send(request, stream=True)
        except httpx.RemoteProtocolError as exc:
            # Before any body: the status line or a header line that h11 will not read.
            raise HeadRefused(f"{what}: the terminal's HTTP answer head is not valid HTTP ({exc})") from exc
        except (httpx.TimeoutException, httpx.NetworkError, OSError) as exc:
            raise Unreachable(f"{what}: no answer from {self.url} ({type(exc).__name__}: {exc})") from exc
        except httpx.HTTPError as exc:
            raise ProtocolError(f"{what}: HTTP exchange failed ({type(exc).__name__}: {exc})") from exc
        try:
            if response.status_code != 200:
                raise ProtocolError(f"{what}: HTTP {response.status_code} from {self.url} (SOAP service "
                                    "switched off, or not a ZK web server?)")
            chunks: list[bytes] = []
            size = 0
            try:
                for chunk in response.iter_raw():
                    size += len(chunk)
                    self.bytes_read += len(chunk)
                    if size > max_bytes:
                        raise ProtocolError(f"{what}: the answer is larger than {max_bytes} bytes "
                                            "(workaround max_response_bytes)")
                    chunks.append(chunk)
                    _left(deadline, self.timeout_s, what)
            except httpx.RemoteProtocolError as exc:
                raise ProtocolError(f"{what}: the answer was cut short ({exc})") from exc
            except (httpx.TimeoutException, httpx.NetworkError, OSError) as exc:
                raise ProtocolError(f"{what}: the terminal stopped sending after {size} bytes "
                                    f"({type(exc).__name__})") from exc
            except httpx.HTTPError as exc:
                raise ProtocolError(f"{what}: HTTP exchange failed ({type(exc).__name__}: {exc})") from exc
            return b"".join(chunks)
        finally:
            response.close()

    def close(self) -> None:
        """Close the client and its sockets."""
        self._client.close()


_STATUS = re.compile(rb"^HTTP/\d(?:\.\d)?\s+(\d{3})")
_CONTENT_LENGTH = re.compile(rb"^content-length\s*:\s*(\d{1,12})\s*$", re.IGNORECASE | re.MULTILINE)


class RawTransport:
    """HTTP/1.0 over a plain socket, read until the terminal closes; head parsed line by line, leniently."""

    def __init__(self, host: str, port: int, timeout_s: float) -> None:
        self.host, self.port = host, port
        self.timeout_s = timeout_s
        self.bytes_read = 0

    def post(self, body: bytes, *, deadline: float | None, max_bytes: int) -> bytes:
        """Write the request the vendor samples write (§1.2) and read the whole answer."""
        what = _method_of(body)
        head = (f"POST {PATH} HTTP/1.0\r\nContent-Type: text/xml\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode("ascii")
        try:
            sock = socket.create_connection((self.host, self.port), timeout=_left(deadline, self.timeout_s, what))
        except OSError as exc:
            raise Unreachable(f"{what}: cannot connect to {self.host}:{self.port} ({exc})") from exc
        data = bytearray()
        try:
            try:
                sock.sendall(head + body)
                while True:
                    sock.settimeout(_left(deadline, self.timeout_s, what))
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                    self.bytes_read += len(chunk)
                    if len(data) > max_bytes + HEAD_MAX:
                        raise ProtocolError(f"{what}: the answer is larger than {max_bytes} bytes "
                                            "(workaround max_response_bytes)")
            except TimeoutError as exc:
                if not data:
                    raise Unreachable(f"{what}: no answer from {self.host}:{self.port} within "
                                      f"{self.timeout_s:g} s") from exc
                raise ProtocolError(f"{what}: the terminal stopped sending after {len(data)} bytes") from exc
            except OSError as exc:
                if not data:
                    raise Unreachable(f"{what}: connection to {self.host}:{self.port} failed ({exc})") from exc
                raise ProtocolError(f"{what}: connection dropped after {len(data)} bytes ({exc})") from exc
        finally:
            sock.close()
        return split_raw_answer(bytes(data), what, max_bytes)

    def close(self) -> None:
        """Nothing stays open between posts."""


def split_raw_answer(data: bytes, what: str, max_bytes: int) -> bytes:
    """The body of a raw HTTP answer: after the head when there is one (a bare body has none), cut at
    Content-Length when it is given (bytes after it are ignored), else everything until the close."""
    if not data:
        raise ProtocolError(f"{what}: the terminal closed the connection without answering")
    if not _STATUS.match(data):
        if data.lstrip()[:1] == b"<":
            return data[:max_bytes]  # no head at all: the body alone
        raise ProtocolError(f"{what}: not an HTTP answer (starts {data[:30]!r})")
    status = int(_STATUS.match(data).group(1))  # type: ignore[union-attr]
    ends = [(i, len(sep)) for sep in (b"\r\n\r\n", b"\n\n") if (i := data.find(sep, 0, HEAD_MAX)) >= 0]
    if not ends:
        raise ProtocolError(f"{what}: the answer's HTTP head never ends")
    at, sep_len = min(ends)
    head, body = data[:at], data[at + sep_len:]
    if status != 200:
        raise ProtocolError(f"{what}: HTTP {status} (SOAP service switched off, or not a ZK web server?)")
    m = _CONTENT_LENGTH.search(head)
    if m is not None:
        length = int(m.group(1))
        if len(body) < length:
            raise ProtocolError(f"{what}: the answer was cut short ({len(body)} of {length} bytes)")
        body = body[:length]
    if len(body) > max_bytes:
        raise ProtocolError(f"{what}: the answer is larger than {max_bytes} bytes (workaround max_response_bytes)")
    return body


def _method_of(body: bytes) -> str:
    m = re.match(rb"\s*<([A-Za-z]{1,40})", body)
    return m.group(1).decode("ascii") if m else "request"


__all__ = ["PATH", "HeadRefused", "HttpxTransport", "RawTransport", "Transport", "split_raw_answer"]

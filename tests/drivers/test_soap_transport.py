"""drivers.soap.transport against canned HTTP answers on loopback: what httpx copes with, what it refuses (the
raw socket then reads it), and answers cut short or too large failing as ProtocolError."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from drivers.base import ProtocolError, Unreachable
from drivers.soap.transport import HeadRefused, HttpxTransport, RawTransport, split_raw_answer

pytestmark = pytest.mark.timeout(30)
BODY = b"<GetDateResponse><Row><Date>2024-05-01</Date><Time>07:30:00</Time></Row></GetDateResponse>"


@contextmanager
def canned(answer: bytes, connections: int = 1) -> Iterator[int]:
    """A loopback server that answers ``connections`` requests with ``answer`` and closes each."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    srv.settimeout(10)

    def run() -> None:
        for _ in range(connections):
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                conn.recv(65536)
                conn.sendall(answer)

    t = threading.Thread(target=run, name="canned-http")
    t.start()
    try:
        yield srv.getsockname()[1]
    finally:
        srv.close()
        t.join(10)


@pytest.mark.parametrize("answer", [
    b"HTTP/1.0 200 OK\r\nServer: ZK Web Server\r\nContent-Type: text/xml\r\n\r\n" + BODY + b"\r\n",
    b"HTTP/1.0 200 OK\nServer: ZK Web Server\n\n" + BODY,
    b"HTTP/1.0 200 OK\r\nContent-Length: " + str(len(BODY)).encode() + b"\r\n\r\n" + BODY + b"JUNK AFTER",
    b"HTTP/1.0 200 OK\r\n\r\n\r\n\r\n" + BODY,
], ids=["close-delimited", "lf-only", "bytes-after-length", "blank-lines"])
def test_httpx_and_the_raw_socket_read_the_same_body(answer: bytes) -> None:
    for transport_cls in (HttpxTransport, RawTransport):
        with canned(answer) as port:
            t = transport_cls("127.0.0.1", port, 3.0)
            try:
                body = t.post(b"<GetDate></GetDate>", deadline=None, max_bytes=1 << 20)
            finally:
                t.close()
        assert BODY in body and b"JUNK" not in body, transport_cls.__name__


@pytest.mark.parametrize("answer", [b"HTTP/1.0 200 OK\r\nZK Web Server\r\n\r\n" + BODY, BODY],
                         ids=["header-without-colon", "no-status-line"])
def test_heads_httpx_refuses_are_head_refused_and_the_raw_socket_reads_them(answer: bytes) -> None:
    with canned(answer) as port:
        t = HttpxTransport("127.0.0.1", port, 3.0)
        try:
            with pytest.raises(HeadRefused):
                t.post(b"<GetDate></GetDate>", deadline=None, max_bytes=1 << 20)
        finally:
            t.close()
    with canned(answer) as port:
        assert post_once(RawTransport, port) == BODY


def post_once(transport_cls: type[HttpxTransport] | type[RawTransport], port: int, max_bytes: int = 1 << 20,
              timeout_s: float = 3.0) -> bytes:
    t = transport_cls("127.0.0.1", port, timeout_s)
    try:
        return t.post(b"<GetDate/>", deadline=None, max_bytes=max_bytes)
    finally:
        t.close()


def test_short_oversized_and_refused_answers() -> None:
    short = b"HTTP/1.0 200 OK\r\nContent-Length: 500\r\n\r\n" + BODY
    for transport_cls in (HttpxTransport, RawTransport):
        with canned(short) as port, pytest.raises(ProtocolError, match="cut short"):
            post_once(transport_cls, port)
        with canned(b"HTTP/1.0 200 OK\r\n\r\n" + BODY * 50) as port, pytest.raises(ProtocolError, match="larger"):
            post_once(transport_cls, port, 1024)
        with canned(b"HTTP/1.0 404 Not Found\r\n\r\nnope") as port, pytest.raises(ProtocolError, match="404"):
            post_once(transport_cls, port)
    with canned(b"", connections=0) as port:
        pass
    for transport_cls in (HttpxTransport, RawTransport):
        with pytest.raises(Unreachable):
            post_once(transport_cls, port, timeout_s=1.0)


def test_split_raw_answer_rejects_what_is_not_http() -> None:
    with pytest.raises(ProtocolError):
        split_raw_answer(b"SSH-2.0-OpenSSH\r\n", "GetDate", 1024)
    with pytest.raises(ProtocolError):
        split_raw_answer(b"", "GetDate", 1024)
    assert split_raw_answer(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabcdef", "GetDate", 1024) == b"abc"

"""The simulated SOAP terminal's own codec: lenient request parsing, answers shaped like the fact sheet's captures.

    simulators.soap.terminal (socket) -> parse_request(bytes) -> SoapRequest -> terminal logic
                                      <- http_answer(body)   <- answer_rows(method, rows)
Written from ../shared/reference/other-protocols.md §1, not from the driver (simulators never import
drivers/ or gateway/), so the two check each other. Sans I/O. The request parser is as lenient as the
devices are reported to be: bare element or SOAP envelope, undeclared ``xsi:`` prefixes, escaped quotes,
no Host header, a body longer or shorter than its Content-Length, several ``<Arg>`` blocks.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

#: Charset every answer declares and is encoded in (TAD-PHP's constant and real-device test, §1.4).
ENCODING = "iso8859-1"
PROLOG = f'<?xml version="1.0" encoding="{ENCODING}" standalone="no"?>\r\n'
#: The head of every answer (§1.4 capture): HTTP/1.0, closed after the body.
HEAD_LINES = ("HTTP/1.0 200 OK", "Server: ZK Web Server", "Pragma: no-cache", "Cache-control: no-cache",
              "Content-Type: text/xml", "Connection: close")

_METHOD = re.compile(r"<\s*(?:[\w.-]+:)?([A-Za-z]+)\b[^>]*>")
_WRAPPERS = {"envelope", "body", "header", "xml"}
_COMKEY = re.compile(r"<\s*(?:[\w.-]+:)?ArgComKey\b[^>]*>([^<]*)<", re.IGNORECASE)
_ARG = re.compile(r"<\s*(?:[\w.-]+:)?Arg\b[^>]*>(.*?)<\s*/\s*(?:[\w.-]+:)?Arg\s*>", re.IGNORECASE | re.DOTALL)
_FIELD = re.compile(r"<\s*(?:[\w.-]+:)?(\w+)\b[^>]*>([^<]*)<\s*/", re.DOTALL)


@dataclass
class SoapRequest:
    """What a client asked: the method, the comm key it sent (None: no ArgComKey) and each <Arg> block's fields."""

    method: str
    comm_key: str | None
    args: list[dict[str, str]] = field(default_factory=list)

    def arg(self, name: str, default: str = "") -> str:
        """The first <Arg>'s field ``name`` (case-insensitive)."""
        for block in self.args:
            for key, value in block.items():
                if key.lower() == name.lower():
                    return value
        return default


def parse_request(text: str) -> SoapRequest | None:
    """The SOAP call in a request body (decoded text); None when it holds no element at all."""
    method = None
    for m in _METHOD.finditer(text):
        name = m.group(1)
        if name.lower() in _WRAPPERS or m.group(0).startswith("<?"):
            continue
        method = name
        break
    if method is None:
        return None
    key = _COMKEY.search(text)
    args = []
    for block in _ARG.finditer(text):
        args.append({f.group(1): f.group(2).strip() for f in _FIELD.finditer(block.group(1))})
    return SoapRequest(method, key.group(1).strip() if key else None, args)


def escape(text: str) -> str:
    """XML text escaping (what a careful firmware would do; whether real ones escape names is unverified)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def row(fields: list[tuple[str, str]]) -> str:
    """One ``<Row>`` with its fields in order."""
    return "<Row>" + "".join(f"<{k}>{escape(v)}</{k}>" for k, v in fields) + "</Row>"


def answer_text(method: str, rows: list[str]) -> str:
    """``<MethodResponse>`` with one row per line, CRLF between rows (§1.4), after the prolog."""
    inner = "".join(r + "\r\n" for r in rows)
    return f"{PROLOG}<{method}Response>\r\n{inner}</{method}Response>\r\n"


def result_text(method: str, ok: bool, information: str | None = None) -> str:
    """A write-type answer: ``<Row><Result>1|0</Result><Information>..</Information></Row>``."""
    info = information if information is not None else ("Successfully!" if ok else "Fail!")
    return answer_text(method, [row([("Result", "1" if ok else "0"), ("Information", info)])])


def http_head(content_length: int | None, *, malformed_header: bool = False) -> bytes:
    """The answer's head: HTTP/1.0, ``Server: ZK Web Server``, no Content-Length unless asked."""
    lines = list(HEAD_LINES)
    if content_length is not None:
        lines.append(f"Content-Length: {content_length}")
    if malformed_header:
        lines.insert(2, "ZK Web Server")  # a header line without a colon: strict HTTP parsers refuse it
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")


__all__ = ["ENCODING", "SoapRequest", "answer_text", "escape", "http_head", "parse_request", "result_text", "row"]

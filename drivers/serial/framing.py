"""Cuts a serial byte stream into text lines: the first step after the port (drivers.serial.port).

    bytes (any chunking) --LineFramer.feed--> FramedLine(text, raw, problem) --> drivers.serial.formats

Rules, chosen so that nothing is dropped silently and nothing is made up:
- a line ends at CR, LF or CRLF (a CRLF split across two reads is one end, not an empty line); empty lines
  are skipped;
- noise bytes (NUL, 0xFF, other control bytes except TAB: what framing errors and an idle RS-485 bus
  produce) before or after a line's text are removed and counted; STX/ETX around a line are framing
  characters some clocks send and are removed without being counted;
- noise *inside* a line makes the line suspect (a framing error may have eaten a digit): it is returned with
  a ``problem`` so the caller quarantines it instead of storing a punch that may be wrong;
- a line longer than ``max_line_bytes`` is returned cut, with a ``problem``; the rest up to the next line end
  is discarded (and counted in ``discarded_bytes``), so a clock that never sends a line end cannot grow memory.
Sans I/O and pure Python: tested with byte literals and property-based fuzzing (tests/serial).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: Longest line kept whole (the documented formats are under 100 characters).
MAX_LINE_BYTES = 512
_END = re.compile(rb"\r\n|\r|\n")
#: STX, ETX: start/end characters some clocks put around a record (Giga TR40xx reader input).
_FRAME_CHARS = frozenset(b"\x02\x03")
#: Bytes that cannot be part of a text line: C0 controls except TAB, DEL, 0xFF (an idle or floating line).
NOISE = frozenset([*range(0x00, 0x09), *range(0x0A, 0x20), 0x7F, 0xFF]) - _FRAME_CHARS
#: How each byte is shown in a quarantined line's raw text: printable ASCII and TAB as is, the rest \xNN.
_SHOW = [chr(b) if 0x20 <= b < 0x7F or b == 0x09 else f"\\x{b:02x}" for b in range(256)]


def show_bytes(data: bytes) -> str:
    """The bytes as readable text for the quarantine table (control and non-ASCII bytes as ``\\xNN``)."""
    return "".join([_SHOW[b] for b in data])


@dataclass(frozen=True, slots=True)
class FramedLine:
    """One line cut from the stream."""

    #: The line's text (latin-1, edge noise and frame characters removed).
    text: str
    #: The bytes as received (edge noise included), shown with show_bytes.
    raw: str
    #: None for a clean line; else why it must not be read as a punch.
    problem: str | None = None


class LineFramer:
    """Stateful: feed it the bytes of one connection in order; ``flush`` returns a line cut off by its end."""

    def __init__(self, max_line_bytes: int = MAX_LINE_BYTES) -> None:
        if max_line_bytes < 16:
            raise ValueError("max_line_bytes must be at least 16")
        self.max_line_bytes = max_line_bytes
        self._buf = bytearray()
        self._overlong = False
        self._after_cr = False
        #: Noise bytes seen so far (edges and inside lines).
        self.noise_bytes = 0
        #: Bytes thrown away beyond max_line_bytes of overlong lines.
        self.discarded_bytes = 0

    def feed(self, data: bytes) -> list[FramedLine]:
        """The lines completed by ``data`` (possibly none)."""
        out: list[FramedLine] = []
        start = 0
        if self._after_cr and data[:1] == b"\n":
            start = 1  # the LF of a CRLF split across two reads
        self._after_cr = False
        for m in _END.finditer(data, start):
            self._append(data[start:m.start()])
            line = self._complete()
            if line is not None:
                out.append(line)
            start = m.end()
            if m.group() == b"\r" and start == len(data):
                self._after_cr = True
        self._append(data[start:])
        return out

    def flush(self, why: str) -> FramedLine | None:
        """The unfinished line (the port closed, the daemon stops), returned with ``why`` as its problem, or
        None when nothing but noise is pending. The framer starts afresh."""
        self._after_cr = False
        if not self._buf:
            self._overlong = False
            return None
        line = self._complete()
        if line is None:
            return None
        return FramedLine(line.text, line.raw, line.problem or why)

    @property
    def pending_bytes(self) -> int:
        """Bytes of the unfinished line held now."""
        return len(self._buf)

    def _append(self, chunk: bytes) -> None:
        if not chunk:
            return
        room = self.max_line_bytes - len(self._buf)
        if len(chunk) > room:
            self._buf += chunk[:max(room, 0)]
            self.discarded_bytes += len(chunk) - max(room, 0)
            self._overlong = True
        else:
            self._buf += chunk

    def _complete(self) -> FramedLine | None:
        data, overlong = bytes(self._buf), self._overlong
        self._buf.clear()
        self._overlong = False
        lo, hi = 0, len(data)
        while lo < hi and (data[lo] in NOISE or data[lo] in _FRAME_CHARS):
            self.noise_bytes += data[lo] in NOISE
            lo += 1
        while hi > lo and (data[hi - 1] in NOISE or data[hi - 1] in _FRAME_CHARS):
            self.noise_bytes += data[hi - 1] in NOISE
            hi -= 1
        body = data[lo:hi]
        if not body.strip(b" \t"):
            return None  # an empty line, or noise only (counted above)
        inner = sum(1 for b in body if b in NOISE)
        self.noise_bytes += inner
        problem = None
        if overlong:
            problem = f"line longer than {self.max_line_bytes} bytes (cut off; no line end came in time)"
        elif inner:
            problem = f"{inner} noise byte(s) inside the line (framing errors or interference on the line)"
        return FramedLine(body.decode("latin-1"), show_bytes(data), problem)

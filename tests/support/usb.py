"""USB-export files for tests: attlog.dat text written the way terminals write it, from records or a simulator's truth.

The layout is the ZKTeco U-disk SDK's (docs/usb-import.md): ``PIN<TAB>YYYY-MM-DD HH:MM:SS<TAB>machine
number<TAB>state<TAB>verify<TAB>work code`` per line, CRLF, the PIN right-aligned in 9 characters.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tests.support.fleet import sim_truth

#: (user id, device time, state, verify) of one record.
Record = tuple[str, str, int, int]


def attlog_text(records: Iterable[Record], *, machine: int = 1, serial_header: str | None = None,
                checksum: str | None = None, pad: int = 9, newline: str = "\r\n") -> bytes:
    """An export file's bytes; with ``serial_header``, the SDK's extended form (serial first, checksum last)."""
    lines: list[str] = []
    if serial_header is not None:
        lines.append(serial_header)
    lines += [f"{user:>{pad}}\t{when}\t{machine}\t{state}\t{verify}\t0" for user, when, state, verify in records]
    if checksum is not None:
        lines.append(checksum)
    return "".join(line + newline for line in lines).encode("utf-8")


def write_sim_export(truth_path: Path, serial: str, target: Path, **kw: object) -> Path:
    """The export a simulated terminal would write to a USB stick now: its whole log, in log order."""
    target.write_bytes(attlog_text(sim_truth(truth_path, serial), **kw))  # type: ignore[arg-type]
    return target

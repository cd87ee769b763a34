"""Ground-truth JSONL log: every punch any simulated device ever holds, one JSON object a line.

Written by ``device.py`` (through the fleet's shared ``TruthWriter``) at the moment a punch
enters a device log; read back by tests and the gateway's end-to-end checks with
``read_truth``. Time is the device-local wall-clock text of the encoded time (§2.5 decode
chain), so impossible dates still have a text form.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any


class TruthWriter:
    """Append-only, flushed JSONL writer shared by all devices of a fleet (thread-safe)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._fh: IO[str] | None = self.path.open("a", encoding="utf-8")

    def write(self, rows: Iterable[dict[str, Any]]) -> None:
        """Append rows and flush, so a reader in another process sees them at once."""
        text = "".join(json.dumps(r, separators=(", ", ": ")) + "\n" for r in rows)
        if not text:
            return
        with self._lock:
            if self._fh is None:
                raise RuntimeError(f"truth file {self.path} is closed")
            self._fh.write(text)
            self._fh.flush()

    def close(self) -> None:
        """Close the file; later writes raise."""
        with self._lock:
            if self._fh is not None:
                self._fh.close()
                self._fh = None


def read_truth(path: Path | str) -> list[dict[str, Any]]:
    """All rows of a truth file, in write order (blank lines skipped)."""
    rows: list[dict[str, Any]] = []
    with Path(path).open(encoding="utf-8") as fh:
        for line in fh:
            line = line.strip()
            if line:
                rows.append(json.loads(line))
    return rows

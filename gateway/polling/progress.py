"""Progress of one log download: the callback the poller hands a driver (drivers.base.Progress).

    DevicePoller._session --DownloadProgress--> session.read_punches(progress) / read_punches_after(progress)
        every ~5 s of a long download: one INFO line (records read / expected, records/s)
        every call: the optional display (`fpgw poll` on a terminal: a live line on stderr)

A 100k-record log takes seconds on a real terminal, longer over a slow link; without this the log shows
nothing between "poll started" and the result. Short downloads log nothing. The driver calls the callback
from the polling thread a few times per second: it is cheap and never raises (a broken display must not fail a
poll).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

import structlog

log = structlog.get_logger(__name__)

#: Seconds between two INFO lines of one download (the first comes this long after the download started).
LOG_EVERY_S = 5.0


class ProgressDisplay(Protocol):
    """Something that shows a download as it runs (the CLI's progress line)."""

    def update(self, device_id: str, records_read: int, records_expected: int, rate: float) -> None:
        """Show how far the download of ``device_id`` got (``rate`` in records/s; expected 0 = unknown)."""
        ...

    def finish(self) -> None:
        """The download ended (well or not): take the display away."""
        ...


class DownloadProgress:
    """The progress callback of one download; ``finish()`` when it ended."""

    def __init__(self, device_id: str, what: str, *, display: ProgressDisplay | None = None,
                 clock: Callable[[], float] = time.monotonic, log_every_s: float = LOG_EVERY_S) -> None:
        self.device_id = device_id
        #: "full" or "tail": which read this is (shown in the log line).
        self.what = what
        self.display = display
        self._clock = clock
        self._log_every_s = log_every_s
        self._started = clock()
        self._next_log = self._started + log_every_s
        self.records_read = 0
        self.records_expected = 0
        #: INFO lines written (the first only once the download has run for log_every_s).
        self.lines_logged = 0
        self._broken = False

    def __call__(self, records_read: int, records_expected: int) -> None:
        try:
            self.records_read, self.records_expected = records_read, records_expected
            now = self._clock()
            elapsed = now - self._started
            rate = records_read / elapsed if elapsed > 0 else 0.0
            if now >= self._next_log:
                self._next_log = now + self._log_every_s
                self.lines_logged += 1
                if self.display is not None and not self._broken:
                    self.display.finish()  # wipe the live line first: the log may go to the same terminal
                log.info("downloading the attendance log", read=self.what, records_read=records_read,
                         records_expected=records_expected or None, records_per_s=round(rate),
                         elapsed_s=round(elapsed, 1))
            if self.display is not None and not self._broken:
                self.display.update(self.device_id, records_read, records_expected, rate)
        except Exception as exc:  # never fail a download over how it is shown
            if not self._broken:
                self._broken = True
                log.warning("download progress display failed; continuing without it", error=repr(exc))

    def finish(self, ok: bool = True) -> None:
        """End of the download: the display goes; a download long enough to have logged progress logs its end
        (``ok``; a failed one is logged by the poll's outcome)."""
        if self.display is not None and not self._broken:
            try:
                self.display.finish()
            except Exception as exc:
                self._broken = True
                log.warning("download progress display failed", error=repr(exc))
        if ok and self.lines_logged:
            elapsed = self._clock() - self._started
            log.info("attendance log downloaded", read=self.what, records_read=self.records_read,
                     elapsed_s=round(elapsed, 1),
                     records_per_s=round(self.records_read / elapsed) if elapsed > 0 else None)


__all__ = ["LOG_EVERY_S", "DownloadProgress", "ProgressDisplay"]

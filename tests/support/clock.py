"""A settable clock for code that takes ``now`` as a callable (poller, scheduler, forwarder, central)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta


class FakeClock:
    """``clock()`` returns ``clock.now``; tests set ``now`` or ``advance()`` it. Starts at the real now."""

    def __init__(self, start: datetime | None = None) -> None:
        self.now = start if start is not None else datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        """Move the clock forward."""
        self.now += timedelta(seconds=seconds)

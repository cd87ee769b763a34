"""Durations as people read them, for log lines, alert texts and CLI tables ("45 s", "12 min", "3.5 h")."""

from __future__ import annotations


def duration_text(seconds: float) -> str:
    """A duration (sign ignored) in the largest unit that keeps it readable."""
    seconds = abs(seconds)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"

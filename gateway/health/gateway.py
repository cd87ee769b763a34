"""Health of the gateway itself: its database and the disk under it, kept apart from any terminal's health.

    poller --PollOutcome(error_kind="storage")--> HealthMonitor.observe() --> GatewayHealth.storage_failed()
    HealthMonitor.sweep() --disk free space, database probe--> GatewayHealth --> gateway-wide alert rows + log
    status page / /status "gateway" / fpgw_gateway_problem gauge <-- GatewayHealth.snapshot()
A full, locked or unreachable office database is not a terminal fault: polls that fail because of it change
no device's health (no ``protocol_error`` pointing the team at cabling); the gateway raises one problem instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime

#: Gateway problems, worst first: (severity, what it means for the office).
GATEWAY_PROBLEMS: dict[str, tuple[str, str]] = {
    "database_full": ("critical", "the office database is full: new punches cannot be stored (they stay on the "
                                  "terminals and are read again once there is room)"),
    "database_locked": ("critical", "the office database is locked by another program: new punches cannot be "
                                    "stored (they stay on the terminals)"),
    "database_unreachable": ("critical", "the office database cannot be used: new punches cannot be stored "
                                         "(they stay on the terminals)"),
    "disk_nearly_full": ("warning", "the disk holding the office database is nearly full"),
}

#: What to check, per gateway problem (alerts and the status page).
GATEWAY_CHECKS: dict[str, tuple[str, ...]] = {
    "database_full": (
        "Free disk space on the gateway server (df -h on the database's folder); remove old logs or backups.",
        "On PostgreSQL: check the server's disk and any quota on the database.",
        "This is not a terminal or network fault: do not check the cabling.",
    ),
    "database_locked": (
        "Another program holds the database open for writing (a backup tool, `sqlite3` shell, a second fpgw "
        "daemon on the same file): close it.",
        "This is not a terminal or network fault: do not check the cabling.",
    ),
    "database_unreachable": (
        "SQLite: is the file still there, on a mounted, writable disk (permissions of the state directory)?",
        "PostgreSQL: is the server running and reachable from the gateway (database.url)?",
        "This is not a terminal or network fault: do not check the cabling.",
    ),
    "disk_nearly_full": (
        "Free disk space on the gateway server (df -h on the database's folder) before the database fills up.",
        "The threshold is health.disk_free_min_mb.",
    ),
}

DATABASE_PROBLEMS = ("database_full", "database_locked", "database_unreachable")


def classify_storage_error(text: str) -> str:
    """The gateway problem a database error message means (SQLite and PostgreSQL wording)."""
    t = text.lower()
    if any(s in t for s in ("database or disk is full", "no space left", "could not extend", "disk full",
                            "disk quota exceeded", "database is full")):
        return "database_full"
    if any(s in t for s in ("database is locked", "database table is locked", "lock timeout",
                            "could not obtain lock", "deadlock")):
        return "database_locked"
    return "database_unreachable"


@dataclass(frozen=True)
class GatewayProblem:
    """One open problem of the gateway."""

    name: str
    severity: str
    since: datetime
    detail: str
    seen: dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class GatewayEvent:
    """A gateway problem started or ended (what becomes an alert row and a log line)."""

    problem: GatewayProblem
    event: str  # "start" | "end"
    at: datetime


class GatewayHealth:
    """Open gateway problems and the start/end events not yet turned into alerts (not thread-safe: the
    monitor holds its lock)."""

    def __init__(self) -> None:
        self._problems: dict[str, GatewayProblem] = {}
        self.pending: list[GatewayEvent] = []
        #: Free bytes on the database's filesystem at the last sweep (None: not measured, e.g. PostgreSQL).
        self.disk_free_bytes: int | None = None

    def open(self, name: str, now: datetime, detail: str, **seen: object) -> bool:
        """Open ``name`` (True when it was not open); an open one keeps its start, takes the newest detail."""
        old = self._problems.get(name)
        severity, meaning = GATEWAY_PROBLEMS[name]
        text = f"{meaning}: {detail}" if detail else meaning
        if old is not None:
            self._problems[name] = replace(old, detail=text, seen=dict(seen))
            return False
        p = GatewayProblem(name, severity, now, text, dict(seen))
        self._problems[name] = p
        self.pending.append(GatewayEvent(p, "start", now))
        return True

    def close(self, name: str, now: datetime) -> bool:
        """Close ``name`` (True when it was open)."""
        p = self._problems.pop(name, None)
        if p is None:
            return False
        self.pending.append(GatewayEvent(p, "end", now))
        return True

    def storage_failed(self, error: str, now: datetime) -> str:
        """A database error stopped work: open its problem (closing the other database ones); returns it."""
        name = classify_storage_error(error)
        for other in DATABASE_PROBLEMS:
            if other != name:
                self.close(other, now)
        self.open(name, now, error)
        return name

    def storage_ok(self, now: datetime, *, full_too: bool = True) -> None:
        """The database took a write: its problems are over (``full_too=False`` keeps database_full, which a
        probe that allocates nothing cannot disprove)."""
        for name in DATABASE_PROBLEMS:
            if name != "database_full" or full_too:
                self.close(name, now)

    def is_open(self, name: str) -> bool:
        """True while ``name`` is open."""
        return name in self._problems

    def snapshot(self) -> list[GatewayProblem]:
        """Open problems, worst first."""
        order = list(GATEWAY_PROBLEMS)
        return sorted(self._problems.values(), key=lambda p: order.index(p.name))

"""The partition maintenance job of the daemon (central and PostgreSQL office gateways; issue 15).

    gateway.app --services(ctx)--> PartitionMaintenance --scheduler, housekeeping pool, every
    retention.check_every_s--> gateway.store.partitions.maintain(): months ahead, default rows moved into their
    month, and (retention.archive_after_months > 0) old months archived, verified and dropped

Nothing here is needed for storing a punch: a month without its partition lands in the default one. The job
keeps the default partition small and old months archived. A SQLite database has no partitions: no job.
Logs once per state change: a failing run logs once, a month refused for archiving once per reason.
"""

from __future__ import annotations

from datetime import UTC, datetime

import structlog

from gateway.services import AppContext, HousekeepingJob, Service
from gateway.store.db import StorageError
from gateway.store.partitions import MaintenanceResult, is_partitioned, maintain

log = structlog.get_logger(__name__)

#: The first run waits this long after start, so migrations and the first polls come first.
FIRST_DELAY_S = 30.0


class PartitionMaintenance(HousekeepingJob):
    """Runs gateway.store.partitions.maintain() on the scheduler's housekeeping pool."""

    name = "partitions"
    JOB_ID = "partitions:maintain"

    def __init__(self, ctx: AppContext, *, first_delay_s: float = FIRST_DELAY_S) -> None:
        self.ctx = ctx
        self.first_delay_s = first_delay_s
        self.every_s = ctx.config.retention.check_every_s
        self._failing = False
        #: partition -> the refusal reason last logged (a month refused again for the same reason logs nothing).
        self._refused: dict[str, str] = {}

    def run(self) -> MaintenanceResult | None:
        """One maintenance run; None when it failed (logged once per failure streak; the next run retries)."""
        cfg = self.ctx.config.retention
        try:
            result = maintain(self.ctx.store.engine, today=datetime.now(UTC).date(), months_ahead=cfg.months_ahead,
                              archive_after_months=cfg.archive_after_months, archive_dir=cfg.archive_dir)
        except (StorageError, OSError) as exc:
            if not self._failing:
                log.warning("partition maintenance failed; punches are still stored (default partition)",
                            error=str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            self._failing = True
            return None
        except Exception:
            if not self._failing:
                log.exception("partition maintenance failed")
            self._failing = True
            return None
        if self._failing:
            log.info("partition maintenance runs again")
            self._failing = False
        for name, reason in result.refused.items():
            if self._refused.get(name) != reason:
                log.warning("punch partition not archived; it is kept", partition=name, reason=reason)
        self._refused = dict(result.refused)
        return result


def services(ctx: AppContext) -> list[Service]:
    """The maintenance job when the punches table is partitioned (PostgreSQL after migration 0011)."""
    try:
        partitioned = is_partitioned(ctx.store.engine)
    except StorageError:
        partitioned = False
    return [PartitionMaintenance(ctx)] if partitioned else []

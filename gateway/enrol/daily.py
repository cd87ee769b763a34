"""The daemon's daily enrolment backup: every polled terminal once a day at ``[enrol] backup_at`` (office time).

    APScheduler cron "enrol-backup" --> DailyBackup.run() --> for each polled terminal:
        hold(device, backup_device(...))   # the poll scheduler's per-device hold: never beside a poll of it
                                           # (nor an `fpgw enrol` command: both take gateway.devicelock's file)
    then, with ``[enrol] sync = true``: gateway.enrol.sync.sync_office(hold=...)   # the office kept in step

Built by gateway.app after the poll scheduler (it needs its hold). One terminal after another, so at most
one keypad is locked for a backup at a time. Incremental when ``[enrol] incremental`` (backup.py), with a full
backup at least every ``full_every``. Without a key it logs one warning per run and backs nothing up
(and does not sync: a sync runs only right after a backup it could fall back on).
"""

from __future__ import annotations

import threading

import structlog

from gateway.config import DeviceConfig
from gateway.enrol.backup import BackupResult, DriverFactory, backup_device
from gateway.enrol.crypto import EnrolKeyError, Keyring
from gateway.enrol.push import enrol_driver_factory
from gateway.enrol.sync import GroupResult, Hold, sync_office
from gateway.services import AppContext
from gateway.store.enrol import EnrolRepo

log = structlog.get_logger(__name__)



class DailyBackup:
    """Service: the daily backup job."""

    name = "enrol-backup"

    def __init__(self, ctx: AppContext, repo: EnrolRepo, hold: Hold, *,
                 driver_factory: DriverFactory | None = None) -> None:
        self.ctx = ctx
        self.repo = repo
        self.hold = hold
        # Push terminals are read from what they uploaded (no wait for them at night); the rest by their driver.
        self.driver_factory = driver_factory or enrol_driver_factory(ctx.config, repo.engine, fresh_reads=False)
        self._running = threading.Lock()
        #: The last run's sync, per group (tests and the log read it).
        self.last_sync: list[GroupResult] = []

    def start(self) -> None:
        """Register the cron job (nothing when ``[enrol] daily = false``)."""
        cfg = self.ctx.config.enrol
        if not cfg.daily:
            return
        self.ctx.scheduler.add_job(self.run, "cron", hour=cfg.backup_at.hour, minute=cfg.backup_at.minute,
                                   id="enrol-backup", name="enrolment backup", replace_existing=True,
                                   max_instances=1, coalesce=True, misfire_grace_time=3600)

    def stop(self, deadline_s: float) -> None:
        """Remove the job; a run in progress ends after its current terminal (it checks the stop event)."""
        try:
            self.ctx.scheduler.remove_job("enrol-backup")
        except Exception:
            pass

    def devices(self) -> list[DeviceConfig]:
        """The terminals backed up: enabled, with enrolments (push terminals: what they uploaded)."""
        return [d for d in self.ctx.config.devices if d.enabled and not d.reads_serial]

    def run(self) -> list[BackupResult]:
        """Back every terminal up once; returns the results (tests call this directly)."""
        if not self._running.acquire(blocking=False):
            return []
        try:
            cfg = self.ctx.config.enrol
            try:
                keyring = Keyring.from_config(cfg)
            except EnrolKeyError as exc:
                log.warning("daily enrolment backup skipped", reason=str(exc))
                return []
            results: list[BackupResult] = []
            for device in self.devices():
                if self.ctx.stop_event.is_set():
                    break

                def job(device: DeviceConfig = device) -> BackupResult:
                    return backup_device(device, self.repo, keyring, actor="daemon", timeout_s=cfg.timeout_s,
                                         drop_warn_ratio=cfg.drop_warn_ratio, driver_factory=self.driver_factory,
                                         incremental=cfg.incremental, full_every_s=cfg.full_every_s)

                try:
                    result = self.hold(device.id, job)
                except Exception:  # a bug or a database failure: the other terminals are still backed up
                    log.exception("daily enrolment backup of a terminal failed", device=device.id)
                    continue
                if result is None:
                    log.warning("daily enrolment backup skipped a terminal: its poll, or an `fpgw enrol` command "
                                "holding it, did not end in time", device=device.id)
                    continue
                results.append(result)
            if cfg.sync and not self.ctx.stop_event.is_set():
                self._sync()
            return results
        finally:
            self._running.release()

    def _sync(self) -> None:
        try:
            self.last_sync = sync_office(self.ctx.config, self.repo, actor="daemon", hold=self.hold,
                                         driver_factory=self.driver_factory, stop=self.ctx.stop_event)
        except Exception:  # a bug or a database failure: logged, the next day's run tries again
            log.exception("enrolment sync of the office failed")
            return
        for group in self.last_sync:
            log.info("enrolment sync of a group finished", devices=list(group.devices),
                     actions=len(group.plan.actions), conflicts=len(group.plan.conflicts), ok=group.ok)

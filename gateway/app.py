"""Composition root: builds the daemon from a Config, starts and stops it in order.

    Gateway(config): engine (+ migrations) -> repositories (Store.sync_devices, HealthRepo) -> scheduler
        -> AppContext -> services of gateway.health.monitor, .web.metrics, .forward.forwarder, .central.service,
        .web.status (started in that order, stopped reversed) -> poll scheduler (its own pool of polling.pool_size
        workers, started after the services; backs off from ctx.health)
    run_forever(): signals, faulthandler, sd_notify READY/STATUS/WATCHDOG/STOPPING, waits for the stop event.

Tests run a Gateway in-process with start()/stop(); `fpgw run` calls run_forever().
"""

from __future__ import annotations

import faulthandler
import signal
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

import structlog
from prometheus_client import CollectorRegistry

from gateway import sdnotify
from gateway.config import Config
from gateway.enrol.daily import DailyBackup
from gateway.logs import register_secrets
from gateway.polling.poller import DevicePoller, DriverFactory
from gateway.polling.scheduler import PollScheduler, build_scheduler
from gateway.services import AppContext, Service
from gateway.store.central import CentralStore
from gateway.store.db import DatabaseError, create_db_engine, current_revision, head_revision, safe_url, upgrade
from gateway.store.enrol import EnrolRepo
from gateway.store.health import HealthRepo
from gateway.store.outbox import Outbox
from gateway.store.punches import Store

log = structlog.get_logger(__name__)

#: How often the main loop refreshes STATUS= and checks progress for the watchdog.
STATUS_EVERY_S = 10.0
#: The housekeeping heartbeat proves the scheduler still dispatches jobs.
HEARTBEAT_EVERY_S = 10.0

ServiceFactory = Callable[[AppContext], list[Service]]
#: glibc malloc arenas for the whole process (mallopt M_ARENA_MAX). By default glibc gives threads up to
#: 8 x cores arenas, and each keeps the memory a big download freed: with dozens of poll threads that
#: alone doubled the daemon's RSS. Two arenas cost no measurable speed (the GIL serializes most work anyway).
MALLOC_ARENAS = 2
#: How often freed heap memory is handed back to the system (malloc_trim), on the housekeeping pool.
TRIM_EVERY_S = 60.0
_M_ARENA_MAX = -8


def _libc() -> Any:
    """glibc, or None elsewhere (musl, macOS): the memory tuning below is then skipped."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


def limit_malloc_arenas(arenas: int = MALLOC_ARENAS) -> bool:
    """Cap glibc's malloc arenas (before the poll threads start); True when applied. An operator's own
    MALLOC_ARENA_MAX (glibc reads it at start) wins."""
    import os

    if os.environ.get("MALLOC_ARENA_MAX"):
        return False
    libc = _libc()
    return bool(libc is not None and libc.mallopt(_M_ARENA_MAX, arenas))


def trim_heap() -> None:
    """Give freed heap memory back to the system (glibc malloc_trim; a no-op elsewhere)."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


def default_service_factories() -> list[tuple[str, ServiceFactory]]:
    """The areas plugged into the daemon, in start order (see gateway.services)."""
    from gateway import retention
    from gateway.central import service as central
    from gateway.forward import forwarder
    from gateway.health import monitor
    from gateway.push import receiver as push
    from gateway.serial import reader as serial
    from gateway.usbimport import watcher as usb_import
    from gateway.web import metrics
    from gateway.web import status as http

    return [("monitor", monitor.services), ("metrics", metrics.services), ("forwarder", forwarder.services),
            ("central", central.services), ("push", push.services), ("usb-import", usb_import.services),
            ("serial", serial.services), ("partitions", retention.services),
            ("http", http.services)]


class Gateway:
    """The daemon: polling, services, lifecycle."""

    def __init__(self, config: Config, *, driver_factory: DriverFactory | None = None,
                 service_factories: list[tuple[str, ServiceFactory]] | None = None) -> None:
        self.config = config
        limit_malloc_arenas()
        # Blank this config's credentials in every log line from now on (gateway.logs.redact).
        register_secrets(config.secrets())
        self.engine = create_db_engine(config.database.url, pool_size=min(config.polling.pool_size + 4, 64))
        try:
            self._prepare_database()
            # The repositories are built once here; services receive them through the context.
            self.store = Store(self.engine, config.site.office_code)
            self.store.sync_devices(config.devices)
            self.scheduler = build_scheduler(config)
            self.ctx = AppContext(config=config, store=self.store,
                                  health_repo=HealthRepo(self.engine, config.site.office_code),
                                  outbox=Outbox(self.engine, config.site.office_code),
                                  central_store=CentralStore(self.engine), scheduler=self.scheduler,
                                  metrics_registry=CollectorRegistry(auto_describe=True))
            self.poller = DevicePoller(config, self.store, driver_factory=driver_factory,
                                       observers=self.ctx.poll_observers, stop_event=self.ctx.stop_event)
            self.services: list[Service] = []
            for area, factory in (service_factories if service_factories is not None
                                  else default_service_factories()):
                for svc in factory(self.ctx):
                    self.services.append(svc)
                    log.debug("service added", area=area, service=svc.name)
            # After the services: the health monitor (ctx.health) is where failed polls are counted, and
            # the back-off reads that count instead of keeping its own.
            self.polls = PollScheduler(config, self.scheduler, self.poller.poll_once,
                                       stop_event=self.ctx.stop_event, failures=self.ctx.health,
                                       registry=self.ctx.metrics_registry)
            self.ctx.poll_now = self.polls.poll_now
            self.ctx.polls = self.polls
            # Daily enrolment backup (issue 12): needs the poll scheduler's per-device hold, so it comes last.
            enrol_repo = EnrolRepo(self.engine)
            self.services.append(DailyBackup(self.ctx, enrol_repo, self.polls.run_exclusive,
                                             driver_factory=driver_factory))
            self.ctx.enrol_backups = lambda: enrol_repo.overview(config.enrol.drop_warn_ratio)
            self.polls.add_jobs()
            self.scheduler.add_job(self._heartbeat, "interval", seconds=HEARTBEAT_EVERY_S, id="heartbeat",
                                   executor="housekeeping", replace_existing=True)
            self.scheduler.add_job(trim_heap, "interval", seconds=TRIM_EVERY_S, id="trim-heap",
                                   executor="housekeeping", replace_existing=True)
        except BaseException:
            self.engine.dispose()
            raise
        self._started: list[Service] = []
        self._running = False
        self._stopped = False
        self._stop_lock = threading.Lock()
        self._heartbeat_at = time.monotonic()

    # -- setup -----------------------------------------------------------------------------------
    def _prepare_database(self) -> None:
        if self.config.database.auto_migrate:
            before, after = upgrade(self.engine)
            if before != after:
                log.info("database schema ready", from_revision=before, to_revision=after)
            return
        now, head = current_revision(self.engine), head_revision()
        if now != head:
            raise DatabaseError(f"the database is at schema revision {now!r} but this fpgw needs {head!r}; run "
                                "`fpgw db upgrade` (database.auto_migrate is off)")

    def _heartbeat(self) -> None:
        self._heartbeat_at = time.monotonic()

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the scheduler and every service (in order); polls begin right after."""
        if self._running:
            return
        # Paused until the services are up, so observers (health) see the very first poll.
        self.scheduler.start(paused=True)
        try:
            for svc in self.services:
                svc.start()
                self._started.append(svc)
        except BaseException:
            log.error("a service failed to start; stopping", service=getattr(svc, "name", "?"))
            self.stop()
            raise
        self.scheduler.resume()
        self.polls.start()
        self._running = True
        log.info("gateway started", office=self.config.site.office_code, devices=len(self.polls.states),
                 database=safe_url(self.config.database.url),
                 services=[s.name for s in self.services] or None)

    def stop(self) -> None:
        """Stop polling (in-flight polls finish or are abandoned after polling.shutdown_deadline_s),
        then services in reverse order, then the scheduler and the database pool. Idempotent."""
        with self._stop_lock:
            if self._stopped:
                return
            self._stopped = True
        self.ctx.stop_event.set()
        deadline_s = self.config.polling.shutdown_deadline_s
        if self.scheduler.running:
            self.scheduler.pause()
        busy = self.polls.stop(deadline_s)
        if busy:
            log.warning("stopping with polls still running; abandoning them", devices=busy,
                        waited_s=deadline_s)
        for svc in reversed(self._started):
            try:
                svc.stop(deadline_s)
            except Exception:
                log.exception("service failed to stop cleanly", service=svc.name)
        self._started.clear()
        if self.scheduler.running:
            # wait=True only when nothing hangs: shutdown() has no timeout (apscheduler#157).
            self.scheduler.shutdown(wait=not busy)
        self.engine.dispose()
        self._running = False
        log.info("gateway stopped")

    # -- daemon ----------------------------------------------------------------------------------
    def healthy(self) -> bool:
        """Real progress: the scheduler dispatches jobs and no poll hangs far past its deadline."""
        if not self.scheduler.running or not self.polls.alive():
            return False
        if time.monotonic() - self._heartbeat_at > 6 * HEARTBEAT_EVERY_S:
            return False
        return self.polls.longest_running_s() < 2 * self.config.polling.poll_deadline_s + 30

    def status_text(self) -> str:
        """Short line for `systemctl status`, e.g. "12/14 perangkat OK, poll terakhir 10:31"."""
        ok, total, last = self.polls.summary()
        if last is None:
            return f"{total} perangkat, menunggu poll pertama"
        from zoneinfo import ZoneInfo

        local = last.astimezone(ZoneInfo(self.config.site.timezone))
        return f"{ok}/{total} perangkat OK, poll terakhir {local:%H:%M}"

    def run_forever(self, *, install_signals: bool = True) -> int:
        """Run until SIGTERM/SIGINT (or stop_event); returns the process exit code."""
        faulthandler.enable(all_threads=True)
        if install_signals:
            self._install_signals()
        self.start()
        sdnotify.notify("READY=1", f"STATUS={self.status_text()}")
        watchdog = sdnotify.watchdog_interval_s()
        tick = min(STATUS_EVERY_S, watchdog) if watchdog else STATUS_EVERY_S
        last_status = ""
        unhealthy_logged = False
        try:
            while not self.ctx.stop_event.wait(tick):
                status = self.status_text()
                if status != last_status:
                    sdnotify.notify(f"STATUS={status}")
                    last_status = status
                if self.healthy():
                    unhealthy_logged = False
                    if watchdog:
                        sdnotify.notify("WATCHDOG=1")
                elif not unhealthy_logged:
                    # No WATCHDOG=1: systemd kills us with SIGABRT (faulthandler dumps every thread's
                    # stack to the journal, showing which device hung) and restarts us.
                    log.error("no progress: scheduler stalled or a poll hangs", longest_poll_s=round(
                        self.polls.longest_running_s()), in_flight=self.polls.in_flight())
                    unhealthy_logged = True
        finally:
            sdnotify.notify("STOPPING=1", "STATUS=berhenti (stopping)")
            self.stop()
        return 0

    def _install_signals(self) -> None:
        def on_signal(signum: int, _frame: FrameType | None) -> None:
            if self.ctx.stop_event.is_set():
                # Second Ctrl-C: the operator insists. Terminals re-enable themselves when the
                # socket closes at exit; the driver re-enables on the next session otherwise.
                sys.stderr.write("second signal: exiting now\n")
                faulthandler.dump_traceback(all_threads=True)
                import os

                os._exit(1)
            log.info("stop requested", signal=signal.Signals(signum).name)
            self.ctx.stop_event.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)

    def __enter__(self) -> Gateway:
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

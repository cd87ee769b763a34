"""What runs when: APScheduler wiring for device polls, manual "poll now", backoff and shutdown.

gateway.app builds one ``PollScheduler``; it owns the BackgroundScheduler (shared with services via
AppContext.scheduler) with two executors: ``default`` (bounded pool for device polls) and
``housekeeping`` (small pool for jobs other services add, so a slow upstream never starves polls).
One job ``poll:<id>`` per device, staggered; a failing device is backed off by skipping ticks until
its next probe time (x1.5 per failed poll up to polling.backoff_max_s; at once to that cap when someone must
fix something; never before a Busy device's retry_after), never by rescheduling jobs. The failure count is
the health model's (a FailureView wired by gateway.app): failures are counted once, and outages are logged
once, by gateway.health; this module logs back-off detail at DEBUG only.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import structlog
from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_MAX_INSTANCES, EVENT_JOB_MISSED, JobExecutionEvent
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler

from gateway.config import Config, DeviceConfig
from gateway.models import PollOutcome
from gateway.services import FailureView

log = structlog.get_logger(__name__)

#: Backoff growth per consecutive failure (house style: x1.5 up to polling.backoff_max_s).
BACKOFF_FACTOR = 1.5
HOUSEKEEPING_WORKERS = 4
#: The first poll after start waits this long, so startup logs and READY come first.
FIRST_POLL_DELAY_S = 1.0


def backoff_s(interval_s: float, failures: int, cap_s: float, *, transient: bool = True,
              retry_after_s: float | None = None) -> float:
    """Seconds until the next probe of a device whose last ``failures`` polls failed.

    The first failure keeps the normal interval (one lost packet is not an outage), then x1.5 per failure up
    to ``cap_s``. A failure that is not transient (wrong comm key, another terminal at the address) will not
    go away by itself: probe at the cap straight away. A device that said when to come back (Busy.retry_after)
    is not asked before then (capped too).
    """
    cap_s = max(cap_s, interval_s)
    growing = min(interval_s * BACKOFF_FACTOR ** (max(failures, 1) - 1), cap_s)
    delay = growing if transient else cap_s
    if retry_after_s:
        delay = max(delay, min(retry_after_s, cap_s))
    return delay


def poll_job_id(device_id: str) -> str:
    """The APScheduler job id of a device's periodic poll."""
    return f"poll:{device_id}"


def build_scheduler(config: Config) -> BackgroundScheduler:
    """A BackgroundScheduler with the poll pool and the housekeeping pool, in the site's time zone."""
    return BackgroundScheduler(
        executors={"default": ThreadPoolExecutor(config.polling.pool_size),
                   "housekeeping": ThreadPoolExecutor(HOUSEKEEPING_WORKERS)},
        job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 60},
        timezone=ZoneInfo(config.site.timezone),
    )


@dataclass
class DeviceRunState:
    """Scheduling state of one device (in memory: a restart probes every device again at once)."""

    device: DeviceConfig
    running_since: float | None = None
    #: A manual poll requested while one was running: run once more right after it.
    pending: bool = False
    #: Backed off: scheduled ticks before this are skipped (manual polls are not).
    next_probe_at: datetime | None = None
    last_outcome: PollOutcome | None = None
    last_finished_at: datetime | None = None
    overrun_logged: bool = False


class PollScheduler:
    """Runs ``poll(device)`` for every enabled device on its interval; coalesces manual polls; backs off.

    ``failures`` is where failed polls are counted (the health monitor in the daemon). Without it the
    back-off never grows: every failure counts as the first (non-transient failures and retry_after apply).
    """

    def __init__(self, config: Config, scheduler: BackgroundScheduler,
                 poll: Callable[[DeviceConfig], PollOutcome], *, stop_event: threading.Event,
                 failures: FailureView | None = None, now: Callable[[], datetime] | None = None) -> None:
        self.config = config
        self.failures = failures
        self.scheduler = scheduler
        self._poll = poll
        self.stop_event = stop_event
        self._now = now or (lambda: datetime.now(UTC))
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        # Push terminals (driver = "push") call the gateway themselves (gateway.push): nothing to poll.
        self.states: dict[str, DeviceRunState] = {d.id: DeviceRunState(d) for d in config.devices
                                                  if d.enabled and not d.pushes}
        #: monotonic time of the last finished poll (any outcome): the watchdog's progress signal.
        self.last_progress = time.monotonic()
        scheduler.add_listener(self._on_event, EVENT_JOB_MISSED | EVENT_JOB_MAX_INSTANCES | EVENT_JOB_ERROR)

    # -- jobs ------------------------------------------------------------------------------------
    def add_jobs(self) -> None:
        """One staggered interval job per enabled device (start dates spread over the interval)."""
        devices = [st.device for st in self.states.values()]
        start = self._now() + timedelta(seconds=FIRST_POLL_DELAY_S)
        for i, dev in enumerate(devices):
            # Spread devices sharing an interval evenly, but never more than 30 s apart at start:
            # after a restart every device should be looked at soon.
            offset = min(dev.interval_s / max(len(devices), 1), 30.0) * i
            self.scheduler.add_job(
                self.run_device, "interval", args=(dev.id, False), id=poll_job_id(dev.id),
                name=f"poll {dev.id}", seconds=dev.interval_s, start_date=start + timedelta(seconds=offset),
                max_instances=1, coalesce=True,
                # A poll that waited in the pool queue still runs (once) instead of being dropped.
                misfire_grace_time=max(int(dev.interval_s), 1), replace_existing=True, executor="default")

    def poll_now(self, device_id: str) -> bool:
        """Ask for a poll of one device as soon as possible; coalesced behind a running poll.

        Returns False for an unknown or disabled device id (or while stopping).
        """
        st = self.states.get(device_id)
        if st is None or self.stop_event.is_set():
            return False
        with self._lock:
            if st.running_since is not None:
                st.pending = True  # at most one queued behind the running poll
                return True
        # A date job with a fixed id: a second request before it ran replaces (coalesces) it.
        self.scheduler.add_job(self.run_device, "date", args=(device_id, True), id=f"poll-now:{device_id}",
                               name=f"poll now {device_id}", replace_existing=True, misfire_grace_time=None,
                               executor="default")
        return True

    # -- running ---------------------------------------------------------------------------------
    def run_device(self, device_id: str, manual: bool = False) -> PollOutcome | None:
        """Job body: poll unless already running or backed off; repeat once if a manual poll queued."""
        st = self.states[device_id]
        with self._lock:
            if st.running_since is not None:
                if manual:
                    st.pending = True
                return None
            if not manual and st.next_probe_at is not None and self._now() < st.next_probe_at:
                return None  # backed off: skip this tick
            st.running_since = time.monotonic()
            st.overrun_logged = False
        outcome: PollOutcome | None = None
        try:
            while True:
                if self.stop_event.is_set():
                    break
                outcome = self._poll(st.device)
                self._after(st, outcome)
                with self._lock:
                    if st.pending and not self.stop_event.is_set():
                        st.pending = False
                        continue
                    break
        finally:
            with self._lock:
                st.running_since = None
                st.pending = False
                self._idle.notify_all()
        return outcome

    def _after(self, st: DeviceRunState, outcome: PollOutcome) -> None:
        now = self._now()
        self.last_progress = time.monotonic()
        dev = st.device
        # Read outside our lock: the observers (health) already recorded this outcome in the poll thread.
        failures = self.failures.consecutive_failures(dev.id) if self.failures is not None else 1
        with self._lock:
            st.last_outcome = outcome
            st.last_finished_at = now
            if outcome.ok:
                if st.next_probe_at is not None:
                    log.debug("device answering again; normal polling resumed", device=dev.id, serial=outcome.serial)
                st.next_probe_at = None
                return
            if outcome.error_kind == "abandoned":
                return
            delay = backoff_s(dev.interval_s, failures, self.config.polling.backoff_max_s,
                              transient=outcome.transient, retry_after_s=outcome.retry_after_s)
            st.next_probe_at = now + timedelta(seconds=delay) - timedelta(seconds=0.5)
            # The outage itself is logged once by gateway.health (start WARNING, end INFO with its duration).
            log.debug("device poll failed; backing off", device=dev.id, serial=outcome.serial,
                      error_kind=outcome.error_kind, failures=failures, next_probe_in_s=round(delay))

    def _on_event(self, event: JobExecutionEvent) -> None:
        job_id = getattr(event, "job_id", "")
        if not job_id.startswith("poll:"):
            return
        device_id = job_id.split(":", 1)[1]
        st = self.states.get(device_id)
        if event.code == EVENT_JOB_MAX_INSTANCES and st is not None:
            with self._lock:
                if st.overrun_logged:
                    return
                st.overrun_logged = True
            log.warning("poll still running when the next one was due; skipping ticks (raise interval_s "
                        "or lower timeout_s)", device=device_id)
        elif event.code == EVENT_JOB_ERROR:
            log.error("poll job crashed (bug)", device=device_id, error=repr(event.exception))

    # -- introspection ---------------------------------------------------------------------------
    def running_since(self) -> dict[str, float]:
        """Device id -> ``time.monotonic()`` when its running poll started (RunningPolls)."""
        with self._lock:
            return {i: st.running_since for i, st in self.states.items() if st.running_since is not None}

    def in_flight(self) -> list[str]:
        """Ids of devices being polled right now."""
        with self._lock:
            return [i for i, st in self.states.items() if st.running_since is not None]

    def longest_running_s(self) -> float:
        """How long the oldest in-flight poll has been running (0 when none)."""
        now = time.monotonic()
        with self._lock:
            ages = [now - st.running_since for st in self.states.values() if st.running_since is not None]
        return max(ages, default=0.0)

    def summary(self) -> tuple[int, int, datetime | None]:
        """(devices whose last poll was ok, devices polled, time of the newest finished poll)."""
        with self._lock:
            ok = sum(1 for st in self.states.values() if st.last_outcome is not None and st.last_outcome.ok)
            finished = [st.last_finished_at for st in self.states.values() if st.last_finished_at is not None]
        return ok, len(self.states), max(finished, default=None)

    def wait_idle(self, timeout_s: float) -> list[str]:
        """Wait until no poll is running (or the timeout); returns devices still in flight."""
        deadline = time.monotonic() + timeout_s
        with self._lock:
            while True:
                busy = [i for i, st in self.states.items() if st.running_since is not None]
                remaining = deadline - time.monotonic()
                if not busy or remaining <= 0:
                    return busy
                self._idle.wait(min(remaining, 0.5))

    def device_ids(self) -> Iterable[str]:
        """Ids of the devices this scheduler polls."""
        return self.states.keys()

"""What runs when: the device poll schedule (a bounded pool, spread slots, fairness), manual "poll now", back-off.

gateway.app builds one ``PollScheduler`` and one APScheduler BackgroundScheduler (``build_scheduler``, shared
with the services through AppContext.scheduler for their housekeeping jobs: sweeps, forwarding). Device polls
do not go through APScheduler: with hundreds of terminals its per-job rules drop polls when the pool is
saturated (a job that waited past misfire_grace_time is discarded with one WARNING; an overrun is skipped by
max_instances), and nothing then tells which terminal went unpolled. Instead:

- one dispatcher thread hands due devices to ``polling.pool_size`` worker threads, never more at once, always the
  device that has waited longest first (a manual "poll now" before them), so no terminal is ever starved;
- each device has its own slot in its interval (even spread plus a per-device jitter): no thundering herd at
  start or at every interval; the cold start reads every terminal once as fast as the pool allows, then each
  moves to its slot (gaps between two polls of a device stay within 0.5-1.5 intervals);
- a slot that passes without a poll of its device is a missed cycle (a poll started more than half an interval
  late moves on to the slot after next): it is counted (per device, metric ``fpgw_poll_cycles_missed``), and
  polling warns once that the interval cannot be met (with figures), and once when it keeps up again (slots
  missed while the cold start still reads other terminals are counted apart and do not warn);
- a failing device is backed off by moving its next poll (x1.5 per failed poll up to polling.backoff_max_s; at
  once to that cap when someone must fix something; never before a Busy device's retry_after). The failure count
  is the health model's (a FailureView wired by gateway.app): outages are logged once by gateway.health.
Every outcome is counted by kind (storage errors too, which poll_runs cannot hold: the database refused the
write); the counts are logged once at stop ("polling summary").
"""

from __future__ import annotations

import math
import random
import threading
import time
import zlib
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TypeVar
from zoneinfo import ZoneInfo

import structlog
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from prometheus_client import CollectorRegistry
from prometheus_client import Counter as PromCounter

from gateway.config import Config, DeviceConfig
from gateway.devicelock import DeviceLocks
from gateway.models import PollOutcome
from gateway.services import FailureView

_T = TypeVar("_T")

log = structlog.get_logger(__name__)

#: Backoff growth per consecutive failure (house style: x1.5 up to polling.backoff_max_s).
BACKOFF_FACTOR = 1.5
#: APScheduler's pools: services' jobs only (device polls have their own workers, below).
HOUSEKEEPING_WORKERS = 4
SERVICE_WORKERS = 4
#: The first poll after start waits this long, so startup logs and READY come first.
FIRST_POLL_DELAY_S = 1.0
#: Stack of a poll worker thread. A poll's deepest stack (pyzk, SQLAlchemy, structlog) uses well under
#: 256 KiB; the 8 MiB default only costs address space, but small stacks keep a large pool's footprint low.
POLL_STACK_BYTES = 1024 * 1024
#: The dispatcher wakes at least this often (stop, clock checks).
IDLE_WAKE_S = 1.0


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


def build_scheduler(config: Config) -> BackgroundScheduler:
    """A BackgroundScheduler for the services' jobs (a default and a housekeeping pool), in the site's time zone.

    Device polls are not APScheduler jobs (see the module docstring).
    """
    return BackgroundScheduler(
        executors={"default": ThreadPoolExecutor(SERVICE_WORKERS),
                   "housekeeping": ThreadPoolExecutor(HOUSEKEEPING_WORKERS)},
        job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 60},
        timezone=ZoneInfo(config.site.timezone),
    )


@dataclass
class DeviceRunState:
    """Scheduling state of one device (in memory: a restart reads every device again at once)."""

    device: DeviceConfig
    #: Order in the config (ties in waiting time go by it).
    index: int = 0
    #: Where in its interval this device's slots lie (seconds after the schedule's epoch).
    phase_s: float = 0.0
    #: Scheduler clock time of the next scheduled poll (None: not planned yet, or paused).
    due_at: float | None = None
    #: ``time.monotonic()`` when the running poll started (None when idle).
    running_since: float | None = None
    #: A manual poll requested: run it before any scheduled one (once more after a running poll).
    pending: bool = False
    #: Another job holds the device (run_exclusive: the enrolment backup); no poll starts meanwhile.
    held: bool = False
    #: Backed off: no scheduled poll before this (scheduler clock; manual polls are not held back).
    next_probe_at: float | None = None
    last_outcome: PollOutcome | None = None
    last_finished_at: datetime | None = None
    #: Polls started, and slots of this device that passed without a poll (missed cycles).
    polls: int = 0
    missed_cycles: int = 0


@dataclass
class PollingStats:
    """Counters since start (the "polling summary" at stop; the status of the schedule)."""

    polls: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    #: Failed database writes whose error says the database was locked (SQLite busy).
    locked: int = 0
    missed_cycles: int = 0
    #: Slots of terminals already read that passed while the cold start still read the others.
    missed_in_cold_start: int = 0
    #: Seconds from start until every device had been read once (None until then).
    cold_start_s: float | None = None


class PollScheduler:
    """Polls every enabled device on its interval with a bounded pool; coalesces manual polls; backs off.

    ``failures`` is where failed polls are counted (the health monitor in the daemon). Without it the
    back-off never grows: every failure counts as the first (non-transient failures and retry_after apply).
    ``now`` (wall clock, for outcomes) and ``clock`` (seconds, for the schedule; default monotonic, or
    ``now`` when only that is given) are for tests; ``run_device`` and ``dispatch`` let a test drive the
    schedule without the dispatcher thread.
    """

    def __init__(self, config: Config, scheduler: BackgroundScheduler,
                 poll: Callable[[DeviceConfig], PollOutcome], *, stop_event: threading.Event,
                 failures: FailureView | None = None, now: Callable[[], datetime] | None = None,
                 clock: Callable[[], float] | None = None, pool_size: int | None = None,
                 registry: CollectorRegistry | None = None) -> None:
        self.config = config
        self.failures = failures
        #: The services' APScheduler (kept for gateway.app; device polls do not use it).
        self.scheduler = scheduler
        self._poll = poll
        self.stop_event = stop_event
        self._now = now or (lambda: datetime.now(UTC))
        if clock is None:
            clock = (lambda: self._now().timestamp()) if now is not None else time.monotonic
        self._clock = clock
        self.pool_size = pool_size or config.polling.pool_size
        self._lock = threading.Lock()
        #: Wakes the dispatcher (a poll ended, poll now, stop) and wait_idle; workers wait on their own
        #: condition, so a finished poll does not wake every idle worker.
        self._cond = threading.Condition(self._lock)
        self._work_cond = threading.Condition(self._lock)
        # Push terminals (driver = "push") call the gateway themselves (gateway.push) and serial-line clocks
        # write to us (gateway.serial): nothing to poll.
        self.states: dict[str, DeviceRunState] = {
            d.id: DeviceRunState(d, index=i)
            for i, d in enumerate(x for x in config.devices if x.enabled and not x.pushes and not x.reads_serial)}
        self._work: deque[DeviceRunState] = deque()
        self._workers: list[threading.Thread] = []
        #: Across processes: `fpgw enrol backup/restore/sync` from a shell take the same lock files
        #: (gateway.devicelock); a poll of a terminal such a command holds is skipped, once logged.
        self.device_locks = DeviceLocks(config.site.state_dir)
        self._locked_out: set[str] = set()
        self._dispatcher: threading.Thread | None = None
        self._running = 0
        self._paused: set[str] = set()
        self._epoch: float | None = None
        self._created_at = clock()
        self._never_polled = set(self.states)
        #: Scheduler clock time when every device had been read once (None during the cold start).
        self._cold_done_at: float | None = None
        self.stats = PollingStats()
        #: Behind schedule since (scheduler clock; None when keeping up) and the last missed cycle.
        self._behind_since: float | None = None
        self._last_missed_at: float | None = None
        self._durations: deque[float] = deque(maxlen=200)
        self._started_at: deque[float] = deque(maxlen=4096)
        #: monotonic time of the last finished poll (any outcome): the watchdog's progress signal.
        self.last_progress = time.monotonic()
        self._missed_metric = (PromCounter("fpgw_poll_cycles_missed", "Scheduled polls that started a whole "
                                           "interval late (a missed cycle), by device", ["device"],
                                           registry=registry) if registry is not None else None)

    # -- plan ------------------------------------------------------------------------------------
    def add_jobs(self) -> None:
        """Plan every enabled device: all due at once for the cold start, each with its own slot after that."""
        with self._lock:
            self._epoch = self._clock() + FIRST_POLL_DELAY_S
            by_interval: dict[float, list[DeviceRunState]] = {}
            for st in self.states.values():
                by_interval.setdefault(st.device.interval_s, []).append(st)
            for interval, group in by_interval.items():
                for i, st in enumerate(group):
                    # Even spread plus a jitter that is stable per device (same slot after a restart).
                    jitter = random.Random(zlib.crc32(st.device.id.encode())).random()
                    st.phase_s = (i + jitter) * interval / len(group)
                    st.due_at = self._epoch
            self._cond.notify_all()

    def pause(self, device_id: str) -> None:
        """No scheduled polls of this device from now on (manual polls still run); for tests and tools."""
        with self._lock:
            self._paused.add(device_id)

    def next_slot(self, st: DeviceRunState, not_before: float) -> float:
        """The device's first slot at or after ``not_before``."""
        interval = st.device.interval_s
        base = (self._epoch or 0.0) + st.phase_s
        return base + max(0, math.ceil((not_before - base) / interval)) * interval

    def poll_now(self, device_id: str) -> bool:
        """Ask for a poll of one device as soon as possible; coalesced behind a running poll.

        Returns False for an unknown or disabled device id (or while stopping).
        """
        st = self.states.get(device_id)
        if st is None or self.stop_event.is_set():
            return False
        with self._lock:
            st.pending = True  # at most one queued (behind the running poll, if any)
            self._cond.notify_all()
        return True

    # -- the pool --------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the dispatcher and the poll workers (``polling.pool_size`` threads)."""
        if self._dispatcher is not None:
            return
        old = threading.stack_size()
        try:
            threading.stack_size(POLL_STACK_BYTES)
            for i in range(self.pool_size):
                t = threading.Thread(target=self._work_loop, name=f"fpgw-poll-{i}", daemon=True)
                t.start()
                self._workers.append(t)
            self._dispatcher = threading.Thread(target=self._dispatch_loop, name="fpgw-poll-dispatch", daemon=True)
            self._dispatcher.start()
        finally:
            threading.stack_size(old)

    def stop(self, deadline_s: float) -> list[str]:
        """Stop dispatching, wait for running polls up to ``deadline_s``; returns devices still in flight."""
        with self._lock:
            self._cond.notify_all()
            self._work_cond.notify_all()
        busy = self.wait_idle(deadline_s)
        for t in [self._dispatcher, *self._workers]:
            if t is not None and not busy:
                t.join(2.0)
        self._log_summary()
        return busy

    def _dispatch_loop(self) -> None:
        while not self.stop_event.is_set():
            wait_s = self.dispatch()
            with self._lock:
                if self.stop_event.is_set():
                    break
                self._cond.wait(min(wait_s, IDLE_WAKE_S))
        with self._lock:
            self._work_cond.notify_all()

    def dispatch(self) -> float:
        """Hand due devices to free workers (longest-waiting first); returns seconds until the next is due."""
        with self._lock:
            now = self._clock()
            ready: list[tuple[int, float, int, DeviceRunState]] = []
            next_due = math.inf
            for st in self.states.values():
                if st.running_since is not None or st.held:
                    continue
                if st.pending:
                    ready.append((0, 0.0, st.index, st))
                    continue
                due = self._effective_due(st)
                if due is None:
                    continue
                if due <= now:
                    ready.append((1, due, st.index, st))
                else:
                    next_due = min(next_due, due)
            free = self.pool_size - self._running - len(self._work)
            ready.sort(key=lambda r: r[:3])
            handed = ready[:max(free, 0)]
            for _, _, _, st in handed:
                manual = st.pending
                st.pending = False
                self._claim(st, now, manual)
                self._work.append(st)
            if handed:
                self._work_cond.notify(len(handed))
            waiting = len(ready) - max(free, 0)
            self._note_load(now, waiting)
            return max(next_due - now, 0.01) if math.isfinite(next_due) else IDLE_WAKE_S

    def run_claimed_here(self) -> list[str]:
        """Run the polls ``dispatch`` handed out, in the calling thread (tests drive the schedule this way,
        without starting the workers); returns the device ids polled, in order."""
        done: list[str] = []
        while True:
            with self._lock:
                if not self._work:
                    return done
                st = self._work.popleft()
            self._run_claimed(st)
            done.append(st.device.id)

    def alive(self) -> bool:
        """The dispatcher runs (the watchdog's check)."""
        return self._dispatcher is not None and self._dispatcher.is_alive()

    def _work_loop(self) -> None:
        while True:
            with self._lock:
                while not self._work and not self.stop_event.is_set():
                    self._work_cond.wait(IDLE_WAKE_S)
                if not self._work:
                    return
                st = self._work.popleft()
                self._running += 1
            try:
                self._run_claimed(st)
            finally:
                with self._lock:
                    self._running -= 1
                    self._cond.notify_all()

    def _effective_due(self, st: DeviceRunState) -> float | None:
        if st.due_at is None or st.device.id in self._paused:
            return None
        return max(st.due_at, st.next_probe_at) if st.next_probe_at is not None else st.due_at

    def _claim(self, st: DeviceRunState, now: float, manual: bool) -> None:
        """Under the lock: mark the device running, count a missed cycle, plan its next slot."""
        st.running_since = time.monotonic()
        st.polls += 1
        self.stats.polls += 1
        self._started_at.append(now)
        if manual and (st.due_at is None or st.due_at > now):
            return  # an extra poll: the schedule stays as it was
        interval = st.device.interval_s
        if st.due_at is None:
            return
        # The next slot at least half an interval away: gaps between two polls of a device stay within
        # 0.5-1.5 intervals, and a late device does not poll twice in a row to catch up.
        next_due = self.next_slot(st, now + interval / 2)
        backed_off = st.next_probe_at is not None and st.next_probe_at > st.due_at
        if st.device.id not in self._never_polled and not backed_off:
            # Slots that passed without a poll of this device (the cold start's first poll has no slot, and a
            # backed-off device skips slots on purpose).
            missed = max(round((next_due - st.due_at) / interval) - 1, 0)
            if missed:
                st.missed_cycles += missed
                # The slots that passed unserved are due_at + k x interval, k = 0..missed-1 (this late poll stands
                # for the slot after them). Those that passed while the cold start still read other terminals
                # (which go first: longest waiting) are expected, and reported with the cold start, not as
                # "cannot keep up".
                cold_end = self._cold_done_at
                in_cold = missed if cold_end is None else min(max(math.ceil((cold_end - st.due_at) / interval), 0),
                                                              missed)
                self.stats.missed_in_cold_start += in_cold
                if missed > in_cold:
                    self.stats.missed_cycles += missed - in_cold
                    self._last_missed_at = now
                if self._missed_metric is not None:
                    self._missed_metric.labels(st.device.id).inc(missed)
        st.due_at = next_due

    # -- running ---------------------------------------------------------------------------------
    def run_device(self, device_id: str, manual: bool = False) -> PollOutcome | None:
        """Poll one device now unless it is running or (scheduled) backed off; then once more if a manual
        poll was requested meanwhile. The workers run claimed devices; tests call this directly."""
        st = self.states[device_id]
        with self._lock:
            if st.running_since is not None or st.held:
                if manual:
                    st.pending = True
                return None
            if not manual and st.next_probe_at is not None and self._clock() < st.next_probe_at:
                return None  # backed off: skip this tick
            st.pending = False
            self._claim(st, self._clock(), manual)
        return self._run_claimed(st)

    def run_exclusive(self, device_id: str, job: Callable[[], _T], wait_s: float = 900.0) -> _T | None:
        """Run ``job`` (e.g. an enrolment backup) when no poll of the device runs, keeping polls off it meanwhile.

        Waits up to ``wait_s`` for a running poll to end, and for an `fpgw enrol` command of another process
        holding the device's lock file (gateway.devicelock); None when they did not (or the daemon stops). A
        manual poll asked for meanwhile runs at the next dispatch. Devices this scheduler does not poll run at once.
        """
        st = self.states.get(device_id)
        if st is None:
            return job()
        deadline = time.monotonic() + wait_s
        with self._lock:
            while st.running_since is not None or st.held:
                left = deadline - time.monotonic()
                if left <= 0 or self.stop_event.is_set():
                    return None
                self._cond.wait(min(left, 1.0))
            st.held = True
        try:
            lock = self.device_locks.hold(device_id, max(deadline - time.monotonic(), 0.0), stop=self.stop_event)
            if lock is None:
                return None
            with lock:
                return job()
        finally:
            with self._lock:
                st.held = False
                self._cond.notify_all()

    def _run_claimed(self, st: DeviceRunState) -> PollOutcome | None:
        outcome: PollOutcome | None = None
        lock = self.device_locks.try_hold(st.device.id)
        if lock is None:  # `fpgw enrol ...` in another process holds the terminal: this tick is skipped
            if st.device.id not in self._locked_out:
                self._locked_out.add(st.device.id)
                log.info("poll skipped: another fpgw process holds the terminal (fpgw enrol ...)",
                         device=st.device.id)
            with self._lock:
                st.running_since = None
                self._cond.notify_all()
            return None
        if self._locked_out:
            self._locked_out.discard(st.device.id)
        try:
            while not self.stop_event.is_set():
                t0 = self._clock()
                outcome = self._poll(st.device)
                self._after(st, outcome, self._clock() - t0)
                with self._lock:
                    if st.pending and not self.stop_event.is_set():
                        st.pending = False
                        continue
                    break
        finally:
            lock.release()
            with self._lock:
                st.running_since = None
                self._cond.notify_all()
        return outcome

    def _after(self, st: DeviceRunState, outcome: PollOutcome, took_s: float) -> None:
        now = self._now()
        self.last_progress = time.monotonic()
        dev = st.device
        # Read outside our lock: the observers (health) already recorded this outcome in the poll thread.
        failures = self.failures.consecutive_failures(dev.id) if self.failures is not None else 1
        with self._lock:
            st.last_outcome = outcome
            st.last_finished_at = now
            if dev.id not in self._never_polled:
                self._durations.append(took_s)  # first reads download whole logs: not what a cycle costs
            kind = "ok" if outcome.ok else (outcome.error_kind or "bug")
            self.stats.outcomes[kind] += 1
            if kind == "storage" and "locked" in (outcome.error or ""):
                self.stats.locked += 1
            if dev.id in self._never_polled:
                self._never_polled.discard(dev.id)
                if not self._never_polled:
                    self._cold_done_at = self._clock()
                    self.stats.cold_start_s = self._cold_done_at - self._created_at
                    log.info("first read of every terminal done", devices=len(self.states),
                             seconds=round(self.stats.cold_start_s, 1), pool_size=self.pool_size)
            if outcome.ok:
                if st.next_probe_at is not None:
                    log.debug("device answering again; normal polling resumed", device=dev.id, serial=outcome.serial)
                st.next_probe_at = None
                return
            if outcome.error_kind in ("abandoned", "storage"):
                return  # our own stop, or the database's fault: nothing to back the device off for
            delay = backoff_s(dev.interval_s, failures, self.config.polling.backoff_max_s,
                              transient=outcome.transient, retry_after_s=outcome.retry_after_s)
            st.next_probe_at = self._clock() + delay - 0.5
            # The outage itself is logged once by gateway.health (start WARNING, end INFO with its duration).
            log.debug("device poll failed; backing off", device=dev.id, serial=outcome.serial,
                      error_kind=outcome.error_kind, failures=failures, next_probe_in_s=round(delay))

    # -- keeping up --------------------------------------------------------------------------------
    def _note_load(self, now: float, waiting: int) -> None:
        """Under the lock: warn once when cycles are being missed, once more when polling keeps up again."""
        longest = max((st.device.interval_s for st in self.states.values()), default=60.0)
        if self._behind_since is None:
            if self._last_missed_at is not None and now - self._last_missed_at < longest:
                self._behind_since = self._last_missed_at
                log.warning("polling cannot keep up with the interval: terminals are polled less often than "
                            "configured (every terminal still gets its turn, longest-waiting first)",
                            **self.load_figures(now, waiting))
            return
        # Caught up: nobody waits for a worker and no slot was missed for two whole intervals.
        if waiting <= 0 and self._last_missed_at is not None and now - self._last_missed_at >= 2 * longest:
            log.info("polling keeps up with the interval again", behind_for_s=round(now - self._behind_since),
                     missed_cycles=self.stats.missed_cycles)
            self._behind_since = None

    def load_figures(self, now: float | None = None, waiting: int | None = None) -> dict[str, object]:
        """What the schedule needs and gets: polls per minute, pool, poll time, a pool size that would do."""
        now = self._clock() if now is None else now
        needed = sum(60.0 / st.device.interval_s for st in self.states.values())
        recent = [t for t in self._started_at if t >= now - 60.0]
        mean_s = sum(self._durations) / len(self._durations) if self._durations else 0.0
        # Little's law: busy workers = polls per second x seconds per poll; x1.5 headroom.
        suggest = math.ceil(needed / 60.0 * mean_s * 1.5) if mean_s else None
        return {"devices": len(self.states), "pool_size": self.pool_size, "polls_needed_per_min": round(needed),
                "polls_last_min": len(recent), "mean_poll_s": round(mean_s, 2), "waiting": waiting,
                "missed_cycles": self.stats.missed_cycles, "pool_size_needed": suggest}

    def _log_summary(self) -> None:
        s = self.stats
        failed = {k: v for k, v in s.outcomes.items() if k != "ok"}
        log.info("polling summary", polls=s.polls, ok=s.outcomes.get("ok", 0), failed=sum(failed.values()),
                 failures_by_kind=failed or None, storage_errors=s.outcomes.get("storage", 0), locked_errors=s.locked,
                 missed_cycles=s.missed_cycles, missed_in_cold_start=s.missed_in_cold_start,
                 cold_start_s=round(s.cold_start_s, 1) if s.cold_start_s else None,
                 pool_size=self.pool_size)

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
                self._cond.wait(min(remaining, 0.5))

    def device_ids(self) -> Iterable[str]:
        """Ids of the devices this scheduler polls."""
        return self.states.keys()

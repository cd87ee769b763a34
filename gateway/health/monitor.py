"""Health monitor service: feeds the HealthTracker, persists its state, routes its transitions to alerts.

    poller --PollOutcome (ctx.poll_observers)--> HealthMonitor.observe()   scheduler --"health-sweep" 30 s--> sweep()
        --> HealthTracker --Transition[]--> AlertRouter (log + alerts table + sender thread)
                                   \\--> device_health table (loaded at start: a restart neither forgets nor re-alerts)
    poller --PollOutcome(error_kind="storage")--> GatewayHealth (gateway.health.gateway): the database's fault,
        not the device's; the sweep also checks the database disk's free space and probes a failing database
Published as ``ctx.health`` (a gateway.services.HealthView) for the status page, metrics and central; the poll
scheduler backs failing devices off from its failure count (FailureView), so failures are counted only here.

Locking: the tracker is updated under one lock, but nothing touches the database or the network while it is
held (hundreds of poll threads report here). Each caller computes its transitions under the lock and queues
them with a copy of the changed health records; one caller at a time writes the queue in order (a batch of
several callers' changes in one transaction), the others return at once. Order is kept (per device too),
each state change is logged once (after its row is stored), and a failed write goes back to the queue.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

import structlog

from gateway.health.alerts import AlertRouter
from gateway.health.gateway import DATABASE_PROBLEMS, GATEWAY_CHECKS, GatewayEvent, GatewayHealth, GatewayProblem
from gateway.health.tracker import HealthTracker, Transition
from gateway.humanize import duration_text
from gateway.models import DeviceHealth, PollOutcome
from gateway.services import AppContext, Service
from gateway.store.db import StorageError, storage_error_text
from gateway.store.enrol import EnrolRepo

log = structlog.get_logger(__name__)

#: Seconds between sweeps (offline window, hung polls, silent devices, reminders, mutes, pending alerts).
SWEEP_EVERY_S = 30.0
#: Queued batches one writer takes per transaction, and transactions before it hands the queue on: a poll
#: thread that happens to write for others goes back to polling soon (the next caller or sweep takes over).
WRITE_BATCH = 64
WRITE_ROUNDS = 8


@dataclass
class _Changes:
    """What one observe or sweep changed: transitions to record and copies of the health rows to store."""

    transitions: list[Transition]
    healths: dict[str, DeviceHealth]
    serials: dict[str, str | None] = field(default_factory=dict)


class HealthMonitor:
    """The health service of the daemon (see module docstring)."""

    name = "health"

    def __init__(self, ctx: AppContext, *, clock: Callable[[], datetime] | None = None,
                 router: AlertRouter | None = None, sweep_every_s: float = SWEEP_EVERY_S) -> None:
        self.ctx = ctx
        self.config = ctx.config
        self.clock = clock or (lambda: datetime.now(UTC))
        self.repo = ctx.health_repo
        self.tracker = HealthTracker(ctx.config)
        self.router = router or AlertRouter(ctx.config, self.repo, clock=self.clock)
        self.sweep_every_s = sweep_every_s
        self._lock = threading.RLock()
        self._serials: dict[str, str | None] = {}
        self._muted: dict[str, datetime] = {}
        self._started = False
        #: Changes computed under ``_lock`` and not stored yet, oldest first (see the module docstring).
        self._unwritten: deque[_Changes] = deque()
        self._writing = False
        #: The gateway's own health (database, disk), apart from every device.
        self.gateway = GatewayHealth()

    # -- service ----------------------------------------------------------------------------------------
    def start(self) -> None:
        """Restore persisted health, start the alert sender, hook into polling and the scheduler."""
        watched = {d.id for d in self.config.devices if d.enabled}
        with self._lock:
            for h in self.repo.load_health():
                # A device removed from the config (or disabled) keeps its history but gets no
                # reminders or sweeps any more.
                if h.device_id in watched:
                    self.tracker.load(h)
            rows = self.repo.devices()
            self._serials = {d.device_id: d.serial for d in rows}
            # The reference of user_drop: a terminal reset while the gateway was down is noticed at its first poll.
            self.tracker.seed_user_counts({d.device_id: d.last_user_count for d in rows
                                           if d.last_user_count is not None and d.device_id in watched})
            self._refresh_mutes(self.clock(), announce=False)
        self.router.start()
        self.ctx.poll_observers.append(self.observe)
        executors = getattr(self.ctx.scheduler, "_executors", {})
        self.ctx.scheduler.add_job(self.sweep, "interval", seconds=self.sweep_every_s, id="health-sweep",
                                   name="health sweep", replace_existing=True, max_instances=1, coalesce=True,
                                   misfire_grace_time=int(self.sweep_every_s),
                                   executor="housekeeping" if "housekeeping" in executors else "default")
        self._started = True
        open_now = sum(len(h.problems) for h in self.tracker.snapshot().values())
        log.info("health monitor started", devices=len(self.config.devices), open_problems=open_now,
                 alert_channels=len(self.router.channels))

    def stop(self, deadline_s: float) -> None:
        """Unhook, persist, stop the sender (undelivered alerts stay pending for the next start)."""
        if not self._started:
            return
        self._started = False
        try:
            self.ctx.poll_observers.remove(self.observe)
        except ValueError:
            pass
        try:
            self.ctx.scheduler.remove_job("health-sweep")
        except Exception:  # already gone with the scheduler: nothing to do
            pass
        try:
            with self._lock:
                self._queue_changes([])
            self._write_changes(rounds=None)
        except Exception:
            log.exception("could not save device health at stop")
        self.router.stop(min(deadline_s, 10.0))

    # -- inputs -----------------------------------------------------------------------------------------
    def observe(self, outcome: PollOutcome) -> None:
        """Poll observer (runs in the polling thread): update the model; only changes touch the DB, and never
        under the lock (module docstring)."""
        with self._lock:
            if outcome.error_kind == "storage":
                # The office database failed, not the device: no device health changes (no protocol_error,
                # no failure count for the back-off); the gateway's problem opens. Alerts go out at the sweep.
                self._gateway_changed(lambda: self.gateway.storage_failed(outcome.error or "", outcome.finished_at))
                return
            if outcome.ok:
                # A stored poll proves the database takes writes again.
                self._gateway_changed(lambda: self.gateway.storage_ok(outcome.finished_at))
            if outcome.serial:
                self._serials[outcome.device_id] = outcome.serial
            queued = self._queue_changes(self.tracker.record(outcome))
        if queued:
            try:
                self._write_changes()
            except StorageError as exc:
                # Kept in the queue for the next caller or the sweep; the gateway's problem logs it once.
                error = storage_error_text(exc)
                with self._lock:
                    self._gateway_changed(lambda: self.gateway.storage_failed(error, outcome.finished_at))

    def poll_started(self, device_id: str, at: datetime) -> None:
        """A poll began (optional hook; the sweep also reads the poll scheduler's in-flight polls)."""
        with self._lock:
            self.tracker.poll_started(device_id, at)

    def sweep(self, now: datetime | None = None) -> list[Transition]:
        """Time-based rules, mutes and pending alerts from other writers; returns the transitions."""
        now = now or self.clock()
        transitions = self._apply_drop_acknowledgements(now)
        with self._lock:
            self._note_in_flight(now)
            swept = self.tracker.sweep(now)
            self._queue_changes(swept)
        transitions += swept
        try:
            # Also stores what earlier callers left queued (a failed write, or a writer that handed on).
            self._write_changes()
            with self._lock:
                self._refresh_mutes(now, announce=True)
        except StorageError as exc:
            # The changes stay queued: the next caller or sweep stores what this one could not.
            error = storage_error_text(exc)
            with self._lock:
                self._gateway_changed(lambda: self.gateway.storage_failed(error, now))
        # Outside the lock: the probe may wait out a database lock and a direct alert goes over the network,
        # while polling threads report outcomes.
        self._check_gateway(now)
        self._send_gateway_alerts()
        try:
            self.router.queue_pending()
        except StorageError:
            pass  # the database problem is open; pending rows are queued once it is back
        return transitions

    # -- reads -------------------------------------------------------------------------------------------
    def snapshot(self) -> dict[str, DeviceHealth]:
        """Every device's health (a copy)."""
        with self._lock:
            return self.tracker.snapshot()

    def consecutive_failures(self, device_id: str) -> int:
        """Failed polls in a row (FailureView: the poll scheduler's back-off reads this)."""
        with self._lock:
            return self.tracker.consecutive_failures(device_id)

    def alert_deliveries(self) -> tuple[int, int]:
        """(alerts delivered, failed delivery attempts) since start."""
        return self.router.sent, self.router.failed

    def deliver_pending(self) -> None:
        """Queue alerts other writers (central mode, the forwarder) put in the alerts table, now."""
        self.router.queue_pending()

    def gateway_health(self) -> tuple[list[GatewayProblem], int | None]:
        """(the gateway's open problems worst first, free bytes on the database's disk or None)."""
        with self._lock:
            return self.gateway.snapshot(), self.gateway.disk_free_bytes

    def muted_until(self, device_id: str) -> datetime | None:
        """When the device's mute ends (None when not muted)."""
        until = self._muted.get(device_id)
        return until if until is not None and until > self.clock() else None

    # -- internals ---------------------------------------------------------------------------------------
    def _queue_changes(self, transitions: list[Transition]) -> bool:
        """Under ``_lock``: queue the transitions and copies of the changed health rows; True when queued."""
        dirty = self.tracker.take_dirty()
        if not dirty and not transitions:
            return False
        # Copies: the tracker goes on changing its records while this batch waits to be written.
        healths = {d: _copy_health(self.tracker.health(d)) for d in sorted(dirty)}
        serials = {t.device_id: self._serials.get(t.device_id) for t in transitions}
        self._unwritten.append(_Changes(list(transitions), healths, serials))
        return True

    def _write_changes(self, rounds: int | None = WRITE_ROUNDS) -> None:
        """Store queued changes in order, outside ``_lock``, unless another thread is storing them already.

        At most ``rounds`` transactions (None: until the queue is empty); what is left waits for the next
        caller or the sweep. A StorageError puts the batch back at the head of the queue and propagates.
        """
        with self._lock:
            if self._writing:
                return  # the writer in progress takes our batch too, in order
            self._writing = True
        try:
            done = 0
            while rounds is None or done < rounds:
                with self._lock:
                    if not self._unwritten:
                        return
                    batch = [self._unwritten.popleft() for _ in range(min(WRITE_BATCH, len(self._unwritten)))]
                merged = _merge(batch)
                try:
                    self.router.handle(merged.transitions, merged.serials, healths=list(merged.healths.values()))
                except StorageError:
                    with self._lock:
                        self._unwritten.extendleft(reversed(batch))
                    raise
                except Exception:
                    # Not the database's fault: retrying the same rows would fail again. Logged with its
                    # traceback; the devices' next changes are stored as usual.
                    log.exception("could not record device health changes (bug)",
                                  devices=sorted(merged.healths) or None)
                done += 1
        finally:
            with self._lock:
                self._writing = False

    # -- the gateway's own health --------------------------------------------------------------------
    def _gateway_changed(self, change: Callable[[], object]) -> None:
        """Apply a GatewayHealth change and log each problem start/end once, when it happens."""
        before = len(self.gateway.pending)
        change()
        for ev in self.gateway.pending[before:]:
            p = ev.problem
            if ev.event == "start":
                (log.error if p.severity == "critical" else log.warning)(
                    "gateway problem", problem=p.name, severity=p.severity, detail=p.detail)
            else:
                log.info("gateway problem resolved", problem=p.name,
                         duration=duration_text((ev.at - p.since).total_seconds()))

    def _check_gateway(self, now: datetime) -> None:
        """Sweep part: free space under the database, and whether a failing database works again (the I/O runs
        without the monitor's lock; only the state change takes it)."""
        min_free = self.config.health.disk_free_min_mb * 1024 * 1024
        try:
            usage = self.repo.database_disk_usage()
        except OSError as exc:
            usage = None
            log.debug("cannot measure the database disk", error=str(exc))
        with self._lock:
            self.gateway.disk_free_bytes = usage[0] if usage else None
            if usage is not None and min_free > 0:
                free, total = usage
                if free < min_free:
                    self._gateway_changed(lambda: self.gateway.open(
                        "disk_nearly_full", now, f"{free // (1024 * 1024)} MB free of {total // (1024 * 1024)} "
                        f"MB (health.disk_free_min_mb = {self.config.health.disk_free_min_mb})",
                        free_bytes=free, total_bytes=total))
                elif free >= min_free * 1.1:  # a margin, so a disk hovering at the threshold does not flap
                    self._gateway_changed(lambda: self.gateway.close("disk_nearly_full", now))
            failing = any(self.gateway.is_open(n) for n in DATABASE_PROBLEMS)
        if not failing:
            return
        try:
            self.repo.probe_write()
        except StorageError as exc:
            error = storage_error_text(exc)
            with self._lock:
                self._gateway_changed(lambda: self.gateway.storage_failed(error, now))
        else:
            # A write lock and a read prove "locked"/"unreachable" over; "full" ends with a stored poll.
            with self._lock:
                self._gateway_changed(lambda: self.gateway.storage_ok(now, full_too=False))

    def _send_gateway_alerts(self) -> None:
        """Turn gateway problem starts/ends into gateway-wide alert rows (delivered by the router); when the
        database cannot take the row (it is the problem), send the alert to the channels directly, once."""
        with self._lock:
            events, self.gateway.pending = self.gateway.pending, []
        for ev in events:
            doc = self._gateway_alert(ev)
            try:
                self.repo.add_gateway_alert(**doc)
            except StorageError:
                self._send_direct(doc)

    def _send_direct(self, alert: dict[str, object]) -> None:
        # The same document shape as gateway.store.health.insert_alert's, so webhooks see one format.
        site = self.config.site
        checks = [str(c) for c in alert["checks"]]  # type: ignore[attr-defined]
        message = str(alert["message"]) + ("\nWhat to check:\n" + "\n".join(f"- {c}" for c in checks)
                                           if checks else "")
        at = alert["at"]
        doc = {"office": {"code": site.office_code, "name": site.office_name}, "device": None,
               "problem": alert["problem"], "event": alert["event"], "severity": alert["severity"],
               "at": at.isoformat() if isinstance(at, datetime) else str(at), "detail": alert["message"],
               "seen": alert["details"], "check": checks, "reason": alert["problem"], "title": alert["title"],
               "message": message}
        self.router.send_direct(doc)

    def _gateway_alert(self, ev: GatewayEvent) -> dict[str, object]:
        p, site = ev.problem, self.config.site
        problem_text = p.name.replace("_", " ")
        if ev.event == "end":
            title = f"[RESOLVED] gateway {problem_text} - {site.office_name or site.office_code}"
            message = f"gateway {problem_text} resolved after {duration_text((ev.at - p.since).total_seconds())}"
        else:
            title = f"[{p.severity.upper()}] gateway {problem_text} - {site.office_name or site.office_code}"
            message = f"gateway {problem_text}: {p.detail}"
        return {"problem": p.name, "event": ev.event, "severity": p.severity, "title": title, "message": message,
                "details": {**p.seen, "reason": p.name}, "at": ev.at,
                "checks": list(GATEWAY_CHECKS.get(p.name, ())) if ev.event == "start" else [],
                "office_name": site.office_name}

    def _note_in_flight(self, now: datetime) -> None:
        # The poll scheduler knows which polls are running (monotonic start): a poll that never
        # reports is caught here without any hook in the poller.
        if self.ctx.polls is None:
            return
        mono = time.monotonic()
        for device_id, since in self.ctx.polls.running_since().items():
            started = now - timedelta(seconds=mono - since)
            h = self.tracker.health(device_id, now)
            if h.poll_started_at is None or abs((h.poll_started_at - started).total_seconds()) > 1:
                self.tracker.poll_started(device_id, started)

    def _apply_drop_acknowledgements(self, now: datetime) -> list[Transition]:
        """Close user_drop problems an operator acknowledged (`fpgw enrol ack-drop`, a kv row written by that
        command in another process). The database is read only while such a problem is open, and outside the lock."""
        with self._lock:
            waiting = self.tracker.devices_with_problem("user_drop")
        if not waiting:
            return []
        try:
            acks = EnrolRepo(self.repo.engine).drop_acknowledgements()
        except Exception:  # the database's own problem is raised by the writes; the next sweep reads again
            return []
        out: list[Transition] = []
        with self._lock:
            for device_id in waiting:
                if device_id in acks:
                    out += self.tracker.acknowledge_user_drop(device_id, acks[device_id], now)
            self._queue_changes(out)
        return out

    def _refresh_mutes(self, now: datetime, *, announce: bool) -> None:
        try:
            rows = self.repo.mutes()
        except Exception:
            log.exception("could not read device mutes")
            return
        watched = {d.id for d in self.config.devices if d.enabled}
        active = {d: until for d, (until, _reason) in rows.items() if until > now}
        # A mute ends by `fpgw devices unmute` (row cleared) or by running out (row still set, also
        # when it ran out while the daemon was down); an expired row is cleared once handled.
        ended = {d for d in self._muted if d not in active} | {d for d in rows if d not in active}
        started = [d for d in active if d not in self._muted]
        self._muted = active
        self.router.set_mutes(active)
        if announce:
            for d in started:
                log.info("device alerts muted", device=d, until=active[d].isoformat(), reason=rows[d][1])
        for d in sorted(ended):
            if d in rows:
                try:
                    self.repo.set_mute(d, None)
                except KeyError:
                    continue
            if d not in watched:
                continue
            log.info("device alerts unmuted", device=d)
            h = self.tracker.snapshot().get(d)
            if h is not None and any(not p.notice for p in h.problems.values()):
                self.router.resend_open(d, h, self._serials.get(d), now)


def _copy_health(h: DeviceHealth) -> DeviceHealth:
    """A copy the tracker's later changes do not reach (it replaces fields and Problem.seen, never mutates
    them in place), made under the lock: much cheaper than copy.deepcopy, which every reporting thread waited on."""
    return replace(h, problems={name: replace(p) for name, p in h.problems.items()})


def _merge(batch: list[_Changes]) -> _Changes:
    """Several queued changes as one (oldest first): every transition in order, the newest copy of each row."""
    merged = _Changes([], {}, {})
    for c in batch:
        merged.transitions.extend(c.transitions)
        merged.healths.update(c.healths)
        merged.serials.update(c.serials)
    return merged


def services(ctx: AppContext) -> list[Service]:
    """The health monitor (with its alert router) for the daemon."""
    monitor = HealthMonitor(ctx)
    ctx.health = monitor
    return [monitor]

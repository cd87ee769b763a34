"""Device health model: a pure state machine fed by poll outcomes and a periodic sweep (no I/O here).

    poller --PollOutcome--> HealthTracker.record()   scheduler --sweep (30 s)--> HealthTracker.sweep(now)
                   \\__ Transition[] __> gateway.health.monitor (log, persist) --> gateway.health.alerts

Main state per device: unknown -> online <-> offline, with hysteresis (offline only after
``offline_after_failures`` failed polls AND ``offline_after_s`` without a good poll; online again on the
first poll that reaches the device). Besides the state, named problems can be open at the same time
(see ``PROBLEMS``); each start, end, reminder and escalation is one ``Transition``. Time always comes
from the outcome or the caller (``sweep(now)``), so tests drive it explicitly.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from gateway.config import Config, WorkingHoursConfig
from gateway.humanize import duration_text
from gateway.models import SEVERITIES, SEVERITY, DeviceHealth, PollOutcome, Problem, users_dropped_sharply

#: Failure kinds that mean "could not reach the device" (count toward offline). "timeout" (the whole poll
#: ran past polling.poll_deadline_s) is poll_hang instead; "abandoned" (our own shutdown) counts for nothing.
OFFLINE_KINDS = frozenset({"unreachable"})
#: Failure kinds where the device answered but the conversation broke.
PROTOCOL_KINDS = frozenset({"protocol_error", "bug"})
#: Outcomes where the device answered, even though the poll did not succeed.
ANSWERED_KINDS = frozenset({"auth_rejected", "identity_mismatch", "busy"})

#: A device clock before this year has lost its RTC (ZK terminals reset to 2000-01-01).
RTC_RESET_BEFORE_YEAR = 2005
#: Punch quality flags that point at a broken device clock.
CLOCK_FLAGS = ("rtc_reset", "impossible_date", "future")

#: How long one-off notices stay listed (replaced, log_shrank, firmware_changed, clock_corrected).
NOTICE_WINDOW_S = 86400.0


@dataclass(frozen=True)
class Transition:
    """One change worth telling someone about."""

    device_id: str
    problem: str
    #: start, end, reminder, escalate (severity rose within an open problem) or notice (one-off event).
    event: str
    severity: str
    at: datetime
    #: When the problem started (== at for start/notice).
    since: datetime
    detail: str
    seen: dict[str, Any] = field(default_factory=dict)

    @property
    def duration_s(self) -> float:
        """How long the problem has lasted at this transition."""
        return (self.at - self.since).total_seconds()


def working_seconds(start: datetime, end: datetime, hours: WorkingHoursConfig, tz: ZoneInfo) -> float:
    """Seconds of configured working time (local to ``tz``) between two instants."""
    if end <= start:
        return 0.0
    total = 0.0
    day = start.astimezone(tz).date()
    last = end.astimezone(tz).date()
    # A silent device is flagged after hours of working time; no need to count years of history.
    if (last - day).days > 400:
        day = last - timedelta(days=400)
    while day <= last:
        if day.isoweekday() in hours.days:
            w0 = datetime.combine(day, hours.start, tzinfo=tz)
            w1 = datetime.combine(day, hours.end, tzinfo=tz)
            lo, hi = max(w0, start), min(w1, end)
            if hi > lo:
                total += (hi - lo).total_seconds()
        day += timedelta(days=1)
    return total


class HealthTracker:
    """Outcomes and sweeps in, Transitions out. Not thread-safe: the owner serializes calls."""

    def __init__(self, config: Config, *, notice_window_s: float = NOTICE_WINDOW_S) -> None:
        self.config = config
        self.rules = config.health
        self.notice_window_s = notice_window_s
        self._devices: dict[str, DeviceHealth] = {}
        self._dirty: set[str] = set()
        # A push terminal is "polled" by its own calls: its offline window is push.offline_after_s.
        self._interval = {d.id: config.push.offline_after_s / 3 if d.pushes else d.interval_s for d in config.devices}
        self._tz = {d.id: ZoneInfo(d.timezone) for d in config.devices}
        #: The last trustworthy user count of each device (seeded at start from the devices table), the
        #: reference of the user_drop problem.
        self._users_seen: dict[str, int] = {}

    # -- state access -------------------------------------------------------------------------------
    def load(self, health: DeviceHealth) -> None:
        """Restore a device's persisted state (at start, before any outcome)."""
        self._devices[health.device_id] = health

    def health(self, device_id: str, now: datetime | None = None) -> DeviceHealth:
        """The live record of one device (created as unknown on first use)."""
        h = self._devices.get(device_id)
        if h is None:
            h = DeviceHealth(device_id=device_id, state_since=now or datetime.now(UTC))
            self._devices[device_id] = h
            self._dirty.add(device_id)
        return h

    def snapshot(self) -> dict[str, DeviceHealth]:
        """A deep copy of every device's health (safe to read from another thread)."""
        return copy.deepcopy(self._devices)

    def take_dirty(self) -> set[str]:
        """Device ids whose persisted fields changed since the last call."""
        dirty, self._dirty = self._dirty, set()
        return dirty

    def consecutive_failures(self, device_id: str) -> int:
        """Failed polls in a row since the last good one (0 for an unknown device)."""
        h = self._devices.get(device_id)
        return h.consecutive_failures if h is not None else 0

    def offline_window_s(self, device_id: str) -> float:
        """How long without a good poll before a failing device counts as offline."""
        if self.rules.offline_after_s > 0:
            return self.rules.offline_after_s
        return 3 * self._interval.get(device_id, self.config.polling.interval_s)

    def devices_with_problem(self, name: str) -> list[str]:
        """Device ids with this problem open."""
        return [device_id for device_id, h in self._devices.items() if name in h.problems]

    def seed_user_counts(self, counts: dict[str, int]) -> None:
        """The user counts last stored per device (at start): a reset while the gateway was down is noticed."""
        for device_id, users in counts.items():
            self._users_seen.setdefault(device_id, users)

    def acknowledge_user_drop(self, device_id: str, acknowledged_at: datetime, now: datetime) -> list[Transition]:
        """An operator accepted the device's user-count drop (``fpgw enrol ack-drop``): close the open problem when
        it started before the acknowledgement; the current count becomes the reference."""
        h = self._devices.get(device_id)
        out: list[Transition] = []
        p = h.problems.get("user_drop") if h is not None else None
        if h is None or p is None or p.since > acknowledged_at:
            return out
        now_users = p.seen.get("now")
        if isinstance(now_users, int):
            self._users_seen[device_id] = now_users
        self._close(h, out, "user_drop", now)
        return out

    # -- inputs ---------------------------------------------------------------------------------------
    def poll_started(self, device_id: str, at: datetime) -> None:
        """A poll of this device began (lets the sweep catch a poll that never reports)."""
        self.health(device_id, at).poll_started_at = at

    def record(self, outcome: PollOutcome) -> list[Transition]:
        """Feed one poll outcome; returns the transitions it caused."""
        now = outcome.finished_at
        h = self.health(outcome.device_id, now)
        out: list[Transition] = []
        h.poll_started_at = None
        h.last_poll_duration_s = outcome.duration_s
        kind = None if outcome.ok else (outcome.error_kind or "bug")

        if kind == "abandoned":
            # Stopped by our own shutdown: says nothing about the device.
            return out
        if kind == "timeout":
            deadline = duration_text(self.config.polling.poll_deadline_s)
            self._open(h, out, "poll_hang", now, f"a poll ran past the {deadline} "
                       "deadline (polling.poll_deadline_s) and was stopped",
                       {"deadline_s": self.config.polling.poll_deadline_s, "error": outcome.error})
        else:
            self._close(h, out, "poll_hang", now)

        if outcome.terminal_disabled:
            self._open(h, out, "disabled", now,
                       "the terminal was left disabled (keypad locked, \"Working...\") by an earlier session and "
                       "could not be re-enabled", {"error": (outcome.error or "")[:500] or None})
        elif outcome.ok:
            self._close(h, out, "disabled", now)

        answered = outcome.ok or kind in ANSWERED_KINDS or outcome.info is not None
        if answered:
            h.last_seen_at = now
            if h.last_new_punch_at is None:
                h.last_new_punch_at = now  # start the silent-device clock when we first see it
                self._dirty.add(h.device_id)
            if h.state != "online":
                self._set_state(h, "online", now)
                self._close(h, out, "offline", now)
        if outcome.ok:
            if h.consecutive_failures or h.last_error_kind:
                self._dirty.add(h.device_id)
            h.consecutive_failures = 0
            h.failing_since = None
            h.last_error_kind = None
            h.last_error = None
            h.last_ok_at = now
            for name in ("auth_rejected", "identity_mismatch", "protocol_error"):
                self._close(h, out, name, now)
            self._check_ok(h, outcome, out)
        else:
            assert kind is not None
            h.consecutive_failures += 1
            h.failing_since = h.failing_since or outcome.started_at
            h.last_failure_at = now
            h.last_error_kind = kind
            h.last_error = (outcome.error or "")[:500] or None
            self._dirty.add(h.device_id)
            if kind == "auth_rejected":
                self._open(h, out, "auth_rejected", now, "the device refused the comm key",
                           {"error": h.last_error})
            elif kind == "identity_mismatch":
                self._open(h, out, "identity_mismatch", now,
                           "a device with another serial number answers at this address",
                           {"error": h.last_error, "serial": outcome.serial})
            elif kind in PROTOCOL_KINDS and h.consecutive_failures >= self.rules.offline_after_failures:
                self._open(h, out, "protocol_error", now,
                           f"{h.consecutive_failures} polls in a row broke off with protocol errors",
                           {"error": h.last_error, "failures": h.consecutive_failures})
            self._check_offline(h, now, out)
        self._check_silent(h, now, out)
        return out

    def sweep(self, now: datetime) -> list[Transition]:
        """Time-based rules: offline window, hung polls, silent devices, reminders, notice expiry."""
        out: list[Transition] = []
        deadline = self.config.polling.poll_deadline_s
        reminder_s = self.config.alerts.reminder_s
        for h in self._devices.values():
            self._check_offline(h, now, out)
            if h.poll_started_at is not None and (now - h.poll_started_at).total_seconds() > deadline:
                self._open(h, out, "poll_hang", now,
                           f"a poll started {duration_text((now - h.poll_started_at).total_seconds())} ago and has not "
                           "finished", {"started_at": h.poll_started_at.isoformat(), "deadline_s": deadline})
            self._check_silent(h, now, out)
            for p in list(h.problems.values()):
                if p.notice:
                    if (now - p.since).total_seconds() >= self.notice_window_s:
                        del h.problems[p.name]
                        self._dirty.add(h.device_id)
                elif reminder_s > 0 and p.last_notified_at is not None \
                        and (now - p.last_notified_at).total_seconds() >= reminder_s:
                    p.last_notified_at = now
                    self._dirty.add(h.device_id)
                    out.append(Transition(h.device_id, p.name, "reminder", p.severity, now, p.since,
                                          p.detail, dict(p.seen)))
        return out

    # -- rules --------------------------------------------------------------------------------------------
    def _check_ok(self, h: DeviceHealth, o: PollOutcome, out: list[Transition]) -> None:
        now = o.finished_at
        info, counts = o.info, o.counts
        rtc_reset = info is not None and info.device_time is not None \
            and info.device_time.year < RTC_RESET_BEFORE_YEAR
        flagged = {f: o.flag_counts.get(f, 0) for f in CLOCK_FLAGS if o.flag_counts.get(f, 0)}
        if rtc_reset or flagged:
            parts = []
            if rtc_reset and info is not None and info.device_time is not None:
                parts.append(f"device clock reads {info.device_time:%Y-%m-%d %H:%M}")
            if flagged:
                parts.append("new punches with broken times: " + ", ".join(f"{v} {k}" for k, v in flagged.items()))
            seen: dict[str, Any] = {"flag_counts": flagged}
            if info is not None and info.device_time is not None:
                seen["device_time"] = info.device_time.isoformat(sep=" ")
            self._open(h, out, "clock_reset", now, "; ".join(parts), seen)
        elif info is not None and info.device_time is not None:
            self._close(h, out, "clock_reset", now)

        if o.clock_skew_s is not None:  # None: not measured in this poll (polling.clock_check_s); keep the last
            h.clock_skew_s = o.clock_skew_s
        if o.clock_corrected:
            skew = o.clock_skew_s or 0.0
            direction = "ahead" if skew > 0 else "behind"
            self._notice(h, out, "clock_corrected", now,
                         f"device clock was {duration_text(skew)} {direction}; the gateway set it",
                         {"clock_skew_s": o.clock_skew_s})
            self._close(h, out, "clock_skew", now)
        elif o.clock_skew_s is not None and not rtc_reset:
            skew = o.clock_skew_s
            if abs(skew) > self.rules.clock_skew_warn_s:
                self._open(h, out, "clock_skew", now,
                           f"device clock is {duration_text(skew)} {'ahead of' if skew > 0 else 'behind'} the server",
                           {"clock_skew_s": round(skew, 1), "limit_s": self.rules.clock_skew_warn_s})
            else:
                self._close(h, out, "clock_skew", now)

        if counts is not None:
            ratios = {}
            if counts.records_cap > 0:
                ratios["records"] = counts.records / counts.records_cap
            if counts.users_cap > 0:
                ratios["users"] = counts.users / counts.users_cap
            worst = max(ratios.values(), default=0.0)
            level = "critical" if worst >= self.rules.capacity_critical_ratio else \
                "warning" if worst >= self.rules.capacity_warn_ratio else None
            if level is None:
                self._close(h, out, "storage", now)
            else:
                which = max(ratios, key=lambda k: ratios[k])
                used, cap = (counts.records, counts.records_cap) if which == "records" else \
                    (counts.users, counts.users_cap)
                self._open(h, out, "storage", now, f"{which} storage {worst:.0%} full ({used} of {cap})",
                           {"records": counts.records, "records_cap": counts.records_cap, "users": counts.users,
                            "users_cap": counts.users_cap, "ratio": round(worst, 3)}, severity=level)
            if counts.unreliable:
                self._open(h, out, "counts_unreliable", now,
                           f"the terminal's record counter cannot be trusted ({counts.unreliable}); every poll "
                           "downloads the whole log instead", {"reason": counts.unreliable})
            else:
                self._close(h, out, "counts_unreliable", now)
            if o.previous_record_count is not None and counts.records < o.previous_record_count \
                    and not o.previous_serial \
                    and not o.cleared_records:  # replaced: unrelated count; cleared by fpgw: verified stored first
                self._notice(h, out, "log_shrank", now,
                             f"the device log shrank from {o.previous_record_count} to {counts.records} records "
                             "(cleared at the device?)",
                             {"before": o.previous_record_count, "now": counts.records})
        self._check_users(h, o, out)
        if o.previous_serial and o.serial and o.previous_serial != o.serial:
            self._notice(h, out, "replaced", now,
                         f"serial changed from {o.previous_serial} to {o.serial} at this address",
                         {"previous_serial": o.previous_serial, "serial": o.serial})
        if info is not None and o.previous_firmware and info.firmware and info.firmware != o.previous_firmware:
            self._notice(h, out, "firmware_changed", now,
                         f"firmware changed from {o.previous_firmware!r} to {info.firmware!r}",
                         {"previous_firmware": o.previous_firmware, "firmware": info.firmware})
        if o.new_punches > 0:
            # Not persisted from here on every poll: the store keeps devices.last_new_punch_at and the
            # monitor takes the later of both at start.
            h.last_new_punch_at = now
            self._close(h, out, "silent", now)

    def _check_users(self, h: DeviceHealth, o: PollOutcome, out: list[Transition]) -> None:
        """user_drop: the user count fell sharply between two good polls (factory reset, replaced by a blank unit,
        mass delete at the keypad). Open until the count is back near the count before, or acknowledged."""
        counts = o.counts
        if counts is None or counts.unreliable or counts.users < 0:
            return
        now, users, ratio = o.finished_at, counts.users, self.config.enrol.drop_warn_ratio
        p = h.problems.get("user_drop")
        if p is not None:
            before = p.seen.get("before")
            if not isinstance(before, int) or not users_dropped_sharply(before, users, ratio):
                self._close(h, out, "user_drop", now)
            elif p.seen.get("now") != users:
                p.detail, p.seen = _user_drop_detail(before, users), {"before": before, "now": users}
        else:
            previous = self._users_seen.get(h.device_id)
            if previous is not None and users_dropped_sharply(previous, users, ratio):
                self._open(h, out, "user_drop", now, _user_drop_detail(previous, users),
                           {"before": previous, "now": users})
        self._users_seen[h.device_id] = users

    def _check_offline(self, h: DeviceHealth, now: datetime, out: list[Transition]) -> None:
        if h.state == "offline" or h.last_error_kind not in OFFLINE_KINDS:
            return
        if h.consecutive_failures < self.rules.offline_after_failures:
            return
        ref = h.last_ok_at or h.failing_since
        window = self.offline_window_s(h.device_id)
        if ref is None or (now - ref).total_seconds() < window:
            return
        self._set_state(h, "offline", now)
        since = h.last_ok_at.isoformat() if h.last_ok_at else None
        self._open(h, out, "offline", now,
                   f"no answer for {h.consecutive_failures} poll{'s' if h.consecutive_failures != 1 else ''} in a row"
                   + (f", last good poll {duration_text((now - h.last_ok_at).total_seconds())} ago"
                      if h.last_ok_at else "")
                   + f" (last error: {h.last_error_kind})",
                   {"failures": h.consecutive_failures, "last_ok_at": since, "last_error_kind": h.last_error_kind,
                    "last_error": h.last_error})

    def _check_silent(self, h: DeviceHealth, now: datetime, out: list[Transition]) -> None:
        if h.state != "online" or h.last_new_punch_at is None or "silent" in h.problems:
            return
        tz = self._tz.get(h.device_id, ZoneInfo(self.config.site.timezone))
        worked = working_seconds(h.last_new_punch_at, now, self.rules.working_hours, tz)
        if worked >= self.rules.silent_after_s:
            self._open(h, out, "silent", now,
                       f"reachable but no new punch for {duration_text(worked)} of working time "
                       f"(since {h.last_new_punch_at.astimezone(tz):%Y-%m-%d %H:%M})",
                       {"last_new_punch_at": h.last_new_punch_at.isoformat(), "working_s": round(worked)})

    # -- helpers ------------------------------------------------------------------------------------------
    def _set_state(self, h: DeviceHealth, state: str, now: datetime) -> None:
        h.state = state
        h.state_since = now
        self._dirty.add(h.device_id)

    def _open(self, h: DeviceHealth, out: list[Transition], name: str, now: datetime, detail: str,
              seen: dict[str, Any], severity: str | None = None) -> None:
        severity = severity or SEVERITY[name]
        p = h.problems.get(name)
        if p is None:
            p = Problem(name, severity, now, detail, seen, last_notified_at=now)
            h.problems[name] = p
            self._dirty.add(h.device_id)
            out.append(Transition(h.device_id, name, "start", severity, now, now, detail, dict(seen)))
            return
        # Still open: refresh what was seen (status page, in memory) without alerting again, unless it
        # got worse. Only a severity change is persisted at once, so a drifting clock does not cost a
        # database write per poll; the stored detail is the one from the start.
        p.detail, p.seen = detail, seen
        if SEVERITIES.index(severity) > SEVERITIES.index(p.severity):
            p.severity = severity
            p.last_notified_at = now
            out.append(Transition(h.device_id, name, "escalate", severity, now, p.since, detail, dict(seen)))
            self._dirty.add(h.device_id)
        elif severity != p.severity:
            p.severity = severity  # improving within the problem: no alert, the end alert comes later
            self._dirty.add(h.device_id)

    def _notice(self, h: DeviceHealth, out: list[Transition], name: str, now: datetime, detail: str,
                seen: dict[str, Any]) -> None:
        severity = SEVERITY[name]
        h.problems[name] = Problem(name, severity, now, detail, seen, last_notified_at=now)
        self._dirty.add(h.device_id)
        out.append(Transition(h.device_id, name, "notice", severity, now, now, detail, dict(seen)))

    def _close(self, h: DeviceHealth, out: list[Transition], name: str, now: datetime) -> None:
        p = h.problems.pop(name, None)
        if p is None:
            return
        self._dirty.add(h.device_id)
        out.append(Transition(h.device_id, name, "end", p.severity, now, p.since, p.detail, dict(p.seen)))


def _user_drop_detail(before: int, now: int) -> str:
    return (f"the terminal holds {now} users, {before} before: reset to factory settings, replaced by a blank unit, "
            "or users deleted at the keypad?")

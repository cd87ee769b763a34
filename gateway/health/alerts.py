"""Alert routing: health Transitions -> alert documents -> log + alerts table -> channels (apprise, webhooks).

    gateway.health.monitor --Transition[]--> AlertRouter.handle()  (persist first, log once, queue)
        --> ONE sender thread --> apprise URLs (Telegram, e-mail, WhatsApp gateways via form://) + JSON webhooks
Delivery is retried with backoff up to ``alerts.max_attempts`` and never runs in a polling thread;
undelivered alerts survive a restart (pending rows are re-queued at start). Muted devices' alerts are
recorded with muted=true and not sent. Channel URLs are secrets: logs name them only as ``apprise#N``.
"""

from __future__ import annotations

import heapq
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import structlog

from gateway.config import Config, DeviceConfig
from gateway.health.tracker import Transition
from gateway.humanize import duration_text
from gateway.models import DeviceHealth
from gateway.store.health import AlertRow, HealthRepo

log = structlog.get_logger(__name__)

#: What a technician should check, per problem (shown in every alert and on the status page).
CHECKS: dict[str, tuple[str, ...]] = {
    "offline": (
        "Is the terminal powered on (screen lit)? Check the adaptor and the power socket.",
        "Network cable plugged in at both ends, link LED on the switch port lit?",
        "Did the IP address change (DHCP)? Compare the device menu COMM > Ethernet with the gateway config.",
        "From the gateway server: ping the device and check TCP/UDP port 4370 is open (no firewall in between).",
    ),
    "disabled": (
        "The terminal shows \"Working...\" and takes no punches: a gateway session (or another program) disabled "
        "it and could not enable it again. The gateway retries at every poll.",
        "Restart the terminal (power off and on): it always starts enabled. Punches made while it was locked "
        "were refused by the terminal, not lost by the gateway; ask staff to punch again.",
        "If it keeps happening, check for a flaky network link to the terminal (fpgw devices, the status page).",
    ),
    "auth_rejected": (
        "The comm key (COMM > Comm Key / Connection password) on the device differs from the gateway config.",
        "Set the same number on both sides (the config reads it from comm_key_env / comm_key_file), "
        "then wait for the next poll.",
    ),
    "identity_mismatch": (
        "Another terminal answers at this address: was the device swapped or did DHCP give its IP to another one?",
        "Compare the serial number in the device menu (System Info) with the serial in the gateway config.",
        "Fix the address or the expected serial in the config; punches from the unexpected device are not read.",
    ),
    "protocol_error": (
        "The device answers but transfers break off: check for a flaky cable or switch port, "
        "or a network dropping UDP packets.",
        "Restart the terminal; if it persists, note the model and firmware (fpgw devices) and report it.",
    ),
    "poll_hang": (
        "A poll does not finish: the device may be stuck mid-transfer. Restart the terminal.",
        "If it keeps happening, lower the device's timeout_s or switch its transport (tcp/udp) in the config.",
    ),
    "clock_reset": (
        "The device clock lost its time (year 2000 or impossible dates): the RTC backup battery is probably dead.",
        "Set the date/time in the device menu (or enable health.clock_correct) and plan a battery replacement.",
        "Punches with broken times are stored and flagged; check them in the report before TPP is computed.",
    ),
    "user_drop": (
        "The terminal lost many of its users at once: was it reset to factory settings, replaced by a blank unit, "
        "or were users deleted at the keypad? Employees who are gone from it cannot punch.",
        "Check at the terminal (menu User Mgt) how many users it holds. `fpgw enrol status` shows the last "
        "backup; restore it with `fpgw enrol restore DEVICE --from DEVICE --dry-run`, then without --dry-run "
        "(docs/enrolment.md). The problem ends by itself when the count is back.",
        "If the users were deleted on purpose, accept the new count with `fpgw enrol ack-drop DEVICE`.",
    ),
    "clock_skew": (
        "The device clock drifts from the server: set it in the device menu (Date/Time) "
        "or enable health.clock_correct.",
        "Recurring drift points to a weak RTC battery. Make sure the gateway server itself uses NTP.",
    ),
    "storage": (
        "The attendance log or user storage is nearly full; a full terminal stops recording punches.",
        "First confirm in the gateway (fpgw devices / status page) that every record was downloaded and stored.",
        "Then clear it with `fpgw devices clear DEVICE` (it verifies every record is stored before it clears), "
        "or set polling.clear_when_full_ratio; never through the vendor menu before the gateway shows all "
        "records stored.",
    ),
    "counts_unreliable": (
        "The terminal answers the record-count query with nothing usable (some face and newer firmware do): "
        "nothing is lost, the gateway downloads the whole log at every poll instead, which is slower.",
        "If the terminal was working before, check its firmware version (fpgw devices) against a recent update; "
        "a restart of the terminal sometimes brings the counter back.",
    ),
    "silent": (
        "The device answers but nobody punched on it during working hours: is it used, mounted, switched to "
        "the right mode?",
        "Try a punch yourself: a broken fingerprint sensor or a frozen screen also looks like this.",
        "If the office stopped using this terminal, disable it in the config.",
    ),
    "replaced": (
        "A different terminal (new serial number) now answers at this address.",
        "If the device was replaced on purpose, update the expected serial in the config; "
        "make sure the old unit's log was fully downloaded.",
    ),
    "log_shrank": (
        "The device log has fewer records than before: it was cleared at the device or the terminal was reset.",
        "Punches already stored by the gateway are safe; ask who cleared it. Records made between the last poll "
        "and the clearing may be lost.",
    ),
    "firmware_changed": (
        "The firmware version changed (update or replacement board). Watch the next polls for protocol errors.",
    ),
    "clock_corrected": (
        "The gateway set the device clock (health.clock_correct). Nothing to do unless it repeats often "
        "(then check the RTC battery).",
    ),
}

_EVENT_WORD = {"start": "PROBLEM", "end": "RESOLVED", "reminder": "STILL OPEN", "escalate": "WORSE",
               "notice": "NOTICE"}
_APPRISE_TYPE = {"info": "info", "warning": "warning", "critical": "failure"}


@dataclass(frozen=True)
class Channel:
    """One delivery target; ``label`` is what logs may show (never the URL: it holds tokens)."""

    label: str
    send: Callable[[dict[str, Any]], None]


def _apprise_channel(index: int, url: str) -> Channel:
    import apprise

    scheme = url.split("://", 1)[0] if "://" in url else "?"

    def send(doc: dict[str, Any]) -> None:
        ap = apprise.Apprise()
        if not ap.add(url):
            raise RuntimeError(f"apprise cannot use URL #{index} (scheme {scheme}://); check alerts.urls")
        ok = ap.notify(body=doc["message"], title=doc["title"],
                       notify_type=apprise.NotifyType(_APPRISE_TYPE.get(doc["severity"], "info"))
                       if doc["event"] != "end" else apprise.NotifyType.SUCCESS)
        if not ok:
            raise RuntimeError("not accepted (see the apprise log line above)")

    return Channel(f"apprise#{index}({scheme})", send)


def _webhook_channel(index: int, url: str, timeout_s: float = 10.0) -> Channel:
    def send(doc: dict[str, Any]) -> None:
        try:
            r = httpx.post(url, json=doc, timeout=timeout_s, headers={"User-Agent": "fpgw-alerts"})
        except httpx.HTTPError as exc:
            raise RuntimeError(type(exc).__name__) from None
        if r.status_code >= 300:
            raise RuntimeError(f"HTTP {r.status_code}")

    return Channel(f"webhook#{index}", send)


def channels_from_config(config: Config) -> list[Channel]:
    """The delivery channels configured in [alerts]."""
    return ([_apprise_channel(i, u) for i, u in enumerate(config.alerts.urls, 1)]
            + [_webhook_channel(i, u) for i, u in enumerate(config.alerts.webhooks, 1)])


def row_document(row: AlertRow) -> dict[str, Any]:
    """The document to deliver for an alerts-table row (rows from other writers get a minimal one)."""
    if "title" in row.details and "message" in row.details:
        return row.details
    return {"office": {"code": row.office_code}, "device": {"id": row.device_id, "serial": row.device_serial},
            "problem": row.problem, "event": row.event, "severity": row.severity, "at": row.created_at.isoformat(),
            "title": row.title, "message": row.message, "seen": row.details, "check": list(CHECKS.get(row.problem, ()))}


class AlertRouter:
    """Turns transitions into recorded alerts and delivers them from one background thread."""

    def __init__(self, config: Config, repo: HealthRepo, *, channels: list[Channel] | None = None,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC), retry_base_s: float = 5.0,
                 retry_max_s: float = 900.0) -> None:
        self.config = config
        self.repo = repo
        self.clock = clock
        self.channels = channels if channels is not None else channels_from_config(config)
        self.retry_base_s = retry_base_s
        self.retry_max_s = retry_max_s
        self._devices = {d.id: d for d in config.devices}
        self._mutes: dict[str, datetime] = {}
        self._cond = threading.Condition()
        self._queue: list[tuple[float, int, int]] = []   # (due monotonic, alert id, attempts so far)
        self._done_channels: dict[int, set[str]] = {}
        #: Alert ids in the queue or being delivered (so a table scan never queues one twice).
        self._queued: set[int] = set()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._busy = False
        #: Counters for metrics: delivered / failed attempts / given up.
        self.sent = 0
        self.failed = 0
        self.gave_up = 0

    # -- mutes ----------------------------------------------------------------------------------------
    def set_mutes(self, mutes: dict[str, datetime]) -> None:
        """Replace the known mutes (device_id -> muted until)."""
        self._mutes = dict(mutes)

    def muted(self, device_id: str | None, now: datetime | None = None) -> bool:
        """True while the device's alerts are muted."""
        until = self._mutes.get(device_id or "")
        return until is not None and until > (now or self.clock())

    # -- documents ------------------------------------------------------------------------------------
    def document(self, t: Transition, serial: str | None = None, note: str | None = None) -> dict[str, Any]:
        """The alert document for a transition (what webhooks receive; title/message go to apprise)."""
        site = self.config.site
        dev: DeviceConfig | None = self._devices.get(t.device_id)
        name = dev.name if dev else t.device_id
        word = _EVENT_WORD.get(t.event, t.event.upper())
        problem_text = t.problem.replace("_", " ")
        if t.event == "end":
            headline = f"{problem_text} resolved after {duration_text(t.duration_s)}"
        elif t.event == "reminder":
            headline = f"{problem_text} for {duration_text(t.duration_s)}: {t.detail}"
        else:
            headline = f"{problem_text}: {t.detail}"
        title = f"[{word}] {name} ({t.device_id}) {problem_text} - {site.office_name or site.office_code}"
        checks = list(CHECKS.get(t.problem, ())) if t.event != "end" else []
        lines = [f"{word} [{t.severity}] {headline}",
                 f"Office: {site.office_name} ({site.office_code})" if site.office_name else
                 f"Office: {site.office_code}",
                 f"Device: {name} ({t.device_id})" + (f", serial {serial}" if serial else "")
                 + (f", {dev.address}:{dev.port}" if dev else "")
                 + (f", {dev.location}" if dev and dev.location else ""),
                 f"Since: {t.since.astimezone(UTC):%Y-%m-%d %H:%M} UTC"]
        if note:
            lines.append(note)
        if checks:
            lines.append("What to check:")
            lines.extend(f"- {c}" for c in checks)
        return {
            "office": {"code": site.office_code, "name": site.office_name},
            "device": {"id": t.device_id, "name": name, "serial": serial,
                       "address": dev.address if dev else None, "port": dev.port if dev else None,
                       "location": dev.location if dev else None},
            "problem": t.problem, "event": t.event, "severity": t.severity,
            "at": t.at.isoformat(), "since": t.since.isoformat(), "duration_s": round(t.duration_s, 1),
            "detail": t.detail, "seen": t.seen, "check": checks, "note": note,
            "title": title, "message": "\n".join(lines),
        }

    # -- inputs ----------------------------------------------------------------------------------------
    def handle(self, transitions: Iterable[Transition], serials: dict[str, str | None] | None = None,
               note: str | None = None, healths: Iterable[DeviceHealth] = ()) -> list[int]:
        """Record (with ``healths``, in one transaction), log and queue alerts; returns their ids. No sending here."""
        rows: list[dict[str, Any]] = []
        transitions = list(transitions)
        for t in transitions:
            serial = (serials or {}).get(t.device_id)
            doc = self.document(t, serial, note)
            muted = self.muted(t.device_id, t.at)
            rows.append({"created_at": t.at, "device_id": t.device_id, "device_serial": serial, "problem": t.problem,
                         "event": t.event, "severity": t.severity, "title": doc["title"], "message": doc["message"],
                         "details": doc, "muted": muted,
                         # No channel configured: the log line is the delivery (and a channel added
                         # later must not receive the whole history).
                         "delivered_at": None if self.channels or muted else t.at})
        # Health state and the alerts it caused commit together: a crash can neither lose an alert
        # nor make the next start alert the same problem again.
        ids = self.repo.record(healths, rows)
        for t, row, alert_id in zip(transitions, rows, ids, strict=True):
            self._log(t, row["device_serial"], row["muted"])
            if not row["muted"] and row["delivered_at"] is None:
                self._enqueue(alert_id, 0, 0.0)
        return ids

    def resend_open(self, device_id: str, health: DeviceHealth, serial: str | None, now: datetime) -> list[int]:
        """After a mute ends: tell once about every problem still open on the device."""
        ts = [Transition(device_id, p.name, "reminder", p.severity, now, p.since, p.detail, dict(p.seen))
              for p in health.problems.values() if not p.notice]
        return self.handle(ts, {device_id: serial}, note="Still open after the maintenance mute ended.")

    def send_direct(self, doc: dict[str, Any]) -> int:
        """Deliver ``doc`` to every channel now, once, without an alerts-table row (for the gateway's own
        database problems, when the database cannot take the row); returns the channels reached."""
        reached = 0
        for ch in self.channels:
            try:
                ch.send(doc)
                reached += 1
            except Exception as exc:  # one attempt: with no row there is no retry queue
                log.warning("alert not delivered", channel=ch.label, problem=doc.get("problem"), error=str(exc))
        return reached

    @staticmethod
    def _log(t: Transition, serial: str | None, muted: bool) -> None:
        fields: dict[str, Any] = {"device": t.device_id, "serial": serial, "problem": t.problem,
                                  "severity": t.severity, "detail": t.detail}
        if muted:
            fields["muted"] = True
        if t.event == "end":
            log.info("device problem resolved", duration=duration_text(t.duration_s), **fields)
        elif t.event == "reminder":
            log.warning("device problem still open", duration=duration_text(t.duration_s), **fields)
        elif t.severity == "info":
            log.info(f"device {t.event}", **fields)
        else:
            log.warning("device problem" if t.event == "start" else f"device problem {t.event}", **fields)

    # -- sender thread --------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the sender thread and queue every alert a previous run left undelivered."""
        if self._thread is not None:
            return
        self._stopping = False
        for row in self.repo.pending_alerts(self.config.alerts.max_attempts):
            self._enqueue(row.id, row.attempts, 0.0)
        self._thread = threading.Thread(target=self._run, name="fpgw-alerts", daemon=True)
        self._thread.start()

    def stop(self, deadline_s: float = 5.0) -> None:
        """Stop the sender (queued alerts stay pending in the table for the next start)."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(deadline_s)
            self._thread = None

    def wait_idle(self, timeout_s: float) -> bool:
        """Wait until nothing is due now (for tests and `fpgw` one-shot commands)."""
        end = time.monotonic() + timeout_s
        with self._cond:
            while any(due <= time.monotonic() for due, _, _ in self._queue) or self._busy:
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.05))
        return True

    def queue_pending(self) -> int:
        """Queue pending rows written by others (e.g. the forwarder's alerts); returns how many were new."""
        if self._thread is None:
            return 0
        n = 0
        for row in self.repo.pending_alerts(self.config.alerts.max_attempts):
            with self._cond:
                if row.id in self._queued:
                    continue
            self._enqueue(row.id, row.attempts, 0.0)
            n += 1
        return n

    def _enqueue(self, alert_id: int, attempts: int, delay_s: float) -> None:
        with self._cond:
            self._queued.add(alert_id)
            heapq.heappush(self._queue, (time.monotonic() + delay_s, alert_id, attempts))
            self._cond.notify_all()

    def _forget(self, alert_id: int) -> None:
        with self._cond:
            self._queued.discard(alert_id)
        self._done_channels.pop(alert_id, None)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopping:
                    if self._queue and self._queue[0][0] <= time.monotonic():
                        break
                    timeout = self._queue[0][0] - time.monotonic() if self._queue else None
                    self._cond.wait(timeout)
                if self._stopping:
                    return
                _, alert_id, attempts = heapq.heappop(self._queue)
                self._busy = True
            try:
                self._deliver(alert_id, attempts)
            except Exception:  # a bug here must not kill the sender: log it, keep going
                log.exception("alert delivery crashed", alert_id=alert_id)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def _deliver(self, alert_id: int, attempts: int) -> None:
        row: AlertRow | None = self.repo.alert(alert_id)
        if row is None or row.delivered_at is not None or row.muted:
            self._forget(alert_id)
            return
        doc = row_document(row)
        done = self._done_channels.setdefault(alert_id, set())
        errors = []
        for ch in self.channels:
            if ch.label in done or self._stopping:
                continue
            try:
                ch.send(doc)
                done.add(ch.label)
            except Exception as exc:  # apprise/httpx failures of any kind: retry later
                errors.append(f"{ch.label}: {exc}")
        attempts += 1
        if not errors and not self._stopping:
            self.repo.mark_delivered(alert_id, self.clock(), attempts)
            self._forget(alert_id)
            self.sent += 1
            return
        self.failed += 1
        error = "; ".join(errors) or "stopped before delivery"
        self.repo.mark_failed(alert_id, attempts, error)
        if attempts >= self.config.alerts.max_attempts:
            self.gave_up += 1
            self._forget(alert_id)
            log.error("alert not delivered, giving up", alert_id=alert_id, device=row.device_id,
                      problem=row.problem, attempts=attempts, error=error)
            return
        if self._stopping:
            self._forget(alert_id)
            return
        if attempts == 1:
            # One line when delivery starts failing; retries are quiet until success or giving up.
            log.warning("alert delivery failed, will retry", alert_id=alert_id, device=row.device_id,
                        problem=row.problem, error=error)
        self._enqueue(alert_id, attempts, min(self.retry_max_s, self.retry_base_s * 2 ** (attempts - 1)))

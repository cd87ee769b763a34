"""The central's housekeeping: the silent-gateway watch (alerts when an office gateway stops reporting)
and the daily pruning of batch receipts.

    scheduler --every check_every_s--> CentralService.check_silent() --> CentralStore.silent_watch_rows()
        open / remind / close --> CentralStore.open_silent / remind_silent / close_silent (state + alert row, one tx)
        --> the health monitor's alert router delivers the alert rows (webhooks, apprise)
The silent state lives in the gateways table, so a restart (or a second central process) never alerts twice.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import structlog

from gateway.humanize import duration_text
from gateway.services import AppContext
from gateway.store.schema import utcnow

if TYPE_CHECKING:
    from gateway.central.api import CentralApi

log = structlog.get_logger(__name__)

#: Batch receipts are kept this long (a replay later is still idempotent, just recomputed).
RECEIPT_DAYS = 30
#: Problem name of the silent-gateway alert (alerts.problem).
PROBLEM_SILENT = "gateway_silent"
#: What the maintenance team should check when an office gateway stops reporting.
CHECKS_SILENT = (
    "Is the office's gateway server powered on and running (power cut, UPS, someone switched it off)? "
    "Call the office.",
    "Is the office internet link up? From the office server: curl -sI <forward.url>/api/v1/openapi.json",
    "On the office server: `systemctl status fpgw` (is the service running, or crashing?) and "
    "`fpgw forward status` (backlog and last upstream error; HTTP 401/403 means its token is wrong or revoked).",
    "Punches are kept in the office's outbox and arrive here by themselves once it reports again; "
    "nothing has to be re-sent by hand.",
    "If the office gateway was retired, delete its token from the gateway tokens file to stop these alerts.",
)
#: Seconds between silent-gateway checks (shorter when gateway_silent_after_s is very short).
SILENT_CHECK_EVERY_S = 60.0
#: kv key: when the silent check last ran (tells a restart from an outage of the central itself).
_HEARTBEAT_KEY = "central.silent_check_at"
#: A gap this long since the last check means the central itself was down: gateways then get
#: gateway_silent_after_s to come back (they may sit in their retry backoff) before anyone is called silent.
CENTRAL_OUTAGE_S = 300.0


class CentralService:
    """The central API's housekeeping on the scheduler: receipt pruning and the silent-gateway watch."""

    name = "central"

    def __init__(self, ctx: AppContext, api: CentralApi, *, clock: Callable[[], datetime] = utcnow,
                 check_every_s: float | None = None) -> None:
        self.ctx = ctx
        self.api = api
        self.clock = clock
        self.silent_after_s = api.config.gateway_silent_after_s
        self.check_every_s = check_every_s or min(SILENT_CHECK_EVERY_S, max(1.0, self.silent_after_s / 4))
        #: While set, gateways that went quiet before this instant are not called silent yet (the central
        #: itself was down; see CENTRAL_OUTAGE_S).
        self.grace_from: datetime | None = None
        self._lock = threading.Lock()
        self._failing = False

    def start(self) -> None:
        """Register the daily receipt pruning and the silent-gateway check."""
        self.grace_from = self._outage_grace(self.clock())
        self.ctx.scheduler.add_job(self._prune, "interval", hours=24, id="central:prune", replace_existing=True,
                                   executor="housekeeping", next_run_time=datetime.now(UTC) + timedelta(minutes=5))
        self.ctx.scheduler.add_job(self.check_silent, "interval", seconds=self.check_every_s,
                                   id="central:silent-gateways", replace_existing=True, executor="housekeeping",
                                   max_instances=1, coalesce=True, misfire_grace_time=int(self.check_every_s) + 30,
                                   next_run_time=datetime.now(UTC) + timedelta(seconds=self.check_every_s))
        log.info("central API enabled", gateway_tokens=len(self.api.gateway_tokens.tokens()),
                 api_tokens=len(self.api.api_tokens.tokens()), gateway_silent_after_s=self.silent_after_s)

    def _prune(self) -> None:
        n = self.api.store.prune_receipts(utcnow() - timedelta(days=RECEIPT_DAYS))
        if n:
            log.debug("old ingest receipts pruned", receipts=n)

    def _outage_grace(self, now: datetime) -> datetime | None:
        try:
            text = self.api.store.get_fact(_HEARTBEAT_KEY)
            last = datetime.fromisoformat(text) if text else None
        except (ValueError, TypeError):
            last = None
        except Exception:
            log.exception("could not read the silent-check heartbeat")
            last = None
        if last is not None and (now - last).total_seconds() <= max(CENTRAL_OUTAGE_S, 3 * self.check_every_s):
            return None  # a plain restart: keep watching as before
        log.info("central was not watching gateways recently; giving them time to report before any silent alert",
                 last_check=last.isoformat() if last else None, grace_s=self.silent_after_s)
        return now

    # -- silent gateways -------------------------------------------------------------------------
    def check_silent(self, now: datetime | None = None) -> list[tuple[str, str]]:
        """Open, remind and close silent-gateway alerts; returns (gateway, event) of the alerts written.

        Same rules as device problems: one start, a reminder every alerts.reminder_s while it lasts, one end
        when the gateway reports again. The state lives in the gateways table and is changed together with
        the alert row, so a restart (or a second central process) never alerts twice.
        """
        now = now or self.clock()
        written: list[tuple[str, str]] = []
        try:
            with self._lock:
                written = self._check(now)
                self.api.store.set_fact(_HEARTBEAT_KEY, now.isoformat())
        except Exception:
            # One traceback per failure streak (a database outage would otherwise log one every minute).
            if not self._failing:
                log.exception("silent-gateway check failed; retrying every check")
            self._failing = True
            return written
        if self._failing:
            log.info("silent-gateway check works again")
            self._failing = False
        if written and self.ctx.health is not None:
            self.ctx.health.deliver_pending()  # deliver now, not at the next health sweep
        return written

    def _check(self, now: datetime) -> list[tuple[str, str]]:
        tokens = self.api.gateway_tokens
        tokens.refresh()
        watched = {t.name for t in tokens.tokens()}
        reminder_s = self.ctx.config.alerts.reminder_s
        out: list[tuple[str, str]] = []
        for g in self.api.store.silent_watch_rows():
            name, last = g["name"], g["last_seen_at"]
            quiet_s = (now - last).total_seconds()
            silent = quiet_s > self.silent_after_s
            if g["silent_since"] is None:
                if not silent or name not in watched:
                    continue
                if self.grace_from is not None and (now - self.grace_from).total_seconds() <= self.silent_after_s:
                    continue
                if self.api.store.open_silent(name, last_seen_at=last, now=now,
                                              alert=self._alert(g, "start", now, quiet_s)):
                    log.warning("office gateway silent", gateway=name, office=g["office_code"],
                                last_contact=last.isoformat(), silent_for=duration_text(quiet_s),
                                backlog=g["outbox_depth"])
                    out.append((name, "start"))
            elif name not in watched:
                if self.api.store.close_silent(name, silent_since=g["silent_since"],
                                               alert=self._alert(g, "end", now, quiet_s, retired=True)):
                    log.info("silent office gateway no longer watched (token removed)", gateway=name)
                    out.append((name, "end"))
            elif not silent:
                outage_s = (last - g["silent_since"]).total_seconds()
                if self.api.store.close_silent(name, silent_since=g["silent_since"],
                                               alert=self._alert(g, "end", now, outage_s)):
                    log.info("office gateway reporting again", gateway=name, office=g["office_code"],
                             outage=duration_text(outage_s), backlog=g["outbox_depth"])
                    out.append((name, "end"))
            elif self._reminder_due(g["silent_notified_at"], now, reminder_s) and self.api.store.remind_silent(
                    name, notified_at=g["silent_notified_at"], now=now,
                    alert=self._alert(g, "reminder", now, quiet_s)):
                log.warning("office gateway still silent", gateway=name, office=g["office_code"],
                            silent_for=duration_text(quiet_s))
                out.append((name, "reminder"))
        return out

    @staticmethod
    def _reminder_due(notified_at: datetime | None, now: datetime, reminder_s: float) -> bool:
        return reminder_s > 0 and (notified_at is None or (now - notified_at).total_seconds() >= reminder_s)

    def _alert(self, g: Mapping[str, Any], event: str, now: datetime, duration_s: float, *,
               retired: bool = False) -> dict[str, Any]:
        """The alerts-table row (and webhook document) for one silent-gateway event."""
        site = self.ctx.config.site
        name, code, office_name = g["name"], g["office_code"], g.get("office_name") or ""
        office = f"{office_name} ({code})" if office_name else code
        last: datetime = g["last_seen_at"]
        since: datetime = g["silent_since"] or last
        depth, oldest = g["outbox_depth"], g["oldest_unforwarded_s"]
        backlog = ("no backlog figure reported" if depth is None else
                   f"{depth} punch(es) waiting" + (f", the oldest {duration_text(oldest)} old" if oldest else ""))
        where = ", ".join(x for x in (f"from {g['remote_addr']}" if g.get("remote_addr") else "",
                                      f"host {g['hostname']}" if g.get("hostname") else "",
                                      f"fpgw {g['version']}" if g.get("version") else "") if x)
        contact = f"{last.astimezone(UTC):%Y-%m-%d %H:%M} UTC" + (f" ({where})" if where else "")
        if event == "end" and retired:
            word, severity = "RESOLVED", "info"
            headline = f"Office gateway {name} - {office}: no longer watched (its token was removed)"
            message = (f"RESOLVED The office gateway {name} of {office} is no longer watched: its token was removed "
                       f"from the gateway tokens file. Last contact {contact}.")
        elif event == "end":
            word, severity = "RESOLVED", "info"
            headline = f"Office gateway {name} - {office} reporting again after {duration_text(duration_s)}"
            message = (f"RESOLVED The office gateway {name} of {office} reports again after "
                       f"{duration_text(duration_s)} of silence (contact {contact}). It now reports {backlog}; "
                       "they arrive by themselves.")
        else:
            word = "PROBLEM" if event == "start" else "STILL OPEN"
            severity = "critical"
            headline = f"Office gateway {name} - {office} silent for {duration_text(duration_s)}"
            message = (f"{word} [critical] The office gateway {name} of {office} has not reported to the central "
                       f"server for {duration_text(duration_s)} (alert after "
                       f"{duration_text(self.silent_after_s)}). Last contact {contact}. At its last contact it "
                       f"reported {backlog}. No punches or device health from this office arrive until it "
                       "reports again; punches are kept at the office meanwhile.")
        gateway = {"name": name, "office_code": code, "office_name": office_name or None,
                   "last_contact_at": last.isoformat(), "last_batch_at": _iso(g.get("last_batch_at")),
                   "last_health_at": _iso(g.get("last_health_at")), "remote_addr": g.get("remote_addr"),
                   "hostname": g.get("hostname"), "version": g.get("version"),
                   "outbox_depth": depth, "oldest_unforwarded_s": oldest}
        seen = {**gateway, "silent_for_s": round(duration_s, 1), "silent_after_s": self.silent_after_s}
        return {"office_code": site.office_code, "problem": PROBLEM_SILENT, "event": event, "severity": severity,
                "title": f"[{word}] {headline}", "message": message, "details": seen,
                "checks": CHECKS_SILENT if event != "end" else (), "office_name": office_name, "at": now,
                "extra": {"office": {"code": code, "name": office_name}, "gateway": gateway,
                          "since": since.isoformat(), "duration_s": round(duration_s, 1)}}

    def stop(self, deadline_s: float) -> None:
        """Remove the jobs."""
        for job in ("central:prune", "central:silent-gateways"):
            try:
                self.ctx.scheduler.remove_job(job)
            except Exception:
                pass


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


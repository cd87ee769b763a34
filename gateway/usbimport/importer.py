"""One USB export into the store, as the punches a network poll of the same terminal would have stored.

    `fpgw import usb FILE --device ID` / the drop folder (gateway.usbimport.watcher)
        --> UsbImporter.import_file: parse (formats) -> which terminal? (serial checks) -> normalize_punches
        -> wrong-terminal check -> Store.save_poll (ONE transaction: punches + outbox + quarantine rows + a
        poll_runs row with outcome "usb_import") --> ImportReport

Identity: the punch key is (office, device serial, user, device time, occurrence), the same as a poll's,
because the records go through the same ``normalize_punches`` with the same DeviceContext (office, device id,
the serial the store learned from the terminal, the device's zone) in the terminal's log order. So a file
imported twice, or a poll after an import, or an import after a poll, stores each punch once (the idempotent
insert). An import is not a poll: it never marks the device online or offline (the health monitor never sees
it) and the outcome it stores is "usb_import", which is how `fpgw devices` and the status page show the last
import.

Refused (``ImportRefused``, nothing stored) unless ``force``: a file naming another serial than the terminal's
(its first line or its file name), a ``--serial`` that contradicts the known one, and a file none of whose
punches is stored while the store has punches of that device inside the file's time span (another terminal's
log). Always refused: an unknown device, an unknown serial, a file that is no attendance export.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

import structlog

from gateway.config import Config, DeviceConfig
from gateway.models import USB_IMPORT_OUTCOME, PollOutcome, Punch
from gateway.polling.normalize import DEFAULT_NOT_BEFORE, DeviceContext, EmployeeMap, normalize_punches
from gateway.store.punches import PunchQuery, Store, iter_punches
from gateway.store.quarantine import QuarantinedInput, QuarantineRepo
from gateway.usbimport.formats import ExportError, ParsedExport, name_hint, parse_export

log = structlog.get_logger(__name__)

#: The poll_runs outcome of an import (a poll_runs row says when the last import was and what it stored).
IMPORT_OUTCOME = USB_IMPORT_OUTCOME
#: The quarantine source of unreadable export lines.
QUARANTINE_SOURCE = "usb"
#: Quarantine rows read to leave out lines of the same file quarantined before (a re-import adds nothing).
SEEN_QUARANTINE_MAX = 10_000


class ImportRefused(Exception):
    """The file is not imported; the message says why and what to do (one line for office IT staff)."""


@dataclass(frozen=True)
class ImportReport:
    """What one import read and stored."""

    device_id: str
    serial: str
    #: Where the serial came from: "store", "config", "file", "file name" or "--serial".
    serial_from: str
    file_name: str
    layout: str
    #: Records read from the file (punches; unreadable lines not counted).
    records: int
    #: Punches stored now (0 for a dry run: see ``would_add``).
    new: int
    #: Punches that were stored before (by a poll or an earlier import).
    known: int
    quarantined: int
    dry_run: bool = False
    first_time: str | None = None
    last_time: str | None = None
    #: How many of the new punches carry each quality flag (rtc_reset, future, unmapped_user, ...).
    flag_counts: dict[str, int] = field(default_factory=dict)
    #: Warnings worth showing (a forced import, ...).
    notes: tuple[str, ...] = ()
    #: Machine numbers the file names (its records' machine field, or a name like 1_attlog.dat): for staff to
    #: check against the terminal's menu; the config has no machine number to compare them with.
    machines: tuple[int, ...] = ()

    def summary(self) -> str:
        """One line for logs, poll_runs and the .reason.txt of the drop folder."""
        verb = "would add" if self.dry_run else "stored"
        return (f"USB export {self.file_name}: {self.records} records read, {verb} {self.new} new, "
                f"{self.known} already stored, {self.quarantined} unreadable lines quarantined")


def _name_machine(file_name: str) -> set[int]:
    machine = name_hint(file_name).machine
    return set() if machine is None else {machine}


class UsbImporter:
    """Imports export files of configured terminals into the store (thread-safe: no state between calls)."""

    def __init__(self, config: Config, store: Store, *, employees: EmployeeMap | None = None,
                 now: Callable[[], datetime] | None = None) -> None:
        self.config = config
        self.store = store
        self.employees = employees if employees is not None else EmployeeMap(config.employees.mapping_csv)
        self._now = now or (lambda: datetime.now(UTC))

    def import_file(self, path: Path, *, device_id: str, file_name: str | None = None, serial: str | None = None,
                    force: bool = False, dry_run: bool = False) -> ImportReport:
        """Import the file at ``path`` (``file_name``: the name it had on the stick, for the serial hint)."""
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ImportRefused(f"cannot read {path}: {exc.strerror or exc}") from None
        return self.import_bytes(data, device_id=device_id, file_name=file_name or path.name, serial=serial,
                                 force=force, dry_run=dry_run)

    def import_bytes(self, data: bytes, *, device_id: str, file_name: str, serial: str | None = None,
                     force: bool = False, dry_run: bool = False) -> ImportReport:
        """Import one export's bytes; raises ImportRefused (nothing stored) or the store's StorageError."""
        device = self._device(device_id)
        try:
            parsed = parse_export(data)
        except ExportError as exc:
            raise ImportRefused(f"{file_name}: {exc}") from None
        notes: list[str] = []
        key_serial, serial_from = self._serial(device, parsed, file_name, serial, force, notes)
        now = self._now()
        self.employees.refresh()
        ctx = DeviceContext(office_code=self.config.site.office_code, device_id=device.id, serial=key_serial,
                            timezone=device.timezone, not_before=device.installed_on or DEFAULT_NOT_BEFORE)
        punches = normalize_punches(parsed.punches, ctx, employees=self.employees, now=now)
        missing = self.store.missing_keys(key_serial, [p.key for p in punches]) if punches else set()
        known = len(punches) - len(missing)
        if punches and known == 0:
            overlap = self._stored_in_span(device.id, punches)
            if overlap is not None:
                message = (f"{file_name} does not look like an export of device {device.id} (serial {key_serial}): "
                           f"none of its {len(punches)} punches is stored, yet the gateway holds punches of this "
                           f"device in the same time span (e.g. at {overlap})")
                if not force:
                    raise ImportRefused(message + "; check the device id, or add --force if the file is right")
                notes.append("forced: " + message)
        quarantined = self._new_quarantine(device.id, file_name, parsed, now)
        times = sorted(p.device_time for p in punches)
        draft = ImportReport(device_id=device.id, serial=key_serial, serial_from=serial_from, file_name=file_name,
                             layout=parsed.layout, records=len(punches), new=len(missing), known=known,
                             quarantined=len(quarantined), dry_run=dry_run, first_time=times[0] if times else None,
                             last_time=times[-1] if times else None, notes=tuple(notes),
                             machines=tuple(sorted(parsed.machines | _name_machine(file_name))))
        if dry_run:
            return draft
        if not punches and not quarantined:
            return draft
        report = self._save(device, punches, quarantined, now, draft)
        log.info("usb export imported", device=device.id, serial=key_serial, file=file_name, records=report.records,
                 new=report.new, known=report.known, quarantined=report.quarantined, forced=bool(notes))
        return report

    # -- which terminal --------------------------------------------------------------------------------
    def _device(self, device_id: str) -> DeviceConfig:
        try:
            return self.config.device(device_id)
        except KeyError:
            known = ", ".join(d.id for d in self.config.devices) or "none"
            raise ImportRefused(f"no device {device_id!r} in the configuration (devices: {known})") from None

    def _serial(self, device: DeviceConfig, parsed: ParsedExport, file_name: str, given: str | None, force: bool,
                notes: list[str]) -> tuple[str, str]:
        """(the serial the punches are stored under, where it came from); refuses contradictions unless forced."""
        try:
            stored = self.store.device_state(device.id).serial
        except KeyError:
            stored = None  # never synced (a CLI run before the daemon's first start)
        known, known_from = (stored, "store") if stored else (device.serial, "config") if device.serial else (None, "")
        hint = name_hint(file_name)
        problems: list[str] = []
        reference = given or known
        for value, where in ((parsed.serial, "the file's first line"), (hint.serial, "the file name")):
            if value and reference and value.casefold() != reference.casefold():
                problems.append(f"{where} says serial {value}, but device {device.id} "
                                f"{'is given as' if reference == given else 'has'} serial {reference}")
        if given and known and given.casefold() != known.casefold():
            problems.append(f"--serial {given} differs from serial {known} the gateway knows for device {device.id}")
        if problems:
            message = f"{file_name}: " + "; ".join(dict.fromkeys(problems))
            if not force:
                raise ImportRefused(message + " (wrong file or wrong --device? add --force only if the file is right)")
            notes.append("forced: " + message)
        if given:
            return given, "--serial"
        if known:
            return known, known_from
        for value, where in ((parsed.serial, "file"), (hint.serial, "file name")):
            if value:
                return value, where
        raise ImportRefused(f"the serial number of device {device.id} is not known yet: poll it once over the "
                            "network, set serial = \"...\" in its [[devices]] entry, or pass --serial (shown on the "
                            "terminal under System Info / Device Info)")

    def _stored_in_span(self, device_id: str, punches: list[Punch]) -> str | None:
        """The device time of a punch stored for this device between the file's first and last instant, if any."""
        instants = [p.utc_time for p in punches if p.utc_time is not None]
        days = [p.local_time.date() for p in punches if p.local_time is not None]
        if not instants or not days:
            return None
        lo, hi = min(instants), max(instants)
        flt = PunchQuery(date_from=min(days), date_to=max(days), device_id=device_id,
                          office_code=self.config.site.office_code)
        # Leaving the loop early drops the generator, which closes its connection (CPython refcounting).
        for row in iter_punches(self.store.engine, flt):
            when = row["utc_time"]
            if when is not None and lo <= datetime.fromisoformat(when) <= hi:
                return str(row["device_time"])
        return None

    # -- storing ---------------------------------------------------------------------------------------
    def _new_quarantine(self, device_id: str, file_name: str, parsed: ParsedExport,
                        now: datetime) -> list[QuarantinedInput]:
        """The file's unreadable lines, less those quarantined by an earlier import of the same file."""
        if not parsed.bad:
            return []
        items = [QuarantinedInput(device_id=device_id, source=QUARANTINE_SOURCE, raw=b.raw, reason=b.reason,
                                  origin=f"{file_name}:{b.line}", received_at=now) for b in parsed.bad]
        seen = {(q.origin, q.raw) for q in QuarantineRepo(self.store.engine).recent(device_id, SEEN_QUARANTINE_MAX)
                if q.source == QUARANTINE_SOURCE}
        return [q for q in items if (q.origin, q.raw) not in seen]

    def _save(self, device: DeviceConfig, punches: list[Punch], quarantined: list[QuarantinedInput],
              now: datetime, draft: ImportReport) -> ImportReport:
        # Not ok and not a poll: the health monitor never sees it, last_ok_at stays the last good poll's.
        outcome = PollOutcome(device_id=device.id, started_at=now, finished_at=self._now(), ok=False,
                              error_kind=IMPORT_OUTCOME, serial=draft.serial, records_read=len(punches),
                              error=f"USB export {draft.file_name} imported")
        saved = self.store.save_poll(outcome, punches, forward=bool(self.config.forward.url), quarantined=quarantined)
        flags: dict[str, int] = {}
        for p in punches:
            if p.flags and p.key in saved.new_keys:
                for f in p.flags:
                    flags[f] = flags.get(f, 0) + 1
        return replace(draft, new=saved.new_punches, known=len(punches) - saved.new_punches, flag_counts=flags)

"""The drop folder: export files copied into ``[import] folder`` are imported by the daemon.

    <folder>/<device_id>__anything.dat  or  <folder>/<device_id>/anything.dat
        --> every [import] scan_every_s (the daemon's scheduler; no inotify) DropFolder.scan_once:
            a file whose size and modification time did not change since the previous scan (not being copied
            any more) --> UsbImporter.import_file --> moved to <folder>/done/ or <folder>/failed/ with
            <name>.reason.txt next to it (what was stored, or why not)

A file refused (wrong terminal, not an export, unknown device) goes to failed/ and is never retried; staff
fix the cause and drop it again, or run `fpgw import usb --force`. A database that is unavailable leaves the
file where it is for the next scan (logged once until it works again). Files and folders starting with "."
are ignored (editors and copy tools write such temporary files). A file that cannot be moved out (permissions)
is logged once and left alone until the daemon restarts.
"""

from __future__ import annotations

import os
import re
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import structlog

from gateway.config import Config
from gateway.services import AppContext, Service
from gateway.store.db import StorageError, storage_error_text
from gateway.usbimport.importer import ImportRefused, UsbImporter

log = structlog.get_logger(__name__)

DONE, FAILED = "done", "failed"
#: ``<device_id>__<the name it had on the stick>``.
_PREFIXED = re.compile(r"^(?P<device>[A-Za-z0-9][A-Za-z0-9_.-]{0,63}?)__(?P<name>.+)$")


@dataclass(frozen=True, slots=True)
class Dropped:
    """A file found in the drop folder: where it is, for which device, the name it had on the stick."""

    path: Path
    device_id: str
    file_name: str


class DropFolder:
    """Scans the drop folder and imports what is complete (one scan at a time)."""

    def __init__(self, folder: Path, importer: UsbImporter) -> None:
        self.folder = folder
        self.importer = importer
        self._lock = threading.Lock()
        #: path -> (size, mtime_ns) at the previous scan: a file is imported once it stopped changing.
        self._seen: dict[Path, tuple[int, int]] = {}
        self._storage_down = False
        #: Files that could not be moved out (permissions): skipped from then on, so they are not imported and
        #: reported again every scan.
        self._stuck: set[Path] = set()

    def prepare(self) -> None:
        """Create the folder and its done/ and failed/ subfolders."""
        for sub in (self.folder, self.folder / DONE, self.folder / FAILED):
            sub.mkdir(parents=True, exist_ok=True)

    def candidates(self) -> list[Dropped]:
        """Every file waiting in the folder (top level with a device prefix, or in a device's subfolder)."""
        found: list[Dropped] = []
        try:
            entries = sorted(self.folder.iterdir())
        except OSError:
            return found
        for entry in entries:
            if entry.name.startswith(".") or entry.name in (DONE, FAILED):
                continue
            if entry.is_dir():
                try:
                    inner = sorted(entry.iterdir())
                except OSError:
                    continue
                found += [Dropped(f, entry.name, f.name) for f in inner if f.is_file() and not f.name.startswith(".")
                          and not f.name.endswith(".reason.txt")]
            elif entry.is_file() and not entry.name.endswith(".reason.txt"):
                m = _PREFIXED.match(entry.name)
                found.append(Dropped(entry, m.group("device") if m else "", m.group("name") if m else entry.name))
        return found

    def scan_once(self) -> list[tuple[Dropped, str]]:
        """Import every file that stopped changing; returns (file, "done"/"failed"/"waiting") for each seen."""
        if not self._lock.acquire(blocking=False):
            return []  # the previous scan is still importing a big file
        try:
            return [(d, self._handle(d)) for d in self.candidates() if d.path not in self._stuck]
        finally:
            self._lock.release()

    def _handle(self, dropped: Dropped) -> str:
        try:
            st = dropped.path.stat()
        except OSError:
            self._seen.pop(dropped.path, None)
            return "waiting"
        signature = (st.st_size, st.st_mtime_ns)
        if self._seen.get(dropped.path) != signature:
            self._seen[dropped.path] = signature  # still being written, or new: look again next scan
            return "waiting"
        del self._seen[dropped.path]
        if not dropped.device_id:
            self._finish(dropped, FAILED, "the file name does not say which device it is from: name it "
                         "<device id>__<name>.dat or put it in the folder <device id>/")
            return FAILED
        try:
            report = self.importer.import_file(dropped.path, device_id=dropped.device_id, file_name=dropped.file_name)
        except ImportRefused as exc:
            log.warning("usb export refused", device=dropped.device_id, file=dropped.file_name, reason=str(exc))
            self._finish(dropped, FAILED, str(exc))
            return FAILED
        except StorageError as exc:  # the database is down: the file waits, nothing is lost
            if not self._storage_down:
                log.warning("usb export waits: the database is unavailable (said once until it works)",
                            file=dropped.file_name, error=storage_error_text(exc))
            self._storage_down = True
            return "waiting"
        except Exception as exc:  # a bug: said once for this file, which is set aside instead of failing each scan
            log.exception("usb export import failed unexpectedly", device=dropped.device_id, file=dropped.file_name)
            self._finish(dropped, FAILED, f"internal error ({type(exc).__name__}); see the gateway's log")
            return FAILED
        self._storage_down = False
        lines = [report.summary(), f"device {report.device_id}, serial {report.serial} (from {report.serial_from}), "
                 f"format {report.layout}"]
        if report.first_time:
            lines.append(f"records from {report.first_time} to {report.last_time}")
        lines += list(report.notes)
        self._finish(dropped, DONE, "\n".join(lines))
        return DONE

    def _finish(self, dropped: Dropped, where: str, reason: str) -> None:
        """Move the file to done/ or failed/ (never overwriting an older one) with its .reason.txt."""
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        prefix = f"{dropped.device_id}__" if dropped.device_id else ""
        target = self.folder / where / f"{stamp}_{prefix}{dropped.file_name}"
        n = 1
        while target.exists():
            n += 1
            target = self.folder / where / f"{stamp}-{n}_{prefix}{dropped.file_name}"
        try:
            os.replace(dropped.path, target)
            target.with_name(target.name + ".reason.txt").write_text(reason + "\n", encoding="utf-8")
        except OSError as exc:
            self._stuck.add(dropped.path)
            log.error("usb export could not be moved out of the drop folder; it is left alone until the daemon "
                      "restarts", file=str(dropped.path), to=str(target), error=str(exc))


class DropFolderService:
    """The daemon's drop-folder timer (a scheduler job, no thread of its own)."""

    name = "usb-import"

    def __init__(self, ctx: AppContext, folder: DropFolder, every_s: float) -> None:
        self.ctx = ctx
        self.folder = folder
        self.every_s = every_s

    def start(self) -> None:
        """Create the folders and scan every ``every_s`` seconds."""
        try:
            self.folder.prepare()
        except OSError as exc:
            log.error("usb import folder cannot be created; drop-folder imports are off",
                      folder=str(self.folder.folder), error=str(exc))
            return
        self.ctx.scheduler.add_job(self.folder.scan_once, "interval", seconds=self.every_s, id="usb-import",
                                   name="usb import folder", replace_existing=True, max_instances=1, coalesce=True)
        log.info("watching the usb import folder", folder=str(self.folder.folder), every_s=self.every_s)

    def stop(self, deadline_s: float) -> None:
        """Remove the job (a scan in progress finishes its file: the move is what marks it done)."""
        try:
            self.ctx.scheduler.remove_job("usb-import")
        except Exception:  # not added (the folder could not be created), or the scheduler is already down
            pass


def services(ctx: AppContext) -> list[Service]:
    """The drop-folder watcher when ``[import] enabled``."""
    cfg = ctx.config.usb_import
    if not cfg.enabled:
        return []
    return [DropFolderService(ctx, DropFolder(cfg.folder, UsbImporter(ctx.config, ctx.store)), cfg.scan_every_s)]


def drop_folder(config: Config) -> Path:
    """Where the drop folder of this config is (for messages)."""
    return config.usb_import.folder

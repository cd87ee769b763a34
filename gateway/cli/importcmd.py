"""`fpgw import usb FILE --device ID`: a terminal's attendance export from a USB stick into the punch store.

    fpgw import usb FILE --device ID [--serial S] [--force] [--dry-run] [--json]
        -> gateway.usbimport.importer.UsbImporter (the same normalize and Store.save_poll as a poll)
        -> what it read, stored, skipped as already stored, quarantined (exit 0), or why it refused (exit 1)

Registered by gateway.cli.main; imports only gateway.cli.common and what it needs below. Steps at the
keypad and what the lines mean: docs/usb-import.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

from gateway.cli.common import EXIT_OK, CliError, config_of, open_store


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `import` group."""
    group = sub.add_parser("import", help="import punches a terminal exported to a USB stick (no network needed)")
    actions = group.add_subparsers(dest="import_action", metavar="ACTION")
    actions.required = True
    a = actions.add_parser("usb", help="import an attendance export (attlog.dat, 1_attlog.dat, <serial>_attlog.dat)")
    a.add_argument("file", metavar="FILE", type=Path, help="the export file copied from the USB stick")
    a.add_argument("--device", required=True, metavar="ID", help="device id (as in the config) of the terminal")
    a.add_argument("--serial", default=None, metavar="S",
                   help="the terminal's serial number, when the gateway has never polled it")
    a.add_argument("--force", action="store_true",
                   help="import even though the file looks like another terminal's (serial or punches disagree)")
    a.add_argument("--dry-run", action="store_true", help="read and check the file, store nothing")
    a.add_argument("--json", action="store_true", help="print the result as JSON")
    a.set_defaults(func=cmd_import_usb, one_shot=True)


def cmd_import_usb(args: argparse.Namespace) -> int:
    """Import one export file and print what happened."""
    from gateway.usbimport.importer import ImportRefused, UsbImporter

    config = config_of(args)
    engine, store = open_store(config)
    try:
        store.sync_devices(config.devices)
        try:
            report = UsbImporter(config, store).import_file(args.file, device_id=args.device, serial=args.serial,
                                                            force=args.force, dry_run=args.dry_run)
        except ImportRefused as exc:
            raise CliError(f"not imported: {exc}") from None
    finally:
        engine.dispose()
    out = sys.stdout
    if args.json:
        json.dump(asdict(report), out, indent=2)
        out.write("\n")
        return EXIT_OK
    stored = "would store" if report.dry_run else "stored"
    machines = f", machine number {'/'.join(str(m) for m in report.machines)}" if report.machines else ""
    out.write(f"file         {report.file_name} ({report.layout}{machines}), device {report.device_id}, "
              f"serial {report.serial} (from {report.serial_from})\n")
    span = f", {report.first_time} .. {report.last_time}" if report.first_time else ""
    out.write(f"read         {report.records} records{span}\n")
    out.write(f"{stored:<12} {report.new} new punches\n")
    out.write(f"skipped      {report.known} already stored (by a poll or an earlier import)\n")
    out.write(f"quarantined  {report.quarantined} unreadable lines"
              + (" (not stored: dry run)" if report.dry_run and report.quarantined else "") + "\n")
    if report.flag_counts:
        flags = ", ".join(f"{k} {v}" for k, v in sorted(report.flag_counts.items()))
        out.write(f"flagged      {flags}\n")
    for note in report.notes:
        out.write(f"note         {note}\n")
    if report.dry_run:
        out.write("dry run: nothing was stored\n")
    return EXIT_OK

"""`fpgw devices [list options | ACTION]`: the device table, and the maintenance actions on one device.

    devices         -> gateway.store.health.device_overview (+ configured devices not seen yet) -> table / JSON
    devices mute    -> gateway.store.health.HealthRepo.set_mute (the running daemon picks it up at its next
    devices unmute     sweep, within 30 s; unmuting re-sends the problems still open once)
    devices clear   -> gateway.polling.poller.DevicePoller.clear_device: empty a terminal's attendance log only
                       after its records are safely stored

`devices clear`: the poller downloads the whole log, stores it (the poll's own transaction), reads every
record's dedup key back from the database, makes it durable on disk, with forwarding configured and
polling.clear_requires_forwarded also requires that none of the device's punches still waits in the outbox, and
only then clears with the driver's guard: the log is read again with the keypad locked and cleared only if it
holds exactly the records stored (a punch that lands in between makes the device refuse: nothing cleared).
Running beside the daemon: the daemon's per-device guard lives in its own process and cannot be taken from
here. It is still safe: the clear happens only if the device holds exactly the records this command
downloaded and verified, with the keypad locked while it checks (if this command is killed meanwhile, a
durable mark makes the daemon's next session re-enable the keypad), and the daemon's next poll recognises the
clear as ours (poll_runs outcome "cleared"), not as a clear at the keypad. Exit codes of `clear`: 0 cleared
(or a dry run that found nothing in the way), 1 refused or failed.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from gateway.cli import push
from gateway.cli.common import (
    EXIT_FAILURE,
    EXIT_OK,
    CliError,
    config_of,
    known_device,
    open_engine,
    open_health,
    open_store,
    options_after_command,
    parse_duration,
    print_table,
)
from gateway.models import USB_IMPORT_OUTCOME

if TYPE_CHECKING:
    from gateway.polling.clear import ClearResult


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `devices` with its actions `mute`, `unmute` and `clear` (without an action: the device table)."""
    devices = subparsers.add_parser(
        "devices", parents=[options_after_command()], help="list devices with their health, last punch and counts",
        usage="fpgw devices [-h] [--json] [--include-removed] [ACTION ...]",
        description="Without an ACTION: the device table (health, last punch, counts). With one: a maintenance "
                    "action on one device; `fpgw devices ACTION --help` explains it.")
    devices.add_argument("--json", action="store_true", help="print JSON instead of a table")
    devices.add_argument("--include-removed", action="store_true", help="also devices no longer in the config")
    devices.set_defaults(func=cmd_devices, one_shot=True)

    actions = devices.add_subparsers(dest="devices_action", metavar="ACTION", title="actions (optional)")
    actions.required = False
    p = actions.add_parser("mute", help="silence a device's alerts during maintenance (still recorded)")
    p.add_argument("device", metavar="DEVICE", help="device id (see `fpgw devices`)")
    p.add_argument("--for", dest="duration", type=parse_duration, default=timedelta(hours=2), metavar="DURATION",
                   help="how long, e.g. 2h, 30m, 1d (default 2h)")
    p.add_argument("--reason", default="", help="shown on the status page and in `fpgw devices`")
    p.set_defaults(func=cmd_mute, one_shot=True)
    p = actions.add_parser("unmute", help="end a mute now (problems still open are sent once)")
    p.add_argument("device", metavar="DEVICE", help="device id")
    p.set_defaults(func=cmd_unmute, one_shot=True)
    p = actions.add_parser("clear", help="clear a terminal's log after verifying every record is stored")
    p.add_argument("device", metavar="DEVICE", help="device id (see `fpgw devices`)")
    p.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    p.add_argument("--dry-run", action="store_true", help="download, store and verify, but do not clear")
    p.add_argument("--local-only", action="store_true",
                   help="with polling.clear_requires_forwarded: clear even if punches still wait in the outbox")
    p.set_defaults(func=cmd_clear, one_shot=True)
    push.register_actions(actions)  # sync-time, reboot, query-log, commands, unknown, add-push (push terminals)


# -- devices (the table) ---------------------------------------------------------------------------

def _local(text: str | None, zone: ZoneInfo) -> str:
    if not text:
        return "-"
    dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return dt.astimezone(zone).strftime("%Y-%m-%d %H:%M")


def cmd_devices(args: argparse.Namespace) -> int:
    """Device table (or JSON) with health from the monitor's device_health table."""
    from gateway.store.enrol import EnrolRepo
    from gateway.store.health import device_overview

    config = config_of(args)
    engine = open_engine(config, pool_size=1, migrate=False)
    try:
        rows = device_overview(engine, config.site.office_code, include_disabled=args.include_removed)
        backups = EnrolRepo(engine).last_backup_times()  # enrolment backups (docs/enrolment.md)
    finally:
        engine.dispose()
    configured = {d.id for d in config.devices}
    for d in config.devices:
        if d.id not in {r["device_id"] for r in rows}:
            # Configured but never seen by the daemon yet (sync happens at start).
            rows.append({"device_id": d.id, "name": d.name, "address": d.address, "port": d.port,
                         "transport": d.transport, "serial": d.serial, "state": "unknown", "problems": [],
                         "last_seen_at": None, "last_punch_at": None, "records": None, "records_cap": None,
                         "clock_skew_s": None, "last_poll_outcome": None, "enabled": d.enabled})
    for r in rows:
        backup = backups.get(r["device_id"])
        r["last_enrol_backup_at"] = backup.isoformat() if backup else None
    if args.json:
        json.dump(rows, sys.stdout, indent=2, ensure_ascii=False)
        sys.stdout.write("\n")
        return EXIT_OK
    zone = ZoneInfo(config.site.timezone)
    table = []
    for r in rows:
        records = "-" if r["records"] is None else str(r["records"])
        if r.get("records_cap"):
            records += f"/{r['records_cap']}"
        skew = "-" if r["clock_skew_s"] is None else f"{r['clock_skew_s']:+.0f}s"
        problems = ",".join(r["problems"]) or "-"
        muted = r.get("muted_until")
        if muted and datetime.fromisoformat(muted.replace("Z", "+00:00")) > datetime.now(UTC):
            problems = ("" if problems == "-" else problems + ",") + "muted"
        if r.get("last_poll_outcome") == USB_IMPORT_OUTCOME:  # an import is no failed poll: say what it was
            problems = ("" if problems == "-" else problems + ",") + "last read: USB import"
        elif r.get("last_poll_outcome") not in (None, "ok", "unchanged", "cleared"):
            problems = problems if problems != "-" else f"last poll: {r['last_poll_outcome']}"
        name = r["device_id"] + ("" if r["device_id"] in configured else " (removed)")
        table.append([name, r["name"] or "", f"{r['address']}:{r['port']}/{r['transport']}", r["serial"] or "-",
                      r["state"], problems, _local(r["last_seen_at"], zone), _local(r["last_punch_at"], zone),
                      records, skew, _local(r["last_enrol_backup_at"], zone)])
    headers = ["ID", "NAME", "ADDRESS", "SERIAL", "STATE", "PROBLEMS", "LAST SEEN", "LAST PUNCH", "RECORDS", "SKEW",
               "LAST BACKUP"]
    print_table(headers, table, sys.stdout)
    print(f"\n(times in {config.site.timezone}; state comes from the health monitor, \"unknown\" until it has run)")
    return EXIT_OK


# -- devices mute | unmute -------------------------------------------------------------------------

def cmd_mute(args: argparse.Namespace) -> int:
    """Mute a device's alerts for a while."""
    from gateway.store.punches import Store

    config = config_of(args)
    engine, repo = open_health(config)
    try:
        if not known_device(config, args.device):
            raise CliError(f"unknown device {args.device!r} (devices: {', '.join(d.id for d in config.devices)})")
        # The device row must exist before its mute can be stored (the daemon syncs only when it starts).
        Store(engine, config.site.office_code).sync_devices(config.devices)
        until = datetime.now(UTC) + args.duration
        repo.set_mute(args.device, until, args.reason or None)
    finally:
        engine.dispose()
    local = until.astimezone(ZoneInfo(config.site.timezone))
    print(f"{args.device}: alerts muted until {local:%Y-%m-%d %H:%M} ({config.site.timezone})"
          + (f" - {args.reason}" if args.reason else "") + "; problems are still recorded and shown")
    return EXIT_OK


def cmd_unmute(args: argparse.Namespace) -> int:
    """End a device's mute."""
    config = config_of(args)
    engine, repo = open_health(config)
    try:
        if not known_device(config, args.device):
            raise CliError(f"unknown device {args.device!r}")
        try:
            repo.set_mute(args.device, None)
        except KeyError:
            raise CliError(f"device {args.device!r} is not in the database yet (start the daemon once)") from None
    finally:
        engine.dispose()
    print(f"{args.device}: alerts unmuted; the daemon re-sends problems still open within 30 s")
    return EXIT_OK


# -- devices clear ---------------------------------------------------------------------------------

def _confirm(device_id: str, where: str) -> bool:
    if not sys.stdin.isatty():
        return False
    answer = input(f"Clear the attendance log of {device_id} ({where}) once every record is verified stored? "
                   "[y/N] ")
    return answer.strip().lower() in ("y", "yes")


def cmd_clear(args: argparse.Namespace) -> int:
    """Download, store, verify, then clear one device's log."""
    from gateway.polling.poller import DevicePoller

    config = config_of(args)
    known = {d.id: d for d in config.devices}
    device = known.get(args.device)
    if device is None:
        raise CliError(f"unknown device {args.device!r} (devices: {', '.join(known) or 'none configured'})")
    if device.pushes:
        return push.cmd_clear_push(args)
    if device.reads_serial:
        raise CliError(f"{device.id} is a serial-line clock: it answers no commands, so the gateway cannot clear "
                       "it (clear it at the clock; docs/serial.md)")
    where = f"{device.address}:{device.port}/{device.transport}"
    if not (args.yes or args.dry_run) and not _confirm(device.id, where):
        raise CliError(f"not clearing {device.id}: confirm with --yes (or try --dry-run first)")
    forwarding = bool(config.forward.url)
    gated = forwarding and config.polling.clear_requires_forwarded
    engine, store = open_store(config)
    try:
        store.sync_devices(config.devices)
        poller = DevicePoller(config, store)
        result = poller.clear_device(device, dry_run=args.dry_run, require_forwarded=gated and not args.local_only)
        waiting_local: tuple[int, int] | None = None
        if forwarding and (args.local_only or not gated):
            waiting_local = store.outbox_waiting(device.id)
    finally:
        engine.dispose()
    _report_clear(device.id, where, result, forwarding=forwarding, gated=gated, local_only=args.local_only,
                  waiting_local=waiting_local)
    return EXIT_OK if result.ok else EXIT_FAILURE


def _report_clear(device_id: str, where: str, r: ClearResult, *, forwarding: bool, gated: bool,
                  local_only: bool, waiting_local: tuple[int, int] | None) -> None:
    out = sys.stdout
    if r.status == "failed" and not r.records:
        print(f"fpgw: {device_id}: {r.message}", file=sys.stderr)
        return
    print(f"{device_id}: read {r.records} records from {r.serial} at {where}; {r.new_punches} were new and "
          "are now stored", file=out)
    if r.records:
        state = "all present" if r.verified == r.records else "NOT all present"
        print(f"{device_id}: verified in the database by (serial, user id, device time): "
              f"{r.verified} of {r.records} records, {state}", file=out)
    if gated and not local_only and r.waiting is not None:
        pending, rejected = r.waiting
        if pending or rejected:
            print(f"{device_id}: still waiting in the outbox for the central server: {pending} pending, "
                  f"{rejected} rejected (see `fpgw forward status`; `fpgw forward now` sends them; "
                  "--local-only clears anyway)", file=out)
        else:
            print(f"{device_id}: every punch of this device was accepted by the central server", file=out)
    elif forwarding and waiting_local is not None:
        pending, rejected = waiting_local
        why = "--local-only" if local_only else "polling.clear_requires_forwarded = false"
        print(f"{device_id}: {why}: {pending} pending and {rejected} rejected punches of this device "
              "still wait in the outbox; they stay in the database and are forwarded later", file=out)
    elif not forwarding:
        print(f"{device_id}: forwarding is not configured; stored locally is what counts", file=out)
    if r.status == "cleared":
        print(f"{device_id}: CLEARED: the terminal's log was emptied ({r.records} records) and its keypad "
              "enabled again", file=out)
    elif r.status == "dry_run":
        print(f"{device_id}: dry run: every check passed; nothing cleared (run without --dry-run to clear)",
              file=out)
    else:
        print(f"fpgw: {device_id}: {'refused' if r.status == 'refused' else 'failed'}: {r.message}",
              file=sys.stderr)

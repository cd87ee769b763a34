"""`fpgw devices clear DEVICE`: empty a terminal's attendance log only after its records are safely stored.

Registered by gateway.cli.main under the `devices` command (next to `devices mute|unmute`). The work is
done by gateway.polling.poller.DevicePoller.clear_device: download the whole log, store it (the poll's own
transaction), read every record's dedup key back from the database, with forwarding configured also
require that none of the device's punches still waits in the outbox, and only then clear with the
driver's expected-count guard (a punch that lands in between makes the device refuse: nothing cleared).

Running beside the daemon: the daemon's per-device guard lives in its own process and cannot be taken
from here. It is still safe: the clear happens only if the device holds exactly the records this
command downloaded and verified, with the keypad locked while it checks, and the daemon's next poll
recognises the clear as ours (poll_runs outcome "cleared"), not as a clear at the keypad.
Exit codes: 0 cleared (or a dry run that found nothing in the way), 1 refused or failed.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from gateway.config import Config

if TYPE_CHECKING:
    from gateway.polling.clear import ClearResult

EXIT_OK, EXIT_FAILURE = 0, 1


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add `devices clear` to the `devices` command's actions (created by gateway.cli.monitor)."""
    devices = subparsers.choices["devices"]
    actions = next((a for a in devices._actions if isinstance(a, argparse._SubParsersAction)), None)
    if actions is None:  # pragma: no cover - only if `devices mute` disappears
        actions = devices.add_subparsers(dest="devices_action", metavar="ACTION")
    p = actions.add_parser("clear", help="clear a terminal's log after verifying every record is stored")
    p.add_argument("device", metavar="DEVICE", help="device id (see `fpgw devices`)")
    p.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    p.add_argument("--dry-run", action="store_true", help="download, store and verify, but do not clear")
    p.add_argument("--local-only", action="store_true",
                   help="with forwarding configured: clear even if punches still wait in the outbox")
    p.set_defaults(func=cmd_clear, one_shot=True)


def _confirm(device_id: str, where: str) -> bool:
    if not sys.stdin.isatty():
        return False
    answer = input(f"Clear the attendance log of {device_id} ({where}) once every record is verified stored? "
                   "[y/N] ")
    return answer.strip().lower() in ("y", "yes")


def cmd_clear(args: argparse.Namespace) -> int:
    """Download, store, verify, then clear one device's log."""
    from gateway.polling.poller import DevicePoller
    from gateway.store.db import create_db_engine, upgrade
    from gateway.store.punches import Store

    config: Config = args.loaded_config
    known = {d.id: d for d in config.devices}
    device = known.get(args.device)
    if device is None:
        print(f"fpgw: unknown device {args.device!r} (devices: {', '.join(known) or 'none configured'})",
              file=sys.stderr)
        return EXIT_FAILURE
    where = f"{device.address}:{device.port}/{device.transport}"
    if not (args.yes or args.dry_run) and not _confirm(device.id, where):
        print(f"fpgw: not clearing {device.id}: confirm with --yes (or try --dry-run first)", file=sys.stderr)
        return EXIT_FAILURE
    forwarding = bool(config.forward.url)
    engine = create_db_engine(config.database.url, pool_size=2)
    try:
        if config.database.auto_migrate:
            upgrade(engine)
        store = Store(engine, config.site.office_code)
        store.sync_devices(config.devices)
        poller = DevicePoller(config, store)
        result = poller.clear_device(device, dry_run=args.dry_run,
                                     require_forwarded=forwarding and not args.local_only)
        waiting_local: tuple[int, int] | None = None
        if forwarding and args.local_only:
            waiting_local = store.outbox_waiting(device.id)
    finally:
        engine.dispose()
    _report(device.id, where, result, forwarding=forwarding, local_only=args.local_only,
            waiting_local=waiting_local)
    return EXIT_OK if result.ok else EXIT_FAILURE


def _report(device_id: str, where: str, r: ClearResult, *, forwarding: bool, local_only: bool,
            waiting_local: tuple[int, int] | None) -> None:
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
    if forwarding and not local_only and r.waiting is not None:
        pending, rejected = r.waiting
        if pending or rejected:
            print(f"{device_id}: still waiting in the outbox for the central server: {pending} pending, "
                  f"{rejected} rejected (see `fpgw forward status`; `fpgw forward now` sends them; "
                  "--local-only clears anyway)", file=out)
        else:
            print(f"{device_id}: every punch of this device was accepted by the central server", file=out)
    elif forwarding and local_only and waiting_local is not None:
        pending, rejected = waiting_local
        print(f"{device_id}: --local-only: {pending} pending and {rejected} rejected punches of this device "
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

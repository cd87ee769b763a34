"""`fpgw enrol ...`: back terminals' enrolments up, restore them to a replacement, status, keys and audit.

    enrol new-key --output FILE      -> a fresh key file (mode 0600), for [enrol] key_file
    enrol backup [DEVICE ...]        -> gateway.enrol.backup.backup_device per terminal
    enrol restore NEW --from OLD     -> gateway.enrol.restore.restore (from the stored backup; OLD may be dead)
    enrol status [--json]            -> gateway.enrol.backup.status (+ the office sync's open conflicts)
    enrol sync [--dry-run] [--group] -> gateway.enrol.sync.sync_office (keep an office's terminals in step)
    enrol ack-drop DEVICE ...        -> accept a user-count drop (kv row; the daemon's health sweep closes user_drop)
    enrol rotate-key                 -> gateway.enrol.backup.rotate_key
    enrol audit [--device D]         -> the audit table

Every command that opens templates or passwords loads the key first: a missing or wrong key stops it before
any terminal is contacted. backup, restore and sync take each terminal's lock file (gateway.devicelock), which the
daemon's polls and daily backup take too: they wait (--wait) while the daemon holds the terminal, then refuse.
Output carries counts and PINs, never template bytes. docs/enrolment.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from gateway.cli.common import EXIT_FAILURE, EXIT_OK, CliError, config_of, open_engine, print_table

if TYPE_CHECKING:
    from gateway.config import Config, DeviceConfig
    from gateway.devicelock import DeviceLock
    from gateway.enrol.crypto import Keyring
    from gateway.enrol.restore import RestoreReport
    from gateway.store.enrol import EnrolRepo


T = TypeVar("T")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `enrol` and its actions."""
    enrol = subparsers.add_parser("enrol", help="back up and restore users and fingerprint templates")
    actions = enrol.add_subparsers(dest="enrol_action", metavar="ACTION")
    actions.required = True

    p = actions.add_parser("new-key", help="write a new random key file for [enrol] key_file")
    p.add_argument("--output", "-o", required=True, metavar="FILE", help="where to write it (must not exist)")
    p.set_defaults(func=cmd_new_key, needs_config=False)

    p = actions.add_parser("backup", help="read users and templates of terminals and store them encrypted")
    p.add_argument("devices", nargs="*", metavar="DEVICE", help="device ids (default: every polled terminal)")
    p.add_argument("--full", action="store_true", help="read every template again (no incremental backup)")
    _wait_option(p)
    p.set_defaults(func=cmd_backup)

    p = actions.add_parser("restore", help="write a stored backup to a (replacement) terminal")
    p.add_argument("target", metavar="NEW_DEVICE", help="device id of the terminal to write to")
    p.add_argument("--from", dest="source", required=True, metavar="OLD_DEVICE",
                   help="device id whose backup to restore (the terminal itself need not work)")
    p.add_argument("--users", metavar="PIN,...", help="only these users (PINs as shown on the terminal)")
    p.add_argument("--snapshot", type=int, metavar="ID", help="a particular backup (see `fpgw enrol status`)")
    p.add_argument("--dry-run", action="store_true", help="show what would be written; write nothing")
    p.add_argument("--overwrite", action="store_true",
                   help="replace users whose PIN the terminal already holds under another name")
    _wait_option(p)
    p.set_defaults(func=cmd_restore)

    p = actions.add_parser("status", help="last backup per terminal, users without templates, user count drops")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_status)

    p = actions.add_parser("sync", help="copy users enrolled on one terminal to the other terminals of its group")
    p.add_argument("--dry-run", action="store_true", help="list what would be written and the conflicts; write "
                   "nothing")
    p.add_argument("--group", nargs="+", metavar="DEVICE", help="only the group(s) holding these device ids")
    _wait_option(p)
    p.set_defaults(func=cmd_sync)

    p = actions.add_parser("ack-drop", help="accept a terminal's user-count drop (closes the user_drop problem)")
    p.add_argument("devices", nargs="+", metavar="DEVICE", help="device ids")
    p.set_defaults(func=cmd_ack_drop)

    p = actions.add_parser("rotate-key", help="re-encrypt every backup with the current key_file")
    p.set_defaults(func=cmd_rotate_key)

    p = actions.add_parser("audit", help="who backed up, restored or read which terminal's enrolments")
    p.add_argument("--device", help="only this device id")
    p.add_argument("--limit", type=int, default=50, help="newest entries shown (default 50)")
    p.set_defaults(func=cmd_audit)


def _wait_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--wait", type=float, default=DEFAULT_WAIT_S, metavar="SECONDS",
                   help="how long to wait for the running daemon to let go of a terminal (its poll, daily backup "
                   f"or sync) before giving up (default {DEFAULT_WAIT_S:.0f})")


#: Seconds a command waits for another fpgw process (the daemon's poll or daily backup) to let go of a terminal.
DEFAULT_WAIT_S = 120.0


def _terminal_hold(config: Config, wait_s: float) -> Callable[[str], DeviceLock | None]:
    """Takes a terminal's lock file (gateway.devicelock), waiting up to ``wait_s`` with one line on stderr."""
    from gateway.devicelock import DeviceLocks

    locks = DeviceLocks(config.site.state_dir)

    def take(device_id: str) -> DeviceLock | None:
        def told() -> None:
            print(f"{device_id}: another fpgw process holds this terminal (the daemon polls, backs up or syncs "
                  f"it, or another `fpgw enrol`): waiting up to {wait_s:.0f}s", file=sys.stderr)

        return locks.hold(device_id, max(wait_s, 0.0), on_wait=told)

    return take


def _busy(device_id: str, wait_s: float) -> str:
    return (f"{device_id}: still held by another fpgw process after {wait_s:.0f}s (the running daemon polls, backs "
            "up or syncs it); nothing was read or written. Try again later, or with a longer --wait")


def _keyring(config: Config) -> Keyring:
    from gateway.enrol.crypto import EnrolKeyError, Keyring

    try:
        return Keyring.from_config(config.enrol)
    except EnrolKeyError as exc:
        raise CliError(str(exc)) from None


def _device(config: Config, device_id: str) -> DeviceConfig:
    try:
        device = config.device(device_id)
    except KeyError:
        raise CliError(f"unknown device id {device_id!r} (configured: "
                       f"{', '.join(d.id for d in config.devices) or 'none'})") from None
    if device.reads_serial:
        raise CliError(f"{device_id}: a serial clock holds no enrolments the gateway can read (docs/enrolment.md)")
    return device


def _require_tables(repo: EnrolRepo) -> None:
    if not repo.ready():
        raise CliError("the database has no enrolment tables yet: run `fpgw db upgrade` (or start the daemon once)")


def cmd_new_key(args: argparse.Namespace) -> int:
    """Write a fresh key, readable by its owner only; never overwrite an existing file."""
    from gateway.enrol.crypto import new_key_text

    path = Path(args.output)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise CliError(f"{path} exists; a key file is never overwritten (backups sealed with it would be lost)") \
            from None
    except OSError as exc:
        raise CliError(f"cannot create {path}: {exc.strerror or exc}") from None
    with os.fdopen(fd, "w") as out:
        out.write(new_key_text() + "\n")
    print(f"wrote a new enrolment key to {path} (mode 0600); keep a copy off this machine: "
          "without it the backups cannot be restored")
    return EXIT_OK


def cmd_backup(args: argparse.Namespace) -> int:
    """Back up the named terminals (or every polled one), one after another."""
    from gateway.enrol.backup import backup_device, cli_actor
    from gateway.enrol.push import enrol_driver_factory
    from gateway.store.enrol import EnrolRepo

    config = config_of(args)
    keyring = _keyring(config)
    devices = ([_device(config, d) for d in args.devices] if args.devices
               else [d for d in config.devices if d.enabled and not d.reads_serial])
    if not devices:
        raise CliError("no terminal to back up (no enabled ZK, SOAP or push device in the config)")
    engine = open_engine(config, pool_size=1, migrate=True)
    failed = 0
    try:
        repo = EnrolRepo(engine)
        take = _terminal_hold(config, args.wait)
        for device in devices:
            lock = take(device.id)
            if lock is None:
                failed += 1
                print(f"{device.id}: NOT BACKED UP {_busy(device.id, args.wait)}")
                continue
            with lock:
                r = backup_device(device, repo, keyring, actor=cli_actor(), timeout_s=config.enrol.timeout_s,
                                  drop_warn_ratio=config.enrol.drop_warn_ratio,
                                  incremental=config.enrol.incremental and not args.full,
                                  full_every_s=config.enrol.full_every_s,
                                  driver_factory=enrol_driver_factory(config, engine))
            if not r.ok:
                failed += 1
                print(f"{device.id}: FAILED {r.error} ({r.duration_s:.1f}s)")
                continue
            kind = f" incremental (read {r.templates_read}, carried over {r.templates - r.templates_read})" \
                if r.incremental else ""
            print(f"{device.id}: ok serial={r.serial} users={r.users} templates={r.templates}{kind} "
                  f"algorithm={r.algorithm or '?'} without_templates={len(r.without_templates)} ({r.duration_s:.1f}s)")
            if r.dropped_from is not None:
                print(f"  NOTICE: {r.users} users now, {r.dropped_from} at the previous backup: was the terminal "
                      "reset? The earlier backup is kept; restore it with `fpgw enrol restore`")
    finally:
        engine.dispose()
    return EXIT_FAILURE if failed else EXIT_OK


def cmd_restore(args: argparse.Namespace) -> int:
    """Restore OLD's backup to NEW and print one line per user."""
    from drivers.base import DriverError
    from gateway.enrol.backup import cli_actor
    from gateway.enrol.crypto import EnvelopeError
    from gateway.enrol.push import enrol_driver_factory
    from gateway.enrol.restore import RestoreError, restore
    from gateway.store.enrol import EnrolRepo

    config = config_of(args)
    target = _device(config, args.target)
    if args.source == args.target and not args.users:
        print("note: restoring a terminal's own backup to it (e.g. after a factory reset)", file=sys.stderr)
    pins = [p.strip() for p in args.users.split(",") if p.strip()] if args.users else None
    if args.users is not None and not pins:
        raise CliError("--users names no PIN")
    keyring = _keyring(config)
    engine = open_engine(config, pool_size=1, migrate=True)
    lock = _terminal_hold(config, args.wait)(target.id)
    if lock is None:
        engine.dispose()
        raise CliError(_busy(target.id, args.wait))
    try:
        repo = EnrolRepo(engine)
        try:
            report = restore(target, args.source, repo, keyring, actor=cli_actor(), timeout_s=config.enrol.timeout_s,
                             pins=pins, dry_run=args.dry_run, snapshot_id=args.snapshot,
                             drop_warn_ratio=config.enrol.drop_warn_ratio, overwrite=args.overwrite,
                             driver_factory=enrol_driver_factory(config, engine))
        except RestoreError as exc:
            raise CliError(str(exc)) from None
        except EnvelopeError as exc:
            raise CliError(f"the backup of {args.source} cannot be opened with the configured key(s): {exc}") from None
        except DriverError as exc:
            raise CliError(f"{target.id}: {exc.kind}: {exc}") from None
    finally:
        lock.release()
        engine.dispose()
    _print_report(report)
    # Fingers lost for another reason than a known algorithm mismatch (capacity, a refused upload) fail too.
    lost = report.count("user only") and not report.templates_refused
    return EXIT_FAILURE if report.count("skipped") or lost else EXIT_OK


def _print_report(report: RestoreReport) -> None:
    head = report.snapshot
    print(f"{'DRY RUN: ' if report.dry_run else ''}restore of {report.source} backup #{head.id} "
          f"({head.taken_at:%Y-%m-%d %H:%M} UTC, serial {head.serial}, {head.users} users, {head.templates} "
          f"templates, algorithm {head.algorithm or '?'}) to {report.target} "
          f"(algorithm {report.target_algorithm or '?'})")
    if report.templates_refused:
        print(f"TEMPLATES NOT WRITTEN: {report.templates_refused}")
    rows = [[o.user_id, o.status, str(o.fingers), o.reason] for o in report.outcomes]
    print_table(["PIN", "RESULT", "FINGERS", "WHY"], rows, sys.stdout)
    counts: dict[str, int] = {}
    for o in report.outcomes:
        counts[o.status] = counts.get(o.status, 0) + 1
    print(", ".join(f"{n} {status}" for status, n in sorted(counts.items())) + f" ({report.duration_s:.1f}s)")


def cmd_status(args: argparse.Namespace) -> int:
    """One line per terminal: last backup, users, templates, users without templates, drop notice."""
    from gateway.enrol.backup import status
    from gateway.enrol.sync import current_conflicts
    from gateway.store.enrol import EnrolRepo

    config = config_of(args)
    engine = open_engine(config, pool_size=1, migrate=False)
    try:
        repo = EnrolRepo(engine)
        _require_tables(repo)
        rows = status(config, repo)
        conflicts = current_conflicts(repo)
    finally:
        engine.dispose()
    if args.json:
        print(json.dumps([{
            "device": r.device_id,
            "last_backup": r.last.taken_at.isoformat() if r.last else None,
            "snapshot": r.last.id if r.last else None,
            "serial": r.last.serial if r.last else None,
            "users": r.last.users if r.last else None,
            "templates": r.last.templates if r.last else None,
            "algorithm": r.last.algorithm if r.last else None,
            "users_without_templates": list(r.without_templates),
            "user_count_drop": {"before": r.drop[0], "now": r.drop[1]} if r.drop else None,
            "last_attempt_failed": r.last_failure or None,
            "sync_conflicts": [{"pin": key.split("@")[0], "reason": reason} for key, reason in conflicts
                               if r.device_id in key.split("@", 1)[1].split(",")],
        } for r in rows], indent=2))
        return EXIT_OK
    table = []
    for r in rows:
        failed = f"LAST ATTEMPT FAILED {r.last_failure}" if r.last_failure else ""
        if r.last is None:
            table.append([r.device_id, "never", "", "", "", "", failed or "no backup yet"])
            continue
        notes = [f"USER COUNT DROPPED {r.drop[0]} -> {r.drop[1]} (reset?)" if r.drop else "", failed]
        note = "; ".join(n for n in notes if n)
        table.append([r.device_id, f"{r.last.taken_at:%Y-%m-%d %H:%M} UTC", f"#{r.last.id}", str(r.last.users),
                      str(r.last.templates), str(len(r.without_templates)), note])
    print_table(["DEVICE", "LAST BACKUP", "BACKUP", "USERS", "TEMPLATES", "NO TEMPLATE", "NOTICE"], table, sys.stdout)
    if conflicts:
        print(f"office sync conflicts (not written; correct the user on one terminal): {len(conflicts)}")
        print_table(["PIN@DEVICES", "WHY"], [[k, r] for k, r in conflicts], sys.stdout)
    return EXIT_OK


def cmd_ack_drop(args: argparse.Namespace) -> int:
    """Record that the operator accepts the devices' current user counts; the daemon closes the problem."""
    from gateway.enrol.backup import cli_actor
    from gateway.store.enrol import EnrolRepo

    config = config_of(args)
    devices = [_device(config, d) for d in args.devices]
    engine = open_engine(config, pool_size=1, migrate=True)
    try:
        repo = EnrolRepo(engine)
        for device in devices:
            at = repo.acknowledge_drop(device.id)
            repo.audit(cli_actor(), "ack-drop", device.id, detail="user-count drop acknowledged")
            print(f"{device.id}: user-count drop acknowledged at {at:%Y-%m-%d %H:%M:%S} UTC; the running daemon "
                  "closes the user_drop problem within a minute (at its next health sweep)")
    finally:
        engine.dispose()
    return EXIT_OK


def cmd_sync(args: argparse.Namespace) -> int:
    """Keep each group's terminals in step (or list what a sync would do with --dry-run)."""
    from drivers.base import DriverError
    from gateway.enrol.backup import cli_actor
    from gateway.enrol.push import enrol_driver_factory
    from gateway.enrol.sync import sync_groups, sync_office
    from gateway.store.enrol import EnrolRepo

    config = config_of(args)
    for device_id in args.group or ():
        _device(config, device_id)
    groups = sync_groups(config)
    if not groups:
        raise CliError("no group of two or more enabled ZK, SOAP or push terminals to keep in step "
                       "([enrol] sync_groups)")
    engine = open_engine(config, pool_size=1, migrate=True)
    take = _terminal_hold(config, args.wait)

    def hold(device_id: str, job: Callable[[], T]) -> T | None:
        lock = take(device_id)
        if lock is None:
            print(_busy(device_id, args.wait), file=sys.stderr)
            return None
        with lock:
            return job()

    try:
        try:
            results = sync_office(config, EnrolRepo(engine), actor=cli_actor(), dry_run=args.dry_run,
                                  only=args.group or (), hold=hold,
                                  driver_factory=enrol_driver_factory(config, engine))
        except DriverError as exc:
            raise CliError(f"{exc.kind}: {exc}") from None
    finally:
        engine.dispose()
    if not results:
        raise CliError(f"no sync group holds {', '.join(args.group)}")
    failed = False
    for group in results:
        print(f"{'DRY RUN: ' if group.dry_run else ''}group {', '.join(group.devices)}: "
              f"{len(group.plan.actions)} action(s), {len(group.plan.conflicts)} conflict(s)")
        for device_id, why in sorted(group.unreadable.items()):
            print(f"  NOT SYNCED: {device_id} could not be read ({why}); nothing was written to the group")
        if group.plan.actions:
            print_table(["TARGET", "PIN", "ACTION", "FROM"],
                        [[a.target, a.user_id, "copy user and templates" if a.kind == "copy" and a.templates
                          else "copy user only" if a.kind == "copy" else
                          "add templates" if a.kind == "templates" else "delete", a.source]
                         for a in group.plan.actions], sys.stdout)
        for c in group.plan.conflicts:
            print(f"  CONFLICT PIN {c.user_id} ({', '.join(c.devices)}): {c.reason}; not written")
        for note in group.plan.notes:
            print(f"  note: {note}")
        for w in group.writes:
            if w.error:
                print(f"  {w.device_id}: FAILED {w.error}")
            else:
                print(f"  {w.device_id}: wrote {w.users} user(s), {w.templates} template(s), deleted {w.deleted}")
            for pin, why in sorted(w.failed.items()):
                print(f"    PIN {pin}: {why}")
        failed = failed or not group.ok
    return EXIT_FAILURE if failed else EXIT_OK


def cmd_rotate_key(args: argparse.Namespace) -> int:
    """Re-seal everything with the current key (older keys from old_key_files open the old blobs)."""
    from gateway.enrol.backup import cli_actor, rotate_key
    from gateway.store.enrol import EnrolRepo

    config = config_of(args)
    keyring = _keyring(config)
    engine = open_engine(config, pool_size=1, migrate=True)
    try:
        result = rotate_key(EnrolRepo(engine), keyring, actor=cli_actor())
    finally:
        engine.dispose()
    print(f"re-encrypted {result.resealed} value(s) with key {keyring.current.key_id}")
    if result.failed:
        print(f"{result.failed} value(s) could not be opened with any configured key and were left as they were:")
        for reason in result.reasons:
            print(f"  {reason}")
        return EXIT_FAILURE
    print("every backup now uses the current key; the old key files can be removed from old_key_files")
    return EXIT_OK


def cmd_audit(args: argparse.Namespace) -> int:
    """The newest audit rows."""
    from gateway.store.enrol import EnrolRepo

    config = config_of(args)
    engine = open_engine(config, pool_size=1, migrate=False)
    try:
        repo = EnrolRepo(engine)
        _require_tables(repo)
        rows = repo.audit_rows(args.device, args.limit)
    finally:
        engine.dispose()
    print_table(["WHEN (UTC)", "WHO", "WHAT", "DEVICE", "USERS", "TEMPLATES", "OK", "DETAIL"],
                [[f"{r.at:%Y-%m-%d %H:%M:%S}", r.actor, r.action, r.device_id, str(r.users), str(r.templates),
                  "yes" if r.ok else "NO", r.detail] for r in rows], sys.stdout)
    return EXIT_OK

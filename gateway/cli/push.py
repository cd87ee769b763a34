"""`fpgw devices sync-time|reboot|query-log|commands|unknown|add-push` (and `clear` of a push terminal): the
maintenance actions on terminals that call us (driver = "push"), through the command queue.

    fpgw devices reboot DEVICE -> PushRepo.queue_command (kv table) -> the daemon's receiver hands it out at the
        terminal's next getrequest -> the terminal answers on /iclock/devicecmd -> PushRepo.record_result
        -> this command (--wait) or `fpgw devices commands` shows the result; the daemon marks a command that is
        never answered timed out after push.command_timeout_s
    fpgw devices unknown -> the terminals that pushed with a serial no device has (address, serial, when)
    fpgw devices add-push SERIAL --id ID -> appends a [[devices]] table to the config file (validated first)

Registered by gateway.cli.devices under `devices`; imports only gateway.cli.common and what it needs below.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import datetime
from pathlib import Path

from gateway.cli.common import EXIT_FAILURE, EXIT_OK, CliError, config_of, open_engine, print_table
from gateway.config import Config, ConfigError, DeviceConfig, load_config
from gateway.push import protocol as p

#: States of a command that will not change any more.
FINAL = ("done", "failed", "timeout", "refused")


def register_actions(actions: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the push actions to `fpgw devices`."""
    for name, helptext in (("sync-time", "push terminal: make it set its clock from the gateway (CHECK)"),
                           ("reboot", "push terminal: restart it")):
        a = actions.add_parser(name, help=helptext)
        a.add_argument("device", metavar="DEVICE", help="device id of a push terminal")
        _wait_option(a)
        a.set_defaults(func=cmd_simple, push_command=name, one_shot=True)
    a = actions.add_parser("query-log", help="push terminal: upload its records of a date range again (gap repair)")
    a.add_argument("device", metavar="DEVICE", help="device id of a push terminal")
    a.add_argument("--from", dest="date_from", required=True, metavar="DATE",
                   help="start, terminal-local: 2026-11-30 or '2026-11-30 07:00'")
    a.add_argument("--to", dest="date_to", required=True, metavar="DATE",
                   help="end (a date alone means the end of that day)")
    _wait_option(a)
    a.set_defaults(func=cmd_query_log, one_shot=True)
    a = actions.add_parser("commands", help="push terminals: commands queued and their results")
    a.add_argument("device", nargs="?", metavar="DEVICE", help="only this device")
    a.add_argument("--json", action="store_true", help="print JSON")
    a.set_defaults(func=cmd_commands, one_shot=True)
    a = actions.add_parser("unknown", help="terminals that push with a serial no device has (IP, serial)")
    a.add_argument("--json", action="store_true", help="print JSON")
    a.set_defaults(func=cmd_unknown, one_shot=True)
    a = actions.add_parser("add-push", help="add a push terminal (e.g. one listed by `devices unknown`) to the config")
    a.add_argument("serial", metavar="SERIAL", help="the terminal's serial number (as `devices unknown` shows it)")
    a.add_argument("--id", dest="device_id", required=True, help="device id to give it (letters, digits, _ . -)")
    a.add_argument("--name", default="", help="human-readable name")
    a.add_argument("--timezone", default="", help="its IANA zone when not the office's")
    a.set_defaults(func=cmd_add_push, one_shot=True)


def _wait_option(a: argparse.ArgumentParser) -> None:
    a.add_argument("--wait", type=float, default=60.0, metavar="SECONDS",
                   help="wait this long for the terminal's answer (default 60; 0 = just queue it)")


def _local_time(option: str, text: str, *, end: bool = False) -> datetime:
    """A terminal-local time; a date alone is the start of that day (or its last second for ``end``)."""
    for fmt in ("%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%d"):
        try:
            value = datetime.strptime(text.strip(), fmt)
        except ValueError:
            continue
        return value.replace(hour=23, minute=59, second=59) if end and fmt == "%Y-%m-%d" else value
    raise CliError(f"{option}: expected a date like 2026-11-30 or '2026-11-30 07:00', got {text!r}")


def push_device(config: Config, device_id: str) -> DeviceConfig:
    """The configured push terminal of that id (CliError naming the push devices otherwise)."""
    pushing = [d for d in config.devices if d.pushes]
    for d in config.devices:
        if d.id == device_id:
            if not d.pushes:
                raise CliError(f"{device_id} is not a push terminal (driver = {d.driver!r}); this action is for push "
                               "terminals")
            return d
    raise CliError(f"unknown device {device_id!r} (push devices: {', '.join(d.id for d in pushing) or 'none'})")


def _queue(args: argparse.Namespace, device: DeviceConfig, kind: str, text: str) -> int:
    from gateway.store.push import PushRepo

    engine = open_engine(config_of(args), pool_size=1, migrate=True)
    try:
        repo = PushRepo(engine)
        try:
            cmd = repo.queue_command(device.id, device.serial or "", kind, text)
        except ValueError as exc:
            raise CliError(str(exc)) from None
        print(f"{kind} queued for {device.id} (command {cmd.id}); the terminal takes it at its next call")
        deadline = time.monotonic() + max(args.wait, 0.0)
        while True:
            now = next((c for c in repo.commands(device.serial) if c.id == cmd.id), cmd)
            if now.state in FINAL or time.monotonic() >= deadline:
                break
            time.sleep(1.0)
    finally:
        engine.dispose()
    if now.state == "done":
        print(f"{device.id}: {kind} done")
        return EXIT_OK
    if now.state in ("failed", "timeout", "refused"):
        print(f"{device.id}: {kind} {now.state}: {now.result or 'no answer from the terminal'}")
        return EXIT_FAILURE
    if args.wait > 0:
        print(f"{device.id}: no answer yet ({now.state}); see `fpgw devices commands {device.id}` (the daemon marks it "
              f"timed out after push.command_timeout_s = {config_of(args).push.command_timeout_s:g} s)")
    return EXIT_OK


def cmd_simple(args: argparse.Namespace) -> int:
    """sync-time, reboot."""
    device = push_device(config_of(args), args.device)
    return _queue(args, device, args.push_command, p.SIMPLE_COMMANDS[args.push_command])


def cmd_query_log(args: argparse.Namespace) -> int:
    """DATA QUERY ATTLOG for a range: the terminal uploads those records again; stored ones are not duplicated."""
    device = push_device(config_of(args), args.device)
    start, end = _local_time("--from", args.date_from), _local_time("--to", args.date_to, end=True)
    if end < start:
        raise CliError("--to is before --from")
    return _queue(args, device, "query-log", p.query_attlog_command(start, end))


def cmd_clear_push(args: argparse.Namespace) -> int:
    """`fpgw devices clear` of a push terminal: CLEAR LOG only when every record it reported is stored.

    Checked twice: here against the last count the terminal reported (a quick refusal), and again by the
    receiver when the terminal takes the command, against the count it sends with that very call.
    """
    from gateway.store.punches import Store
    from gateway.store.push import PushRepo

    config = config_of(args)
    device = push_device(config, args.device)
    engine = open_engine(config, pool_size=1, migrate=True)
    try:
        state = Store(engine, config.site.office_code).device_state(device.id)
        stored = PushRepo(engine).stored_punches(device.serial or "")
    finally:
        engine.dispose()
    reported = state.last_record_count
    if reported is None:
        raise CliError(f"{device.id} has not reported its record count yet (it does with every command poll); "
                       "nothing cleared")
    if stored < reported:
        raise CliError(f"{device.id} holds {reported} records but only {stored} are stored: not clearing. Repair "
                       f"the gap first: fpgw devices query-log {device.id} --from ... --to ...")
    if args.dry_run:
        print(f"{device.id}: {reported} records reported, {stored} stored: a clear would be queued")
        return EXIT_OK
    if not args.yes:
        raise CliError(f"not clearing {device.id}: confirm with --yes")
    args.wait = getattr(args, "wait", 60.0)
    return _queue(args, device, "clear", p.SIMPLE_COMMANDS["clear"])


def cmd_commands(args: argparse.Namespace) -> int:
    """List commands of push terminals."""
    from gateway.enrol.push import command_summary
    from gateway.store.push import PushRepo

    config = config_of(args)
    serial = push_device(config, args.device).serial if args.device else None
    engine = open_engine(config, pool_size=1, migrate=False)
    try:
        commands = PushRepo(engine).commands(serial)
    finally:
        engine.dispose()
    if args.json:
        # A sealed enrolment command (a template or password inside) is shown by its summary only.
        print(json.dumps([{**c.__dict__, "text": command_summary(c.text)} for c in commands], indent=2))
        return EXIT_OK
    print_table(["device", "command", "id", "state", "queued", "answered", "result"],
                [[c.device_id, c.kind, c.id, c.state, c.queued_at[:19], (c.answered_at or "")[:19], c.result or ""]
                 for c in commands], sys.stdout)
    return EXIT_OK


def cmd_unknown(args: argparse.Namespace) -> int:
    """Terminals trying to push that no device config names."""
    from gateway.store.push import PushRepo

    config = config_of(args)
    engine = open_engine(config, pool_size=1, migrate=False)
    try:
        unknown = PushRepo(engine).unknown_terminals()
    finally:
        engine.dispose()
    if args.json:
        print(json.dumps(unknown, indent=2))
        return EXIT_OK
    if not unknown:
        print("no unknown terminal has tried to push")
        return EXIT_OK
    print_table(["serial", "address", "first seen", "last seen", "calls"],
                [[str(u.get("serial")), str(u.get("address")), str(u.get("first_seen", ""))[:19],
                  str(u.get("last_seen", ""))[:19], str(u.get("requests", ""))] for u in unknown], sys.stdout)
    print(f"\nadd one with: fpgw devices add-push {unknown[0].get('serial')} --id <device-id>   (then restart fpgw)")
    return EXIT_OK


def cmd_add_push(args: argparse.Namespace) -> int:
    """Append a push terminal to the config file (validated as a whole before it is written)."""
    config = config_of(args)
    if config.source is None:
        raise CliError("the config was not read from a file; add the device by hand")
    if not p.SERIAL.match(args.serial):
        raise CliError(f"{args.serial!r} is not a terminal serial (letters, digits, '_' or '-')")
    if any(d.serial and d.serial.lower() == args.serial.lower() for d in config.devices):
        raise CliError(f"a device with serial {args.serial} is already configured")
    block = ["", "[[devices]]", f"id = {json.dumps(args.device_id)}", 'driver = "push"',
             f"serial = {json.dumps(args.serial)}"]
    if args.name:
        block.append(f"name = {json.dumps(args.name)}")
    if args.timezone:
        block.append(f"timezone = {json.dumps(args.timezone)}")
    path = Path(config.source)
    text = path.read_text(encoding="utf-8")
    new_text = text + ("" if text.endswith("\n") else "\n") + "\n".join(block) + "\n"
    tmp = path.with_name(f".{path.name}.fpgw-new")
    tmp.write_text(new_text, encoding="utf-8")
    try:
        load_config(tmp)  # the whole file must still be valid, or nothing changes
    except ConfigError as exc:
        tmp.unlink()
        raise CliError("the device was not added: " + "; ".join(exc.problems)) from None
    os.replace(tmp, path)
    from gateway.store.push import PushRepo

    engine = open_engine(config, pool_size=1, migrate=False)
    try:
        PushRepo(engine).forget_unknown(args.serial)
    finally:
        engine.dispose()
    print(f"added push terminal {args.device_id} (serial {args.serial}) to {path}; restart fpgw to serve it "
          "(systemctl restart fpgw)")
    return EXIT_OK

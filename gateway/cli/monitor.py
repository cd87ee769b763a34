"""`fpgw` commands of the health area: `devices mute|unmute`, `alerts`, `report`.

Registered by gateway.cli.main through ``register(subparsers)``; every command reads the same database as the
daemon (gateway.store.health). A mute written here is picked up by the running daemon at its next
sweep (within 30 s); unmuting re-sends the problems still open once.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from gateway.config import Config

_DURATION = re.compile(r"^\s*(?:(\d+)\s*d)?\s*(?:(\d+)\s*h)?\s*(?:(\d+)\s*m(?:in)?)?\s*(?:(\d+)\s*s)?\s*$", re.I)


def parse_duration(text: str) -> timedelta:
    """"2h", "30m", "1d", "1h30m", "90s" or plain seconds -> timedelta (argparse type)."""
    if text.strip().isdigit():
        return timedelta(seconds=int(text))
    m = _DURATION.match(text)
    if not m or not any(m.groups()):
        raise argparse.ArgumentTypeError(f"not a duration like 2h, 30m, 1d or 1h30m: {text!r}")
    d, h, mi, s = (int(x) if x else 0 for x in m.groups())
    value = timedelta(days=d, hours=h, minutes=mi, seconds=s)
    if value <= timedelta(0):
        raise argparse.ArgumentTypeError("the duration must be longer than 0")
    return value


def _day(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {text!r}") from None


def _since(text: str) -> datetime:
    """A date (YYYY-MM-DD, site-local midnight is applied later) or a duration back from now (e.g. 24h)."""
    try:
        return datetime.combine(date.fromisoformat(text), datetime.min.time())
    except ValueError:
        pass
    try:
        return datetime.now(UTC) - parse_duration(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD) or a duration (24h, 7d): {text!r}") from None


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add `devices mute|unmute`, `alerts` and `report`."""
    devices = subparsers.choices.get("devices")
    if devices is not None:
        actions = devices.add_subparsers(dest="devices_action", metavar="ACTION")
        actions.required = False
    else:  # pragma: no cover - only if the core `devices` command disappears
        devices = subparsers.add_parser("devices", help="device maintenance")
        actions = devices.add_subparsers(dest="devices_action", metavar="ACTION")
        actions.required = True
    p = actions.add_parser("mute", help="silence a device's alerts during maintenance (still recorded)")
    p.add_argument("device", metavar="DEVICE", help="device id (see `fpgw devices`)")
    p.add_argument("--for", dest="duration", type=parse_duration, default=timedelta(hours=2), metavar="DURATION",
                   help="how long, e.g. 2h, 30m, 1d (default 2h)")
    p.add_argument("--reason", default="", help="shown on the status page and in `fpgw devices`")
    p.set_defaults(func=cmd_mute, one_shot=True)
    p = actions.add_parser("unmute", help="end a mute now (problems still open are sent once)")
    p.add_argument("device", metavar="DEVICE", help="device id")
    p.set_defaults(func=cmd_unmute, one_shot=True)

    p = subparsers.add_parser("alerts", help="alert history (newest first)")
    p.add_argument("--device", metavar="DEVICE", help="only this device")
    p.add_argument("--since", type=_since, metavar="WHEN", help="YYYY-MM-DD or a duration back (24h, 7d)")
    p.add_argument("--open", action="store_true", help="only problems that are open now (from device health)")
    p.add_argument("--limit", type=int, default=50, help="at most this many rows (default 50)")
    p.add_argument("--json", action="store_true", help="JSON lines instead of a table")
    p.set_defaults(func=cmd_alerts, one_shot=True)

    p = subparsers.add_parser("report", help="daily device report: punches, silent and offline days per device")
    p.add_argument("--from", dest="day_from", type=_day, metavar="YYYY-MM-DD",
                   help="first day (default: 6 days before --to)")
    p.add_argument("--to", dest="day_to", type=_day, metavar="YYYY-MM-DD", help="last day (default: today)")
    p.add_argument("--device", action="append", metavar="DEVICE", help="only these devices (repeatable)")
    p.add_argument("--format", choices=("text", "csv", "json"), default="text")
    p.add_argument("--output", "-o", metavar="FILE", help="write to FILE instead of stdout")
    p.set_defaults(func=cmd_report, one_shot=True)


def _open(args: argparse.Namespace) -> tuple[Config, Any, Any]:
    from gateway.store.db import create_db_engine, upgrade
    from gateway.store.health import HealthRepo

    config: Config = args.loaded_config
    engine = create_db_engine(config.database.url, pool_size=1)
    if config.database.auto_migrate:
        upgrade(engine)
    return config, engine, HealthRepo(engine, config.site.office_code)


def _fail(message: str) -> int:
    print(f"fpgw: {message}", file=sys.stderr)
    return 1


def _known(config: Config, device_id: str) -> bool:
    return any(d.id == device_id for d in config.devices)


def cmd_mute(args: argparse.Namespace) -> int:
    """Mute a device's alerts for a while."""
    config, engine, repo = _open(args)
    try:
        if not _known(config, args.device):
            return _fail(f"unknown device {args.device!r} (devices: {', '.join(d.id for d in config.devices)})")
        from gateway.store.punches import Store

        Store(engine, config.site.office_code).sync_devices(config.devices)
        until = datetime.now(UTC) + args.duration
        repo.set_mute(args.device, until, args.reason or None)
    finally:
        engine.dispose()
    local = until.astimezone(ZoneInfo(config.site.timezone))
    print(f"{args.device}: alerts muted until {local:%Y-%m-%d %H:%M} ({config.site.timezone})"
          + (f" - {args.reason}" if args.reason else "") + "; problems are still recorded and shown")
    return 0


def cmd_unmute(args: argparse.Namespace) -> int:
    """End a device's mute."""
    config, engine, repo = _open(args)
    try:
        if not _known(config, args.device):
            return _fail(f"unknown device {args.device!r}")
        try:
            repo.set_mute(args.device, None)
        except KeyError:
            return _fail(f"device {args.device!r} is not in the database yet (start the daemon once)")
    finally:
        engine.dispose()
    print(f"{args.device}: alerts unmuted; the daemon re-sends problems still open within 30 s")
    return 0


def cmd_alerts(args: argparse.Namespace) -> int:
    """Print the alert history or the open problems."""
    config, engine, repo = _open(args)
    tz = ZoneInfo(config.site.timezone)
    try:
        if args.open:
            rows = []
            for h in repo.load_health():
                if args.device and h.device_id != args.device:
                    continue
                for p in h.problems.values():
                    rows.append({"device": h.device_id, "problem": p.name, "severity": p.severity,
                                 "since": p.since.isoformat(), "detail": p.detail})
            if args.json:
                for r in rows:
                    print(json.dumps(r))
            else:
                for r in sorted(rows, key=lambda r: r["since"]):
                    since = datetime.fromisoformat(r["since"]).astimezone(tz)
                    print(f"{since:%Y-%m-%d %H:%M}  {r['device']:<12} {r['severity']:<8} {r['problem']:<16} "
                          f"{r['detail']}")
                if not rows:
                    print("no open problems")
            return 0
        since = args.since
        if since is not None and since.tzinfo is None:
            since = since.replace(tzinfo=tz)
        alerts = repo.list_alerts(device_id=args.device, since=since, limit=max(1, args.limit))
    finally:
        engine.dispose()
    if args.json:
        for a in alerts:
            print(json.dumps({"id": a.id, "created_at": a.created_at.isoformat(), "device": a.device_id,
                              "serial": a.device_serial, "problem": a.problem, "event": a.event,
                              "severity": a.severity, "title": a.title, "muted": a.muted,
                              "delivered_at": a.delivered_at.isoformat() if a.delivered_at else None,
                              "attempts": a.attempts, "last_error": a.last_error}))
        return 0
    if not alerts:
        print("no alerts")
        return 0
    print(f"{'time':<16}  {'device':<12} {'event':<9} {'severity':<8} {'problem':<16} delivery")
    for a in alerts:
        delivery = "muted" if a.muted else "log only" if a.delivered_at and not a.attempts else \
            "sent" if a.delivered_at else \
            f"pending ({a.attempts} tries: {a.last_error})" if a.attempts else "pending"
        print(f"{a.created_at.astimezone(tz):%Y-%m-%d %H:%M}  {a.device_id or '-':<12} {a.event:<9} "
              f"{a.severity:<8} {a.problem:<16} {delivery}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """Daily device report."""
    from gateway.health.report import build_report, render_csv, render_json, render_text

    config, engine, repo = _open(args)
    today = datetime.now(ZoneInfo(config.site.timezone)).date()
    day_to = args.day_to or today
    day_from = args.day_from or day_to - timedelta(days=6)
    if day_to < day_from:
        engine.dispose()
        return _fail(f"--to {day_to} is before --from {day_from}")
    if (day_to - day_from).days > 366:
        engine.dispose()
        return _fail("at most one year per report")
    try:
        unknown = [d for d in args.device or [] if not _known(config, d)]
        if unknown:
            return _fail(f"unknown device(s): {', '.join(unknown)}")
        rows = build_report(repo, config, day_from, day_to, device_ids=args.device)
    finally:
        engine.dispose()
    text = render_csv(rows) if args.format == "csv" else render_json(rows, config, day_from, day_to) \
        if args.format == "json" else render_text(rows, config)
    if args.output:
        with open(args.output, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
        print(f"report written to {args.output} ({len(rows)} rows)", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0

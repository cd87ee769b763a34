"""`fpgw alerts`: the alert history (newest first), or with --open the problems open right now.

    alerts        -> gateway.store.health.HealthRepo.list_alerts -> table / JSON lines
    alerts --open -> HealthRepo.load_health (the monitor's device_health rows) -> open problems
"""

from __future__ import annotations

import argparse
import json
from datetime import UTC, date, datetime
from typing import Any
from zoneinfo import ZoneInfo

from gateway.cli.common import EXIT_OK, config_of, open_health, parse_duration


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


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `alerts`."""
    p = subparsers.add_parser("alerts", help="alert history (newest first)")
    p.add_argument("--device", metavar="DEVICE", help="only this device")
    p.add_argument("--since", type=_since, metavar="WHEN", help="YYYY-MM-DD or a duration back (24h, 7d)")
    p.add_argument("--open", action="store_true", help="only problems that are open now (from device health)")
    p.add_argument("--limit", type=int, default=50, help="at most this many rows (default 50)")
    p.add_argument("--json", action="store_true", help="JSON lines instead of a table")
    p.set_defaults(func=cmd_alerts, one_shot=True)


def cmd_alerts(args: argparse.Namespace) -> int:
    """Print the alert history or the open problems."""
    config = config_of(args)
    engine, repo = open_health(config)
    tz = ZoneInfo(config.site.timezone)
    try:
        if args.open:
            rows: list[dict[str, Any]] = []
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
            return EXIT_OK
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
        return EXIT_OK
    if not alerts:
        print("no alerts")
        return EXIT_OK
    print(f"{'time':<16}  {'device':<12} {'event':<9} {'severity':<8} {'problem':<16} delivery")
    for a in alerts:
        delivery = "muted" if a.muted else "log only" if a.delivered_at and not a.attempts else \
            "sent" if a.delivered_at else \
            f"pending ({a.attempts} tries: {a.last_error})" if a.attempts else "pending"
        print(f"{a.created_at.astimezone(tz):%Y-%m-%d %H:%M}  {a.device_id or '-':<12} {a.event:<9} "
              f"{a.severity:<8} {a.problem:<16} {delivery}")
    return EXIT_OK

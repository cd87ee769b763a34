"""`fpgw forward status|retry-rejected|now`: forwarding to the central (BKD) server, seen and repaired by hand.

    status          -> gateway.store.outbox: depth, oldest waiting punch, rejected rows (exit 1 when late)
    retry-rejected  -> gateway.store.outbox.Outbox.retry_rejected: back in the queue for the daemon's next run
    now             -> gateway.forward.forwarder.Forwarder.run_once (even during a backoff)
"""

from __future__ import annotations

import argparse
import json

from gateway.cli.common import CliError, config_of, open_engine
from gateway.humanize import duration_text


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `forward` and its actions."""
    f = subparsers.add_parser("forward", help="forwarding to the central (BKD) server: status and repair")
    fsub = f.add_subparsers(dest="forward_command", metavar="COMMAND", required=True)
    q = fsub.add_parser("status", help="outbox depth, oldest unforwarded punch, rejected punches")
    q.add_argument("--json", action="store_true", help="machine-readable output")
    q.set_defaults(func=cmd_forward_status, one_shot=True)
    q = fsub.add_parser("retry-rejected", help="put punches the upstream refused back in the queue")
    q.add_argument("punch_ids", nargs="*", type=int, metavar="PUNCH_ID", help="only these (default: all)")
    q.set_defaults(func=cmd_forward_retry, one_shot=True)
    q = fsub.add_parser("now", help="forward once now (even during a backoff) and print what happened")
    q.set_defaults(func=cmd_forward_now, one_shot=True)


def cmd_forward_status(args: argparse.Namespace) -> int:
    """Print outbox depth, oldest age and rejected rows; exit 1 when the backlog is past alert_after_s."""
    from gateway.store.outbox import Outbox

    config = config_of(args)
    engine = open_engine(config, pool_size=2, migrate=True)
    try:
        outbox = Outbox(engine, config.site.office_code)
        stats = outbox.stats()
        rejected = outbox.rejected(20)
    finally:
        engine.dispose()
    late = stats.oldest_age_s is not None and stats.oldest_age_s > config.forward.alert_after_s
    if args.json:
        print(json.dumps({"upstream": config.forward.url or None, "depth": stats.depth,
                          "oldest_age_s": stats.oldest_age_s, "rejected": stats.rejected, "late": late,
                          "rejected_examples": [{k: (v.isoformat() if hasattr(v, "isoformat") else v)
                                                 for k, v in r.items()} for r in rejected]}))
        return 1 if late else 0
    print(f"upstream:        {config.forward.url or '(forwarding off: [forward] url is empty)'}")
    print(f"waiting:         {stats.depth} punch(es)")
    if stats.oldest_age_s is not None:
        print(f"oldest waiting:  {duration_text(stats.oldest_age_s)}" + ("  (LATE: past forward.alert_after_s)" if late
                                                                  else ""))
    print(f"rejected:        {stats.rejected} punch(es)" + ("  -> fix the cause, then `fpgw forward retry-rejected`"
                                                             if stats.rejected else ""))
    for r in rejected:
        print(f"  #{r['punch_id']} {r['device_id']} {r['device_user_id']} {r['device_time']}: {r['last_error']}")
    return 1 if late else 0


def cmd_forward_retry(args: argparse.Namespace) -> int:
    """Requeue rejected punches."""
    from gateway.store.outbox import Outbox

    config = config_of(args)
    engine = open_engine(config, pool_size=2, migrate=True)
    try:
        n = Outbox(engine, config.site.office_code).retry_rejected(args.punch_ids or None)
    finally:
        engine.dispose()
    print(f"{n} rejected punch(es) queued again; the daemon sends them on its next forwarding run")
    return 0


def cmd_forward_now(args: argparse.Namespace) -> int:
    """Run one forwarding pass now."""
    from gateway.forward.forwarder import Forwarder
    from gateway.store.outbox import Outbox

    config = config_of(args)
    if not config.forward.url:
        raise CliError("forwarding is off: set [forward] url and token_env/token_file")
    engine = open_engine(config, pool_size=2, migrate=True)
    fwd = Forwarder(config, Outbox(engine, config.site.office_code))
    try:
        report = fwd.run_once()
    finally:
        fwd.stop(5)
        engine.dispose()
    print(f"sent {report.sent}, accepted {report.accepted} ({report.duplicates} already there), "
          f"rejected {report.rejected}, kept {report.kept}" + (f"; upstream problem: {fwd.last_error}"
                                                             if report.error else ""))
    return 1 if report.error else 0

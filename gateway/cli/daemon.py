"""`fpgw run` and `fpgw poll`: the daemon itself, and one poll of chosen devices done by hand.

    run   -> gateway.app.Gateway.run_forever() until SIGTERM/SIGINT (what systemd starts)
    poll  -> gateway.polling.poller.DevicePoller.poll_once per device, sequentially -> one line each
             (on a terminal, a long download shows a live progress line on stderr meanwhile; otherwise its
             progress lines go to the log, every few seconds)
"""

from __future__ import annotations

import argparse
import gc
import logging
import sys
import time
from collections.abc import Callable
from typing import TextIO

from drivers.base import collector_paused
from gateway.cli.common import (
    EXIT_CANNOT_LISTEN,
    EXIT_FAILURE,
    EXIT_OK,
    CliError,
    config_of,
    open_store,
    options_after_command,
)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `run` and `poll`."""
    p = subparsers.add_parser("run", parents=[options_after_command()],
                              help="run the gateway daemon (what systemd starts)",
                              description="Run the gateway daemon until SIGTERM/SIGINT. Exit codes: 0 stopped, "
                                          f"2 invalid config, {EXIT_CANNOT_LISTEN} a port cannot be listened on "
                                          "(systemd does not restart it: fix the config), 1 other failures.")
    p.set_defaults(func=cmd_run, one_shot=False)

    p = subparsers.add_parser("poll", parents=[options_after_command()],
                              help="poll devices once now and print what was found")
    p.add_argument("devices", nargs="*", metavar="DEVICE", help="device ids (see `fpgw devices`)")
    p.add_argument("--all", action="store_true", help="poll every enabled device")
    # The process may end without freeing the poll's objects one by one (gateway.cli.main.end_process).
    p.set_defaults(func=cmd_poll, one_shot=True, exit_without_teardown=True)


def cmd_run(args: argparse.Namespace) -> int:
    """Run the daemon until SIGTERM/SIGINT."""
    from gateway.app import Gateway
    from gateway.web.server import ListenerError

    gateway = Gateway(config_of(args))
    try:
        return gateway.run_forever()
    except ListenerError as exc:
        # Already stopped cleanly by Gateway.start; one line instead of a traceback.
        print(f"fpgw: cannot start: {exc}", file=sys.stderr)
        return EXIT_CANNOT_LISTEN


def cmd_poll(args: argparse.Namespace) -> int:
    """Poll the named devices (or all) once, sequentially, and print one line each."""
    config = config_of(args)
    # Push terminals call us and serial-line clocks write to us: neither is polled.
    enabled = [d for d in config.devices if d.enabled and not d.pushes and not d.reads_serial]
    if args.all or not args.devices:
        if not args.all and not args.devices:
            raise CliError("name the devices to poll, or use --all (devices: "
                           + (", ".join(d.id for d in config.devices) or "none configured") + ")")
        chosen = enabled
    else:
        known = {d.id: d for d in config.devices}
        unknown = [i for i in args.devices if i not in known]
        if unknown:
            raise CliError(f"unknown device id(s): {', '.join(unknown)} (configured: {', '.join(known) or 'none'})")
        chosen = [known[i] for i in args.devices]
        pushing = [d.id for d in chosen if d.pushes]
        reading = [d.id for d in chosen if d.reads_serial]
        if reading:
            raise CliError(f"{', '.join(reading)}: serial-line clock(s) write their punches to the running daemon "
                           "and cannot be polled (docs/serial.md)")
        if pushing:
            raise CliError(f"{', '.join(pushing)}: push terminal(s) call the gateway themselves and cannot be polled; "
                           "`fpgw devices query-log` asks one to upload a range again")
    display = progress_line(sys.stderr)
    progress_log = logging.getLogger(PROGRESS_LOGGER)
    level_before = progress_log.level
    if display is None and args.log_level is None:
        # Not on a terminal (cron, a pipe, a log file): no live line, so the download's progress lines are logged
        # (INFO, every few seconds) although one-shot commands otherwise log warnings only.
        progress_log.setLevel(logging.INFO)
    # The set-up (the poller's modules, the database, created on a new gateway) makes objects that live as long as
    # the process: the collector walked them all once or twice meanwhile (30 ms), and would walk them again after
    # every poll. So it is off while they are made, and in a process of its own (not main() called in-process,
    # as tests do) they are then left out of its walks for good (gc.freeze).
    ends_process = getattr(args, "process_ends_after", False)
    with collector_paused():
        from gateway.polling.poller import DevicePoller

        engine, store = open_store(config)
        if ends_process:
            gc.freeze()
    try:
        store.sync_devices(config.devices)
        poller = DevicePoller(config, store, progress_display=display)
        failed = 0
        for n, dev in enumerate(chosen, 1):
            # A 100k-record poll makes several objects per punch that live until its store committed; the collector
            # walked them about 500 times (0.25 s of a first poll's 1.5 s, benchmarks/bench_poll.py, issue 14). What
            # only it frees (a few reference cycles per poll) waits until the poll ended. The last poll of a process
            # that ends right after it leaves it off: its next run would only walk that poll's objects once more
            # before the operating system frees them all (gateway.cli.main.end_process). The daemon keeps it on.
            with collector_paused(resume=not (ends_process and n == len(chosen))):
                o = poller.poll_once(dev)
            if o.ok:
                counts = o.counts
                cap = f"/{counts.records_cap}" if counts and counts.records_cap else ""
                skew = f" clock_skew={o.clock_skew_s:+.0f}s" if o.clock_skew_s is not None else ""
                print(f"{dev.id}: ok serial={o.serial} mode={o.mode} records={counts.records if counts else '?'}{cap}"
                      f" read={o.records_read} new={o.new_punches}{skew} ({o.duration_s:.1f}s)")
                if o.previous_serial:
                    print(f"  note: serial changed from {o.previous_serial} (terminal replaced?)")
                if o.flag_counts:
                    print("  flagged: " + ", ".join(f"{k}={v}" for k, v in sorted(o.flag_counts.items())))
            else:
                failed += 1
                print(f"{dev.id}: FAILED {o.error_kind}: {o.error} ({o.duration_s:.1f}s)")
    finally:
        engine.dispose()
        progress_log.setLevel(level_before)
    return EXIT_FAILURE if failed else EXIT_OK


#: The logger of gateway.polling.progress (its INFO lines: records read / expected, rate).
PROGRESS_LOGGER = "gateway.polling.progress"


class ProgressLine:
    """`fpgw poll`'s live download line on a terminal: ``device: 41,000/100,000 records (41 %), 52,000/s``.

    Redrawn in place (carriage return) at most ``min_interval_s`` apart, and wiped when the download ends,
    so the result lines printed afterwards stay clean.
    """

    def __init__(self, stream: TextIO, *, min_interval_s: float = 0.1,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.stream = stream
        self.min_interval_s = min_interval_s
        self._clock = clock
        self._drawn_at: float | None = None
        self._width = 0

    def update(self, device_id: str, records_read: int, records_expected: int, rate: float) -> None:
        """Redraw the line (skipped when the last redraw was less than min_interval_s ago)."""
        now = self._clock()
        if self._drawn_at is not None and now - self._drawn_at < self.min_interval_s:
            return
        self._drawn_at = now
        if records_expected > 0:
            share = min(100, records_read * 100 // records_expected)
            done = f"{records_read:,}/{records_expected:,} records ({share} %)"
        else:
            done = f"{records_read:,} records"
        text = f"{device_id}: reading the attendance log: {done}, {rate:,.0f}/s"
        self.stream.write("\r" + text.ljust(self._width))
        self.stream.flush()
        self._width = max(self._width, len(text))

    def finish(self) -> None:
        """Wipe the line."""
        if self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self.stream.flush()
        self._width, self._drawn_at = 0, None


def progress_line(stream: TextIO) -> ProgressLine | None:
    """A ProgressLine on ``stream`` when it is a terminal; None otherwise (a pipe or a log file gets no \\r lines)."""
    try:
        return ProgressLine(stream) if stream.isatty() else None
    except (AttributeError, ValueError):  # replaced or closed stream
        return None

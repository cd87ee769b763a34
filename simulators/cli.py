"""``fpgw-sim``: run a simulated fleet of ZK terminals, or control a running one (``fpgw-sim ctl``).

Thin layer over ``simulators.zk``: flags or a fleet TOML file become DeviceSpecs, a Fleet
serves them (plus the control API) until SIGINT/SIGTERM. Errors in flags or fleet files are
reported as one line naming the key, exit status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from simulators.push.fleet import PushFleet, specs_from_entries
from simulators.push.terminal import PushSpec
from simulators.serial.fleet import SerialFleet
from simulators.serial.fleet import specs_from_entries as serial_specs
from simulators.soap.fleet import SoapFleet, soap_specs_from_entries
from simulators.zk.config import ConfigError, FleetConfig, load_fleet_file, nth_address, spec_from_mapping
from simulators.zk.control import ApiError, ControlClient, start_control_server
from simulators.zk.faults import normalize_fault
from simulators.zk.profiles import PROFILES
from simulators.zk.server import Fleet

DEFAULT_CONTROL_PORT = 7788


def _fault_arg(text: str) -> tuple[str, Any]:
    name, sep, value = text.partition("=")
    try:
        f, v = normalize_fault(name.strip(), value.strip() if sep else True)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return f.value, v


def _run_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="fpgw-sim",
        description="Simulated ZKTeco attendance terminals (ZK binary protocol, UDP+TCP). "
                    "Use 'fpgw-sim ctl --help' to control a running simulator.")
    src = ap.add_argument_group("fleet")
    src.add_argument("--fleet", type=Path, help="fleet TOML file (other device flags then ignored)")
    src.add_argument("--devices", type=int, default=1, help="number of devices (default 1)")
    src.add_argument("--host", default="127.0.0.1",
                     help="address of the first device; more devices count up 127.0.0.x (default 127.0.0.1)")
    src.add_argument("--port", type=int, default=4370, help="TCP+UDP port (default 4370; 0 = any free)")
    src.add_argument("--per-device", choices=("host", "port"), default="host",
                     help="give each device its own address (host, default) or its own port on --host")
    src.add_argument("--serial-prefix", default="SIM", help="serials are PREFIX0001, PREFIX0002, ...")
    dev = ap.add_argument_group("devices")
    dev.add_argument("--records", type=int, default=1000, help="attendance records per device")
    dev.add_argument("--users", type=int, default=50, help="users per device")
    dev.add_argument("--profile", choices=tuple(PROFILES), default=None,
                     help="device model profile (framing, size layout, layouts, firmware strings, capacities); "
                          "flags given explicitly win. See docs/simulator.md, \"Profiles\"")
    dev.add_argument("--layout", type=int, choices=(8, 16, 40), default=None, help="record layout (default 40)")
    dev.add_argument("--user-layout", type=int, choices=(28, 72), default=None, help="user layout (default 72)")
    dev.add_argument("--comm-key", type=int, default=0, help="comm key the devices require")
    dev.add_argument("--seed", type=int, default=1, help="seed of the first device (next ones +1)")
    dev.add_argument("--timezone", default="Asia/Jakarta", help="device local time zone")
    dev.add_argument("--punch-rate", type=float, default=0.0, help="new punches per minute per device")
    dev.add_argument("--records-cap", type=int, default=None, help="attendance capacity (default 200000)")
    dev.add_argument("--users-cap", type=int, default=None, help="user capacity (default 5000)")
    dev.add_argument("--transport", choices=("both", "tcp", "udp"), default=None,
                     help="listen on TCP and UDP (default) or only one")
    dev.add_argument("--tcp-buffered", action="store_true", default=None,
                     help="answer TCP dataset reads in buffered chunks instead of one DATA packet")
    dev.add_argument("--udp-framing", choices=("session", "counter"), default=None,
                     help="UDP multi-packet answers: session id (default) or packet counter (real terminals) "
                          "in the DATA packets' session field")
    dev.add_argument("--tcp-framing", choices=("single", "packets"), default=None,
                     help="TCP chunk answers: one DATA packet (default) or packets of --tcp-packet-size bytes")
    dev.add_argument("--tcp-packet-size", type=int, default=None, help="bytes per DATA packet (default 1008)")
    dev.add_argument("--tcp-packet-gap-ms", type=float, default=None,
                     help="pause between the packets of a TCP answer (default 0)")
    dev.add_argument("--tcp-write-size", type=int, default=None,
                     help="bytes per socket write (1 = one byte at a time; default whole packets)")
    dev.add_argument("--free-sizes", choices=("80", "92", "112", "zero"), default=None,
                     help="GET_FREE_SIZES payload layout (default 92)")
    dev.add_argument("--records-count", default=None, metavar="exact|zero|+N|-N",
                     help="record count GET_FREE_SIZES reports (default exact)")
    dev.add_argument("--legacy-reads", action="store_true", default=None,
                     help="answer the direct reads 9 (users) and 13 (attendance)")
    dev.add_argument("--fault", action="append", type=_fault_arg, default=[], metavar="NAME[=VALUE]",
                     help="fault for every device, repeatable (e.g. slow=0.5, udp_loss=0.2, offline)")
    push = ap.add_argument_group("push terminals (ADMS/iclock: they call the gateway over HTTP)")
    push.add_argument("--push-server", default=None, metavar="URL",
                      help="gateway push receiver, e.g. http://127.0.0.1:8081 (default for kind = \"push\" "
                           "fleet entries without server)")
    push.add_argument("--push-devices", type=int, default=0,
                      help="run N push terminals (serials PUSH0001, ...) against --push-server, besides the "
                           "ZK devices (0 = none; with --fleet use kind = \"push\" entries instead)")
    out = ap.add_argument_group("outputs")
    out.add_argument("--truth", type=Path, help="append every punch to this JSONL ground-truth file")
    out.add_argument("--control-port", type=int, default=None,
                     help=f"control API port on 127.0.0.1 (default {DEFAULT_CONTROL_PORT}; 0 = any)")
    out.add_argument("--no-control", action="store_true", help="do not start the control API")
    out.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    out.add_argument("--log-level", default=None, help="DEBUG, INFO (default), WARNING")
    return ap


def _config_from_args(args: argparse.Namespace) -> FleetConfig:
    if args.fleet is not None:
        cfg = load_fleet_file(args.fleet)
        if args.truth is not None:
            cfg.truth = args.truth
        return cfg
    if not (0 if args.push_devices else 1) <= args.devices <= 10_000:
        raise ConfigError(f"--devices: expected 1..10000 (0 with --push-devices), got {args.devices}")
    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port: expected 0..65535, got {args.port}")
    specs = []
    faults = dict(args.fault)
    # Only flags given on the command line are passed, so a --profile fills the rest.
    optional = {
        "profile": args.profile, "record_layout": args.layout, "user_layout": args.user_layout,
        "records_cap": args.records_cap, "users_cap": args.users_cap, "tcp_buffered": args.tcp_buffered,
        "udp_framing": args.udp_framing, "tcp_framing": args.tcp_framing,
        "tcp_packet_size": args.tcp_packet_size, "tcp_packet_gap_ms": args.tcp_packet_gap_ms,
        "tcp_write_size": args.tcp_write_size, "free_sizes": args.free_sizes,
        "records_count": args.records_count, "legacy_reads": args.legacy_reads,
    }
    if args.transport is not None:
        optional.update(tcp=args.transport != "udp", udp=args.transport != "tcp")
    given = {k: v for k, v in optional.items() if v is not None}
    for i in range(args.devices):
        host, port = nth_address(args.host, i, args.per_device, args.port)
        specs.append(spec_from_mapping(f"--devices[{i}]", {
            "serial": f"{args.serial_prefix}{i + 1:04d}", "host": host, "port": port,
            "comm_key": args.comm_key, "users": args.users, "records": args.records,
            "seed": args.seed + i, "timezone": args.timezone,
            "punches_per_minute": args.punch_rate, "faults": faults, **given,
        }))
    return FleetConfig(devices=specs, truth=args.truth)


def run(argv: list[str]) -> int:
    """``fpgw-sim [flags]``: serve a fleet until interrupted."""
    ap = _run_parser()
    args = ap.parse_args(argv)
    try:
        cfg = _config_from_args(args)
    except ConfigError as e:
        ap.error(str(e))
    level = args.log_level or cfg.log_level
    logging.basicConfig(level=getattr(logging, str(level).upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    if len(cfg.devices) > 20:
        logging.getLogger("simulators.zk.server").setLevel(logging.WARNING)
    control_port = args.control_port if args.control_port is not None else (
        cfg.control_port if args.fleet is not None else DEFAULT_CONTROL_PORT)
    try:
        push_specs = specs_from_entries(cfg.push_devices, server=args.push_server)
        if args.fleet is None and args.push_devices:
            push_specs += [PushSpec(serial=f"PUSH{i + 1:04d}", server=args.push_server or PushSpec.server,
                                    timezone=args.timezone, seed=args.seed + i, punches_per_minute=args.punch_rate,
                                    users=args.users) for i in range(args.push_devices)]
        # SOAP terminals (kind = "soap"): each on its own 127.0.1.x address unless the entry sets host.
        soap_specs = soap_specs_from_entries(cfg.soap_devices)
        # Serial clocks (kind = "serial"): a pty or a socket:// server each.
        serial_clock_specs = serial_specs(cfg.serial_devices)
    except (ConfigError, ValueError) as e:
        ap.error(str(e))
    fleet = Fleet(truth_path=cfg.truth)
    push_fleet = PushFleet(cfg.truth)
    soap_fleet = SoapFleet(cfg.truth)
    serial_fleet = SerialFleet(cfg.truth)
    try:
        for spec in cfg.devices:
            fleet.add(spec)
        for push_spec in push_specs:
            push_fleet.add(push_spec)
        for soap_spec in soap_specs:
            soap_fleet.add(soap_spec)
        for serial_spec in serial_clock_specs:
            serial_fleet.add(serial_spec)
        fleet.start()
        push_fleet.start()
        soap_fleet.start()
        serial_fleet.start()
        control = None
        if not args.no_control and control_port is not None:
            control = start_control_server(fleet, control_port)
    except (OSError, ValueError) as e:
        fleet.stop()
        push_fleet.stop()
        soap_fleet.stop()
        serial_fleet.stop()
        print(f"fpgw-sim: error: {e}", file=sys.stderr)
        return 1
    devs = fleet.devices
    print(f"fpgw-sim: {len(devs)} device(s) serving", flush=True)
    for d in devs[:50]:
        transports = "+".join(t for t, on in (("tcp", d.spec.tcp), ("udp", d.spec.udp)) if on)
        print(f"  {d.serial:<12} {d.host}:{d.port} {transports} records={d.record_count} "
              f"users={d.user_count} layout={d.spec.record_layout}/{d.spec.user_layout}"
              + (f" profile={d.spec.profile}" if d.spec.profile != "generic" else "")
              + (f" faults={d.faults}" if d.faults else ""), flush=True)
    if len(devs) > 50:
        print(f"  ... and {len(devs) - 50} more ({devs[-1].host}:{devs[-1].port} last)", flush=True)
    for term in push_fleet.terminals[:50]:
        print(f"  {term.spec.serial:<12} push -> {term.spec.server} pushver={term.spec.pushver} "
              f"records={term.record_count}", flush=True)
    for soap_term in soap_fleet.terminals[:50]:
        print(f"  {soap_term.serial:<12} soap {soap_term.host}:{soap_term.port}/iWsService "
              f"records={soap_term.record_count}" + (" comm_key" if soap_term.spec.comm_key else ""), flush=True)
    for clock in serial_fleet.clocks[:50]:
        print(f"  {clock.spec.serial:<12} serial {clock.spec.line_format} on {clock.path} (gateway: "
              f"{'port' if clock.spec.transport == 'pty' else 'url'} = \"{clock.path}\")", flush=True)
    if control is not None:
        print(f"control API: {control.url}  (fpgw-sim ctl --url {control.url} list)", flush=True)
    if cfg.truth is not None:
        print(f"ground truth: {cfg.truth}", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait(args.duration)
    soap_fleet.stop()
    serial_fleet.stop()
    push_fleet.stop()
    fleet.stop()
    print("fpgw-sim: stopped", flush=True)
    return 0


def _ctl_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="fpgw-sim ctl", description="Control a running fpgw-sim.")
    ap.add_argument("--url", default=None,
                    help=f"control API URL (default http://127.0.0.1:{DEFAULT_CONTROL_PORT})")
    ap.add_argument("--control-port", type=int, default=None, help="shortcut for --url on 127.0.0.1")
    sub = ap.add_subparsers(dest="action", required=True)
    sub.add_parser("list", help="list devices")
    p = sub.add_parser("show", help="show one device")
    p.add_argument("serial")
    p = sub.add_parser("punch", help="add punches now (or --at)")
    p.add_argument("serial")
    p.add_argument("-n", type=int, default=1)
    p.add_argument("--at", help="device-local time 'YYYY-MM-DD HH:MM:SS'")
    p.add_argument("--user", help="user id (default: random users)")
    p = sub.add_parser("fault", help="switch a fault on: NAME or NAME=VALUE")
    p.add_argument("serial")
    p.add_argument("fault", metavar="NAME[=VALUE]")
    p = sub.add_parser("clear-fault", help="switch a fault off")
    p.add_argument("serial")
    p.add_argument("name")
    p = sub.add_parser("clear-log", help="clear the attendance log as at the keypad")
    p.add_argument("serial")
    p = sub.add_parser("replace", help="replace the device: new serial, new log, same address")
    p.add_argument("serial")
    p.add_argument("--new-serial")
    p.add_argument("--records", type=int, default=0, help="fresh records on the new device")
    p.add_argument("--blank", action="store_true", help="a new empty unit: no users, templates or records")
    p.add_argument("--fp-version", type=int, help="fingerprint algorithm of the new unit (implies --blank)")
    p = sub.add_parser("factory-reset", help="users, templates and log gone, as from the terminal's menu")
    p.add_argument("serial")
    return ap


def ctl(argv: list[str]) -> int:
    """``fpgw-sim ctl ACTION ...``: call the control API and print its JSON answer."""
    ap = _ctl_parser()
    a = ap.parse_args(argv)
    url = a.url or f"http://127.0.0.1:{a.control_port or DEFAULT_CONTROL_PORT}"
    c = ControlClient(url)
    try:
        if a.action == "list":
            result: Any = c.request("GET", "/devices")
        elif a.action == "show":
            result = c.request("GET", f"/devices/{a.serial}")
        elif a.action == "punch":
            body: dict[str, Any] = {"n": a.n}
            if a.at:
                body["at"] = a.at
            if a.user:
                body["user_id"] = a.user
            result = c.request("POST", f"/devices/{a.serial}/punches", body)
        elif a.action == "fault":
            name, sep, value = a.fault.partition("=")
            result = c.request("POST", f"/devices/{a.serial}/faults",
                               {"name": name, "value": _json_value(value) if sep else True})
        elif a.action == "clear-fault":
            result = c.request("DELETE", f"/devices/{a.serial}/faults/{a.name}")
        elif a.action == "clear-log":
            result = c.request("POST", f"/devices/{a.serial}/clear-log")
        elif a.action == "factory-reset":
            result = c.request("POST", f"/devices/{a.serial}/factory-reset")
        else:
            body = {"records": a.records}
            if a.new_serial:
                body["new_serial"] = a.new_serial
            if a.blank:
                body["blank"] = True
            if a.fp_version is not None:
                body["fp_version"] = a.fp_version
            result = c.request("POST", f"/devices/{a.serial}/replace", body)
    except ApiError as e:
        print(f"fpgw-sim ctl: error: {e}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2, default=str))
    return 0


def _json_value(text: str) -> Any:
    """``0.5`` -> 0.5, ``true`` -> True, anything else stays text (e.g. a serial)."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def main(argv: list[str] | None = None) -> int:
    """Console entry point of ``fpgw-sim``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "ctl":
        return ctl(argv[1:])
    return run(argv)


if __name__ == "__main__":
    sys.exit(main())

"""The simulated serial clock as fpgw-sim runs it: fleet-file entries with kind = "serial" (validated), and a
clock on a pty link read by a running gateway; every formats' lines read back by the gateway's parsers."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest

from drivers.serial.formats import LineParser, ParsedLine, preset
from simulators.cli import main as sim_main
from simulators.serial.clock import FORMATS, SerialClock, SerialClockSpec
from simulators.serial.fleet import spec_from_entry, specs_from_entries
from simulators.zk.config import ConfigError, fleet_from_mapping
from tests.support.fleet import truth_keys
from tests.support.gateway import RunningGateway, diff, stored_keys
from tests.support.serial import serial_config


def test_fleet_file_serial_entries_are_kept_apart_and_validated() -> None:
    cfg = fleet_from_mapping({"devices": [{"serial": "ZK1"},
                                          {"kind": "serial", "serial": "S1", "transport": "socket", "port": 4001},
                                          {"kind": "serial", "serial": "S2", "line_format": "ct101", "noise": 0.1}]})
    assert [d.serial for d in cfg.devices] == ["ZK1"]
    specs = specs_from_entries(cfg.serial_devices)
    assert [(s.serial, s.transport, s.port, s.line_format, s.noise) for s in specs] == [
        ("S1", "socket", 4001, "zk_attlog", 0.0), ("S2", "pty", 0, "ct101", 0.1)]
    for bad, needle in (({"transport": "usb"}, "transport"), ({"line_format": "x"}, "line_format"),
                        ({"noise": 2}, "noise"), ({"port": "4001"}, "port"), ({"baud": 9600}, "baud"),
                        ({"line_end": "crcr"}, "line_end")):
        with pytest.raises(ConfigError, match=needle):
            spec_from_entry("devices[0]", bad)


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_simulated_format_is_read_back_by_the_gateway_parser(fmt: str) -> None:
    clock = SerialClock(SerialClockSpec(line_format=fmt))
    when = datetime(2026, 11, 30, 7, 5, 9)
    parser = LineParser(preset(fmt), now=lambda: when)
    if fmt == "acroprint":
        parser.parse("000000,1,20261130,D")
    result = parser.parse(clock.format_line("4711", when, 1, 15 if fmt in ("zk_attlog", "ct101") else 200).decode())
    assert isinstance(result, ParsedLine)
    p = result.punch
    assert (p.user_id, p.time_text, p.state) == ("4711", "2026-11-30 07:05:09", 1)
    assert p.verify == (15 if fmt in ("zk_attlog", "ct101") else 200)


@pytest.mark.timeout(90)
def test_fpgw_sim_serial_clock_on_a_pty_link_feeds_a_gateway(sqlite_url: str, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    link = tmp_path / "ttySIM0"
    fleet = tmp_path / "fleet.toml"
    fleet.write_text(f'[fleet]\ntruth = "truth.jsonl"\ncontrol_port = 0\n\n[[devices]]\nkind = "serial"\n'
                     f'serial = "SER0001"\nlink = "{link}"\npunches_per_minute = 240\nusers = 500\n')
    cfg = serial_config(sqlite_url, tmp_path, [{"id": "s1", "serial": "SER0001", "port": str(link)}])
    with RunningGateway(cfg):
        # The gateway's reader finds the link once fpgw-sim made it (it retries every second) and reads
        # while fpgw-sim runs here, in the main thread (it installs signal handlers).
        assert sim_main(["--fleet", str(fleet), "--no-control", "--duration", "6"]) == 0
    assert sum(stored_keys(sqlite_url).values()) >= 3
    assert f"on {link}" in capsys.readouterr().out
    expected = truth_keys(tmp_path / "truth.jsonl")
    stored = stored_keys(sqlite_url)
    # Lines written before the reader opened the port are discarded by the open (as on a real line):
    # every stored punch is in the truth once; none is made up.
    assert not (stored - expected), diff(expected, stored)

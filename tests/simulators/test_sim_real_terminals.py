"""The simulator behaving like real terminals: captured bytes, framings, size layouts, legacy reads, profiles.

The captures in ``captures/real_terminals.json`` come from public sources (named in the file); these tests
check the simulator's codec against them and that each option reproduces the captured structure.
"""

from __future__ import annotations

import json
import logging
import socket
import struct
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from simulators.cli import _config_from_args, _run_parser
from simulators.zk import DeviceSpec, SimDevice
from simulators.zk import protocol as p
from simulators.zk.config import ConfigError, fleet_from_mapping
from simulators.zk.profiles import PROFILES

pytestmark = pytest.mark.timeout(60)

CAPTURES: dict[str, Any] = json.loads(
    (Path(__file__).resolve().parent / "captures" / "real_terminals.json").read_text(encoding="utf-8"))


def _captured(name: str, key: str = "packets") -> list[bytes]:
    return [bytes.fromhex(h) for h in CAPTURES[name][key]]


def _unwrap(framed: bytes) -> p.Packet:
    assert framed[:4] == p.TCP_MAGIC
    assert p.parse_tcp_top(framed[:8]) == len(framed) - 8
    return p.parse_packet(framed[8:])


# --- a raw client: reads replies by their declared sizes, whatever the segmentation ---------------------


class Raw:
    """Minimal ZK client on a socket (TCP or UDP) that records every packet it receives."""

    def __init__(self, dev: SimDevice, udp: bool) -> None:
        self.udp = udp
        kind = socket.SOCK_DGRAM if udp else socket.SOCK_STREAM
        self.sock = socket.socket(socket.AF_INET, kind)
        self.sock.settimeout(5)
        self.sock.connect((dev.host, dev.port))
        self.session = 0
        self.reply_id = 0
        self._buf = b""

    def close(self) -> None:
        self.sock.close()

    def send(self, command: int, data: bytes = b"") -> None:
        pkt = p.build_packet(command, self.session, self.reply_id, data)
        self.sock.sendall(pkt if self.udp else p.tcp_wrap(pkt))

    def _exact(self, n: int) -> bytes:
        while len(self._buf) < n:
            more = self.sock.recv(65536)
            assert more, "connection closed"
            self._buf += more
        out, self._buf = self._buf[:n], self._buf[n:]
        return out

    def recv(self) -> p.Packet:
        if self.udp:
            return p.parse_packet(self.sock.recv(65536))
        length = p.parse_tcp_top(self._exact(8))
        return p.parse_packet(self._exact(length))

    def request(self, command: int, data: bytes = b"") -> p.Packet:
        self.reply_id += 1
        self.send(command, data)
        return self.recv()

    def connect(self) -> None:
        reply = self.request(p.CMD_CONNECT)
        assert reply.command == p.CMD_ACK_OK
        self.session = reply.session_id

    def run(self, command: int, data: bytes = b"") -> list[p.Packet]:
        """Send one request and collect its multi-packet answer up to the closing ACK_OK."""
        self.reply_id += 1
        self.send(command, data)
        out = [self.recv()]
        while out[-1].command != p.CMD_ACK_OK and out[-1].command in (p.CMD_PREPARE_DATA, p.CMD_DATA):
            if out[0].command == p.CMD_DATA and len(out) == 1:
                break  # a direct answer is one DATA packet
            out.append(self.recv())
        return out


@pytest.fixture
def raw() -> Any:
    clients: list[Raw] = []

    def make(dev: SimDevice, udp: bool = False) -> Raw:
        c = Raw(dev, udp)
        clients.append(c)
        c.connect()
        return c

    yield make
    for c in clients:
        c.close()


def _structure(packets: list[p.Packet], session: int) -> list[tuple[str, int, int]]:
    """(command, session field as 'sid' or the counter, data length) per packet."""
    names = {p.CMD_PREPARE_DATA: "PREPARE_DATA", p.CMD_DATA: "DATA", p.CMD_ACK_OK: "ACK_OK"}
    return [(names.get(x.command, str(x.command)), -1 if x.session_id == session else x.session_id, len(x.data))
            for x in packets]


# --- the captures against the simulator's codec ---------------------------------------------------------


def test_every_captured_packet_has_the_checksum_the_simulator_computes() -> None:
    n = 0
    for name, entry in CAPTURES.items():
        if name.startswith("_"):
            continue
        assert entry["source"], name
        for framed in [bytes.fromhex(h) for h in entry.get("packets", [])]:
            pkt = _unwrap(framed) if framed[:4] == p.TCP_MAGIC else p.parse_packet(framed)
            assert pkt.checksum_ok, (name, framed[:16].hex())
            n += 1
    assert n >= 15


def test_captured_free_sizes_decode_and_match_the_80_and_92_byte_layouts() -> None:
    k20 = _unwrap(_captured("users_direct_tcp_k20")[1])
    assert len(k20.data) == 80
    sizes = p.unpack_free_sizes(k20.data)
    assert sizes["users"] == 2 and sizes["users_cap"] > 0
    s92 = _unwrap(_captured("free_sizes_92")[0])
    assert len(s92.data) == 92
    # The simulator's own layouts have exactly those lengths (and 112 / 4 for the face-terminal variants).
    s = p.Sizes(70, 70, 3225, 282, 6, 6, 500, 500, 50000)
    assert [len(p.pack_free_sizes(s, lay)) for lay in p.FREE_SIZES_LAYOUTS] == [80, 92, 112, 4]
    assert p.unpack_free_sizes(p.pack_free_sizes(s, "80"))["records"] == 3225
    assert p.unpack_free_sizes(p.pack_free_sizes(s, "112"))["records"] == 3225
    # SpeedFace (pyzk #170): TCP length 0x78 = a 112-byte payload.
    assert p.parse_tcp_top(_captured("free_sizes_112_speedface", "headers")[0][:8]) == 8 + 112


def test_captured_records_and_state_reply_decode() -> None:
    rec = bytes.fromhex(CAPTURES["att40_record"]["records"][0])
    assert p.unpack_att(40, rec) == {"uid": 13, "user_id": "999111333", "verify": 1, "time": 0x2368B36B,
                                     "state": 0}
    assert p.time_text(0x2368B36B) == "2018-06-25 17:50:35"
    state = p.parse_packet(_captured("state_rrq_reply")[0])
    assert (state.command, state.session_id, state.data) == (p.CMD_ACK_OK, 2, b"")


def test_packets_framing_reproduces_the_captured_tcp_user_read(add_device: Callable[..., SimDevice],
                                                                raw: Any) -> None:
    """70 users x 72 bytes = the 5,044-byte set of the capture: same packets, sizes and counters."""
    captured = [_unwrap(f) for f in _captured("users_buffered_tcp_1008")]
    stat, prepare, data = captured[2], captured[3], captured[4:]
    want = _structure([prepare, *data], prepare.session_id)
    dev = add_device(profile="k40", users=70, records=10, user_ids="numeric")
    c = raw(dev)
    got_stat = c.request(p.CMD_PREPARE_BUFFER, struct.pack("<bhii", 1, p.CMD_USERTEMP_RRQ, p.FCT_USER, 0))
    assert (got_stat.command, got_stat.data[:9]) == (stat.command, stat.data[:9])  # ACK_OK, 00, 5044, 5044
    answer = c.run(p.CMD_READ_BUFFER, struct.pack("<ii", 0, 5044))
    # The capture holds the DATA packets (its closing ACK_OK is the test's stand-in); ours ends with ACK_OK
    # carrying the last counter, as the captured template read (test_tcp_get_template_1f) does.
    assert _structure(answer[:-1], c.session) == want
    assert _structure(answer[-1:], c.session) == [("ACK_OK", 5, 0)]
    assert prepare.data == answer[0].data == struct.pack("<II", 5044, 1008)
    assert b"".join(x.data for x in answer[1:-1]) == dev.dataset("users")


def test_captured_template_read_closes_with_the_last_counter() -> None:
    prepare, d0, d1, ack = (_unwrap(f) for f in _captured("template_tcp_1008"))
    assert struct.unpack("<II", prepare.data) == (1244, 1008)
    assert [(x.command, x.session_id, len(x.data)) for x in (d0, d1, ack)] == [
        (p.CMD_DATA, 0, 1008), (p.CMD_DATA, 1, 236), (p.CMD_ACK_OK, 1, 0)]


# --- framings --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("framing", ["session", "counter"])
def test_udp_multi_packet_framing(add_device: Callable[..., SimDevice], raw: Any, framing: str) -> None:
    dev = add_device(tcp=False, udp_framing=framing, users=5, records=100)  # 4,004 bytes: 4 datagrams
    c = raw(dev, udp=True)
    size = len(dev.dataset("attlog"))
    stat = c.request(p.CMD_PREPARE_BUFFER, struct.pack("<bhii", 1, p.CMD_ATTLOG_RRQ, 0, 0))
    assert struct.unpack_from("<I", stat.data, 1)[0] == size
    answer = c.run(p.CMD_READ_BUFFER, struct.pack("<ii", 0, size))
    sid = c.session
    if framing == "counter":
        assert _structure(answer, sid) == [("PREPARE_DATA", -1, 8), ("DATA", 0, 1024), ("DATA", 1, 1024),
                                           ("DATA", 2, 1024), ("DATA", 3, size - 3072), ("ACK_OK", 3, 0)]
    else:
        assert {x.session_id for x in answer} == {sid}
    assert {x.reply_id for x in answer} == {c.reply_id}  # still tied to the request by its reply id
    assert b"".join(x.data for x in answer[1:-1]) == dev.dataset("attlog")


@pytest.mark.parametrize(("size", "write"), [(1008, 0), (500, 0), (1008, 1)], ids=["1008", "500", "bytewise"])
def test_tcp_packets_framing_any_size_and_segmentation(add_device: Callable[..., SimDevice], raw: Any,
                                                       size: int, write: int) -> None:
    dev = add_device(tcp_framing="packets", tcp_buffered=True, tcp_packet_size=size, tcp_write_size=write,
                     users=5, records=60)
    c = raw(dev)
    ds = dev.dataset("attlog")
    c.request(p.CMD_PREPARE_BUFFER, struct.pack("<bhii", 1, p.CMD_ATTLOG_RRQ, 0, 0))
    answer = c.run(p.CMD_READ_BUFFER, struct.pack("<ii", 0, len(ds)))
    n = -(-len(ds) // size)
    assert [x.command for x in answer] == [p.CMD_PREPARE_DATA] + [p.CMD_DATA] * n + [p.CMD_ACK_OK]
    assert [x.session_id for x in answer[1:]] == [*range(n), n - 1]
    assert struct.unpack("<II", answer[0].data) == (len(ds), size)
    assert b"".join(x.data for x in answer[1:-1]) == ds


def test_tcp_small_set_is_answered_directly_with_real_framing(add_device: Callable[..., SimDevice],
                                                              raw: Any) -> None:
    """Like the captured K20: a set that fits one packet comes back as one DATA packet."""
    dev = add_device(profile="k40", users=2, records=3, user_ids="numeric")
    c = raw(dev)
    answer = c.run(p.CMD_PREPARE_BUFFER, struct.pack("<bhii", 1, p.CMD_USERTEMP_RRQ, p.FCT_USER, 0))
    assert [(x.command, len(x.data)) for x in answer] == [(p.CMD_DATA, 148)]  # = the K20 capture's size


def test_tcp_packet_gap_lets_pyzk_read_the_real_framing(add_device: Callable[..., SimDevice]) -> None:
    """Back to back pyzk times out (compat table); with a gap between packets it reads (issue 9, item 2)."""
    from zk import ZK

    dev = add_device(profile="k40", tcp_packet_gap_ms=60, users=5, records=60, user_ids="numeric", udp=False)
    conn = ZK(dev.host, port=dev.port, timeout=3, ommit_ping=True).connect()
    try:
        assert len(conn.get_attendance()) == 60
    finally:
        conn.disconnect()


# --- size query variants ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("layout", "count", "length", "reported"), [
    ("80", "exact", 80, 60), ("92", "+5", 92, 65), ("112", "-7", 112, 53), ("92", "zero", 92, 0),
    ("zero", "exact", 4, None)])
def test_free_sizes_layout_and_count(add_device: Callable[..., SimDevice], raw: Any, layout: str, count: str,
                                     length: int, reported: int | None) -> None:
    dev = add_device(free_sizes=layout, records_count=count, records=60)
    reply = raw(dev).request(p.CMD_GET_FREE_SIZES)
    assert len(reply.data) == length
    if reported is not None:
        assert p.unpack_free_sizes(reply.data)["records"] == reported
    else:
        assert reply.data == b"\0\0\0\0"
    assert len(dev.dataset("attlog")) == 4 + 60 * 40  # the data itself does not change


def test_bad_size_options_are_refused() -> None:
    with pytest.raises(ValueError, match="free_sizes"):
        DeviceSpec(free_sizes="96")
    with pytest.raises(ValueError, match="records_count"):
        DeviceSpec(records_count="many")
    with pytest.raises(ValueError, match="udp_framing"):
        DeviceSpec(udp_framing="counters")
    with pytest.raises(ValueError, match="tcp_packet_size"):
        DeviceSpec(tcp_packet_size=0)


# --- legacy reads and the state query --------------------------------------------------------------------


@pytest.mark.parametrize("udp", [True, False], ids=["udp", "tcp"])
@pytest.mark.parametrize(("command", "kind"), [(p.CMD_ATTLOG_RRQ, "attlog"), (p.CMD_USERTEMP_RRQ, "users")])
def test_legacy_direct_reads(add_device: Callable[..., SimDevice], raw: Any, udp: bool, command: int,
                             kind: str) -> None:
    dev = add_device(profile="k40", users=30, records=50, user_ids="numeric")
    answer = raw(dev, udp=udp).run(command)
    ds = dev.dataset(kind)
    assert answer[0].command == p.CMD_PREPARE_DATA
    assert struct.unpack_from("<I", answer[0].data)[0] == len(ds)  # php_zklib reads the size here
    assert answer[-1].command == p.CMD_ACK_OK
    assert all(x.command == p.CMD_DATA and len(x.data) <= (1024 if udp else 1008) for x in answer[1:-1])
    body = b"".join(x.data for x in answer[1:-1])
    assert body == ds
    if kind == "attlog":
        first = p.unpack_att(40, body[4:44])
        assert p.time_text(int(first["time"])) == dev.punches()[0]["time"]


def test_legacy_reads_are_unknown_without_the_option(add_device: Callable[..., SimDevice], raw: Any) -> None:
    reply = raw(add_device()).request(p.CMD_ATTLOG_RRQ)
    assert (reply.command, reply.data) == (p.CMD_ACK_UNKNOWN, b"")


def test_state_query_answers_in_the_session_field(add_device: Callable[..., SimDevice], raw: Any) -> None:
    c = raw(add_device())
    reply = c.request(p.CMD_STATE_RRQ)
    assert (reply.command, reply.session_id, reply.data) == (p.CMD_ACK_OK, 0, b"")
    c.request(p.CMD_DISABLEDEVICE)
    assert c.request(p.CMD_STATE_RRQ).session_id == 2


# --- destructive commands and the UDP session table ------------------------------------------------------


def test_destructive_commands_are_logged_with_the_peer(add_device: Callable[..., SimDevice], raw: Any,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    dev = add_device(users=5, records=20)
    c = raw(dev)
    caplog.set_level(logging.WARNING, logger="simulators.zk.session")
    c.request(p.CMD_DELETE_USER, struct.pack("<H", 3))
    c.request(p.CMD_CLEAR_ATTLOG)
    c.request(p.CMD_CLEAR_DATA)
    c.request(p.CMD_RESTART)
    peer = "{}:{}".format(*c.sock.getsockname())
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert [m.split()[2] for m in lines] == ["DELETE_USER", "CLEAR_ATTLOG", "CLEAR_DATA", "RESTART"]
    assert all(f"peer={peer}" in m and f"device={dev.serial}" in m for m in lines)
    assert "uid=3" in lines[0] and "records=20" in lines[1]


def test_full_udp_session_table_drops_the_least_recently_used(add_device: Callable[..., SimDevice],
                                                              raw: Any) -> None:
    dev = add_device(tcp=False, udp_sessions=2)
    a = raw(dev, udp=True)
    b = raw(dev, udp=True)
    assert a.request(p.CMD_GET_TIME).command == p.CMD_ACK_OK  # a is now the most recently used
    c = raw(dev, udp=True)  # table full: b (least recently used) goes, not a (the oldest)
    assert a.request(p.CMD_GET_TIME).command == p.CMD_ACK_OK
    assert c.request(p.CMD_GET_TIME).command == p.CMD_ACK_OK
    assert b.request(p.CMD_GET_TIME).command == p.CMD_ACK_UNAUTH  # b's session is gone


# --- profiles --------------------------------------------------------------------------------------------


def test_profiles_fill_defaults_and_explicit_values_win() -> None:
    k40 = DeviceSpec(profile="k40")
    assert (k40.firmware, k40.platform, k40.device_name) == ("Ver 6.60 May 25 2018", "JZ4725_TFT", "K40/ID")
    assert (k40.udp_framing, k40.tcp_framing, k40.tcp_packet_size, k40.free_sizes, k40.legacy_reads) == (
        "counter", "packets", 1008, "80", True)
    assert DeviceSpec(profile="k40", free_sizes="112", tcp_packet_gap_ms=20).free_sizes == "112"
    # An explicit value equal to the default still wins over the profile.
    assert DeviceSpec(profile="k40", udp_framing="session").udp_framing == "session"
    assert DeviceSpec(profile="x100c", tcp=True).tcp is True
    # replace() (device swap) keeps the resolved values.
    assert replace(DeviceSpec(profile="k40", udp_framing="session"), serial="B").udp_framing == "session"
    assert DeviceSpec(profile="x100c").tcp is False
    assert DeviceSpec().udp_framing == "counter"  # real terminals' framing is the default (docs/simulator.md)
    with pytest.raises(ValueError, match="unknown profile 'k41'"):
        DeviceSpec(profile="k41")
    for prof in PROFILES.values():
        DeviceSpec(profile=prof.name)  # every profile is a valid spec
        assert prof.description


def test_profile_in_the_fleet_file_and_on_the_command_line() -> None:
    cfg = fleet_from_mapping({"defaults": {"profile": "iclock880"},
                              "devices": [{"serial": "A"}, {"serial": "B", "profile": "speedface"},
                                          {"serial": "C", "free_sizes": 80}]})
    assert [(d.profile, d.free_sizes) for d in cfg.devices] == [("iclock880", "92"), ("speedface", "112"),
                                                                ("iclock880", "80")]
    with pytest.raises(ConfigError, match="profile"):
        fleet_from_mapping({"devices": [{"profile": "nope"}]})
    args = _run_parser().parse_args(["--profile", "k40", "--devices", "2", "--tcp-packet-gap-ms", "15"])
    specs = _config_from_args(args).devices
    assert [(s.profile, s.firmware, s.tcp_packet_gap_ms, s.records_cap) for s in specs] == [
        ("k40", "Ver 6.60 May 25 2018", 15.0, 80_000)] * 2
    plain = _config_from_args(_run_parser().parse_args([])).devices[0]
    assert (plain.profile, plain.records_cap, plain.tcp) == ("generic", 200_000, True)


@pytest.mark.parametrize("udp", [False, True], ids=["tcp", "udp"])
def test_read_buffer_at_any_offset_returns_that_range(add_device: Callable[..., SimDevice], raw: Any,
                                                      udp: bool) -> None:
    """1504 takes any start offset and length (pyzk reads at running offsets, §2.8): a tail read asks for the
    last records only, starting inside the dataset, not at a chunk boundary."""
    dev = add_device(tcp=not udp, udp=udp, tcp_framing="packets", tcp_buffered=True, users=5, records=500)
    c = raw(dev, udp=udp)
    ds = dev.dataset("attlog")
    c.request(p.CMD_PREPARE_BUFFER, struct.pack("<bhii", 1, p.CMD_ATTLOG_RRQ, 0, 0))
    for start, length in [(4 + 40 * 497, 80), (4 + 40 * 13, 3000), (7, 1), (len(ds) - 1, 1)]:
        answer = c.run(p.CMD_READ_BUFFER, struct.pack("<ii", start, length))
        assert answer[0].command == p.CMD_PREPARE_DATA and struct.unpack_from("<I", answer[0].data)[0] == length
        assert b"".join(x.data for x in answer if x.command == p.CMD_DATA) == ds[start:start + length]


def test_device_counts_the_requests_it_receives(add_device: Callable[..., SimDevice], raw: Any) -> None:
    dev = add_device(users=5, records=10)
    c = raw(dev)
    before = dev.requests_received
    c.request(p.CMD_GET_FREE_SIZES)
    c.request(p.CMD_GET_FREE_SIZES)
    assert dev.requests_received == before + 2
    assert dev.requests_by_command[p.CMD_GET_FREE_SIZES] == 2

"""ZkDriver over a lossy UDP link: downloads complete and equal the truth, or fail whole, in bounded time.

Three layers: (1) the simulator with its seeded ``udp_loss`` fault (both directions); (2) a UDP relay
between driver and simulator that duplicates and delays the device's datagrams (late copies of
earlier answers arrive during later exchanges); (3) a scripted device that sends exactly the
datagram sequences a network can produce (lost piece, late piece of an earlier attempt, DATA
overtaking PREPARE_DATA, ...) straight at ``UdpChannel``, so each rule is checked deterministically.
"""

from __future__ import annotations

import heapq
import random
import select
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from drivers.base import Unreachable
from drivers.zk import ZkDriver, ZkParams
from drivers.zk import udp as zkudp
from drivers.zk.frames import FrameRing, RecordingSocket
from tests.support.drivers import punch_key, zk_driver_for
from tests.support.fleet import add_sim_device, settle, sim_truth

DATA, PREPARE, ACK_OK = zkudp.CMD_DATA, zkudp.CMD_PREPARE_DATA, zkudp.CMD_ACK_OK


def read_all(drv: ZkDriver) -> list[Any]:
    with drv.connect() as s:
        return s.read_punches()


# ---------------------------------------------------------------------------------------------
# (1) Simulator with seeded loss
# ---------------------------------------------------------------------------------------------


@pytest.mark.timeout(20)
@pytest.mark.parametrize(("loss", "seed"), [(0.05, 1), (0.05, 2), (0.05, 3), (0.10, 4), (0.10, 5), (0.10, 6)])
def test_lossy_udp_download_is_complete_and_exact(fleet: Any, loss: float, seed: int) -> None:
    dev = add_sim_device(fleet, records=3000, seed=seed)
    truth = sim_truth(fleet.truth_file, dev.serial)
    dev.set_fault("udp_loss", loss)
    drv = zk_driver_for(dev, "udp", timeout_s=3.0)
    punches = read_all(drv)
    dev.clear_fault("udp_loss")
    assert [punch_key(p) for p in punches] == truth
    assert drv.stats.udp.resends > 0, "the loss was not exercised"
    assert dev.enabled


@pytest.mark.timeout(20)
def test_lossy_udp_user_table_and_8_byte_log(fleet: Any) -> None:
    # 8-byte records carry only the internal uid: the user table must come down too, over the
    # same lossy link, for every punch to get its user id.
    dev = add_sim_device(fleet, records=2500, users=300, record_layout=8, user_layout=28, seed=11)
    truth = sim_truth(fleet.truth_file, dev.serial)
    clean_users = zk_driver_for(dev, "udp")
    with clean_users.connect() as s:
        users = s.read_users()
    dev.set_fault("udp_loss", 0.08)
    drv = zk_driver_for(dev, "udp", timeout_s=3.0)
    punches = read_all(drv)
    assert drv.stats.user_downloads == 1
    with drv.connect() as s:
        assert s.read_users() == users
    dev.clear_fault("udp_loss")
    assert [punch_key(p) for p in punches] == truth
    assert not drv.stats.unmapped_punches


@pytest.mark.timeout(20)
def test_total_loss_mid_download_fails_whole_within_bound(fleet: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    dev = add_sim_device(fleet, records=4000)
    drv = zk_driver_for(dev, "udp", timeout_s=1.0)
    real = zkudp.UdpChannel._read_chunk
    calls = {"n": 0}

    def read_chunk(self: zkudp.UdpChannel, start: int, remaining: int) -> bytes:
        calls["n"] += 1
        if calls["n"] == 3:  # a few chunks in: the link dies
            dev.set_fault("udp_loss", 1.0)
        return real(self, start, remaining)

    monkeypatch.setattr(zkudp.UdpChannel, "_read_chunk", read_chunk)
    t0 = time.monotonic()
    with pytest.raises(Unreachable) as ei:
        read_all(drv)
    elapsed = time.monotonic() - t0
    # One timeout of silence for the chunk, the drain, one timeout for the re-enable attempt.
    assert elapsed < 3.5, f"took {elapsed:.2f}s"
    assert "no answer from" in str(ei.value) and "/udp within 1 s" in str(ei.value), str(ei.value)
    assert ei.value.transient
    assert drv.stats.log_downloads == 0, "nothing may count as downloaded"
    monkeypatch.undo()
    dev.clear_fault("udp_loss")
    # The terminal could not be re-enabled while the link was dead: the next session does it first.
    assert drv._needs_enable
    assert [punch_key(p) for p in read_all(drv)] == sim_truth(fleet.truth_file, dev.serial)
    assert dev.enabled and not drv._needs_enable


@pytest.mark.timeout(20)
def test_outage_shorter_than_timeout_is_ridden_out(fleet: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    dev = add_sim_device(fleet, records=4000)
    drv = zk_driver_for(dev, "udp", timeout_s=3.0)
    real = zkudp.UdpChannel._read_chunk
    calls = {"n": 0}

    def read_chunk(self: zkudp.UdpChannel, start: int, remaining: int) -> bytes:
        calls["n"] += 1
        if calls["n"] == 3:
            dev.set_fault("udp_loss", 1.0)
            threading.Timer(0.8, dev.clear_fault, ("udp_loss",)).start()
        return real(self, start, remaining)

    monkeypatch.setattr(zkudp.UdpChannel, "_read_chunk", read_chunk)
    punches = read_all(drv)
    assert [punch_key(p) for p in punches] == sim_truth(fleet.truth_file, dev.serial)
    assert drv.stats.udp.resends >= 2
    assert dev.enabled


@pytest.mark.timeout(10)
def test_dead_udp_device_message_is_plain(fleet: Any) -> None:
    dev = add_sim_device(fleet, records=10)
    dev.set_fault("offline", True)
    settle(fleet)
    with pytest.raises(Unreachable) as ei:
        read_all(zk_driver_for(dev, "udp", timeout_s=1.0))
    assert str(ei.value) == f"no answer from {dev.host}:{dev.port}/udp within 1 s (connect)"
    dev.clear_fault("offline")


# ---------------------------------------------------------------------------------------------
# (2) Duplicated and late datagrams through a relay
# ---------------------------------------------------------------------------------------------


class DupRelay:
    """UDP relay client <-> device that duplicates the device's datagrams, some immediately, some
    up to ``max_delay_s`` later (so copies of earlier answers land in the middle of later ones).
    Originals are forwarded at once and in order."""

    def __init__(self, device: tuple[str, int], seed: int, dup_p: float = 0.2, max_delay_s: float = 0.08) -> None:
        self.device = device
        self.rng = random.Random(seed)
        self.dup_p = dup_p
        self.max_delay_s = max_delay_s
        self.front = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.front.bind(("127.0.0.1", 0))
        self.back = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.back.bind(("127.0.0.1", 0))
        self.port = self.front.getsockname()[1]
        self.client: tuple[str, int] | None = None
        self.duplicated = 0
        self._later: list[tuple[float, int, bytes]] = []
        self._seq = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            now = time.monotonic()
            while self._later and self._later[0][0] <= now and self.client is not None:
                self.front.sendto(heapq.heappop(self._later)[2], self.client)
            wait = min(0.01, max(0.0, self._later[0][0] - now)) if self._later else 0.01
            ready, _, _ = select.select([self.front, self.back], [], [], wait)
            if self.front in ready:
                data, self.client = self.front.recvfrom(65536)
                self.back.sendto(data, self.device)
            if self.back in ready and self.client is not None:
                data, _ = self.back.recvfrom(65536)
                self.front.sendto(data, self.client)
                if self.rng.random() < self.dup_p:
                    self.duplicated += 1
                    delay = 0.0 if self.rng.random() < 0.5 else self.rng.uniform(0, self.max_delay_s)
                    self._seq += 1
                    heapq.heappush(self._later, (time.monotonic() + delay, self._seq, data))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.front.close()
        self.back.close()


@pytest.mark.timeout(20)
@pytest.mark.parametrize("framing", ["counter", "session"])
@pytest.mark.parametrize(("loss", "seed"), [(0.0, 21), (0.05, 22)])
def test_duplicated_and_late_datagrams_never_corrupt(fleet: Any, loss: float, seed: int, framing: str) -> None:
    dev = add_sim_device(fleet, records=3000, seed=seed, udp_framing=framing)
    truth = sim_truth(fleet.truth_file, dev.serial)
    relay = DupRelay((dev.host, dev.port), seed)
    try:
        if loss:
            dev.set_fault("udp_loss", loss)
        drv = ZkDriver(ZkParams("127.0.0.1", relay.port, transport="udp", timeout_s=3.0))
        for _ in range(2):
            assert [punch_key(p) for p in read_all(drv)] == truth
        dev.clear_fault("udp_loss")
    finally:
        relay.close()
    assert relay.duplicated > 50
    if framing == "session":
        # Without packet counters a duplicate is only recognised by its offset inside the open chunk.
        assert drv.stats.udp.duplicates > 0, "no duplicate reached an open chunk: test too weak"
    # With counters (real terminals) a repeated counter is dropped before it reaches the chunk.
    assert drv.stats.udp.stale > 0
    assert dev.enabled


# ---------------------------------------------------------------------------------------------
# (3) Scripted device: exact datagram sequences against UdpChannel
# ---------------------------------------------------------------------------------------------

SID = 0x4242
#: A dataset whose every 1024-byte piece differs (so any misplaced piece changes the result).
DATASET = b"".join(struct.pack("<I", i) * 4 for i in range(512))  # 8192 bytes
Answer = Callable[[int, int, int], list[bytes]]


def pieces(start: int, length: int) -> list[bytes]:
    chunk = DATASET[start:start + length]
    return [chunk[i:i + zkudp.PIECE] for i in range(0, len(chunk), zkudp.PIECE)]


def normal(rid: int, start: int, length: int) -> list[bytes]:
    """What a healthy device sends for a 1504: PREPARE_DATA, DATA pieces, ACK_OK."""
    return ([pkt(PREPARE, rid, struct.pack("<II", length, 1024))]
            + [pkt(DATA, rid, p) for p in pieces(start, length)] + [pkt(ACK_OK, rid)])


def pkt(code: int, rid: int, data: bytes = b"") -> bytes:
    return zkudp.build_packet(code, SID, rid, data)


class ScriptedDevice:
    """Answers the n-th request with ``script[n](rid, start, length)`` (default: ``normal``)."""

    def __init__(self, script: dict[int, Answer]) -> None:
        self.script = script
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.05)
        self.requests: list[tuple[int, int, int, int]] = []  # (command, rid, start, length)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data, addr = self.sock.recvfrom(65536)
            except TimeoutError:
                continue
            cmd, _chk, _sid, rid = struct.unpack_from("<4H", data)
            start, length = struct.unpack_from("<ii", data, 8) if cmd == zkudp.CMD_READ_BUFFER else (0, 0)
            n = len(self.requests)
            self.requests.append((cmd, rid, start, length))
            for out in self.script.get(n, normal)(rid, start, length):
                self.sock.sendto(out, addr)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


@pytest.fixture
def channel_for() -> Iterator[Callable[..., tuple[zkudp.UdpChannel, ScriptedDevice]]]:
    made: list[tuple[socket.socket, ScriptedDevice]] = []

    def make(script: dict[int, Answer], max_chunk: int = 4096,
             timeout_s: float = 1.0) -> tuple[zkudp.UdpChannel, ScriptedDevice]:
        dev = ScriptedDevice(script)
        raw = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        rtt = zkudp.RttEstimator()
        rtt.sample(0.002)  # a known fast link: RTO at its floor
        ch = zkudp.UdpChannel(RecordingSocket(raw, FrameRing(), tcp=False), dev.sock.getsockname(),
                              timeout_s=timeout_s, verify=True, rtt=rtt, counters=zkudp.UdpCounters(),
                              max_chunk=max_chunk)
        ch.session_id, ch.reply_id = SID, 100
        made.append((raw, dev))
        return ch, dev

    yield make
    for raw, dev in made:
        raw.close()
        dev.close()


@pytest.mark.timeout(10)
def test_script_lost_piece_is_rerequested_and_never_mixed_with_late_pieces(channel_for: Any) -> None:
    held: list[bytes] = []

    def lose_piece_1(rid: int, start: int, length: int) -> list[bytes]:
        out = normal(rid, start, length)
        held.append(out.pop(2))  # DATA piece 1 "lost" ... (PREPARE, p0, p1, ...)
        return out

    def late_piece_first(rid: int, start: int, length: int) -> list[bytes]:
        # ... and delivered late, in the middle of the retry's answer: it carries the first
        # attempt's reply id, and the first attempt already ended with ACK_OK.
        out = normal(rid, start, length)
        return out[:2] + held + out[2:]

    ch, dev = channel_for({0: lose_piece_1, 1: late_piece_first})
    assert ch.read_dataset(len(DATASET)) == DATASET
    assert ch.counters.resends == 1
    # The retry asked for the same start with half the length (fewer datagrams that must all arrive).
    assert dev.requests[0][2:] == (0, 4096) and dev.requests[1][2:] == (0, 2048)
    assert dev.requests[0][1] != dev.requests[1][1], "a retry must carry a new reply id"


@pytest.mark.timeout(10)
def test_script_stale_answers_of_earlier_chunks_are_ignored(channel_for: Any) -> None:
    first: list[bytes] = []

    def remember(rid: int, start: int, length: int) -> list[bytes]:
        out = normal(rid, start, length)
        first.extend(out)
        return out

    def replay_then_answer(rid: int, start: int, length: int) -> list[bytes]:
        # A full copy of the previous chunk's answer (same length!) arrives first: wrong reply id.
        return first + normal(rid, start, length)

    ch, _dev = channel_for({0: remember, 1: replay_then_answer})
    assert ch.read_dataset(len(DATASET)) == DATASET
    assert ch.counters.resends == 0
    assert ch.counters.stale >= len(first)


@pytest.mark.timeout(10)
def test_script_duplicate_piece_plus_lost_piece_is_not_accepted(channel_for: Any) -> None:
    def dup_and_loss(rid: int, start: int, length: int) -> list[bytes]:
        out = normal(rid, start, length)  # PREPARE, p0, p1, p2, p3, ACK
        return [out[0], out[1], out[2], out[2], out[4], out[5]]  # p1 twice, p2 lost: right byte count

    ch, _dev = channel_for({0: dup_and_loss})
    assert ch.read_dataset(len(DATASET)) == DATASET
    assert ch.counters.duplicates == 1 and ch.counters.resends == 1


@pytest.mark.timeout(10)
def test_script_reordered_answer_is_not_accepted(channel_for: Any) -> None:
    def data_first(rid: int, start: int, length: int) -> list[bytes]:
        out = normal(rid, start, length)
        return out[1:2] + out[:1] + out[2:]  # p0 overtakes PREPARE_DATA

    ch, _dev = channel_for({0: data_first})
    assert ch.read_dataset(len(DATASET)) == DATASET
    assert ch.counters.resends == 1


@pytest.mark.timeout(10)
def test_script_lost_ack_costs_nothing_and_late_whole_answer_is_used(channel_for: Any) -> None:
    def no_ack(rid: int, start: int, length: int) -> list[bytes]:
        return normal(rid, start, length)[:-1]

    ch, _dev = channel_for({0: no_ack, 1: no_ack})
    t0 = time.monotonic()
    assert ch.read_dataset(len(DATASET)) == DATASET
    assert time.monotonic() - t0 < 0.15, "waited for an ACK_OK that was not needed"
    assert ch.counters.resends == 0


@pytest.mark.timeout(10)
def test_script_device_always_short_fails_fast_without_data(channel_for: Any) -> None:
    def short(rid: int, start: int, length: int) -> list[bytes]:
        out = normal(rid, start, length)
        return out[:-2] + out[-1:]  # last piece never sent, ACK_OK says done

    ch, dev = channel_for(dict.fromkeys(range(50), short))
    t0 = time.monotonic()
    with pytest.raises(zkudp.UdpExchangeError, match="still incomplete after 10 requests"):
        ch.read_dataset(len(DATASET))
    assert time.monotonic() - t0 < 1.0
    assert len(dev.requests) == zkudp.MAX_ATTEMPTS


@pytest.mark.timeout(10)
def test_script_silence_gives_up_after_timeout_with_retries(channel_for: Any) -> None:
    ch, dev = channel_for(dict.fromkeys(range(50), lambda rid, s, n: []), timeout_s=1.0)
    t0 = time.monotonic()
    with pytest.raises(zkudp.UdpNoAnswer) as ei:
        ch.read_dataset(len(DATASET))
    elapsed = time.monotonic() - t0
    assert 0.95 < elapsed < 1.5, elapsed
    assert ei.value.attempts == len(dev.requests) >= 4  # 0.2 + 0.3 + 0.45 + 0.05 s: re-asked with back-off


@pytest.mark.timeout(10)
def test_script_request_accepts_answer_to_any_send_of_the_same_command(channel_for: Any) -> None:
    sizes = bytes(80)

    def ignore(rid: int, start: int, length: int) -> list[bytes]:
        return [pkt(ACK_OK, 7, sizes)]  # only a stale answer to something long ago

    ch, dev = channel_for({0: ignore, 1: lambda rid, s, n: [pkt(ACK_OK, rid, sizes)]})
    answer = ch.request(zkudp.CMD_GET_FREE_SIZES)
    assert struct.unpack_from("<H", answer, 6)[0] == dev.requests[1][1]
    assert ch.counters.resends == 1 and ch.counters.stale == 1


@pytest.mark.timeout(10)
def test_script_unsafe_commands_are_sent_once(channel_for: Any) -> None:
    ch, dev = channel_for(dict.fromkeys(range(5), lambda rid, s, n: []), timeout_s=0.5)
    with pytest.raises(zkudp.UdpNoAnswer):
        ch.request(15)  # CMD_CLEAR_ATTLOG: clearing twice could wipe a punch that landed between
    assert len(dev.requests) == 1


@pytest.mark.timeout(10)
def test_script_answers_of_another_connection_are_ignored(channel_for: Any) -> None:
    # A late answer from an earlier connection (re-enable connections reuse the socket) can carry
    # a reply id this connection is using; it has that connection's session id.
    sizes = bytes(80)

    def other_session_first(rid: int, start: int, length: int) -> list[bytes]:
        old = [zkudp.build_packet(struct.unpack_from("<H", p)[0], SID + 1, rid, p[8:]) for p in normal(rid, 0, length)]
        return old + normal(rid, start, length)

    ch, _dev = channel_for({0: lambda rid, s, n: [pkt(ACK_OK, rid, sizes)], 2: other_session_first})
    ch.request(zkudp.CMD_GET_FREE_SIZES)  # first answer: the terminal echoes our session id
    assert ch.echoes_session is True
    assert ch.read_dataset(len(DATASET)) == DATASET
    assert ch.counters.stale >= 6 and ch.counters.resends == 0


def test_reply_ids_start_at_random() -> None:
    # Two connections starting at the same reply id would take each other's late answers for
    # their own; pyzk always starts at the same one.
    raw = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        starts = {zkudp.UdpChannel(RecordingSocket(raw, FrameRing(), tcp=False), ("127.0.0.1", 9), timeout_s=1,
                                   verify=True, rtt=zkudp.RttEstimator(), counters=zkudp.UdpCounters()).reply_id
                  for _ in range(20)}
    finally:
        raw.close()
    assert len(starts) > 15

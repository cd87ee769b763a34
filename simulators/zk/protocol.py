"""ZK binary protocol codec for the simulator: sans-IO packet, time and record encoding.

Sits at the bottom of ``simulators.zk``: ``device.py`` builds replies with it and ``server.py``
frames them for TCP/UDP. Written from the protocol fact sheet, never from a client library,
so that the simulator catches client mistakes instead of sharing them. Everything on the
wire is little-endian.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from datetime import datetime

# --- command and reply codes (fact sheet §1.7) -------------------------------------------
CMD_DB_RRQ = 7
CMD_USER_WRQ = 8
CMD_USERTEMP_RRQ = 9
CMD_OPTIONS_RRQ = 11
CMD_OPTIONS_WRQ = 12
CMD_ATTLOG_RRQ = 13
CMD_CLEAR_DATA = 14
CMD_CLEAR_ATTLOG = 15
CMD_DELETE_USER = 18
CMD_DELETE_USERTEMP = 19
CMD_UNLOCK = 31
CMD_OPLOG_RRQ = 34
CMD_GET_FREE_SIZES = 50
CMD_STARTVERIFY = 60
CMD_CANCELCAPTURE = 62
CMD_STATE_RRQ = 64
CMD_GET_PINWIDTH = 69
CMD_GET_USERTEMP = 88
CMD_SAVE_USERTEMPS = 110  # pyzk 0.9 save_user_template: apply the uploaded users + templates (§2.7)
CMD_GET_TIME = 201
CMD_SET_TIME = 202
CMD_REG_EVENT = 500
CMD_CONNECT = 1000
CMD_EXIT = 1001
CMD_ENABLEDEVICE = 1002
CMD_DISABLEDEVICE = 1003
CMD_RESTART = 1004
CMD_POWEROFF = 1005
CMD_REFRESHDATA = 1013
CMD_REFRESHOPTION = 1014
CMD_TESTVOICE = 1017
CMD_GET_VERSION = 1100
CMD_AUTH = 1102
CMD_PREPARE_DATA = 1500
CMD_DATA = 1501
CMD_FREE_DATA = 1502
CMD_PREPARE_BUFFER = 1503  # "CMD_DATA_WRRQ": ask the device to prepare a dataset
CMD_READ_BUFFER = 1504  # "CMD_DATA_RDY": read one chunk of the prepared dataset

CMD_ACK_OK = 2000
CMD_ACK_ERROR = 2001
CMD_ACK_DATA = 2002
CMD_ACK_UNAUTH = 2005
CMD_ACK_UNKNOWN = 0xFFFF

EF_ATTLOG = 1

FCT_ATTLOG = 1
FCT_FINGERTMP = 2
FCT_OPLOG = 4
FCT_USER = 5

TCP_MAGIC = b"\x50\x50\x82\x7d"
HEADER = struct.Struct("<4H")
TCP_TOP = struct.Struct("<4sI")

#: Chunk sizes inside a buffered read: pyzk TCP asks for 0xFFC0, pyzk UDP 16 KiB; a UDP DATA
#: datagram never carries more than 1024 bytes (pyzk reads 1032 per datagram).
UDP_DATA_PIECE = 1024

RECORD_LAYOUTS = (8, 16, 40)
USER_LAYOUTS = (28, 72)


class ProtocolError(ValueError):
    """A packet that cannot be parsed (too short, bad TCP magic, absurd length)."""


# --- checksum and framing ----------------------------------------------------------------


def checksum(buf: bytes) -> int:
    """Ones'-complement sum of u16 LE words (odd tail byte padded), inverted (§1.2)."""
    if len(buf) % 2:
        buf = buf + b"\x00"
    total = sum(struct.unpack_from(f"<{len(buf) // 2}H", buf))
    # Fold the carries back in (end-around carry); two folds are enough for any length
    # below 2**32 words, loop anyway to be exact.
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return 0xFFFF - total


def build_packet(command: int, session_id: int, reply_id: int, data: bytes = b"") -> bytes:
    """Build one ZK packet (8-byte header + data) with a correct checksum."""
    head = HEADER.pack(command & 0xFFFF, 0, session_id & 0xFFFF, reply_id & 0xFFFF)
    chk = checksum(head + data)
    return HEADER.pack(command & 0xFFFF, chk, session_id & 0xFFFF, reply_id & 0xFFFF) + data


def tcp_wrap(packet: bytes) -> bytes:
    """Prefix a ZK packet with the TCP magic and u32 length (§1.5)."""
    return TCP_TOP.pack(TCP_MAGIC, len(packet)) + packet


@dataclass(frozen=True, slots=True)
class Packet:
    """One parsed ZK packet."""

    command: int
    checksum: int
    session_id: int
    reply_id: int
    data: bytes

    @property
    def checksum_ok(self) -> bool:
        """True when the checksum field matches the standard checksum of the packet."""
        head = HEADER.pack(self.command, 0, self.session_id, self.reply_id)
        return checksum(head + self.data) == self.checksum


def parse_packet(buf: bytes) -> Packet:
    """Parse a ZK packet (no TCP prefix). Raises ProtocolError when shorter than a header."""
    if len(buf) < 8:
        raise ProtocolError(f"packet of {len(buf)} bytes is shorter than the 8-byte header")
    command, chk, session_id, reply_id = HEADER.unpack_from(buf)
    return Packet(command, chk, session_id, reply_id, bytes(buf[8:]))


def parse_tcp_top(top: bytes, max_length: int = 1 << 20) -> int:
    """Validate the 8-byte TCP prefix and return the length of the ZK packet that follows."""
    if len(top) != 8:
        raise ProtocolError(f"TCP prefix must be 8 bytes, got {len(top)}")
    magic, length = TCP_TOP.unpack(top)
    if magic != TCP_MAGIC:
        raise ProtocolError(f"bad TCP magic {magic.hex()}")
    if length < 8 or length > max_length:
        raise ProtocolError(f"bad TCP packet length {length}")
    return length


# --- comm key (§2.1) ---------------------------------------------------------------------


def make_commkey(key: int, session_id: int, ticks: int = 50) -> bytes:
    """The 4-byte AUTH payload for comm key ``key`` and session ``session_id``."""
    k = 0
    for i in range(32):
        if key & (1 << i):
            k |= 1 << (31 - i)
    k = (k + session_id) & 0xFFFFFFFF
    b = struct.pack("<I", k)
    c = bytes(x ^ y for x, y in zip(b, b"ZKSO", strict=True))
    c0, c1, c2, c3 = c[0], c[1], c[2], c[3]
    _ = c0  # c0 is discarded by the original algorithm
    t = ticks & 0xFF
    return bytes((c2 ^ t, c3 ^ t, t, c1 ^ t))


# --- time (§2.5) -------------------------------------------------------------------------


def encode_fields(year: int, month: int, day: int, hour: int, minute: int, second: int) -> int:
    """Encode wall-clock fields; every month counts 31 days, so impossible dates encode too."""
    return ((year % 100) * 12 * 31 + (month - 1) * 31 + (day - 1)) * 86400 + (
        hour * 60 + minute
    ) * 60 + second


def encode_time(dt: datetime) -> int:
    """Encode a naive local datetime (years 2000–2099) as the device's u32 time."""
    return encode_fields(dt.year, dt.month, dt.day, dt.hour, dt.minute, dt.second)


def decode_fields(t: int) -> tuple[int, int, int, int, int, int]:
    """Integer decode chain of §2.5: (year, month, day, hour, minute, second); never fails."""
    second = t % 60
    t //= 60
    minute = t % 60
    t //= 60
    hour = t % 24
    t //= 24
    day = t % 31 + 1
    t //= 31
    month = t % 12 + 1
    t //= 12
    return 2000 + t, month, day, hour, minute, second


def time_text(t: int) -> str:
    """Device-local wall-clock text of an encoded time, even for impossible dates."""
    y, mo, d, h, mi, s = decode_fields(t)
    return f"{y:04d}-{mo:02d}-{d:02d} {h:02d}:{mi:02d}:{s:02d}"


def decode_time(t: int) -> datetime:
    """Decode to a datetime; raises ValueError for impossible dates (as pyzk does)."""
    return datetime(*decode_fields(t))


def time_hex(t: int) -> bytes:
    """6-byte ``yy mm dd HH MM SS`` form used in realtime events."""
    y, mo, d, h, mi, s = decode_fields(t)
    return bytes(((y - 2000) & 0xFF, mo, d, h, mi, s))


def is_valid_time(t: int) -> bool:
    """True when the encoded time is a real calendar date."""
    try:
        decode_time(t)
    except ValueError:
        return False
    return True


# --- records and users (§2.9, §2.10) -----------------------------------------------------

_ATT40 = struct.Struct("<H24sBIB8s")
_ATT16 = struct.Struct("<IIBB2sI")
_ATT8 = struct.Struct("<HBIB")
_USER28 = struct.Struct("<HB5s8sIxBhI")
_USER72 = struct.Struct("<HB8s24sIB7sx24s")
#: Bytes 32–39 of a 40-byte record as seen in a real capture (adro).
ATT40_TAIL = b"\x00\x00\x00\x00\xff\x00\x00\x00"


def pack_att40(uid: int, user_id: str, verify: int, t: int, state: int) -> bytes:
    """40-byte record: uid, user id text, verify @26, time @27, state @31."""
    return _ATT40.pack(uid, user_id.encode("ascii"), verify, t, state, ATT40_TAIL)


def pack_att16(user_id: int, t: int, state: int, verify: int, workcode: int = 0) -> bytes:
    """16-byte record: u32 user id, time, state @8, verify @9, reserved, workcode."""
    return _ATT16.pack(user_id, t, state, verify, b"\x00\x00", workcode)


def pack_att8(uid: int, verify: int, t: int, state: int) -> bytes:
    """8-byte record: u16 uid, verify, time, state."""
    return _ATT8.pack(uid, verify, t, state)


def unpack_att(layout: int, rec: bytes) -> dict[str, int | str]:
    """Decode one attendance record of ``layout`` bytes into a dict (tests, debugging)."""
    if layout == 40:
        uid, uid_text, verify, t, state, _ = _ATT40.unpack(rec)
        return {"uid": uid, "user_id": uid_text.split(b"\0")[0].decode(), "verify": verify,
                "time": t, "state": state}
    if layout == 16:
        user_id, t, state, verify, _, _wc = _ATT16.unpack(rec)
        return {"user_id": str(user_id), "time": t, "state": state, "verify": verify}
    if layout == 8:
        uid, verify, t, state = _ATT8.unpack(rec)
        return {"uid": uid, "verify": verify, "time": t, "state": state}
    raise ValueError(f"unknown record layout {layout}")


@dataclass(slots=True)
class User:
    """One enrolled user as the device stores it."""

    uid: int
    user_id: str
    name: str
    privilege: int = 0
    password: str = ""
    card: int = 0
    group: int = 1

    def pack(self, layout: int) -> bytes:
        """Encode as a 28- or 72-byte user record."""
        if layout == 28:
            return _USER28.pack(self.uid, self.privilege, self.password.encode()[:4],
                                self.name.encode()[:7], self.card, self.group, 0,
                                int(self.user_id))
        if layout == 72:
            # Group number at byte 39, zeros in 40–47 (no per-user timezones): pyzk then
            # reports group_id "" and nothing is misread as text.
            return _USER72.pack(self.uid, self.privilege, self.password.encode()[:7],
                                self.name.encode()[:23], self.card, self.group, b"",
                                self.user_id.encode()[:23])
        raise ValueError(f"unknown user layout {layout}")


def unpack_user(buf: bytes) -> User:
    """Decode a 28- or 72-byte user record (USER_WRQ uploads; length picks the layout)."""
    if len(buf) >= 72:
        uid, priv, pw, name, card, group, _tz, user_id = _USER72.unpack(buf[:72])
        return User(uid, user_id.split(b"\0")[0].decode("utf-8", "replace"),
                    name.split(b"\0")[0].decode("utf-8", "replace"), priv,
                    pw.split(b"\0")[0].decode("utf-8", "replace"), card, group)
    if len(buf) >= 28:
        uid, priv, pw, name, card, group, _tz, user_id = _USER28.unpack(buf[:28])
        return User(uid, str(user_id), name.split(b"\0")[0].decode("utf-8", "replace"), priv,
                    pw.split(b"\0")[0].decode("utf-8", "replace"), card, group)
    raise ProtocolError(f"user record of {len(buf)} bytes (need 28 or 72)")


def dataset(records: bytes) -> bytes:
    """A 1503 dataset: u32 byte count followed by the records (§2.8)."""
    return struct.pack("<I", len(records)) + records


# --- replies with payloads ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sizes:
    """Counts and capacities served by GET_FREE_SIZES."""

    users: int
    fingers: int
    records: int
    oplog: int
    admins: int
    passwords: int
    fingers_cap: int
    users_cap: int
    records_cap: int
    faces: int = 0
    faces_cap: int = 0


#: GET_FREE_SIZES payload layouts: 80 bytes (K20 capture), 92 (80 + face block; adro and another
#: capture), 112 (SpeedFace-class units, pyzk issue #170: the 92 bytes + 20 more, sent as zeros here)
#: and "zero" (4 zero bytes, reported for some newer face terminals).
FREE_SIZES_LAYOUTS = ("80", "92", "112", "zero")


def pack_free_sizes(s: Sizes, layout: str = "92") -> bytes:
    """GET_FREE_SIZES payload in ``layout`` (default: 92 bytes, 80 + the face block pyzk reads)."""
    if layout == "zero":
        return b"\x00\x00\x00\x00"
    fields = [0, 0, 0, 0, s.users, 0, s.fingers, 0, s.records, 0, s.oplog, 0, s.admins,
              s.passwords, s.fingers_cap, s.users_cap, s.records_cap,
              max(0, s.fingers_cap - s.fingers), max(0, s.users_cap - s.users),
              max(0, s.records_cap - s.records), s.faces, 0, s.faces_cap]
    if layout == "80":
        return struct.pack("<20i", *fields[:20])
    if layout == "112":
        return struct.pack("<28i", *fields, 0, 0, 0, 0, 0)
    return struct.pack("<23i", *fields)


def unpack_free_sizes(payload: bytes) -> dict[str, int]:
    """Decode a GET_FREE_SIZES payload (tests)."""
    f = struct.unpack_from("<20i", payload)
    out = {"users": f[4], "fingers": f[6], "records": f[8], "oplog": f[10], "admins": f[12],
           "passwords": f[13], "fingers_cap": f[14], "users_cap": f[15], "records_cap": f[16],
           "fingers_av": f[17], "users_av": f[18], "records_av": f[19]}
    if len(payload) >= 92:
        g = struct.unpack_from("<3i", payload, 80)
        out["faces"], out["faces_cap"] = g[0], g[2]
    return out


def buffer_stat(size: int) -> bytes:
    """13-byte ACK_OK payload announcing a prepared dataset of ``size`` bytes (§2.8 B)."""
    # The last 4 bytes have no known meaning (a real capture shows cd ef 23 00); no client
    # reads them, so send a cheap stand-in that still varies with the size.
    return struct.pack("<BIII", 0, size, size, (size * 2654435761) & 0xFFFFFFFF)


def prepare_data(length: int, piece: int = UDP_DATA_PIECE) -> bytes:
    """8-byte PREPARE_DATA payload: chunk length + the device's packet size."""
    return struct.pack("<II", length, piece)


# --- realtime events (§2.12, §3.6) -------------------------------------------------------


def event_attlog_32(user_id: str, verify: int, state: int, t: int) -> bytes:
    """32-byte ATTLOG event data (TCP form): user id text, verify, state, time hex."""
    return struct.pack("<24sBB6s", user_id.encode("ascii")[:23], verify, state, time_hex(t))


def event_attlog_12(user_id: int, verify: int, state: int, t: int) -> bytes:
    """12-byte ATTLOG event data (pyzk UDP form): u32 user id, verify, state, time hex."""
    return struct.pack("<IBB6s", user_id, verify, state, time_hex(t))


def event_attlog_10(user_id: int, verify: int, state: int, t: int) -> bytes:
    """10-byte ATTLOG event data (manual2006 / node-zklib UDP form): u16 user id."""
    return struct.pack("<HBB6s", user_id & 0xFFFF, verify, state, time_hex(t))


def parse_read_buffer_request(data: bytes) -> tuple[int, int, int]:
    """Parse 1503 request data ``<bhii``: (table command, fct, ext); short data is zero-padded."""
    if len(data) < 3:
        raise ProtocolError(f"1503 request data of {len(data)} bytes")
    padded = data[:11].ljust(11, b"\x00")
    _one, table, fct, ext = struct.unpack("<bhii", padded)
    return table, fct, ext


def parse_chunk_request(data: bytes) -> tuple[int, int]:
    """Parse 1504 request data ``<ii``: (start, length)."""
    if len(data) < 8:
        raise ProtocolError(f"1504 request data of {len(data)} bytes")
    start, length = struct.unpack_from("<ii", data)
    return start, length

"""Device profiles: named bundles of DeviceSpec settings that make a simulated unit behave like one model.

``DeviceSpec(profile="k40")`` (and ``profile = "k40"`` in a fleet file, ``--profile k40`` on fpgw-sim) fills
every spec field still at its default with the profile's value; fields given explicitly win. Only
``device.py`` reads this table. Each profile names the public source of what it claims; where no public
source gives a value (capacities, mostly), the value is a representative one and says so.

Sources (facts only, nothing copied):
  [pyzk-readme]  fananimi/pyzk README.md, "Compatible devices": firmware/platform/device-name triples
                 reported by users of real units.
  [pyzk-test]    fananimi/pyzk test.py (commit 5063798): captures of real terminals, among them a TCP user
                 read split into 1008-byte DATA packets with a packet counter in the session field
                 (test_tcp_get_users_broken_tcp, from pyzk PR #18) and a K20 (JZ4725_TFT) answering
                 GET_FREE_SIZES with 80 bytes and small reads with one direct DATA packet.
  [js_zklib-50]  bulentv/js_zklib issue #50: a firmware-6.60 unit over TCP, PREPARE_DATA announcing 1008-byte
                 packets, DATA with counter 0 in the session field.
  [pyzk-170]     fananimi/pyzk issue #170: SpeedFace-H5L[P] "Ver 6.60 May 13 2020" answers GET_FREE_SIZES with
                 112 bytes; pyzk gets no attendance although the unit holds records.
  [pyzk-126]     fananimi/pyzk issue #126: SpeedFace-V5L, users download, attendance comes back empty.
  [php-zklib-26] vodvud/php_zklib issue #26: SpeedFace-V5L "Ver 6.60 Jul 1 2020", ~Platform=ZAM170_TFT.
  [php-zklib]    dnaextrim/php_zklib zkattendance.php: the legacy direct read (command 13 over UDP answered
                 with PREPARE_DATA + 1024-byte DATA datagrams) that older PHP clients use.
  [manual2006]   ZKSoftware "A series standalone product communication protocol manual" (2006, shipped in
                 the pyzk repository): the UDP-era black-and-white firmware with 28-byte users.
The captures themselves are kept in tests/simulators/captures/real_terminals.json.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Profile:
    """One model: what it is, the spec values it sets, and where the facts come from."""

    name: str
    description: str
    settings: dict[str, Any] = field(default_factory=dict)
    sources: tuple[str, ...] = ()


#: Framing seen on real units over TCP and UDP ([pyzk-test], [js_zklib-50]).
_REAL_FRAMING: dict[str, Any] = {
    "udp_framing": "counter",
    "tcp_framing": "packets",
    "tcp_packet_size": 1008,
    "tcp_buffered": True,
}

PROFILES: dict[str, Profile] = {
    "generic": Profile(
        "generic", "the simulator's own defaults: framing every public client reads, exact sizes",
        {}, ()),
    "k40": Profile(
        "k40", "K40/ID fingerprint terminal (JZ4725_TFT): real-terminal framing, 80-byte sizes, "
               "answers the legacy direct reads 9/13",
        {**_REAL_FRAMING, "firmware": "Ver 6.60 May 25 2018", "platform": "JZ4725_TFT", "device_name": "K40/ID",
         "free_sizes": "80", "legacy_reads": True, "record_layout": 40, "user_layout": 72,
         # capacities: representative for the class (no public source read for this unit)
         "users_cap": 1000, "records_cap": 80_000},
        ("pyzk-readme", "pyzk-test", "php-zklib")),
    "iclock880": Profile(
        "iclock880", "iClock880-H/ID (ZEM600_TFT, firmware 6.70): real-terminal framing, 92-byte sizes",
        {**_REAL_FRAMING, "firmware": "Ver 6.70 Jul 12 2013", "platform": "ZEM600_TFT",
         "device_name": "iClock880-H/ID", "free_sizes": "92", "record_layout": 40, "user_layout": 72,
         # capacities: representative (not from a datasheet read for this work)
         "users_cap": 3000, "records_cap": 100_000},
        ("pyzk-readme", "pyzk-test")),
    "mb360": Profile(
        "mb360", "MB360-class multi-biometric (face + fingerprint) unit: real-terminal framing, 92-byte "
                 "sizes with the face block",
        {**_REAL_FRAMING, "firmware": "Ver 6.60 Jan 13 2016", "platform": "ZMM220_TFT", "device_name": "MB360",
         "free_sizes": "92", "faces": 40, "record_layout": 40, "user_layout": 72,
         # firmware/platform: the ZMM220_TFT face-terminal pair from [pyzk-readme]; capacities representative
         "users_cap": 2000, "records_cap": 100_000},
        ("pyzk-readme", "pyzk-test")),
    "speedface": Profile(
        "speedface", "SpeedFace-V5L-class face terminal: real-terminal framing, 112-byte sizes whose "
                     "record count is 0 while the log holds records",
        {**_REAL_FRAMING, "firmware": "Ver 6.60 Jul 1 2020", "platform": "ZAM170_TFT",
         "device_name": "SpeedFace-V5L", "free_sizes": "112", "records_count": "zero", "faces": 40,
         "record_layout": 40, "user_layout": 72, "users_cap": 6000, "records_cap": 200_000},
        # The 49-byte records of [pyzk-126]/pyzk PR #166 are not simulated (the layout is not public).
        ("pyzk-170", "pyzk-126", "php-zklib-26", "pyzk-test")),
    "x100c": Profile(
        "x100c", "X100-C-class black-and-white terminal: UDP only, 28-byte users, 16-byte records, "
                 "counter framing, legacy reads",
        {"tcp": False, "udp": True, "udp_framing": "counter", "firmware": "Ver 6.4.1 (build 99)",
         "platform": "ZEM500", "device_name": "X100-C", "free_sizes": "80", "legacy_reads": True,
         "record_layout": 16, "user_layout": 28, "users_cap": 1000, "records_cap": 50_000},
        # firmware string: the 6.4.1 B&W line listed in [pyzk-readme]; layouts from [manual2006]
        ("pyzk-readme", "manual2006", "php-zklib")),
    "ma300": Profile(
        "ma300", "MA300 (ZEM560): 8-byte attendance records, 28-byte users, real-terminal framing",
        {**_REAL_FRAMING, "firmware": "Ver 6.60 Mar 18 2013", "platform": "ZEM560", "device_name": "MA300",
         "free_sizes": "80", "record_layout": 8, "user_layout": 28, "users_cap": 1500, "records_cap": 100_000},
        ("pyzk-readme", "pyzk-test")),
}


def profile(name: str) -> Profile:
    """The profile called ``name``; ValueError naming the known ones otherwise."""
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown profile {name!r} (known: {', '.join(PROFILES)})") from None

"""The ADMS/PUSH ("iclock") wire format, sans I/O: what terminals send and what they are answered.

    gateway.push.receiver (HTTP) --bytes/query--> parse_attlog / parse_operlog / parse_results / parse_info
                             <--text--         handshake_reply / command_lines / OK replies

Facts and quirks follow ../shared/reference/other-protocols.md §3 (vendor doc "Attendance PUSH protocol" and
public servers). Unverified items are handled tolerantly: LF or CRLF, extra fields, a form-encoded body,
alphanumeric PINs and command ids. Every parser is bounded (lines, field length) and never raises on
device input: a line it cannot use is returned with the reason instead.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from urllib.parse import unquote_plus
from zoneinfo import ZoneInfo

from drivers.base import Counts, RawPunch

#: Serial numbers we accept in a query string (vendor doc: letters and digits; s0x90/zkteco-adms also "_-").
SERIAL = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
#: Command ids we mint: letters and digits, at most 16 characters (vendor doc).
COMMAND_ID = re.compile(r"^[A-Za-z0-9]{1,16}$")
#: Longest PIN kept (punches.device_user_id is String(64)); longer lines are refused, not cut.
PIN_MAX = 64
#: Longest field of any line we look at; a longer one is refused.
FIELD_MAX = 256
_TIME = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}$")
_INT = re.compile(r"^-?\d{1,11}$")
#: What we tell terminals we speak (they use the lower of both versions).
SERVER_VERSION = "2.4.1"

#: Tables a terminal uploads to /iclock/cdata that we take (others are answered OK and counted).
ATTLOG, OPERLOG, BIODATA = "ATTLOG", "OPERLOG", "BIODATA"


@dataclass(frozen=True)
class HandshakeOptions:
    """The option block values one terminal is told at its handshake."""

    delay_s: int
    error_delay_s: int
    #: The terminal's IANA zone: the block says it in the unit the firmware expects (hours or minutes).
    timezone: str


def timezone_option(zone: str, at: datetime) -> str:
    """``TimeZone`` value: whole hours when the offset is whole (7 for WIB), else minutes (330 = +5:30).

    Vendor doc: -12 < v < 12 means hours, |v| > 60 minutes; a wrong unit shifts the terminal's clock
    (saifulcoder/adms-server-ZKTeco issue #14).
    """
    offset = ZoneInfo(zone).utcoffset(at.replace(tzinfo=None)) or timedelta(0)
    minutes = int(offset.total_seconds() // 60)
    if minutes % 60 == 0 and -12 < minutes // 60 < 12:
        return str(minutes // 60)
    return str(minutes)


def handshake_reply(serial: str, options: HandshakeOptions, now: datetime) -> str:
    """The option block answering ``GET /iclock/cdata?options=all`` (LF-joined, vendor doc order).

    Stamps are "don't care" values: 0 would make the terminal upload its whole log again (we dedup, but
    that is a needless flood), and new firmware ignores any other value. Realtime=1: every punch is
    pushed at once. The caller adds the Date header the terminal sets its clock from.
    """
    lines = [
        f"GET OPTION FROM: {serial}",
        "ATTLOGStamp=None",
        "OPERLOGStamp=9999",
        "ATTPHOTOStamp=None",
        f"ErrorDelay={options.error_delay_s}",
        f"Delay={options.delay_s}",
        "TransTimes=00:00;14:05",
        "TransInterval=1",
        "TransFlag=TransData AttLog\tOpLog\tEnrollUser\tChgUser\tEnrollFP\tChgFP",
        f"TimeZone={timezone_option(options.timezone, now)}",
        "Realtime=1",
        "Encrypt=None",
        f"ServerVer={SERVER_VERSION}",
        f"PushProtVer={SERVER_VERSION}",
    ]
    return "\n".join(lines) + "\n"


def accepted_reply(n: int) -> str:
    """The reply to an upload: ``OK: n`` (the spelling most servers send and field units accept)."""
    return f"OK: {n}"


def body_text(raw: bytes, content_type: str) -> str:
    """The upload body as text: UTF-8 (undecodable bytes replaced), form-encoded bodies decoded.

    Some firmware and proxies send the lines form-encoded (``%09`` for TAB, ``+`` for space): decoded only
    when the body has no TAB and no LF of its own, so a real tab-separated body is never touched.
    """
    text = raw.decode("utf-8", errors="replace")
    if "\t" not in text and "\n" not in text and ("form-urlencoded" in content_type.lower() or "%09" in text):
        text = unquote_plus(text)
    return text


def split_lines(text: str, max_lines: int) -> tuple[list[str], bool]:
    """(non-empty lines with CR/LF stripped, True when the body had more than max_lines lines)."""
    lines = [line.strip("\r") for line in text.split("\n")]
    lines = [line for line in lines if line.strip()]
    return lines[:max_lines], len(lines) > max_lines


@dataclass
class AttlogBatch:
    """One ATTLOG upload, parsed: the records to store and the lines refused (with why)."""

    punches: list[RawPunch] = field(default_factory=list)
    refused: list[tuple[int, str]] = field(default_factory=list)


def _int_field(fields: list[str], i: int) -> int:
    value = fields[i].strip() if len(fields) > i else ""
    return int(value) if _INT.match(value) else 0


def parse_attlog(text: str, max_lines: int) -> AttlogBatch:
    """ATTLOG lines ``PIN\\tYYYY-MM-DD HH:MM:SS\\tstatus\\tverify\\tworkcode\\t...`` -> raw punches.

    The PIN stays text (alphanumeric PINs exist). Extra fields (mask, temperature) are ignored. A line
    without a PIN or a well-formed time is refused (counted, never half-stored); non-numeric status,
    verify or work code become 0, out-of-range ones are flagged later by gateway.polling.normalize.
    """
    batch = AttlogBatch()
    lines, truncated = split_lines(text, max_lines)
    for number, line in enumerate(lines, start=1):
        fields = line.split("\t")
        pin = fields[0].strip()
        when = fields[1].strip() if len(fields) > 1 else ""
        if not pin or len(pin) > PIN_MAX or not pin.isprintable():
            batch.refused.append((number, "no usable PIN"))
            continue
        if not _TIME.match(when):
            batch.refused.append((number, "time is not YYYY-MM-DD HH:MM:SS"))
            continue
        try:
            local: datetime | None = datetime.strptime(when, "%Y-%m-%d %H:%M:%S")
        except ValueError:
            local = None  # Feb 31 from a broken clock: stored and flagged impossible_date, never dropped
        batch.punches.append(RawPunch(user_id=pin, time_text=when, local_time=local, state=_int_field(fields, 2),
                                      verify=_int_field(fields, 3), workcode=_int_field(fields, 4)))
    if truncated:
        batch.refused.append((max_lines + 1, f"more than {max_lines} lines; the rest is not acknowledged"))
    return batch


#: OPERLOG line kinds we count (the first word of a line).
OPERLOG_KINDS = ("OPLOG", "USER", "FP", "BIODATA", "FACE", "USERPIC", "BIOPHOTO")


def parse_operlog(text: str, max_lines: int) -> tuple[list[str], dict[str, int]]:
    """(the lines, kept raw for the template-backup feature; count per kind, "other" for the rest)."""
    lines, _ = split_lines(text, max_lines)
    counts: dict[str, int] = {}
    for line in lines:
        word = line.split(" ", 1)[0].split("\t", 1)[0].upper()
        kind = word if word in OPERLOG_KINDS else "other"
        counts[kind] = counts.get(kind, 0) + 1
    return lines, counts


@dataclass(frozen=True)
class CommandResult:
    """One line of a ``devicecmd`` upload: the terminal's answer to a command we queued."""

    command_id: str
    #: 0 = done; negative = the vendor's error codes (-1 parameter error, -1002 unsupported, ...).
    return_code: int
    command: str
    #: Extra ``key=value`` lines of multi-line answers (INFO, Shell), bounded.
    extra: dict[str, str] = field(default_factory=dict)


#: Meaning of the return codes the vendor doc lists (appendix 1).
RETURN_CODES = {
    0: "done", -1: "parameter error", -2: "photo size mismatch", -3: "read/write error", -9: "template size mismatch",
    -10: "PIN not on the terminal", -11: "bad template", -12: "bad template", -1001: "capacity exceeded",
    -1002: "not supported", -1003: "timed out on the terminal", -1004: "data and configuration mismatch",
    -1005: "terminal busy", -1006: "data too long", -1007: "out of memory", -1008: "could not fetch server data",
}


def _pairs(line: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in line.split("&"):
        key, sep, value = part.partition("=")
        if sep and key.strip():
            out[key.strip()[:FIELD_MAX]] = value.strip()[:FIELD_MAX]
    return out


def parse_results(text: str, max_lines: int) -> tuple[list[CommandResult], int]:
    """``ID=..&Return=..&CMD=..`` lines (several per upload), or the multi-line form ``ID=..\\nReturn=..``.

    Returns (results, lines that made no sense). An id that is not one we could have minted is kept as
    text: the terminal may answer commands another server queued.
    """
    lines, _ = split_lines(text, max_lines)
    results: list[CommandResult] = []
    bad = 0
    current: dict[str, str] | None = None
    extra: dict[str, str] = {}

    def flush() -> None:
        nonlocal current, extra, bad
        if current is None:
            return
        code = current.get("Return", "")
        if "ID" in current and _INT.match(code):
            results.append(CommandResult(current["ID"], int(code), current.get("CMD", ""), extra))
        else:
            bad += 1
        current, extra = None, {}

    for line in lines:
        pairs = _pairs(line)
        if "ID" in pairs and ("Return" in pairs or "&" not in line):
            flush()
            current = dict(pairs)
        elif current is not None and len(pairs) == 1 and ("Return" in pairs or "CMD" in pairs):
            current.update(pairs)
        elif current is not None:
            key, sep, value = line.partition("=")
            if sep and len(extra) < 100:
                extra[key.strip()[:FIELD_MAX]] = value.strip()[:FIELD_MAX]
        else:
            bad += 1
    flush()
    return results, bad


@dataclass(frozen=True)
class TerminalInfo:
    """The ``INFO=`` value of a getrequest: firmware and counts (capacities are not in it)."""

    firmware: str
    counts: Counts
    address: str
    #: Fingerprint algorithm version (the sixth value, e.g. 10); 0 when absent.
    fp_algorithm: int = 0


def parse_info(value: str) -> TerminalInfo | None:
    """``Ver 2.0.12-20150625,users,fingerprints,attlogs,ip,fpAlg,faceAlg,facesPerEnroll,faces,flags`` or None."""
    parts = [p.strip() for p in value.split(",")]
    if len(parts) < 4 or not all(_INT.match(p) for p in parts[1:4]):
        return None
    faces = int(parts[8]) if len(parts) > 8 and _INT.match(parts[8]) else 0
    counts = Counts(records=max(int(parts[3]), 0), users=max(int(parts[1]), 0), fingers=max(int(parts[2]), 0),
                    faces=max(faces, 0))
    alg = int(parts[5]) if len(parts) > 5 and _INT.match(parts[5]) and 0 < int(parts[5]) < 1000 else 0
    return TerminalInfo(firmware=parts[0][:FIELD_MAX], counts=counts, address=parts[4][:64] if len(parts) > 4 else "",
                        fp_algorithm=alg)


def command_lines(commands: list[tuple[str, str]]) -> str:
    """The getrequest reply: ``C:<id>:<command>`` lines, or ``OK`` when nothing waits."""
    if not commands:
        return "OK"
    return "\n".join(f"C:{cid}:{text}" for cid, text in commands) + "\n"


def query_attlog_command(start: datetime, end: datetime) -> str:
    """``DATA QUERY ATTLOG`` for a local-time range: the terminal uploads those records again (gap repair).

    The bare form without a range was refused (-1) by a real terminal (s0x90/zkteco-adms), so the range
    is always given.
    """
    return f"DATA QUERY ATTLOG StartTime={start:%Y-%m-%d %H:%M:%S}\tEndTime={end:%Y-%m-%d %H:%M:%S}"


#: The commands `fpgw devices` queues for push terminals (name -> command text; query-log is built above).
#: sync-time is CHECK: the terminal reloads its options, i.e. makes a new handshake, and sets its clock
#: from that reply's Date header and TimeZone (vendor doc; unverified on hardware which firmware does).
SIMPLE_COMMANDS = {"sync-time": "CHECK", "reboot": "REBOOT", "clear": "CLEAR LOG", "info": "INFO"}

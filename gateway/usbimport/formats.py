"""The attendance exports a terminal writes to a USB stick, read into raw punches (pure functions, no I/O).

    bytes of attlog.dat / <n>_attlog.dat / <serial>_attlog.dat --> parse_export --> ParsedExport
        (RawPunch per record, in file order = the terminal's log order; BadLine per unreadable line)
    file name --> name_hint --> the serial or machine number the name carries

Layouts (docs/usb-import.md "What the file looks like"; sources in tests/usb/fixtures/README.md):

* text, one record per line, fields separated by TAB, lines ending CRLF: ``PIN, YYYY-MM-DD HH:MM:SS,
  machine number, state, verify, work code`` (the ZKTeco U-disk SDK's GetAttLogFromDat/SetAttLogToDat; the PIN
  is often right-aligned with spaces). Lines with 7 or more fields are read in the ADMS/PUSH order instead
  (``PIN, time, state, verify, work code, reserved...``), the way gateway.push reads them.
* the same text with a first line holding the terminal's serial number and a last line holding a checksum
  (the SDK's "extended" black-and-white form); the checksum's algorithm is not public and is not checked.
* binary: the 8/16/40-byte attendance records of the network protocol, with or without the dataset's u32
  byte-count header (decoded by drivers.zk.records, the same code the network poll uses). No public sample
  of such an export was found: this is read for robustness, by evidence, and said so in the docs.

Every record gets the time text the network poll would give it (``YYYY-MM-DD HH:MM:SS``, zero-padded), so a
later poll of the same terminal maps the same record to the same punch. A line whose time has no seconds
cannot match the terminal's own record and is set aside, never guessed. Anything else unreadable is a
``BadLine`` (the importer quarantines it); a file that is not an attendance export at all raises
``ExportError``. Nothing else is raised, whatever the bytes (tests/usb/test_formats_fuzz.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime

from drivers.base import RawPunch
from drivers.zk.records import (
    RECORD_SIZES,
    DatasetError,
    choose_record_size,
    layout_sanity,
    parse_records,
    record_evidence,
    split_dataset,
)

#: Biggest export read (a full 200,000-record log is about 10 MB of text).
MAX_EXPORT_BYTES = 64 * 1024 * 1024
#: Longest PIN kept (punches.device_user_id is String(64)).
PIN_MAX = 64
#: Longest raw line kept in a BadLine (the quarantine table bounds it again).
RAW_MAX = 400

_LINES = re.compile(rb"\r\n|\n|\r")
_DATE = re.compile(r"^(\d{4})[-/.](\d{1,2})[-/.](\d{1,2})$")
_CLOCK = re.compile(r"^(\d{1,2}):(\d{1,2}):(\d{1,2})$")
_CLOCK_NO_SECONDS = re.compile(r"^\d{1,2}:\d{1,2}$")
_DATE_TIME = re.compile(r"^(\S+)[ T](\S+)$")
_INT = re.compile(r"^[+-]?\d{1,12}$")
#: A serial number line (the SDK's extended form) or the serial part of a file name.
_SERIAL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{2,63}$")
#: ``<serial or machine number>_attlog.dat`` (case-insensitive; ``ssrattlog`` / ``attlog`` / ``attlogs``).
_NAME = re.compile(r"^(?P<prefix>[A-Za-z0-9-]{1,64})_(?:ssr)?attlogs?(?:\.[A-Za-z0-9]{1,8})?$", re.IGNORECASE)
#: A name prefix this short and all digits is the terminal's machine number ("1_attlog.dat"), not a serial.
_MACHINE_DIGITS = 4
#: Records a binary export without the dataset header must hold (one random 16-byte block decodes too often).
_MIN_UNFRAMED_RECORDS = 2
#: The SDK's own line, read without the general path (a 200,000-line log): PIN, time, machine, state, verify,
#: work code. ``_fast_record`` must give exactly what ``_record`` gives (tests/usb/test_formats_fuzz.py).
_SDK_LINE = re.compile(rb"[ ]*([!-~]{1,64})\t((\d{4})-(\d{2})-(\d{2}) (\d{2}):(\d{2}):(\d{2}))"
                       rb"\t(\d{1,6})\t(\d{1,9})\t(\d{1,9})\t(\d{1,9})[ ]*")
#: Fields from which a line is read in the ADMS/PUSH order (PIN, time, state, verify, work code, reserved...).
_PUSH_ORDER_FIELDS = 7


class ExportError(ValueError):
    """The file is not an attendance export this gateway can read (refused whole; nothing stored)."""


@dataclass(frozen=True, slots=True)
class BadLine:
    """One line that is not a readable punch: its number in the file, the raw text, why."""

    line: int
    raw: str
    reason: str


@dataclass(slots=True)
class ParsedExport:
    """What one export file holds."""

    #: "text" or "binary-<record size>".
    layout: str
    #: The records in file order (the terminal's log order).
    punches: list[RawPunch] = field(default_factory=list)
    bad: list[BadLine] = field(default_factory=list)
    #: The serial number the file itself names (first line of the extended form), if any.
    serial: str | None = None
    #: Machine numbers named by the records (the text form's third field).
    machines: set[int] = field(default_factory=set)


@dataclass(frozen=True, slots=True)
class NameHint:
    """What a file name says about the terminal that wrote it."""

    serial: str | None = None
    machine: int | None = None


def name_hint(file_name: str) -> NameHint:
    """``ABC1234567_attlog.dat`` -> serial ABC1234567; ``1_attlog.dat`` -> machine number 1; else nothing."""
    m = _NAME.match(file_name.strip())
    if m is None:
        return NameHint()
    prefix = m.group("prefix")
    if prefix.isdigit() and len(prefix) <= _MACHINE_DIGITS:
        return NameHint(machine=int(prefix))
    if _SERIAL.match(prefix):
        return NameHint(serial=prefix)
    return NameHint()


def parse_export(data: bytes) -> ParsedExport:
    """Read an export file's bytes (text or binary, see the module docstring). Raises only ExportError."""
    if len(data) > MAX_EXPORT_BYTES:
        raise ExportError(f"the file has {len(data)} bytes; an attendance export is at most {MAX_EXPORT_BYTES} "
                          "bytes (is this the right file?)")
    if not data.strip():
        return ParsedExport(layout="text")
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        # Saved again by a Windows editor as "Unicode": the same text in UTF-16.
        try:
            return _parse_text(data.decode("utf-16").encode("utf-8"))
        except UnicodeError:
            raise ExportError("the file starts like UTF-16 text but is not valid UTF-16") from None
    if b"\x00" in data:
        return _parse_binary(data)
    return _parse_text(data.removeprefix(b"\xef\xbb\xbf"))


def _raw(line: bytes) -> str:
    text = line.decode("utf-8", errors="backslashreplace")
    return text if len(text) <= RAW_MAX else text[:RAW_MAX - 1] + "…"


def _parse_text(data: bytes) -> ParsedExport:
    out = ParsedExport(layout="text")
    lines = [(n, line) for n, line in enumerate(_LINES.split(data), start=1) if line.strip()]
    if not lines:
        return out
    first = lines[0][1]
    header = first.strip().decode("utf-8", errors="replace")
    if b"\t" not in first and _SERIAL.match(header) and _record(first) is None:
        out.serial = header
        lines = lines[1:]
        # The extended form ends with a checksum line (no tab); its algorithm is not public: not checked.
        if lines and b"\t" not in lines[-1][1] and _record(lines[-1][1]) is None:
            lines = lines[:-1]
    fast = _SDK_LINE.fullmatch
    for number, line in lines:
        m = fast(line)
        if m is not None:
            out.punches.append(_fast_record(m))
            out.machines.add(int(m[9]))
            continue
        result = _record(line)
        if isinstance(result, RawPunch):
            out.punches.append(result)
            machine = _machine(line)
            if machine is not None:
                out.machines.add(machine)
        else:
            out.bad.append(BadLine(number, _raw(line), result or "not an attendance record"))
    if out.bad and not out.punches:
        raise ExportError(f"none of the {len(out.bad)} lines is an attendance record (first: "
                          f"line {out.bad[0].line}: {out.bad[0].reason}): is this the attendance export (attlog.dat)?")
    return out


def _fast_record(m: re.Match[bytes]) -> RawPunch:
    """The record of a line matching ``_SDK_LINE`` (printable ASCII PIN, canonical time, numeric fields)."""
    try:
        local: datetime | None = datetime(int(m[3]), int(m[4]), int(m[5]), int(m[6]), int(m[7]), int(m[8]))
    except ValueError:
        local = None
    return RawPunch(user_id=m[1].decode("ascii"), time_text=m[2].decode("ascii"), local_time=local, state=int(m[10]),
                    verify=int(m[11]), workcode=int(m[12]))


def _fields(line: bytes) -> list[str]:
    text = line.decode("utf-8", errors="replace")
    if "\t" in text:
        fields = [f.strip() for f in text.split("\t")]
        # Date and time in two columns (a spreadsheet saved as tab-separated text): join them.
        if len(fields) >= 3 and _DATE.match(fields[1]) and (_CLOCK.match(fields[2]) or
                                                            _CLOCK_NO_SECONDS.match(fields[2])):
            fields[1:3] = [f"{fields[1]} {fields[2]}"]
        return fields
    words = text.split()
    if len(words) >= 3:
        return [words[0], f"{words[1]} {words[2]}", *words[3:]]
    return words


def _record(line: bytes) -> RawPunch | str | None:
    """The record on this line, or why it is not one (None: not even shaped like one)."""
    fields = _fields(line)
    if len(fields) < 2:
        return None
    pin, when = fields[0], fields[1]
    m = _DATE_TIME.match(when)
    if m is None:
        return "no date and time in the second field (expected YYYY-MM-DD HH:MM:SS)"
    date_m, clock_m = _DATE.match(m.group(1)), _CLOCK.match(m.group(2))
    if date_m is None:
        return f"date {m.group(1)[:20]!r} is not YYYY-MM-DD"
    if clock_m is None:
        if _CLOCK_NO_SECONDS.match(m.group(2)):
            return "the time has no seconds: it cannot be matched with the terminal's own record"
        return f"time {m.group(2)[:20]!r} is not HH:MM:SS"
    if not pin or len(pin) > PIN_MAX or not pin.isprintable():
        return "no usable PIN (user id) in the first field"
    y, mo, d = (int(x) for x in date_m.groups())
    h, mi, s = (int(x) for x in clock_m.groups())
    text = f"{y:04d}-{mo:02d}-{d:02d} {h:02d}:{mi:02d}:{s:02d}"
    try:
        local: datetime | None = datetime(y, mo, d, h, mi, s)
    except ValueError:
        local = None  # Feb 31 from a broken clock: stored and flagged impossible_date, never dropped
    rest = fields[2:]
    if len(fields) >= _PUSH_ORDER_FIELDS:
        state, verify, workcode = _int(rest, 0), _int(rest, 1), _int(rest, 2)
    else:
        state, verify, workcode = _int(rest, 1), _int(rest, 2), _int(rest, 3)
    return RawPunch(user_id=pin, time_text=text, local_time=local, state=state, verify=verify, workcode=workcode)


def _int(values: list[str], i: int) -> int:
    value = values[i] if len(values) > i else ""
    return int(value) if _INT.match(value) else 0


def _machine(line: bytes) -> int | None:
    fields = _fields(line)
    if len(fields) >= _PUSH_ORDER_FIELDS or len(fields) < 3:
        return None
    value = fields[2]
    return int(value) if value.isdigit() and len(value) <= 6 else None


def _parse_binary(data: bytes) -> ParsedExport:
    try:
        body = bytes(split_dataset(data))  # a dataset as the protocol sends it: u32 byte count first
        framed = True
    except DatasetError:
        body, framed = data, False
    if not body:
        return ParsedExport(layout="binary")
    size = _binary_layout(body, framed)
    try:
        # The 8-byte layout carries only the internal uid: without the terminal's user list it stands for itself
        # (what the network poll stores for a uid it cannot map, too).
        punches = list(parse_records(body, size, "UTF-8", str))
    except DatasetError as exc:  # pragma: no cover - _binary_layout checked the length already
        raise ExportError(f"binary export: {exc}") from None
    return ParsedExport(layout=f"binary-{size}", punches=punches)


def _binary_layout(body: bytes, framed: bool) -> int:
    """The record size of a binary export, by evidence (there is no record count to compare with).

    With the dataset's byte-count header the evidence rules of the network read apply (most records must decode
    to real times). Without it the bytes could be anything (a photo, a user list), so every record must decode
    cleanly and there must be at least two of them; else the file is refused rather than read as punches.
    """
    refused = ("the file holds binary data that is no known attendance layout ({}); is this the attendance export "
               "(attlog.dat)?")
    if not framed:
        clean = [s for s in RECORD_SIZES if len(body) % s == 0 and len(body) // s >= _MIN_UNFRAMED_RECORDS
                 and record_evidence(body, s) is None]
        if not clean:
            raise ExportError(refused.format(f"{len(body)} bytes without a dataset header decode cleanly as no "
                                             "layout of 8, 16 or 40 bytes"))
        return max(clean)
    try:
        return choose_record_size(body, None)
    except DatasetError as exc:
        plausible = [s for s in RECORD_SIZES if len(body) % s == 0 and layout_sanity(body, s) is None]
        if plausible:
            return max(plausible)
        raise ExportError(refused.format(exc)) from None

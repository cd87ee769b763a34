"""Users and fingerprint templates in a push terminal's uploads, sans I/O: OPERLOG ``USER`` / ``FP`` lines and
``BIODATA`` lines -> gateway.enrol.push records, or the reason a line cannot be used.

    gateway.push.receiver (table=OPERLOG / table=BIODATA) -> parse_enrolment_lines(lines) -> EnrolmentUpload
        users, fingers -> gateway.enrol.push.store_upload (sealed)   refused -> quarantine (redacted_line)

Line shapes (../shared/reference/zk-protocol.md §4.4, other-protocols.md §3.4/§3.5, vendor PUSH doc):
``USER PIN=1\\tName=Ann\\tPri=0\\tPasswd=\\tCard=\\tGrp=1\\tTZ=..\\tVerify=..`` (``Privilege`` / ``Password`` spellings
also seen), ``FP PIN=1\\tFID=0\\tSize=514\\tValid=1\\tTMP=<base64>`` and, on newer firmware,
``BIODATA Pin=1\\tNo=0\\tIndex=0\\tValid=1\\tDuress=0\\tType=1\\tMajorVer=10\\tMinorVer=0\\tFormat=0\\tTmp=<base64>``
(Type 1 = fingerprint; faces, palms and the rest are counted, not kept). ``Card`` is decimal or ``[15CD5B07]``,
the card number's bytes low first (123456789 = 0x075BCD15; the doc's example, unverified which firmware).
Keys are matched without regard to case. Every line is bounded; a template whose base64 does not decode to
``Size`` bytes is refused. Nothing here raises on terminal input; a refused line keeps its text for the
quarantine with every template and password value withheld (``redacted_line``).
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass, field

from gateway.enrol.push import UploadedFinger, UploadedUser

#: Longest PIN kept (the PIN columns are 64 characters).
PIN_MAX = 64
#: Largest template accepted, bytes (ZKFinger v10 templates are 0.5-1.6 KB; v12/v13 up to a few KB).
TEMPLATE_MAX = 16 * 1024
#: Longest line looked at (a template's base64 and the other fields).
LINE_MAX = TEMPLATE_MAX * 4 // 3 + 1024
#: Fields per line at most.
FIELDS_MAX = 40
#: BIODATA Type of a fingerprint template.
BIO_FINGERPRINT = 1
_SECRET_KEYS = {"tmp", "passwd", "password", "pwd"}
_INT = re.compile(r"^-?[0-9]{1,10}$")
_DECIMAL = re.compile(r"^[0-9]{1,19}$")
_HEX_CARD = re.compile(r"^\[([0-9A-Fa-f]{2}){1,8}\]$")


@dataclass
class EnrolmentUpload:
    """The enrolment records of one upload, the lines refused (line number, redacted text, why) and the rest."""

    users: list[UploadedUser] = field(default_factory=list)
    fingers: list[UploadedFinger] = field(default_factory=list)
    refused: list[tuple[int, str, str]] = field(default_factory=list)
    #: BIODATA records of another kind (face, palm, ...): not kept.
    other_biometrics: int = 0
    #: Lines that are no enrolment record (OPLOG, ...): the caller's business.
    other_lines: list[str] = field(default_factory=list)


def redacted_line(line: str) -> str:
    """The line with the values of TMP / Tmp / Passwd / Password withheld (for the quarantine and logs)."""
    word, _, rest = line.partition(" ")
    parts = []
    for part in rest.split("\t"):
        key, sep, value = part.partition("=")
        if sep and key.strip().lower() in _SECRET_KEYS and value:
            parts.append(f"{key}=<{len(value)} characters withheld>")
        else:
            parts.append(part[:200])
    return (word[:20] + " " + "\t".join(parts))[:2000]


def _fields(rest: str) -> dict[str, str] | str:
    out: dict[str, str] = {}
    parts = rest.split("\t")
    if len(parts) > FIELDS_MAX:
        return f"more than {FIELDS_MAX} fields"
    for part in parts:
        key, sep, value = part.partition("=")
        key = key.strip().lower()
        if not sep or not key:
            continue
        out.setdefault(key, value.strip())
    return out


def _pin(f: dict[str, str]) -> str | None:
    pin = f.get("pin", "")
    if not pin or len(pin) > PIN_MAX or not pin.isprintable() or any(c.isspace() for c in pin):
        return None
    return pin


def _number(f: dict[str, str], *keys: str, default: int = 0) -> int | None:
    for key in keys:
        value = f.get(key)
        if value is None or value == "":
            continue
        return int(value) if _INT.match(value) else None
    return default


def card_number(text: str) -> int | None:
    """``Card``: decimal, or ``[15CD5B07]`` (bytes low first); "" and "0" are no card (0); None when neither."""
    text = text.strip()
    if not text:
        return 0
    if _DECIMAL.match(text):
        return int(text)
    if _HEX_CARD.match(text):
        return int.from_bytes(bytes.fromhex(text[1:-1]), "little")
    return None


def _user(f: dict[str, str]) -> UploadedUser | str:
    pin = _pin(f)
    if pin is None:
        return "no usable PIN"
    privilege = _number(f, "pri", "privilege")
    if privilege is None or not 0 <= privilege <= 255:
        return "Pri is not a number 0-255"
    card = card_number(f.get("card", ""))
    if card is None or card >= 2 ** 63:
        return "Card is neither a number nor [hex bytes]"
    password = f.get("passwd", f.get("password", ""))
    if len(password) > 32:
        return "Passwd longer than 32 characters"
    return UploadedUser(pin, f.get("name", "")[:64], privilege, card, f.get("grp", f.get("group", ""))[:16], password)


def _template(text: str, size: int | None) -> bytes | str:
    compact = "".join(text.split())
    if not compact:
        return "no template"
    if len(compact) > TEMPLATE_MAX * 4 // 3 + 4:
        return f"template larger than {TEMPLATE_MAX} bytes"
    try:
        data = base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        return "template is not base64"
    if not data:
        return "empty template"
    if size is not None and size != len(data):
        return f"Size {size} but the template has {len(data)} bytes"
    return data


def _finger(f: dict[str, str]) -> UploadedFinger | str:
    pin = _pin(f)
    if pin is None:
        return "no usable PIN"
    fid, valid = _number(f, "fid", "fingerid", default=-1), _number(f, "valid", default=1)
    if fid is None or not 0 <= fid <= 9:
        return "FID is not a finger 0-9"
    if valid is None or not -128 <= valid <= 255:
        return "Valid is not a number"
    size = _number(f, "size", default=-1)
    if size is None:
        return "Size is not a number"
    data = _template(f.get("tmp", ""), size if size >= 0 else None)
    if isinstance(data, str):
        return data
    return UploadedFinger(pin, fid, valid, data)


def _biodata(f: dict[str, str]) -> UploadedFinger | str | None:
    """A fingerprint BIODATA record, None for another biometric kind, or why the line is refused."""
    kind = _number(f, "type", default=-1)
    if kind is None:
        return "Type is not a number"
    if kind != BIO_FINGERPRINT:
        return None
    pin = _pin(f)
    if pin is None:
        return "no usable PIN"
    number, valid, major = _number(f, "no", default=-1), _number(f, "valid", default=1), _number(f, "majorver")
    if number is None or not 0 <= number <= 9:
        return "No is not a finger 0-9"
    if valid is None or not -128 <= valid <= 255 or major is None or not 0 <= major <= 999:
        return "Valid or MajorVer is not a number"
    duress = _number(f, "duress", default=0)
    data = _template(f.get("tmp", ""), None)
    if isinstance(data, str):
        return data
    # The ZK template table keeps duress in the valid flag (3 = duress on the firmware described).
    return UploadedFinger(pin, number, 3 if duress == 1 and valid == 1 else valid, data, major)


def parse_enrolment_lines(lines: list[str]) -> EnrolmentUpload:
    """Sort one upload's lines: users, fingerprint templates, refused lines (with why), everything else."""
    upload = EnrolmentUpload()
    for number, line in enumerate(lines, start=1):
        word, sep, rest = line.partition(" ")
        if "\t" in word:  # "USER\tPIN=.." seen? the first field is glued to the word
            word, _, head = word.partition("\t")
            rest = head + (" " + rest if sep else "")
        kind = word.strip().upper()
        if kind not in ("USER", "FP", "BIODATA"):
            upload.other_lines.append(line)
            continue
        if len(line) > LINE_MAX:
            upload.refused.append((number, redacted_line(line[:4000]), f"line longer than {LINE_MAX} characters"))
            continue
        fields = _fields(rest)
        if isinstance(fields, str):
            upload.refused.append((number, redacted_line(line), fields))
            continue
        got: UploadedUser | UploadedFinger | str | None
        if kind == "USER":
            got = _user(fields)
        elif kind == "FP":
            got = _finger(fields)
        else:
            got = _biodata(fields)
            if got is None:
                upload.other_biometrics += 1
                continue
        if isinstance(got, str):
            upload.refused.append((number, redacted_line(line), f"{kind} line: {got}"))
        elif isinstance(got, UploadedUser):
            upload.users.append(got)
        else:
            upload.fingers.append(got)
    return upload


__all__ = ["EnrolmentUpload", "card_number", "parse_enrolment_lines", "redacted_line"]

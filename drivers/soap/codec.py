"""The SOAP web service's wire text (``POST /iWsService``): request bodies out, tolerant parsing of answers in.

Flow: drivers.soap.driver builds a body here -> drivers.soap.transport posts it -> the answer's body bytes come
back here -> rows of tag/value pairs -> RawPunch / DeviceUser / a date, or the reason a row cannot be read.
Sans I/O and pure. The parser reads tag by tag, never as strict XML: terminals answer with undeclared
prefixes, CRLF between rows, an ``iso8859-1`` prolog, missing ``<WorkCode>``, unescaped text (fact sheet
../shared/reference/other-protocols.md §1.4, §1.6). Every failure is a drivers.base.ProtocolError (or
AuthRejected for an explicit comm-key refusal); nothing else escapes (tests/drivers/test_soap_fuzz.py).
"""

from __future__ import annotations

import codecs
import html
import re
from dataclasses import dataclass, field
from datetime import date, datetime

from drivers.base import AuthRejected, DeviceUser, ProtocolError, RawPunch

#: ClearData's value for the attendance log. 1 wipes the users (and templates), 2 the templates: never those.
CLEAR_ATTENDANCE_LOG = 3
#: Encoding the terminals declare in their prolog (``encoding="iso8859-1"``) and the default here.
DEFAULT_ENCODING = "iso-8859-1"
#: A row longer than this is not a record of any known shape (an unterminated row running on).
ROW_MAX_CHARS = 4096
#: punches.device_user_id is 64 characters; a longer PIN would have to be cut, which changes the person.
PIN_MAX = 64
_INT32 = 2 ** 31

_ENCODING_DECL = re.compile(rb"""<\?xml[^>]*?encoding\s*=\s*["']([A-Za-z0-9._-]{1,40})["']""")
_ROW_OPEN = re.compile(r"<\s*(?:[\w.-]+:)?Row\b[^>]*>", re.IGNORECASE)
_ROW_CLOSE = re.compile(r"<\s*/\s*(?:[\w.-]+:)?Row\s*>", re.IGNORECASE)
# <Tag attr="...">value</Tag>, tolerating prefixes (<a:PIN>) and self-closing <WorkCode/>.
_FIELD = re.compile(r"<\s*(?:[\w.-]+:)?(\w+)\b[^<>]*?(?:/\s*>|>([^<]*)<\s*/\s*(?:[\w.-]+:)?\1\s*>)")
_FAULT = re.compile(r"<\s*(?:[\w.-]+:)?faultstring\b[^>]*>([^<]{0,300})", re.IGNORECASE)
_DATETIME = re.compile(r"^(\d{4})-(\d{1,2})-(\d{1,2})[ T]+(\d{1,2}):(\d{1,2}):(\d{1,2})$")
_DATE = re.compile(r"^(\d{4})-(\d{1,2})-(\d{1,2})$")
_TIME = re.compile(r"^(\d{1,2}):(\d{1,2}):(\d{1,2})$")
_INT = re.compile(r"^[+-]?\d{1,10}$")
_KEY_REFUSAL = re.compile(r"com\s*key|comkey|password|unauthori[sz]ed|not\s+allowed", re.IGNORECASE)


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def request_body(method: str, comm_key: int, args: list[tuple[str, str]] | None = None) -> bytes:
    """The bare-element request every public client sends (§1.2): ``<M><ArgComKey>k</ArgComKey><Arg>..</Arg></M>``.

    ``args`` None: no ``<Arg>`` at all (GetDate, GetAllUserInfo). Values are escaped; the body is ASCII
    apart from what the caller puts in ``args`` (encoded as iso-8859-1, the terminals' declared charset).
    """
    if not re.fullmatch(r"[A-Za-z]{1,40}", method):
        raise ValueError(f"not a SOAP method name: {method!r}")
    parts = [f"<{method}><ArgComKey>{int(comm_key)}</ArgComKey>"]
    if args is not None:
        parts.append("<Arg>" + "".join(f"<{k}>{_escape(v)}</{k}>" for k, v in args) + "</Arg>")
    parts.append(f"</{method}>")
    return "".join(parts).encode(DEFAULT_ENCODING, errors="replace")


def decode_body(body: bytes, encoding: str | None = None) -> str:
    """Body bytes -> text: ``encoding`` when given, else the prolog's declared charset, else iso-8859-1.

    Never raises: an unknown charset falls back to iso-8859-1 and undecodable bytes become U+FFFD.
    """
    name = encoding
    if name is None:
        m = _ENCODING_DECL.search(body[:300])
        name = m.group(1).decode("ascii") if m else DEFAULT_ENCODING
    try:
        codecs.lookup(name)
    except LookupError:
        name = DEFAULT_ENCODING
    return body.decode(name, errors="replace")


@dataclass(frozen=True, slots=True)
class Row:
    """One ``<Row>`` of an answer: its raw text (for quarantine) and its fields in order (tag -> value)."""

    raw: str
    fields: dict[str, str] = field(default_factory=dict)
    #: Why the row could not be taken apart ("" when it could).
    problem: str = ""

    def get(self, tag: str) -> str | None:
        """The field's value (entities decoded, spaces stripped), or None when the row has no such tag."""
        value = self.fields.get(tag.lower())
        return None if value is None else value.strip()


@dataclass(frozen=True, slots=True)
class Answer:
    """The ``<MethodResponse>`` element of an answer: its rows, in order."""

    method: str
    rows: list[Row]

    def result(self) -> tuple[int | None, str]:
        """``(Result, Information)`` of a write-type answer (§1.4: use Result, 1 = ok; the text varies)."""
        for row in self.rows:
            res = row.get("Result")
            if res is not None:
                return (int(res) if _INT.match(res) else None), row.get("Information") or ""
        return None, ""


def parse_answer(text: str, method: str) -> Answer:
    """The rows of ``<{method}Response>`` in ``text`` (the decoded HTTP body).

    Raises ProtocolError when the element is missing (an empty or foreign body, a SOAP fault) or not closed
    (the connection was cut: a close-delimited body gives no other sign of being whole), and AuthRejected
    when a row refuses the comm key in words.
    """
    name = re.escape(method + "Response")
    opening = re.search(rf"<\s*(?:[\w.-]+:)?{name}\b[^>]*?(/?)>", text, re.IGNORECASE)
    if opening is None:
        fault = _FAULT.search(text)
        if fault is not None:
            fault_text = html.unescape(fault.group(1)).strip()
            raise ProtocolError(f"{method}: the terminal answered with a SOAP fault: {fault_text!r}")
        if not text.strip():
            raise ProtocolError(f"{method}: the terminal answered with an empty body")
        raise ProtocolError(f"{method}: no <{method}Response> in the answer ({_preview(text)})")
    if opening.group(1):  # <GetAttLogResponse/>: an empty answer
        return Answer(method, [])
    closing = re.compile(rf"<\s*/\s*(?:[\w.-]+:)?{name}\s*>", re.IGNORECASE).search(text, opening.end())
    if closing is None:
        raise ProtocolError(f"{method}: the answer ends before </{method}Response> (connection cut short?); "
                            f"{len(text)} characters received")
    inner = text[opening.end():closing.start()]
    rows = split_rows(inner)
    for row in rows:
        info = row.get("Information") or ""
        if row.get("Result") not in (None, "1") and _KEY_REFUSAL.search(info):
            raise AuthRejected(f"{method}: the terminal refused the comm key ({info[:80]!r}); "
                               "check comm_key_env / comm_key_file against the terminal's COMM > Comm Key")
    return Answer(method, rows)


def split_rows(inner: str) -> list[Row]:
    """The ``<Row>`` blocks of an answer's inside, tag by tag: a row ends at ``</Row>``, the next ``<Row>`` or
    the end (then it is kept with a problem: the caller reports it as unreadable)."""
    starts = list(_ROW_OPEN.finditer(inner))
    rows: list[Row] = []
    for i, m in enumerate(starts):
        end = starts[i + 1].start() if i + 1 < len(starts) else len(inner)
        block = inner[m.start():end]
        close = _ROW_CLOSE.search(block)
        problem = ""
        if close is not None:
            block = block[:close.end()]
        else:
            problem = "row not closed with </Row>"
        body = block[m.end() - m.start():close.start() if close is not None else len(block)]
        if len(block) > ROW_MAX_CHARS:
            rows.append(Row(block.strip(), {}, f"row of {len(block)} characters (at most {ROW_MAX_CHARS})"))
            continue
        fields: dict[str, str] = {}
        for f in _FIELD.finditer(body):
            tag = f.group(1).lower()
            if tag not in fields:  # the first of a repeated tag counts
                value = f.group(2) or ""
                fields[tag] = html.unescape(value) if "&" in value else value
        rows.append(Row(block.strip(), fields, problem))
    return rows


def _preview(text: str, n: int = 60) -> str:
    head = " ".join(text.split())[:n]
    return f"starts {head!r}"


def _small_int(row: Row, tag: str) -> int | str:
    value = row.get(tag)
    if value is None or value == "":
        return 0  # absent on some firmware (WorkCode; §1.4 "do not require"): the ZK layouts' 0
    if not _INT.match(value) or not -_INT32 <= int(value) < _INT32:
        return f"{tag} {value[:20]!r} is not a number"
    return int(value)


def punch_from_row(row: Row, user_of: dict[str, str] | None = None) -> RawPunch | str:
    """A GetAttLog row -> RawPunch, or the reason it is no punch (no PIN, no date and time, a field that is no number).

    A date that has the right shape but is not on the calendar (31 February, month 13) is still a punch:
    ``time_text`` is kept and ``local_time`` is None (the RawPunch contract), so the gateway stores and
    flags it. ``user_of``: PIN -> the id to report instead (the PIN2 mapping); unknown PINs stay as they are.
    """
    if row.problem:
        return row.problem
    pin = row.get("PIN")
    if not pin:
        return "no PIN"
    if len(pin) > PIN_MAX or not pin.isprintable() or any(c.isspace() for c in pin):
        return f"PIN {pin[:20]!r} is not a user id (longer than {PIN_MAX} characters, spaces or control characters)"
    when = row.get("DateTime")
    if not when:
        return "no DateTime"
    m = _DATETIME.match(when)
    if m is None:
        return f"DateTime {when[:30]!r} is not YYYY-MM-DD HH:MM:SS"
    y, mo, d, h, mi, s = (int(x) for x in m.groups())
    time_text = f"{y:04d}-{mo:02d}-{d:02d} {h:02d}:{mi:02d}:{s:02d}"
    try:
        local: datetime | None = datetime(y, mo, d, h, mi, s)
    except ValueError:
        local = None
    values = []
    for tag in ("Status", "Verified", "WorkCode"):
        v = _small_int(row, tag)
        if isinstance(v, str):
            return v
        values.append(v)
    state, verify, workcode = values
    if user_of is not None:
        pin = user_of.get(pin, pin)
    return RawPunch(pin, time_text, local, state, verify, 0, workcode)


def user_from_row(row: Row, *, by_pin2: bool) -> DeviceUser | None:
    """A GetAllUserInfo row -> DeviceUser (None when it has no PIN). ``by_pin2``: the on-screen id is PIN2."""
    pin = row.get("PIN") or ""
    pin2 = row.get("PIN2") or ""
    user_id = (pin2 or pin) if by_pin2 else (pin or pin2)
    if not user_id or len(user_id) > PIN_MAX:
        return None
    privilege = _small_int(row, "Privilege")
    card = _small_int(row, "Card")
    return DeviceUser(uid=int(pin) if pin.isdigit() and len(pin) < 10 else 0, user_id=user_id,
                      name=(row.get("Name") or "")[:100],
                      privilege=privilege if isinstance(privilege, int) else 0,
                      card=card if isinstance(card, int) and card >= 0 else 0,
                      group_id=(row.get("Group") or "")[:32])


def clock_from_answer(answer: Answer) -> datetime | None:
    """The device clock of a GetDate answer (``<Date>YYYY-MM-DD</Date><Time>HH:MM:SS</Time>``); None if absent."""
    for row in answer.rows:
        d, t = row.get("Date"), row.get("Time")
        if not d:
            continue
        dm, tm = _DATE.match(d), _TIME.match(t or "00:00:00")
        if dm is None or tm is None:
            raise ProtocolError(f"GetDate: {d[:20]!r} {str(t)[:20]!r} is not a date and time")
        try:
            return datetime.combine(date(*(int(x) for x in dm.groups())),
                                    datetime.strptime(":".join(f"{int(x):02d}" for x in tm.groups()),
                                                      "%H:%M:%S").time())
        except ValueError:
            # The clock holds an impossible date: the device answered (the key is right); no clock to trust.
            return None
    return None


def has_date(answer: Answer) -> bool:
    """True when a GetDate answer carries a ``<Date>``: the authenticated probe succeeded."""
    return any(row.get("Date") for row in answer.rows)


def option_value(answer: Answer, name: str) -> str:
    """The value of a GetOption answer: ``<Value>``, or a ``name=value`` text in any field; "" when absent."""
    for row in answer.rows:
        value = row.get("Value")
        if value:
            key, sep, rest = value.partition("=")
            return rest.strip() if sep and key.strip() == name else value
        for text in row.fields.values():
            key, sep, rest = text.partition("=")
            if sep and key.strip() == name and rest.strip():
                return rest.strip()
    return ""


__all__ = ["CLEAR_ATTENDANCE_LOG", "DEFAULT_ENCODING", "Answer", "Row", "clock_from_answer", "decode_body",
           "has_date", "option_value", "parse_answer", "punch_from_row", "request_body", "split_rows",
           "user_from_row"]

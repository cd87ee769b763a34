"""Enrolment backup, restore and delete over the SOAP web service (drivers.base ReadsEnrolments / WritesEnrolments /
DeletesEnrolments), for gateway.enrol.

    SoapSession.read_enrolments -> GetAllUserInfo (users, passwords) -> GetUserTemplate per user (PIN, FingerID,
        Size, Valid, Template base64) -> GetOption ~ZKFPVersion -> Enrolments
    SoapSession.write_users     -> per user: DeleteUser (only when the PIN is there) + SetUserInfo -> RefreshDB
    SoapSession.write_templates -> per finger: SetUserTemplate -> RefreshDB
    SoapSession.delete_users    -> DeleteUser per PIN -> RefreshDB

Shapes from ../shared/reference/other-protocols.md §1.3/§1.4 (GetUserTemplate / SetUserTemplate: Solution's PHP
sample, TAD-PHP, the Java client, the vendor's demo). SOAP has no internal user number the gateway can rely on
(PIN is the key of every call), so the driver hands out ``uid``s itself: the PIN's number when it is a small
number, else the next free one, remembered on the SoapDriver so the read-back of a restore (a second session on
the same driver) sees the uids the restore wrote. SetUserInfo always *adds* a user on the firmware described
(duplicates, §1.6), so a PIN already on the terminal is deleted first (its fingers with it: the caller writes the
templates it wants next). Over SOAP the keypad is never locked. Templates never reach a log line.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
import threading
import time
from collections.abc import Collection
from typing import Protocol

from drivers.base import EnrolledUser, Enrolments, EnrolProgress, Progress, ProtocolError, Template
from drivers.soap import codec
from drivers.soap.quirks import SoapQuirks


class _Driver(Protocol):
    where: str
    enrol_uids: dict[str, int]
    _lock: threading.Lock


class SoapSession(Protocol):
    """What this module needs of drivers.soap.driver.SoapSession (a Protocol: the driver imports this module)."""

    @property
    def _driver(self) -> _Driver: ...

    @property
    def _quirks(self) -> SoapQuirks: ...

    def _call(self, method: str, args: list[tuple[str, str]] | None = None, *, retry_raw: bool = True,
              max_bytes: int | None = None) -> codec.Answer: ...

log = logging.getLogger(__name__)

#: The option naming the fingerprint algorithm version (the binary protocol asks the same option store).
ALGORITHM_OPTION = "~ZKFPVersion"
#: Largest template accepted (ZKFinger v10 templates are 0.5-1.6 KB; face/palm templates are not read here).
TEMPLATE_MAX_BYTES = 16 * 1024
#: Largest GetUserTemplate answer for one user: ten fingers of the largest template, base64, with the tags.
USER_TEMPLATES_MAX_BYTES = 10 * (TEMPLATE_MAX_BYTES * 4 // 3 + 512) + 4096
#: Users read at most (the service reports no capacity; the largest ZK terminals hold 10,000-30,000 users).
USERS_MAX = 100_000
#: Highest uid handed out (the enrol_user.uid column and ZK's user serial are small integers).
UID_MAX = 0xFFFF
_FINGER = re.compile(r"^[0-9]$")
_SMALL = re.compile(r"^[0-9]{1,5}$")


def _int(row: codec.Row, tag: str, default: int = 0) -> int:
    value = row.get(tag)
    if value is None or value == "":
        return default
    if not re.fullmatch(r"[+-]?[0-9]{1,10}", value):
        raise ProtocolError(f"{tag} {value[:20]!r} is not a number")
    return int(value)


def user_from_row(row: codec.Row, *, by_pin2: bool) -> tuple[str, EnrolledUser] | str:
    """A GetAllUserInfo row -> (the PIN the terminal keys calls by, the user with uid 0), or why it is no user."""
    if row.problem:
        return row.problem
    pin = row.get("PIN") or ""
    pin2 = row.get("PIN2") or ""
    user_id = (pin2 or pin) if by_pin2 else (pin or pin2)
    if not pin or not user_id:
        return "no PIN"
    if len(pin) > codec.PIN_MAX or len(user_id) > codec.PIN_MAX or not user_id.isprintable():
        return f"PIN {user_id[:20]!r} is not a user id"
    try:
        privilege, card = _int(row, "Privilege"), _int(row, "Card")
    except ProtocolError as exc:
        return str(exc)
    return pin, EnrolledUser(0, user_id, (row.get("Name") or "")[:64], privilege & 0xFF, max(card, 0),
                             (row.get("Group") or "")[:16], (row.get("Password") or "")[:16])


def template_from_row(row: codec.Row, pin: str) -> tuple[int, int, bytes] | None:
    """A GetUserTemplate row -> (finger, valid, template bytes); None for the "No data!" row. Raises
    ProtocolError for a row that is not a whole template (a backup is complete or not stored at all)."""
    if row.problem:
        raise ProtocolError(f"GetUserTemplate PIN {pin}: {row.problem}")
    text = row.get("Template")
    if text is None:
        if row.get("Result") is not None:  # <Result>0</Result><Information>No data!</Information>
            return None
        raise ProtocolError(f"GetUserTemplate PIN {pin}: a row without <Template>")
    got_pin = row.get("PIN")
    if got_pin is not None and got_pin != pin:
        raise ProtocolError(f"GetUserTemplate PIN {pin}: the terminal answered with PIN {got_pin[:20]!r}")
    finger_text = row.get("FingerID") or ""
    if not _FINGER.match(finger_text):
        raise ProtocolError(f"GetUserTemplate PIN {pin}: FingerID {finger_text[:10]!r} is not 0-9")
    size, valid = _int(row, "Size", -1), _int(row, "Valid", 1)
    compact = "".join(text.split())
    if len(compact) > TEMPLATE_MAX_BYTES * 4 // 3 + 4:
        raise ProtocolError(f"GetUserTemplate PIN {pin} finger {finger_text}: template larger than "
                            f"{TEMPLATE_MAX_BYTES} bytes")
    try:
        data = base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        raise ProtocolError(f"GetUserTemplate PIN {pin} finger {finger_text}: the template is not base64") from None
    if not data:
        raise ProtocolError(f"GetUserTemplate PIN {pin} finger {finger_text}: an empty template")
    if size >= 0 and size != len(data):
        raise ProtocolError(f"GetUserTemplate PIN {pin} finger {finger_text}: Size {size} but {len(data)} bytes")
    return int(finger_text), valid, data


def assign_uids(pins: list[str], known: dict[str, int]) -> dict[str, int]:
    """PIN -> uid: the one handed out before (``known``), else the PIN's number when small and free, else the next
    free one. ``known`` is updated (the driver keeps it between sessions)."""
    taken = {uid for pin, uid in known.items()}
    out: dict[str, int] = {}
    for pin in pins:
        if pin in known:
            out[pin] = known[pin]
    for pin in pins:
        if pin in out:
            continue
        if _SMALL.match(pin) and 0 < int(pin) <= UID_MAX and int(pin) not in taken:
            out[pin] = int(pin)
            taken.add(out[pin])
    free = 1
    for pin in pins:
        if pin in out:
            continue
        while free in taken:
            free += 1
        if free > UID_MAX:
            raise ProtocolError(f"more than {UID_MAX} users: no uid left for PIN {pin[:20]!r}")
        out[pin] = free
        taken.add(free)
    known.update(out)
    return out


def read_algorithm(session: SoapSession) -> int:
    """``GetOption ~ZKFPVersion`` as a number; 0 (unknown) when the terminal does not say."""
    try:
        value = codec.option_value(session._call("GetOption", [("Name", ALGORITHM_OPTION)]), ALGORITHM_OPTION)
    except ProtocolError as exc:
        log.debug("%s: GetOption %s not answered: %s", session._driver.where, ALGORITHM_OPTION, exc)
        return 0
    value = value.strip()
    return int(value) if re.fullmatch(r"[0-9]{1,3}", value) else 0


def read_enrolments(session: SoapSession, progress: Progress | None = None) -> Enrolments:
    """Every user (GetAllUserInfo, read fresh) and every user's fingers (one GetUserTemplate per user)."""
    drv = session._driver
    rows = session._call("GetAllUserInfo").rows
    if len(rows) > USERS_MAX:
        raise ProtocolError(f"{drv.where}: {len(rows)} user rows, more than any terminal holds ({USERS_MAX})")
    by_pin: dict[str, EnrolledUser] = {}
    for row in rows:
        parsed = user_from_row(row, by_pin2=session._quirks.punch_user == "PIN2")
        if isinstance(parsed, str):
            # A backup must be whole: an unreadable user row fails it (the last good backup stays).
            raise ProtocolError(f"{drv.where}: a user row cannot be read ({parsed})")
        pin, user = parsed
        by_pin.setdefault(pin, user)  # a duplicate row (SetUserInfo quirk) keeps the first
    with drv._lock:
        uids = assign_uids(list(by_pin), drv.enrol_uids)
    users = tuple(EnrolledUser(uids[pin], u.user_id, u.name, u.privilege, u.card, u.group_id, u.password)
                  for pin, u in by_pin.items())
    templates: list[Template] = []
    for n, pin in enumerate(by_pin, start=1):
        answer = session._call("GetUserTemplate", [("PIN", pin)], max_bytes=USER_TEMPLATES_MAX_BYTES)
        fingers: set[int] = set()
        for row in answer.rows:
            found = template_from_row(row, pin)
            if found is None:
                continue
            finger, valid, data = found
            if finger in fingers:
                continue
            fingers.add(finger)
            templates.append(Template(uids[pin], finger, valid, data))
        if progress is not None:
            progress(n, len(by_pin))
    return Enrolments(users, tuple(templates), read_algorithm(session), 0)


def _pins_of(session: SoapSession) -> dict[int, str]:
    """uid -> PIN for the uids this driver handed out (a write names users by uid)."""
    with session._driver._lock:
        return {uid: pin for pin, uid in session._driver.enrol_uids.items()}


def _check_writable(session: SoapSession) -> None:
    if session._quirks.punch_user == "PIN2":
        raise ProtocolError(f"{session._driver.where}: writing users is not supported on terminals with "
                            "punch_user = \"PIN2\" (which internal PIN to give a new user is not known)",
                            transient=False)


def _result(answer: codec.Answer) -> tuple[bool, str]:
    result, info = answer.result()
    return result == 1, info[:60]


def _present_pins(session: SoapSession) -> set[str]:
    return {pin for row in session._call("GetAllUserInfo").rows if (pin := row.get("PIN"))}


def write_users(session: SoapSession, users: Collection[EnrolledUser], progress: EnrolProgress | None = None) -> None:
    """SetUserInfo per user (DeleteUser first when the PIN is there: SetUserInfo adds duplicates), then RefreshDB."""
    _check_writable(session)
    drv = session._driver
    present = _present_pins(session)
    refused: list[str] = []
    for n, user in enumerate(users, start=1):
        pin = user.user_id
        if pin in present:
            ok, info = _result(session._call("DeleteUser", [("PIN", pin)], retry_raw=False))
            if not ok:
                refused.append(f"PIN {pin}: DeleteUser before rewriting answered {info!r}")
                continue
        fields = [("PIN", pin), ("Name", user.name), ("Password", user.password), ("Group", user.group_id or "1"),
                  ("Privilege", str(user.privilege)), ("Card", str(user.card))]
        ok, info = _result(session._call("SetUserInfo", fields, retry_raw=False))
        if not ok:
            refused.append(f"PIN {pin}: SetUserInfo answered {info!r}")
            continue
        with drv._lock:
            drv.enrol_uids[pin] = user.uid
        if progress is not None:
            progress(n, len(users))
    _refresh(session)
    if refused:
        raise ProtocolError(f"{drv.where}: {len(refused)} user(s) refused; first: {refused[0]}")


def write_templates(session: SoapSession, templates: Collection[Template], owners: Collection[EnrolledUser],
                    progress: EnrolProgress | None = None) -> None:
    """SetUserTemplate per finger (Size = the raw length, Template = base64), then RefreshDB."""
    _check_writable(session)
    drv = session._driver
    pin_of = {u.uid: u.user_id for u in owners}
    pin_of = {**_pins_of(session), **pin_of}
    refused: list[str] = []
    done_users: set[int] = set()
    for t in templates:
        pin = pin_of.get(t.uid)
        if pin is None:
            refused.append(f"uid {t.uid}: no owner given")
            continue
        if not 0 <= t.finger <= 9 or not 0 < len(t.data) <= TEMPLATE_MAX_BYTES:
            refused.append(f"PIN {pin} finger {t.finger}: not a template this terminal takes")
            continue
        fields = [("PIN", pin), ("FingerID", str(t.finger)), ("Size", str(len(t.data))), ("Valid", str(t.valid)),
                  ("Template", base64.b64encode(t.data).decode("ascii"))]
        ok, info = _result(session._call("SetUserTemplate", fields, retry_raw=False))
        if not ok:
            refused.append(f"PIN {pin} finger {t.finger}: SetUserTemplate answered {info!r}")
        done_users.add(t.uid)
        if progress is not None:
            progress(len(done_users), len({x.uid for x in templates}))
    _refresh(session)
    if refused:
        raise ProtocolError(f"{drv.where}: {len(refused)} template(s) refused (capacity? another algorithm?); "
                            f"first: {refused[0]}")


def delete_users(session: SoapSession, uids: Collection[int]) -> None:
    """DeleteUser per PIN (its templates go with it), then RefreshDB."""
    drv = session._driver
    pins = _pins_of(session)
    refused = []
    for uid in uids:
        pin = pins.get(uid)
        if pin is None:
            refused.append(f"uid {uid}: not a user this driver read")
            continue
        ok, info = _result(session._call("DeleteUser", [("PIN", pin)], retry_raw=False))
        if not ok:
            refused.append(f"PIN {pin}: DeleteUser answered {info!r}")
        else:
            with drv._lock:
                drv.enrol_uids.pop(pin, None)
    _refresh(session)
    if refused:
        raise ProtocolError(f"{drv.where}: {len(refused)} delete(s) refused; first: {refused[0]}")


def _refresh(session: SoapSession) -> None:
    # RefreshDB must follow user/template writes (§1.3); its answer is not checked: the read-back is the proof.
    t0 = time.monotonic()
    try:
        session._call("RefreshDB", retry_raw=False)
    except ProtocolError as exc:
        log.info("%s: RefreshDB not answered (%s) after %.1f s; the read-back decides", session._driver.where,
                 exc.message, time.monotonic() - t0)


__all__ = ["ALGORITHM_OPTION", "TEMPLATE_MAX_BYTES", "assign_uids", "delete_users", "read_algorithm",
           "read_enrolments", "template_from_row", "user_from_row", "write_templates", "write_users"]

"""Enrolment backup and restore on ZK terminals: the user and fingerprint-template tables, both directions.

Flow: gateway.enrol (backup/restore) -> ZkSession.read_enrolments / write_users / write_templates
(driver.py, thin) -> *this module* -> pyzk's wire exchange (1503/1504 reads, USER_WRQ, the buffered
upload + command 110) -> terminal.
pyzk's own get_templates() loops ``while total_size`` over entry sizes it never checks (a zero-size
entry spins forever) and its set_user() turns every privilege other than 0 and 14 into 0, so both are
done here: the datasets are downloaded through the session's bounded reader (size limit from the
terminal's capacity, the session deadline) and decoded by the pure functions below, which check
every length (fuzzed in tests/enrol/test_zk_enrol_codec.py). Layouts: fact sheet §2.7 and §2.9
(/work/shared/reference/zk-protocol.md); docs/enrolment.md. Template bytes and passwords never
reach a log line from here.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable, Collection, Iterable
from typing import Any

from zk import const as zk_const
from zk.exception import ZKErrorResponse

from drivers.base import (
    Counts,
    EnrolledUser,
    Enrolments,
    EnrolmentView,
    EnrolProgress,
    PlanTemplateReads,
    Progress,
    ProtocolError,
    Template,
)

#: drivers.zk.driver.ZkSession, whose bounded reader and error translation these functions use. Not
#: imported: the driver imports this module (import-linter keeps sibling modules acyclic).
ZkSession = Any

log = logging.getLogger(__name__)

#: Largest template one table entry may carry. ZKFinger v10 templates are about 0.5-1.6 KB and v9
#: ones smaller; anything larger is a broken table, not a fingerprint.
TEMPLATE_MAX_BYTES = 4096
#: Template capacity assumed when the terminal reports none (GET_FREE_SIZES fingers_cap 0).
DEFAULT_TEMPLATE_CAP = 10_000
#: Bytes of one upload buffer (PREPARE_DATA + DATA pieces + command 110). pyzk sends a user's fingers
#: in one buffer; batching many users per buffer cuts round trips, bounded so one refused buffer
#: costs little to redo.
UPLOAD_BATCH_BYTES = 60_000
#: Command 110 ("save user and templates" in pyzk 0.9's save_user_template; fact sheet §2.7).
CMD_SAVE_USERTEMPS = 110
_SAVE_ARGS = struct.pack("<IHH", 12, 0, 8)
#: Command 88: one finger of one user (pyzk 0.9's get_user_template; fact sheet §2.7).
CMD_GET_USERTEMP = 88

_HEADER = struct.Struct("<I")
_ENTRY = struct.Struct("<HHbb")  # entry size (template + 6), uid, finger index, valid flag
# Users with the password bytes (records.py, the poll's decoder, skips them on purpose).
_USER28 = struct.Struct("<HB5s8sIxBhI")
_USER72 = struct.Struct("<HB8s24sIB7sx24s")
# Upload table entry: 2, uid, 0x10 + finger, offset of the template in the template section.
_TABLE = struct.Struct("<bHbI")


class EnrolDataError(ValueError):
    """A user or template table that does not agree with itself."""


# ---------------------------------------------------------------------------------------------
# Pure codec
# ---------------------------------------------------------------------------------------------


def _text(raw: bytes, encoding: str) -> str:
    return raw.split(b"\0", 1)[0].decode(encoding, errors="replace")


def _body(data: bytes) -> memoryview:
    if len(data) < 4:
        raise EnrolDataError(f"dataset of {len(data)} bytes has no 4-byte size header")
    (declared,) = _HEADER.unpack_from(data, 0)
    if declared != len(data) - 4:
        raise EnrolDataError(f"dataset header says {declared} bytes but {len(data) - 4} bytes arrived")
    return memoryview(data)[4:]


def user_layout_of(body_len: int, count: int, hint: int | None = None) -> int:
    """The user record size (28 or 72) of a user table of ``body_len`` bytes holding ``count`` users."""
    if body_len == 0:
        return hint or 0
    candidates = [size for size in (72, 28) if body_len % size == 0]
    if count > 0:
        exact = [size for size in candidates if body_len // size == count]
        if exact:
            return exact[0]
    if hint in candidates:
        return hint
    if len(candidates) == 1:
        return candidates[0]
    raise EnrolDataError(f"a {body_len}-byte user table is not whole 28- or 72-byte records "
                         f"for {count} users" if not candidates else
                         f"a {body_len}-byte user table fits both record sizes and {count} users neither")


def decode_enrolled_users(data: bytes, count: int, *, encoding: str = "UTF-8",
                          hint: int | None = None) -> tuple[list[EnrolledUser], int]:
    """Whole user dataset (u32 header included) -> (users with their passwords, record size)."""
    body = _body(data)
    size = user_layout_of(len(body), count, hint)
    users: list[EnrolledUser] = []
    if size == 28:
        for uid, priv, pw, name, card, group, _tz, user_id in _USER28.iter_unpack(body):
            users.append(EnrolledUser(uid, str(user_id), _text(name, encoding), priv, card, str(group),
                                      _text(pw, encoding)))
    elif size == 72:
        for uid, priv, pw, name, card, group_no, group_text, user_id in _USER72.iter_unpack(body):
            # Group: pyzk reads text at 40-46, adro a number at byte 39; keep whichever the terminal uses.
            text = _text(group_text, encoding)
            group = text if text.isprintable() and text else str(group_no)
            users.append(EnrolledUser(uid, _text(user_id, encoding), _text(name, encoding), priv, card, group,
                                      _text(pw, encoding)))
    return users, size


def encode_user(user: EnrolledUser, layout: int, encoding: str = "UTF-8") -> bytes:
    """One user record (28 or 72 bytes) as USER_WRQ takes it; raises EnrolDataError when it cannot fit."""
    pw = user.password.encode(encoding, errors="replace")
    name = user.name.encode(encoding, errors="replace")
    if layout == 28:
        if not user.user_id.isdigit() or int(user.user_id) > 0xFFFFFFFF:
            raise EnrolDataError("28-byte user records carry a numeric PIN (u32)")
        if len(pw) > 5:
            raise EnrolDataError("password longer than 5 bytes does not fit a 28-byte user record")
        group = int(user.group_id) if user.group_id.isdigit() and int(user.group_id) < 256 else 1
        return _USER28.pack(user.uid, user.privilege, pw, name[:8], user.card & 0xFFFFFFFF, group, 0,
                            int(user.user_id))
    if layout == 72:
        pin = user.user_id.encode(encoding, errors="replace")
        if len(pin) > 23 or not pin:
            raise EnrolDataError("a PIN of 1-23 bytes is needed for a 72-byte user record")
        if len(pw) > 8:
            raise EnrolDataError("password longer than 8 bytes does not fit a 72-byte user record")
        if user.group_id.isdigit() and int(user.group_id) < 256:
            group_no, group_text = int(user.group_id), b""
        else:
            group_no, group_text = 1, user.group_id.encode(encoding, errors="replace")[:7]
        return _USER72.pack(user.uid, user.privilege, pw, name[:23], user.card & 0xFFFFFFFF, group_no,
                            group_text, pin)
    raise EnrolDataError(f"unknown user layout {layout}")


def decode_templates(data: bytes, *, max_template: int = TEMPLATE_MAX_BYTES) -> list[Template]:
    """Whole template dataset (u32 header included) -> templates, in table order.

    Entries: u16 entry size (template + 6), u16 uid, i8 finger, i8 valid flag, template. Every entry must
    lie inside the table, carry 1..``max_template`` bytes and a finger index 0-9.
    """
    body = _body(data)
    out: list[Template] = []
    pos, end = 0, len(body)
    while pos < end:
        if end - pos < _ENTRY.size:
            raise EnrolDataError(f"template table ends with {end - pos} stray bytes at offset {pos}")
        size, uid, finger, valid = _ENTRY.unpack_from(body, pos)
        if size <= _ENTRY.size or size - _ENTRY.size > max_template:
            raise EnrolDataError(f"template entry at offset {pos} declares {size} bytes "
                                 f"(7 to {max_template + _ENTRY.size} expected)")
        if pos + size > end:
            raise EnrolDataError(f"template entry at offset {pos} runs past the table ({size} bytes)")
        if not 0 <= finger <= 9:
            raise EnrolDataError(f"template entry at offset {pos} has finger index {finger}")
        out.append(Template(uid, finger, valid, bytes(body[pos + _ENTRY.size:pos + size])))
        pos += size
    return out


def encode_template_table(templates: Iterable[Template]) -> bytes:
    """The template dataset a terminal sends (u32 header + entries): for tests and the simulator's peers."""
    body = b"".join(_ENTRY.pack(len(t.data) + _ENTRY.size, t.uid, t.finger, t.valid) + t.data for t in templates)
    return _HEADER.pack(len(body)) + body


def encode_upload(users: Iterable[EnrolledUser], templates: Iterable[Template], layout: int,
                  encoding: str = "UTF-8") -> bytes:
    """The buffer pyzk's save_user_template uploads before command 110 (fact sheet §2.7), for many users.

    Three u32 section sizes; user records prefixed by 0x02 (29 or 73 bytes); table entries
    ``<bHbI`` (2, uid, 0x10 + finger, offset); templates as u16 length + bytes. The 0x10 + finger form
    carries no valid flag: the terminal stores the finger as valid (1).
    """
    upack = b"".join(b"\x02" + encode_user(u, layout, encoding) for u in users)
    table, fpack = bytearray(), bytearray()
    for t in templates:
        if not 0 < len(t.data) <= min(TEMPLATE_MAX_BYTES, 0xFFFF):
            raise EnrolDataError(f"template of uid {t.uid} finger {t.finger} has {len(t.data)} bytes")
        table += _TABLE.pack(2, t.uid, 0x10 + t.finger, len(fpack))
        fpack += struct.pack("<H", len(t.data)) + t.data
    return struct.pack("<III", len(upack), len(table), len(fpack)) + upack + bytes(table) + bytes(fpack)


def upload_batches(users: Collection[EnrolledUser], templates: Collection[Template],
                   limit: int = UPLOAD_BATCH_BYTES) -> list[tuple[list[EnrolledUser], list[Template]]]:
    """Group users with their templates into uploads of about ``limit`` bytes (a user is never split)."""
    by_uid: dict[int, list[Template]] = {}
    for t in templates:
        by_uid.setdefault(t.uid, []).append(t)
    batches: list[tuple[list[EnrolledUser], list[Template]]] = []
    cur_users: list[EnrolledUser] = []
    cur_templates: list[Template] = []
    cur = 12
    for user in users:
        mine = sorted(by_uid.get(user.uid, []), key=lambda t: t.finger)
        if not mine:
            continue
        cost = 73 + sum(8 + 2 + len(t.data) for t in mine)
        if cur_users and cur + cost > limit:
            batches.append((cur_users, cur_templates))
            cur_users, cur_templates, cur = [], [], 12
        cur_users.append(user)
        cur_templates.extend(mine)
        cur += cost
    if cur_users:
        batches.append((cur_users, cur_templates))
    return batches


# ---------------------------------------------------------------------------------------------
# Session operations (called by ZkSession; they use its bounded reader and error translation)
# ---------------------------------------------------------------------------------------------


def read_algorithm(session: ZkSession) -> int:
    """``~ZKFPVersion`` (e.g. 10); 0 when the terminal does not answer the option."""
    zk = session._zk

    def ask() -> int:
        try:
            return int(zk.get_fp_version() or 0)
        except ZKErrorResponse:
            return 0

    return session._call("read fingerprint algorithm version", ask)


def _read_user_table(session: ZkSession, sizes: Counts) -> tuple[list[EnrolledUser], int]:
    """The user table with passwords (keypad already locked): (users, record size; 0 when the table is empty)."""
    drv = session._driver
    users_now = max(sizes.users, 0)
    if not (sizes.unreliable or sizes.users > 0):
        return [], 0
    limit = session._limit_for(72, users_now, max(sizes.users_cap, 0))
    data = session._download("download users (enrolment backup)", zk_const.CMD_USERTEMP_RRQ, zk_const.FCT_USER,
                             limit=limit)
    if not data:
        return [], 0
    try:
        users, layout = decode_enrolled_users(data, users_now, encoding=session._params.encoding,
                                              hint=session._quirks.user_size or drv._user_size)
    except EnrolDataError as exc:
        raise ProtocolError(f"{drv.where}: enrolment tables: {exc}", frames=drv.frames.snapshot()) from exc
    if layout:
        drv._user_size = layout
    return users, layout


def _download_template_table(session: ZkSession, sizes: Counts, progress: Progress | None) -> bytes:
    """The whole template dataset (keypad already locked), bounded by the terminal's capacity; b"" when empty."""
    if not (sizes.unreliable or sizes.fingers != 0):
        return b""
    cap = sizes.fingers_cap if sizes.fingers_cap > 0 else DEFAULT_TEMPLATE_CAP
    entry = TEMPLATE_MAX_BYTES + _ENTRY.size
    limit = min(session._quirks.max_download_bytes, 4 + entry * max(cap, sizes.fingers) + entry * 64)
    expected = max(sizes.fingers, 0)

    def on_bytes(received: int, size: int) -> None:
        if progress is not None and size:
            progress(expected * received // size, expected)

    return bytes(session._download("download fingerprint templates", zk_const.CMD_DB_RRQ, zk_const.FCT_FINGERTMP,
                                   limit=limit, on_bytes=on_bytes))


def _decode_template_table(session: ZkSession, data: bytes) -> list[Template]:
    try:
        return decode_templates(data) if data else []
    except EnrolDataError as exc:
        drv = session._driver
        raise ProtocolError(f"{drv.where}: enrolment tables: {exc}", frames=drv.frames.snapshot()) from exc


def _probe_template_table(session: ZkSession, sizes: Counts) -> tuple[bytes | None, int]:
    """Ask for the template dataset (1503) without reading it: ``(None, bytes of its entries)`` from a buffered
    answer's size (then FREE_DATA: nothing is transferred), or ``(the whole dataset, its entry bytes)`` when the
    terminal answered a small table directly. The byte total is what lets an incremental backup notice a finger
    re-enrolled in place, which leaves every count as it was."""
    zk = session._zk
    cap = sizes.fingers_cap if sizes.fingers_cap > 0 else DEFAULT_TEMPLATE_CAP
    entry = TEMPLATE_MAX_BYTES + _ENTRY.size
    zk.dataset_limit = min(session._quirks.max_download_bytes, 4 + entry * max(cap, sizes.fingers) + entry * 64)

    def run() -> tuple[bytes | None, int]:
        direct, size = zk.prepare_dataset(zk_const.CMD_DB_RRQ, zk_const.FCT_FINGERTMP)
        if direct is not None:
            return bytes(direct), max(len(direct) - _HEADER.size, 0)
        zk.free_data()
        return None, max(int(size) - _HEADER.size, 0)

    return session._call("measure fingerprint template table", run, in_sync_on_reply_error=False)


def read_enrolments(session: ZkSession, progress: Progress | None = None) -> Enrolments:
    """Users and templates in one session; the keypad is locked only while the two tables are read."""
    algorithm = read_algorithm(session)
    sizes = session._read_sizes_disabled()  # locks the keypad (quirk disable_while_reading)
    users, layout = _read_user_table(session, sizes)
    templates_data = _download_template_table(session, sizes, progress)
    # Both tables are read: the keypad need not wait for the decode. (On a failure the session's exit
    # re-enables it.)
    session._enable()
    templates = _decode_template_table(session, templates_data)
    if progress is not None:
        progress(len(templates), len(templates))
    return Enrolments(tuple(users), tuple(templates), algorithm, layout or target_user_layout(session))


def read_user_template(session: ZkSession, uid: int, finger: int) -> bytes | None:
    """One finger of one user (command 88, ``<Hb`` uid, finger; fact sheet §2.7); None when the terminal has none.

    The answer is the template plus one trailing byte (a DATA packet, or PREPARE_DATA + DATA pieces + ACK_OK),
    as pyzk's get_user_template reads it; some firmware pads with six zero bytes more, which pyzk strips too.
    A refusal (ACK_ERROR) means "no such finger": it is not retried.
    """
    zk = session._zk
    # u16 uid (pyzk packs it signed, which fails above 32767; the user table's uid is a u16).
    request = struct.pack("<Hb", uid, finger)

    def over_tcp() -> bytes | None:
        # The driver's TCP channel reads each packet by its declared length (pyzk's own chunk reader does not).
        tcpc = zk.tcpc
        tcpc.session_id, tcpc.reply_id = zk._ZK__session_id, zk._ZK__reply_id
        try:
            rid = tcpc._send(CMD_GET_USERTEMP, request)
            pkt = tcpc._answer(rid, TEMPLATE_MAX_BYTES + 64, "template")
            code = int(struct.unpack_from("<H", pkt)[0])
            if code == zk_const.CMD_DATA:
                return bytes(pkt[8:])
            if code != zk_const.CMD_PREPARE_DATA:
                return None
            if len(pkt) < 12:
                raise ZKErrorResponse("PREPARE_DATA without a size")
            size = int(struct.unpack_from("<I", pkt, 8)[0])
            if size > TEMPLATE_MAX_BYTES + 64:
                raise ZKErrorResponse(f"template answer of {size} bytes announced")
            got = bytearray()
            while len(got) < size:
                piece = tcpc._answer(rid, TEMPLATE_MAX_BYTES + 64, "template")
                if int(struct.unpack_from("<H", piece)[0]) != zk_const.CMD_DATA:
                    raise ZKErrorResponse("template answer broke off")
                got += piece[8:]
            tail = tcpc._answer(rid, 64, "template")
            if int(struct.unpack_from("<H", tail)[0]) != zk_const.CMD_ACK_OK:
                raise ZKErrorResponse("no ACK_OK after a template")
            return bytes(got[:size])
        finally:
            zk._ZK__reply_id = tcpc.reply_id

    def over_udp() -> bytes | None:
        resp = zk._ZK__send_command(CMD_GET_USERTEMP, request, 1024 + 8)
        if not resp["status"]:
            return None
        chunk = zk._ZK__recieve_chunk()
        if chunk is None:
            raise ZKErrorResponse("template answer broke off")
        return bytes(chunk)

    def run() -> bytes | None:
        data = over_tcp() if zk.tcp and zk.tcpc is not None else over_udp()
        if data is None:
            return None
        data = data[:-1]
        if data.endswith(b"\0" * 6):
            data = data[:-6]
        return data or None

    data = session._call("read one template", run, in_sync_on_reply_error=False)
    if data is not None and len(data) > TEMPLATE_MAX_BYTES:
        raise ProtocolError(f"{session._driver.where}: template of uid {uid} finger {finger} has {len(data)} bytes",
                            frames=session._driver.frames.snapshot())
    return data


def read_changed_enrolments(session: ZkSession, plan: PlanTemplateReads,
                            progress: Progress | None = None) -> Enrolments:
    """The incremental read (drivers.base.ReadsChangedEnrolments), all under one keypad lock so the view is
    consistent: counts, user table, ``plan``, then the planned users' fingers 0-9 one by one (command 88) --
    or the whole template table when the plan says so or the terminal's template count does not add up."""
    algorithm = read_algorithm(session)
    sizes = session._read_sizes_disabled()
    templates: list[Template] | None = None
    users, layout = _read_user_table(session, sizes)
    layout = layout or session._quirks.user_size or session._driver._user_size or 0
    count = -1 if sizes.unreliable else max(sizes.fingers, 0)
    table, table_bytes = _probe_template_table(session, sizes) if count != 0 else (None, 0)
    # The plan works with template bytes: take off each entry's 6-byte head.
    table_bytes = table_bytes - _ENTRY.size * count if count >= 0 else -1
    chosen = None
    if table is None:  # not already here whole (a small table answered directly)
        chosen = plan(EnrolmentView(tuple(users), count, algorithm, layout, table_bytes))
    if chosen is not None and count >= 0:
        read: list[Template] = []
        for done, uid in enumerate(sorted(chosen.uids), 1):
            for finger in range(10):
                data = read_user_template(session, uid, finger)
                if data is not None:
                    # Command 88 does not carry the valid flag: 1 (normal) is recorded (docs/enrolment.md).
                    read.append(Template(uid, finger, 1, data))
            if progress is not None:
                progress(done, len(chosen.uids))
        read_bytes = sum(len(t.data) for t in read)
        if chosen.carried + len(read) == count and (table_bytes < 0 or chosen.carried_bytes < 0
                                                     or chosen.carried_bytes + read_bytes == table_bytes):
            templates = read
        else:
            log.info("template table does not add up (%d carried + %d read != %d templates, or %d + %d != %d "
                     "bytes): reading the whole table", chosen.carried, len(read), count, chosen.carried_bytes,
                     read_bytes, table_bytes)
    if templates is None and table is None:
        table = _download_template_table(session, sizes, progress)
    session._enable()  # on a failure the session's exit re-enables it
    if templates is not None and chosen is not None:
        return Enrolments(tuple(users), tuple(templates), algorithm, layout or target_user_layout(session),
                          template_uids=chosen.uids)
    full = _decode_template_table(session, table or b"")
    return Enrolments(tuple(users), tuple(full), algorithm, layout or target_user_layout(session))


def target_user_layout(session: ZkSession) -> int:
    """The user record size to write: the quirk, the size last read from this terminal, what the terminal's
    ``~UserExtFmt`` option says (1 = 72-byte users), else pyzk's convention by transport.

    A blank terminal (factory reset, new unit) has no user table to measure. pyzk guesses 72 bytes on TCP
    and 28 on UDP (the 28-byte firmware speaks UDP only), which is wrong for a TFT terminal polled over UDP.
    """
    forced = session._quirks.user_size or session._driver._user_size
    if forced:
        return int(forced)
    zk = session._zk

    def ask() -> int | None:
        resp = zk._ZK__send_command(zk_const.CMD_OPTIONS_RRQ, b"~UserExtFmt\x00", 1024)
        if not resp["status"]:
            return None
        value = bytes(zk._ZK__data).split(b"=", 1)[-1].split(b"\x00")[0].strip()
        return {b"1": 72, b"0": 28}.get(value)

    layout = session._call("read user record format", ask)
    if layout:
        session._driver._user_size = layout
        return layout
    return 72 if session._params.transport == "tcp" else 28


def _command(session: ZkSession, what: str, command: int, data: bytes = b"", reply_size: int = 8) -> None:
    zk = session._zk

    def run() -> None:
        resp = zk._ZK__send_command(command, data, reply_size)
        if not resp["status"]:
            raise ZKErrorResponse(f"terminal refused ({what})")

    session._call(what, run)


def write_users(session: ZkSession, users: Collection[EnrolledUser],
                progress: EnrolProgress | None = None) -> None:
    """USER_WRQ for each user (by uid, privilege kept as is), then one REFRESHDATA."""
    layout = target_user_layout(session)
    encoding = session._params.encoding
    records = []
    for user in users:
        try:
            records.append(encode_user(user, layout, encoding))
        except EnrolDataError as exc:
            raise ProtocolError(f"{session._driver.where}: user uid {user.uid}: {exc}") from exc
    session._disable()
    for done, record in enumerate(records, 1):
        _command(session, "write user", zk_const.CMD_USER_WRQ, record, 1024)
        if progress is not None:
            progress(done, len(records))
    if records:
        _command(session, "refresh data", zk_const.CMD_REFRESHDATA)
    session._enable()


def write_templates(session: ZkSession, templates: Collection[Template], owners: Collection[EnrolledUser],
                    progress: EnrolProgress | None = None) -> None:
    """Upload ``templates`` with their owners' user records (pyzk's buffered upload + command 110), batched."""
    layout = target_user_layout(session)
    encoding = session._params.encoding
    zk = session._zk
    batches = upload_batches(owners, templates)
    try:
        buffers = [(len(b_users), encode_upload(b_users, b_templates, layout, encoding))
                   for b_users, b_templates in batches]
    except EnrolDataError as exc:
        raise ProtocolError(f"{session._driver.where}: templates: {exc}") from exc
    session._disable()
    done = 0
    send: Callable[[bytes], None] = zk._send_with_buffer
    for count, buffer in buffers:
        session._call("upload templates", send, buffer)
        _command(session, "save users and templates", CMD_SAVE_USERTEMPS, _SAVE_ARGS)
        done += count
        if progress is not None:
            progress(done, len(owners))
    if buffers:
        _command(session, "refresh data", zk_const.CMD_REFRESHDATA)
    session._enable()


def delete_users(session: ZkSession, uids: Collection[int]) -> None:
    """DELETE_USER (u16 uid) for each user (the terminal drops its templates too), then one REFRESHDATA."""
    session._disable()
    for uid in uids:
        _command(session, "delete user", zk_const.CMD_DELETE_USER, struct.pack("<H", uid))
    if uids:
        _command(session, "refresh data", zk_const.CMD_REFRESHDATA)
    session._enable()


__all__ = [
    "EnrolDataError",
    "decode_enrolled_users",
    "decode_templates",
    "delete_users",
    "encode_template_table",
    "encode_upload",
    "encode_user",
    "read_changed_enrolments",
    "read_enrolments",
    "read_user_template",
    "upload_batches",
    "write_templates",
    "write_users",
]

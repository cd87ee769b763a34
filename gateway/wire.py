"""The forwarding wire format: the JSON documents an office gateway sends the central, both directions in one place.

    office: store rows --encode_punch / encode_device--> punch_batch() / health_report() --dumps()--> HTTP body
    central: HTTP body --json--> decode_punch_batch() / decode_health_report() --> Punch / device values --> store
Sans-IO: pure functions and dataclasses, no SQL, no HTTP. gateway.forward.forwarder encodes with it and
gateway.central.api decodes with it, so both ends of the format are ours and live together (pymodbus keeps
one framer for client and server the same way). A malformed document (not an object, no list, bad batch_id)
raises WireError (the central answers 400 bad_payload with its message). A punch or device that cannot be
stored is a per-item rejection reason, never a failure of the whole batch: one bad punch must not block an
office's queue. Every value the central stores is checked here against its column: integers within the
column's range, texts within its length, without NUL and encodable as UTF-8 (no lone surrogates),
instants that exist in UTC (so nothing reaches the database that would make it fail with a 500).

Tiers (docs/tiers.md): a central can forward upstream like an office gateway. Its token at the upper tier
has an OfficeScope of more than one office (codes and prefix patterns such as ``1801.*``); a batch sent
with such a token names each punch's own office_code, which must lie in the scope (else the punch alone is
rejected: ``missing_office`` / ``office_out_of_scope``). A single-office token keeps the one-office rules.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from gateway.models import Punch, state_name, verify_name

#: Keys of a punch object, in the order they are sent.
PUNCH_KEYS = ("office_code", "device_id", "device_serial", "device_user_id", "device_time", "local_time",
              "utc_time", "timezone", "state", "state_name", "verify", "verify_name", "uid", "workcode",
              "raw_time", "employee_id", "flags", "occurrence")

# fullmatch + ASCII: "$" would accept a trailing newline and "\d" any Unicode digit, and both then
# overflow or confuse the column.
_BATCH_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,99}", re.ASCII)
_DEVICE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", re.ASCII)
_DEVICE_TIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}", re.ASCII)

#: Ranges of the integer column types (Integer, BigInteger) on every supported database.
INT32 = (-(2 ** 31), 2 ** 31 - 1)
INT64 = (-(2 ** 63), 2 ** 63 - 1)


#: An office code: letters, digits, '_', ':', '/', '-' in segments joined by '.', at most 32 characters
#: (the punches.office_code column). ``fullmatch`` + ASCII as above.
_OFFICE_CODE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_:/-]*(?:\.[A-Za-z0-9_:/-]+)*", re.ASCII)
OFFICE_CODE_MAX = 32


def office_code_problem(code: str) -> str | None:
    """Why ``code`` is not a well-formed office code (None when it is)."""
    if len(code) > OFFICE_CODE_MAX:
        return f"longer than {OFFICE_CODE_MAX} characters"
    if not _OFFICE_CODE.fullmatch(code):
        return ("must be letters, digits, '_', ':', '/' or '-' in segments joined by '.' (e.g. 1801.01.02), "
                "starting with a letter or digit")
    return None


@dataclass(frozen=True, slots=True)
class OfficeScope:
    """The offices a token (or dashboard account) may act for: exact office codes and prefix patterns.

    A pattern is an office code followed by ``.*`` as its LAST segment: ``1801.*`` allows every office whose
    code starts with ``1801.`` (1801.01, 1801.01.02, ...), not ``1801`` itself (list it too if it is
    meant). ``*`` anywhere else is refused by ``parse``. "Every office" is not a scope: callers use None.
    """

    #: Exact office codes.
    codes: frozenset[str] = frozenset()
    #: Prefixes of the patterns, each ending in "." ("1801." for ``1801.*``).
    prefixes: frozenset[str] = frozenset()

    @classmethod
    def parse(cls, entries: Iterable[str]) -> OfficeScope:
        """The scope of these entries (codes and ``<code>.*`` patterns); ValueError names a bad entry."""
        codes: set[str] = set()
        prefixes: set[str] = set()
        for entry in entries:
            if not isinstance(entry, str) or not entry:
                raise ValueError(f"{entry!r}: an office code or pattern must be a non-empty string")
            base = entry[:-2] if entry.endswith(".*") else entry
            problem = office_code_problem(base)
            if "*" in base or problem:
                raise ValueError(f"{entry!r}: not an office code or pattern ('1801.01.02', or '1801.*' with '*' "
                                 f"only as the last segment){'' if '*' in base else ': ' + str(problem)}")
            (prefixes.add(base + ".") if base != entry else codes.add(entry))
        if not codes and not prefixes:
            raise ValueError("no office given")
        return cls(frozenset(codes), frozenset(prefixes))

    @classmethod
    def of(cls, codes: Iterable[str]) -> OfficeScope:
        """A scope of exact codes (already validated elsewhere, e.g. an account's office)."""
        return cls(frozenset(codes))

    def allows(self, office_code: str) -> bool:
        """Whether ``office_code`` lies in this scope (a malformed code never does)."""
        if office_code in self.codes:
            return True
        return (any(office_code.startswith(p) for p in self.prefixes)
                and office_code_problem(office_code) is None)

    @property
    def single(self) -> str | None:
        """The one office of a scope that is exactly one code (today's gateway token); else None."""
        if len(self.codes) == 1 and not self.prefixes:
            return next(iter(self.codes))
        return None

    @property
    def entries(self) -> tuple[str, ...]:
        """The scope as written in a token file, sorted (codes and ``<code>.*`` patterns)."""
        return tuple(sorted([*self.codes, *(p + "*" for p in self.prefixes)]))

    def __str__(self) -> str:
        return ", ".join(self.entries)


class WireError(ValueError):
    """A malformed document: nothing of it may be stored (the central answers 400 bad_payload)."""


class ItemError(WireError):
    """One punch or device that cannot be stored: ``reason`` is its per-item rejection ("code: detail")."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def text_problem(value: str, limit: int | None = None) -> str | None:
    """Why a text cannot be stored in a column of ``limit`` characters (None when it can)."""
    if limit is not None and len(value) > limit:
        return f"longer than {limit} characters"
    if "\x00" in value:
        return "contains a NUL character"
    if value.isascii():  # the common case, O(1) in CPython: ASCII always encodes
        return None
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "is not valid text (lone surrogate)"
    return None


def _shown(value: Any, limit: int = 40) -> str:
    # Echo a client's value in a reason safely: ASCII only (a lone surrogate cannot be sent back as UTF-8).
    return ascii(value if not isinstance(value, str) else value[:limit])[:limit + 20]


class TooManyItems(Exception):
    """A batch holds more items than the receiver takes in one request (the central answers 413)."""

    def __init__(self, key: str, count: int, limit: int) -> None:
        super().__init__(f"{count} {key} in one request; at most {limit}")
        self.key, self.count, self.limit = key, count, limit


class OfficeMismatch(Exception):
    """The sender claims another office than the one its token is for (the central answers 403)."""

    def __init__(self, office_code: str, claimed: Any) -> None:
        super().__init__(f"this gateway's token is for office {office_code!r}, not {claimed!r}; fix [site] "
                         "office_code or ask BKD for the right token")
        self.office_code, self.claimed = office_code, claimed


# --------------------------------------------------------------------------------------------------
# Encoding (office side)
# --------------------------------------------------------------------------------------------------

def _instant_text(value: datetime | None) -> str | None:
    # UTC instants end in "Z"; values are sent as stored (the store hands out UTC).
    return value.isoformat(timespec="seconds").replace("+00:00", "Z") if value is not None else None


def encode_punch(row: Punch | Mapping[str, Any]) -> dict[str, Any]:
    """The wire form of a punch: a Punch, or a punches-table row (flags as "a,b" text)."""
    if isinstance(row, Punch):
        row = {**{k: getattr(row, k) for k in PUNCH_KEYS}, "flags": ",".join(row.flags)}
    local, utc = row["local_time"], row["utc_time"]
    out = {
        "office_code": row["office_code"], "device_id": row["device_id"], "device_serial": row["device_serial"],
        "device_user_id": row["device_user_id"], "device_time": row["device_time"],
        "local_time": local.isoformat(timespec="seconds") if local is not None else None,
        "utc_time": utc.isoformat(timespec="seconds").replace("+00:00", "Z") if utc is not None else None,
        "timezone": row["timezone"], "state": row["state"], "state_name": row["state_name"],
        "verify": row["verify"], "verify_name": row["verify_name"], "uid": row["uid"],
        "workcode": row["workcode"], "raw_time": row["raw_time"], "employee_id": row["employee_id"],
        "flags": [f for f in (row["flags"] or "").split(",") if f],
    }
    # Part of the punch's identity (Punch.occurrence); sent only when not 0, so a batch of ordinary
    # punches is byte for byte what older gateways send (same batch_id) and older centrals see nothing new.
    if row.get("occurrence"):
        out["occurrence"] = row["occurrence"]
    return out


def encode_device(row: Mapping[str, Any], *, with_office: bool = False) -> dict[str, Any]:
    """The wire form of one device and its health (a health snapshot row; ``problems`` already a dict);
    ``with_office``: a tier's report, where each device names its office."""
    problems = row["problems"]
    office = {"office_code": row["office_code"]} if with_office else {}
    return {**office,
        "device_id": row["device_id"], "name": row["name"], "location": row["location"], "address": row["address"],
        "port": row["port"], "transport": row["transport"], "serial": row["serial"], "firmware": row["firmware"],
        "platform": row["platform"], "device_name": row["device_name"], "mac": row["mac"], "enabled": row["enabled"],
        "last_seen_at": _instant_text(row["last_seen_at"]), "last_ok_at": _instant_text(row["last_ok_at"]),
        "last_full_read_at": _instant_text(row["last_full_read_at"]), "last_record_count": row["last_record_count"],
        "last_user_count": row["last_user_count"], "records_cap": row["records_cap"], "users_cap": row["users_cap"],
        "last_punch_at": _instant_text(row["last_punch_at"]),
        "last_new_punch_at": _instant_text(row["last_new_punch_at"]),
        "clock_skew_s": row["clock_skew_s"],
        "health": {
            "state": row["h_state"] or "unknown", "state_since": _instant_text(row["state_since"]),
            "consecutive_failures": row["consecutive_failures"] or 0,
            "last_failure_at": _instant_text(row["last_failure_at"]), "last_error_kind": row["last_error_kind"],
            "last_error": row["last_error"], "problems": problems if isinstance(problems, dict) else {},
            "muted_until": _instant_text(row["muted_until"]), "mute_reason": row["mute_reason"],
        },
    }


def gateway_meta(*, office_code: str, office_name: str | None, hostname: str, version: str,
                 outbox_depth: int | None, oldest_unforwarded_s: float | None, tier: bool = False) -> dict[str, Any]:
    """The ``gateway`` object every document carries: who sends, and how far behind it is (``tier``: a
    central forwarding its offices' punches upstream; ``office_code`` is then the tier's own code)."""
    meta = {"office_code": office_code, "office_name": office_name, "hostname": hostname, "version": version,
            "outbox_depth": outbox_depth, "oldest_unforwarded_s": oldest_unforwarded_s}
    if tier:  # only then: an office gateway's documents stay byte for byte what they were
        meta["tier"] = True
    return meta


def batch_id(punches: Sequence[Mapping[str, Any]]) -> str:
    """The content-derived id of a batch of wire punches: a resend of the same punches has the same id."""
    digest = hashlib.sha256(json.dumps(punches, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    return f"b-{digest[:40]}"


def punch_batch(punches: Sequence[Mapping[str, Any]], meta: Mapping[str, Any]) -> dict[str, Any]:
    """The POST /ingest/punches document for these wire punches."""
    return {"batch_id": batch_id(punches), "gateway": meta, "punches": list(punches)}


def health_report(meta: Mapping[str, Any], devices: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The POST /ingest/health document for these wire devices."""
    return {"gateway": meta, "devices": list(devices)}


def dumps(doc: Any) -> bytes:
    """A document as the request body (compact JSON, ASCII)."""
    return json.dumps(doc, separators=(",", ":")).encode()


def batch_digest(punches: Any, office_code: str = "") -> str:
    """Content digest of a batch (its punches and the office they are stored under): the same batch_id
    with another digest is a conflict, so a stored answer is never given for different content."""
    doc = {"office_code": office_code, "punches": punches}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


# --------------------------------------------------------------------------------------------------
# Decoding (central side)
# --------------------------------------------------------------------------------------------------

def _str(obj: Mapping[str, Any], key: str, where: str, *, required: bool = True, nullable: bool = False,
         limit: int | None = None) -> Any:
    if key not in obj or obj[key] is None:
        if required and not (nullable and key in obj):
            raise WireError(f"{where}.{key}: required")
        return None
    if not isinstance(obj[key], str):
        raise WireError(f"{where}.{key}: must be a string")
    problem = text_problem(obj[key], limit)
    if problem:
        raise WireError(f"{where}.{key}: {problem}")
    return obj[key]


def _int(obj: Mapping[str, Any], key: str, where: str, default: int | None = None,
         bounds: tuple[int, int] = INT32) -> int:
    v = obj.get(key, default)
    if v is None and default is not None:
        v = default
    if isinstance(v, bool) or not isinstance(v, int):
        raise WireError(f"{where}.{key}: must be an integer")
    if not bounds[0] <= v <= bounds[1]:
        raise ItemError(f"out_of_range: {key} {_shown(v, 30)} is outside {bounds[0]}..{bounds[1]}")
    return v


def _instant(text: str | None, *, aware: bool) -> datetime | None:
    if text is None:
        return None
    value = datetime.fromisoformat(text)  # ValueError -> rejected row
    if aware and value.tzinfo is None:
        raise ValueError("no UTC offset")
    if not aware and value.tzinfo is not None:
        raise ValueError("local time must not carry an offset")
    try:
        return value.astimezone(UTC) if aware else value
    except OverflowError:  # 9999-12-31T23:00:00-05:00 has no UTC instant
        raise ValueError("outside the representable range") from None


_LIMITS = {"device_id": 64, "device_serial": 64, "device_user_id": 64, "employee_id": 64, "timezone": 64,
           "state_name": 16, "verify_name": 24}


def decode_punch(obj: Any, i: int, office_code: str | OfficeScope) -> tuple[Punch | None, str | None]:
    """A wire punch as (Punch, None), or (None, reason) when it cannot be stored (never raises).

    ``office_code``: the sender's one office (the punch is stored under it), or the OfficeScope of a tier's
    token (the punch must name its own office within it; see the module docstring).
    """
    if isinstance(office_code, OfficeScope) and office_code.single is not None:
        office_code = office_code.single
    try:
        return _decode_punch(obj, i, office_code)
    except ItemError as exc:
        return None, exc.reason
    except WireError as exc:
        return None, f"malformed: {exc}"


#: Text keys of a punch in the order they are checked (the first bad one names the error): required, then optional.
_REQUIRED_TEXTS = ("device_id", "device_serial", "device_user_id", "device_time", "timezone")
_OPTIONAL_TEXTS = ("office_code", "local_time", "utc_time", "employee_id", "state_name", "verify_name")
#: Integer keys with their default (None = required) and bounds, in the order they are checked.
_INTS: tuple[tuple[str, int | None, tuple[int, int]], ...] = (
    ("state", None, INT32), ("verify", None, INT32), ("uid", 0, INT32), ("workcode", 0, INT32),
    ("raw_time", -1, INT64),
    # Punch identity (Punch.occurrence; absent from older gateways = 0).
    ("occurrence", 0, (0, INT64[1])))
#: Time zones already found valid (ZoneInfo's own cache is a call and a lock away; bounded, see _zone_ok).
_ZONES_OK: set[str] = set()


def _texts(obj: dict[str, Any], keys: tuple[str, ...], i: int, *, required: bool) -> list[Any]:
    """The values of ``keys`` as _str would return them, the common case (plain ASCII text without NUL, or
    an absent optional value) without its calls; anything else goes through _str for the same result or error."""
    out: list[Any] = []
    get = obj.get
    for key in keys:
        v = get(key)
        if type(v) is str and v.isascii() and "\x00" not in v:
            out.append(v)
        elif v is None and not required:
            out.append(None)
        else:
            out.append(_str(obj, key, f"punches[{i}]", required=required))
    return out


def _ints(obj: dict[str, Any], i: int) -> list[int]:
    """The integers of _INTS as _int would return them (plain ints within bounds without its calls)."""
    out: list[int] = []
    get = obj.get
    for key, default, (low, high) in _INTS:
        v = get(key, default)
        if type(v) is int and low <= v <= high:
            out.append(v)
        else:
            out.append(_int(obj, key, f"punches[{i}]", default, (low, high)))
    return out


def _zone_ok(name: str) -> bool:
    if name in _ZONES_OK:
        return True
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return False
    if len(_ZONES_OK) < 1000:  # a client sending endless new valid names only loses the shortcut
        _ZONES_OK.add(name)
    return True


def _decode_punch(obj: Any, i: int, office_code: str | OfficeScope) -> tuple[Punch | None, str | None]:
    # The checks and their order are those of the first version of this function (every message the same);
    # the common case of each is answered inline (issue 14: decoding bound the central's ingest).
    if not isinstance(obj, dict):
        raise WireError(f"punches[{i}]: must be an object")
    device_id, serial, user, device_time, zone = _texts(obj, _REQUIRED_TEXTS, i, required=True)
    office, local_text, utc_text, employee, sname, vname = _texts(obj, _OPTIONAL_TEXTS, i, required=False)
    fields = {"device_id": device_id, "device_serial": serial, "device_user_id": user, "device_time": device_time,
              "timezone": zone}
    flags = obj.get("flags", [])
    if flags:
        if isinstance(flags, str):
            flags = [f for f in flags.split(",") if f]
        if not isinstance(flags, list) or not all(isinstance(f, str) for f in flags):
            raise WireError(f"punches[{i}].flags: must be a list of strings")
    elif flags != [] and flags != "":
        raise WireError(f"punches[{i}].flags: must be a list of strings")
    else:
        flags = []
    state, verify, uid, workcode, raw_time, occurrence = _ints(obj, i)
    # Well-formed from here on; what follows rejects the row, not the batch.
    if isinstance(office_code, OfficeScope):  # a tier's batch: each punch names its own office
        if office is None:
            return None, "missing_office: a batch sent with a multi-office (tier) token names each punch's office_code"
        if not office_code.allows(office):
            return None, (f"office_out_of_scope: office {_shown(office)} is not among this token's offices "
                          f"({_shown(str(office_code), 80)})")
        stored_office = office
    else:
        stored_office = office_code
        if office is not None and office != office_code:
            return None, (f"office_mismatch: punch says {_shown(office)} but this gateway's token is for "
                          f"{office_code!r}")
    # Every text above went through _str (or its inline common case), which already refused NUL characters
    # and invalid text.
    if not (len(device_id) <= 64 and len(serial) <= 64 and len(user) <= 64 and len(zone) <= 64
            and (employee is None or len(employee) <= 64) and (sname is None or len(sname) <= 16)
            and (vname is None or len(vname) <= 24)):
        texts = {**fields, "employee_id": employee, "state_name": sname, "verify_name": vname}
        for key, limit in _LIMITS.items():
            value = texts[key]
            if value is not None and len(value) > limit:
                return None, f"field_too_long: {key} is longer than {limit} characters"
    if not serial or not user or not device_id:
        return None, "missing_identity: device_id, device_serial and device_user_id must not be empty"
    if not _DEVICE_TIME.fullmatch(device_time):
        return None, f"bad_device_time: {_shown(device_time)} is not 'YYYY-MM-DD HH:MM:SS'"
    if not _zone_ok(zone):
        return None, f"unknown_timezone: {_shown(zone, 64)}"
    try:
        local = _instant(local_text, aware=False)
        utc = _instant(utc_text, aware=True)
    except ValueError as exc:
        return None, f"bad_time: local_time/utc_time not ISO 8601 ({exc})"
    if flags:
        joined = ",".join(flags)
        if len(joined) > 200:
            return None, "field_too_long: flags"
        if any(text_problem(f) for f in flags):
            return None, "bad_text: flags contain a NUL character or invalid text"
    return Punch(office_code=stored_office, device_id=device_id, device_serial=serial, device_user_id=user,
                 device_time=device_time, local_time=local, utc_time=utc, timezone=zone, state=state,
                 state_name=sname or state_name(state), verify=verify, verify_name=vname or verify_name(verify),
                 uid=uid, workcode=workcode, raw_time=raw_time, employee_id=employee or None, flags=tuple(flags),
                 occurrence=occurrence), None


_DEVICE_STR = {"name": 200, "location": 200, "address": 255, "transport": 8, "serial": 64, "firmware": 100,
               "platform": 100, "device_name": 100, "mac": 32}
_DEVICE_INT = ("port", "last_record_count", "last_user_count", "records_cap", "users_cap")
_DEVICE_TIME_FIELDS = ("last_seen_at", "last_ok_at", "last_full_read_at", "last_punch_at", "last_new_punch_at")
_HEALTH_STATES = ("unknown", "online", "offline")


def decode_device(obj: Any, i: int) -> dict[str, Any]:
    """A wire device-health object as devices/device_health values (strings cut to the columns); raises WireError."""
    where = f"devices[{i}]"
    if not isinstance(obj, dict):
        raise WireError(f"{where}: must be an object")
    dev_id = _str(obj, "device_id", where)
    if not _DEVICE_ID.fullmatch(dev_id):
        raise WireError(f"{where}.device_id: 1-64 letters, digits, '_', '.' or '-'")
    out: dict[str, Any] = {"device_id": dev_id}
    for key, limit in _DEVICE_STR.items():
        v = _str(obj, key, where, required=False)
        if v is not None:
            out[key] = v[:limit]
    for key in _DEVICE_INT:
        if obj.get(key) is not None:
            try:
                out[key] = _int(obj, key, where)
            except ItemError as exc:
                raise WireError(f"{where}.{exc.reason}") from None
    if obj.get("enabled") is not None:
        if not isinstance(obj["enabled"], bool):
            raise WireError(f"{where}.enabled: must be true or false")
        out["enabled"] = obj["enabled"]
    if obj.get("clock_skew_s") is not None:
        if (isinstance(obj["clock_skew_s"], bool) or not isinstance(obj["clock_skew_s"], int | float)
                or not math.isfinite(obj["clock_skew_s"]) or abs(obj["clock_skew_s"]) > 1e12):
            raise WireError(f"{where}.clock_skew_s: must be a finite number")
        out["clock_skew_s"] = float(obj["clock_skew_s"])
    for key in _DEVICE_TIME_FIELDS:
        out[key] = _aware(obj, key, where)
    health = obj.get("health") or {}
    if not isinstance(health, dict):
        raise WireError(f"{where}.health: must be an object")
    h: dict[str, Any] = {}
    state = health.get("state", "unknown")
    if state not in _HEALTH_STATES:
        raise WireError(f"{where}.health.state: must be one of {', '.join(_HEALTH_STATES)}")
    h["state"] = state
    for key in ("state_since", "last_failure_at", "muted_until"):
        h[key] = _aware(health, key, f"{where}.health")
    try:
        h["consecutive_failures"] = _int(health, "consecutive_failures", f"{where}.health", 0)
    except ItemError as exc:
        raise WireError(f"{where}.health.{exc.reason}") from None
    for key, limit in (("last_error_kind", 32), ("last_error", 2000), ("mute_reason", 200)):
        v = _str(health, key, f"{where}.health", required=False)
        h[key] = v[:limit] if v is not None else None
    problems = health.get("problems") or {}
    if not isinstance(problems, dict):
        raise WireError(f"{where}.health.problems: must be an object")
    try:
        # Stored as JSON text: it must encode (not nested past the recursion limit) and stay small.
        if len(json.dumps(problems, allow_nan=False)) > 20000:
            raise WireError(f"{where}.health.problems: larger than 20000 characters as JSON")
    except (ValueError, RecursionError):
        raise WireError(f"{where}.health.problems: not storable as JSON (nested too deeply, NaN or Infinity)"
                        ) from None
    # Problem texts are informational (a device's own strings can end up in them): cleaned, never a reason to
    # refuse the device's health (refused, it would stay stale at the central for as long as the text stays).
    h["problems"] = _clean_texts(problems)
    out["health"] = h
    return out


def _clean_texts(value: Any, depth: int = 0) -> Any:
    """``value`` with every key and text storable and sendable: NUL and lone surrogates become U+FFFD."""
    if isinstance(value, str):
        if text_problem(value) is None:
            return value
        return "".join("\ufffd" if ch == "\x00" or "\ud800" <= ch <= "\udfff" else ch for ch in value)
    if depth > 50:  # already refused by the size check above when deeper; keep the walk bounded anyway
        return None
    if isinstance(value, dict):
        return {_clean_texts(str(k), depth + 1): _clean_texts(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean_texts(v, depth + 1) for v in value]
    return value


def _aware(obj: Mapping[str, Any], key: str, where: str) -> datetime | None:
    v = _str(obj, key, where, required=False)
    if v is None:
        return None
    try:
        return _instant(v, aware=True)
    except ValueError:
        raise WireError(f"{where}.{key}: must be an ISO 8601 instant with offset, e.g. 2026-11-23T01:30:00Z"
                        ) from None


def decode_gateway_meta(doc: Mapping[str, Any], office_code: str | OfficeScope) -> dict[str, Any]:
    """The ``gateway`` object of a document as sent (the store keeps only known keys of the right type);
    raises WireError, or OfficeMismatch when it names another office than the token's.

    A tier (``"tier": true``, or a token of more than one office) names its own office code there, which is
    not one of the offices its punches come from: it is recorded, not compared.
    """
    meta = doc.get("gateway") or {}
    if not isinstance(meta, dict):
        raise WireError("gateway: must be an object")
    if isinstance(office_code, OfficeScope):
        office_code = office_code.single or ""
    claimed = meta.get("office_code")
    tier = meta.get("tier") is True or not office_code
    if claimed is not None and claimed != office_code and not tier:
        raise OfficeMismatch(office_code, claimed[:64] if isinstance(claimed, str) else _shown(claimed))
    # Informational: keep the values that fit their columns, drop the others (never refuse a batch for them).
    clean: dict[str, Any] = {}
    for key, value in meta.items():
        if isinstance(value, str) and text_problem(value) is None:
            clean[key] = value
        elif key == "outbox_depth" and isinstance(value, int) and not isinstance(value, bool):
            clean[key] = value if INT32[0] <= value <= INT32[1] else None
        elif key == "oldest_unforwarded_s" and isinstance(value, int | float) and not isinstance(value, bool):
            clean[key] = float(value) if math.isfinite(value) and abs(value) < 1e15 else None
        elif value is None or isinstance(value, bool):
            clean[key] = value
    return clean


def batch_items(doc: Any, key: str, max_items: int) -> list[Any]:
    """The list under ``key`` of a document (punches or devices), at most ``max_items`` long."""
    if not isinstance(doc, dict):
        raise WireError("body must be a JSON object")
    raw = doc.get(key)
    if not isinstance(raw, list):
        raise WireError(f"{key}: required, a list")
    if len(raw) > max_items:
        raise TooManyItems(key, len(raw), max_items)
    return raw


@dataclass(frozen=True, slots=True)
class PunchBatch:
    """A decoded POST /ingest/punches document."""

    batch_id: str
    #: The sender's ``gateway`` object, as sent.
    gateway: dict[str, Any]
    #: Per punch, in order: (Punch, None), or (None, reason) for a punch the central rejects.
    punches: list[tuple[Punch | None, str | None]]
    #: batch_digest() of the punches as sent and the office they are stored under.
    digest: str

    @property
    def rejected(self) -> dict[int, str]:
        """index -> reason of the rejected punches."""
        return {i: r for i, (_, r) in enumerate(self.punches) if r}


@dataclass(frozen=True, slots=True)
class HealthReport:
    """A decoded POST /ingest/health document."""

    gateway: dict[str, Any]
    #: The devices that can be stored, in order.
    devices: list[dict[str, Any]]
    #: Index in the report of each of ``devices``.
    indexes: list[int]
    #: index -> reason of the devices that cannot be stored (the rest of the report still is).
    rejected: dict[int, str]


def decode_punch_batch(doc: Any, office_code: str | OfficeScope, *, max_punches: int) -> PunchBatch:
    """Validate a punch batch sent by a gateway whose token is for ``office_code`` (or, a tier's token, for
    an OfficeScope of several offices: each punch then names its own office within it).

    Raises WireError (malformed document), TooManyItems or OfficeMismatch, checked in this order: body,
    list, size, batch_id, gateway object. Each punch is then decoded on its own: one that cannot be stored
    is a per-punch rejection (PunchBatch.rejected), never an error of the batch.
    """
    raw = batch_items(doc, "punches", max_punches)
    bid = doc.get("batch_id")
    if not isinstance(bid, str) or not _BATCH_ID.fullmatch(bid):
        raise WireError("batch_id: required, 1-100 letters, digits, '_', '.', ':' or '-'")
    meta = decode_gateway_meta(doc, office_code)
    if isinstance(office_code, OfficeScope) and office_code.single is not None:
        office_code = office_code.single
    parsed = [decode_punch(p, i, office_code) for i, p in enumerate(raw)]
    return PunchBatch(batch_id=bid, gateway=meta, punches=parsed, digest=batch_digest(raw, str(office_code)))


def decode_health_report(doc: Any, office_code: str | OfficeScope, *, max_devices: int) -> HealthReport:
    """Validate a device-health report sent by a gateway whose token is for ``office_code`` (same errors)."""
    raw = batch_items(doc, "devices", max_devices)
    meta = decode_gateway_meta(doc, office_code)
    scope = office_code if isinstance(office_code, OfficeScope) and office_code.single is None else None
    devices: list[dict[str, Any]] = []
    indexes: list[int] = []
    rejected: dict[int, str] = {}
    for i, d in enumerate(raw):
        try:
            device = decode_device(d, i)
            if scope is not None:  # a tier's report: each device names its own office (as its punches do)
                office = d.get("office_code")
                if not isinstance(office, str):
                    rejected[i] = "missing_office: a report sent with a multi-office (tier) token names each " \
                                  "device's office_code"
                    continue
                if not scope.allows(office):
                    rejected[i] = (f"office_out_of_scope: office {_shown(office)} is not among this token's "
                                   f"offices ({_shown(str(scope), 80)})")
                    continue
                device["office_code"] = office
            devices.append(device)
            indexes.append(i)
        except WireError as exc:
            rejected[i] = f"malformed: {exc}"
    return HealthReport(gateway=meta, devices=devices, indexes=indexes, rejected=rejected)

"""gateway.wire: what the forwarder encodes, the central decodes to the same values; bad documents get the
same errors as before the format had its own module (the bytes are pinned with literals)."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import wire
from gateway.models import Punch

OFFICE = "1801.01"

FULL = Punch(office_code=OFFICE, device_id="lobby", device_serial="SN1", device_user_id="42",
             device_time="2026-11-02 07:30:05", local_time=datetime(2026, 11, 2, 7, 30, 5),
             utc_time=datetime(2026, 11, 2, 0, 30, 5, tzinfo=UTC), timezone="Asia/Jakarta", state=1,
             state_name="check_out", verify=1, verify_name="fingerprint", uid=7, workcode=3, raw_time=123456,
             employee_id="198001012000011001", flags=("future", "unmapped_user"))
#: FULL on the wire, byte for byte as the forwarder has always sent it.
FULL_BYTES = (b'{"office_code":"1801.01","device_id":"lobby","device_serial":"SN1","device_user_id":"42",'
              b'"device_time":"2026-11-02 07:30:05","local_time":"2026-11-02T07:30:05",'
              b'"utc_time":"2026-11-02T00:30:05Z",'
              b'"timezone":"Asia/Jakarta","state":1,"state_name":"check_out","verify":1,"verify_name":"fingerprint",'
              b'"uid":7,"workcode":3,"raw_time":123456,"employee_id":"198001012000011001",'
              b'"flags":["future","unmapped_user"]}')

#: A punch whose device_time is no calendar date: no local/UTC time, no employee, no flags but the one.
BARE = Punch(office_code=OFFICE, device_id="hall", device_serial="SN2", device_user_id="7",
             device_time="2026-02-30 08:00:00", local_time=None, utc_time=None, timezone="Asia/Makassar", state=255,
             state_name="unknown", verify=200, verify_name="other", flags=("impossible_date",))


def roundtrip(doc: Any) -> Any:
    """Through the bytes, as over HTTP."""
    return json.loads(wire.dumps(doc))


def meta(**kw: Any) -> dict[str, Any]:
    base = {"office_code": OFFICE, "office_name": "Dinas Uji", "hostname": "gw-1", "version": "1.2.3",
            "outbox_depth": 12, "oldest_unforwarded_s": 30.5}
    return wire.gateway_meta(**{**base, **kw})


# --------------------------------------------------------------------------------------------------
# Punches
# --------------------------------------------------------------------------------------------------

def test_a_punch_is_encoded_byte_for_byte_as_before() -> None:
    assert wire.dumps(wire.encode_punch(FULL)) == FULL_BYTES
    # A stored row (flags as text) and the Punch give the same document.
    row = {**{k: getattr(FULL, k) for k in wire.PUNCH_KEYS}, "flags": "future,unmapped_user"}
    assert wire.encode_punch(row) == wire.encode_punch(FULL)
    assert wire.batch_id([wire.encode_punch(FULL)]) == "b-2955c623f2186529c559cd7e3449d344e28fc02f"
    assert wire.batch_digest([wire.encode_punch(FULL)], OFFICE) == (
        "8a40439a0d9f34460eac7f90d24b4bfec6f80adac856cd8d5cef7bf09b4e9647")


@pytest.mark.parametrize("punch", [FULL, BARE], ids=["every-field", "no-times"])
def test_a_punch_decodes_to_the_punch_that_was_encoded(punch: Punch) -> None:
    assert wire.decode_punch(roundtrip(wire.encode_punch(punch)), 0, OFFICE) == (punch, None)


def test_the_office_comes_from_the_token_and_names_default_from_the_codes() -> None:
    doc = roundtrip(wire.encode_punch(FULL))
    for key in ("office_code", "state_name", "verify_name", "employee_id", "uid", "workcode", "raw_time", "flags"):
        del doc[key]
    got, reason = wire.decode_punch(doc, 0, OFFICE)
    assert reason is None and got is not None
    assert (got.office_code, got.state_name, got.verify_name, got.employee_id, got.uid, got.workcode, got.raw_time,
            got.flags) == (OFFICE, "check_out", "fingerprint", None, 0, 0, -1, ())
    # Flags may also come as "a,b" text.
    got, _ = wire.decode_punch({**doc, "flags": "future,,rtc_reset"}, 0, OFFICE)
    assert got is not None and got.flags == ("future", "rtc_reset")


_valid_text = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-", min_size=1,
                      max_size=64)


#: Any character a text column stores (everything but NUL and lone surrogates).
_stored_chars = st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",))


@st.composite
def punches(draw: st.DrawFn) -> Punch:
    local = draw(st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2099, 12, 31))).replace(
        microsecond=0)
    zone = draw(st.sampled_from(["Asia/Jakarta", "Asia/Makassar", "Asia/Jayapura", "UTC"]))
    dated = draw(st.booleans())
    offset = {"Asia/Jakarta": 7, "Asia/Makassar": 8, "Asia/Jayapura": 9, "UTC": 0}[zone]
    return Punch(office_code=OFFICE, device_id=draw(_valid_text), device_serial=draw(_valid_text),
                 device_user_id=draw(_valid_text), device_time=local.strftime("%Y-%m-%d %H:%M:%S"),
                 local_time=local if dated else None,
                 utc_time=(local - timedelta(hours=offset)).replace(tzinfo=UTC) if dated else None, timezone=zone,
                 state=draw(st.integers(0, 255)), state_name=draw(st.text(_stored_chars, min_size=1, max_size=16)),
                 verify=draw(st.integers(0, 255)), verify_name=draw(st.text(_stored_chars, min_size=1, max_size=24)),
                 uid=draw(st.integers(0, 65535)), workcode=draw(st.integers(0, 2**31 - 1)),
                 raw_time=draw(st.integers(-1, 2**32)), employee_id=draw(st.none() | _valid_text),
                 flags=tuple(draw(st.lists(st.sampled_from(["future", "before_device", "rtc_reset", "impossible_date",
                                                            "unmapped_user"]), unique=True))))


@settings(max_examples=200, deadline=None)
@given(st.lists(punches(), min_size=1, max_size=5))
def test_any_batch_of_valid_punches_survives_the_wire(items: list[Punch]) -> None:
    doc = roundtrip(wire.punch_batch([wire.encode_punch(p) for p in items], meta()))
    batch = wire.decode_punch_batch(doc, OFFICE, max_punches=5)
    assert batch.punches == [(p, None) for p in items]
    assert batch.rejected == {}
    assert batch.batch_id == wire.batch_id([wire.encode_punch(p) for p in items])
    assert batch.digest == wire.batch_digest(doc["punches"], OFFICE)
    assert batch.gateway == meta()


# --------------------------------------------------------------------------------------------------
# Health snapshots
# --------------------------------------------------------------------------------------------------

NOW = datetime(2026, 11, 2, 1, 0, tzinfo=UTC)
SNAPSHOT_ROW: dict[str, Any] = {
    "device_id": "lobby", "name": "Lobby", "location": "Ground floor", "address": "10.0.0.5", "port": 4370,
    "transport": "tcp", "serial": "SN1", "firmware": "Ver 6.60", "platform": "ZMM220_TFT", "device_name": "K40",
    "mac": "00:17:61:00:00:01", "enabled": True, "last_seen_at": NOW, "last_ok_at": NOW,
    "last_full_read_at": NOW - timedelta(hours=1), "last_record_count": 1200, "last_user_count": 80,
    "records_cap": 100000, "users_cap": 3000, "last_punch_at": NOW - timedelta(minutes=5),
    "last_new_punch_at": NOW - timedelta(minutes=4), "clock_skew_s": -2.5,
    "h_state": "offline", "state_since": NOW - timedelta(minutes=30), "consecutive_failures": 4,
    "last_failure_at": NOW, "last_error_kind": "unreachable", "last_error": "timed out",
    "problems": {"clock_drift": {"since": "2026-11-01T00:00:00Z"}}, "muted_until": NOW + timedelta(hours=2),
    "mute_reason": "cable repair",
}


def test_a_device_health_row_decodes_to_the_values_that_were_encoded() -> None:
    got = wire.decode_device(roundtrip(wire.encode_device(SNAPSHOT_ROW)), 0)
    r = SNAPSHOT_ROW
    assert got == {
        **{k: r[k] for k in ("device_id", "name", "location", "address", "port", "transport", "serial", "firmware",
                             "platform", "device_name", "mac", "enabled", "last_seen_at", "last_ok_at",
                             "last_full_read_at", "last_record_count", "last_user_count", "records_cap", "users_cap",
                             "last_punch_at", "last_new_punch_at", "clock_skew_s")},
        "health": {"state": "offline", "state_since": r["state_since"], "last_failure_at": r["last_failure_at"],
                   "muted_until": r["muted_until"], "consecutive_failures": 4, "last_error_kind": "unreachable",
                   "last_error": "timed out", "mute_reason": "cable repair", "problems": r["problems"]},
    }


def test_a_device_without_health_is_sent_as_unknown_and_decodes_with_empty_values() -> None:
    row = {**{k: None for k in SNAPSHOT_ROW}, "device_id": "new", "name": "New", "location": "", "address": "x",
           "port": 4370, "transport": "udp", "enabled": False, "problems": {}}
    doc = wire.encode_device(row)
    assert doc["health"]["state"] == "unknown" and doc["health"]["consecutive_failures"] == 0
    got = wire.decode_device(roundtrip(doc), 0)
    assert got["health"] == {"state": "unknown", "state_since": None, "last_failure_at": None, "muted_until": None,
                             "consecutive_failures": 0, "last_error_kind": None, "last_error": None,
                             "mute_reason": None, "problems": {}}
    assert got["enabled"] is False and "serial" not in got and got["last_seen_at"] is None


def test_a_health_report_decodes_with_its_gateway_and_devices() -> None:
    doc = roundtrip(wire.health_report(meta(), [wire.encode_device(SNAPSHOT_ROW)]))
    assert list(doc) == ["gateway", "devices"]
    report = wire.decode_health_report(doc, OFFICE, max_devices=10)
    assert report.gateway == meta() and [d["device_id"] for d in report.devices] == ["lobby"]


def test_documents_keep_their_key_order() -> None:
    doc = wire.punch_batch([wire.encode_punch(FULL)], meta())
    assert list(doc) == ["batch_id", "gateway", "punches"]
    assert list(doc["gateway"]) == ["office_code", "office_name", "hostname", "version", "outbox_depth",
                                    "oldest_unforwarded_s"]
    # occurrence is sent only when not 0 (older gateways' batches keep their batch_id).
    assert list(wire.encode_punch(FULL)) == [k for k in wire.PUNCH_KEYS if k != "occurrence"]
    assert list(wire.encode_punch(replace(FULL, occurrence=2))) == list(wire.PUNCH_KEYS)


def test_occurrence_round_trips_and_defaults_to_zero() -> None:
    two = wire.encode_punch(replace(FULL, occurrence=2))
    assert two["occurrence"] == 2
    assert wire.decode_punch(two, 0, FULL.office_code)[0].occurrence == 2  # type: ignore[union-attr]
    old = wire.encode_punch(FULL)
    assert "occurrence" not in old and wire.decode_punch(old, 0, FULL.office_code)[0].occurrence == 0  # type: ignore[union-attr]
    bad = {**two, "occurrence": -1}
    assert wire.decode_punch(bad, 0, FULL.office_code)[1].startswith("out_of_range: occurrence")  # type: ignore[union-attr]


# --------------------------------------------------------------------------------------------------
# Bad documents: the same errors as before
# --------------------------------------------------------------------------------------------------

def _batch(**kw: Any) -> dict[str, Any]:
    return {"batch_id": "b-1", "gateway": {"office_code": OFFICE}, "punches": [wire.encode_punch(FULL)], **kw}


@pytest.mark.parametrize(("doc", "error", "message"), [
    ([], wire.WireError, "body must be a JSON object"),
    ({"batch_id": "b-1"}, wire.WireError, "punches: required, a list"),
    (_batch(punches={}), wire.WireError, "punches: required, a list"),
    (_batch(punches=[{}] * 3), wire.TooManyItems, "3 punches in one request; at most 2"),
    (_batch(batch_id=None), wire.WireError, "batch_id: required, 1-100 letters, digits, '_', '.', ':' or '-'"),
    (_batch(batch_id="-starts-badly"), wire.WireError, "batch_id: required"),
    (_batch(gateway="gw-1"), wire.WireError, "gateway: must be an object"),
    (_batch(gateway={"office_code": "1801.02"}), wire.OfficeMismatch,
     "this gateway's token is for office '1801.01', not '1801.02'; fix [site] office_code or ask BKD for the right "
     "token"),
])
def test_a_malformed_batch_is_refused_whole_with_the_same_message(doc: Any, error: type[Exception],
                                                                  message: str) -> None:
    with pytest.raises(error) as caught:
        wire.decode_punch_batch(doc, OFFICE, max_punches=2)
    assert str(caught.value).startswith(message)


@pytest.mark.parametrize(("punch", "reason"), [
    ("x", "malformed: punches[1]: must be an object"),
    ({**wire.encode_punch(FULL), "device_id": None}, "malformed: punches[1].device_id: required"),
    ({**wire.encode_punch(FULL), "timezone": 7}, "malformed: punches[1].timezone: must be a string"),
    ({**wire.encode_punch(FULL), "state": True}, "malformed: punches[1].state: must be an integer"),
    ({**wire.encode_punch(FULL), "uid": "7"}, "malformed: punches[1].uid: must be an integer"),
    ({**wire.encode_punch(FULL), "flags": [1]}, "malformed: punches[1].flags: must be a list of strings"),
])
def test_a_malformed_punch_is_rejected_alone_not_its_batch(punch: Any, reason: str) -> None:
    # Before issue 8 these refused the whole batch: one bad punch blocked the office's queue forever.
    batch = wire.decode_punch_batch(_batch(punches=[wire.encode_punch(FULL), punch]), OFFICE, max_punches=2)
    assert batch.punches == [(FULL, None), (None, reason)] and batch.rejected == {1: reason}


@pytest.mark.parametrize(("change", "reason"), [
    ({"workcode": 2**31}, "out_of_range: workcode 2147483648 is outside -2147483648..2147483647"),
    ({"state": -(2**31) - 1}, "out_of_range: state -2147483649 is outside -2147483648..2147483647"),
    ({"uid": 10**30}, "out_of_range: uid 1000000000000000000000000000000 is outside -2147483648..2147483647"),
    ({"raw_time": 2**63}, "out_of_range: raw_time 9223372036854775808 is outside "
                          "-9223372036854775808..9223372036854775807"),
    ({"device_user_id": "7\x00"}, "malformed: punches[1].device_user_id: contains a NUL character"),
    ({"device_serial": "SN\ud800"}, "malformed: punches[1].device_serial: is not valid text (lone surrogate)"),
    ({"employee_id": "\udfff"}, "malformed: punches[1].employee_id: is not valid text (lone surrogate)"),
    ({"device_time": "2026-11-02 07:30:05\n"}, "bad_device_time: '2026-11-02 07:30:05\\n' is not "
                                               "'YYYY-MM-DD HH:MM:SS'"),
    ({"device_time": "\u0662\u0660\u0662\u0666-11-02 07:30:05"}, "bad_device_time: '\\u0662\\u0660\\u0662"
                                                              "\\u0666-11-02 07:30:05' is not 'YYYY-MM-DD HH:MM:SS'"),
    ({"utc_time": "0001-01-01T00:00:00+01:00"},
     "bad_time: local_time/utc_time not ISO 8601 (outside the representable range)"),
    ({"timezone": "\x00"}, "malformed: punches[1].timezone: contains a NUL character"),
    ({"flags": ["a\x00"]}, "bad_text: flags contain a NUL character or invalid text"),
])
def test_a_value_that_does_not_fit_its_column_rejects_only_its_punch(change: dict[str, Any], reason: str) -> None:
    # Issue 8 item 2: workcode >= 2**31 made the central answer 500 and the office retry the batch forever.
    batch = wire.decode_punch_batch(_batch(punches=[wire.encode_punch(FULL), {**wire.encode_punch(FULL), **change}]),
                                    OFFICE, max_punches=2)
    assert batch.punches == [(FULL, None), (None, reason)]


@pytest.mark.parametrize(("change", "reason"), [
    ({"office_code": "1801.02"}, "office_mismatch: punch says '1801.02' but this gateway's token is for '1801.01'"),
    ({"device_serial": "X" * 65}, "field_too_long: device_serial is longer than 64 characters"),
    ({"state_name": "x" * 17}, "field_too_long: state_name is longer than 16 characters"),
    ({"device_user_id": ""}, "missing_identity: device_id, device_serial and device_user_id must not be empty"),
    ({"device_time": "02-11-2026 07:30"}, "bad_device_time: '02-11-2026 07:30' is not 'YYYY-MM-DD HH:MM:SS'"),
    ({"timezone": "Mars/Olympus"}, "unknown_timezone: 'Mars/Olympus'"),
    ({"utc_time": "yesterday"}, "bad_time: local_time/utc_time not ISO 8601 (Invalid isoformat string: 'yesterday')"),
    ({"utc_time": "2026-11-02T00:30:05"}, "bad_time: local_time/utc_time not ISO 8601 (no UTC offset)"),
    ({"local_time": "2026-11-02T07:30:05+07:00"},
     "bad_time: local_time/utc_time not ISO 8601 (local time must not carry an offset)"),
    ({"flags": ["x" * 201]}, "field_too_long: flags"),
])
def test_a_well_formed_but_unacceptable_punch_is_rejected_alone(change: dict[str, Any], reason: str) -> None:
    batch = wire.decode_punch_batch(_batch(punches=[wire.encode_punch(FULL), {**wire.encode_punch(FULL), **change}]),
                                    OFFICE, max_punches=2)
    assert batch.punches[0] == (FULL, None)
    assert batch.punches[1] == (None, reason) and batch.rejected == {1: reason}


@pytest.mark.parametrize(("change", "message"), [
    ({"device_id": "bad id"}, "devices[0].device_id: 1-64 letters, digits, '_', '.' or '-'"),
    ({"port": "4370"}, "devices[0].port: must be an integer"),
    ({"enabled": 1}, "devices[0].enabled: must be true or false"),
    ({"clock_skew_s": "3"}, "devices[0].clock_skew_s: must be a finite number"),
    ({"port": 2**31}, "devices[0].out_of_range: port 2147483648 is outside -2147483648..2147483647"),
    ({"name": "lobby\x00"}, "devices[0].name: contains a NUL character"),
    ({"health": {"last_error": "\ud800"}}, "devices[0].health.last_error: is not valid text (lone surrogate)"),
    ({"last_seen_at": "9999-12-31T23:00:00-05:00"}, "devices[0].last_seen_at: must be an ISO 8601 instant"),
    ({"last_seen_at": "2026-11-02 01:00"},
     "devices[0].last_seen_at: must be an ISO 8601 instant with offset, e.g. 2026-11-23T01:30:00Z"),
    ({"health": "online"}, "devices[0].health: must be an object"),
    ({"health": {"state": "asleep"}}, "devices[0].health.state: must be one of unknown, online, offline"),
    ({"health": {"problems": ["clock_drift"]}}, "devices[0].health.problems: must be an object"),
    ({"health": {"muted_until": "soon"}}, "devices[0].health.muted_until: must be an ISO 8601 instant with offset"),
])
def test_a_malformed_device_is_rejected_alone_with_the_same_message(change: dict[str, Any], message: str) -> None:
    doc = wire.health_report({"office_code": OFFICE}, [wire.encode_device(SNAPSHOT_ROW),
                                                       {**wire.encode_device(SNAPSHOT_ROW), **change}])
    with pytest.raises(wire.WireError) as caught:
        wire.decode_device(roundtrip(doc)["devices"][1], 0)
    assert str(caught.value).startswith(message)
    report = wire.decode_health_report(roundtrip(doc), OFFICE, max_devices=10)
    assert report.indexes == [0] and list(report.rejected) == [1]
    assert report.rejected[1].startswith("malformed: " + message.replace("devices[0]", "devices[1]"))


def test_long_device_texts_are_cut_to_their_columns_not_refused() -> None:
    got = wire.decode_device({**wire.encode_device(SNAPSHOT_ROW), "name": "n" * 300,
                              "health": {"last_error": "e" * 3000}}, 0)
    assert len(got["name"]) == 200 and len(got["health"]["last_error"]) == 2000


def test_problem_texts_that_cannot_be_stored_or_served_are_cleaned_not_refused() -> None:
    # Stored as JSON text, then served by the pull API and the dashboard: a lone surrogate there made
    # GET /api/v1/devices a 500. Refusing the device instead would keep its health stale at the central.
    problems = {"offline": {"detail": "a\ud800b", "seen": ["ok", "nul\x00"]}, "k\udfff": {}}
    doc = wire.health_report({"office_code": OFFICE}, [{**wire.encode_device(SNAPSHOT_ROW),
                                                        "health": {"state": "offline", "problems": problems}}])
    got = wire.decode_device(roundtrip(doc)["devices"][0], 0)["health"]["problems"]
    assert got == {"offline": {"detail": "a\ufffdb", "seen": ["ok", "nul\ufffd"]}, "k\ufffd": {}}
    assert wire.text_problem(json.dumps(got, ensure_ascii=False)) is None

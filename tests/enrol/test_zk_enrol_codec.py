"""The ZK enrolment codec (drivers/zk/enrol.py): byte fixtures from the fact sheet, round trips, the simulator's
independent codec (simulators/zk/templates.py) agreeing with the driver's, and property tests: any bytes either
decode or raise EnrolDataError, in time linear in their length (pyzk's own loop spins on a zero-size entry)."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.base import EnrolledUser, Template
from drivers.zk.enrol import (
    EnrolDataError,
    decode_enrolled_users,
    decode_templates,
    encode_template_table,
    encode_upload,
    encode_user,
    upload_batches,
    user_layout_of,
)
from simulators.zk.templates import parse_upload

#: V9 of /work/shared/reference/zk-protocol.md §5 (adro's capture): a 72-byte user, uid 13, password "444"
#: with junk after its NUL, name "Ned", card 0xDE, group number 2 at byte 39, per-user time zones in bytes
#: 40-47 (01 00 01 00 02 00 00 00), user id "555".
V9_USER72 = (struct.pack("<HB", 13, 0) + b"444\x00\x77\x00\x00\x00" + b"Ned".ljust(24, b"\x00")
             + struct.pack("<I", 0xDE) + b"\x02" + bytes.fromhex("0100010002000000") + b"555".ljust(24, b"\x00"))


def dataset(body: bytes) -> bytes:
    return struct.pack("<I", len(body)) + body


def test_adro_user_record_decodes_with_its_password_and_group_number() -> None:
    assert len(V9_USER72) == 72
    [user], size = decode_enrolled_users(dataset(V9_USER72), 1)
    assert size == 72
    assert (user.uid, user.user_id, user.name, user.card, user.password) == (13, "555", "Ned", 0xDE, "444")
    # Bytes 40-46 hold time zones, not text: the group number at byte 39 is kept.
    assert user.group_id == "2" and user.has_password
    assert "444" not in repr(user)


def test_template_table_entry_layout_of_pyzk_get_templates() -> None:
    # §2.7: u16 entry size (= template + 6), u16 uid, i8 finger, i8 valid, template.
    body = struct.pack("<HHbb", 6 + 4, 7, 3, 1) + b"\xa1\xca\x2c\x82"
    [t] = decode_templates(dataset(body))
    assert (t.uid, t.finger, t.valid, t.data) == (7, 3, 1, b"\xa1\xca\x2c\x82")
    assert "a1ca" not in repr(t) and "\\xa1" not in repr(t) and t.size == 4


@pytest.mark.parametrize("body, why", [
    (struct.pack("<HHbb", 0, 1, 0, 1), "declares 0 bytes"),         # pyzk loops forever on this one
    (struct.pack("<HHbb", 6, 1, 0, 1), "declares 6 bytes"),         # empty template
    (struct.pack("<HHbb", 60, 1, 0, 1) + b"x" * 10, "runs past"),   # truncated
    (struct.pack("<HHbb", 8, 1, 12, 1) + b"xy", "finger index 12"),
    (b"\x01\x02\x03", "stray bytes"),
])
def test_broken_template_tables_are_refused(body: bytes, why: str) -> None:
    with pytest.raises(EnrolDataError, match=why):
        decode_templates(dataset(body))


def test_declared_size_must_match_the_bytes() -> None:
    with pytest.raises(EnrolDataError, match="header says"):
        decode_templates(struct.pack("<I", 99) + b"x" * 10)


users_72 = st.builds(
    EnrolledUser, uid=st.integers(1, 0xFFFF), user_id=st.text("0123456789ABC", min_size=1, max_size=23),
    name=st.text("abcdefghij XYZ", max_size=23), privilege=st.sampled_from([0, 2, 6, 14, 1]),
    card=st.integers(0, 0xFFFFFFFF), group_id=st.sampled_from(["1", "2", "0", "17"]),
    password=st.text("0123456789", max_size=8))
templates = st.builds(Template, uid=st.integers(1, 0xFFFF), finger=st.integers(0, 9), valid=st.integers(0, 3),
                      data=st.binary(min_size=1, max_size=2048))


@settings(max_examples=200, deadline=None)
@given(st.lists(users_72, max_size=20))
def test_users_round_trip_through_72_byte_records(users: list[EnrolledUser]) -> None:
    body = b"".join(encode_user(u, 72) for u in users)
    decoded, size = decode_enrolled_users(dataset(body), len(users))
    assert decoded == users and (size == 72 or not users)


@settings(max_examples=200, deadline=None)
@given(st.lists(users_72.map(lambda u: EnrolledUser(u.uid, str(abs(hash(u.user_id)) % 10**9), u.name[:8],
                                                   u.privilege, u.card, u.group_id, u.password[:5])),
                max_size=20))
def test_users_round_trip_through_28_byte_records(users: list[EnrolledUser]) -> None:
    body = b"".join(encode_user(u, 28) for u in users)
    decoded, _ = decode_enrolled_users(dataset(body), len(users), hint=28)
    assert decoded == users


@settings(max_examples=200, deadline=None)
@given(st.lists(templates, max_size=30))
def test_template_tables_round_trip(items: list[Template]) -> None:
    assert decode_templates(encode_template_table(items)) == items


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=3000))
def test_any_bytes_decode_or_raise_enrol_data_error(raw: bytes) -> None:
    for data in (raw, dataset(raw)):
        try:
            for t in decode_templates(data):
                assert 0 <= t.finger <= 9 and 0 < t.size <= 4096
        except EnrolDataError:
            pass
        try:
            decode_enrolled_users(data, 3)
        except EnrolDataError:
            pass


@settings(max_examples=100, deadline=None)
@given(st.lists(users_72, min_size=1, max_size=8, unique_by=lambda u: u.uid), st.data())
def test_simulator_reads_the_driver_upload_as_written(users: list[EnrolledUser], data: st.DataObject) -> None:
    uids = [u.uid for u in users]
    items = data.draw(st.lists(st.builds(Template, uid=st.sampled_from(uids), finger=st.integers(0, 9),
                                         valid=st.just(1), data=st.binary(min_size=1, max_size=1600)),
                               max_size=12, unique_by=lambda t: (t.uid, t.finger)))
    sim_users, sim_templates = parse_upload(encode_upload(users, items, 72), 72)
    assert [(u.uid, u.user_id, u.name, u.privilege, u.card, u.password) for u in sim_users] == \
        [(u.uid, u.user_id, u.name, u.privilege, u.card, u.password) for u in users]
    assert [(t.uid, t.finger, t.data) for t in sim_templates] == [(t.uid, t.finger, t.data) for t in items]


def test_uploads_are_batched_without_splitting_a_user() -> None:
    users = [EnrolledUser(i, str(1000 + i)) for i in range(1, 41)]
    items = [Template(i, f, 1, bytes(1000)) for i in range(1, 41) for f in (0, 1)]
    batches = upload_batches(users, items, limit=10_000)
    assert len(batches) > 1
    assert [u for b_users, _ in batches for u in b_users] == users
    for b_users, b_templates in batches:
        assert {t.uid for t in b_templates} == {u.uid for u in b_users}
        assert len(encode_upload(b_users, b_templates, 72)) <= 10_000


def test_user_layout_is_decided_by_evidence() -> None:
    assert user_layout_of(72 * 28, 28) == 72 and user_layout_of(72 * 28, 72) == 28
    assert user_layout_of(0, 0, 72) == 72
    with pytest.raises(EnrolDataError):
        user_layout_of(100, 2)


def test_users_that_cannot_fit_a_record_are_refused_before_anything_is_sent() -> None:
    with pytest.raises(EnrolDataError, match="numeric PIN"):
        encode_user(EnrolledUser(1, "19801231ABC"), 28)
    with pytest.raises(EnrolDataError, match="password"):
        encode_user(EnrolledUser(1, "1", password="123456789"), 72)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=2000), st.sampled_from([28, 72]))
def test_simulator_upload_parser_refuses_garbage_with_protocol_error_only(raw: bytes, layout: int) -> None:
    from simulators.zk.protocol import ProtocolError

    for buf in (raw, struct.pack("<III", 0, 0, len(raw)) + raw, struct.pack("<III", 73, 8, len(raw)) + raw):
        try:
            users, items = parse_upload(buf, layout)
        except ProtocolError:
            continue
        assert all(0 <= t.finger <= 9 and t.data for t in items) and isinstance(users, list)

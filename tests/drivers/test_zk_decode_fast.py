"""The fast paths of records.py and frames.py equal their plain forms on any input.

``parse_records`` (one pass, cached day/clock parts, per-decode id tables, collector paused) must give
exactly what ``reference_parse_records`` (record by record, no caches) gives, for every layout, any bytes
(impossible dates, non-UTF-8 id text, zero times) and any encoding; ``checksum`` (one integer reduced
modulo 0xFFFF) must equal the word-by-word fold of the fact sheet, including the 0x0000/0xFFFF edge.
"""

from __future__ import annotations

import gc
import random
import struct
from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.base import RawPunchColumns
from drivers.zk import records
from drivers.zk.frames import _checksum_by_words, checksum


def mapped(uid: int) -> str:
    return f"P{uid % 97}" if uid % 5 else str(uid)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([8, 16, 40]), st.lists(st.binary(min_size=40, max_size=40), max_size=40),
       st.sampled_from(["UTF-8", "latin-1", "gb2312"]))
def test_fast_decode_equals_the_reference_on_any_bytes(size: int, raw: list[bytes], encoding: str) -> None:
    body = b"".join(r[:size] for r in raw)
    assert records.parse_records(body, size, encoding, mapped) == \
        records.reference_parse_records(body, size, encoding, mapped)


#: Encoded times around month ends, leap days, impossible dates (Feb 30, Apr 31), midnight, 2000 and 2099.
_EDGE_TIMES = st.one_of(
    st.integers(0, records._T_2100 - 1),
    st.sampled_from([0, 1, 86399, 86400, records._T_2100 - 1, records._T_2100, 0xFFFFFFFF]),
    st.builds(lambda y, m, d, s: ((y * 12 + m) * 31 + d) * 86400 + s,
              st.integers(0, 99), st.integers(0, 11), st.integers(27, 30), st.integers(0, 86399)),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 0xFFFF), st.integers(0, 255), _EDGE_TIMES.map(lambda t: t & 0xFFFFFFFF),
                          st.integers(0, 255), st.integers(0, 0xFFFFFFFF)), max_size=30))
def test_fast_decode_equals_the_reference_on_every_layout_and_date(fields: list[tuple[int, ...]]) -> None:
    bodies = {
        8: b"".join(struct.pack("<HBIB", uid, v, t, s) for uid, v, t, s, _w in fields),
        16: b"".join(struct.pack("<IIBB2xI", w, t, s, v, w ^ 0x5A5A) for _u, v, t, s, w in fields),
        40: b"".join(struct.pack("<H24sBIB8x", uid, str(w).encode(), v, t, s) for uid, v, t, s, w in fields),
    }
    for size, body in bodies.items():
        fast = records.parse_records(body, size, "UTF-8", mapped)
        assert fast == records.reference_parse_records(body, size, "UTF-8", mapped)
        assert [p.raw_time for p in fast] == [f[2] for f in fields]


def test_decode_leaves_the_garbage_collector_as_it_found_it() -> None:
    body = struct.pack("<IIBB2xI", 7, 800_000_000, 0, 1, 0)
    assert gc.isenabled()
    records.parse_records(body, 16)
    assert gc.isenabled()
    gc.disable()
    try:
        records.parse_records(body, 16)
        assert not gc.isenabled()
    finally:
        gc.enable()


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.binary(min_size=4, max_size=300),
                 st.lists(st.sampled_from([0x00, 0xFF]), min_size=4, max_size=64).map(bytes)))
def test_checksum_equals_the_word_fold(packet: bytes) -> None:
    assert checksum(packet) == _checksum_by_words(packet)


def test_checksum_edge_cases() -> None:
    assert checksum(b"\x00" * 8) == _checksum_by_words(b"\x00" * 8) == 0xFFFF  # sum 0
    assert checksum(b"\xff\xff\x00\x00") == _checksum_by_words(b"\xff\xff\x00\x00")  # sum 0xFFFF
    assert checksum(b"\x01\x00\x12\x34\x02") == _checksum_by_words(b"\x01\x00\x12\x34\x02")  # odd length


#: Steps between consecutive records of a log in time order: same second, a few seconds, across midnight,
#: a day or a month ahead (the 31-day month encoding passes through impossible dates: Feb 29-31, Apr 31).
_STEPS = st.one_of(st.integers(0, 90), st.sampled_from([86399, 86400, 86401, 31 * 86400]),
                   st.integers(0, 40 * 86400))


@settings(max_examples=200, deadline=None)
@given(st.integers(0, records._T_2100 - 1), st.lists(st.tuples(_STEPS, st.integers(0, 0xFFFF)), max_size=60))
def test_fast_decode_equals_the_reference_on_logs_in_time_order(start: int, steps: list[tuple[int, int]]) -> None:
    # The decode looks the day part up only when a record leaves the current day: prove it on runs of records.
    times, t = [], start
    for step, _uid in steps:
        t = (t + step) & 0xFFFFFFFF
        times.append(t)
    uids = [uid for _step, uid in steps]
    bodies = {
        8: b"".join(struct.pack("<HBIB", uid, 1, t, 0) for uid, t in zip(uids, times, strict=True)),
        16: b"".join(struct.pack("<IIBB2xI", uid, t, 0, 1, 0) for uid, t in zip(uids, times, strict=True)),
        40: b"".join(struct.pack("<H24sBIB8x", uid, str(uid).encode(), 1, t, 0)
                     for uid, t in zip(uids, times, strict=True)),
    }
    for size, body in bodies.items():
        assert records.parse_records(body, size, "UTF-8", mapped) == \
            records.reference_parse_records(body, size, "UTF-8", mapped)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(min_size=8, max_size=8), max_size=50))
def test_uid_scan_equals_the_record_by_record_one(raw: list[bytes]) -> None:
    body = b"".join(raw)
    assert records.uids_in_8byte_records(body) == {uid for uid, *_ in struct.iter_unpack("<HBIB", body)}
    assert records.uids_in_8byte_records(memoryview(body)) == records.uids_in_8byte_records(body)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from([8, 16, 40]), st.lists(st.binary(min_size=40, max_size=40), max_size=30),
       st.integers(-35, 35), st.integers(-35, 35), st.sampled_from([1, 2, -1, 3]))
def test_columns_behave_as_the_list_of_records_they_stand_for(size: int, raw: list[bytes], start: int, stop: int,
                                                              step: int) -> None:
    # Every consumer of a download (tail read's [1:], the position's [-1], len, iteration) sees the reference.
    body = b"".join(r[:size] for r in raw)
    cols = records.parse_records(body, size, "UTF-8", mapped)
    ref = records.reference_parse_records(body, size, "UTF-8", mapped)
    assert len(cols) == len(ref) and list(cols) == ref and cols == ref and ref == cols
    assert [cols[i] for i in range(-len(ref), len(ref))] == [ref[i] for i in range(-len(ref), len(ref))]
    part = cols[start:stop:step]
    assert isinstance(part, RawPunchColumns) and list(part) == ref[start:stop:step] == part
    assert part[1:] == ref[start:stop:step][1:]


@settings(max_examples=200, deadline=None)
@given(st.sampled_from([8, 16, 40]), st.lists(st.binary(min_size=40, max_size=40), min_size=1, max_size=12),
       st.lists(st.tuples(st.integers(0, 11), st.integers(0, 39), st.integers(0, 255)), max_size=3),
       st.randoms(use_true_random=False))
def test_column_values_tell_records_apart_exactly_as_the_records_do(size: int, raw: list[bytes],
                                                                   edits: list[tuple[int, int, int]],
                                                                   rnd: random.Random) -> None:
    # The guarded clear compares the re-read with the stored download by record_values(), not RawPunch.
    first = [r[:size] for r in raw]
    second = list(first)
    rnd.shuffle(second)
    for i, at, value in edits:  # change a byte of some record (maybe a byte no field reads)
        rec = bytearray(second[i % len(second)])
        rec[at % size] = value
        second[i % len(second)] = bytes(rec)
    a = records.parse_records(b"".join(first), size, "UTF-8", mapped)
    b = records.parse_records(b"".join(second), size, "UTF-8", mapped)
    assert (Counter(a.record_values()) == Counter(b.record_values())) == (Counter(a) == Counter(b))


@settings(max_examples=100, deadline=None)
@given(st.sampled_from([8, 16, 40]), st.lists(st.binary(min_size=40, max_size=40), max_size=20))
def test_the_unpacked_columns_of_a_big_endian_host_equal_the_reference(size: int, raw: list[bytes]) -> None:
    # The buffer casts read native words; a big-endian host takes _unpacked_columns, proved here on this host.
    body = b"".join(r[:size] for r in raw)
    assert records._unpacked_columns(body, size, "UTF-8", mapped) == \
        records.reference_parse_records(body, size, "UTF-8", mapped)

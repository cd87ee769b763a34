"""drivers.serial.framing: line ends in any chunking, noise at the edges and inside lines, overlong lines,
partial lines at a disconnect; property-based fuzzing of the framer (hypothesis)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.serial.framing import NOISE, LineFramer, show_bytes


def lines_of(framer: LineFramer, *chunks: bytes) -> list[tuple[str, str | None]]:
    return [(x.text, x.problem) for c in chunks for x in framer.feed(c)]


@pytest.mark.parametrize("end", [b"\r\n", b"\n", b"\r"])
def test_every_line_end_ends_a_line_and_empty_lines_are_skipped(end: bytes) -> None:
    assert lines_of(LineFramer(), b"a" + end + end + b"b" + end) == [("a", None), ("b", None)]


def test_crlf_split_across_two_reads_is_one_line_end() -> None:
    f = LineFramer()
    assert lines_of(f, b"a\r", b"\nb\r", b"\n") == [("a", None), ("b", None)]
    assert f.pending_bytes == 0


def test_a_line_split_in_any_two_reads_comes_out_whole() -> None:
    data = b"12\t2024-05-01 07:30:00\t0\t1\r\n"
    for cut in range(len(data) + 1):
        assert lines_of(LineFramer(), data[:cut], data[cut:]) == [("12\t2024-05-01 07:30:00\t0\t1", None)]


def test_noise_around_a_line_is_removed_and_counted_stx_etx_are_not_counted() -> None:
    f = LineFramer()
    assert lines_of(f, b"\x00\xff\x02abc\x03\x00\r\n\x00\x00\r\n") == [("abc", None)]
    assert f.noise_bytes == 5


def test_noise_inside_a_line_makes_it_suspect_with_raw_bytes_shown() -> None:
    f = LineFramer()
    (line,) = f.feed(b"1\x002\t2024\r\n")
    assert line.problem is not None and "1 noise byte" in line.problem
    assert line.raw == "1\\x002\t2024" and f.noise_bytes == 1


def test_overlong_line_is_cut_reported_and_the_next_line_is_clean() -> None:
    f = LineFramer(max_line_bytes=32)
    out = f.feed(b"x" * 100 + b"\r\nok\r\n")
    assert [(len(x.text), x.problem is not None) for x in out] == [(32, True), (2, False)]
    assert f.discarded_bytes == 68


def test_flush_returns_the_unfinished_line_with_the_reason() -> None:
    f = LineFramer()
    f.feed(b"ok\r\npart")
    line = f.flush("port closed")
    assert line is not None and (line.text, line.problem) == ("part", "port closed")
    assert f.flush("again") is None and f.pending_bytes == 0


def test_show_bytes_keeps_text_readable() -> None:
    assert show_bytes(b"a\tb\x00\xff") == "a\tb\\x00\\xff"


# -- fuzzing -----------------------------------------------------------------------------------------

_CLEAN = st.binary(min_size=1, max_size=40).map(
    lambda b: bytes(c for c in b if c not in NOISE and c not in (0x02, 0x03) and c not in b"\r\n") or b"x")


@settings(max_examples=3000, deadline=None)
@given(st.binary(max_size=2000), st.lists(st.integers(min_value=0, max_value=2000), max_size=20),
       st.integers(min_value=16, max_value=600))
def test_fuzz_framer_never_raises_and_bounds_every_line(data: bytes, cuts: list[int], limit: int) -> None:
    f = LineFramer(max_line_bytes=limit)
    points = sorted({min(c, len(data)) for c in cuts})
    out = []
    start = 0
    for p in [*points, len(data)]:
        out += f.feed(data[start:p])
        start = p
    last = f.flush("cut off")
    for line in [*out, *([last] if last else [])]:
        assert len(line.text.encode("latin-1")) <= limit
        assert "\r" not in line.text and "\n" not in line.text and line.text.strip(" \t")
        assert line.problem is not None or not any(ord(ch) in NOISE for ch in line.text)
    assert f.pending_bytes == 0


@settings(max_examples=2000, deadline=None)
@given(st.lists(_CLEAN.map(lambda b: b.strip(b" \t") or b"x"), min_size=1, max_size=30),
       st.sampled_from([b"\r\n", b"\n", b"\r"]), st.lists(st.integers(min_value=0, max_value=3000), max_size=10),
       st.lists(st.binary(max_size=4).map(lambda b: bytes(c for c in b if c in NOISE and c not in b"\r\n")),
                max_size=30))
def test_fuzz_clean_lines_come_out_exactly_in_any_chunking_with_noise_between(
        lines: list[bytes], end: bytes, cuts: list[int], noise: list[bytes]) -> None:
    stream = b"".join((noise[i] if i < len(noise) else b"") + line + end for i, line in enumerate(lines))
    f = LineFramer()
    points = sorted({min(c, len(stream)) for c in cuts})
    out, start = [], 0
    for p in [*points, len(stream)]:
        out += f.feed(stream[start:p])
        start = p
    assert [x.text for x in out] == [line.decode("latin-1") for line in lines]
    assert all(x.problem is None for x in out)

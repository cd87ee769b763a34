"""Property-based fuzzing of the export parser: whatever the bytes, a ParsedExport or ExportError, nothing else.

Thousands of inputs per run (hypothesis): random bytes, attlog-shaped text built from good and broken fields,
and the fixture files with bytes flipped, inserted and cut. What parses must also normalize (the importer's next
step) without an exception, and every non-empty text line must be accounted for (a punch, a quarantined line,
the serial header or the checksum line): nothing is dropped silently.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.polling.normalize import DeviceContext, normalize_punches
from gateway.usbimport.formats import (
    _SDK_LINE,
    ExportError,
    ParsedExport,
    _fast_record,
    _record,
    name_hint,
    parse_export,
)

FIXTURES = Path(__file__).parent / "fixtures"
SAMPLES = [p.read_bytes() for p in sorted(FIXTURES.glob("*.dat"))]
TIME_TEXT = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}$")
LINES = re.compile(rb"\r\n|\n|\r")
CTX = DeviceContext(office_code="1801.01.02", device_id="lobby", serial="FUZZ0001", timezone="Asia/Jakarta")
NOW = datetime(2026, 12, 1, tzinfo=UTC)
FUZZ = settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _check(data: bytes) -> ParsedExport | None:
    try:
        parsed = parse_export(data)
    except ExportError as exc:
        assert str(exc)
        return None
    for p in parsed.punches:
        assert TIME_TEXT.match(p.time_text), p
    normalized = normalize_punches(parsed.punches, CTX, now=NOW)
    assert len(normalized) == len(parsed.punches)
    if parsed.layout == "text":
        lines = [line for line in LINES.split(data.removeprefix(b"\xef\xbb\xbf")) if line.strip()]
        framing = 0 if parsed.serial is None else 1 + (len(lines) > 1 + len(parsed.punches) + len(parsed.bad))
        if not data.startswith((b"\xff\xfe", b"\xfe\xff")):
            assert len(parsed.punches) + len(parsed.bad) + framing == len(lines)
        for bad in parsed.bad:
            assert bad.reason and bad.line >= 1
    return parsed


@pytest.mark.timeout(180)
@FUZZ
@given(st.binary(max_size=600))
def test_random_bytes_parse_or_are_refused_with_export_error(data: bytes) -> None:
    _check(data)


_FIELD = st.one_of(
    st.sampled_from(["1", "        42", "0", "-1", "99999999999999", "NIP199001012020", "", " ", "\x00", "é",
                     "2026-11-02", "07:58:03", "2026-11-02 07:58:03", "2026-02-31 25:61:61", "2026-11-02T07:58",
                     "0000-00-00 00:00:00", "2099-12-31 23:59:59", "1\t2", "\x1b[0m", "USBTEST0001"]),
    st.text(max_size=12),
    st.integers(-10**13, 10**13).map(str),
)
_LINE = st.lists(_FIELD, max_size=11).flatmap(
    lambda fields: st.sampled_from(["\t", " ", "  \t "]).map(lambda sep: sep.join(fields)))


@pytest.mark.timeout(180)
@FUZZ
@given(st.lists(_LINE, max_size=25), st.sampled_from(["\r\n", "\n", "\r"]), st.sampled_from(["utf-8", "latin-1"]))
def test_attlog_shaped_text_parses_or_is_refused(lines: list[str], newline: str, encoding: str) -> None:
    data = newline.join(lines).encode(encoding, errors="replace")
    _check(data)


@st.composite
def _mutated_sample(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SAMPLES)))
    for _ in range(draw(st.integers(1, 8))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        pos = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[pos] = draw(st.integers(0, 255))
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=6))
        elif op == "delete" and data:
            del data[pos:pos + draw(st.integers(1, 6))]
        elif op == "truncate":
            del data[pos:]
    return bytes(data)


@pytest.mark.timeout(180)
@FUZZ
@given(_mutated_sample())
def test_damaged_fixture_files_parse_or_are_refused(data: bytes) -> None:
    _check(data)


@pytest.mark.timeout(180)
@FUZZ
@given(st.text(max_size=80))
def test_any_file_name_gives_a_hint_without_error(name: str) -> None:
    hint = name_hint(name)
    assert hint.serial is None or hint.machine is None


_DIGITS = st.integers(0, 10**9 - 1).map(str)


@pytest.mark.timeout(180)
@FUZZ
@given(st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=64),
       st.integers(0, 9999), st.integers(0, 99), st.integers(0, 99), st.integers(0, 99), st.integers(0, 99),
       st.integers(0, 99), st.integers(0, 999999), _DIGITS, _DIGITS, _DIGITS, st.integers(0, 12))
def test_the_fast_path_reads_an_sdk_line_exactly_as_the_general_path(
        pin: str, y: int, mo: int, d: int, h: int, mi: int, sec: int, machine: int, state: str, verify: str,
        workcode: str, pad: int) -> None:
    line = (f"{pin:>{pad}}\t{y:04d}-{mo:02d}-{d:02d} {h:02d}:{mi:02d}:{sec:02d}\t{machine}\t{state}\t{verify}"
            f"\t{workcode}").encode()
    m = _SDK_LINE.fullmatch(line)
    assert m is not None
    assert _fast_record(m) == _record(line)

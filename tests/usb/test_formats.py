"""The export parser on the fixture files (tests/usb/fixtures/README.md names their sources) and edge cases."""

from __future__ import annotations

import struct
from datetime import datetime
from pathlib import Path

import pytest

from drivers.zk.records import encode_time
from gateway.usbimport.formats import ExportError, NameHint, name_hint, parse_export
from tests.support.usb import attlog_text

FIXTURES = Path(__file__).parent / "fixtures"


def _read(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def test_sdk_text_export_reads_pin_time_state_verify_and_keeps_log_order() -> None:
    parsed = parse_export(_read("1_attlog.dat"))
    assert parsed.layout == "text" and parsed.serial is None and not parsed.bad
    assert [(p.user_id, p.time_text, p.state, p.verify) for p in parsed.punches] == [
        ("1", "2026-11-02 07:58:03", 0, 1), ("2", "2026-11-02 08:01:44", 0, 1),
        ("15", "2026-11-02 16:02:10", 1, 1), ("1", "2026-11-02 16:05:59", 1, 15)]
    assert parsed.punches[0].local_time == datetime(2026, 11, 2, 7, 58, 3)
    assert parsed.machines == {1}


def test_extended_form_takes_the_serial_from_the_first_line_and_skips_the_checksum_line() -> None:
    parsed = parse_export(_read("extended_attlog.dat"))
    assert parsed.serial == "USBTEST0001"
    assert len(parsed.punches) == 4 and not parsed.bad


def test_lines_with_seven_or_more_fields_are_read_in_the_push_order() -> None:
    parsed = parse_export(_read("push_order_attlog.dat"))
    assert [(p.user_id, p.state, p.verify, p.workcode) for p in parsed.punches] == [("11", 0, 25, 0), ("11", 1, 1, 0)]


def test_unreadable_lines_are_reported_with_their_line_number_and_why() -> None:
    parsed = parse_export(_read("with_bad_lines_attlog.dat"))
    assert [p.time_text for p in parsed.punches] == ["2026-11-04 07:30:00", "2026-02-31 17:00:00",
                                                     "2026-11-04 17:01:02"]
    assert parsed.punches[1].local_time is None  # kept; normalize flags impossible_date
    reasons = {b.line: b.reason for b in parsed.bad}
    assert set(reasons) == {2, 3, 4, 5}
    assert "no seconds" in reasons[3] and "PIN" in reasons[4] and "YYYY-MM-DD" in reasons[5]
    assert parsed.bad[0].raw == "this line is noise from a text editor"


def test_binary_40_byte_dataset_is_decoded_like_the_network_read() -> None:
    parsed = parse_export(_read("binary40_attlog.dat"))
    assert parsed.layout == "binary-40"
    assert [(p.user_id, p.time_text, p.state) for p in parsed.punches] == [
        ("1", "2026-11-05 07:45:12", 0), ("2", "2026-11-05 07:50:00", 0), ("1", "2026-11-05 17:10:09", 1)]


def test_binary_16_byte_records_without_header_are_found_by_evidence() -> None:
    rec = struct.Struct("<IIBB2xI")
    body = b"".join(rec.pack(user, encode_time(datetime(2026, 11, 6, 8, m, 0)), 0, 1, 0) for user, m in
                    [(1001, 1), (1002, 2), (1001, 3)])
    parsed = parse_export(body + b"\x00" * 0)
    assert parsed.layout == "binary-16"
    assert [p.user_id for p in parsed.punches] == ["1001", "1002", "1001"]


def test_times_are_written_as_the_network_poll_writes_them() -> None:
    parsed = parse_export(b"0042\t2026-1-5 8:03:09\t1\t0\t1\t0\r\n0043\t2026/01/05T08:04:10\t1\t0\t1\t0\r\n")
    assert [(p.user_id, p.time_text) for p in parsed.punches] == [("0042", "2026-01-05 08:03:09"),
                                                                  ("0043", "2026-01-05 08:04:10")]


def test_space_separated_and_utf16_and_bom_files_are_read() -> None:
    spaced = parse_export(b"  5 2026-11-07 07:00:01 1 0 1 0\n")
    assert [(p.user_id, p.time_text) for p in spaced.punches] == [("5", "2026-11-07 07:00:01")]
    text = attlog_text([("9", "2026-11-07 07:00:02", 0, 1)]).decode()
    assert len(parse_export(text.encode("utf-16")).punches) == 1
    assert len(parse_export(b"\xef\xbb\xbf" + text.encode()).punches) == 1


def test_a_file_without_any_record_is_refused_as_a_whole() -> None:
    with pytest.raises(ExportError, match="none of the 2 lines"):
        parse_export(b"1\tAlice\t0\r\n2\tBob\t0\r\n")  # a user list, not the attendance log
    with pytest.raises(ExportError, match="no known attendance layout"):
        parse_export(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    assert parse_export(b"").punches == [] and parse_export(b"\r\n \r\n").bad == []


@pytest.mark.parametrize(("name", "hint"), [
    ("1_attlog.dat", NameHint(machine=1)), ("12_attlog.dat", NameHint(machine=12)),
    ("CGKK223862906_attlog.dat", NameHint(serial="CGKK223862906")), ("ABC1234567_ATTLOG.DAT", NameHint("ABC1234567")),
    ("ABC1234567_ssrattlog.dat", NameHint(serial="ABC1234567")), ("attlog.dat", NameHint()),
    ("lobby notes.txt", NameHint()), ("123456789_attlog.dat", NameHint(serial="123456789")),
])
def test_file_names_carry_a_serial_or_a_machine_number(name: str, hint: NameHint) -> None:
    assert name_hint(name) == hint

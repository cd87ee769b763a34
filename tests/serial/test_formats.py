"""drivers.serial.formats: the presets on the sample lines of the fact sheet, custom patterns and templates,
broken clocks kept (never dropped), bad lines rejected with a reason; fuzzing of every parser (hypothesis)."""

from __future__ import annotations

from datetime import date, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.serial.formats import (
    PRESETS,
    DateRecord,
    LineFormatError,
    LineParser,
    ParsedLine,
    Rejected,
    compile_layout,
    configured_format,
    preset,
)


def parse(fmt: str, line: str, **kw: object) -> ParsedLine | DateRecord | Rejected:
    return LineParser(preset(fmt), **kw).parse(line)  # type: ignore[arg-type]


def punch(result: object) -> tuple[str, str, int, int, int]:
    assert isinstance(result, ParsedLine), result
    p = result.punch
    return (p.user_id, p.time_text, p.state, p.verify, p.workcode)


def test_zk_attlog_line_of_the_push_doc() -> None:
    assert punch(parse("zk_attlog", "1452\t2015-07-30 15:16:28\t0\t1\t0\t0\t0")) == \
        ("1452", "2015-07-30 15:16:28", 0, 1, 0)
    assert punch(parse("zk_attlog", "  7\t2015-07-30 15:16:28\t1\t15")) == ("7", "2015-07-30 15:16:28", 1, 15, 0)


def test_giga_tms_line_strips_the_apostrophe_and_maps_the_event_key() -> None:
    r = parse("giga_tms", "2\t30-07-2015\t15:16:28\t'0042\t01\t0003")
    assert punch(r) == ("0042", "2015-07-30 15:16:28", 1, 200, 0)
    assert isinstance(r, ParsedLine) and r.device == "0003"
    assert isinstance(parse("giga_tms", "5\t30-07-2015\t15:16:28\t'0042"), Rejected)


def test_ct101_csv_line_of_the_punch_file_template() -> None:
    r = parse("ct101", "1, 0, 0, 8065, 0, 9, 12, 28, 4, 16, 2013")
    assert punch(r) == ("8065", "2013-04-16 09:12:28", 0, 200, 0)
    assert punch(parse("ct101", "1, 0, 1, 8065, 3, 9, 12, 28, 4, 16, 2013, 1")) == \
        ("8065", "2013-04-16 09:12:28", 1, 1, 3)


def test_acroprint_takes_the_date_from_the_date_change_record() -> None:
    parser = LineParser(preset("acroprint"), now=lambda: datetime(2024, 5, 2, 8, 0))
    assert punch(parser.parse("073000,1,4711,2,0,0,0,0,0")) == ("4711", "2024-05-02 07:30:00", 2, 200, 0)
    assert parser.parse("000000,1,20240501,D") == DateRecord(date(2024, 5, 1))
    assert punch(parser.parse("235959,1,4711,1,0,0,0,0,0")) == ("4711", "2024-05-01 23:59:59", 1, 200, 0)


def test_acroprint_without_a_date_record_a_late_time_read_after_midnight_is_yesterday() -> None:
    parser = LineParser(preset("acroprint"), now=lambda: datetime(2024, 5, 2, 0, 0, 5))
    assert punch(parser.parse("235958,1,9,0,0,0,0,0,0"))[1] == "2024-05-01 23:59:58"


def test_a_broken_clock_time_is_kept_as_text_without_a_datetime() -> None:
    r = parse("zk_attlog", "1\t2000-02-31 25:00:00\t0\t1")
    assert isinstance(r, ParsedLine) and r.punch.time_text == "2000-02-31 25:00:00" and r.punch.local_time is None


@pytest.mark.parametrize(("line", "why"), [
    ("", "does not match"),
    ("1\t2024-05-01\t0\t1", "does not fit the time format"),
    ("1\t2024-05-01 07:30:00\t0", "does not match"),
    ("1\t2024-05-01 07:30:00\t1234567890\t1", "more than 9 digits"),
    ("\t2024-05-01 07:30:00\t0\t1", "does not match"),
    ("x" * 70 + "\t2024-05-01 07:30:00\t0\t1", "longer than 64"),
])
def test_bad_zk_lines_are_rejected_with_a_reason(line: str, why: str) -> None:
    r = parse("zk_attlog", line)
    assert isinstance(r, Rejected) and why in r.reason


def test_custom_template_and_pattern() -> None:
    fmt = configured_format("custom", template="{user};{datetime};{state}", time_format="%d/%m/%y %H.%M")
    assert punch(LineParser(fmt).parse("77;01/05/24 07.30;1")) == ("77", "2024-05-01 07:30:00", 1, 200, 0)
    fmt = configured_format("custom", pattern=r"^ID(?P<user>\d+) (?P<date>\S+) (?P<time>\S+)$",
                            time_format="%Y%m%d %H%M%S")
    assert punch(LineParser(fmt).parse("ID5 20240501 073000")) == ("5", "2024-05-01 07:30:00", 0, 200, 0)


@pytest.mark.parametrize(("kw", "why"), [
    ({"name": "nope"}, "unknown line format"),
    ({"name": "zk_attlog", "time_format": "%Y"}, "preset"),
    ({"name": "custom"}, "exactly one of"),
    ({"name": "custom", "pattern": "(", "time_format": "%Y"}, "not a valid regular expression"),
    ({"name": "custom", "pattern": r"(?P<pin>\d+)"}, "unknown group"),
    ({"name": "custom", "pattern": r"(?P<datetime>.+)"}, "(?P<user>"),
    ({"name": "custom", "pattern": r"(?P<user>\d+)"}, "needs the time"),
    ({"name": "custom", "template": "{user} {datetime}", "time_format": "%H:%M"}, "must give %Y"),
    ({"name": "custom", "template": "{user} {datetime}", "time_format": "%Y-%m-%d %H:%M %q"}, "%q"),
    ({"name": "custom", "template": "{user} {when}", "time_format": "%Y"}, "{when}"),
    ({"name": "custom", "template": "{user} {user}", "time_format": "%Y"}, "twice"),
])
def test_unusable_formats_are_refused_with_one_line(kw: dict[str, str], why: str) -> None:
    name = kw.pop("name")
    with pytest.raises(LineFormatError) as err:
        configured_format(name, **kw)
    assert why in str(err.value)


def test_layout_regex_is_anchored() -> None:
    assert compile_layout("%H:%M").match("07:30 trailing") is None


# -- fuzzing: any text into every parser: a punch, a date record or a reason; never an exception ----------

_TEXT = st.text(st.characters(codec="latin-1", exclude_characters="\r\n"), max_size=120)
_FIELDISH = st.lists(st.one_of(st.from_regex(r"\d{1,6}", fullmatch=True), st.sampled_from(
    ["2024-05-01 07:30:00", "30-07-2015", "15:16:28", "'0042", "D", "20240501", "2000-02-31 99:99:99", "", " "]),
    _TEXT), max_size=12)


@settings(max_examples=3000, deadline=None)
@given(st.sampled_from(sorted(PRESETS)), st.one_of(_TEXT, st.tuples(_FIELDISH, st.sampled_from(["\t", ",", ", "]))
                                                   .map(lambda t: t[1].join(t[0]))))
def test_fuzz_presets_classify_every_line(name: str, line: str) -> None:
    result = LineParser(preset(name), now=lambda: datetime(2024, 5, 1, 12, 0)).parse(line)
    assert isinstance(result, ParsedLine | DateRecord | Rejected)
    if isinstance(result, ParsedLine):
        p = result.punch
        assert p.user_id and len(p.user_id) <= 64
        assert len(p.time_text) == 19 and (p.local_time is None or p.local_time.strftime("%Y-%m-%d %H:%M:%S")
                                           == p.time_text)
        assert all(0 <= v < 10**9 for v in (p.state, p.verify, p.workcode))
    elif isinstance(result, Rejected):
        assert result.reason


@settings(max_examples=1500, deadline=None)
@given(st.text(st.sampled_from("{}%*userdatimesYmdHMS :/-.;\\t"), max_size=40),
       st.text(st.sampled_from("%YymdHMS :/-."), max_size=20), _TEXT)
def test_fuzz_custom_formats_are_refused_or_parse_without_exceptions(template: str, layout: str, line: str) -> None:
    try:
        fmt = configured_format("custom", template=template or "{user}", time_format=layout)
    except LineFormatError as exc:
        assert str(exc)
        return
    assert isinstance(LineParser(fmt).parse(line), ParsedLine | DateRecord | Rejected)


@settings(max_examples=1500, deadline=None)
@given(st.sampled_from(sorted(PRESETS)),
       st.lists(st.one_of(st.binary(max_size=80),
                          st.sampled_from([b"1452\t2015-07-30 15:16:28\t0\t1\t0\t0\t0\r\n", b"000000,1,20240501,D\n",
                                           b"2\t30-07-2015\t15:16:28\t'0042\t01\t0003\r", b"\x00\xff",
                                           b"1, 0, 0, 8065, 0, 9, 12, 28, 4, 16, 2013\r\n"])), max_size=20))
def test_fuzz_framer_then_parser_classifies_every_line_of_any_stream(name: str, chunks: list[bytes]) -> None:
    from drivers.serial.framing import LineFramer

    framer = LineFramer()
    parser = LineParser(preset(name), now=lambda: datetime(2024, 5, 1, 12, 0))
    lines = [x for c in chunks for x in framer.feed(c)]
    tail = framer.flush("cut off")
    for framed in [*lines, *([tail] if tail else [])]:
        if framed.problem is None:
            assert isinstance(parser.parse(framed.text), ParsedLine | DateRecord | Rejected)
        else:
            assert framed.raw

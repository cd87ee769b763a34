"""Property-based fuzzing of the SOAP answer parser: whatever bytes a terminal sends, the driver's parsing
raises only DriverError subclasses (ProtocolError, AuthRejected) and never loses a well-formed row.

About 3,000 generated answers in total (hypothesis, derandomized so a failure reproduces).
"""

from __future__ import annotations

from datetime import datetime

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drivers.base import DriverError, RawPunch
from drivers.soap import codec
from drivers.soap.transport import split_raw_answer

FUZZ = settings(max_examples=1000, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])

_TAGS = ["PIN", "DateTime", "Verified", "Status", "WorkCode", "Row", "GetAttLogResponse", "Result", "Information",
         "Date", "Time", "Value", "Name", "PIN2", "x:Row", "SOAP-ENV:Body", "faultstring"]
_PIECES = st.one_of(
    st.sampled_from(_TAGS).map(lambda t: f"<{t}>"),
    st.sampled_from(_TAGS).map(lambda t: f"</{t}>"),
    st.sampled_from(["\r\n", "\n", " ", "<", ">", "&", "&amp;", "&#99999999;", "&#x110000;", "/>", "=", '"',
                     "<?xml version=\"1.0\" encoding=\"iso8859-1\"?>", "<?xml encoding='klingon'?>",
                     "2024-02-31 25:61:61", "2024-05-01 07:30:00", "-2147483649", "99999999999", "All"]),
    st.text(max_size=12),
)


def _classify(text: str) -> None:
    """Everything the driver does with one answer's text: parse, punch rows, users, the clock, options."""
    for method in ("GetAttLog", "GetAllUserInfo", "GetDate", "GetOption", "ClearData"):
        try:
            answer = codec.parse_answer(text, method)
        except DriverError:
            continue
        for row in answer.rows:
            got = codec.punch_from_row(row)
            assert isinstance(got, (RawPunch, str))
            if isinstance(got, RawPunch):
                assert got.user_id and len(got.user_id) <= codec.PIN_MAX
                assert len(got.time_text) == 19
                assert got.local_time is None or isinstance(got.local_time, datetime)
                assert all(-(2 ** 31) <= v < 2 ** 31 for v in (got.state, got.verify, got.workcode))
            codec.user_from_row(row, by_pin2=True)
        answer.result()
        codec.option_value(answer, "~SerialNumber")
        try:
            codec.clock_from_answer(answer)
        except DriverError:
            pass


@FUZZ
@given(st.lists(_PIECES, max_size=60).map("".join))
def test_assembled_answers_raise_only_driver_errors(text: str) -> None:
    _classify(text)
    _classify(f"<GetAttLogResponse>{text}</GetAttLogResponse>")


@FUZZ
@given(st.binary(max_size=400), st.sampled_from([None, "utf-8", "iso-8859-1", "cp1252"]))
def test_random_bytes_decode_and_parse_without_surprises(data: bytes, encoding: str | None) -> None:
    _classify(codec.decode_body(data, encoding))
    try:
        body = split_raw_answer(data, "GetAttLog", 1 << 20)
    except DriverError:
        return
    _classify(codec.decode_body(body))


_ROW_VALUES = st.fixed_dictionaries({
    "PIN": st.from_regex(r"[0-9A-Za-z]{1,20}", fullmatch=True),
    "DateTime": st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2099, 12, 31)).map(
        lambda d: d.strftime("%Y-%m-%d %H:%M:%S")),
    "Verified": st.integers(0, 255).map(str), "Status": st.integers(0, 255).map(str),
    "WorkCode": st.one_of(st.none(), st.integers(0, 999999).map(str)),
})


@FUZZ
@given(st.lists(_ROW_VALUES, max_size=25), st.sampled_from(["\r\n", "\n", ""]),
       st.lists(st.sampled_from(["", " xsi:type=\"xsd:integer\"", " a=\\\"b\\\""]), min_size=1, max_size=1))
def test_well_formed_rows_all_come_back_in_order(rows: list[dict[str, str | None]], sep: str,
                                                 attr: list[str]) -> None:
    parts = []
    for r in rows:
        fields = "".join(f"<{k}{attr[0]}>{v}</{k}>" for k, v in r.items() if v is not None)
        parts.append(f"<Row>{fields}</Row>{sep}")
    text = f'<?xml version="1.0" encoding="iso8859-1" standalone="no"?>\r\n<GetAttLogResponse>{sep}' \
           f'{"".join(parts)}</GetAttLogResponse>'
    answer = codec.parse_answer(codec.decode_body(text.encode("iso-8859-1")), "GetAttLog")
    punches = [codec.punch_from_row(row) for row in answer.rows]
    assert all(isinstance(p, RawPunch) for p in punches)
    assert [(p.user_id, p.time_text, p.workcode) for p in punches if isinstance(p, RawPunch)] == \
        [(r["PIN"], r["DateTime"], int(r["WorkCode"] or 0)) for r in rows]

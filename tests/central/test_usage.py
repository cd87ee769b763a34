"""Usage figures (gateway.central.usage over gateway.store.usage) on a hand-built regency with known answers,
on SQLite and PostgreSQL; the headcount CSV rules; properties of the shares."""

from __future__ import annotations

from datetime import UTC, date, datetime, time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.central.usage import (
    UNUSED_PUNCHES_PER_DAY,
    Figures,
    HeadcountFileError,
    WorkRules,
    collect,
    compute,
    month_range,
    parse_headcount_csv,
    working_days,
)
from gateway.store.usage import UNDATED, EmployeeDays, Headcount, OfficeDay, TerminalDay, UsageRepo
from tests.support.central import OFFICE_A, OFFICE_B, Central, device_doc, make_central, punch
from tests.support.regency import known_since

pytestmark = pytest.mark.timeout(120)

#: The report's "now": after the week below (the figures never depend on the wall clock).
NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
WEEK = (date(2026, 11, 2), date(2026, 11, 6))  # Monday .. Friday


def ingest_health(c: Central, token: str, *devices: dict[str, Any]) -> None:
    r = c.client.post("/api/v1/ingest/health", json={"devices": list(devices)},
                      headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200, r.text


def build_week(c: Central) -> None:
    """Office A: 3 employees, one terminal used a little and one never; office B: 2 employees every day, its
    terminal offline since Thursday. Wednesday is a holiday."""
    a = [punch("1", "2026-11-02 07:30:00"), punch("1", "2026-11-02 16:30:00"),   # Mon: full day
         punch("2", "2026-11-02 07:45:00"),                                       # Mon: arrival only
         punch("3", "2026-11-02 16:00:00"),                                       # Mon: leave only
         punch("1", "2026-11-03 07:30:00"), punch("1", "2026-11-03 07:31:00"),   # Tue: double punch ...
         punch("1", "2026-11-03 16:30:00"),                                       # ... and a leave: full day
         punch("1", "2026-11-04 07:30:00"), punch("1", "2026-11-04 16:30:00"),   # Wed: holiday
         punch("2", "2026-11-07 08:00:00"),                                       # Sat: not a working day
         punch("4", "2026-11-05 07:00:00", flags=["future"])]                     # untrusted time
    r = c.ingest(a, token=c.gw_a, batch_id="a1")
    assert r.status_code == 200 and r.json()["new"] == len(a), r.text
    b = [punch(u, f"2026-11-0{d} {t}", serial="SN3", device="gate", office_code=OFFICE_B)
         for d in (2, 3, 5, 6) for u in ("10", "11") for t in ("07:00:00", "16:00:00")]
    r = c.ingest(b, token=c.gw_b, batch_id="b1")
    assert r.status_code == 200 and r.json()["new"] == len(b), r.text
    ingest_health(c, c.gw_a, device_doc("lobby", serial="SN1"), device_doc("hall", serial="SN2"))
    ingest_health(c, c.gw_b, device_doc("gate", serial="SN3", health={
        "state": "offline", "state_since": "2026-11-05T00:00:00Z", "consecutive_failures": 40, "problems": {}}))
    known_since(c.engine, datetime(2026, 10, 1, tzinfo=UTC))
    repo = UsageRepo(c.engine)
    repo.save_holidays([(date(2026, 11, 4), "Libur contoh")])
    repo.save_headcounts([Headcount(OFFICE_A, UNDATED, 4, "test")])


@pytest.fixture
def central(db_url: str, tmp_path: Path) -> Central:
    c = make_central(db_url, tmp_path)
    yield c
    c.client.close()
    c.engine.dispose()


def test_usage_figures_of_a_hand_built_week(central: Central) -> None:
    build_week(central)
    fig = collect(central.engine, *WEEK, WorkRules(), now=NOW)
    assert fig.working_days == [date(2026, 11, 2), date(2026, 11, 3), date(2026, 11, 5), date(2026, 11, 6)]
    offices = {o.office_code: o for o in fig.offices}
    a, b = offices[OFFICE_A].usage, offices[OFFICE_B].usage
    # A: Mon 3 employees (1 full day), Tue 1 (full); basis = the uploaded headcount 4.
    assert (a.employee_days, a.full_days, a.employees_seen, a.headcount, a.basis, a.basis_source) == \
        (4, 2, 3, 4, 4, "headcount")
    assert a.attendance_rate == pytest.approx(4 / 16) and a.full_day_share == pytest.approx(2 / 16)
    assert a.days_without_punches == 2 and a.punches == 7
    # B: no headcount, the 2 employees seen punch both ways on every working day.
    assert (b.employee_days, b.full_days, b.basis, b.basis_source) == (8, 8, 2, "seen")
    assert b.attendance_rate == 1.0 and b.full_day_share == 1.0
    shares = {(e.office_code, e.employee): e.full_day_share for e in fig.employees}
    assert shares == {(OFFICE_A, "NIP1"): 0.5, (OFFICE_A, "NIP2"): 0.0, (OFFICE_A, "NIP3"): 0.0,
                      (OFFICE_B, "NIP10"): 1.0, (OFFICE_B, "NIP11"): 1.0}
    terms = {t.device_id: t for t in fig.terminals}
    assert (terms["lobby"].punches, terms["lobby"].days_with_punches, terms["lobby"].max_employees_per_day) == (7, 2, 3)
    assert terms["lobby"].punches_per_day == 7 / 4 < UNUSED_PUNCHES_PER_DAY and terms["lobby"].unused
    assert terms["hall"].punches == 0 and terms["hall"].unused and not terms["hall"].broken
    gate = terms["gate"]
    assert not gate.unused and gate.broken
    # Offline since Thu 00:00 UTC until the end of Friday in Jakarta (Fri 17:00 UTC): 41 hours of the week.
    assert gate.down_s == 41 * 3600 and gate.period_s == 5 * 86400
    assert gate.availability == pytest.approx(1 - 41 / 120)
    assert terms["lobby"].availability == 1.0
    # Ranked by the mean of availability and attendance rate: B (0.83) before A (0.625).
    assert [o.office_code for o in fig.offices] == [OFFICE_B, OFFICE_A]
    assert fig.never_fixed == []  # nothing open since before the period
    weekly = fig.weekly_rate()
    assert list(weekly) == [date(2026, 11, 2)]
    assert weekly[date(2026, 11, 2)] == pytest.approx((4 + 8) / (4 * 4 + 2 * 4))


def test_a_duplicate_punch_resent_changes_no_figure(central: Central) -> None:
    build_week(central)
    before = collect(central.engine, *WEEK, WorkRules(), now=NOW)
    # The same punch again (another batch, resent by the gateway) and a second punch in the same minute.
    central.ingest([punch("1", "2026-11-02 07:30:00"), punch("2", "2026-11-02 07:45:30")], token=central.gw_a,
                   batch_id="again")
    after = collect(central.engine, *WEEK, WorkRules(), now=NOW)
    a0, a1 = (next(o.usage for o in f.offices if o.office_code == OFFICE_A) for f in (before, after))
    assert (a1.employee_days, a1.full_days, a1.employees_seen) == (a0.employee_days, a0.full_days, a0.employees_seen)
    assert a1.punches == a0.punches + 1  # only the new punch is counted


def test_one_office_scope_and_a_headcount_dated_later_does_not_count_yet(central: Central) -> None:
    build_week(central)
    UsageRepo(central.engine).save_headcounts([Headcount(OFFICE_A, date(2026, 12, 1), 10, "later")])
    fig = collect(central.engine, *WEEK, WorkRules(), office=OFFICE_A, now=NOW)
    assert [o.office_code for o in fig.offices] == [OFFICE_A]
    assert {t.office_code for t in fig.terminals} == {OFFICE_A}
    assert {e.office_code for e in fig.employees} == {OFFICE_A}
    assert fig.offices[0].usage.headcount == 4
    fig = collect(central.engine, date(2026, 12, 1), date(2026, 12, 4), WorkRules(), office=OFFICE_A,
                  now=datetime(2026, 12, 5, tzinfo=UTC))
    assert fig.offices[0].usage.headcount == 10


def test_a_problem_open_since_before_the_month_is_never_fixed(central: Central) -> None:
    ingest_health(central, central.gw_a, device_doc("lobby", serial="SN1", health={
        "state": "online", "state_since": "2026-10-01T00:00:00Z", "problems": {
            "clock_skew": {"severity": "warning", "since": "2026-10-15T00:00:00Z", "detail": "12 min"},
            "storage": {"severity": "warning", "since": "2026-11-20T00:00:00Z", "detail": "91%"}}}),
        device_doc("dead", serial="SN9", health={"state": "unknown", "state_since": "2026-09-01T00:00:00Z"}))
    known_since(central.engine, datetime(2026, 9, 1, tzinfo=UTC))
    fig = collect(central.engine, *month_range("2026-11"), WorkRules(), now=datetime(2026, 12, 2, tzinfo=UTC))
    assert [(p.device_id, p.problem) for p in fig.never_fixed] == [("dead", "never_answered"),
                                                                   ("lobby", "clock_skew")]
    dead = next(t for t in fig.terminals if t.device_id == "dead")
    assert dead.availability == 0.0 and dead.down_s == dead.period_s == 30 * 86400


def test_a_month_without_data_is_empty_not_an_error(central: Central) -> None:
    fig = collect(central.engine, *month_range("2026-11"), WorkRules(), now=NOW)
    assert fig.empty and fig.offices == [] and fig.never_fixed == []
    # Terminals and gateways first heard of after a month say nothing about it.
    build_week(central)
    known_since(central.engine, datetime(2026, 10, 1, tzinfo=UTC))
    before = collect(central.engine, *month_range("2026-09"), WorkRules(), now=NOW)
    assert before.empty and before.terminals == []
    future = collect(central.engine, *month_range("2027-03"), WorkRules(), now=NOW)
    assert future.working_days == [] and future.empty


def test_working_days_skip_weekends_holidays_and_configured_days() -> None:
    first, last = month_range("2026-11")
    assert (first, last) == (date(2026, 11, 1), date(2026, 11, 30))
    assert len(working_days(first, last, WorkRules())) == 21
    assert len(working_days(first, last, WorkRules(), {date(2026, 11, 2), date(2026, 11, 7)})) == 20
    six = WorkRules(workdays=(1, 2, 3, 4, 5, 6))
    assert len(working_days(first, last, six)) == 25
    assert WorkRules().midday == time(12, 0)
    assert WorkRules(day_start=time(7, 0), day_end=time(15, 0)).midday == time(11, 0)
    for bad in ("2026-13", "2026-1", "november", "2026-11-01", ""):
        with pytest.raises(ValueError):
            month_range(bad)


# -- headcount CSV --------------------------------------------------------------------------------------

def test_headcount_csv_accepts_comma_or_semicolon_bom_and_optional_as_of() -> None:
    rows = parse_headcount_csv("\ufeffoffice_code,employees,as_of\r\n1801.01,42,2026-11-01\r\n1801.02,7,\r\n"
                               .encode(), "hc.csv")
    assert rows == [Headcount("1801.01", date(2026, 11, 1), 42, "hc.csv:2"),
                    Headcount("1801.02", UNDATED, 7, "hc.csv:3")]
    rows = parse_headcount_csv(b"employees;office_code\n12;1801.05\n\n", "x")
    assert rows == [Headcount("1801.05", UNDATED, 12, "x:2")]


@pytest.mark.parametrize(("text", "expected"), [
    ("", "empty file"),
    ("office,count\n1801.01,3\n", "line 1: the header must be office_code,employees[,as_of]; missing office_code, "
                                  "employees; unknown column 'office', 'count'"),
    ("office_code,employees\n1801.01,-3\n", "line 2: employees '-3' is not a whole number"),
    ("office_code,employees\n1801.01,tiga\n", "line 2: employees 'tiga' is not a whole number"),
    ("office_code,employees\n1801.01,3,4\n", "line 2: 3 columns, the header has 2"),
    ("office_code,employees,as_of\n1801.01,3,2026-02-30\n", "line 2: as_of '2026-02-30' is not a date"),
    ("office_code,employees\n,3\n", "line 2: office_code '' is not an office code"),
    ("office_code,employees\n1801.01,3\n1801.01,4\n", "line 3: office 1801.01 without as_of is already on line 2"),
    ("office_code,employees\n1801.01,999999999\n", "line 2: employees 999999999 is more than 100000"),
    ("office_code,employees\n", "no data line after the header"),
])
def test_headcount_csv_errors_name_the_line_and_import_nothing(text: str, expected: str) -> None:
    with pytest.raises(HeadcountFileError) as err:
        parse_headcount_csv(text.encode())
    assert any(p.startswith(expected) for p in err.value.problems), err.value.problems


def test_headcount_csv_reports_every_bad_line_at_once() -> None:
    with pytest.raises(HeadcountFileError) as err:
        parse_headcount_csv(b"office_code,employees\nA,1\nB,x\nC,2\nD,y\n")
    assert [p.split(":")[0] for p in err.value.problems] == ["line 3", "line 5"]
    with pytest.raises(HeadcountFileError, match="not UTF-8"):
        parse_headcount_csv(b"office_code,employees\n\xff\xfe,1\n")


def test_headcount_import_replaces_the_same_office_and_date(sqlite_url: str) -> None:
    from gateway.store.db import create_db_engine, upgrade

    engine = create_db_engine(sqlite_url)
    try:
        upgrade(engine)
        repo = UsageRepo(engine)
        repo.save_headcounts(parse_headcount_csv(b"office_code,employees,as_of\nA,5,2026-10-01\nA,6,2026-11-15\n"))
        repo.save_headcounts(parse_headcount_csv(b"office_code,employees,as_of\nA,7,2026-11-15\n"))
        assert [(h.as_of, h.employees) for h in repo.headcounts()] == [(date(2026, 10, 1), 5), (date(2026, 11, 15), 7)]
        assert repo.headcounts_at(date(2026, 11, 14))["A"].employees == 5
        assert repo.headcounts_at(date(2026, 11, 30))["A"].employees == 7
        assert repo.headcounts_at(date(2026, 9, 30)) == {}
    finally:
        engine.dispose()


# -- properties -----------------------------------------------------------------------------------------

DAYS = [date(2026, 11, d) for d in (2, 3, 4, 5, 6)]
day_rows = st.lists(st.tuples(st.sampled_from(["A", "B"]), st.sampled_from(DAYS), st.integers(0, 50),
                              st.integers(0, 50), st.integers(0, 200)), max_size=12)


def _figures(rows: list[tuple[str, date, int, int, int]], headcount: int | None) -> Figures:
    # The SQL never gives full_days > employees or two rows for one office and day: keep the input honest.
    seen: dict[tuple[str, date], OfficeDay] = {}
    for office, day, n, full, punches in rows:
        seen[(office, day)] = OfficeDay(office, day, n, min(full, n), punches)
    peak = {o: max((r.employees for r in seen.values() if r.office_code == o), default=0) for o in ("A", "B")}
    employees = [EmployeeDays(o, f"e{i}", 1, 0) for o in ("A", "B") for i in range(peak[o])]
    terminals = [TerminalDay(r.office_code, "t1", r.day, r.punches, r.employees) for r in seen.values()]
    return compute(start=DAYS[0], end=DAYS[-1], counted_until=DAYS[-1], rules=WorkRules(), days=DAYS, holidays={},
                   office_days=list(seen.values()), employee_days=employees, terminal_days=terminals,
                   headcounts={"A": Headcount("A", UNDATED, headcount)} if headcount is not None else {},
                   devices=[], gateways=[], period=(datetime(2026, 11, 1, 17, tzinfo=UTC), NOW), now=NOW)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(day_rows, st.one_of(st.none(), st.integers(0, 60)))
def test_rates_and_shares_stay_within_0_and_1(rows: list[tuple[str, date, int, int, int]],
                                              headcount: int | None) -> None:
    fig = _figures(rows, headcount)
    for o in fig.offices:
        for value in (o.usage.attendance_rate, o.usage.full_day_share, o.availability, o.score,
                      *o.usage.weekly_rate().values()):
            assert value is None or 0.0 <= value <= 1.0
        if o.usage.full_day_share is not None:
            assert o.usage.full_day_share <= o.usage.attendance_rate  # type: ignore[operator]
        assert 0 <= o.usage.days_without_punches <= o.usage.working_days
    for value in fig.weekly_rate().values():
        assert value is None or 0.0 <= value <= 1.0
    assert [o.rank for o in fig.offices] == list(range(1, len(fig.offices) + 1))


# -- the one-query fold against a brute force over the punches ------------------------------------------

punch_specs = st.lists(st.tuples(st.sampled_from(["A", "B"]), st.sampled_from(["t1", "t2"]), st.sampled_from(DAYS),
                                 st.sampled_from(["1", "2", "3"]),
                                 st.sampled_from([359, 420, 719, 720, 721, 960, 1079])),
                       min_size=1, max_size=25)


@pytest.fixture(scope="module")
def fold_engine(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from gateway.store.db import create_db_engine, upgrade

    engine = create_db_engine(f"sqlite:///{tmp_path_factory.mktemp('fold') / 'fold.db'}")
    upgrade(engine)
    yield engine
    engine.dispose()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(punch_specs, st.booleans())
def test_the_one_query_fold_equals_a_brute_force_and_ignores_a_repeated_punch(fold_engine: Any,
                                                                               specs: list[Any], repeat: bool) -> None:
    from sqlalchemy import delete

    from gateway.store import schema as s
    from gateway.store.central import CentralStore
    from tests.support.punches import make_punch

    unique = {(o, dev, d, u, minute) for o, dev, d, u, minute in specs}
    punches = [make_punch(u, datetime.combine(d, time(minute // 60, minute % 60)), office_code=o, device_id=dev,
                          serial=f"SN-{o}-{dev}", employee_id=f"NIP{u}") for o, dev, d, u, minute in sorted(unique)]
    with fold_engine.begin() as conn:
        conn.execute(delete(s.punches))
        conn.execute(delete(s.ingest_batches))  # batch ids repeat between examples
    store = CentralStore(fold_engine)
    for office in ("A", "B"):
        mine = [p for p in punches if p.office_code == office]
        batches = [mine, mine[:1]] if repeat else [mine]  # a resent punch is stored once
        for i, batch in enumerate(batches):
            store.ingest_punches(gateway=f"g{office}", office_code=office, batch_id=f"{office}{i}{len(specs)}",
                                 digest=str(i), punches=batch, rejected={})
    got = UsageRepo(fold_engine).aggregates(DAYS, midday=time(12, 0))
    # Brute force over the distinct punches.
    clocks: dict[tuple[str, date, str], list[int]] = {}
    per_terminal: dict[tuple[str, str, date], set[str]] = {}
    count_terminal: dict[tuple[str, str, date], int] = {}
    for o, dev, d, u, minute in unique:
        clocks.setdefault((o, d, u), []).append(minute)
        per_terminal.setdefault((o, dev, d), set()).add(u)
        count_terminal[(o, dev, d)] = count_terminal.get((o, dev, d), 0) + 1
    full = {k: min(v) < 12 * 60 <= max(v) for k, v in clocks.items()}
    want_office = {}
    for (o, d, _u), f in full.items():
        n, k = want_office.get((o, d), (0, 0))
        want_office[(o, d)] = (n + 1, k + int(f))
    assert {(r.office_code, r.day): (r.employees, r.full_days) for r in got.office_days} == want_office
    assert {(r.office_code, r.device_id, r.day): (r.punches, r.employees) for r in got.terminal_days} == \
        {k: (count_terminal[k], len(v)) for k, v in per_terminal.items()}
    want_employee: dict[tuple[str, str], tuple[int, int]] = {}
    for (o, _d, u), f in full.items():
        n, k = want_employee.get((o, f"NIP{u}"), (0, 0))
        want_employee[(o, f"NIP{u}")] = (n + 1, k + int(f))
    assert {(r.office_code, r.employee): (r.days_punched, r.full_days) for r in got.employee_days} == want_employee
    assert sum(r.punches for r in got.office_days) == len(unique)


def test_down_time_comes_from_the_state_history_where_the_central_keeps_one(central: Central) -> None:
    from gateway.store import schema as s

    build_week(central)
    before = {t.device_id: t.down_s for t in collect(central.engine, *WEEK, WorkRules(), now=NOW).terminals}
    assert before["lobby"] == 0.0
    # The history the central records as health reports arrive (gateway.store.device_events).
    events = s.device_events
    with central.engine.begin() as conn:
        conn.execute(events.insert().values(recorded_at=NOW), [
            {"office_code": OFFICE_A, "device_id": "lobby", "at": datetime(2026, 10, 1, tzinfo=UTC), "kind": "state",
             "name": "online"},
            {"office_code": OFFICE_A, "device_id": "lobby", "at": datetime(2026, 11, 3, 1, tzinfo=UTC),
             "kind": "state", "name": "offline"},
            {"office_code": OFFICE_A, "device_id": "lobby", "at": datetime(2026, 11, 3, 5, tzinfo=UTC),
             "kind": "problem_start", "name": "clock_skew"},
            {"office_code": OFFICE_A, "device_id": "lobby", "at": datetime(2026, 11, 3, 5, 30, tzinfo=UTC),
             "kind": "state", "name": "online"},
            {"office_code": OFFICE_B, "device_id": "other", "at": datetime(2026, 11, 2, tzinfo=UTC), "kind": "state",
             "name": "offline"}])
    terms = {t.device_id: t for t in collect(central.engine, *WEEK, WorkRules(), now=NOW).terminals}
    # Offline 01:00-05:30 UTC on Tuesday although the last report says online; gate has no history: its open
    # outage from the snapshot as before.
    assert terms["lobby"].down_s == 4.5 * 3600 and terms["lobby"].broken and terms["lobby"].state == "online"
    assert terms["gate"].down_s == before["gate"] == 41 * 3600

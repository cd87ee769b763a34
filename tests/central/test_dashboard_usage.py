"""The dashboard's usage part (SQLite and PostgreSQL): attendance per office, punches per terminal, the
"installed but unused" flag and the weekly trend chart, all read from the snapshot that
gateway.central.dashboard.UsageFigures computes off the request path (refreshed here by the test, never by a
timer), and scoped like the rest of the dashboard.

Office A: terminal "lobi" where 3 employees arrive and leave on every working day before today, terminal "gudang"
online without a punch (unused). Office B: terminal "depan" offline without punches (broken, not "unused").
Office C: terminal "aula" used, but its gateway is silent (its terminals' state is not known: not "unused").
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, cast
from zoneinfo import ZoneInfo

import pytest
from structlog.testing import capture_logs

from gateway.central.dashboard import UsageFigures
from gateway.central.service import UsageRefresh
from gateway.central.usage import WorkRules
from tests.support.central import punch
from tests.support.dashboard import Regency, login, make_regency, terminal

pytestmark = pytest.mark.timeout(90)
A, B, C = "1801.01", "1801.02", "1801.03"
WIB = ZoneInfo("Asia/Jakarta")


def _days_before_today(n: int) -> list[date]:
    """The last n Monday-Friday days before today (office time)."""
    day, out = datetime.now(WIB).date(), []
    while len(out) < n:
        day -= timedelta(days=1)
        if day.isoweekday() <= 5:
            out.append(day)
    return sorted(out)


def _day_punches(office: str, device: str, days: list[date], employees: list[str]) -> list[dict[str, Any]]:
    return [punch(u, f"{d} {t}", serial=f"SN-{device}-{office}", device=device, office_code=office,
                  employee_id=f"NIP{office}{u}", state=0 if t < "12" else 1)
            for d in days for u in employees for t in ("07:30:00", "16:30:00")]


@pytest.fixture
def regency(db_url: str, tmp_path: Path) -> Iterator[Regency]:
    r = make_regency(db_url, tmp_path, [A, B, C])
    days = _days_before_today(12)
    with r.client() as c:
        r.report_health(c, A, [terminal("lobi"), terminal("gudang")], office_name="Dinas Pendidikan")
        r.report_health(c, B, [terminal("depan", "offline", {
            "offline": {"severity": "critical", "since": "2026-11-30T02:00:00Z", "detail": "no answer"}})],
            office_name="Dinas Kesehatan")
        r.report_health(c, C, [terminal("aula")], office_name="Inspektorat")
        r.ingest_punches(c, A, _day_punches(A, "lobi", days, ["1", "2", "3"]))
        r.ingest_punches(c, C, _day_punches(C, "aula", days, ["1", "2"]))
    r.silence(C)
    r.add_account("bkd", None)
    r.add_account("tu-a", A)
    try:
        yield r
    finally:
        r.engine.dispose()


def _flags(page: str) -> dict[str, str]:
    return dict(re.findall(r'<tr class="term" id="t-([^"]+)" data-state="[a-z]+" data-unused="(\d)"', page))


def test_before_the_first_computation_the_page_says_the_figures_are_being_prepared(regency: Regency) -> None:
    with regency.client() as c:
        login(c, "bkd")
        page = c.get("/").text
        assert 'id="usage-at" data-ready="0"' in page and "being prepared" in page
        assert 'id="n-unused"' not in page and set(_flags(page).values()) == {"0"}
        assert c.get(f"/usage/{A}.svg").status_code == 404


def test_dashboard_shows_attendance_unused_terminals_and_the_trend_of_the_snapshot(regency: Regency) -> None:
    snapshot = regency.dashboard.usage.refresh()
    assert snapshot.working_days > 0
    with regency.client() as c:
        login(c, "bkd")
        page = c.get("/").text
        assert 'id="usage-at" data-ready="1"' in page
        at = snapshot.computed_at.astimezone(WIB).strftime("%H:%M WIB")
        assert f"usage figures of {at}" in page
        # Exactly the online terminal without punches; not the offline one, not the silent office's.
        assert _flags(page) == {f"{A}-lobi": "0", f"{A}-gudang": "1", f"{B}-depan": "0", f"{C}-aula": "0"}
        assert re.search(r'id="n-unused">1 tidak dipakai', page)
        unused = c.get("/", params={"problem": "unused"}).text
        assert re.findall(r'<tr class="term" id="t-([^"]+)"', unused) == [f"{A}-gudang"]
        # Office A: 3 employees seen, each with a full day on every day punched.
        usage = re.search(rf'id="o-{re.escape(A)}".*?<div class="usage" data-attendance="([0-9.]+)" '
                          r'data-full-days="([0-9.]+)"', page, re.S)
        assert usage
        view = snapshot.offices[A]
        punched = len([d for d in _days_before_today(12) if d >= snapshot.start])
        assert view.basis == 3 and view.basis_source == "seen"
        assert float(usage.group(1)) == pytest.approx(punched / view.working_days, abs=1e-3)
        assert float(usage.group(2)) == pytest.approx(float(usage.group(1)), abs=1e-3)
        assert f'src="/usage/{A}.svg"' in page
        chart = c.get(f"/usage/{A}.svg")
        assert chart.status_code == 200 and chart.headers["content-type"].startswith("image/svg+xml")
        assert chart.text.startswith("<svg") and "<polyline" in chart.text
        assert len(re.findall(r"<circle ", chart.text)) == len([r for _, r in view.weekly if r is not None])


def test_an_office_account_sees_only_its_office_usage(regency: Regency) -> None:
    regency.dashboard.usage.refresh()
    with regency.client() as c:
        login(c, "tu-a")
        page = c.get("/").text
        assert re.findall(r'<section class="office" id="o-([^"]+)"', page) == [A]
        assert f"/usage/{B}.svg" not in page and f"/usage/{C}.svg" not in page
        assert c.get(f"/usage/{A}.svg").status_code == 200
        assert c.get(f"/usage/{B}.svg").status_code == 404  # like a terminal of another office: not found
        assert c.get(f"/usage/{C}.svg").status_code == 404
    with regency.client() as anonymous:
        assert anonymous.get(f"/usage/{A}.svg").status_code == 303


def test_a_failed_refresh_keeps_the_previous_figures_and_logs_once(regency: Regency) -> None:
    figures = regency.dashboard.usage
    refresh = UsageRefresh(cast(Any, None), figures)
    assert refresh.run()
    before = figures.snapshot
    broken = UsageFigures(regency.engine, WorkRules(timezone="Asia/Jakarta"))
    broken.snapshot = before

    def fail(now: datetime | None = None) -> Any:
        raise RuntimeError("database gone")

    broken.refresh = fail  # type: ignore[method-assign]
    failing = UsageRefresh(cast(Any, None), broken)
    with capture_logs() as logs:
        assert not failing.run() and not failing.run()
        assert broken.snapshot is before
        broken.refresh = figures.refresh  # type: ignore[method-assign]
        assert failing.run()
    events = [e["event"] for e in logs if e["log_level"] in ("error", "info")]
    assert events == ["dashboard usage figures could not be computed; the page keeps the previous ones",
                      "dashboard usage figures computed again"]


def test_the_window_covers_whole_weeks_up_to_today() -> None:
    figures = UsageFigures(None, WorkRules(timezone="Asia/Jakarta"), weeks=6)
    start, end = figures.window(datetime(2026, 12, 1, 1, 0, tzinfo=UTC))  # Tuesday 08:00 WIB
    assert (start, end) == (date(2026, 10, 26), date(2026, 12, 1)) and start.isoweekday() == 1

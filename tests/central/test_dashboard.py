"""The regency dashboard's routes and access model (Starlette TestClient, SQLite and PostgreSQL).

Office gateways report through the real ingest endpoint; the pages are read as HTML. What is checked: a login
(CSRF pair, rate limit, HttpOnly cookie, sessions ended by disable/passwd/logout), the API's bearer tokens
(unchanged for the JSON API, and scoped on the dashboard), an office account never seeing another office by URL
or filter, the worst-first order, the filters, and a terminal's history derived from forwarded health reports.
The /report download is the monthly report of gateway.central.report (its contents are tested in
test_report.py): here, that the download is that report, scoped to what the account may see.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from gateway.central.auth import LoginLimiter, hash_password, verify_password
from gateway.central.dashboard import SESSION_COOKIE
from gateway.store.accounts import AccountRepo
from tests.support.dashboard import PASSWORD, Regency, login, make_regency, terminal

pytestmark = pytest.mark.timeout(90)
A, B, C = "1801.01", "1801.02", "1801.03"


@pytest.fixture
def regency(db_url: str, tmp_path: Path) -> Iterator[Regency]:
    r = make_regency(db_url, tmp_path, [A, B, C], limiter=LoginLimiter(per_user=3, per_client=50))
    with r.client() as c:
        r.report_health(c, A, [terminal("lobi"), terminal("gudang", "offline", {
            "offline": {"severity": "critical", "since": "2026-11-30T02:00:00Z", "detail": "no answer"}},
            since="2026-11-30T02:00:00Z")], office_name="Dinas Pendidikan")
        r.report_health(c, B, [terminal("depan", problems={
            "clock_skew": {"severity": "warning", "since": "2026-11-29T00:00:00Z", "detail": "+400 s"}})],
            office_name="Dinas Kesehatan")
        r.report_health(c, C, [terminal("aula")], office_name="Inspektorat")
    r.silence(C)
    r.add_account("bkd", None)
    r.add_account("tu-a", A)
    try:
        yield r
    finally:
        r.engine.dispose()


def offices_on(page: str) -> list[str]:
    return re.findall(r'<section class="office" id="o-([^"]+)"', page)


def terminals_on(page: str) -> list[str]:
    return re.findall(r'<tr class="term" id="t-([^"]+)"', page)


# -- login -------------------------------------------------------------------------------------------

def test_pages_need_a_login_and_send_the_browser_to_it(regency: Regency) -> None:
    with regency.client() as c:
        for path in ("/", f"/terminal/{A}/lobi", "/report?month=2026-11&format=xlsx"):
            r = c.get(path)
            assert r.status_code == 303 and r.headers["location"].startswith("/login?next="), path
        assert "Masuk / sign in" in c.get("/login").text


def test_login_sets_an_httponly_samesite_session_cookie_and_keeps_only_its_hash(regency: Regency) -> None:
    with regency.client() as c:
        r = login(c, "bkd", next_url=f"/?office={A}")
        assert r.status_code == 303 and r.headers["location"] == f"/?office={A}"
        cookie = next(v for k, v in r.headers.multi_items() if k == "set-cookie" and v.startswith(SESSION_COOKIE))
        assert "HttpOnly" in cookie and "SameSite=lax" in cookie and "Path=/" in cookie
        sid = c.cookies[SESSION_COOKIE]
        assert c.get("/").status_code == 200
    with regency.engine.connect() as conn:
        stored = [row[0] for row in conn.exec_driver_sql("SELECT token_hash FROM dashboard_sessions")]
    assert stored and sid not in stored


def test_login_refuses_a_form_without_its_csrf_pair_and_offsite_redirects(regency: Regency) -> None:
    with regency.client() as c:
        r = c.post("/login", data={"csrf": "forged", "username": "bkd", "password": PASSWORD})
        assert r.status_code == 403 and SESSION_COOKIE not in c.cookies
        r = login(c, "bkd", next_url="//evil.example/")
        assert r.status_code == 303 and r.headers["location"] == "/"


def test_wrong_passwords_are_rate_limited_even_when_the_right_one_follows(regency: Regency) -> None:
    with regency.client() as c:
        for _ in range(3):
            assert login(c, "bkd", "wrong-password-1").status_code == 401
        r = login(c, "bkd")
        assert r.status_code == 429 and int(r.headers["retry-after"]) > 0
        assert SESSION_COOKIE not in c.cookies
        # Another user from the same place is not locked out by bkd's failures.
        assert login(c, "tu-a").status_code == 303


def test_unknown_user_and_disabled_account_cannot_sign_in(regency: Regency) -> None:
    AccountRepo(regency.engine).set_enabled("tu-a", False)
    with regency.client() as c:
        assert login(c, "nobody").status_code == 401
        assert login(c, "tu-a").status_code == 401


def test_disable_new_password_and_logout_end_the_session(regency: Regency) -> None:
    repo = AccountRepo(regency.engine)
    with regency.client() as c:
        login(c, "tu-a")
        assert c.get("/").status_code == 200
        repo.set_password("tu-a", hash_password("another-long-password"))
        assert c.get("/").status_code == 303
        assert login(c, "tu-a", "another-long-password").status_code == 303
        repo.set_enabled("tu-a", False)
        assert c.get("/").status_code == 303
    with regency.client() as c:
        login(c, "bkd")
        page = c.get("/").text
        csrf = re.search(r'action="/logout".*?name="csrf" value="([^"]+)"', page)
        assert csrf
        assert c.post("/logout", data={"csrf": "wrong"}).status_code == 403
        assert c.get("/").status_code == 200
        assert c.post("/logout", data={"csrf": csrf.group(1)}).status_code == 303
        assert c.get("/").status_code == 303


def test_password_hash_is_scrypt_and_verifies_only_the_right_password() -> None:
    stored = hash_password("correct horse battery")
    assert stored.startswith("scrypt$") and "correct" not in stored
    assert verify_password("correct horse battery", stored)
    assert not verify_password("correct horse batterY", stored)
    assert not verify_password("anything", None) and not verify_password("x", "garbage")


# -- what each viewer sees ---------------------------------------------------------------------------

def test_regency_account_sees_every_office_worst_first(regency: Regency) -> None:
    with regency.client() as c:
        login(c, "bkd")
        page = c.get("/").text
    # C: silent gateway; A: an offline terminal; B: a warning only.
    assert offices_on(page) == [C, A, B]
    assert 'id="o-1801.03" data-gateway="silent"' in page and 'id="o-1801.01" data-gateway="online"' in page
    assert terminals_on(page)[1:3] == [f"{A}-gudang", f"{A}-lobi"]  # worst terminal of A first
    assert 'id="n-offline">1 offline' in page and 'id="n-silent">1 gateway' in page
    assert "Dinas Pendidikan" in page and "WIB" in page and "2026-11-30 09:00 WIB" in page


def test_office_account_sees_only_its_office_whatever_the_url(regency: Regency) -> None:
    with regency.client() as c:
        login(c, "tu-a")
        page = c.get("/").text
        assert offices_on(page) == [A] and "Dinas Kesehatan" not in page and "Inspektorat" not in page
        assert c.get("/", params={"office": B}).status_code == 403
        assert offices_on(c.get("/", params={"problem": "clock_skew"}).text) == []
        assert offices_on(c.get("/", params={"problem": "gateway_silent"}).text) == []
        assert c.get(f"/terminal/{B}/depan").status_code == 404
        assert c.get(f"/terminal/{A}/lobi").status_code == 200
        assert c.get("/report", params={"month": "2026-11", "format": "pdf", "office": B}).status_code == 403


def test_api_tokens_work_unchanged_on_the_api_and_scoped_on_the_dashboard(regency: Regency) -> None:
    with regency.client() as c:
        scoped = {"Authorization": f"Bearer {regency.api_tokens[A]}"}
        every = {"Authorization": f"Bearer {regency.api_tokens['all']}"}
        assert {d["office_code"] for d in c.get("/api/v1/devices", headers=every).json()["items"]} == {A, B, C}
        assert {d["office_code"] for d in c.get("/api/v1/devices", headers=scoped).json()["items"]} == {A}
        assert offices_on(c.get("/", headers=every).text) == [C, A, B]
        assert offices_on(c.get("/", headers=scoped).text) == [A]
        assert c.get(f"/terminal/{B}/depan", headers=scoped).status_code == 404
        r = c.get("/", headers={"Authorization": "Bearer not-a-token"})
        assert r.status_code == 401 and SESSION_COOKIE not in r.headers.get("set-cookie", "")
        # A gateway token is not a reading token.
        assert c.get("/", headers={"Authorization": f"Bearer {regency.gateway_tokens[A]}"}).status_code == 401


def test_filters_by_problem_and_by_office(regency: Regency) -> None:
    with regency.client() as c:
        login(c, "bkd")
        assert terminals_on(c.get("/", params={"problem": "offline"}).text) == [f"{A}-gudang"]
        assert terminals_on(c.get("/", params={"problem": "clock_skew"}).text) == [f"{B}-depan"]
        assert offices_on(c.get("/", params={"problem": "gateway_silent"}).text) == [C]
        assert set(terminals_on(c.get("/", params={"problem": "any"}).text)) == {f"{A}-gudang", f"{B}-depan"}
        assert terminals_on(c.get("/", params={"office": B}).text) == [f"{B}-depan"]
        assert c.get("/", params={"problem": "<script>"}).status_code == 400


def test_report_checks_month_format_and_scope_before_building(regency: Regency) -> None:
    with regency.client() as c:
        login(c, "bkd")
        assert c.get("/report", params={"month": "2026-13", "format": "pdf"}).status_code == 400
        assert c.get("/report", params={"month": "2026-11", "format": "docx"}).status_code == 400
        page = c.get("/").text
        assert 'action="/report"' in page and 'name="month"' in page and 'value="pdf"' in page


def test_report_download_is_the_monthly_report_scoped_to_the_account(regency: Regency) -> None:
    import io

    from openpyxl import load_workbook

    def texts(body: bytes) -> str:
        book = load_workbook(io.BytesIO(body), read_only=True)
        return " ".join(str(v) for ws in book.worksheets for row in ws.iter_rows(values_only=True)
                        for v in row if v is not None)

    # This month: the offices were first heard of today, and a month before that leaves them out.
    month = datetime.now(ZoneInfo("Asia/Jakarta")).strftime("%Y-%m")
    with regency.client() as c:
        login(c, "bkd")
        got = c.get("/report", params={"month": month, "format": "xlsx"})
        assert got.status_code == 200, got.text
        assert f'filename="laporan-{month}.xlsx"' in got.headers["content-disposition"]
        everything = texts(got.content)
        assert all(code in everything for code in (A, B, C))
        html_page = c.get("/report", params={"month": month, "format": "html"})
        assert html_page.status_code == 200 and html_page.headers["content-type"].startswith("text/html")
        assert "Dinas Kesehatan" in html_page.text
        pdf = c.get("/report", params={"month": month, "format": "pdf"})
        assert pdf.status_code == 200 and pdf.content.startswith(b"%PDF")
    with regency.client() as c:
        login(c, "tu-a")
        got = c.get("/report", params={"month": month, "format": "xlsx"})
        assert got.status_code == 200 and f'filename="laporan-{month}-{A}.xlsx"' in got.headers["content-disposition"]
        mine = texts(got.content)
        assert A in mine and B not in mine and C not in mine
        assert c.get("/report", params={"month": month, "format": "xlsx", "office": B}).status_code == 403


# -- a terminal's history ------------------------------------------------------------------------------

def test_terminal_history_shows_outages_with_duration_and_alerts_sent(regency: Regency) -> None:
    down = {"offline": {"severity": "critical", "since": "2026-11-30T02:00:00Z", "detail": "no answer",
                        "last_alert_at": "2026-11-30T02:10:00Z"}}
    with regency.client() as c:
        regency.report_health(c, B, [terminal("depan", "offline", down, since="2026-11-30T02:00:00Z")])
        regency.report_health(c, B, [terminal("depan", "offline", down, since="2026-11-30T02:00:00Z")])  # same
        regency.report_health(c, B, [terminal("depan", "online", since="2026-11-30T05:30:00Z")])
        login(c, "bkd")
        page = c.get(f"/terminal/{B}/depan").text
    outages = re.findall(r'<tr class="outage"><td>([^<]+)</td><td>([^<]+)</td><td>([^<]+)</td>', page)
    assert outages == [("2026-11-30 09:00 WIB", "2026-11-30 12:30 WIB", "3 h 30 min")]
    assert 'id="alerts-sent">1<' in page
    kinds = re.findall(r'<tr class="event" data-kind="([a-z_]+)">', page)
    # Newest first: back online, offline problem resolved (and clock skew before), alert, offline...
    assert kinds.count("alert") == 1 and kinds.count("state") == 3 and kinds.count("problem_start") == 2
    assert 'data-state="online"' in page


def test_unknown_terminal_is_not_found(regency: Regency) -> None:
    with regency.client() as c:
        login(c, "bkd")
        assert c.get(f"/terminal/{A}/nosuch").status_code == 404


def test_odd_forwarded_problem_text_is_kept_in_the_history_without_breaking_it(regency: Regency) -> None:
    odd = {"x" * 40: {"severity": "s" * 30, "since": "0001-01-01T00:00:00+05:00", "detail": "nul\x00 \ud800 <b>"},
           "storage": "not an object"}
    with regency.client() as c:
        regency.report_health(c, A, [terminal("lobi", problems=odd)])
        login(c, "bkd")
        page = c.get(f"/terminal/{A}/lobi")
        dash = c.get("/")
    assert page.status_code == 200 and dash.status_code == 200
    assert "&lt;b&gt;" in page.text and "<b>" + "</b>" not in page.text.split("nul")[-1][:20]
    assert page.text.count('data-kind="problem_start"') == 2

"""The monthly BKD report (gateway.central.report) on a regency built from forwarded documents: some terminals
broken, one unused, one office silent, problems never fixed. Each format is read back (xlsx with openpyxl,
html parsed, pdf rendered to images with pypdfium2) and must show exactly those; plus `fpgw central report`,
`headcount` and `holidays`, and the SVG charts."""

from __future__ import annotations

import io
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from openpyxl import load_workbook
from sqlalchemy import update

from gateway.central import charts
from gateway.central.report import NO_DATA, build_report
from gateway.central.tokens import add_token
from gateway.central.usage import WorkRules, month_range, working_days
from gateway.cli.main import main
from gateway.store import schema as s
from gateway.store.usage import UNDATED, Headcount, UsageRepo
from tests.support.central import OFFICE_A, OFFICE_B, Central, device_doc, make_central, punch
from tests.support.regency import known_since
from tests.support.secrets import remember

pytestmark = pytest.mark.timeout(180)

OFFICE_C, OFFICE_D = "1801.03", "1801.04"
NAMES = {OFFICE_A: "Dinas Pendidikan", OFFICE_B: "Dinas Kesehatan", OFFICE_C: "Bappeda",
         OFFICE_D: "Satpol <PP> & Damkar"}
#: The report is made on 2 December for November.
NOW = datetime(2026, 12, 2, 1, 0, tzinfo=UTC)
MONTH = "2026-11"
EXPECTED_BROKEN = {(OFFICE_B, "gate"), (OFFICE_B, "front")}
EXPECTED_UNUSED = {(OFFICE_A, "annex")}
EXPECTED_SILENT = {OFFICE_D}
EXPECTED_NEVER_FIXED = {(OFFICE_B, "front", "never_answered"), (OFFICE_C, "main", "clock_skew"),
                        (OFFICE_D, "(gateway)", "gateway_silent")}


def _send(c: Central, token: str, office: str, batch: str, punches: list[dict[str, Any]]) -> None:
    meta = {"office_code": office, "office_name": NAMES[office]}
    for i in range(0, len(punches), 1000):
        r = c.ingest(punches[i:i + 1000], token=token, batch_id=f"{batch}-{i}", gateway=meta)
        assert r.status_code == 200 and r.json()["rejected"] == 0, r.text
    r = c.client.post("/api/v1/ingest/health", json={"gateway": meta, "devices": []},
                      headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200, r.text


def _health(c: Central, token: str, office: str, *devices: dict[str, Any]) -> None:
    r = c.client.post("/api/v1/ingest/health", json={"gateway": {"office_code": office, "office_name": NAMES[office]},
                                                     "devices": list(devices)},
                      headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200 and not r.json()["rejected"], r.text


def _day_punches(office: str, device: str, serial: str, users: range, days: list[date]) -> list[dict[str, Any]]:
    return [punch(str(u), f"{d} {t}", serial=serial, device=device, office_code=office)
            for d in days for u in users for t in ("07:30:00", "16:05:00")]


def build_regency(c: Central, tmp_path: Path) -> None:
    """A: used terminal + one unused; B: one terminal offline since 10 Nov, one never answered; C: a clock problem
    open since October; D: silent since 28 October."""
    gw_c = add_token(tmp_path / "gateways.toml", "gw-c", [OFFICE_C], "gateway")
    gw_d = add_token(tmp_path / "gateways.toml", "gw-d", [OFFICE_D], "gateway")
    remember(gw_c, gw_d)
    days = working_days(*month_range(MONTH), WorkRules())
    _send(c, c.gw_a, OFFICE_A, "a", [*_day_punches(OFFICE_A, "lobby", "SNA1", range(1, 6), days),
                                     punch("1", "2026-11-03 12:00:00", serial="SNA2", device="annex")])
    _send(c, c.gw_b, OFFICE_B, "b", _day_punches(OFFICE_B, "gate", "SNB1", range(1, 5),
                                                 [d for d in days if d < date(2026, 11, 10)]))
    _send(c, gw_c, OFFICE_C, "c", _day_punches(OFFICE_C, "main", "SNC1", range(1, 4), days))
    _send(c, gw_d, OFFICE_D, "d", _day_punches(OFFICE_D, "pos", "SND1", range(1, 3),
                                               [d for d in days if d < date(2026, 11, 1)]))
    online = {"state": "online", "state_since": "2026-10-01T00:00:00Z", "problems": {}}
    _health(c, c.gw_a, OFFICE_A, device_doc("lobby", serial="SNA1", health=online),
            device_doc("annex", serial="SNA2", health=online))
    _health(c, c.gw_b, OFFICE_B, device_doc("gate", serial="SNB1", health={
        "state": "offline", "state_since": "2026-11-10T02:00:00Z", "consecutive_failures": 99, "problems": {
            "offline": {"severity": "critical", "since": "2026-11-10T02:00:00Z", "detail": "no answer"}}}),
        device_doc("front", serial="SNB2", health={"state": "unknown", "state_since": "2026-10-20T00:00:00Z",
                                                   "problems": {}}))
    _health(c, gw_c, OFFICE_C, device_doc("main", serial="SNC1", health={**online, "problems": {
        "clock_skew": {"severity": "warning", "since": "2026-10-05T00:00:00Z", "detail": "14 min behind"}}}))
    _health(c, gw_d, OFFICE_D, device_doc("pos", serial="SND1", health=online))
    known_since(c.engine, datetime(2026, 9, 1, tzinfo=UTC))
    with c.engine.begin() as conn:  # office D's gateway went quiet on 28 October
        conn.execute(update(s.gateways).where(s.gateways.c.office_code == OFFICE_D)
                     .values(last_seen_at=datetime(2026, 10, 28, 3, tzinfo=UTC)))
        # ... and the others reported until the report was made.
        conn.execute(update(s.gateways).where(s.gateways.c.office_code != OFFICE_D)
                     .values(last_seen_at=NOW - timedelta(minutes=5)))
    UsageRepo(c.engine).save_headcounts([Headcount(OFFICE_A, UNDATED, 10, "test")])


@pytest.fixture
def regency(db_url: str, tmp_path: Path) -> Iterator[Central]:
    c = make_central(db_url, tmp_path)
    try:
        build_regency(c, tmp_path)
        yield c
    finally:
        c.client.close()
        c.engine.dispose()


def _sheet_rows(wb: Any, name: str) -> list[dict[str, Any]]:
    """A report sheet's rows as dicts by heading (title, optional note: one cell each; then the heading row)."""
    rows = list(wb[name].iter_rows(values_only=True))
    head = next(i for i, r in enumerate(rows) if sum(1 for v in r if v is not None) > 1)
    return [dict(zip(rows[head], r, strict=False)) for r in rows[head + 1:]]


def test_xlsx_report_shows_exactly_the_broken_unused_silent_and_never_fixed(regency: Central) -> None:
    wb = load_workbook(io.BytesIO(build_report(regency.engine, MONTH, "xlsx", now=NOW)))
    assert {"Ringkasan Summary", "Peringkat Ranking", "Rusak Broken", "Tidak dipakai Unused", "Diam Silent",
            "Tidak diperbaiki Never fixed", "Grafik1 Chart1", "Grafik2 Chart2", "Grafik3 Chart3"} <= set(wb.sheetnames)
    broken = _sheet_rows(wb, "Rusak Broken")
    assert {(r["Kode / Code"], r["Terminal"]) for r in broken} == EXPECTED_BROKEN
    by = {r["Terminal"]: r for r in broken}
    # gate: offline from 10 Nov 02:00 UTC to the end of November in Jakarta (30 Nov 17:00 UTC).
    assert by["gate"]["Jam mati bulan ini / Hours down this month"] == pytest.approx(20 * 24 + 15, abs=0.01)
    assert by["front"]["Ketersediaan / Availability"] == 0.0
    assert {(r["Kode / Code"], r["Terminal"]) for r in _sheet_rows(wb, "Tidak dipakai Unused")} == EXPECTED_UNUSED
    assert {r["Kode / Code"] for r in _sheet_rows(wb, "Diam Silent")} == EXPECTED_SILENT
    assert {(r["Kode / Code"], r["Terminal"], r["Masalah / Problem"])
            for r in _sheet_rows(wb, "Tidak diperbaiki Never fixed")} == EXPECTED_NEVER_FIXED
    ranking = {r["Kode / Code"]: r for r in _sheet_rows(wb, "Peringkat Ranking")}
    assert set(ranking) == set(NAMES)
    a = ranking[OFFICE_A]
    # 5 of the 10 employees BKD counts punch both ways on every one of the 21 working days.
    assert (a["Pegawai absen per hari / Employees per day"], a["Dasar pegawai / Employee basis"]) == (5.0, 10)
    assert a["Tingkat kehadiran / Attendance rate"] == 0.5 and a["Hari lengkap / Full days"] == 0.5
    assert ranking[OFFICE_C]["Tingkat kehadiran / Attendance rate"] == 1.0
    assert ranking[OFFICE_C]["Peringkat / Rank"] == 1 and ranking[OFFICE_A]["Kantor / Office"] == NAMES[OFFICE_A]
    assert ranking[OFFICE_B]["Rusak / Broken"] == 2
    # The numbers behind chart 2 are the ranking's numbers.
    chart2 = {r["Kode / Code"]: r["Tingkat kehadiran / Attendance rate"] for r in _sheet_rows(wb, "Grafik2 Chart2")}
    assert chart2[OFFICE_A] == 0.5 and chart2[OFFICE_C] == 1.0
    assert wb["Peringkat Ranking"].cell(row=4, column=7).number_format == "0.0%"


class _Tables(HTMLParser):
    """Section heading -> rows of cell texts; plus every <svg> seen and the page's text."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.heading, self.svgs, self.text = "", 0, []
        self._in: str | None = None
        self._row: list[str] | None = None
        self._cell = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("h2", "h3", "td", "th"):
            self._in, self._cell = tag, ""
        if tag == "tr":
            self._row = []
        if tag == "svg":
            self.svgs += 1

    def handle_endtag(self, tag: str) -> None:
        if tag in ("h2", "h3"):
            self.heading, self._in = self._cell, None
            self.tables.setdefault(self.heading, [])
        elif tag in ("td", "th") and self._row is not None:
            self._row.append(self._cell)
            self._in = None
        elif tag == "tr" and self._row is not None:
            self.tables[self.heading].append(self._row)
            self._row = None

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self._in:
            self._cell += data


def test_html_report_shows_the_same_and_escapes_names(regency: Central) -> None:
    page = build_report(regency.engine, MONTH, "html", now=NOW).decode()
    assert "Satpol &lt;PP&gt; &amp; Damkar" in page and "<PP>" not in page
    parsed = _Tables()
    parsed.feed(page)
    assert parsed.svgs == 3

    def keys(heading: str, n: int = 2) -> set[tuple[str, ...]]:
        return {tuple(r[:n]) for r in parsed.tables[heading][1:]}

    assert keys("Terminal rusak / Broken terminals") == EXPECTED_BROKEN
    assert keys("Terminal tidak dipakai / Unused terminals") == EXPECTED_UNUSED
    assert {k[0] for k in keys("Kantor tanpa kabar / Silent offices", 1)} == EXPECTED_SILENT
    assert keys("Masalah tidak pernah diperbaiki / Problems never fixed", 3) == EXPECTED_NEVER_FIXED
    ranking = parsed.tables["Peringkat kantor / Office ranking"]
    head = ranking[0]
    row_a = next(r for r in ranking[1:] if r[1] == OFFICE_A)
    assert row_a[head.index("Tingkat kehadiran / Attendance rate")] == "50.0%"


def test_pdf_report_renders_and_its_text_names_the_offices(regency: Central) -> None:
    pdfium = pytest.importorskip("pypdfium2")
    data = build_report(regency.engine, MONTH, "pdf", now=NOW)
    assert data.startswith(b"%PDF-")
    doc = pdfium.PdfDocument(data)
    try:
        assert len(doc) >= 3
        image = doc[0].render(scale=0.5).to_pil().convert("L")
        dark = sum(image.histogram()[:128])
        assert dark > 0.005 * image.width * image.height  # the first page is not blank
        text = "".join(doc[i].get_textpage().get_text_range() for i in range(len(doc)))
    finally:
        doc.close()
    for name in (NAMES[OFFICE_A], NAMES[OFFICE_B], NAMES[OFFICE_C], "Satpol <PP> & Damkar"):
        assert name in text
    for _office, device in EXPECTED_BROKEN | EXPECTED_UNUSED:
        assert device in text
    assert "never_answered" in text and "clock_skew" in text and "gateway_silent" in text


def test_one_office_report_holds_only_that_office_and_its_employees(regency: Central) -> None:
    wb = load_workbook(io.BytesIO(build_report(regency.engine, MONTH, "xlsx", OFFICE_B, now=NOW)))
    assert {r["Kode / Code"] for r in _sheet_rows(wb, "Peringkat Ranking")} == {OFFICE_B}
    assert {(r["Kode / Code"], r["Terminal"]) for r in _sheet_rows(wb, "Rusak Broken")} == EXPECTED_BROKEN
    assert _sheet_rows(wb, "Tidak dipakai Unused") == [] and _sheet_rows(wb, "Diam Silent") == []
    employees = _sheet_rows(wb, "Pegawai Employees")
    assert sorted(r["Pegawai (NIP atau PIN) / Employee (NIP or PIN)"] for r in employees) == \
        ["NIP1", "NIP2", "NIP3", "NIP4"]
    page = build_report(regency.engine, MONTH, "html", OFFICE_B, now=NOW).decode()
    assert NAMES[OFFICE_A] not in page and NAMES[OFFICE_C] not in page


@pytest.mark.parametrize("fmt", ["xlsx", "pdf", "html"])
def test_a_month_without_data_gives_a_report_that_says_so(sqlite_url: str, tmp_path: Path, fmt: str) -> None:
    c = make_central(sqlite_url, tmp_path)
    try:
        data = build_report(c.engine, "2026-05", fmt, now=NOW)  # type: ignore[arg-type]
    finally:
        c.client.close()
        c.engine.dispose()
    if fmt == "xlsx":
        cells = [v for row in load_workbook(io.BytesIO(data))["Ringkasan Summary"].iter_rows(values_only=True)
                 for v in row if v]
        assert NO_DATA in cells
    elif fmt == "html":
        assert NO_DATA in data.decode()
    else:
        pdfium = pytest.importorskip("pypdfium2")
        doc = pdfium.PdfDocument(data)
        try:
            assert NO_DATA in doc[0].get_textpage().get_text_range().replace("\r\n", " ")
        finally:
            doc.close()


def test_build_report_refuses_a_bad_month_or_format(sqlite_url: str, tmp_path: Path) -> None:
    c = make_central(sqlite_url, tmp_path)
    try:
        with pytest.raises(ValueError, match="not a month"):
            build_report(c.engine, "2026-13", "html")
        with pytest.raises(ValueError, match="unknown report format"):
            build_report(c.engine, MONTH, "docx")  # type: ignore[arg-type]
    finally:
        c.client.close()
        c.engine.dispose()


# -- charts -----------------------------------------------------------------------------------------------

def test_charts_are_valid_svg_with_escaped_labels_and_no_data_shown_apart() -> None:
    bars = charts.bar_chart([("<b>Dinas</b> & co", 0.5), ("none", None), ("over", 1.7)], title="T <1>")
    root = ET.fromstring(bars)
    assert root.tag.endswith("svg")
    texts = ["".join(t.itertext()) for t in root.iter() if t.tag.endswith("text")]
    assert "<b>Dinas</b> & co" in texts and "50.0%" in texts and "tidak ada data / no data" in texts
    widths = [float(r.get("width", 0)) for r in root.iter() if r.tag.endswith("rect")]
    assert max(widths) <= 720  # a value above the scale is drawn at full length, not past the chart
    line = charts.line_chart([("02 Nov", 0.4), ("09 Nov", None), ("16 Nov", 0.8), ("23 Nov", 0.9)], title="trend")
    root = ET.fromstring(line)
    polylines = [p for p in root.iter() if p.tag.endswith("polyline")]
    assert len(polylines) == 1 and len(polylines[0].get("points", "").split()) == 2  # the gap breaks the line
    assert "tidak ada data" in charts.line_chart([], title="x")


# -- CLI -------------------------------------------------------------------------------------------------

def _config(tmp_path: Path, db_url: str) -> Path:
    cfg = tmp_path / "central.toml"
    cfg.write_text(f"""
[site]
office_code = "BKD"
timezone = "Asia/Jakarta"
state_dir = "{tmp_path}"
[database]
url = "{db_url}"
""")
    return cfg


def test_fpgw_central_report_headcount_and_holidays(sqlite_url: str, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str], restore_logging: None) -> None:
    c = make_central(sqlite_url, tmp_path)
    try:
        build_regency(c, tmp_path)
    finally:
        c.client.close()
        c.engine.dispose()
    cfg = _config(tmp_path, sqlite_url)
    capsys.readouterr()
    bad = tmp_path / "hc-bad.csv"
    bad.write_text("office_code,employees\n1801.01,12\n1801.02,dua\n1801.03,4,x\n")
    assert main(["-c", str(cfg), "central", "headcount", "import", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "hc-bad.csv: line 3: employees 'dua' is not a whole number" in err
    assert "line 4: 3 columns, the header has 2" in err and "nothing imported" in err
    good = tmp_path / "hc.csv"
    good.write_text("office_code;employees;as_of\n1801.02;8;2026-11-01\n9999.99;3;\n")
    assert main(["-c", str(cfg), "central", "headcount", "import", str(good)]) == 0
    out, err = capsys.readouterr()
    assert "2 headcount(s) imported" in out and "9999.99" in err
    assert main(["-c", str(cfg), "central", "headcount", "list"]) == 0
    listing = capsys.readouterr().out
    assert "1801.02  2026-11-01  8" in listing and "1801.01  -           10" in listing

    holidays = tmp_path / "libur.csv"
    holidays.write_text("date,name\n2026-11-02,Contoh\n2026-12-25,Natal\n")
    assert main(["-c", str(cfg), "central", "holidays", "import", str(holidays)]) == 0
    assert main(["-c", str(cfg), "central", "holidays", "add", "2026-11-03", "Cuti bersama"]) == 0
    assert main(["-c", str(cfg), "central", "holidays", "remove", "2026-12-25"]) == 0
    assert main(["-c", str(cfg), "central", "holidays", "remove", "2026-12-26"]) == 1
    assert main(["-c", str(cfg), "central", "holidays", "list", "--year", "2026"]) == 0
    out = capsys.readouterr().out
    assert "2026-11-02  Mon      Contoh" in out and "2026-11-03  Tue      Cuti bersama" in out and "Natal" not in out

    target = tmp_path / "nov.xlsx"
    assert main(["-c", str(cfg), "central", "report", "--month", MONTH, "--output", str(target)]) == 0
    wb = load_workbook(target)
    summary = dict(r[:2] for r in wb["Ringkasan Summary"].iter_rows(values_only=True) if r[0] and r[1] is not None)
    assert summary["Hari kerja / Working days"] == "19"  # 21 weekdays less the two holidays
    ranking = {r["Kode / Code"]: r for r in _sheet_rows(wb, "Peringkat Ranking")}
    assert ranking[OFFICE_B]["Dasar pegawai / Employee basis"] == 8
    assert main(["-c", str(cfg), "central", "report", "--month", MONTH, "--format", "pdf", "--office", OFFICE_C,
                 "--output", str(tmp_path / "c.html")]) == 1
    assert "ends in .html but the format is pdf" in capsys.readouterr().err
    assert main(["-c", str(cfg), "central", "report", "--month", "November", "--format", "html"]) == 1
    assert "--month: not a month like 2026-11" in capsys.readouterr().err
    assert main(["-c", str(cfg), "central", "report", "--month", MONTH, "--office", OFFICE_C,
                 "--output", str(tmp_path / "c.html")]) == 0
    assert NAMES[OFFICE_C] in (tmp_path / "c.html").read_text()
    with pytest.raises(SystemExit):
        main(["-c", str(cfg), "central", "report", "--help"])
    assert "--month" in capsys.readouterr().out


def test_the_pdf_of_a_large_regency_leaves_the_full_terminal_list_to_xlsx_and_html() -> None:
    from gateway.central.report import PDF_MAX_TERMINALS, build_model, to_html, to_pdf
    from gateway.central.usage import compute

    pdfium = pytest.importorskip("pypdfium2")
    n = PDF_MAX_TERMINALS + 1
    devices = [{"office_code": f"18{i % 7:02d}", "device_id": f"t{i}", "state": "online",
                "created_at": datetime(2026, 1, 1, tzinfo=UTC)} for i in range(n)]
    start, end = month_range(MONTH)
    days = working_days(start, end, WorkRules())
    fig = compute(start=start, end=end, counted_until=end, rules=WorkRules(), days=days,
                  holidays={}, office_days=[], employee_days=[], terminal_days=[], headcounts={}, devices=devices,
                  gateways=[], period=(datetime(2026, 10, 31, 17, tzinfo=UTC), datetime(2026, 11, 30, 17, tzinfo=UTC)),
                  now=NOW)
    model = build_model(fig, MONTH)
    doc = pdfium.PdfDocument(to_pdf(model))
    try:
        text = "".join(doc[i].get_textpage().get_text_range() for i in range(len(doc)))
    finally:
        doc.close()
    assert f"{n} rows: see the XLSX or HTML file" in text.replace("\r\n", " ")
    assert f"t{n - 1}<" in to_html(model).decode()  # the HTML keeps every terminal


def test_texts_from_gateways_stay_text_in_the_spreadsheet() -> None:
    from gateway.central.report import build_model, to_xlsx
    from gateway.central.usage import compute

    start, end = month_range(MONTH)
    gateway = {"office_code": "1801.09", "office_name": "=HYPERLINK(\"http://x\")", "first_seen_at": None,
               "last_seen_at": NOW}
    days = working_days(start, end, WorkRules())
    fig = compute(start=start, end=end, counted_until=end, rules=WorkRules(), days=days,
                  holidays={}, office_days=[], employee_days=[], terminal_days=[], headcounts={},
                  devices=[{"office_code": "1801.09", "device_id": "=1+1", "state": "online"}], gateways=[gateway],
                  period=(datetime(2026, 10, 31, 17, tzinfo=UTC), datetime(2026, 11, 30, 17, tzinfo=UTC)), now=NOW)
    wb = load_workbook(io.BytesIO(to_xlsx(build_model(fig, MONTH))))
    cells = [c for row in wb["Peringkat Ranking"].iter_rows() for c in row] + \
        [c for row in wb["Terminal"].iter_rows() for c in row]
    texts = {c.value: c.data_type for c in cells if isinstance(c.value, str) and c.value.startswith("=")}
    assert texts == {"=HYPERLINK(\"http://x\")": "s", "=1+1": "s"}

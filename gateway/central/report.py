"""The monthly BKD report: offices ranked by terminal availability and usage, broken and unused terminals,
problems never fixed, silent offices, with the numbers behind every chart; as XLSX, PDF or HTML.

    `fpgw central report` / the dashboard's download route --> build_report(engine, month, fmt, office)
        --> gateway.central.usage.collect (figures) --> Report (sections: tables and charts, bilingual)
        --> to_html (inline SVG from gateway.central.charts) / to_xlsx (openpyxl, one sheet per table and
            one data sheet per chart) / to_pdf (fpdf2: the same tables; the same SVG charts drawn as vectors)
One model, three renderers: the three files always show the same numbers. Headings are Indonesian / English.
A month without data gives a report that says so. docs/bkd-report.md explains every number.
"""

from __future__ import annotations

import io
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime
from html import escape
from typing import TYPE_CHECKING, Any, Literal
from zoneinfo import ZoneInfo

from gateway.central import charts
from gateway.central.usage import (
    UNUSED_PUNCHES_PER_DAY,
    Figures,
    OfficeFigures,
    WorkRules,
    collect,
    month_range,
)

if TYPE_CHECKING:
    from gateway.store.db import Engine

Format = Literal["xlsx", "pdf", "html"]
FORMATS: tuple[str, ...] = ("xlsx", "pdf", "html")
MEDIA_TYPES = {
    "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    "pdf": "application/pdf",
    "html": "text/html; charset=utf-8",
}
#: How many offices the "lowest" bar charts show (the full list is in the ranking table).
CHART_OFFICES = 20
#: Above this many terminals the PDF leaves the list of all terminals to the XLSX and HTML files.
PDF_MAX_TERMINALS = 100
NO_DATA = "Tidak ada data untuk periode ini / No data for this period"

#: Column kinds: how a value is shown (and typed in the spreadsheet).
Kind = Literal["text", "int", "pct", "float", "hours", "days", "date", "datetime"]


@dataclass(frozen=True)
class Column:
    """One column: its bilingual heading and the kind of its values."""

    heading: str
    kind: Kind = "text"


@dataclass
class Table:
    """A titled table (a section, or the data behind a chart)."""

    title: str
    sheet: str
    columns: list[Column]
    rows: list[list[Any]]
    note: str = ""
    empty_text: str = "Tidak ada / None"
    #: False for a long list the printed report leaves to the XLSX and HTML files (a note says so).
    in_pdf: bool = True


@dataclass
class Chart:
    """A chart and the table of its numbers."""

    kind: Literal["bar", "line"]
    title: str
    points: list[tuple[str, float | None]]
    data: Table

    def svg(self, clean: Callable[[str], str] = str) -> str:
        """The chart as SVG (labels passed through ``clean``, e.g. for the PDF's fonts)."""
        points = [(clean(label), value) for label, value in self.points]
        if self.kind == "bar":
            return charts.bar_chart(points, title=clean(self.title))
        return charts.line_chart(points, title=clean(self.title))


@dataclass
class Report:
    """Everything the report shows, in order."""

    title: str
    subtitle: str
    summary: list[tuple[str, str]]
    charts: list[Chart] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    empty: bool = False


# --------------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------------

def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def _office_label(o: OfficeFigures) -> str:
    return f"{o.office_code} {o.usage.office_name}".strip()


def _local(value: datetime | None, zone: ZoneInfo) -> datetime | None:
    return value.astimezone(zone) if value is not None else None


def build_model(fig: Figures, month: str, office: str | None = None) -> Report:
    """The report's sections from the figures."""
    zone = ZoneInfo(fig.rules.timezone)
    generated = fig.generated_at.astimezone(zone)
    scope = f"Kantor / Office {office}" if office else "Seluruh kabupaten / Whole regency"
    title = f"Laporan bulanan mesin absensi / Monthly attendance terminal report: {month}"
    subtitle = (f"{scope}. Periode / Period {fig.start} - {fig.end}"
                + (f" (dihitung sampai / counted until {fig.counted_until})" if fig.counted_until < fig.end else "")
                + f". Dibuat / Generated {generated:%Y-%m-%d %H:%M} {generated.tzname()}.")
    terminals = fig.terminals
    known = [o.availability for o in fig.offices if o.availability is not None]
    weekly = fig.weekly_rate()
    basis = sum(o.usage.basis * o.usage.working_days for o in fig.offices)
    regency_rate = sum(o.usage.employee_days for o in fig.offices) / basis if basis else None
    broken = [t for t in terminals if t.broken]
    unused = [t for t in terminals if t.unused]
    silent = [o for o in fig.offices if o.silent]
    summary = [
        ("Hari kerja / Working days", str(len(fig.working_days))),
        ("Hari libur / Holidays", ", ".join(f"{d} {n}".strip() for d, n in sorted(fig.holidays.items())) or "-"),
        ("Kantor / Offices", str(len(fig.offices))),
        ("Terminal / Terminals", str(len(terminals))),
        ("Ketersediaan rata-rata / Mean availability", _pct(sum(known) / len(known) if known else None)),
        ("Tingkat kehadiran / Attendance rate", _pct(regency_rate)),
        ("Terminal rusak / Broken terminals", str(len(broken))),
        (f"Terminal tidak dipakai (< {UNUSED_PUNCHES_PER_DAY:g} absen/hari) / Unused terminals", str(len(unused))),
        ("Kantor tanpa kabar / Silent offices", str(len(silent))),
        ("Masalah tidak pernah diperbaiki / Problems never fixed", str(len(fig.never_fixed))),
    ]
    report = Report(title=title, subtitle=subtitle, summary=summary, empty=fig.empty)
    if fig.empty:
        return report

    by_avail = sorted((o for o in fig.offices if o.availability is not None),
                      key=lambda o: (o.availability or 0.0, o.office_code))[:CHART_OFFICES]
    by_rate = sorted((o for o in fig.offices if o.usage.attendance_rate is not None),
                     key=lambda o: (o.usage.attendance_rate or 0.0, o.office_code))[:CHART_OFFICES]
    office_cols = [Column("Kode / Code"), Column("Kantor / Office")]
    report.charts.append(Chart(
        "bar", "Ketersediaan terminal, terendah / Terminal availability, lowest",
        [(_office_label(o), o.availability) for o in by_avail],
        Table("Data grafik 1: ketersediaan / Chart 1 data: availability", "Grafik1 Chart1",
              [*office_cols, Column("Ketersediaan / Availability", "pct")],
              [[o.office_code, o.usage.office_name, o.availability] for o in by_avail])))
    report.charts.append(Chart(
        "bar", "Tingkat kehadiran, terendah / Attendance rate, lowest",
        [(_office_label(o), o.usage.attendance_rate) for o in by_rate],
        Table("Data grafik 2: tingkat kehadiran / Chart 2 data: attendance rate", "Grafik2 Chart2",
              [*office_cols, Column("Pegawai absen per hari / Employees punching per day", "float"),
               Column("Dasar pegawai / Employee basis", "int"), Column("Tingkat kehadiran / Attendance rate", "pct")],
              [[o.office_code, o.usage.office_name, o.usage.employees_per_day, o.usage.basis,
                o.usage.attendance_rate] for o in by_rate])))
    trend_rates = weekly if office is None else (fig.offices[0].usage.weekly_rate() if fig.offices else {})
    report.charts.append(Chart(
        "line", "Tren mingguan tingkat kehadiran / Weekly attendance rate trend",
        [(f"{w:%d %b}", v) for w, v in trend_rates.items()],
        Table("Data grafik 3: tren mingguan / Chart 3 data: weekly trend", "Grafik3 Chart3",
              [Column("Minggu mulai / Week from", "date"), Column("Tingkat kehadiran / Attendance rate", "pct")],
              [[w, v] for w, v in trend_rates.items()])))

    report.tables.append(Table(
        "Peringkat kantor / Office ranking", "Peringkat Ranking",
        [Column("Peringkat / Rank", "int"), *office_cols, Column("Terminal / Terminals", "int"),
         Column("Rusak / Broken", "int"), Column("Tidak dipakai / Unused", "int"),
         Column("Ketersediaan / Availability", "pct"), Column("Pegawai absen per hari / Employees per day", "float"),
         Column("Dasar pegawai / Employee basis", "int"), Column("Sumber dasar / Basis from"),
         Column("Tingkat kehadiran / Attendance rate", "pct"), Column("Hari lengkap / Full days", "pct"),
         Column("Hari kerja tanpa absen / Working days without punches", "int"),
         Column("Kontak terakhir gateway / Gateway last contact", "datetime")],
        [[o.rank, o.office_code, o.usage.office_name, len(o.terminals), sum(1 for t in o.terminals if t.broken),
          sum(1 for t in o.terminals if t.unused), o.availability, o.usage.employees_per_day, o.usage.basis,
          o.usage.basis_source, o.usage.attendance_rate, o.usage.full_day_share, o.usage.days_without_punches,
          _local(o.gateway_last_seen, zone)] for o in fig.offices],
        note="Peringkat 1 = terbaik (rata-rata ketersediaan dan tingkat kehadiran) / "
             "Rank 1 = best (mean of availability and attendance rate)."))
    report.tables.append(Table(
        "Terminal rusak / Broken terminals", "Rusak Broken",
        [*office_cols[:1], Column("Terminal"), Column("Nama / Name"), Column("Serial"), Column("Status / State"),
         Column("Sejak / Since", "datetime"), Column("Jam mati bulan ini / Hours down this month", "hours"),
         Column("Ketersediaan / Availability", "pct")],
        [[t.office_code, t.device_id, t.name, t.serial, t.state, _local(t.state_since, zone), t.down_s,
          t.availability] for t in sorted(broken, key=lambda t: (-t.down_s, t.office_code, t.device_id))],
        note="Jam mati: sejauh diketahui central dari laporan gateway / Hours down: as far as the central knows "
             "from the gateways' reports (see docs/bkd-report.md)."))
    report.tables.append(Table(
        "Terminal tidak dipakai / Unused terminals", "Tidak dipakai Unused",
        [*office_cols[:1], Column("Terminal"), Column("Nama / Name"), Column("Absen / Punches", "int"),
         Column("Absen per hari kerja / Punches per working day", "float"),
         Column("Absen terakhir / Last punch", "datetime")],
        [[t.office_code, t.device_id, t.name, t.punches, t.punches_per_day, _local(t.last_punch_at, zone)]
         for t in sorted(unused, key=lambda t: (t.punches_per_day, t.office_code, t.device_id))],
        note=f"Online tetapi kurang dari {UNUSED_PUNCHES_PER_DAY:g} absen per hari kerja / "
             f"Online but fewer than {UNUSED_PUNCHES_PER_DAY:g} punches per working day."))
    period_end = min(fig.generated_at, datetime.combine(fig.end, datetime.max.time(), zone))
    report.tables.append(Table(
        "Masalah tidak pernah diperbaiki / Problems never fixed", "Tidak diperbaiki Never fixed",
        [*office_cols[:1], Column("Terminal"), Column("Masalah / Problem"), Column("Tingkat / Severity"),
         Column("Sejak / Since", "datetime"), Column("Hari terbuka / Days open", "days"),
         Column("Keterangan / Detail")],
        [[p.office_code, p.device_id or "(gateway)", p.problem, p.severity, _local(p.since, zone),
          p.days_open(period_end) if p.since else None, p.detail] for p in fig.never_fixed],
        note="Terbuka sejak sebelum bulan ini dan masih terbuka / Open since before the month and still open."))
    report.tables.append(Table(
        "Kantor tanpa kabar / Silent offices", "Diam Silent",
        [*office_cols, Column("Kontak terakhir / Last contact", "datetime")],
        [[o.office_code, o.usage.office_name, _local(o.gateway_last_seen, zone)] for o in silent],
        note="Gateway kantor tidak mengirim data / The office's gateway stopped reporting "
             f"(> {fig.rules.silent_after_s / 3600:g} h at the end of the period, or never)."))
    report.tables.append(Table(
        "Semua terminal / All terminals", "Terminal",
        [*office_cols[:1], Column("Terminal"), Column("Nama / Name"), Column("Status / State"),
         Column("Absen / Punches", "int"), Column("Hari dengan absen / Days with punches", "int"),
         Column("Absen per hari kerja / Punches per working day", "float"),
         Column("Pegawai terbanyak per hari / Most employees in a day", "int"),
         Column("Jam mati / Hours down", "hours"), Column("Ketersediaan / Availability", "pct")],
        [[t.office_code, t.device_id, t.name, t.state, t.punches, t.days_with_punches, t.punches_per_day,
          t.max_employees_per_day, t.down_s, t.availability] for t in terminals],
        # A regency has a thousand terminals (25 printed pages): the meeting's PDF lists the broken and unused
        # ones above; the full list is in the XLSX and HTML files.
        in_pdf=office is not None or len(terminals) <= PDF_MAX_TERMINALS))
    if office is not None:
        report.tables.append(Table(
            "Pegawai / Employees", "Pegawai Employees",
            [Column("Pegawai (NIP atau PIN) / Employee (NIP or PIN)"),
             Column("Hari dengan absen / Days with punches", "int"), Column("Hari lengkap / Full days", "int"),
             Column("Hari kerja / Working days", "int"), Column("Bagian hari lengkap / Full-day share", "pct")],
            [[e.employee, e.days_punched, e.full_days, e.working_days, e.full_day_share] for e in fig.employees]))
    return report


# --------------------------------------------------------------------------------------------------
# Renderers
# --------------------------------------------------------------------------------------------------

def _text(value: Any, kind: Kind) -> str:
    """A cell as text (HTML and PDF)."""
    if value is None or value == "":
        return "-"
    if kind == "pct":
        return _pct(float(value))
    if kind == "float":
        return f"{float(value):.1f}"
    if kind == "hours":
        return f"{float(value) / 3600:.1f}"
    if kind == "days":
        return f"{float(value):.0f}"
    if kind == "datetime" and isinstance(value, datetime):
        return f"{value:%Y-%m-%d %H:%M} {value.tzname() or ''}".strip()
    if kind == "date" and isinstance(value, date):
        return value.isoformat()
    return str(value)


_CSS = """body{font-family:Helvetica,Arial,sans-serif;color:#212121;margin:1.5rem;max-width:1100px}
h1{font-size:1.4rem}h2{font-size:1.1rem;margin-top:2rem}table{border-collapse:collapse;font-size:.85rem;margin:.5rem 0}
th,td{border:1px solid #ccc;padding:.25rem .5rem;text-align:left}td.n{text-align:right}th{background:#f0f0f0}
.note{color:#555;font-size:.85rem}.empty{font-size:1.1rem;padding:1rem;background:#fff8e1}
svg{max-width:100%;height:auto}figure{margin:1rem 0}"""


def _html_table(t: Table, level: str = "h2") -> str:
    out = [f"<section><{level}>{escape(t.title)}</{level}>"]
    if t.note:
        out.append(f'<p class="note">{escape(t.note)}</p>')
    if not t.rows:
        out.append(f"<p>{escape(t.empty_text)}</p></section>")
        return "".join(out)
    out.append("<table><thead><tr>" + "".join(f"<th>{escape(c.heading)}</th>" for c in t.columns)
               + "</tr></thead><tbody>")
    for row in t.rows:
        out.append("<tr>" + "".join(
            f'<td{" class=n" if c.kind not in ("text", "date", "datetime") else ""}>{escape(_text(v, c.kind))}</td>'
            for c, v in zip(t.columns, row, strict=True)) + "</tr>")
    out.append("</tbody></table></section>")
    return "".join(out)


def to_html(report: Report) -> bytes:
    """A self-contained HTML page (inline CSS and SVG; nothing loaded from elsewhere)."""
    out = ['<!DOCTYPE html><html lang="id"><head><meta charset="utf-8">'
           '<meta name="viewport" content="width=device-width, initial-scale=1">'
           f"<title>{escape(report.title)}</title><style>{_CSS}</style></head><body>",
           f"<h1>{escape(report.title)}</h1><p>{escape(report.subtitle)}</p>"]
    if report.empty:
        out.append(f'<p class="empty">{escape(NO_DATA)}</p>')
    out.append("<section><h2>Ringkasan / Summary</h2><table><tbody>")
    out.extend(f"<tr><th>{escape(k)}</th><td>{escape(v)}</td></tr>" for k, v in report.summary)
    out.append("</tbody></table></section>")
    for chart in report.charts:
        out.append(f"<section><figure>{chart.svg()}</figure>{_html_table(chart.data, 'h3')}</section>")
    out.extend(_html_table(t) for t in report.tables)
    out.append("</body></html>")
    return "".join(out).encode("utf-8")


def _sheet_name(name: str, used: set[str]) -> str:
    clean = "".join("_" if ch in "[]:*?/\\" else ch for ch in name)[:31]
    candidate, n = clean, 2
    while candidate in used:
        candidate = f"{clean[:28]}~{n}"
        n += 1
    used.add(candidate)
    return candidate


_NUMBER_FORMATS = {"pct": "0.0%", "float": "0.0", "hours": "0.0", "days": "0", "date": "yyyy-mm-dd",
                   "datetime": "yyyy-mm-dd hh:mm"}


def _xlsx_value(value: Any, kind: Kind) -> Any:
    if value is None:
        return None
    if kind == "hours":
        return round(float(value) / 3600, 2)
    if kind == "days":
        return round(float(value), 1)
    if kind == "datetime" and isinstance(value, datetime):
        return value.replace(tzinfo=None)  # Excel has no zones: office-local wall time (the heading says so)
    if kind == "text" and isinstance(value, str):
        from openpyxl.cell.cell import ILLEGAL_CHARACTERS_RE

        return ILLEGAL_CHARACTERS_RE.sub("\ufffd", value)
    return value


def to_xlsx(report: Report) -> bytes:
    """A workbook: the summary, one sheet per table, one data sheet per chart (numbers typed, not text)."""
    from openpyxl import Workbook
    from openpyxl.styles import Font
    from openpyxl.utils import get_column_letter

    wb = Workbook()
    ws = wb.active
    used: set[str] = set()
    ws.title = _sheet_name("Ringkasan Summary", used)
    ws.append([report.title])
    ws["A1"].font = Font(bold=True, size=13)
    ws.append([report.subtitle])
    if report.empty:
        ws.append([NO_DATA])
    ws.append([])
    for k, v in report.summary:
        ws.append([k, v])
    ws.column_dimensions["A"].width = 60
    ws.column_dimensions["B"].width = 40
    for t in [c.data for c in report.charts] + report.tables:
        sheet = wb.create_sheet(_sheet_name(t.sheet, used))
        sheet.append([t.title])
        sheet["A1"].font = Font(bold=True)
        if t.note:
            sheet.append([t.note])
        sheet.append([c.heading for c in t.columns])
        # Row numbers are counted here: openpyxl's max_row scans every cell (quadratic over a long sheet).
        header_row = 3 if t.note else 2
        for i in range(len(t.columns)):
            sheet.cell(row=header_row, column=i + 1).font = Font(bold=True)
        for n, row in enumerate(t.rows, header_row + 1):
            sheet.append([_xlsx_value(v, c.kind) for c, v in zip(t.columns, row, strict=True)])
            for i, c in enumerate(t.columns, 1):
                if c.kind in _NUMBER_FORMATS:
                    sheet.cell(row=n, column=i).number_format = _NUMBER_FORMATS[c.kind]
                elif c.kind == "text":
                    sheet.cell(row=n, column=i).data_type = "s"  # a text like "=1+1" stays text, never a formula
        for i, c in enumerate(t.columns):
            sheet.column_dimensions[get_column_letter(i + 1)].width = min(45, max(10, len(c.heading) // 2 + 4))
        sheet.freeze_panes = sheet.cell(row=header_row + 1, column=1)
    buf = io.BytesIO()
    wb.save(buf)
    return buf.getvalue()


def latin1(text: str) -> str:
    """Text the PDF's built-in fonts can show: Latin-1 kept, other letters without their accents, the rest '?'."""
    if text.isascii():
        return text
    out = []
    for ch in text:
        try:
            ch.encode("latin-1")
            out.append(ch)
        except UnicodeEncodeError:
            plain = "".join(c for c in unicodedata.normalize("NFKD", ch) if c.isascii())
            out.append(plain or "?")
    return "".join(out)


def to_pdf(report: Report) -> bytes:
    """An A4 landscape PDF (fpdf2): summary, the charts (the same SVG, drawn as vectors) with their numbers,
    the tables. Texts use the built-in Helvetica (no font file to ship), so they are reduced to Latin-1."""
    from fpdf import FPDF
    from fpdf.fonts import FontFace

    pdf = FPDF(orientation="L", format="A4")
    pdf.set_title(latin1(report.title))
    pdf.set_creator("fpgw")
    pdf.set_auto_page_break(auto=True, margin=12)
    pdf.add_page()
    pdf.set_font("Helvetica", "B", 14)
    pdf.multi_cell(0, 7, latin1(report.title), new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("Helvetica", "", 9)
    pdf.multi_cell(0, 5, latin1(report.subtitle), new_x="LMARGIN", new_y="NEXT")
    pdf.ln(2)
    if report.empty:
        pdf.set_font("Helvetica", "B", 12)
        pdf.multi_cell(0, 8, latin1(NO_DATA), new_x="LMARGIN", new_y="NEXT")
    heading = FontFace(emphasis="BOLD", fill_color=(235, 235, 235))

    def heading_text(text: str) -> None:
        pdf.set_font("Helvetica", "B", 11)
        pdf.ln(2)
        pdf.multi_cell(0, 6, latin1(text), new_x="LMARGIN", new_y="NEXT")
        pdf.set_font("Helvetica", "", 8)

    def table(t: Table, level: str = "h2") -> None:
        heading_text(t.title)
        if not t.in_pdf:
            pdf.multi_cell(0, 5, latin1(f"{len(t.rows)} baris: lihat berkas XLSX atau HTML / {len(t.rows)} rows: "
                                        "see the XLSX or HTML file"), new_x="LMARGIN", new_y="NEXT")
            return
        if t.note:
            pdf.set_font("Helvetica", "I", 8)
            pdf.multi_cell(0, 4, latin1(t.note), new_x="LMARGIN", new_y="NEXT")
            pdf.set_font("Helvetica", "", 8)
        if not t.rows:
            pdf.multi_cell(0, 5, latin1(t.empty_text), new_x="LMARGIN", new_y="NEXT")
            return
        align = tuple("RIGHT" if c.kind not in ("text", "date", "datetime") else "LEFT" for c in t.columns)
        with pdf.table(headings_style=heading, text_align=align, line_height=4.5, padding=1) as tbl:
            head = tbl.row()
            for c in t.columns:
                head.cell(latin1(c.heading))
            for row in t.rows:
                r = tbl.row()
                for c, v in zip(t.columns, row, strict=True):
                    r.cell(latin1(_text(v, c.kind)))

    heading_text("Ringkasan / Summary")
    with pdf.table(col_widths=(2, 3), first_row_as_headings=False, line_height=5, padding=1) as tbl:
        for k, v in report.summary:
            r = tbl.row()
            r.cell(latin1(k))
            r.cell(latin1(v))
    for chart in report.charts:
        # fpdf2 draws the SVG as vectors; it has no use for the accessibility <title> (and warns about it).
        svg = re.sub(r"<title>.*?</title>", "", chart.svg(latin1)).encode("utf-8")
        width_mm = 200.0
        needed = width_mm * _svg_height(svg) / _svg_width(svg)
        if pdf.get_y() + needed > pdf.h - 15:
            pdf.add_page()
        pdf.image(io.BytesIO(svg), x=pdf.l_margin, y=pdf.get_y() + 2, w=width_mm)
        pdf.set_y(pdf.get_y() + needed + 4)
        table(chart.data, "h3")
    for t in report.tables:
        table(t)
    return bytes(pdf.output())


def _svg_width(svg: bytes) -> float:
    return float(svg.split(b'width="', 1)[1].split(b'"', 1)[0])


def _svg_height(svg: bytes) -> float:
    return float(svg.split(b'height="', 1)[1].split(b'"', 1)[0])


def render(report: Report, fmt: str) -> bytes:
    """The report in one of FORMATS."""
    if fmt == "html":
        return to_html(report)
    if fmt == "xlsx":
        return to_xlsx(report)
    if fmt == "pdf":
        return to_pdf(report)
    raise ValueError(f"unknown report format {fmt!r}; use one of {', '.join(FORMATS)}")


def build_report(engine: Engine, month: str, fmt: Literal["xlsx", "pdf", "html"], office: str | None = None, *,
                 rules: WorkRules | None = None, now: datetime | None = None) -> bytes:
    """The monthly report of ``month`` ('YYYY-MM') for the regency, or one office, as xlsx / pdf / html bytes.

    ``engine`` is the central database's engine. ``rules`` (working days, office zone, silent threshold) default
    to Monday-Friday 06:30-17:30 in Asia/Jakarta; pass ``WorkRules.from_config(config)`` to follow the
    config. Raises ValueError for a bad month or format.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown report format {fmt!r}; use one of {', '.join(FORMATS)}")
    start, end = month_range(month)
    figures = collect(engine, start, end, rules, office=office, now=now)
    return render(build_model(figures, month.strip(), office), fmt)


__all__ = ["FORMATS", "MEDIA_TYPES", "Report", "build_model", "build_report", "render", "to_html", "to_pdf",
           "to_xlsx"]

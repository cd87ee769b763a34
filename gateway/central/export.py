"""Formats and reports over stored punches, shared by the BKD pull API and `fpgw export`.

    CentralStore.feed / iter_punches --rows--> render() (JSON / CSV / XLSX)
                                     --rows--> daily_recap() / completeness() --> render()
Pure functions over row dicts (no SQL, no HTTP), so the API and the CLI give identical files. A punch's
day is its office-local date (the date of its local_time), as in every punch query (gateway.store.central).
"""

from __future__ import annotations

import csv
import io
import json
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import date, datetime, timedelta
from typing import Any, BinaryIO, Literal

Format = Literal["json", "csv", "xlsx"]
FORMATS: tuple[str, ...] = ("json", "csv", "xlsx")
MEDIA_TYPES = {
    "json": "application/json",
    "csv": "text/csv; charset=utf-8",
    "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
}

#: Flags that make a punch's time untrustworthy; such punches are counted but never a first-in/last-out.
UNTRUSTED_FLAGS = frozenset({"future", "rtc_reset", "impossible_date"})

RECAP_COLUMNS = ("office_code", "date", "employee_id", "device_user_id", "first_in", "last_out", "punches",
                 "devices", "flagged")


def jsonable(value: Any) -> Any:
    """A value as it appears in JSON output (UTC instants end in Z, dates are ISO)."""
    if isinstance(value, datetime):
        text = value.isoformat(timespec="seconds")
        return text.replace("+00:00", "Z")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value


def _cell(value: Any) -> Any:
    # Flat cell value for CSV/XLSX: lists become "a,b", instants ISO text, None empty.
    if value is None:
        return ""
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(jsonable(value), ensure_ascii=False)
    if isinstance(value, datetime | date):
        return jsonable(value)
    return value


Extra = Mapping[str, Any] | Callable[[int], Mapping[str, Any]] | None


def write_json(rows: Iterable[Mapping[str, Any]], fp: BinaryIO, extra: Extra = None, key: str = "items") -> int:
    """Stream ``{key: [...], **extra}`` to a binary file row by row; returns the number of rows.

    ``extra`` may be a function of the row count (it is written after the rows).
    """
    n = 0
    fp.write(b"{" + json.dumps(key).encode() + b": [")
    for r in rows:
        fp.write((b", " if n else b"") + json.dumps(jsonable(dict(r)), ensure_ascii=False).encode())
        n += 1
    fp.write(b"]")
    for k, v in ((extra(n) if callable(extra) else extra) or {}).items():
        fp.write(b", " + json.dumps(k).encode() + b": " + json.dumps(jsonable(v), ensure_ascii=False).encode())
    fp.write(b"}")
    return n


def write_csv(rows: Iterable[Mapping[str, Any]], columns: Sequence[str], fp: BinaryIO) -> int:
    """Stream CSV with a header row (UTF-8 with BOM so Excel opens Indonesian names correctly)."""
    text = io.TextIOWrapper(fp, encoding="utf-8-sig", newline="", write_through=True)
    try:
        w = csv.writer(text, lineterminator="\r\n")
        w.writerow(columns)
        n = 0
        for r in rows:
            w.writerow([_cell(r.get(c)) for c in columns])
            n += 1
        text.flush()
    finally:
        text.detach()  # leave the caller's file open
    return n


def write_xlsx(rows: Iterable[Mapping[str, Any]], columns: Sequence[str], fp: BinaryIO,
               sheet: str = "punches") -> int:
    """An .xlsx workbook with one sheet (openpyxl write-only mode: rows go to a temp file, not memory)."""
    from openpyxl import Workbook
    from openpyxl.cell import WriteOnlyCell
    from openpyxl.cell.cell import ILLEGAL_CHARACTERS_RE

    wb = Workbook(write_only=True)
    ws = wb.create_sheet(sheet[:31])
    ws.append(list(columns))
    n = 0
    for r in rows:
        out = []
        for c in columns:
            v = _cell(r.get(c))
            if isinstance(v, str):
                # XML cannot hold control characters (a device may send them in a PIN); show them as U+FFFD
                # instead of failing the whole export. CSV and JSON carry them as they are.
                v = ILLEGAL_CHARACTERS_RE.sub("\ufffd", v)
            if isinstance(v, str) and v.startswith("="):
                # Device texts are data, never formulas (a PIN like "=1+1" must not be evaluated).
                cell = WriteOnlyCell(ws, value=v)
                cell.data_type = "s"
                out.append(cell)
            else:
                out.append(v)
        ws.append(out)
        n += 1
    wb.save(fp)
    return n


def write(rows: Iterable[Mapping[str, Any]], fmt: str, columns: Sequence[str], fp: BinaryIO, *,
          sheet: str = "punches", extra: Extra = None, key: str = "items") -> int:
    """Stream rows in the requested format (json / csv / xlsx) to a binary file; returns the row count."""
    if fmt == "json":
        return write_json(rows, fp, extra, key)
    if fmt == "csv":
        return write_csv(rows, columns, fp)
    if fmt == "xlsx":
        return write_xlsx(rows, columns, fp, sheet)
    raise ValueError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")


def render(rows: Iterable[Mapping[str, Any]], fmt: str, columns: Sequence[str], *, sheet: str = "punches",
           extra: Mapping[str, Any] | None = None, key: str = "items") -> bytes:
    """Rows in the requested format, in memory (API pages are bounded by their limit)."""
    buf = io.BytesIO()
    write(rows, fmt, columns, buf, sheet=sheet, extra=extra, key=key)
    return buf.getvalue()


def to_csv(rows: Iterable[Mapping[str, Any]], columns: Sequence[str]) -> bytes:
    """CSV bytes (see write_csv)."""
    return render(rows, "csv", columns)


def to_xlsx(rows: Iterable[Mapping[str, Any]], columns: Sequence[str], sheet: str = "punches") -> bytes:
    """XLSX bytes (see write_xlsx)."""
    return render(rows, "xlsx", columns, sheet=sheet)


def _local(row: Mapping[str, Any]) -> datetime | None:
    value = row.get("local_time")
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            return None
    return value


def _trusted(row: Mapping[str, Any]) -> bool:
    flags = row.get("flags") or ()
    if isinstance(flags, str):
        flags = flags.split(",")
    return not UNTRUSTED_FLAGS.intersection(flags)


def daily_recap(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per office, local date and employee: first in, last out and number of punches.

    An employee is the mapped employee_id (NIP), across every device of the office; an unmapped punch
    counts for its device user id. "first_in"/"last_out" are the earliest and latest trusted punch
    of the day whatever the in/out key pressed (staff forget the key; BKD rules use first/last);
    last_out is empty with a single punch. Punches with an untrusted time count under "flagged" only.
    """
    groups: dict[tuple[str, str, str, str], dict[str, Any]] = {}
    for r in rows:
        local = _local(r)
        if local is None:
            continue
        emp = r.get("employee_id") or ""
        pin = "" if emp else str(r.get("device_user_id") or "")
        key = (str(r.get("office_code")), local.date().isoformat(), emp, pin)
        g = groups.get(key)
        if g is None:
            g = groups[key] = {"times": [], "devices": set(), "flagged": 0}
        g["devices"].add(str(r.get("device_id")))
        if _trusted(r):
            g["times"].append(local)
        else:
            g["flagged"] += 1
    out = []
    for (office, day, emp, pin), g in sorted(groups.items()):
        times = sorted(g["times"])
        out.append({
            "office_code": office, "date": day, "employee_id": emp or None, "device_user_id": pin or None,
            "first_in": times[0].strftime("%H:%M:%S") if times else None,
            "last_out": times[-1].strftime("%H:%M:%S") if len(times) > 1 else None,
            "punches": len(times), "devices": sorted(g["devices"]), "flagged": g["flagged"],
        })
    return out


def date_range(start: date, end: date) -> list[date]:
    """Every date from start to end inclusive."""
    return [start + timedelta(days=i) for i in range((end - start).days + 1)]


def completeness(rows: Iterable[Mapping[str, Any]], devices: Iterable[Mapping[str, Any]], start: date, end: date,
                 workdays: Sequence[int] = (1, 2, 3, 4, 5)) -> dict[str, Any]:
    """Which devices reported punches on which days of [start, end].

    Devices are the known ones (from health reports) plus any seen in the punches. A working day
    (ISO weekday in ``workdays``) without a single punch from a device is a gap BKD should question:
    the device was broken, unplugged, or its log was not collected.
    """
    days = date_range(start, end)
    work = [d for d in days if d.isoweekday() in workdays]
    counts: dict[tuple[str, str], dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for r in rows:
        local = _local(r)
        if local is None or not (start <= local.date() <= end):
            continue
        counts[(str(r.get("office_code")), str(r.get("device_id")))][local.date().isoformat()] += 1
    known: dict[tuple[str, str], Mapping[str, Any]] = {(str(d["office_code"]), str(d["device_id"])): d
                                                       for d in devices}
    out = []
    for key in sorted(set(known) | set(counts)):
        info = known.get(key, {})
        per_day = {d.isoformat(): counts[key].get(d.isoformat(), 0) for d in days} if key in counts else \
            {d.isoformat(): 0 for d in days}
        out.append({
            "office_code": key[0], "device_id": key[1], "name": info.get("name"), "serial": info.get("serial"),
            "state": info.get("state"), "last_seen_at": info.get("last_seen_at"),
            "days_reported": sum(1 for v in per_day.values() if v), "punches": sum(per_day.values()),
            "missing_workdays": [d.isoformat() for d in work if not per_day[d.isoformat()]],
            "by_day": per_day,
        })
    return {"from": start.isoformat(), "to": end.isoformat(), "days": [d.isoformat() for d in days],
            "workdays": [d.isoformat() for d in work], "devices": out}


def completeness_table(report: Mapping[str, Any]) -> tuple[list[dict[str, Any]], list[str]]:
    """The completeness report flattened for CSV/XLSX: one row per device, one column per day."""
    columns = ["office_code", "device_id", "name", "serial", "state", "days_reported", "punches",
               "missing_workdays", *report["days"]]
    rows = []
    for dev in report["devices"]:
        row = {k: dev.get(k) for k in columns[:8]}
        row.update(dev["by_day"])
        rows.append(row)
    return rows, columns

"""Daily device report per office: which terminals delivered punches on which days, which were silent or offline.

    `fpgw report --from --to` --> build_report(): punches table (per device, per device-local day)
        + offline intervals from the alert history (the health model's start/end events) --> text / CSV / JSON
For BKD and the office's maintenance team: a working day with no punches on a reachable terminal is the
"installed but unused" device; offline minutes show how long nobody could have punched there.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from gateway.config import Config
from gateway.store.health import HealthRepo


@dataclass(frozen=True)
class DayRow:
    """One device on one day."""

    day: str
    device_id: str
    device_name: str
    serial: str | None
    #: Punches whose device-local time falls on this day.
    punches: int
    first_punch: str | None
    last_punch: str | None
    #: Minutes of this day (device-local, 00:00-24:00) the health model had the device offline.
    offline_min: int
    working_day: bool
    #: ok, silent (working day, reachable, no punch), offline (offline all working hours), partly_offline,
    #: no_data (not watched yet / day in the future), or rest_day.
    status: str


def _intervals(events: Iterable[tuple[datetime, str]], now: datetime) -> list[tuple[datetime, datetime]]:
    """Pair start/end events (oldest first) into closed intervals; an open one runs until ``now``."""
    out: list[tuple[datetime, datetime]] = []
    start: datetime | None = None
    for at, event in events:
        if event == "start" and start is None:
            start = at
        elif event == "end" and start is not None:
            out.append((start, at))
            start = None
    if start is not None:
        out.append((start, now))
    return out


def _overlap_s(intervals: Sequence[tuple[datetime, datetime]], lo: datetime, hi: datetime) -> float:
    return sum(max(0.0, (min(b, hi) - max(a, lo)).total_seconds()) for a, b in intervals)


def build_report(repo: HealthRepo, config: Config, day_from: date, day_to: date, *,
                 device_ids: Sequence[str] | None = None, now: datetime | None = None) -> list[DayRow]:
    """Rows for every enabled device and every day in [day_from, day_to], ordered by day then device."""
    if day_to < day_from:
        raise ValueError(f"--to {day_to} is before --from {day_from}")
    now = now or datetime.now(UTC)
    wh = config.health.working_hours
    devices = [d for d in repo.devices() if d.enabled and (not device_ids or d.device_id in device_ids)]
    counts = repo.punches_per_day(day_from.isoformat(), day_to.isoformat())
    history = repo.list_alerts(problems=["offline"], limit=1_000_000)
    offline: dict[str, list[tuple[datetime, datetime]]] = {}
    for d in devices:
        evs = [(a.created_at, a.event) for a in reversed(history) if a.device_id == d.device_id
               and a.event in ("start", "end")]
        offline[d.device_id] = _intervals(evs, now)
    tz_of = {dc.id: ZoneInfo(dc.timezone) for dc in config.devices}
    site_tz = ZoneInfo(config.site.timezone)
    rows: list[DayRow] = []
    day = day_from
    while day <= day_to:
        for d in devices:
            tz = tz_of.get(d.device_id, site_tz)
            n, first, last = counts.get((d.device_id, day.isoformat()), (0, None, None))
            lo = datetime.combine(day, time(0), tzinfo=tz)
            hi = lo + timedelta(days=1)
            off_s = _overlap_s(offline[d.device_id], lo, min(hi, now))
            working = day.isoweekday() in wh.days
            w_lo = datetime.combine(day, wh.start, tzinfo=tz)
            w_hi = datetime.combine(day, wh.end, tzinfo=tz)
            work_s = max(0.0, (w_hi - w_lo).total_seconds())
            off_work_s = _overlap_s(offline[d.device_id], w_lo, min(w_hi, now))
            if n > 0:
                status = "ok" if off_work_s == 0 else "partly_offline"
            elif lo >= now or hi <= d.created_at:
                status = "no_data"  # in the future, or before the gateway knew the device
            elif not working:
                status = "rest_day"
            elif work_s and off_work_s >= work_s - 60:
                status = "offline"
            elif off_work_s > 0:
                status = "partly_offline"
            else:
                status = "silent"
            rows.append(DayRow(day=day.isoformat(), device_id=d.device_id, device_name=d.name, serial=d.serial,
                               punches=n, first_punch=first, last_punch=last, offline_min=round(off_s / 60),
                               working_day=working, status=status))
        day += timedelta(days=1)
    return rows


def render_text(rows: Sequence[DayRow], config: Config) -> str:
    """A plain table for the terminal (and for pasting into a chat)."""
    site = config.site
    head = (f"Laporan harian perangkat / daily device report - {site.office_name or site.office_code} "
            f"({site.office_code})")
    cols = ("day", "device", "punches", "first", "last", "offline", "status")
    table = [cols] + [(r.day, r.device_id, str(r.punches), r.first_punch or "-", r.last_punch or "-",
                       f"{r.offline_min} min" if r.offline_min else "-", r.status) for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(cols))]
    lines = [head, ""] + ["  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)).rstrip() for line in table]
    silent = sorted({r.device_id for r in rows if r.status == "silent"})
    down = sorted({r.device_id for r in rows if r.status in ("offline", "partly_offline")})
    lines.append("")
    lines.append(f"silent on a working day: {', '.join(silent) or 'none'}")
    lines.append(f"offline during working hours: {', '.join(down) or 'none'}")
    return "\n".join(lines) + "\n"


def render_csv(rows: Sequence[DayRow]) -> str:
    """CSV with a header row (for spreadsheets)."""
    buf = io.StringIO()
    fields = list(DayRow.__dataclass_fields__)
    w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow(asdict(r))
    return buf.getvalue()


def render_json(rows: Sequence[DayRow], config: Config, day_from: date, day_to: date) -> str:
    """JSON document with the office and the rows."""
    return json.dumps({"office": {"code": config.site.office_code, "name": config.site.office_name},
                       "from": day_from.isoformat(), "to": day_to.isoformat(),
                       "rows": [asdict(r) for r in rows]}, indent=2) + "\n"

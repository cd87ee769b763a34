"""Deterministic, seeded generator of users and attendance history for one simulated device.

Used by ``device.py`` when a device is created (history) and while it runs (new punches).
Looks like an Indonesian local-government office: 18-digit NIP user ids where the record
layout can carry them, Indonesian names, Mon–Fri office hours in the device's local time.
Everything comes from a ``random.Random`` seeded per device, so the same spec gives the same
data (history dates are relative to ``start_date`` or to "today").
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import date, datetime, timedelta

from simulators.zk.protocol import User, encode_fields, encode_time

_FIRST = [
    "Agus", "Budi", "Dewi", "Siti", "Rina", "Eko", "Sri", "Joko", "Wahyu", "Yuni", "Andi", "Ratna",
    "Hendra", "Nur", "Fitri", "Bambang", "Sutrisno", "Endang", "Dedi", "Lestari", "Rudi", "Wati",
    "Ahmad", "Yanti", "Hadi", "Indah", "Iwan", "Kartini", "Slamet", "Tuti", "Made", "Ketut", "Putu",
    "Wayan", "Dian", "Taufik", "Arif", "Rizky", "Dwi", "Tri", "Hery", "Mega", "Nining", "Asep",
    "Ujang", "Euis", "Cecep", "Teguh", "Ayu", "Nyoman", "Fajar", "Gita", "Ilham", "Lina", "Maya",
    "Novi", "Putri", "Rahmat", "Yusuf", "Zainal"
]
_LAST = [
    "Santoso", "Wijaya", "Saputra", "Lestari", "Hidayat", "Kusuma", "Pratama", "Nugroho",
    "Setiawan", "Rahayu", "Siregar", "Nasution", "Harahap", "Simanjuntak", "Wibowo", "Susanto",
    "Gunawan", "Purnama", "Hakim", "Syahputra", "Suryani", "Permana", "Ramadhan", "Maulana",
    "Hasibuan", "Lubis", "Sembiring", "Tanjung", "Panjaitan", "Sitompul", "Kurniawan", "Firmansyah",
    "Utami", "Anggraini", "Handayani", "Sulistyo", "Prasetyo", "Hartono", "Marpaung", "Manurung"
]

#: Verify modes (§4.3): fingerprint dominates, then face, card, password.
_VERIFY_WEIGHTS = ((1, 80), (15, 11), (4, 6), (3, 3))

WORKDAY_START = 7 * 3600  # earliest arrival, seconds after midnight
ARRIVAL_SPREAD = 90 * 60  # arrivals 07:00–08:30
LEAVE_START = 15 * 3600 + 30 * 60
LEAVE_SPREAD = 90 * 60  # leaves 15:30–17:00


def numeric_ids_needed(user_layout: int, record_layout: int) -> bool:
    """True when user ids must be numeric u32 (28-byte users or 16-byte records)."""
    return user_layout == 28 or record_layout == 16


def make_nip(rng: random.Random, seq: int) -> str:
    """An 18-digit NIP: birth date YYYYMMDD, appointment YYYYMM, sex digit, 3-digit sequence."""
    birth = date(1965, 1, 1) + timedelta(days=rng.randrange(0, 34 * 365))
    appoint_year = min(birth.year + rng.randint(21, 30), 2024)
    appoint_month = rng.randint(1, 12)
    sex = rng.choice((1, 2))
    return f"{birth:%Y%m%d}{appoint_year:04d}{appoint_month:02d}{sex}{seq % 1000:03d}"


def make_name(rng: random.Random, max_len: int) -> str:
    """An Indonesian name of at most ``max_len`` characters."""
    first = rng.choice(_FIRST)
    if max_len < 12:
        return first[:max_len]
    name = f"{first} {rng.choice(_LAST)}"
    if len(name) + 6 <= max_len and rng.random() < 0.3:
        name = f"{rng.choice(_FIRST)} {name}"
    return name[:max_len]


def make_users(n: int, *, seed: int, user_layout: int, numeric_ids: bool) -> list[User]:
    """``n`` users with uids 1..n; NIP ids unless ``numeric_ids``; a couple of admins."""
    rng = random.Random(f"users:{seed}")
    users: list[User] = []
    seen: set[str] = set()
    name_len = 7 if user_layout == 28 else 23
    for i in range(n):
        uid = i + 1
        if numeric_ids:
            user_id = str(1000 + uid)
        else:
            user_id = make_nip(rng, uid)
            while user_id in seen:
                user_id = make_nip(rng, uid)
        seen.add(user_id)
        users.append(User(
            uid=uid,
            user_id=user_id,
            name=make_name(rng, name_len),
            privilege=14 if i < max(1, n // 100) and n > 1 else 0,
            password=f"{rng.randrange(10000):04d}" if rng.random() < 0.05 else "",
            card=rng.randrange(1_000_000, 16_000_000) if rng.random() < 0.3 else 0,
            group=1,
        ))
    return users


def preferred_verify(rng: random.Random) -> int:
    """A user's usual verify mode."""
    modes = [m for m, _ in _VERIFY_WEIGHTS]
    weights = [w for _, w in _VERIFY_WEIGHTS]
    return rng.choices(modes, weights)[0]


def _day_punches(rng: random.Random, day: date, n_users: int,
                 prefs: list[int]) -> list[tuple[int, int, int, int]]:
    """One working day: (encoded time, uid, state, verify), sorted, unique per user+second."""
    out: list[tuple[int, int, int, int]] = []
    base = encode_fields(day.year, day.month, day.day, 0, 0, 0)
    rand = rng.random
    for uid in range(1, n_users + 1):
        if rand() < 0.04:  # leave, sick, duty travel
            continue
        verify = prefs[uid - 1] if rand() < 0.9 else preferred_verify(rng)
        arrive = WORKDAY_START + int(rand() * ARRIVAL_SPREAD)
        leave = LEAVE_START + int(rand() * LEAVE_SPREAD)
        out.append((base + arrive, uid, 0, verify))
        r = rand()
        if r < 0.06:  # lunch break out/in
            brk = 12 * 3600 + int(rand() * 1800)
            out.append((base + brk, uid, 2, verify))
            out.append((base + brk + 1800 + int(rand() * 1800), uid, 3, verify))
        if rand() < 0.97:  # some forget to punch out
            out.append((base + leave, uid, 1, verify))
        if r > 0.96:  # overtime in/out after leaving
            ot = leave + 600 + int(rand() * 1800)
            out.append((base + ot, uid, 4, verify))
            out.append((base + ot + 3600 + int(rand() * 3600), uid, 5, verify))
    out.sort()
    return out


def _working_days(start: date, step: int) -> Iterator[date]:
    day = start
    while True:
        if day.weekday() < 5:
            yield day
        day += timedelta(days=step)


def make_history(records: int, *, seed: int, n_users: int, prefs: list[int],
                 start_date: date | None, today: date) -> list[tuple[int, int, int, int]]:
    """Exactly ``records`` punches in chronological order.

    With ``start_date`` the history runs forward from it; otherwise it ends yesterday and
    reaches back as many working days as needed.
    """
    if records <= 0 or n_users <= 0:
        return []
    rng = random.Random(f"history:{seed}")
    if start_date is not None:
        out: list[tuple[int, int, int, int]] = []
        for day in _working_days(start_date, 1):
            out.extend(_day_punches(rng, day, n_users, prefs))
            if len(out) >= records:
                return out[:records]
    days: list[list[tuple[int, int, int, int]]] = []
    total = 0
    for day in _working_days(today - timedelta(days=1), -1):
        block = _day_punches(rng, day, n_users, prefs)
        days.append(block)
        total += len(block)
        if total >= records:
            break
    days.reverse()
    flat = [p for block in days for p in block]
    return flat[len(flat) - records:]


def state_for(now: datetime, rng: random.Random) -> int:
    """Attendance state a person would pick at ``now``: in before noon, out after."""
    r = rng.random()
    if r < 0.03:
        return rng.choice((2, 3))
    if r < 0.05:
        return rng.choice((4, 5))
    return 0 if now.hour < 12 else 1


def garble(t: datetime) -> int:
    """An impossible encoded time near ``t``: day 31 of a 30-day month or Feb 30/31."""
    month = (2, 4, 6, 9, 11)[t.second % 5]
    day = 30 + (t.minute % 2) if month == 2 else 31
    return encode_fields(t.year, month, day, t.hour, t.minute, t.second)


__all__ = ["encode_time", "garble", "make_history", "make_users", "numeric_ids_needed",
           "preferred_verify", "state_for"]

"""The SQLite insert's table-driven datetime text (gateway.store.punches._WallClockText) is exactly the text
``isoformat`` gives, which is what SQLAlchemy's DATETIME stores on SQLite, for any datetime, naive or aware."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from hypothesis import given
from hypothesis import strategies as st

from gateway.store.punches import _WallClockText

zones = st.one_of(st.none(), st.just(UTC),
                  st.integers(-23 * 60, 23 * 60).map(lambda m: timezone(timedelta(minutes=m))))


@given(st.lists(st.datetimes(timezones=zones), min_size=1, max_size=50))
def test_wall_clock_text_is_isoformat_cut_to_the_wall_clock(values: list[datetime]) -> None:
    text = _WallClockText()  # one per batch: its day table fills as the batch goes
    assert [text(v) for v in values] == [v.isoformat(" ", "microseconds")[:26] for v in values]

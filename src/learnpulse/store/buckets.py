"""Local calendar days and Monday-start weeks of instants, as SQL, in an IANA time zone.

PostgreSQL does it natively (``AT TIME ZONE``). SQLite has no time zones, so instants are stored as epoch
microseconds and the zone's UTC offset is a piecewise-constant function of the instant: we read its transitions
from the tz database for the span of the data and emit ``CASE WHEN t < t1 THEN off0 WHEN t < t2 THEN off1 ... END``.
Then local day number = floor((t / 1e6 + offset) / 86400) and the week starts ``(day + 3) % 7`` days earlier
(day 0, 1970-01-01, was a Thursday).
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from learnpulse.store.types import to_epoch_us


def utc_offset_transitions(tz: ZoneInfo, start: datetime, end: datetime) -> tuple[int, list[tuple[int, int]]]:
    """Offset (seconds) in force at ``start`` and the (epoch second, new offset) changes up to ``end``.

    Transitions are found by scanning in 6-hour steps and bisecting to the second, which is exact for every
    zone in the tz database (no zone changes offset twice within six hours).
    """

    def offset(at: datetime) -> int:
        delta = at.astimezone(tz).utcoffset()
        assert delta is not None
        return int(delta.total_seconds())

    first = offset(start)
    changes: list[tuple[int, int]] = []
    step = timedelta(hours=6)
    lo, current = start, first
    while lo < end:
        hi = min(lo + step, end)
        if offset(hi) != current:
            a, b = int(lo.timestamp()), int(hi.timestamp())
            while b - a > 1:  # invariant: offset(a) == current != offset(b)
                mid = (a + b) // 2
                if offset(datetime.fromtimestamp(mid, UTC)) == current:
                    a = mid
                else:
                    b = mid
            current = offset(datetime.fromtimestamp(b, UTC))
            changes.append((b, current))
        lo = hi
    return first, changes


def _sqlite_offset_expr(column: str, tz: ZoneInfo, start: datetime, end: datetime) -> str:
    first, changes = utc_offset_transitions(tz, start - timedelta(days=2), end + timedelta(days=2))
    if not changes:
        return str(first)
    whens = []
    current = first
    for at_second, new_offset in changes:
        whens.append(f"WHEN {column} < {at_second * 1_000_000} THEN {current}")
        current = new_offset
    return f"(CASE {' '.join(whens)} ELSE {current} END)"


def local_day_number_sql(column: str, tz: ZoneInfo, start: datetime, end: datetime) -> str:
    """SQLite: integer local day number (days since 1970-01-01) of an epoch-microsecond column."""
    return f"(({column} / 1000000 + {_sqlite_offset_expr(column, tz, start, end)}) / 86400)"


def day_sql(dialect: str, column: str, tz: ZoneInfo, start: datetime, end: datetime) -> str:
    """SQL for the local calendar day of an instant column (a DATE on PostgreSQL, 'YYYY-MM-DD' on SQLite)."""
    if dialect == "postgresql":
        return f"CAST(({column} AT TIME ZONE '{tz.key}') AS DATE)"
    return f"date({local_day_number_sql(column, tz, start, end)} * 86400, 'unixepoch')"


def week_start_of_day_sql(dialect: str, day_column: str) -> str:
    """SQL for the Monday on or before a DATE column (as stored by each dialect)."""
    if dialect == "postgresql":
        return f"CAST(date_trunc('week', {day_column}) AS DATE)"
    # strftime('%w'): 0 = Sunday ... 6 = Saturday; days back to Monday = (w + 6) % 7.
    return f"date({day_column}, '-' || ((CAST(strftime('%w', {day_column}) AS INTEGER) + 6) % 7) || ' days')"


def local_day_start_utc(day: date, tz: ZoneInfo) -> datetime:
    """The UTC instant at which local ``day`` begins."""
    return datetime.combine(day, time.min, tzinfo=tz).astimezone(UTC)


def instant_param(dialect: str, value: datetime) -> object:
    """Bind value for comparing with a UTCTimestamp column in raw SQL."""
    return to_epoch_us(value) if dialect == "sqlite" else value


def date_param(dialect: str, value: date) -> object:
    """Bind value for comparing with a DATE column in raw SQL (SQLite stores dates as ISO text)."""
    return value.isoformat() if dialect == "sqlite" else value


def week_start(day: date) -> date:
    return day - timedelta(days=day.weekday())


def complete_weeks(as_of: date, weeks: int) -> tuple[date, date]:
    """(Monday of the first, Monday of the last) of the ``weeks`` complete local weeks ending by ``as_of``: the last
    is the week of ``as_of`` when ``as_of`` is a Sunday, else the week before."""
    last = week_start(as_of) if as_of.weekday() == 6 else week_start(as_of) - timedelta(days=7)
    return last - timedelta(days=7 * (weeks - 1)), last


def day_number(day: date) -> int:
    """Days since 1970-01-01: the integer form of a local date in the stores' numeric frames."""
    return (day - date(1970, 1, 1)).days

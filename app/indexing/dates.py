"""FHIR date/dateTime/instant text -> the inclusive UTC instant range it denotes.

A FHIR date value means every instant within its precision ("2024-03" is all of March), so the
index stores ``[low, high]`` and every search prefix becomes a range comparison. The rule for
values without a zone (plain dates, and dateTimes sent without an offset, which FHIR forbids but
senders still do): they are wall-clock times in the server zone (default Europe/London). Each end
of the range is converted on its own, so a day on which the clocks change is 23 or 25 hours long.
A wall-clock time that falls into a DST gap or overlap takes the offset in force before the change
(``fold=0``): 01:30 on a spring-forward day in London is 01:30Z.

The search layer should parse query values with the same function so both sides agree.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

__all__ = ["MIN_DATETIME", "MAX_DATETIME", "DEFAULT_TZ", "date_range", "period_range"]

MIN_DATETIME = datetime(1, 1, 1)
MAX_DATETIME = datetime(9999, 12, 31, 23, 59, 59, 999999)
DEFAULT_TZ = ZoneInfo("Europe/London")
_ONE_US = timedelta(microseconds=1)
_ONE_SECOND = timedelta(seconds=1)
_ONE_MINUTE = timedelta(minutes=1)
_ONE_DAY = timedelta(days=1)
_LAST_DAY = MAX_DATETIME.date()
_LAST_STEP = datetime(9999, 12, 31, 23, 59)

_DATE = re.compile(
    r"^(\d{4})(?:-(\d{2})(?:-(\d{2})"
    r"(?:T(\d{2}):(\d{2})(?::(\d{2})(?:\.(\d+))?)?(Z|[+-]\d{2}:\d{2})?)?)?)?$"
)


_OFFSETS: dict[str, timedelta] = {}


def _offset(zone_text: str) -> timedelta | None:
    off = _OFFSETS.get(zone_text)
    if off is None:
        if zone_text == "Z":
            off = timedelta(0)
        else:
            hh, mm = int(zone_text[1:3]), int(zone_text[4:6])
            if hh > 23 or mm > 59:
                return None
            off = timedelta(hours=hh, minutes=mm) * (-1 if zone_text[0] == "-" else 1)
        _OFFSETS[zone_text] = off
    return off


def _to_utc(local: datetime, zone: ZoneInfo | None, offset: timedelta | None) -> datetime:
    """Wall-clock ``local`` in ``zone`` (or at a fixed ``offset``) as naive UTC."""
    try:
        if zone is not None:
            offset = zone.utcoffset(local)  # fold=0: the offset before a DST change
        return local - offset
    except OverflowError:
        return MIN_DATETIME if local.year < 5000 else MAX_DATETIME


@lru_cache(maxsize=8192)
def date_range(text: str, tz: ZoneInfo | None = None) -> tuple[datetime, datetime] | None:
    """``[low, high]`` as naive UTC datetimes, both inclusive; ``None`` if not a FHIR date."""
    m = _DATE.match(text) if isinstance(text, str) else None
    if m is None:
        return None
    year, month, day, hour, minute, second, frac, zone_text = m.groups()
    try:
        y = int(year)
        if month is None:
            low = datetime(y, 1, 1)
            nxt = datetime(y + 1, 1, 1) if y < 9999 else None
        elif day is None:
            mo = int(month)
            low = datetime(y, mo, 1)
            nxt = datetime(y + mo // 12, mo % 12 + 1, 1) if (y, mo) < (9999, 12) else None
        elif hour is None:
            low = datetime(y, int(month), int(day))
            nxt = low + _ONE_DAY if low.date() < _LAST_DAY else None
        else:
            if second is None:
                low = datetime(y, int(month), int(day), int(hour), int(minute))
                step = _ONE_MINUTE
            elif frac is None:
                low = datetime(y, int(month), int(day), int(hour), int(minute), int(second))
                step = _ONE_SECOND
            else:
                digits = min(len(frac), 6)
                low = datetime(y, int(month), int(day), int(hour), int(minute), int(second),
                               int(frac[:6].ljust(6, "0")))
                step = timedelta(microseconds=10 ** (6 - digits))
            nxt = low + step if low < _LAST_STEP else None
    except ValueError:  # month 13, Feb 30, hour 24, leap second ...
        return None
    if zone_text is None:
        zone, offset = tz or DEFAULT_TZ, None
    else:
        zone, offset = None, _offset(zone_text)
        if offset is None:
            return None
    lo = _to_utc(low, zone, offset)
    hi = MAX_DATETIME if nxt is None else _to_utc(nxt, zone, offset) - _ONE_US
    return lo, max(lo, hi)


def period_range(
    start: str | None, end: str | None, tz: ZoneInfo | None = None
) -> tuple[datetime, datetime] | None:
    """A Period's range: an open start or end reaches the ends of representable time."""
    lo = date_range(start, tz) if start else None
    hi = date_range(end, tz) if end else None
    if (start and lo is None) or (end and hi is None) or (not start and not end):
        return None
    low = lo[0] if lo else MIN_DATETIME
    high = hi[1] if hi else MAX_DATETIME
    return low, max(low, high)

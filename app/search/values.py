"""Parsing of single search values (dates, numbers, strings) into typed values.

Kept apart from the parameter grammar so the rules (precision ranges, time zones, string
normalisation) are stated once and unit-tested directly.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation
from zoneinfo import ZoneInfo

from app.fhir.errors import FhirError
from app.indexing.normalize import normalize_string as _normalize

PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap")
DEFAULT_TZ = ZoneInfo("Europe/London")

# ASCII digits only (``\d`` would take any script's), and the whole text (``fullmatch``: ``$``
# would accept a final newline).
_DATE_RE = re.compile(
    r"(?P<y>[0-9]{4})(?:-(?P<m>[0-9]{2})(?:-(?P<d>[0-9]{2})"
    r"(?:T(?P<H>[0-9]{2}):(?P<M>[0-9]{2})(?::(?P<S>[0-9]{2})(?:\.(?P<f>[0-9]{1,9}))?)?"
    r"(?P<tz>Z|[+-](?:(?:0[0-9]|1[0-3]):[0-5][0-9]|14:00))?)?)?)?"
)
# FHIR's decimal (datatypes.html#decimal): no leading '+', no leading zeros, digits on both
# sides of a point; an exponent as the spec's regex allows.
_DECIMAL_RE = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
_ONE_US = timedelta(microseconds=1)


def bad_value(param: str, message: str) -> FhirError:
    """A 400 naming the parameter, for any malformed value (always, strict or lenient)."""
    return FhirError(400, "value", f"Invalid value for search parameter '{param}': {message}",
                     expression=[param])


def split_prefix(param: str, raw: str) -> tuple[str, str]:
    """Split an optional two-letter comparison prefix off a date/number/quantity value."""
    if len(raw) >= 2 and raw[:2].isalpha() and raw[:2].islower():
        p = raw[:2]
        if p not in PREFIXES:
            raise bad_value(param, f"unknown prefix '{p}'")
        return p, raw[2:]
    return "eq", raw


def _add_months(dt: datetime, months: int) -> datetime:
    y, m = divmod(dt.month - 1 + months, 12)
    return dt.replace(year=dt.year + y, month=m + 1)


def parse_date_range(param: str, text: str, tz: ZoneInfo | None = None) -> tuple[datetime, datetime]:
    """A FHIR date/dateTime/instant as an inclusive naive-UTC range ``[low, high]``.

    The range is the whole period the value's precision denotes (``2020`` is all of 2020).
    Zone-less values are read in the server zone ``tz`` (DST handled by zoneinfo: a local
    period's start and end are each converted, so a day in spring is 23 hours long).
    """
    tz = tz or DEFAULT_TZ
    m = _DATE_RE.fullmatch(text)
    if not m:
        raise bad_value(param, f"'{text}' is not a FHIR date, dateTime or instant")
    g = m.groupdict()
    try:
        year = int(g["y"])
        month = int(g["m"] or 1)
        day = int(g["d"] or 1)
        hour = int(g["H"] or 0)
        minute = int(g["M"] or 0)
        second = int(g["S"] or 0)
        frac = g["f"] or ""
        micro = int((frac + "000000")[:6]) if frac else 0
        zone: timezone | ZoneInfo
        if g["tz"] == "Z":
            zone = UTC
        elif g["tz"]:
            sign = -1 if g["tz"][0] == "-" else 1
            hh, mm = int(g["tz"][1:3]), int(g["tz"][4:6])
            zone = timezone(sign * timedelta(hours=hh, minutes=mm))
        else:
            zone = tz
        start = datetime(year, month, day, hour, minute, second, micro, tzinfo=zone)
        return _range(start, g, frac)
    except (ValueError, OverflowError) as e:
        raise bad_value(param, f"'{text}': {e}") from None


def _range(start: datetime, g: dict, frac: str) -> tuple[datetime, datetime]:
    """The precision period starting at ``start``, as inclusive naive UTC.

    Periods running past year 9999 (or before year 1) are clamped to the representable range,
    the same open ends the indexer uses for Periods.
    """
    try:
        if g["f"]:
            end = start + timedelta(microseconds=max(1, 10 ** (6 - min(len(frac), 6))))
        elif g["S"]:
            end = start + timedelta(seconds=1)
        elif g["M"]:
            end = start + timedelta(minutes=1)
        elif g["d"]:
            end = start + timedelta(days=1)
        elif g["m"]:
            end = _add_months(start, 1)
        else:
            end = start.replace(year=start.year + 1)
    except (ValueError, OverflowError):  # the period runs past 9999-12-31
        return _utc(start), datetime.max
    return _utc(start), _utc(end - _ONE_US)


def _utc(dt: datetime) -> datetime:
    """Aware -> naive UTC, clamped to datetime.min/max when the offset leaves years 1..9999."""
    try:
        return dt.astimezone(UTC).replace(tzinfo=None)
    except (ValueError, OverflowError):
        return datetime.min if dt.year < 5000 else datetime.max


def parse_decimal(param: str, text: str) -> tuple[Decimal, Decimal, Decimal]:
    """A decimal with its implicit precision range ``[low, high)`` (``5.4`` -> [5.35, 5.45)).

    Why: the spec says eq on a number matches the range implied by the significant figures.
    """
    if not _DECIMAL_RE.fullmatch(text or "") or len(text) > 64:
        raise bad_value(param, f"'{text}' is not a number")
    try:
        d = Decimal(text)
    except InvalidOperation:
        raise bad_value(param, f"'{text}' is not a number") from None
    exp = d.as_tuple().exponent
    if not isinstance(exp, int) or abs(exp) > 300 or abs(d.adjusted()) > 300:
        raise bad_value(param, f"'{text}' is out of range")
    assert isinstance(exp, int)
    half = Decimal(5) * Decimal(10) ** (exp - 1)
    return d, d - half, d + half


def normalize_string(s: str) -> str:
    """The index's ``value_norm`` rule, taken from the indexer so both sides always agree."""
    return _normalize(s)

"""Date: prefixes over *ranges* of both the query value and the stored value.

Stored rows are inclusive ``[low, high]`` (naive UTC); the query is ``[ql, qh]`` likewise.
Rules (http://hl7.org/fhir/R4/search.html#prefix):
  eq  stored range lies within the query range       low >= ql and high <= qh
  ne  not eq
  gt  the stored range extends above the query        high > qh
  lt  the stored range extends below the query        low < ql
  ge  gt or eq;  le  lt or eq
  sa  stored starts after the query ends              low > qh
  eb  stored ends before the query starts             high < ql
  ap  ranges overlap once the query is widened by 10% of the distance between the query and
      now, and by at least one day on each side.
``_lastUpdated`` is a point in time: the same rules with low = high = the column.
``ge``/``le`` also carry the bound they imply (``high >= ql`` / ``low <= qh``), for the index.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, not_, or_

from app.search.expr import DateValue

AP_MIN = timedelta(days=1)
AP_FRACTION = 0.10


def ap_widen(v: DateValue, now: datetime | None = None) -> tuple[datetime, datetime]:
    """The widened query range for ``ap`` (see module docstring)."""
    now = now or datetime.now(UTC).replace(tzinfo=None)
    mid = v.low + (v.high - v.low) / 2
    delta = max(AP_MIN, abs(now - mid) * AP_FRACTION)
    lo = v.low - delta if v.low - datetime.min > delta else datetime.min
    hi = v.high + delta if datetime.max - v.high > delta else datetime.max
    return lo, hi


def range_condition(low: Any, high: Any, v: DateValue) -> ColumnElement[bool]:
    """The prefix rule over a stored range given as two column expressions."""
    ql, qh = v.low, v.high
    eq = and_(low >= ql, high <= qh)
    p = v.prefix
    if p == "eq":
        return eq
    if p == "ne":
        return not_(eq)
    if p == "gt":
        return high > qh
    if p == "lt":
        return low < ql
    # ge/le: both alternatives imply a plain bound (``high >= ql`` for ge, since low <= high and
    # an eq row has low >= ql; ``low <= qh`` for le); it is ANDed so an index range scan can
    # start there instead of reading every row of the parameter (the OR alone is not sargable).
    if p == "ge":
        return and_(high >= ql, or_(high > qh, eq))
    if p == "le":
        return and_(low <= qh, or_(low < ql, eq))
    if p == "sa":
        return low > qh
    if p == "eb":
        return high < ql
    if p == "ap":
        lo, hi = ap_widen(v)
        return and_(low <= hi, high >= lo)
    raise ValueError(p)


def envelope_condition(low: Any, high: Any, v: DateValue) -> ColumnElement[bool] | None:
    """What a resource's date *envelope* (the earliest ``low`` and latest ``high`` of all its rows)
    must satisfy for some row to match ``v``: implied by :func:`range_condition` of that row,
    since the row lies inside the envelope.  None where no such bound is worth having (``ne``
    holds for rows anywhere; ``ap`` is not worth a second widening)."""
    ql, qh = v.low, v.high
    p = v.prefix
    if p == "eq":
        return and_(low <= qh, high >= ql)
    if p in ("gt", "sa"):  # the row ends (sa: starts, so ends too) after the query ends
        return high > qh
    if p in ("lt", "eb"):  # the row starts (eb: ends, so starts too) before the query starts
        return low < ql
    if p == "ge":
        return high >= ql
    if p == "le":
        return low <= qh
    return None


def condition(t: Any, v: DateValue, modifier: str | None = None) -> ColumnElement[bool]:
    """Row predicate on an sp_date row."""
    return range_condition(t.c.low, t.c.high, v)

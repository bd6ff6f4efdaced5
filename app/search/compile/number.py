"""Number: prefixes against a stored point value; ``eq`` uses the query's implicit precision.

``5.4`` matches [5.35, 5.45); ``100`` matches [99.5, 100.5).  gt/lt/ge/le compare with the exact
value; sa/eb behave as gt/lt (a stored number is a point); ``ap`` is +-10% of the value (or the
precision range for 0).

Stored values are doubles.  A query value written with as many digits as a double holds
(``85.24786084320948``, as Synthea writes them) has a precision range narrower than the gap
between two doubles, and its upper end can round to the very double the value itself rounds to:
then the range's end is inclusive, so a value always matches itself (:func:`_range`).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from sqlalchemy import ColumnElement, and_, or_

from app.search.expr import NumberValue


def value_condition(col: Any, v: NumberValue, scale: Any = None) -> ColumnElement[bool]:
    """The prefix rule on one numeric column; ``scale`` maps a Decimal bound to the column's unit."""
    f = scale or (lambda d: float(d))
    p = v.prefix
    if p == "eq":
        return _within(col, v, f)
    if p == "ne":
        low, high, closed = _range(v, f)
        return or_(col < low, col > high if closed else col >= high)
    if p in ("gt", "sa"):
        return col > f(v.value)
    if p in ("lt", "eb"):
        return col < f(v.value)
    if p == "ge":
        return col >= f(v.value)
    if p == "le":
        return col <= f(v.value)
    if p == "ap":
        if v.value == 0:
            return _within(col, v, f)
        d = abs(v.value) * Decimal("0.1")
        return and_(col >= f(v.value - d), col <= f(v.value + d))
    raise ValueError(p)


def _within(col: Any, v: NumberValue, f: Any) -> ColumnElement[bool]:
    """``col`` inside the value's precision range (see :func:`_range`)."""
    low, high, closed = _range(v, f)
    return and_(col >= low, col <= high if closed else col < high)


def _range(v: NumberValue, f: Any) -> tuple[float, float, bool]:
    """The precision range [low, high) as doubles, and whether its end must be inclusive: when
    ``high`` rounds to the same double as the value (rounding is monotonic, so ``low`` never
    passes it), ``< high`` would exclude the value itself."""
    low, high = f(v.low), f(v.high)
    return low, high, high <= f(v.value)


def condition(t: Any, v: NumberValue, modifier: str | None = None) -> ColumnElement[bool]:
    """Row predicate on an sp_number row."""
    return value_condition(t.c.value, v)

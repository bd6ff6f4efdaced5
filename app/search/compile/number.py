"""Number: prefixes against a stored point value; ``eq`` uses the query's implicit precision.

``5.4`` matches [5.35, 5.45); ``100`` matches [99.5, 100.5).  gt/lt/ge/le compare with the exact
value; sa/eb behave as gt/lt (a stored number is a point); ``ap`` is +-10% of the value (or the
precision range for 0).
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
        return and_(col >= f(v.low), col < f(v.high))
    if p == "ne":
        return or_(col < f(v.low), col >= f(v.high))
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
            return and_(col >= f(v.low), col < f(v.high))
        d = abs(v.value) * Decimal("0.1")
        return and_(col >= f(v.value - d), col <= f(v.value + d))
    raise ValueError(p)


def condition(t: Any, v: NumberValue, modifier: str | None = None) -> ColumnElement[bool]:
    """Row predicate on an sp_number row."""
    return value_condition(t.c.value, v)

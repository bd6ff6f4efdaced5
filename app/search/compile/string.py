"""String: case- and accent-insensitive prefix by default, ``:exact``, ``:contains``."""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, true

from app.search.compile._util import like_escape, prefix_condition
from app.search.expr import StringValue


def condition(t: Any, v: StringValue, modifier: str | None = None) -> ColumnElement[bool]:
    """Row predicate on an sp_string row; the query value was normalised like ``value_norm``."""
    if modifier == "exact":
        return t.c.value == v.raw
    if modifier == "contains":
        return t.c.value_norm.like("%" + like_escape(v.norm) + "%", escape="\\")
    if not v.norm:
        return true()
    return prefix_condition(t.c.value_norm, v.norm)

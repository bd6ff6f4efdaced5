"""Token: exact code/system matching, with ``|code`` meaning "no system" and ``system|`` any code."""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, and_

from app.search.compile import string
from app.search.expr import StringValue, TokenValue


def condition(t: Any, v: TokenValue | StringValue, modifier: str | None = None) -> ColumnElement[bool]:
    """Row predicate on an sp_token row (or sp_string row for ``:text``)."""
    if isinstance(v, StringValue):  # :text -> string prefix on the "{code}:text" rows
        return string.condition(t, v, None)
    conds = []
    if v.system_mode == "eq":
        conds.append(t.c.system == v.system)
    elif v.system_mode == "none":
        conds.append(t.c.system.is_(None))
    if v.code is not None:
        conds.append(t.c.code == v.code)
    return and_(*conds)

"""Uri: exact match, ``:below`` (stored is the query or under it), ``:above`` (stored is a parent)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, or_

from app.search.compile._util import like_escape
from app.search.expr import UriValue


def parents(uri: str) -> list[str]:
    """The query uri and every ancestor at a ``/`` boundary (for ``:above`` as one IN list).

    Why: ``:above`` asks for stored values that are prefixes of the query; enumerating them in
    Python keeps it an index seek instead of ``:q LIKE value || '%'`` over every row.
    """
    out = [uri]
    s = uri.rstrip("/")
    scheme_end = s.find("://")
    floor = scheme_end + 3 if scheme_end >= 0 else 0
    while True:
        i = s.rfind("/")
        if i < floor or i <= 0:
            break
        s = s[:i]
        out.append(s)
        out.append(s + "/")
    return out


def condition(t: Any, v: UriValue, modifier: str | None = None) -> ColumnElement[bool]:
    """Row predicate on an sp_uri row."""
    if modifier == "below":
        base = v.value.rstrip("/")
        return or_(t.c.value == v.value, t.c.value == base,
                   t.c.value.like(like_escape(base) + "/%", escape="\\"))
    if modifier == "above":
        return t.c.value.in_(parents(v.value))
    return t.c.value == v.value

"""Reference: ``id`` (any target type), ``Type/id``, absolute URL, ``:identifier`` (token rows)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, and_

from app.search.compile import token
from app.search.expr import ReferenceValue, TokenValue


def condition(t: Any, v: ReferenceValue | TokenValue, modifier: str | None = None) -> ColumnElement[bool]:
    """Row predicate on an sp_reference row (sp_token row for ``:identifier``).

    Local values match on (target_type, target_id): the indexer also fills these from the tail of
    absolute references, so ``Patient/1`` matches ``http://any/fhir/Patient/1`` too (the spec
    lets servers do this; it is what callers expect after a server move).
    """
    if isinstance(v, TokenValue):
        return token.condition(t, v)
    if v.url is not None:
        return t.c.url == v.url
    conds = [t.c.target_id == v.res_id]
    if v.res_type is not None:  # a bind parameter in a statement template (app.search.template)
        conds.append(t.c.target_type == v.res_type)
    return and_(*conds)

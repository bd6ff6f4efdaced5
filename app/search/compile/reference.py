"""Reference: ``id`` (any target type), ``Type/id``, absolute URL, ``:identifier`` (token rows)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, and_

from app.search.compile import token
from app.search.expr import ReferenceValue, TokenValue


def condition(t: Any, v: ReferenceValue | TokenValue, modifier: str | None = None) -> ColumnElement[bool]:
    """Row predicate on an sp_reference row (sp_token row for ``:identifier``).

    Local values match on (target_type, target_id): the indexer fills these for relative
    references and for absolute ones on our own base, so ``Patient/1`` matches
    ``[our base]/Patient/1`` too; another server's ``https://other/fhir/Patient/1`` keeps only its
    URL and matches only that URL (decision 0018: it is another person).
    """
    if isinstance(v, TokenValue):
        return token.condition(t, v)
    if v.url is not None:
        return t.c.url == v.url
    conds = [t.c.target_id == v.res_id]
    if v.res_type is not None:  # a bind parameter in a statement template (app.search.template)
        conds.append(t.c.target_type == v.res_type)
    return and_(*conds)

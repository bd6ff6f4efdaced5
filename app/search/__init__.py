"""FHIR search: parse -> expression tree -> rewrites -> per-type compilers -> one Select.

Framework-free (no Flask): the HTTP layer and the conditional interactions call into this.
"""

from __future__ import annotations

from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Connection, Row

from app.fhir.errors import FhirError
from app.search.parse import SearchRequest, parse
from app.search.plan import compile_search, compile_tree
from app.storage.tables import resource

__all__ = ["SearchRequest", "compile_search", "compile_tree", "find_matches", "parse"]


def find_matches(
    conn: Connection,
    registry: Any,
    res_type: str,
    params: list[tuple[str, str]],
    *,
    base_url: str | None = None,
    tz: ZoneInfo | None = None,
    limit: int = 2,
    rewrite: Any = None,
) -> list[Row]:
    """Up to ``limit`` current, non-deleted resources matching a conditional query.

    For conditional create/update/delete and conditional references (``Patient?identifier=...``):
    parsing is strict, because silently ignoring an unknown criterion would widen the match and
    overwrite or delete the wrong resource.  The default limit of 2 is enough to tell 0/1/many.
    Result-control parameters (``_count`` ...) are ignored here; no criterion at all is a 400
    (it would otherwise match every resource of the type).  ``rewrite`` (tree -> tree) is the
    authorisation hook: app.auth.permission.conditional_rewrite.
    """
    req = parse(res_type, params, registry, strict=True, base_url=base_url, tz=tz)
    if not req.clauses:
        raise FhirError(400, "invalid",
                        f"A conditional operation on {res_type} needs at least one search criterion",
                        expression=[res_type])
    if rewrite is not None:
        stmt = compile_tree(res_type, rewrite(req.tree())).order_by(resource.c.rid).limit(limit)
    else:
        stmt = compile_search(req, registry).order_by(resource.c.rid).limit(limit)
    return list(conn.execute(stmt).all())

"""Stage 5: expression tree -> one SQLAlchemy ``Select`` over the current ``resource`` rows.

Plan shapes (chosen to plan well on SQLite and PostgreSQL):
- a parameter clause is ``resource.rid IN (SELECT rid FROM sp_x WHERE res_type=:t AND param=:p
  AND <value predicates OR-ed>)``: an uncorrelated semi-join that starts from the selective
  (res_type, param, value) index; PostgreSQL turns it into a hashed/merge semi-join and SQLite
  into an index-driven IN list; OR-ed values stay inside one subquery.
- negations (``:not``, ``:missing=true``) are ``NOT EXISTS (... AND sp_x.rid = resource.rid)``,
  which PostgreSQL plans as an anti-join (``NOT IN`` would not be) and SQLite probes via ix_rid.
- chains join sp_reference to the target's *current* resource row (so deleted targets never
  match) inside the IN-subquery, one level per link; ``_has`` selects target ids of the
  referring resources and compares them with ``resource.res_id``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, exists, false, not_, or_, select, true, union

from app.search.compile import CONDITIONS
from app.search.compile.date import range_condition
from app.search.expr import (
    And,
    Chain,
    CompositeValue,
    Const,
    DateValue,
    Has,
    Match,
    Missing,
    Node,
    Not,
    Or,
    TokenValue,
)
from app.storage.tables import INDEX_TABLES, resource, sp_string, sp_token

COMPOSITE_FIRST_INDEX = 0  # component i rows use param f"{code}${i}", i counted from this


@dataclass(frozen=True)
class Ctx:
    """The resource row a (sub)expression is evaluated against."""

    res_type: str
    res: Any  # a `resource` table or alias


def _table_and_param(node: Match) -> tuple[Any, str]:
    """Which index table and param name hold rows for this clause (modifier-dependent)."""
    p = node.param
    if node.modifier == "text":
        return sp_string, f"{p.code}:text"
    if node.modifier == "of-type":
        return sp_token, f"{p.code}:of-type"
    if node.modifier == "identifier":
        return sp_token, f"{p.code}:identifier"
    return INDEX_TABLES[p.type], p.code


def _row_select(node: Match, ctx: Ctx) -> tuple[Select, Any]:
    """``SELECT rid FROM sp_x WHERE res_type, param, OR(values)`` and the rid column."""
    if node.param.type == "composite":
        return _composite_select(node, ctx)
    table, pname = _table_and_param(node)
    t = table.alias()
    cond = CONDITIONS[node.param.type]
    values = or_(*(cond(t, v, node.modifier) for v in node.values))
    sel = select(t.c.rid).where(t.c.res_type == ctx.res_type, t.c.param == pname, values)
    return sel, t.c.rid


def _composite_select(node: Match, ctx: Ctx) -> tuple[Select, Any]:
    """Rows whose components, joined on ``grp``, each satisfy their part of one value."""
    comps = tuple(node.param.components)
    alts = []
    first = None
    for v in node.values:
        assert isinstance(v, CompositeValue)
        aliases = [INDEX_TABLES[cp.type].alias() for cp, _e in comps]
        a0 = aliases[0]
        if first is None:
            first = a0
        sel = select(a0.c.rid)
        conds: list[ColumnElement[bool]] = []
        for i, ((cp, _e), a, part) in enumerate(zip(comps, aliases, v.parts, strict=True)):
            conds += [a.c.res_type == ctx.res_type,
                      a.c.param == f"{node.param.code}${i + COMPOSITE_FIRST_INDEX}",
                      CONDITIONS[cp.type](a, part, None)]
            if i:
                sel = sel.join(a, and_(a.c.rid == a0.c.rid, a.c.grp == a0.c.grp))
        alts.append(sel.where(*conds))
    if len(alts) == 1:
        return alts[0], first.c.rid  # type: ignore[union-attr]
    # Several OR-ed composite values: union of rid sets.
    u = union(*alts).subquery()
    return select(u.c.rid), u.c.rid


def _column_match(node: Match, ctx: Ctx) -> ColumnElement[bool]:
    """``_id`` / ``_lastUpdated``: predicates on the resource row itself, no index table."""
    col = ctx.res.c[node.param.column]
    if node.param.column == "res_id":
        ids = [v.code for v in node.values if isinstance(v, TokenValue) and v.code is not None]
        return col.in_(ids) if ids else false()
    if all(isinstance(v, DateValue) for v in node.values):
        return or_(*(range_condition(col, col, v) for v in node.values))
    raise ValueError(f"cannot compile {node.param.code} on column {node.param.column}")


def compile_node(node: Node, ctx: Ctx) -> ColumnElement[bool]:
    """Compile one expression node to a boolean condition on ``ctx.res``."""
    rid = ctx.res.c.rid
    if isinstance(node, And):
        if not node.children:
            return true()
        return and_(*(compile_node(c, ctx) for c in node.children))
    if isinstance(node, Or):
        if not node.children:
            return false()
        return or_(*(compile_node(c, ctx) for c in node.children))
    if isinstance(node, Const):
        return true() if node.value else false()
    if isinstance(node, Not):
        child = node.child
        if isinstance(child, Match) and not getattr(child.param, "column", None):
            sel, rcol = _row_select(child, ctx)
            return ~exists(sel.where(rcol == rid))
        return not_(compile_node(child, ctx))
    if isinstance(node, Match):
        if getattr(node.param, "column", None):
            return _column_match(node, ctx)
        sel, _ = _row_select(node, ctx)
        return rid.in_(sel)
    if isinstance(node, Missing):
        if getattr(node.param, "column", None):
            return false() if node.missing else true()
        table = INDEX_TABLES["token" if node.param.type == "composite" else node.param.type]
        pname = node.param.code
        if node.param.type == "composite":
            first = node.param.components[0][0]
            table = INDEX_TABLES[first.type]
            pname = f"{pname}${COMPOSITE_FIRST_INDEX}"
        t = table.alias()
        sel = select(t.c.rid).where(t.c.res_type == ctx.res_type, t.c.param == pname)
        if node.missing:
            return ~exists(sel.where(t.c.rid == rid))
        return rid.in_(sel)
    if isinstance(node, Chain):
        alts = []
        for target_type, inner in node.branches:
            ref = INDEX_TABLES["reference"].alias()
            tgt = resource.alias()
            sel = (
                select(ref.c.rid)
                .join(tgt, and_(tgt.c.res_type == ref.c.target_type, tgt.c.res_id == ref.c.target_id))
                .where(
                    ref.c.res_type == ctx.res_type,
                    ref.c.param == node.param.code,
                    ref.c.target_type == target_type,
                    tgt.c.deleted.is_(False),
                    compile_node(inner, Ctx(target_type, tgt)),
                )
            )
            alts.append(rid.in_(sel))
        return or_(*alts)
    if isinstance(node, Has):
        ref = INDEX_TABLES["reference"].alias()
        src = resource.alias()
        sel = (
            select(ref.c.target_id)
            .join(src, src.c.rid == ref.c.rid)
            .where(
                ref.c.res_type == node.res_type,
                ref.c.param == node.ref_param.code,
                ref.c.target_type == ctx.res_type,
                src.c.deleted.is_(False),
                compile_node(node.node, Ctx(node.res_type, src)),
            )
        )
        return ctx.res.c.res_id.in_(sel)
    raise TypeError(f"unknown node {node!r}")


def compile_tree(res_type: str, tree: Node) -> Select:
    """``SELECT rid, res_id, version FROM resource WHERE res_type AND NOT deleted AND <tree>``."""
    r = resource
    return select(r.c.rid, r.c.res_id, r.c.version).where(
        r.c.res_type == res_type,
        r.c.deleted.is_(False),
        compile_node(tree, Ctx(res_type, r)),
    )


def compile_search(request: Any, registry: Any = None) -> Select:
    """The matching current resources of a parsed SearchRequest (sorting/paging come later).

    ``registry`` is accepted for symmetry with the other stages (parameters are already resolved
    in the request's clauses).
    """
    return compile_tree(request.res_type, request.tree())

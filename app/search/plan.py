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

import re
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Select,
    String,
    and_,
    bindparam,
    distinct,
    exists,
    false,
    func,
    literal_column,
    not_,
    or_,
    select,
    true,
    union,
)

from app.indexing.extract import ENVELOPE_PARAM
from app.search.compile import CONDITIONS
from app.search.compile.date import envelope_condition, range_condition
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
from app.storage.tables import INDEX_TABLES, resource, sp_reference, sp_string, sp_token

# The index tables whose rows carry their resource's ``date`` envelope (app.indexing.extract).
ENVELOPE_TABLES = (sp_token, sp_reference)

COMPOSITE_FIRST_INDEX = 0  # component i rows use param f"{code}${i}", i counted from this


class Aliases:
    """Per-statement alias allocator over a process-wide pool of pre-built aliases.

    Why: ``table.alias()`` rebuilds the alias's column collection (a proxy ``Column`` per column)
    on every request, which was a large part of building a search statement.  The n-th alias of
    a table in a statement is always the same object, named ``<table>_<n>`` (what SQLAlchemy
    calls anonymous aliases too), so statements of one shape also render the same SQL.
    """

    _pool: dict[tuple[str, int], Any] = {}

    def __init__(self) -> None:
        self._n: dict[str, int] = {}

    def __call__(self, table: Any) -> Any:
        i = self._n.get(table.name, 0) + 1
        self._n[table.name] = i
        a = self._pool.get((table.name, i))
        if a is None:  # a race only builds an equivalent alias twice
            a = self._pool[(table.name, i)] = table.alias(f"{table.name}_{i}")
        return a


@dataclass(frozen=True)
class Ctx:
    """The resource row a (sub)expression is evaluated against."""

    res_type: str
    res: Any  # a `resource` table or alias
    # Keyset bound of the page being fetched, ``(">", rid)`` or ``("<", rid)``: pushed into every
    # positive IN-subquery so the index scan starts at the cursor instead of the first row.
    bound: tuple[str, int] | None = None
    aliases: Aliases = field(default_factory=Aliases)

    def under(self, res_type: str, res: Any) -> Ctx:
        """A nested context (another row, no keyset bound), same statement."""
        return Ctx(res_type, res, None, self.aliases)


def _bounded(col: Any, bound: tuple[str, int] | None) -> ColumnElement[bool] | None:
    if bound is None:
        return None
    op, value = bound
    return col > value if op == ">" else col < value


def _with_bound(sel: Select, col: Any, ctx: Ctx) -> Select:
    cond = _bounded(col, ctx.bound)
    return sel if cond is None else sel.where(cond)


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
    t = ctx.aliases(table)
    cond = CONDITIONS[node.param.type]
    values = _security_values(t, node) if pname == "_security" else None
    if values is None:
        values = or_(*(cond(t, v, node.modifier) for v in node.values))
    sel = select(t.c.rid).where(t.c.res_type == const(ctx.res_type), _param_is(t, pname), values)
    return sel, t.c.rid


def _security_values(t: Any, node: Match) -> ColumnElement[bool] | None:
    """Several ``system|code`` labels as ``system = s AND code IN (...)`` per system: the
    withholding of sensitive labels (app.auth.permission) names eight labels from two systems on
    every query, and sixteen OR-ed comparisons cost planning and statement-building time."""
    if node.modifier is not None or len(node.values) < 2 or not all(
            isinstance(v, TokenValue) and v.system_mode == "eq" and v.code is not None for v in node.values):
        return None
    by_system: dict[str, list[str]] = {}
    for v in node.values:
        by_system.setdefault(v.system, []).append(v.code)
    return or_(*(and_(t.c.system == sys_, t.c.code.in_(codes)) for sys_, codes in sorted(by_system.items())))


_NAME = re.compile(r"[A-Za-z0-9_.:$-]{1,128}")


def const(name: str) -> Any:
    """A resource type or parameter name written into the SQL as a literal, not bound.

    Why: these are the structure of a search, not its values.  psycopg prepares a statement run
    five times and PostgreSQL may then plan it once for any parameters (a generic plan); with
    ``res_type = $1 AND param = $2 AND code = $3`` all unknown it estimated one row for a lab
    code and one for a patient's results, and probed the code's whole index range once per
    result (29 ms instead of 0.4).  With the names inline its estimates are those of the
    parameter's own rows, and the generic plan is the custom one (docs/decisions/0008).  The
    partial index ``ix_sp_token_security`` (app/protect/tables.py) also needs its literal
    ``param = '_security'`` to be provable.  Only names from the registry and the enabled types
    come here; anything else is bound as before."""
    if _NAME.fullmatch(name) is None:
        return bindparam(None, name, type_=String)
    return literal_column(f"'{name}'", type_=String)


def _param_is(t: Any, pname: str) -> ColumnElement[bool]:
    """``param = '<name>'`` (see :func:`const`)."""
    return t.c.param == const(pname)


def _composite_select(node: Match, ctx: Ctx) -> tuple[Select, Any]:
    """Rows whose components, joined on ``grp``, each satisfy their part of one value."""
    comps = tuple(node.param.components)
    alts = []
    first = None
    for v in node.values:
        assert isinstance(v, CompositeValue)
        aliases = [ctx.aliases(INDEX_TABLES[cp.type]) for cp, _e in comps]
        a0 = aliases[0]
        if first is None:
            first = a0
        sel = select(a0.c.rid)
        conds: list[ColumnElement[bool]] = []
        for i, ((cp, _e), a, part) in enumerate(zip(comps, aliases, v.parts, strict=True)):
            conds += [a.c.res_type == const(ctx.res_type),
                      _param_is(a, f"{node.param.code}${i + COMPOSITE_FIRST_INDEX}"),
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
            sel, rcol = _row_select(child, ctx.under(ctx.res_type, ctx.res))
            return ~exists(sel.where(rcol == rid))
        return not_(compile_node(child, ctx.under(ctx.res_type, ctx.res)))
    if isinstance(node, Match):
        if getattr(node.param, "column", None):
            return _column_match(node, ctx)
        sel, rcol = _row_select(node, ctx)
        return rid.in_(_with_bound(sel, rcol, ctx))
    if isinstance(node, Missing):
        if getattr(node.param, "column", None):
            return false() if node.missing else true()
        table = INDEX_TABLES["token" if node.param.type == "composite" else node.param.type]
        pname = node.param.code
        if node.param.type == "composite":
            first = node.param.components[0][0]
            table = INDEX_TABLES[first.type]
            pname = f"{pname}${COMPOSITE_FIRST_INDEX}"
        t = ctx.aliases(table)
        sel = select(t.c.rid).where(t.c.res_type == const(ctx.res_type), _param_is(t, pname))
        if node.missing:
            return ~exists(sel.where(t.c.rid == rid))
        return rid.in_(_with_bound(sel, t.c.rid, ctx))
    if isinstance(node, Chain):
        alts = []
        for target_type, inner in node.branches:
            ref = ctx.aliases(INDEX_TABLES["reference"])
            tgt = ctx.aliases(resource)
            sel = (
                select(ref.c.rid)
                .join(tgt, and_(tgt.c.res_type == ref.c.target_type, tgt.c.res_id == ref.c.target_id))
                .where(
                    ref.c.res_type == const(ctx.res_type),
                    _param_is(ref, node.param.code),
                    ref.c.target_type == const(target_type),
                    tgt.c.deleted.is_(False),
                    compile_node(inner, ctx.under(target_type, tgt)),
                )
            )
            alts.append(rid.in_(_with_bound(sel, ref.c.rid, ctx)))
        return or_(*alts)
    if isinstance(node, Has):
        ref = ctx.aliases(INDEX_TABLES["reference"])
        src = ctx.aliases(resource)
        sel = (
            select(ref.c.target_id)
            .join(src, src.c.rid == ref.c.rid)
            .where(
                ref.c.res_type == const(node.res_type),
                _param_is(ref, node.ref_param.code),
                ref.c.target_type == const(ctx.res_type),
                src.c.deleted.is_(False),
                compile_node(node.node, ctx.under(node.res_type, src)),
            )
        )
        return ctx.res.c.res_id.in_(sel)
    raise TypeError(f"unknown node {node!r}")


def _rid_only(node: Node) -> bool:
    """True when the node's SQL refers to the searched resource only through ``rid``."""
    if isinstance(node, Match):
        return not getattr(node.param, "column", None)
    if isinstance(node, Not):
        return _rid_only(node.child)
    if isinstance(node, (And, Or)):
        return all(_rid_only(c) for c in node.children)
    return isinstance(node, (Missing, Const, Chain))


class _RidColumns:
    """Stands in for the ``resource`` row inside a driver subquery: only ``.c.rid`` exists."""

    def __init__(self, rid: Any) -> None:
        self.c = type("C", (), {"rid": rid})()


def _driver_rows(res_type: str, tree: Node, bound: tuple[str, int] | None,
                 aliases: Aliases) -> tuple[Select, Any] | None:
    """The matches' rids computed on the index tables alone (not DISTINCT, not ordered), and
    the rid column; None when the tree does not allow it.

    ``SELECT d.rid FROM sp_x d WHERE <clause> [AND d.rid > :after] AND <other clauses on
    d.rid>``: one positive clause drives, the others are semi-/anti-joins on its ``rid``.
    Exact because index rows exist only for current, non-deleted resources of their
    ``res_type`` (so the outer ``resource`` conditions remove nothing); any clause on the
    resource row itself (``_id``, ``_lastUpdated``, ``_has``) means no driver.
    """
    children = tree.children if isinstance(tree, And) else (tree,)
    if not all(_rid_only(c) for c in children):
        return None
    drv = next((c for c in children if isinstance(c, Match) and c.param.type != "composite"
                and not getattr(c.param, "column", None)), None)
    if drv is None:
        return None
    ctx = Ctx(res_type, resource, bound, aliases)
    sel, rcol = _row_select(drv, ctx)
    sel = _with_bound(sel, rcol, ctx)
    if _has_envelope(rcol.table):
        sel = sel.where(*_envelope_filters(rcol.table, tree))
    inner = Ctx(res_type, _RidColumns(rcol), bound, aliases)
    rest = [compile_node(c, inner) for c in children if c is not drv]
    if rest:
        sel = sel.where(*rest)
    return sel, rcol


def _has_envelope(t: Any) -> bool:
    """Whether ``t`` (an index table's alias) has the ``date`` envelope columns."""
    return getattr(t, "element", t) in ENVELOPE_TABLES


def _envelope_filters(t: Any, tree: Node) -> list[ColumnElement[bool]]:
    """For each ``date`` clause ANDed into the search, what the driving token or reference row's
    date envelope must satisfy (app.search.compile.date.envelope_condition): checked inside its
    index, so a code (or patient) + date range walks the code's index entries and probes
    ``sp_date`` only for those whose resource has a date near the range (decision 0016).  The
    clauses themselves still decide: these are only necessary conditions."""
    out = []
    for c in _conjuncts(tree):
        if not (isinstance(c, Match) and c.param.type == "date" and c.param.code == ENVELOPE_PARAM
                and not getattr(c.param, "column", None) and c.modifier is None and c.values):
            continue
        alts = [envelope_condition(t.c.date_low, t.c.date_high, v) for v in c.values]
        if all(a is not None for a in alts):
            out.append(or_(*alts))
    return out


def _conjuncts(node: Node) -> list[Node]:
    """The clauses a tree ANDs together (nested Ands flattened)."""
    if isinstance(node, And):
        return [x for c in node.children for x in _conjuncts(c)]
    return [node]


def _driver(res_type: str, tree: Node, bound: tuple[str, int] | None, limit: int,
            aliases: Aliases) -> Select | None:
    """The page's rids in ``rid`` order cut on the index tables, or None (``_driver_rows``).

    ``SELECT DISTINCT d.rid ... ORDER BY d.rid LIMIT :n``: with the lookup indexes ending in
    ``rid`` the driver is read in ``rid`` order and PostgreSQL can stop after ``n`` rows (a code
    + date range: 3-5 ms instead of ~30 ms for probing every row of the code), or start from a
    more selective clause if its estimates say so.
    """
    found = _driver_rows(res_type, tree, bound, aliases)
    if found is None:
        return None
    sel, rcol = found
    desc = bound is not None and bound[0] == "<"
    return sel.distinct().order_by(rcol.desc() if desc else rcol.asc()).limit(limit)


def page_rids(res_type: str, tree: Node, bound: tuple[str, int] | None, limit: int,
              aliases: Aliases | None = None) -> Select | None:
    """The rids of one page in ``rid`` order cut on the index tables (``_driver``), or None."""
    return _driver(res_type, tree, bound, limit, aliases or Aliases())


def match_rids(res_type: str, tree: Node, aliases: Aliases | None = None,
               envelope: bool = False) -> tuple[Select, bool] | None:
    """Every match's rid, once, from the index tables alone (``_driver_rows``), or None: what a
    sorted page is cut from before any ``resource`` row is read; and whether the rows carry the
    resource's date envelope too (``date_low``, ``date_high``: asked with ``envelope`` and
    given when the driving table has it), from which a ``date`` sort key is read instead of
    probed (decision 0016).  A resource's rows all carry the same envelope, so it stays one
    row per rid."""
    found = _driver_rows(res_type, tree, None, aliases or Aliases())
    if found is None:
        return None
    sel, rcol = found
    t = rcol.table
    if envelope and _has_envelope(t):
        return sel.add_columns(t.c.date_low, t.c.date_high).distinct(), True
    return sel.distinct(), False


def compile_tree(res_type: str, tree: Node, bound: tuple[str, int] | None = None,
                 limit: int | None = None, aliases: Aliases | None = None) -> Select:
    """``SELECT rid, res_id, version FROM resource WHERE res_type AND NOT deleted AND <tree>``.

    ``bound`` (``(">", rid)`` / ``("<", rid)``): only rows past a keyset cursor in ``rid`` order;
    it is repeated inside each IN-subquery (see ``Ctx.bound``), which is what makes page 100 cost
    what page 1 does when the order is ``rid``.
    ``limit``: the caller takes at most this many rows in ``rid`` order (ascending, descending
    for a ``<`` bound) and adds no condition of its own: the page may be cut on the index
    tables first (``_driver``).
    """
    r = resource
    aliases = aliases or Aliases()
    ctx = Ctx(res_type, r, bound, aliases)
    drv = _driver(res_type, tree, bound, limit, aliases) if limit is not None else None
    cond = compile_node(tree, ctx) if drv is None else r.c.rid.in_(drv)
    sel = select(r.c.rid, r.c.res_id, r.c.version).where(r.c.res_type == const(res_type), r.c.deleted.is_(False), cond)
    return _with_bound(sel, r.c.rid, ctx)


def count_query(res_type: str, tree: Node, exclude: Node | None = None) -> Select | None:
    """``count(DISTINCT rid)`` straight from the index table for a one-clause search, else None.

    Why it is exact: index rows exist only for current, non-deleted resources (a delete removes
    them, an update replaces them) and carry the resource type, so the semi-join to ``resource``
    adds nothing to the count; without it the count is an index-only scan.
    ``exclude``: a negation that refers to the row only by ``rid`` (the withholding of sensitive
    labels, app.auth.permission), applied as an anti-join on the counted index rows.
    """
    if not isinstance(tree, Match) or getattr(tree.param, "column", None):
        return None
    if exclude is not None and not (isinstance(exclude, Not) and _rid_only(exclude)):
        return None
    aliases = Aliases()
    sel, rcol = _row_select(tree, Ctx(res_type, resource, None, aliases))
    if exclude is not None:
        sel = sel.where(compile_node(exclude, Ctx(res_type, _RidColumns(rcol), None, aliases)))
    return sel.with_only_columns(func.count(distinct(rcol)))


def compile_search(request: Any, registry: Any = None) -> Select:
    """The matching current resources of a parsed SearchRequest (sorting/paging come later).

    ``registry`` is accepted for symmetry with the other stages (parameters are already resolved
    in the request's clauses).
    """
    return compile_tree(request.res_type, request.tree())

"""Search interactions: type, system (``_type``) and Patient-compartment search.

Pipeline per request: parse (per resource type) -> compartment rewrite -> compile -> one Select
per type with its sort-key columns (``UNION ALL`` when several types) -> keyset page -> includes
(one set-based query per include parameter per iteration) -> shaping -> searchset Bundle of
stored bytes.

Result control:
- ``_sort`` (app.search.sort), keyset paging (app.search.paging): ``self``/``next``/``previous``
  links are ``<path>?_cursor=<opaque>``, the whole search sealed into the token with the page
  position and bound to the caller, so no search value is in clear in any generated URL
  (docs/decisions/0015-opaque-search-links.md); no OFFSET; the default order is insertion
  order (``rid``), except for polling searches (a ``_lastUpdated`` lower bound, no ``_sort``):
  ``(lastUpdated, rid)``.  Parameters lenient handling ignored are named (not their values) in an
  OperationOutcome warning entry, since the self link no longer shows what was used.
  In ``rid`` order the cursor's rid bound is pushed into every index subquery, so page 100
  costs what page 1 does.
- ``_count``: default/maximum from config; over the maximum it is capped and an OperationOutcome
  warning entry says so.
- ``_total``: ``none`` (default, no count), ``accurate`` (``count(*)`` of the matches),
  ``estimate`` (PostgreSQL: the planner's row estimate of the match query from ``EXPLAIN``;
  SQLite has no planner statistics, so it counts at most ``SQLITE_ESTIMATE_CAP`` rows and gives
  that exact count, or no total when there are more).  When the first page holds every match
  the total is exact and free, so estimate/accurate use it without another query.
- ``_summary``/``_elements`` (app.search.shape) shape the matches; ``_summary=count`` returns
  only the (accurate) total.
- ``_explain=true`` returns the compiled SQL in an OperationOutcome information entry, only when
  the operators' switch ``SEARCH_DEBUG_SQL`` is on; otherwise ``_explain`` is just an unknown
  parameter (ignored, or 400 under ``Prefer: handling=strict``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson
from sqlalchemy import Connection, Select, and_, func, select, union_all
from sqlalchemy.exc import DBAPIError

from app.db.deadline import QueryTimeout, statement_deadline
from app.db.driver import DriverStatement, driver_form, driver_rows
from app.db.engine import read_snapshot, single_read
from app.fhir.bundle import bundle_bytes, entry_bytes
from app.fhir.errors import FhirError
from app.indexing.extract import ENVELOPE_PARAM
from app.interactions.context import FhirContext, Result
from app.protect.labels import bundle_label
from app.search import parse
from app.search.expr import And, DateValue, Match
from app.search.include import Found, parse_includes, resolve_includes
from app.search.paging import (
    CURSOR_PARAM,
    Cursor,
    Resumed,
    after,
    link_url,
    open_search,
    order_by,
    position,
    seal_search,
)
from app.search.parse import SearchRequest
from app.search.plan import Aliases, compile_tree, const, count_query, match_rids, page_rids
from app.search.rewrite import restrict_to_compartment
from app.search.shape import parse_shape, shape_resource
from app.search.sort import SortKey, parse_sort, sort_expression
from app.search.template import Binder, NotTemplatable, templates_for, walk
from app.storage.tables import resource, resource_version

TOTAL_MODES = ("none", "estimate", "accurate")
_LOWER_BOUNDED = ("gt", "ge", "sa", "eq", "ap")
_NOT_NULL_KEYS = ("_lastUpdated", "_id")  # sort keys on NOT NULL columns of the resource row
SQLITE_ESTIMATE_CAP = 10_000
# Accepted and meaningful nowhere else; left out of links.
_DROPPED = ("_format", "_pretty", "_contained", "_containedType")


@dataclass
class _Scope:
    path: str  # link base, e.g. ".../fhir/Observation", ".../fhir", ".../fhir/Patient/1/*"
    types: list[str]
    compartment: str | None = None
    extra_link_params: list[tuple[str, str]] = field(default_factory=list)
    rel: str = ""  # ``path`` relative to the base: what a link's token is bound to
    resumed: Resumed | None = None  # the followed link this request came with, if any


def search_type(ctx: FhirContext, res_type: str, params: list[tuple[str, str]], strict: bool = False) -> Result:
    ctx.check_type(res_type)
    params, resumed = _resume(ctx, res_type, params)
    params = [(k, v) for k, v in params if k != "_type"]
    scope = _Scope(f"{ctx.base_url}/{res_type}", [res_type], rel=res_type, resumed=resumed)
    return _run(ctx, scope, params, strict)


def search_system(ctx: FhirContext, params: list[tuple[str, str]], strict: bool = False) -> Result:
    """``GET [base]?_type=A,B&...``: the union of type searches; parameters must suit every type."""
    params, resumed = _resume(ctx, "", params)
    types = _types_param(ctx, params)
    rest = [(k, v) for k, v in params if k != "_type"]
    link = [("_type", ",".join(types))] if any(k == "_type" for k, _ in params) else []
    scope = _Scope(ctx.base_url, types or sorted(ctx.enabled_types), extra_link_params=link, resumed=resumed)
    return _run(ctx, scope, rest, strict)


def search_compartment(ctx: FhirContext, comp_type: str, comp_id: str, res_type: str,
                       params: list[tuple[str, str]], strict: bool = False) -> Result:
    """``GET [base]/Patient/123/Observation`` and ``GET [base]/Patient/123/*``."""
    if comp_type != "Patient":
        raise FhirError(404, "not-supported", f"Compartment '{comp_type[:64]}' is not supported; only Patient is.")
    ctx.check_id(comp_id)
    rel = f"Patient/{comp_id}/{res_type}"
    params, resumed = _resume(ctx, rel, params)
    members = [t for t in sorted(ctx.enabled_types) if t == "Patient" or ctx.registry.compartment_params(t)]
    if res_type == "*":
        types = _types_param(ctx, params) or members
        types = [t for t in types if t in members]
        link = [("_type", ",".join(types))] if any(k == "_type" for k, _ in params) else []
    else:
        ctx.check_type(res_type)
        if res_type not in members:
            raise FhirError(400, "invalid", f"{res_type} is not in the Patient compartment.")
        types, link = [res_type], []
    rest = [(k, v) for k, v in params if k != "_type"]
    scope = _Scope(f"{ctx.base_url}/{rel}", types, comp_id, link, rel=rel, resumed=resumed)
    return _run(ctx, scope, rest, strict)


def _resume(ctx: FhirContext, rel: str, params: list[tuple[str, str]]) -> tuple[list[tuple[str, str]], Resumed | None]:
    """A followed search link (``?_cursor=``): the search it carries replaces the parameters.

    Only formatting parameters may come with it: the link holds the whole search, and a
    parameter added to it would look like a change of search that does not happen (400).
    """
    tokens = [v for k, v in params if k == CURSOR_PARAM]
    if not tokens:
        return params, None
    allowed = {CURSOR_PARAM, *_DROPPED} | ({"_explain"} if ctx.debug_sql else set())
    if any(k not in allowed for k, _ in params) or len(set(tokens)) > 1:
        raise FhirError(400, "invalid", "A paging link carries its whole search: follow it as given, without "
                        "other search parameters (start a new search to change it).", [CURSOR_PARAM])
    resumed = open_search(ctx.secret_key, ctx.caller, rel, tokens[-1])
    return [*resumed.params, *((k, v) for k, v in params if k != CURSOR_PARAM)], resumed


def _types_param(ctx: FhirContext, params: list[tuple[str, str]]) -> list[str]:
    types: list[str] = []
    for k, v in params:
        if k != "_type":
            continue
        for t in v.split(","):
            t = t.strip()
            if not t:
                continue
            if t not in ctx.enabled_types:
                raise FhirError(400, "not-supported", f"_type: resource type '{t[:64]}' is not supported here.", ["_type"])
            if t not in types:
                types.append(t)
    return types


# ---------------------------------------------------------------------------------------------


def _parse_all(ctx: FhirContext, types: list[str], params: list[tuple[str, str]], strict: bool) -> dict[str, SearchRequest]:
    """Parse for every type; in lenient mode a parameter ignored by any type is ignored by all."""
    kw = {"strict": strict, "base_url": ctx.base_url, "tz": ctx.tz}
    reqs = {t: parse(t, params, ctx.registry, **kw) for t in types}
    dropped = {k for r in reqs.values() for k, _ in r.ignored}
    if dropped and len(types) > 1:
        kept = [(k, v) for k, v in params if k not in dropped]
        reqs = {t: parse(t, kept, ctx.registry, **kw) for t in types}
        for r in reqs.values():
            r.ignored = [(k, v) for k, v in params if k in dropped]
    return reqs


def _count(ctx: FhirContext, values: list[str]) -> tuple[int, str | None]:
    if not values:
        return ctx.default_page_size, None
    raw = values[-1]
    if not (raw.isascii() and raw.isdigit()):  # (isdigit alone takes '²' and '５', which int() refuses)
        raise FhirError(400, "invalid", f"_count must be a non-negative integer, got {raw[:40]!r}.", ["_count"])
    n = int(raw)
    if n > ctx.max_page_size:
        return ctx.max_page_size, f"_count={n} is over this server's maximum; {ctx.max_page_size} used."
    return n, None


def _effective_tree(ctx: FhirContext, scope: _Scope, reqs: dict[str, SearchRequest], t: str):
    """The search's expression tree for type ``t`` with every restriction (compartment, scopes).

    Everything that narrows the matches must be in this tree: compile_tree may cut the page
    (``limit``) and count_query may count on the index tables from it alone.
    """
    tree = reqs[t].tree()
    # A merged Patient's id also finds its survivor's results, and the other way round.
    from app.identity.aliases import compartment_any, widen

    tree, comps = widen(ctx.engine, tree, scope.compartment, scope.__dict__.setdefault("_merged", {}))
    if scope.compartment is not None:
        tree = compartment_any(restrict_to_compartment, tree, comps, ctx.registry, t)
    if ctx.permission is not None:  # the token's scopes, compiled in (app.auth.permission)
        tree = ctx.permission.restrict_tree(tree, t, "s")
    return tree


def _match_query(ctx: FhirContext, scope: _Scope, trees: dict, keys: list[SortKey],
                 bound: tuple[str, int] | None = None, limit: int | None = None):
    """One Select per type (rid, res_type, res_id, version, k0..kn), UNION ALL-ed, as a subquery.

    ``trees``: each type's effective tree (``_effective_tree``).  ``bound``: the page's keyset
    bound on ``rid`` when ``rid`` is the whole order (no sort keys), pushed down into every index
    subquery (app.search.plan.compile_tree); ``limit``: the page size + 1, which in ``rid`` order
    compile_tree may apply on the index tables already.
    """
    branches: list[Select] = []
    for t in scope.types:
        aliases = Aliases()
        sel = compile_tree(t, trees[t], bound, None if keys else limit, aliases).add_columns(resource.c.res_type)
        for i, k in enumerate(keys):
            sel = sel.add_columns(sort_expression(k, t, resource, ctx.registry, aliases).label(f"k{i}"))
        branches.append(sel)
    if len(branches) == 1:
        return branches[0].subquery("m")
    return union_all(*branches).subquery("m")


def _page_statement(ctx: FhirContext, scope: _Scope, trees: dict, keys: list[SortKey],
                    bound: tuple[str, int] | None, count: int, cur: Cursor | None, reverse: bool,
                    use_templates: bool = True) -> tuple[Select, dict, DriverStatement | None]:
    """The page statement, the bind values to run it with, and (PostgreSQL) the statement
    compiled for running on the driver connection (app.db.driver).

    Searches of one shape share one statement (app.search.template): the first builds it with
    named bind parameters, later ones only walk their trees for the values.  Both go through
    ``_bind`` so the n-th value always has the n-th name.
    """
    if not use_templates:
        return _build_page(ctx, scope, trees, keys, bound, count, cur, reverse), {}, None
    rec = Binder()
    try:
        shapes, *_ = _bind(rec, scope.types, trees, bound, cur)
    except NotTemplatable:
        return _build_page(ctx, scope, trees, keys, bound, count, cur, reverse), {}, None
    key = (tuple(scope.types), shapes, tuple(keys), bound[0] if bound else None,
           (cur.direction, tuple(v is None for v in cur.values)) if cur is not None else None, reverse, count)
    templates = templates_for(ctx.registry)
    built = templates.get(key)
    if built is None:
        _, b_trees, b_bound, b_cur = _bind(Binder(build=True), scope.types, trees, bound, cur)
        built = (_build_page(ctx, scope, b_trees, keys, b_bound, count, b_cur, reverse), {})
        templates.put(key, built)
    stmt, forms = built
    return stmt, rec.values, driver_form(forms, stmt, (ctx.read_engine or ctx.engine).dialect, rec.values)


def _bind(b: Binder, types: list[str], trees: dict, bound: tuple[str, int] | None, cur: Cursor | None):
    """Every value of a page statement through ``b``, in one order: the trees (in ``types``
    order), the rid bound, the cursor's key values (those not NULL), the cursor's rid.
    Returns the trees' shape keys and, in build mode, the trees, bound and cursor with binds."""
    walked = [walk(trees[t], b) for t in types]
    b_bound = (bound[0], b(bound[1])) if bound is not None else None
    b_cur = None
    if cur is not None:
        values = tuple(None if v is None else b(v) for v in cur.values)
        b_cur = Cursor(cur.direction, values, b(cur.rid))
    return tuple(k for k, _ in walked), {t: n for t, (_, n) in zip(types, walked, strict=True)}, b_bound, b_cur


def _build_page(ctx: FhirContext, scope: _Scope, trees: dict, keys: list[SortKey],
                bound: tuple[str, Any] | None, count: int, cur: Cursor | None, reverse: bool) -> Select:
    """In ``rid`` order with the page cut on the index tables: one flat statement; otherwise the
    match query under keyset filter, sort and cut (``_page``)."""
    drv = None
    if not keys and len(scope.types) == 1:
        drv = page_rids(scope.types[0], trees[scope.types[0]], bound, count + 1)
    if drv is None:
        return _page(ctx, scope, trees, keys, bound, count, cur, reverse)
    r, rv = resource, resource_version
    return (
        select(r.c.rid, r.c.res_type, r.c.res_id, rv.c.content)
        .join_from(r, rv, and_(rv.c.rid == r.c.rid, rv.c.version == r.c.version))
        .where(r.c.res_type == const(scope.types[0]), r.c.deleted.is_(False), r.c.rid.in_(drv))
        .order_by(r.c.rid.desc() if reverse else r.c.rid.asc())
    )


def _page(ctx: FhirContext, scope: _Scope, trees: dict, keys: list[SortKey],
          bound: tuple[str, Any] | None, count: int, cur: Cursor | None, reverse: bool) -> Select:
    """The page query over the match query: keyset filter, sort, cut, then the page's JSON."""
    on_index = [not _is_column(k, scope.types, ctx.registry) for k in keys]
    if len(scope.types) == 1 and keys and all(on_index):
        page = _index_sorted_page(ctx, scope.types[0], trees[scope.types[0]], keys, count, cur, reverse)
        if page is not None:
            return page
    m = _match_query(ctx, scope, trees, keys, bound, count + 1)
    if any(on_index):
        # Sort keys from index tables are correlated subqueries: fence the match query (OFFSET 0
        # stops PostgreSQL pulling it up) so each key is computed once per match, not once in
        # the keyset filter and again in the sort.
        m = select(m).offset(0).subquery("mf")
    top = _cut(m, [m.c.res_type, m.c.res_id, m.c.version], keys, count, cur, reverse)
    pk = [top.c[f"k{i}"] for i in range(len(keys))]
    return (
        select(top.c.rid, top.c.res_type, top.c.res_id, resource_version.c.content, *pk)
        .join(resource_version, and_(resource_version.c.rid == top.c.rid, resource_version.c.version == top.c.version))
        .order_by(*order_by(pk, keys, top.c.rid, reverse))
    )


def _cut(m, extra: list, keys: list[SortKey], count: int, cur: Cursor | None, reverse: bool):
    """``m``'s rows after the cursor, sorted and cut to the page (+1), as subquery ``p`` of
    ``rid``, ``extra`` and the keys ``k0..kn``: done on the narrow rows, so only the page's rows
    fetch their JSON."""
    kcols = [m.c[f"k{i}"] for i in range(len(keys))]
    top = select(m.c.rid, *extra, *kcols)
    if cur is not None:
        top = top.where(after(kcols, keys, m.c.rid, cur))
        if keys and keys[0].code in _NOT_NULL_KEYS and cur.values[0] is not None:
            # The bound the keyset condition implies on a first key that is never NULL, ANDed so
            # the index range scan starts at the cursor (the OR-expanded condition alone is not).
            v = cur.values[0]
            top = top.where(kcols[0] <= v if keys[0].desc != reverse else kcols[0] >= v)
    return top.order_by(*order_by(kcols, keys, m.c.rid, reverse)).limit(count + 1).subquery("p")


def _envelope_key(ctx: FhirContext, t: str, key: SortKey) -> bool:
    """Whether ``key`` is the ``date`` sort key whose value the driving index rows carry (their
    resource's date envelope: ``max(high)`` descending, ``min(low)`` ascending, exactly what
    sort_expression computes from sp_date; decision 0016)."""
    if key.code != ENVELOPE_PARAM:
        return False
    p = ctx.registry.get(t, key.code)
    return p is not None and p.type == "date" and not getattr(p, "column", None)


def _index_sorted_page(ctx: FhirContext, t: str, tree, keys: list[SortKey], count: int,
                       cur: Cursor | None, reverse: bool) -> Select | None:
    """A page sorted by index-table keys, cut before any ``resource`` row is read; None when the
    tree needs the resource row (app.search.plan.match_rids).

    The matches' rids come from the index tables, each gets its sort keys (index probes, or for
    ``date`` the envelope the driving rows carry), the keyset filter, sort and cut run on those
    narrow rows, and only the page's rows are joined to ``resource`` and their JSON.  A
    patient's timeline (~250 Observations, page of 20) reads 20 resource rows instead of 250.
    """
    aliases = Aliases()
    on_envelope = [_envelope_key(ctx, t, k) for k in keys]
    found = match_rids(t, tree, aliases, envelope=any(on_envelope))
    if found is None:
        return None
    d, has_envelope = found
    d = d.subquery("d")
    exprs = [
        ((d.c.date_high if k.desc else d.c.date_low) if has_envelope and env
         else sort_expression(k, t, d, ctx.registry, aliases)).label(f"k{i}")
        for i, (k, env) in enumerate(zip(keys, on_envelope, strict=True))
    ]
    # OFFSET 0 fences the keys (correlated subqueries) so each is computed once per match.
    top = _cut(select(d.c.rid, *exprs).offset(0).subquery("mf"), [], keys, count, cur, reverse)
    pk = [top.c[f"k{i}"] for i in range(len(keys))]
    r, rv = resource, resource_version
    return (
        select(top.c.rid, r.c.res_type, r.c.res_id, rv.c.content, *pk)
        .join_from(top, r, r.c.rid == top.c.rid)
        .join(rv, and_(rv.c.rid == r.c.rid, rv.c.version == r.c.version))
        .where(r.c.deleted.is_(False))
        .order_by(*order_by(pk, keys, top.c.rid, reverse))
    )


def _run(ctx: FhirContext, scope: _Scope, params: list[tuple[str, str]], strict: bool) -> Result:
    explain = ctx.debug_sql and any(k == "_explain" and v == "true" for k, v in params)
    drop = {CURSOR_PARAM, *_DROPPED} | ({"_explain"} if ctx.debug_sql else set())
    params = [(k, v) for k, v in params if k not in drop]
    if ctx.permission is not None:  # types the token may not search: 403, or left out if implicit
        scope.types = ctx.permission.search_types(scope.types, len(scope.types) == 1 or bool(scope.extra_link_params))

    reqs = _parse_all(ctx, scope.types, params, strict)
    first = reqs[scope.types[0]]
    ctl = first.control_values
    count, warning = _count(ctx, ctl("_count"))
    total_mode = (ctl("_total") or ["none"])[-1]
    if total_mode not in TOTAL_MODES:
        raise FhirError(400, "invalid", f"_total must be one of none, estimate, accurate; got {total_mode[:40]!r}.", ["_total"])
    shape = parse_shape(ctl("_summary"), ctl("_elements"))
    keys, ignored_sort = parse_sort(ctl("_sort"), scope.types, ctx.registry, strict=strict)
    # Polling (``_lastUpdated=gt...`` and no ``_sort``): order by (lastUpdated, rid), which the
    # (res_type, last_updated, rid) index delivers directly; in rid order the planner walks the
    # primary key expecting matches everywhere while recent changes are all at the end.  The key
    # is implied by the query, so it is not shown in the links.
    implicit_keys = not keys and _polls_last_updated(first)
    if implicit_keys:
        keys = [SortKey("_lastUpdated", False, "datetime")]
    specs, ignored_inc = parse_includes(first.control, ctx.registry, ctx.enabled_types, strict=strict)

    # What the links carry (sealed, app.search.paging): only what was used, so following one
    # re-runs exactly this search (unknown parameters dropped in lenient mode stay dropped).
    kept = list(scope.extra_link_params) + list(first.params)
    if keys and not implicit_keys:
        kept.append(("_sort", ",".join(("-" if k.desc else "") + k.code for k in keys)))
    kept += [s.raw for s in specs]
    kept += [(k, v) for k, v in first.control if k in ("_total", "_summary", "_elements")]
    link_params = [*kept, ("_count", str(count))]
    # The self link: the followed link itself, or a first-page link; made before any query runs,
    # so a search too long for a link is refused before it costs anything.
    self_token = scope.resumed.token if scope.resumed is not None else seal_search(
        ctx.secret_key, ctx.caller, scope.rel, link_params, None)
    self_url = link_url(scope.path, self_token)

    cur: Cursor | None = position(scope.resumed, keys)

    # Default order (rid only): the cursor's rid bound goes into the match query itself.
    bound = None
    if cur is not None and not keys:
        bound = ("<" if cur.direction == "prev" else ">", cur.rid)
    reverse = cur is not None and cur.direction == "prev"
    wants_rows = shape.summary != "count" and count > 0
    trees = {t: _effective_tree(ctx, scope, reqs, t) for t in scope.types}
    page, page_params, on_driver = None, {}, None
    if wants_rows:
        # ``_explain`` shows the SQL with this request's values inline: built for it, not shared.
        page, page_params, on_driver = _page_statement(ctx, scope, trees, keys, bound, count, cur, reverse,
                                            use_templates=not explain)

    def all_matches():  # totals count every match, not only this page's
        return _match_query(ctx, scope, trees, keys)

    def one_clause_count() -> bool:  # count_query may count on the index tables from the tree alone
        return len(scope.types) == 1 and scope.compartment is None and (
            ctx.permission is None or not ctx.permission.changes(first.tree(), scope.types[0]))

    def fast_count():  # built only when a count is needed
        if one_clause_count():
            # One clause: counted on its index table alone.  NB: valid only while the match query
            # is exactly ``tree``; anything _match_query adds (e.g. an authorisation predicate)
            # must switch this off.
            return count_query(scope.types[0], trees[scope.types[0]])
        if len(scope.types) == 1 and scope.compartment is None and ctx.permission.withheld:
            # Scopes that reach every row, plus withheld labels: the tree is (clause AND NOT
            # labelled); count the clause's index rows with an anti-join on _security.
            t = scope.types[0]
            hide = ctx.permission.withhold_node(t)
            tree = trees[t]
            if (not ctx.permission.bounded(t, "s") and isinstance(tree, And) and len(tree.children) == 2
                    and tree.children[1] == hide):
                return count_query(t, tree.children[0], exclude=hide)
        return None

    sql_log: list[tuple[str, object]] = []

    def fetch(conn: Connection):
        rows: list = []
        total: int | None = None
        if wants_rows:
            sql_log.append(("page", page))
            if on_driver is not None:
                rows = driver_rows(conn, on_driver, page_params, ctx.search_timeout_ms)
            else:
                rows = list(conn.execute(page, page_params).all())
        more = len(rows) > count
        rows = rows[:count]
        if reverse:
            rows.reverse()
        if shape.summary == "count":
            counted = None
            if not explain and one_clause_count():
                counted = _templated_count(ctx, conn, scope.types[0], trees[scope.types[0]])
            total = counted if counted is not None else _accurate(conn, all_matches, sql_log, fast_count)
        elif total_mode != "none":
            if cur is None and not more and count > 0:
                total = len(rows)
            elif total_mode == "accurate":
                total = _accurate(conn, all_matches, sql_log, fast_count)
            else:
                total = _estimate(conn, all_matches(), sql_log)
        matches = [Found(r.rid, r.res_type, r.res_id, r.content) for r in rows]
        # Only ``_explain`` needs the include statements: without it a known include shape runs
        # its compiled statement and builds none (app.search.include).
        on_query = (lambda q: sql_log.append(("include", q))) if explain else None
        included = resolve_includes(conn, specs, matches, on_query=on_query,
                                    extra=ctx.permission.include_filter(ctx.enabled_types) if ctx.permission else None)
        return rows, more, total, matches, included

    # A single statement needs no transaction of its own (no BEGIN/COMMIT round trips); several
    # (page + total, includes) share one snapshot.
    one_statement = not specs and (shape.summary == "count" or total_mode == "none")
    for attempt in (1, 2):
        try:
            with (single_read if one_statement else read_snapshot)(ctx.read_engine or ctx.engine) as conn, \
                    statement_deadline(conn, ctx.search_timeout_ms):
                rows, more, total, matches, included = fetch(conn)
            break
        except QueryTimeout:
            raise FhirError(400, "too-costly", f"The search ran longer than this server allows "
                            f"({ctx.search_timeout_ms} ms) and was stopped; narrow it (more specific "
                            "parameters, a smaller _count, no _total=accurate, fewer _include).") from None
        except DBAPIError as e:
            # A connection that died while pooled (database restart): the pool is invalidated by
            # then; a read is safe to run again once on a fresh connection.
            if attempt == 2 or not e.connection_invalidated:
                raise
            sql_log.clear()

    links = _links(ctx, scope, link_params, keys, self_url, rows, cur, more)
    entries = [
        entry_bytes({"fullUrl": f"{ctx.base_url}/{f.res_type}/{f.res_id}", "search": {"mode": "match"}},
                    shape_resource(f.res_type, f.content, shape))
        for f in matches
    ]
    entries += [
        entry_bytes({"fullUrl": f"{ctx.base_url}/{f.res_type}/{f.res_id}", "search": {"mode": "include"}}, f.content)
        for f in included
    ]
    issues = []
    if warning:
        issues.append({"severity": "warning", "code": "processing", "diagnostics": warning})
    unused = _unused(first.ignored, ignored_sort, ignored_inc)
    if unused:
        # What the clear self link used to show by leaving them out (FHIR: the server states the
        # parameters it used); names only, never values.
        issues.append({"severity": "warning", "code": "not-supported", "diagnostics": (
            "Not used in this search (unknown or not supported here; Prefer: handling=strict refuses "
            f"such a search instead): {unused}.")})
    if explain:
        for label, stmt in sql_log:
            issues.append({"severity": "information", "code": "informational",
                           "diagnostics": f"{label} ({ctx.engine.dialect.name}): {_render_sql(ctx, stmt)}"})
    if issues:
        oo = {"resourceType": "OperationOutcome", "issue": issues}
        entries.append(entry_bytes({"search": {"mode": "outcome"}}, orjson.dumps(oo)))
    envelope: dict = {"resourceType": "Bundle"}
    label = bundle_label([f.content for f in matches] + [f.content for f in included])
    if label is not None:  # the Bundle's own label: its most confidential entry's (high-water mark)
        envelope["meta"] = {"security": [label]}
    envelope["type"] = "searchset"
    if total is not None:
        envelope["total"] = total
    envelope["link"] = links
    return Result(200, bundle_bytes(envelope, entries))


def _unused(params: list[tuple[str, str]], sort_keys: list[str], includes: list[tuple[str, str]]) -> str:
    """The parameters lenient handling left out, by name (``bogus``, ``_sort nonsense``,
    ``_include Patient:nope``), for the Bundle's warning; "" when none."""
    names = [k for k, _ in params] + [f"_sort {p}" for p in sort_keys] + [f"{k} {v}" for k, v in includes]
    seen = list(dict.fromkeys(n[:64] for n in names))
    return ", ".join(seen[:20]) + (", ..." if len(seen) > 20 else "")


def _polls_last_updated(req: SearchRequest) -> bool:
    """A top-level ``_lastUpdated`` clause whose every value has a lower bound (gt, ge, sa, eq, ap)."""
    for c in req.clauses:
        if (isinstance(c, Match) and getattr(c.param, "column", None) == "last_updated" and c.values
                and all(isinstance(v, DateValue) and v.prefix in _LOWER_BOUNDED for v in c.values)):
            return True
    return False


def _is_column(key: SortKey, types: list[str], registry) -> bool:
    return all(getattr(registry.get(t, key.code), "column", None) or key.code in ("_id", "_lastUpdated") for t in types)


def _links(ctx: FhirContext, scope: _Scope, link_params, keys, self_url, rows, cur, more) -> list[dict]:
    """``self``, ``next``, ``previous``: each ``<path>?_cursor=<sealed search and position>``."""
    def url(direction: str, row) -> str:
        values = tuple(getattr(row, f"k{i}") for i in range(len(keys)))
        token = seal_search(ctx.secret_key, ctx.caller, scope.rel, link_params, Cursor(direction, values, row.rid))
        return link_url(scope.path, token)

    links = [{"relation": "self", "url": self_url}]
    if not rows:
        return links
    forward = cur is None or cur.direction == "next"
    has_next = more if forward else True
    has_prev = cur is not None if forward else more
    if has_next:
        links.append({"relation": "next", "url": url("next", rows[-1])})
    if has_prev:
        links.append({"relation": "previous", "url": url("prev", rows[0])})
    return links


def _templated_count(ctx: FhirContext, conn: Connection, t: str, tree) -> int | None:
    """``_summary=count`` of a one-clause-countable tree (``count_query``) from a template run on
    the driver connection, as page statements are (``_page_statement``); None when the tree or
    the database does not allow it (the caller counts as before).  A count is cheap for
    PostgreSQL on the index table; building and executing its statement through SQLAlchemy was
    most of such a request's application CPU."""
    rec = Binder()
    try:
        shape, _ = walk(tree, rec)
    except NotTemplatable:
        return None
    templates = templates_for(ctx.registry)
    key = ("count", t, shape)
    built = templates.get(key)
    if built is None:
        stmt = count_query(t, walk(tree, Binder(build=True))[1])
        built = (stmt, {})
        templates.put(key, built)
    stmt, forms = built
    st = None if stmt is None else driver_form(forms, stmt, conn.dialect, rec.values)
    if st is None:
        return None
    return int(driver_rows(conn, st, rec.values, ctx.search_timeout_ms)[0][0])


def _accurate(conn: Connection, all_matches, sql_log, fast_count) -> int:
    q = fast_count()
    if q is None:
        q = select(func.count()).select_from(all_matches())
    sql_log.append(("total", q))
    return int(conn.execute(q).scalar_one())


def _estimate(conn: Connection, m, sql_log) -> int | None:
    """PostgreSQL: the planner's row estimate; SQLite: a bounded exact count (None past the cap)."""
    if conn.dialect.name == "postgresql":
        q = select(m.c.rid)
        compiled = q.compile(dialect=conn.dialect, compile_kwargs={"render_postcompile": True})
        sql_log.append(("total estimate: EXPLAIN", q))
        plan = conn.exec_driver_sql("EXPLAIN (FORMAT JSON) " + str(compiled), compiled.params).scalar_one()
        if isinstance(plan, (str, bytes)):
            plan = orjson.loads(plan)
        return int(plan[0]["Plan"]["Plan Rows"])
    capped = select(m.c.rid).limit(SQLITE_ESTIMATE_CAP + 1).subquery()
    q = select(func.count()).select_from(capped)
    sql_log.append(("total estimate (bounded count)", q))
    n = int(conn.execute(q).scalar_one())
    return n if n <= SQLITE_ESTIMATE_CAP else None


def _render_sql(ctx: FhirContext, stmt) -> str:
    try:
        return str(stmt.compile(dialect=ctx.engine.dialect, compile_kwargs={"literal_binds": True}))
    except Exception:  # noqa: BLE001 - a type without a literal renderer: show binds separately
        compiled = stmt.compile(dialect=ctx.engine.dialect, compile_kwargs={"render_postcompile": True})
        return f"{compiled} -- params: {compiled.params!r}"

"""``_include`` / ``_revinclude`` (specific ``Type:param[:target]``, ``Type:*``, ``*``, ``:iterate``).

Each include parameter is resolved with ONE set-based query per iteration over the whole set of
resources it applies to (never one query per resource):

- ``_include=S:p[:T]``: ``sp_reference`` rows of the sources (``rid IN (...)``) for ``p`` joined
  to the current, non-deleted target rows;
- ``_revinclude=S:p[:T]``: ``sp_reference`` rows of type ``S``/param ``p`` whose target is one of
  the resources (``target_type = T AND target_id IN (...)`` per type), joined to their current,
  non-deleted source rows.

On PostgreSQL the lists are array parameters (``= ANY(...)``) and the names literals, so an
include has one SQL text whatever the page holds: psycopg prepares it once, and without an
authorisation predicate it runs on the driver connection (app.db.driver) from a statement
compiled once per shape.

Iteration: the first round applies every include to the matches; later rounds apply only the
``:iterate`` ones to what the previous round added, until nothing new arrives or
``MAX_ITERATIONS`` rounds ran.  A resource is returned once (as a match if it is one).
``extra`` is a hook for authorisation: a per-type predicate ANDed into every include query, so a
compartment-restricted caller never receives resources outside the compartment by inclusion.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ARRAY, Connection, and_, any_, bindparam, cast, or_, select

from app.db.driver import driver_rows, for_driver
from app.fhir.errors import FhirError
from app.search.plan import const
from app.search.template import Templates
from app.storage.tables import resource, resource_version, sp_reference

MAX_ITERATIONS = 4
# Built once: an alias rebuilds its column collection when created (measurable per request).
_INC_REF, _INC_RES = sp_reference.alias("inc_ref"), resource.alias("inc_res")
_REV_REF, _REV_RES = sp_reference.alias("rev_ref"), resource.alias("rev_res")


@dataclass(frozen=True)
class IncludeSpec:
    reverse: bool
    iterate: bool
    source_type: str | None  # None: ``*`` (any type)
    params: tuple[str, ...]  # reference parameter codes of source_type; () with source None = all
    target: str | None
    raw: tuple[str, str]  # the (key, value) as given, for the self link


@dataclass
class Found:
    rid: int
    res_type: str
    res_id: str
    content: str


def parse_includes(control: list[tuple[str, str]], registry: Any, enabled: frozenset[str], *,
                   strict: bool) -> tuple[list[IncludeSpec], list[tuple[str, str]]]:
    specs: list[IncludeSpec] = []
    ignored: list[tuple[str, str]] = []
    for key, value in control:
        name, sep, mod = key.partition(":")
        if name not in ("_include", "_revinclude"):
            continue
        try:
            if (sep and not mod) or mod not in ("", "iterate", "recurse"):
                raise ValueError(f"Unsupported modifier ':{mod}' on {name}")
            specs.append(_parse_one(name == "_revinclude", mod != "", value, registry, enabled, (key, value)))
        except ValueError as e:
            if strict:
                raise FhirError(400, "not-supported", f"{key}: {e}", [key]) from None
            ignored.append((key, value))
    return specs, ignored


def _parse_one(reverse: bool, iterate: bool, value: str, registry: Any, enabled: frozenset[str],
               raw: tuple[str, str]) -> IncludeSpec:
    if value == "*":
        return IncludeSpec(reverse, iterate, None, (), None, raw)
    parts = value.split(":")
    if len(parts) not in (2, 3) or not all(parts):
        raise ValueError(f"'{value[:80]}' is not Type:param[:targetType]")
    src, code = parts[0], parts[1]
    target = parts[2] if len(parts) == 3 else None
    if src not in enabled:
        raise ValueError(f"Unknown resource type '{src[:64]}' in '{value[:80]}'")
    if target is not None and target not in enabled:
        raise ValueError(f"Unknown target type '{target[:64]}' in '{value[:80]}'")
    if code == "*":
        codes = tuple(c for c, p in registry.params(src).items() if p.type == "reference")
    else:
        p = registry.get(src, code)
        if p is None or p.type != "reference":
            raise ValueError(f"'{code[:64]}' is not a reference search parameter of {src}")
        if target is not None and p.targets and target not in p.targets:
            raise ValueError(f"{src}:{code} cannot refer to {target}")
        codes = (code,)
    return IncludeSpec(reverse, iterate, src, codes, target, raw)


def _include_query(spec: IncludeSpec, values: dict, extra: Callable[[str, Any], Any] | None, pg: bool):
    ref, r = _INC_REF, _INC_RES
    conds = [_in(ref.c.rid, "inc_rids", values["inc_rids"], pg), r.c.deleted.is_(False)]
    if spec.source_type is not None:
        conds.append(ref.c.res_type == const(spec.source_type))
        conds.append(ref.c.param.in_([const(p) for p in spec.params]))
    if spec.target is not None:
        conds.append(ref.c.target_type == const(spec.target))
    q = (
        select(r.c.rid, r.c.res_type, r.c.res_id, resource_version.c.content)
        .select_from(ref)
        .join(r, and_(r.c.res_type == ref.c.target_type, r.c.res_id == ref.c.target_id))
        .join(resource_version, and_(resource_version.c.rid == r.c.rid, resource_version.c.version == r.c.version))
        .where(*conds)
    )
    return _with_extra(q, r, extra)


def _revinclude_query(spec: IncludeSpec, types: tuple[str, ...], values: dict,
                      extra: Callable[[str, Any], Any] | None, pg: bool):
    ref, r = _REV_REF, _REV_RES
    target_cond = or_(*(and_(ref.c.target_type == const(t), _in(ref.c.target_id, f"rev_ids{i}", values[f"rev_ids{i}"], pg))
                        for i, t in enumerate(types)))
    conds = [target_cond, r.c.deleted.is_(False)]
    if spec.source_type is not None:
        conds.append(ref.c.res_type == const(spec.source_type))
        conds.append(ref.c.param.in_([const(p) for p in spec.params]))
    q = (
        select(r.c.rid, r.c.res_type, r.c.res_id, resource_version.c.content)
        .select_from(ref)
        .join(r, r.c.rid == ref.c.rid)
        .join(resource_version, and_(resource_version.c.rid == r.c.rid, resource_version.c.version == r.c.version))
        .where(*conds)
    )
    return _with_extra(q, r, extra)


def _shape(spec: IncludeSpec, pool: list[Found]) -> tuple[tuple, dict | None]:
    """An include's shape key (what decides its SQL: the spec and, for ``_revinclude``, the
    target types present) and its values; None values: nothing to include from ``pool``."""
    if not spec.reverse:
        rids = [f.rid for f in pool if spec.source_type in (None, f.res_type)]
        return (spec,), ({"inc_rids": rids} if rids else None)
    by_type: dict[str, list[str]] = {}
    for f in pool:
        if spec.target is None or spec.target == f.res_type:
            by_type.setdefault(f.res_type, []).append(f.res_id)
    types = tuple(sorted(by_type))
    return (spec, types), ({f"rev_ids{i}": by_type[t] for i, t in enumerate(types)} if types else None)


def _in(col: Any, name: str, values: list, pg: bool) -> Any:
    """PostgreSQL: ``col = ANY(:name)``, one array parameter, so the SQL is the same for any
    number of values (one prepared statement, reusable plans); SQLite: ``col IN (...)``."""
    if not pg:
        return col.in_(values)
    return col == any_(cast(bindparam(name), ARRAY(col.type)))


def _with_extra(q, r, extra):
    if extra is None:
        return q
    cond = extra(r)
    return q if cond is None else q.where(cond)


# PostgreSQL, no ``extra``: the include statements compiled for the driver (None: not
# possible), by driver and shape (a spec and, for _revinclude, the target types); bounded like
# the search templates.
_ON_DRIVER = Templates()


def _run_include(conn: Connection, spec: IncludeSpec, pool: list[Found], extra: Callable[[Any], Any] | None,
                 pg: bool, on_query: Callable[[Any], None] | None) -> list:
    """One include's rows, all in one call (iterating a result fetches row by row, and a page
    of reports brings ~100 results).  PostgreSQL without ``extra``: a shape seen before runs its
    compiled statement on the driver connection, with no statement built."""
    key, values = _shape(spec, pool)
    if values is None:
        return []
    ck = (conn.dialect.driver, key)
    st = _ON_DRIVER.get(ck, False) if pg and extra is None else None
    if st and on_query is None:
        return driver_rows(conn, st, values)
    q = _revinclude_query(spec, key[1], values, extra, pg) if spec.reverse else _include_query(spec, values, extra, pg)
    q = q.order_by(q.selected_columns[0])
    if on_query is not None:
        on_query(q.params(values) if pg else q)
    if st is False:
        st = for_driver(q, conn.dialect, values)
        _ON_DRIVER.put(ck, st)
    if st:
        return driver_rows(conn, st, values)
    return list(conn.execute(q, values).all())


def resolve_includes(conn: Connection, specs: list[IncludeSpec], matches: list[Found],
                     extra: Callable[[Any], Any] | None = None,
                     on_query: Callable[[Any], None] | None = None) -> list[Found]:
    """The included resources (not already among ``matches``), in a stable order."""
    if not specs or not matches:
        return []
    pg = conn.dialect.name == "postgresql"
    seen = {f.rid for f in matches}
    out: list[Found] = []
    frontier = list(matches)
    for round_no in range(MAX_ITERATIONS):
        active = specs if round_no == 0 else [s for s in specs if s.iterate]
        if not active or not frontier:
            break
        pool = frontier
        new: list[Found] = []
        for spec in active:
            found = _run_include(conn, spec, pool, extra, pg, on_query)
            for rid, res_type, res_id, content in found:
                if rid in seen:
                    continue
                seen.add(rid)
                new.append(Found(rid, res_type, res_id, content))
        out.extend(new)
        frontier = new
    return out

"""Searches by either id of a merged pair find the survivor's results.

A merge re-points every result to the survivor, but callers keep old ids (an EPR that cached
``Patient/A``; a result that arrived after the merge pointing at A). So a search whose reference
criterion names a Patient that took part in an active merge is widened to the whole merged
group: ``Observation?subject=Patient/A`` matches results of A and of its survivor B, and
``Observation?patient=B`` also finds stragglers that still point at A. Done on the expression
tree before compilation, so authorisation rewrites apply on top as usual. A patient-scoped token's
own compartment is *not* widened: the token was issued for one record id.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from sqlalchemy import Connection, Engine, or_, select

from app.auth.invalidation import generation_of
from app.db import unit_of_work
from app.identity.tables import patient_merge
from app.search.expr import And, Match, Node, Not, Or, ReferenceValue
from app.search.expr import or_ as node_or

_MAX_ROUNDS = 8


def merged_group(conn: Connection, ids: set[str]) -> dict[str, frozenset[str]]:
    """id -> every Patient id joined to it by active merges (itself included), transitively."""
    group: dict[str, set[str]] = {i: {i} for i in ids}
    frontier = set(ids)
    seen = set(ids)
    edges: list[tuple[str, str]] = []
    for _ in range(_MAX_ROUNDS):
        if not frontier:
            break
        f = sorted(frontier)
        rows = conn.execute(
            select(patient_merge.c.source_id, patient_merge.c.target_id).where(
                patient_merge.c.unmerged_at.is_(None),
                or_(patient_merge.c.source_id.in_(f), patient_merge.c.target_id.in_(f)),
            )
        ).all()
        frontier = set()
        for s, t in rows:
            edges.append((s, t))
            for x in (s, t):
                if x not in seen:
                    seen.add(x)
                    frontier.add(x)
    if not edges:
        return {i: frozenset({i}) for i in ids}
    # connected components over the edges found
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        while parent.get(x, x) != x:
            x = parent[x]
        return x

    for s, t in edges:
        parent[find(s)] = find(t)
    comps: dict[str, set[str]] = {}
    for x in seen:
        comps.setdefault(find(x), set()).add(x)
    return {i: frozenset(comps[find(i)]) for i in group}


def _patient_ids(node: Node, out: set[str]) -> None:
    if isinstance(node, (And, Or)):
        for c in node.children:
            _patient_ids(c, out)
    elif isinstance(node, Not):
        _patient_ids(node.child, out)
    elif isinstance(node, Match) and getattr(node.param, "type", None) == "reference":
        for v in node.values:
            if isinstance(v, ReferenceValue) and v.res_id and v.url is None and v.res_type in ("Patient", None):
                out.add(v.res_id)


def _widen(node: Node, groups: dict[str, frozenset[str]]) -> Node:
    if isinstance(node, (And, Or)):
        kids = tuple(_widen(c, groups) for c in node.children)
        return node if all(a is b for a, b in zip(kids, node.children, strict=True)) else replace(node, children=kids)
    if isinstance(node, Not):
        kid = _widen(node.child, groups)
        return node if kid is node.child else Not(kid)
    if isinstance(node, Match) and getattr(node.param, "type", None) == "reference":
        values: list[Any] = []
        changed = False
        for v in node.values:
            values.append(v)
            if isinstance(v, ReferenceValue) and v.res_id in groups and len(groups[v.res_id]) > 1 and v.url is None:
                for other in sorted(groups[v.res_id] - {v.res_id}):
                    values.append(ReferenceValue(res_id=other, res_type="Patient"))
                    changed = True
        return replace(node, values=tuple(values)) if changed else node
    return node


# Per process and database: every Patient id in an active merge, read at most once per
# invalidation generation (merges and unmerges announce themselves, app.auth.invalidation), so
# a search naming a patient who was never merged costs no query. SQLite: not cached.
_merged: dict[int, tuple[int, frozenset[str]]] = {}


def _merged_ids(engine: Any) -> frozenset[str] | None:
    if not isinstance(engine, Engine):  # a transaction's own connection: ask the database
        return None
    listener, generation = generation_of(engine)
    if listener is None:
        return None
    hit = _merged.get(id(engine))
    if hit is not None and listener.trusted(hit[0]):
        return hit[1]
    with unit_of_work(engine) as conn:
        rows = conn.execute(select(patient_merge.c.source_id, patient_merge.c.target_id)
                            .where(patient_merge.c.unmerged_at.is_(None))).all()
    ids = frozenset(x for row in rows for x in row)
    _merged[id(engine)] = (generation, ids)  # the generation from before the read
    return ids


def widen(engine: Any, tree: Node, compartment: str | None, memo: dict) -> tuple[Node, list[str]]:
    """(the tree with merged Patient ids widened, the compartment ids to OR over)."""
    ids: set[str] = set()
    _patient_ids(tree, ids)
    if compartment is not None:
        ids.add(compartment)
    if not ids:
        return tree, [compartment] if compartment is not None else []
    known = _merged_ids(engine)
    if known is not None and known.isdisjoint(ids):  # the usual case: nobody here was merged
        return tree, [compartment] if compartment is not None else []
    key = frozenset(ids)
    groups = memo.get(key)
    if groups is None:
        with unit_of_work(engine) as conn:
            groups = memo[key] = merged_group(conn, ids)
    comps = sorted(groups[compartment]) if compartment is not None else []
    return _widen(tree, groups), comps


def compartment_any(restrict, tree: Node, ids: list[str], registry: Any, res_type: str) -> Node:
    """``restrict_to_compartment`` for any of several Patient ids (a merged group)."""
    if len(ids) == 1:
        return restrict(tree, ids[0], registry, res_type)
    from app.search.expr import and_ as node_and
    from app.search.rewrite import compartment_condition

    return node_and(tree, node_or(*(compartment_condition(i, registry, res_type) for i in ids)))

"""Search statement templates: the page statement of a search *shape*, built once and reused.

Why: building a search's SQLAlchemy statement (aliases, subqueries, column proxies, sort keys,
keyset terms) and generating its cache key cost more application CPU than anything else in a
search (docs/performance.md, "Statement templates").  Two searches that differ only in their
values (another patient, another code, another page) need the same SQL with other bind values.
So the expression tree is split into a *shape* (everything that decides the SQL: types,
parameters, modifiers, prefixes, which parts of a value are present) and the *values*; the
statement of a shape is built once with named bind parameters (``sv0``, ``sv1``, ...) and then
executed with each request's values.  The SQL is the same as an uncached build (SQLAlchemy binds
these values as parameters anyway), so query plans do not change.

Only values the compilers use as they are can become bind parameters: token systems and codes,
references, and dates (except ``ap``, whose range depends on the time of the search).  A tree
with any other value (strings, numbers, quantities, uris, composites) raises
:class:`NotTemplatable` and the caller builds its statement as before.  ``_security`` values stay
literals in the shape: the compiler groups them by system (app.search.plan._security_values), and
they are the server's own label lists, not per-request data.
"""

from __future__ import annotations

import dataclasses
import weakref
from collections.abc import Callable, Hashable
from typing import Any

from sqlalchemy import bindparam

from app.search.expr import (
    And,
    Chain,
    Const,
    DateValue,
    Has,
    Match,
    Missing,
    Node,
    Not,
    Or,
    ReferenceValue,
    TokenValue,
)

_BY_REGISTRY: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
MAX_SHAPES = 1024  # per registry: a full cache is emptied (shapes are few; values are not in them)


class NotTemplatable(Exception):
    """The tree holds a value the compilers transform (or the time of day): no template."""


class Binder:
    """Hands out bind names in order; in ``build`` mode returns bind parameters, else records values.

    The same walk runs in both modes, so the n-th value of a shape always has the n-th name.
    """

    def __init__(self, build: bool = False) -> None:
        self.build = build
        self.values: dict[str, Any] = {}

    def __call__(self, value: Any) -> Any:
        name = f"sv{len(self.values)}"
        self.values[name] = value
        # No value and no type: a comparison gives it its column's type (as for a literal), and
        # executing without a value for it is an error, never a silent NULL.
        return bindparam(name) if self.build else None


def _token(v: TokenValue, b: Binder) -> tuple[Hashable, TokenValue]:
    system = v.system
    if v.system_mode == "eq" and system is not None:
        system = b(system)
    code = v.code if v.code is None else b(v.code)
    key = ("T", v.system_mode, v.system is None, v.code is None)
    return key, (dataclasses.replace(v, system=system, code=code) if b.build else v)


def _reference(v: ReferenceValue, b: Binder) -> tuple[Hashable, ReferenceValue]:
    res_id = v.res_id if v.res_id is None else b(v.res_id)
    res_type = v.res_type if v.res_type is None else b(v.res_type)
    url = v.url if v.url is None else b(v.url)
    key = ("R", v.res_id is None, v.res_type is None, v.url is None)
    return key, (dataclasses.replace(v, res_id=res_id, res_type=res_type, url=url) if b.build else v)


def _date(v: DateValue, b: Binder) -> tuple[Hashable, DateValue]:
    if v.prefix == "ap":
        raise NotTemplatable("ap dates widen by the time of the search")
    low, high = b(v.low), b(v.high)
    return ("D", v.prefix), (dataclasses.replace(v, low=low, high=high) if b.build else v)


_VALUES: dict[type, Callable[[Any, Binder], tuple[Hashable, Any]]] = {
    TokenValue: _token,
    ReferenceValue: _reference,
    DateValue: _date,
}


def walk(node: Node, b: Binder) -> tuple[Hashable, Node]:
    """``(shape key, node)``: the node with bind parameters in ``build`` mode, else unchanged."""
    if isinstance(node, Match):
        p = node.param
        if p.code == "_security":
            return ("M", p.code, node.modifier, node.values), node
        keys, values = [], []
        for v in node.values:
            fn = _VALUES.get(type(v))
            if fn is None:
                raise NotTemplatable(type(v).__name__)
            k, nv = fn(v, b)
            keys.append(k)
            values.append(nv)
        key = ("M", p.code, p.type, node.modifier, tuple(keys))
        return key, (dataclasses.replace(node, values=tuple(values)) if b.build else node)
    if isinstance(node, (And, Or)):
        parts = [walk(c, b) for c in node.children]
        key = (type(node).__name__, tuple(k for k, _ in parts))
        return key, (type(node)(tuple(n for _, n in parts)) if b.build else node)
    if isinstance(node, Not):
        k, n = walk(node.child, b)
        return ("N", k), (Not(n) if b.build else node)
    if isinstance(node, Const):
        return ("K", node.value), node
    if isinstance(node, Missing):
        return ("Mi", node.param.code, node.param.type, node.missing), node
    if isinstance(node, Chain):
        parts = [(t, *walk(inner, b)) for t, inner in node.branches]
        key = ("C", node.param.code, tuple((t, k) for t, k, _ in parts))
        return key, (Chain(node.param, tuple((t, n) for t, _, n in parts)) if b.build else node)
    if isinstance(node, Has):
        k, n = walk(node.node, b)
        return ("H", node.res_type, node.ref_param.code, k), (Has(node.res_type, node.ref_param, n) if b.build else node)
    raise NotTemplatable(type(node).__name__)


def templates_for(registry: Any) -> Templates:
    """The statement templates of ``registry`` (shape keys name parameters by code and type,
    which mean one thing within one registry)."""
    t = _BY_REGISTRY.get(registry)
    if t is None:
        t = _BY_REGISTRY[registry] = Templates()
    return t


class Templates:
    """Built statements by shape key, for one registry (one app)."""

    def __init__(self, max_shapes: int = MAX_SHAPES) -> None:
        self._stmts: dict[Hashable, Any] = {}
        self.max_shapes = max_shapes

    def get(self, key: Hashable, default: Any = None) -> Any:
        return self._stmts.get(key, default)

    def put(self, key: Hashable, stmt: Any) -> None:
        if len(self._stmts) >= self.max_shapes:
            self._stmts.clear()  # a plain dict stays safe with threaded workers; rebuilding is cheap
        self._stmts[key] = stmt

    def clear(self) -> None:
        self._stmts.clear()

    def __len__(self) -> int:
        return len(self._stmts)

"""The search expression tree: plain, immutable dataclasses.

Why a tree of plain data: every stage (parse, rewrite, compile) is a pure function over these
nodes, so each stage can be unit-tested alone and rewrites (compartments, scopes) can add
predicates without knowing SQL.  Values are already *typed and validated* (dates are UTC ranges,
numbers are Decimals with their implicit precision), so compilers never parse strings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

# ---------------------------------------------------------------------------------------------
# Typed values (one OR-alternative of a parameter)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TokenValue:
    """``code``, ``system|code``, ``|code`` or ``system|``.

    system_mode: "any" (no ``|`` given), "none" (``|code``: system must be absent), "eq".
    """

    code: str | None
    system: str | None = None
    system_mode: str = "any"


@dataclass(frozen=True)
class StringValue:
    raw: str
    norm: str  # normalised like the index's value_norm


@dataclass(frozen=True)
class DateValue:
    """A query date as an inclusive naive-UTC range ``[low, high]`` plus its prefix."""

    prefix: str
    low: datetime
    high: datetime
    raw: str = ""


@dataclass(frozen=True)
class NumberValue:
    """A decimal with its prefix; ``low``/``high`` are the implicit precision range [low, high)."""

    prefix: str
    value: Decimal
    low: Decimal
    high: Decimal
    raw: str = ""


@dataclass(frozen=True)
class QuantityValue:
    number: NumberValue
    system: str | None = None
    code: str | None = None


@dataclass(frozen=True)
class ReferenceValue:
    """Local reference (type may be None: any target type) or an external ``url``."""

    res_id: str | None = None
    res_type: str | None = None
    url: str | None = None


@dataclass(frozen=True)
class UriValue:
    value: str


@dataclass(frozen=True)
class CompositeValue:
    parts: tuple[Any, ...]  # one typed value per component, in component order


# ---------------------------------------------------------------------------------------------
# Nodes
# ---------------------------------------------------------------------------------------------


class Node:
    """Base class of expression nodes."""


@dataclass(frozen=True)
class Match(Node):
    """``param[:modifier]=v1,v2`` on the current resource type: an OR over ``values``.

    ``param`` is the registry's SearchParam (duck-typed: code, type, column, components...).
    """

    param: Any
    modifier: str | None
    values: tuple[Any, ...]


@dataclass(frozen=True)
class Missing(Node):
    """``param:missing=true|false``."""

    param: Any
    missing: bool


@dataclass(frozen=True)
class Chain(Node):
    """``ref.param=...``: the reference ``param`` points at a resource that satisfies ``branches``.

    ``branches`` holds one ``(target_type, node)`` per candidate target type; any may match.
    """

    param: Any
    branches: tuple[tuple[str, Node], ...]


@dataclass(frozen=True)
class Has(Node):
    """``_has:Type:ref:inner``: some ``res_type`` resource whose ``ref`` points here satisfies ``node``."""

    res_type: str
    ref_param: Any
    node: Node


@dataclass(frozen=True)
class And(Node):
    children: tuple[Node, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class Or(Node):
    children: tuple[Node, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class Not(Node):
    child: Node


@dataclass(frozen=True)
class Const(Node):
    """Always true / always false (e.g. a compartment rewrite for a type outside the compartment)."""

    value: bool


def and_(*nodes: Node) -> Node:
    """Flatten and simplify a conjunction, so compilers see small trees."""
    out: list[Node] = []
    for n in nodes:
        if isinstance(n, And):
            out.extend(n.children)
        elif isinstance(n, Const) and n.value:
            continue
        elif isinstance(n, Const):
            return n
        else:
            out.append(n)
    if len(out) == 1:
        return out[0]
    return And(tuple(out))


def or_(*nodes: Node) -> Node:
    """Flatten and simplify a disjunction."""
    out: list[Node] = []
    for n in nodes:
        if isinstance(n, Or):
            out.extend(n.children)
        elif isinstance(n, Const) and not n.value:
            continue
        elif isinstance(n, Const):
            return n
        else:
            out.append(n)
    if not out:
        return Const(False)
    if len(out) == 1:
        return out[0]
    return Or(tuple(out))

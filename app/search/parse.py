"""Stage 1: query parameters -> typed clauses (expression nodes) in a SearchRequest.

Why a separate stage: all validation (unknown parameters, modifiers, malformed values) happens
here, once, so the compilers can assume well-typed input and the HTTP layer can build the
self link from what was actually used (``request.params``) rather than what was sent.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

from app.fhir.errors import FhirError
from app.search.expr import (
    Chain,
    CompositeValue,
    DateValue,
    Has,
    Match,
    Missing,
    Node,
    Not,
    NumberValue,
    QuantityValue,
    ReferenceValue,
    StringValue,
    TokenValue,
    UriValue,
    and_,
)
from app.search.values import (
    bad_value,
    normalize_string,
    parse_date_range,
    parse_decimal,
    split_prefix,
)

CONTROL_PARAMS = frozenset({
    "_count", "_sort", "_include", "_revinclude", "_total", "_summary", "_elements", "_format",
    "_pretty", "_type", "_contained", "_containedType",
})

# Modifiers each parameter type accepts (besides :missing, accepted everywhere).
MODIFIERS: dict[str, frozenset[str]] = {
    "string": frozenset({"exact", "contains"}),
    "token": frozenset({"not", "text", "of-type"}),
    "reference": frozenset({"identifier"}),  # plus :[Type]
    "uri": frozenset({"below", "above"}),
    "date": frozenset(),
    "number": frozenset(),
    "quantity": frozenset(),
    "composite": frozenset(),
}


@dataclass(frozen=True)
class _BuiltinParam:
    """Fallback for ``_id``/``_lastUpdated`` if the registry does not list them."""

    code: str
    type: str
    column: str | None
    expression: str = ""
    targets: tuple[str, ...] = ()
    components: tuple = ()


_BUILTINS = {
    "_id": _BuiltinParam("_id", "token", "res_id"),
    "_lastUpdated": _BuiltinParam("_lastUpdated", "date", "last_updated"),
}


@dataclass
class SearchRequest:
    """The parsed search: AND of ``clauses``; result-control parameters kept raw for later stages."""

    res_type: str
    clauses: list[Node] = field(default_factory=list)
    params: list[tuple[str, str]] = field(default_factory=list)  # accepted search params, raw
    control: list[tuple[str, str]] = field(default_factory=list)  # _count, _sort, ... raw
    ignored: list[tuple[str, str]] = field(default_factory=list)  # lenient mode: dropped

    def tree(self) -> Node:
        """The expression tree: the conjunction of all clauses (repeated params = AND)."""
        return and_(*self.clauses)

    def control_values(self, name: str) -> list[str]:
        """Raw values of a result-control parameter (``_sort``, ``_include:iterate`` ...)."""
        return [v for k, v in self.control if k == name]


# Bounds on one search's shape (decision 0019): each chain link and ``_has`` level nests a
# subquery, each OR-value and each AND-ed parameter a condition.  Past these SQLite's parser
# overflows its stack (7 links) or its expression depth (~450 values), SQLAlchemy recurses out
# (~80 links), and PostgreSQL's planner time grows steeply (100 AND-ed clauses: 0.7 s to plan).
MAX_DEPTH = 4  # chain links plus _has levels in one parameter name
MAX_OR_VALUES = 100  # comma-separated values of one parameter
MAX_CLAUSES = 32  # search parameters of one search (repeated ones count each time)


def too_costly(param: str, message: str) -> FhirError:
    """A 400 ``too-costly`` naming the parameter, strict or lenient: ignoring part of a search
    would broaden it."""
    return FhirError(400, "too-costly", f"Search parameter '{param}': {message}", expression=[param])


class _Unsupported(Exception):
    """Unknown parameter or modifier: 400 when strict, ignored when lenient."""

    def __init__(self, param: str, message: str, code: str = "not-supported") -> None:
        super().__init__(message)
        self.param = param
        self.message = message
        self.code = code


def split_unescaped(s: str, sep: str) -> list[str]:
    """Split on ``sep`` not preceded by a backslash escape; escapes are kept for later splits."""
    parts: list[str] = []
    cur: list[str] = []
    i = 0
    while i < len(s):
        c = s[i]
        if c == "\\" and i + 1 < len(s):
            cur.append(s[i : i + 2])
            i += 2
            continue
        if c == sep:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(c)
        i += 1
    parts.append("".join(cur))
    return parts


def unescape(s: str) -> str:
    """Undo the search escapes ``\\,`` ``\\$`` ``\\|`` ``\\\\``."""
    out: list[str] = []
    i = 0
    while i < len(s):
        if s[i] == "\\" and i + 1 < len(s) and s[i + 1] in ",$|\\":
            out.append(s[i + 1])
            i += 2
        else:
            out.append(s[i])
            i += 1
    return "".join(out)


class _Parser:
    def __init__(self, registry: Any, base_url: str | None, tz: ZoneInfo | None) -> None:
        self.registry = registry
        self.base_url = base_url.rstrip("/") + "/" if base_url else None
        self.tz = tz

    # -- parameter lookup ----------------------------------------------------------------

    def _param(self, res_type: str, code: str) -> Any:
        p = self.registry.get(res_type, code)
        if p is None and code in _BUILTINS and self._known_type(res_type):
            p = _BUILTINS[code]
        if p is None:
            reason = getattr(self.registry, "unsupported", lambda _t: {})(res_type).get(code)
            if reason:  # a spec parameter of this type that the server cannot index
                raise _Unsupported(code, f"Search parameter '{code}' of {res_type} is not supported: {reason}")
            raise _Unsupported(code, f"Unknown search parameter '{code}' for resource type {res_type}")
        if p.type not in MODIFIERS:
            raise _Unsupported(code, f"Search parameter '{code}' (type {p.type}) is not supported")
        return p

    def _known_type(self, res_type: str) -> bool:
        try:
            return bool(self.registry.params(res_type))
        except Exception:  # noqa: BLE001 - registry may raise for unknown types
            return False

    # -- keys ----------------------------------------------------------------------------

    def key(self, res_type: str, key: str, value: str) -> Node | None:
        """One ``key=value`` pair -> node (None: nothing to match, e.g. an empty value)."""
        if key.startswith("_has:"):
            return self._has(res_type, key, value)
        if "." in key:
            return self._chain(res_type, key, value)
        name, sep, mod = key.partition(":")
        _check_name(key, name, sep, mod)
        param = self._param(res_type, name)
        return self._simple(res_type, param, name, mod or None, value)

    def _has(self, res_type: str, key: str, value: str) -> Node | None:
        parts = key.split(":", 3)
        if len(parts) < 4 or not all(parts[1:]):
            raise _Unsupported(key, f"Invalid _has parameter '{key}': expected _has:Type:reference:param",
                               code="invalid")
        _, other, ref, rest = parts
        if not self._known_type(other):
            raise _Unsupported(key, f"Unknown resource type '{other}' in '{key}'")
        ref_param = self._param(other, ref)
        if ref_param.type != "reference":
            raise _Unsupported(key, f"'{ref}' of {other} in '{key}' is not a reference parameter")
        if ref_param.targets and res_type not in ref_param.targets:
            raise _Unsupported(key, f"'{other}.{ref}' cannot refer to {res_type} in '{key}'")
        inner = self.key(other, rest, value)
        if inner is None:
            return None
        return Has(other, ref_param, inner)

    def _chain(self, res_type: str, key: str, value: str) -> Node | None:
        head, rest = key.split(".", 1)
        name, sep, mod = head.partition(":")
        _check_name(key, name, sep, mod)
        param = self._param(res_type, name)
        if param.type != "reference":
            raise _Unsupported(key, f"Cannot chain on '{name}': not a reference parameter")
        if mod:
            if param.targets and mod not in param.targets:
                raise _Unsupported(key, f"'{name}' cannot refer to {mod} in '{key}'")
            targets: tuple[str, ...] = (mod,)
        else:
            targets = tuple(param.targets)
        branches: list[tuple[str, Node]] = []
        for t in targets:
            if not self._known_type(t):
                continue
            try:
                node = self.key(t, rest, value)
            except _Unsupported:
                continue
            if node is None:
                return None
            branches.append((t, node))
        if not branches:
            raise _Unsupported(key, f"Unknown chained parameter '{rest}' in '{key}'")
        return Chain(param, tuple(branches))

    def _simple(self, res_type: str, param: Any, name: str, mod: str | None, value: str) -> Node | None:
        if mod == "missing":
            if value not in ("true", "false"):
                raise bad_value(name, ":missing takes true or false")
            return Missing(param, value == "true")
        if mod is not None:
            allowed = MODIFIERS[param.type]
            is_type_mod = param.type == "reference" and mod[:1].isupper()
            if param.column or not (mod in allowed or is_type_mod):
                raise _Unsupported(name, f"Modifier ':{mod}' is not supported on search parameter '{name}'")
            if is_type_mod:
                if param.targets and mod not in param.targets:
                    raise _Unsupported(name, f"'{name}' cannot refer to {mod}")
        alts = [a for a in split_unescaped(value, ",") if a != ""]
        if not alts:
            return None
        if len(alts) > MAX_OR_VALUES:
            raise too_costly(name, f"{len(alts)} values; at most {MAX_OR_VALUES} in one parameter "
                                   "(split the search)")
        if mod == "not":
            return Not(Match(param, None, tuple(self.value(param, name, None, a) for a in alts)))
        return Match(param, mod, tuple(self.value(param, name, mod, a) for a in alts))

    # -- values --------------------------------------------------------------------------

    def value(self, param: Any, name: str, mod: str | None, raw: str) -> Any:
        """Parse one OR-alternative (still escaped) according to the parameter type."""
        t = param.type
        if t == "token":
            if mod == "text":
                s = unescape(raw)
                return StringValue(s, normalize_string(s))
            if mod == "of-type":
                parts = split_unescaped(raw, "|")
                if len(parts) != 3 or not all(parts):
                    raise bad_value(name, ":of-type takes system|code|value")
                sys_, code, val = (unescape(p) for p in parts)
                return TokenValue(f"{code}|{val}", sys_, "eq")
            return self.token(name, raw)
        if t == "string":
            s = unescape(raw)
            return StringValue(s, normalize_string(s))
        if t == "date":
            prefix, rest = split_prefix(name, raw)
            low, high = parse_date_range(name, rest, self.tz)
            return DateValue(prefix, low, high, raw)
        if t == "number":
            return self.number(name, raw)
        if t == "quantity":
            parts = split_unescaped(raw, "|")
            if len(parts) == 1:
                return QuantityValue(self.number(name, parts[0]))
            if len(parts) != 3:
                raise bad_value(name, "a quantity is number, number|system|code or number||code")
            num = self.number(name, parts[0])
            return QuantityValue(num, unescape(parts[1]) or None, unescape(parts[2]) or None)
        if t == "reference":
            if mod == "identifier":
                return self.token(name, raw)
            return self.reference(param, name, mod, unescape(raw))
        if t == "uri":
            return UriValue(unescape(raw))
        if t == "composite":
            parts = split_unescaped(raw, "$")
            comps = tuple(param.components)
            if len(parts) != len(comps):
                raise bad_value(name, f"a composite value has {len(comps)} parts separated by '$'")
            return CompositeValue(tuple(
                self.value(cp, name, None, part) for (cp, _expr), part in zip(comps, parts, strict=True)
            ))
        raise _Unsupported(name, f"Search parameter '{name}' (type {t}) is not supported")

    def token(self, name: str, raw: str) -> TokenValue:
        parts = split_unescaped(raw, "|")
        if len(parts) == 1:
            return TokenValue(unescape(raw))
        if len(parts) != 2:
            raise bad_value(name, "a token is code, system|code, |code or system|")
        sys_, code = unescape(parts[0]), unescape(parts[1])
        if not sys_ and not code:
            raise bad_value(name, "'|' alone is not a token")
        if not sys_:
            return TokenValue(code, None, "none")
        return TokenValue(code or None, sys_, "eq")

    def number(self, name: str, raw: str) -> NumberValue:
        prefix, rest = split_prefix(name, raw)
        d, lo, hi = parse_decimal(name, rest)
        return NumberValue(prefix, d, lo, hi, raw)

    def reference(self, param: Any, name: str, type_mod: str | None, v: str) -> ReferenceValue:
        if "://" in v or v.startswith(("urn:", "#")):
            if self.base_url and v.startswith(self.base_url):
                v = v[len(self.base_url):]
            else:
                return ReferenceValue(url=v)
        segs = v.split("/")
        if len(segs) == 1:
            return ReferenceValue(res_id=v, res_type=type_mod or None)
        if len(segs) in (2, 4) and (len(segs) == 2 or segs[2] == "_history") and all(segs):
            rtype, rid = segs[0], segs[1]
            if type_mod and rtype != type_mod:
                raise bad_value(name, f"'{v}' does not refer to a {type_mod}")
            return ReferenceValue(res_id=rid, res_type=rtype)
        raise bad_value(name, f"'{v}' is not a reference (id, Type/id or absolute URL)")


def _check_name(key: str, name: str, sep: str, mod: str) -> None:
    """``:`` with nothing after it is no modifier (the grammar has none that is empty), and a
    name cannot be empty (``.name``, ``:``): unknown, with the key the caller sent."""
    if not name:
        raise _Unsupported(key, f"'{key}' does not start with a search parameter name")
    if sep and not mod:
        raise _Unsupported(key, f"Empty modifier in '{key}'")


def _check_text(key: str, value: str) -> None:
    """Reject text no database can store (NUL, lone surrogates): a 400, never a driver 500."""
    for text in (key, value):
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise bad_value(key, "not valid UTF-8 text") from None
        if "\x00" in text:
            raise bad_value(key, "contains a NUL character")


def parse(
    res_type: str,
    params: list[tuple[str, str]],
    registry: Any,
    *,
    strict: bool,
    base_url: str | None = None,
    tz: ZoneInfo | None = None,
) -> SearchRequest:
    """Parse query parameters for a search on ``res_type``.

    strict=True (``Prefer: handling=strict`` and all conditional operations): unknown parameters
    and modifiers are a 400.  Lenient: they are listed in ``request.ignored`` so the self link
    omits them.  Malformed values are a 400 in both modes: a silently broadened search is worse
    than an error.
    """
    parser = _Parser(registry, base_url, tz)
    req = SearchRequest(res_type)
    for key, value in params:
        _check_text(key, value)
        base = key.split(":", 1)[0]
        if base in CONTROL_PARAMS:
            req.control.append((key, value))
            continue
        depth = key.count(".") + key.count("_has:")
        if depth > MAX_DEPTH:
            raise too_costly(key, f"{depth} chained references and _has levels; at most {MAX_DEPTH}")
        try:
            node = parser.key(res_type, key, value)
        except _Unsupported as e:
            if strict:
                raise FhirError(400, e.code, e.message, expression=[key]) from None
            req.ignored.append((key, value))
            continue
        if node is not None:
            if len(req.clauses) == MAX_CLAUSES:
                raise too_costly(key, f"more than {MAX_CLAUSES} search parameters in one search")
            req.clauses.append(node)
            req.params.append((key, value))
    return req

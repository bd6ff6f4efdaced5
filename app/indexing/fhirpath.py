"""A small FHIRPath evaluator for the subset that the R4 search-parameter expressions use.

Indexing runs on every write, so expressions are parsed once into a tree of closures over plain
JSON values (dicts, lists, str, bool, numbers) — never pydantic models, which would cost more than
the whole extraction. Supported: paths, ``|`` unions, ``as``/``is`` operators, ``=``/``!=``,
``and``/``or``, literals, ``$this``, and the functions ``where``, ``exists``, ``empty``, ``first``,
``last``, ``not``, ``count``, ``as``, ``is``, ``ofType``, ``resolve``, ``extension``, ``hasValue``.
Anything else raises :class:`FhirPathError` at compile time, so an expression we cannot evaluate is
found when the registry is built, not on a patient's data.

Choice elements (``value[x]``) are found by their JSON names (``valueQuantity``): ``value`` alone
yields whatever ``value*`` is present; ``value.as(Quantity)`` / ``(value as Quantity)`` /
``value.ofType(Quantity)`` read only the ``valueQuantity`` key (and those of Quantity's
specialisations such as ``valueAge``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any

__all__ = [
    "FhirPathError",
    "compile_expression",
    "evaluate",
    "split_union",
    "branch_root",
    "resolve_targets",
    "reference_type",
]

Fn = Callable[[list], list]


class FhirPathError(ValueError):
    """An expression outside the supported subset, or malformed."""


# --------------------------------------------------------------------------- tokenizer

_TOKEN = re.compile(
    r"""\s*(?:
        (?P<str>'(?:[^'\\]|\\.)*')
      | (?P<num>\d+(?:\.\d+)?)
      | (?P<op>!=|<=|>=|[.()|,=<>\[\]])
      | (?P<var>\$[A-Za-z_]+|%[A-Za-z_]+)
      | (?P<id>[A-Za-z_][A-Za-z0-9_]*|`[^`]+`)
    )""",
    re.VERBOSE,
)


def _tokenize(text: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise FhirPathError(f"cannot read FHIRPath at {pos}: {text[pos:pos + 20]!r}")
        kind = m.lastgroup or ""
        val = m.group(kind)
        if kind == "id" and val.startswith("`"):
            val = val[1:-1]
        out.append((kind, val))
        pos = m.end()
    out.append(("end", ""))
    return out


# --------------------------------------------------------------------------- parser (AST as tuples)

# Binary operator precedence, loosest first (FHIRPath spec section "Operator precedence").
_PREC = {"or": 1, "xor": 1, "and": 2, "=": 3, "!=": 3, "|": 4, "is": 5, "as": 5}


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.toks = _tokenize(text)
        self.i = 0

    def peek(self) -> tuple[str, str]:
        return self.toks[self.i]

    def take(self) -> tuple[str, str]:
        tok = self.toks[self.i]
        self.i += 1
        return tok

    def expect(self, val: str) -> None:
        kind, v = self.take()
        if v != val or kind == "str":
            raise FhirPathError(f"expected {val!r} in {self.text!r}")

    def parse(self) -> tuple:
        node = self.expr(0)
        if self.peek()[0] != "end":
            raise FhirPathError(f"unexpected {self.peek()[1]!r} in {self.text!r}")
        return node

    def _binop(self) -> str | None:
        kind, val = self.peek()
        if kind in ("op", "id") and val in _PREC:
            return val
        return None

    def expr(self, min_prec: int) -> tuple:
        left = self.postfix(self.term())
        while (op := self._binop()) is not None and _PREC[op] > min_prec:
            self.take()
            if op in ("is", "as"):
                left = (op, left, self.type_name())
            else:
                left = (op, left, self.expr(_PREC[op]))
        return left

    def type_name(self) -> str:
        kind, val = self.take()
        if kind != "id":
            raise FhirPathError(f"type name expected in {self.text!r}")
        if val in ("FHIR", "System") and self.peek()[1] == ".":
            self.take()
            val = self.take()[1]
        return val

    def term(self) -> tuple:
        kind, val = self.take()
        if kind == "str":
            return ("lit", bytes(val[1:-1], "utf-8").decode("unicode_escape"))
        if kind == "num":
            return ("lit", float(val) if "." in val else int(val))
        if kind == "var":
            if val == "$this":
                return ("this",)
            if val in ("%resource", "%rootResource", "%context"):
                return ("resource",)
            raise FhirPathError(f"unsupported variable {val} in {self.text!r}")
        if kind == "op" and val == "(":
            node = self.expr(0)
            self.expect(")")
            return node
        if kind == "id":
            if val in ("true", "false"):
                return ("lit", val == "true")
            if self.peek()[1] == "(":
                return self.call(("this",), val)
            if val[0].isupper():
                return ("type", val)
            return ("member", ("this",), val)
        raise FhirPathError(f"unexpected {val!r} in {self.text!r}")

    def call(self, base: tuple, name: str) -> tuple:
        self.expect("(")
        args: list[tuple] = []
        if self.peek()[1] != ")":
            while True:
                if name in ("as", "is", "ofType"):
                    args.append(("typename", self.type_name()))
                else:
                    args.append(self.expr(0))
                if self.peek()[1] == ",":
                    self.take()
                    continue
                break
        self.expect(")")
        return ("call", base, name, tuple(args))

    def postfix(self, node: tuple) -> tuple:
        while True:
            kind, val = self.peek()
            if kind == "op" and val == ".":
                self.take()
                k2, name = self.take()
                if k2 != "id":
                    raise FhirPathError(f"name expected after '.' in {self.text!r}")
                if self.peek()[1] == "(":
                    node = self.call(node, name)
                else:
                    node = ("member", node, name)
            elif kind == "op" and val == "[":
                self.take()
                idx = self.expr(0)
                self.expect("]")
                node = ("index", node, idx)
            else:
                return node


# --------------------------------------------------------------------------- type helpers

# FHIR types whose values may stand where the named type is asked for (FHIRPath `as` honours
# specialisation, and value[x] may use a Quantity profile's own type name).
_SPECIALISATIONS = {
    "Quantity": ("Quantity", "Age", "Duration", "Count", "Distance", "SimpleQuantity"),
    "string": ("String", "Markdown", "Code", "Id"),
    "uri": ("Uri", "Url", "Canonical", "Oid", "Uuid"),
    "integer": ("Integer", "PositiveInt", "UnsignedInt"),
}
_PRIMITIVES = {
    t.lower(): t
    for t in (
        "boolean", "integer", "decimal", "string", "code", "id", "markdown", "uri", "url",
        "canonical", "oid", "uuid", "date", "dateTime", "instant", "time", "base64Binary",
        "positiveInt", "unsignedInt",
    )
}

_DATE_RE = re.compile(r"^\d{4}(-\d{2}(-\d{2})?)?$")
_DATETIME_RE = re.compile(r"^\d{4}(-\d{2}(-\d{2}(T\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:\d{2})?)?)?)?$")


def _canonical_type(name: str) -> str:
    """FHIRPath spells types loosely (``DateTime``, ``System.String``); FHIR names are exact."""
    return _PRIMITIVES.get(name.lower(), name)


def _suffixes(type_name: str) -> tuple[str, ...]:
    t = _canonical_type(type_name)
    if t in _SPECIALISATIONS:
        return _SPECIALISATIONS[t]
    return (t[0].upper() + t[1:],)


def _is_type(v: Any, type_name: str) -> bool:
    """Shape-based type test, for values whose JSON name does not reveal their type."""
    t = _canonical_type(type_name)
    if isinstance(v, _Resolved):
        return v.type == t or t in ("Resource", "DomainResource")
    if isinstance(v, bool):
        return t == "boolean"
    if isinstance(v, int | float):
        return t in ("decimal", "integer")
    if isinstance(v, str):
        if t == "date":
            return bool(_DATE_RE.match(v))
        if t in ("dateTime", "instant"):
            return bool(_DATETIME_RE.match(v))
        return t in ("string", "code", "id", "uri", "url", "canonical", "markdown", "oid", "uuid")
    if isinstance(v, dict):
        rt = v.get("resourceType")
        if rt is not None:
            return rt == t or t in ("Resource", "DomainResource")
        if t == "CodeableConcept":
            return "coding" in v or set(v) <= {"text", "id", "extension"}
        if t == "Coding":
            return "code" in v or "system" in v and "value" not in v
        if t in _SPECIALISATIONS["Quantity"] or t == "Money":
            return "value" in v and "coding" not in v and "reference" not in v
        if t == "Period":
            return "start" in v or "end" in v
        if t == "Reference":
            return "reference" in v or "identifier" in v or "display" in v
        if t == "Range":
            return "low" in v or "high" in v
    return False


class _Resolved:
    """What ``resolve()`` yields: only the target's type is known without a database."""

    __slots__ = ("type",)

    def __init__(self, type_: str) -> None:
        self.type = type_


_REF_TAIL = re.compile(r"(?:^|/)([A-Z][A-Za-z]+)/[A-Za-z0-9\-.]{1,64}(?:/_history/[^/]+)?$")


def reference_type(ref: Any) -> str | None:
    """The target type of a Reference (or canonical string), when its text or ``type`` tells it."""
    if isinstance(ref, dict):
        text = ref.get("reference")
        if isinstance(text, str):
            m = _REF_TAIL.search(text.split("|", 1)[0])
            if m:
                return m.group(1)
        t = ref.get("type")
        return t if isinstance(t, str) else None
    if isinstance(ref, str):
        m = _REF_TAIL.search(ref.split("|", 1)[0])
        return m.group(1) if m else None
    return None


# --------------------------------------------------------------------------- compiler


def _flatten_into(out: list, v: Any) -> None:
    if type(v) is list:
        out.extend(v)
    elif v is not None:
        out.append(v)


@lru_cache(maxsize=1)
def choice_names() -> frozenset[str]:
    """Element names that are choices somewhere in FHIR (``value`` for ``value[x]``)."""
    path = Path(__file__).with_name("data") / "choice-elements.json"
    return frozenset(json.loads(path.read_text(encoding="utf-8")))


def _get_choice(item: dict, name: str, out: list) -> None:
    v = item.get(name)
    if v is not None:
        _flatten_into(out, v)
        return
    # value[x]: the JSON key carries the type name after the element name.
    n = len(name)
    for key, val in item.items():
        if len(key) > n and key.startswith(name) and key[n].isupper():
            _flatten_into(out, val)
            return


def _compile(node: tuple) -> Fn:
    op = node[0]
    if op == "this":
        return lambda items: items
    if op == "resource":
        return lambda items: items[:1]
    if op == "lit":
        value = node[1]
        return lambda items: [value]
    if op == "type":
        name = node[1]
        if name in ("Resource", "DomainResource"):
            return lambda items: [i for i in items if type(i) is dict and "resourceType" in i]
        return lambda items: [i for i in items if type(i) is dict and i.get("resourceType") == name]
    if op == "member":
        return _compile_member(node)
    if op == "as":
        return _compile_as(node[1], node[2])
    if op == "is":
        base, tname = _compile(node[1]), node[2]

        def is_(items: list) -> list:
            vals = base(items)
            if len(vals) != 1:
                return []
            return [_is_type(vals[0], tname)]

        return is_
    if op == "|":
        left, right = _compile(node[1]), _compile(node[2])

        def union(items: list) -> list:
            out = left(items)
            for v in right(items):
                if v not in out:
                    out.append(v)
            return out

        return union
    if op in ("=", "!="):
        left, right = _compile(node[1]), _compile(node[2])
        negate = op == "!="

        def eq(items: list) -> list:
            a, b = left(items), right(items)
            if not a or not b:
                return []
            same = len(a) == len(b) and all(
                type(x) is type(y) and x == y for x, y in zip(a, b, strict=True)
            )
            return [same != negate]

        return eq
    if op in ("and", "or", "xor"):
        left, right = _compile(node[1]), _compile(node[2])
        return _compile_logic(op, left, right)
    if op == "index":
        base, idx = _compile(node[1]), _compile(node[2])

        def index(items: list) -> list:
            vals, i = base(items), idx(items)
            if len(i) == 1 and type(i[0]) is int and 0 <= i[0] < len(vals):
                return [vals[i[0]]]
            return []

        return index
    if op == "call":
        return _compile_call(node)
    raise FhirPathError(f"unsupported node {op}")


def _as_bool(vals: list) -> bool | None:
    if not vals:
        return None
    if len(vals) == 1 and type(vals[0]) is bool:
        return vals[0]
    return True  # a non-empty non-boolean collection counts as true (FHIRPath singleton rule)


def _compile_logic(op: str, left: Fn, right: Fn) -> Fn:
    def logic(items: list) -> list:
        a, b = _as_bool(left(items)), _as_bool(right(items))
        if op == "and":
            if a is False or b is False:
                return [False]
            return [True] if a and b else []
        if op == "or":
            if a is True or b is True:
                return [True]
            return [False] if a is False and b is False else []
        return [] if a is None or b is None else [a != b]

    return logic


def _member_chain(node: tuple) -> tuple[tuple, list[str]]:
    """Collapse ``a.b.c`` into one walker: fewer closure calls per resource."""
    names: list[str] = []
    while node[0] == "member":
        names.append(node[2])
        node = node[1]
    names.reverse()
    return node, names


def _compile_member(node: tuple) -> Fn:
    base_node, names = _member_chain(node)
    steps = tuple((name, name in choice_names()) for name in names)
    if base_node[0] == "this":
        base = None
    elif base_node[0] == "type":
        # The common ``Observation.code...`` form: filter the root inline, one call less.
        root = base_node[1]
        any_root = root in ("Resource", "DomainResource")

        def base(items: list) -> list:
            return [
                i for i in items
                if type(i) is dict and (i.get("resourceType") == root or any_root and "resourceType" in i)
            ]
    else:
        base = _compile(base_node)

    def walk(items: list) -> list:
        cur = items if base is None else base(items)
        for name, is_choice in steps:
            nxt: list = []
            for it in cur:
                if type(it) is dict:
                    if is_choice:
                        _get_choice(it, name, nxt)
                        continue
                    v = it.get(name)
                    if v is not None:
                        if type(v) is list:
                            nxt.extend(v)
                        else:
                            nxt.append(v)
            if not nxt:
                return nxt
            cur = nxt
        return cur

    return walk


def _compile_as(base_node: tuple, tname: str) -> Fn:
    if base_node[0] == "member":
        # Choice element: read valueQuantity etc. directly by its JSON name.
        parent = None if base_node[1] == ("this",) else _compile(base_node[1])
        name = base_node[2]
        keys = tuple(name + s for s in _suffixes(tname))
        is_choice = name in choice_names()

        def choice(items: list) -> list:
            out: list = []
            for it in items if parent is None else parent(items):
                if type(it) is dict:
                    for k in keys:
                        v = it.get(k)
                        if v is not None:
                            _flatten_into(out, v)
                    if is_choice:
                        continue
                    plain = it.get(name)
                    if plain is not None:  # not a choice element: test the value's shape
                        for v in plain if type(plain) is list else [plain]:
                            if _is_type(v, tname):
                                out.append(v)
            return out

        return choice
    base = _compile(base_node)
    return lambda items: [v for v in base(items) if _is_type(v, tname)]


def _compile_call(node: tuple) -> Fn:
    _, base_node, name, args = node
    if name in ("as", "ofType"):
        if len(args) != 1:
            raise FhirPathError(f"{name}() takes one type")
        return _compile_as(base_node, args[0][1])
    base = _compile(base_node)
    if name == "is":
        tname = args[0][1]

        def is_fn(items: list) -> list:
            vals = base(items)
            return [_is_type(vals[0], tname)] if len(vals) == 1 else []

        return is_fn
    if name == "where":
        if len(args) != 1:
            raise FhirPathError("where() takes one criterion")
        crit = _compile(args[0])
        return lambda items: [v for v in base(items) if crit([v]) == [True]]
    if name == "exists":
        if args:
            crit = _compile(args[0])
            return lambda items: [any(crit([v]) == [True] for v in base(items))]
        return lambda items: [bool(base(items))]
    if name == "empty":
        return lambda items: [not base(items)]
    if name == "hasValue":
        def has_value(items: list) -> list:
            vals = base(items)
            return [len(vals) == 1 and not isinstance(vals[0], dict | list)]

        return has_value
    if name == "first":
        return lambda items: base(items)[:1]
    if name == "last":
        return lambda items: base(items)[-1:]
    if name == "count":
        return lambda items: [len(base(items))]
    if name == "not":
        def not_(items: list) -> list:
            b = _as_bool(base(items))
            return [] if b is None else [not b]

        return not_
    if name == "resolve":
        def resolve(items: list) -> list:
            out: list = []
            for v in base(items):
                t = reference_type(v)
                if t is not None:
                    out.append(_Resolved(t))
            return out

        return resolve
    if name == "extension":
        if len(args) != 1 or args[0][0] != "lit":
            raise FhirPathError("extension() takes one literal url")
        url = args[0][1]

        def extension(items: list) -> list:
            out: list = []
            for v in base(items):
                if type(v) is dict:
                    for ext in v.get("extension", ()):
                        if type(ext) is dict and ext.get("url") == url:
                            out.append(ext)
            return out

        return extension
    raise FhirPathError(f"unsupported function {name}()")


@lru_cache(maxsize=4096)
def _assume_root(node: tuple, res_type: str) -> tuple:
    """Replace root type tests that always pass for ``res_type`` by ``$this``.

    Index plans are per resource type, so ``Observation.code`` evaluated on an Observation need
    not test ``resourceType`` again. Function arguments are left alone: there ``$this`` differs.
    """
    op = node[0]
    if op == "type":
        return ("this",) if node[1] in (res_type, "Resource", "DomainResource") else node
    if op == "call":
        return (op, _assume_root(node[1], res_type), node[2], node[3])
    if op in ("member", "as", "is"):
        return (op, _assume_root(node[1], res_type), node[2])
    if op in _PREC or op == "index":
        return (op, _assume_root(node[1], res_type), _assume_root(node[2], res_type))
    return node


@lru_cache(maxsize=4096)
def compile_expression(expression: str, assume_type: str | None = None) -> Fn:
    """Compile once; the result maps a focus collection (list) to a result collection.

    With ``assume_type``, the caller promises the focus is a resource of that type, and the
    root type tests are compiled away.
    """
    node = _Parser(expression).parse()
    if assume_type is not None:
        node = _assume_root(node, assume_type)
    return _compile(node)


def evaluate(expression: str, focus: Any) -> list:
    """Evaluate on a resource (or any JSON value) as the single focus item."""
    return compile_expression(expression)([focus])


def first_elements(expression: str, assume_type: str | None = None) -> frozenset[str] | None:
    """Top-level JSON keys an expression may read (from a ``assume_type`` resource).

    ``None`` when the expression may yield something for a resource lacking all of them (the
    resource itself, ``exists()``, logic). A typed choice (``value as Quantity``) names its JSON
    keys (``valueQuantity``...). Extraction skips an expression whose keys are all absent, which
    is most of them for a typical resource.
    """
    names: set[str] = set()
    for branch in split_union(expression):
        node = _Parser(branch).parse()
        if assume_type is not None:
            node = _assume_root(node, assume_type)
        found = _first_keys(node)
        if found is None:
            return None
        names.update(found)
    return frozenset(names)


_PASS_THROUGH = frozenset({"where", "first", "last", "extension", "resolve"})


def _first_keys(node: tuple) -> set[str] | None:
    while True:
        op = node[0]
        if op == "member":
            if node[1] == ("this",):
                return {node[2]}
            node = node[1]
        elif op == "as" or op == "call" and node[2] in ("as", "ofType"):
            base, tname = (node[1], node[2]) if op == "as" else (node[1], node[3][0][1])
            if base[0] == "member" and base[1] == ("this",):
                keys = {base[2] + s for s in _suffixes(tname)}
                if base[2] not in choice_names():
                    keys.add(base[2])  # a plain element tested by shape
                return keys
            node = base
        elif op == "call" and node[2] in _PASS_THROUGH or op == "index":
            node = node[1]
        else:
            return None


# --------------------------------------------------------------------------- text helpers


def split_union(expression: str) -> list[str]:
    """Top-level ``|`` branches of an expression, each stripped (parentheses kept)."""
    parts: list[str] = []
    depth, start, quote = 0, 0, False
    for i, ch in enumerate(expression):
        if quote:
            if ch == "'" and expression[i - 1] != "\\":
                quote = False
        elif ch == "'":
            quote = True
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "|" and depth == 0:
            parts.append(expression[start:i].strip())
            start = i + 1
    parts.append(expression[start:].strip())
    return [p for p in parts if p]


_ROOT = re.compile(r"^[\s(]*([A-Za-z_][A-Za-z0-9_]*)")


def branch_root(branch: str) -> str | None:
    """The type a branch starts from (``Observation`` in ``(Observation.value as X)``)."""
    m = _ROOT.match(branch)
    if m and m.group(1)[0].isupper():
        return m.group(1)
    return None


_RESOLVE_IS = re.compile(r"resolve\(\)\s+is\s+(?:FHIR\.)?([A-Z][A-Za-z]+)")


def resolve_targets(expression: str) -> tuple[str, ...]:
    """Types named by ``resolve() is X`` in an expression, in order of appearance."""
    return tuple(dict.fromkeys(_RESOLVE_IS.findall(expression)))

"""The search-parameter registry: the one source of truth for indexing, search and metadata.

It is built from the specification's own SearchParameter resources (``data/``), never typed in by
hand, so a parameter the spec defines cannot be forgotten: each one for an enabled type ends up
either in :meth:`Registry.params` or in :meth:`Registry.unsupported`.

Spec expressions are shared between many types (``AllergyIntolerance.code | ... |
Observation.code``); each :class:`SearchParam` keeps only the branches that apply to its
``base_type`` (and ``Resource.``/``DomainResource.`` branches), so the evaluator never walks a
branch that cannot match and ``targets`` can be narrowed by ``resolve() is X``.

The data holds every R4 type's definitions (``build_data``); a registry looks only at those of its
enabled types. A definition is unsupported (with its reason) when it has no expression, a type
with no index (``special``), an expression or component outside the FHIRPath subset, a component
reading ``%resource``, or is one of the few listed in ``_NOT_INDEXABLE``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from app.indexing.fhirpath import (
    FhirPathError,
    branch_root,
    compile_expression,
    resolve_targets,
    split_union,
)

__all__ = ["SearchParam", "Registry", "load_registry", "COLUMN_PARAMS"]

DATA_DIR = Path(__file__).with_name("data")
_GENERIC_BASES = ("Resource", "DomainResource")

# Parameters answered from columns of the ``resource`` table instead of an index table.
COLUMN_PARAMS = {"_id": "res_id", "_lastUpdated": "last_updated"}

EVALUABLE_TYPES = frozenset(
    {"token", "string", "date", "reference", "quantity", "number", "uri", "composite"}
)

# Definitions whose expression compiles but can never give an index value (by url, with the
# reason :meth:`Registry.unsupported` reports). Everything else unsupported is found by rule.
_ENTRY_RESOURCE = (
    "the value is the first entry's resource itself, not a Reference; only chaining into it "
    "could use it, and Bundle entries are not indexed"
)
_NOT_INDEXABLE = {
    "http://hl7.org/fhir/SearchParameter/Bundle-composition": _ENTRY_RESOURCE,
    "http://hl7.org/fhir/SearchParameter/Bundle-message": _ENTRY_RESOURCE,
}
# FHIRPath environment variables: a composite's components are evaluated on each composite
# value alone (app/indexing/extract.py), where the resource root is out of reach.
_ROOT_VARIABLES = ("%resource", "%rootResource", "%context")


@dataclass(frozen=True)
class SearchParam:
    """One search parameter as it applies to one resource type."""

    code: str
    type: str
    expression: str
    url: str
    base_type: str
    targets: tuple[str, ...] = ()
    # For composites: (component parameter, expression relative to each composite value).
    components: tuple[tuple[SearchParam, str], ...] = ()
    modifiers: tuple[str, ...] = ()
    comparators: tuple[str, ...] = ()
    # ``resource`` table column that answers this parameter (``_id``, ``_lastUpdated``).
    column: str | None = None
    multiple_or: bool | None = None
    multiple_and: bool | None = None
    chain: tuple[str, ...] = ()
    description: str = field(default="", compare=False, repr=False)


def _spec_index() -> tuple[dict[str, dict], dict[str, tuple[tuple[int, dict], ...]]]:
    """The spec's definitions by url, and by ``base`` (with their position in the spec).

    Read afresh for each registry (a few ms) and not kept: the file holds every R4 type's
    parameters (some 1400 definitions, ~5000 objects), a registry needs its enabled types' only.
    """
    raw = json.loads((DATA_DIR / "search-parameters.json").read_text(encoding="utf-8"))
    by_url: dict[str, dict] = {}
    by_base: dict[str, list[tuple[int, dict]]] = {}
    for i, entry in enumerate(raw["entry"]):
        sp = entry["resource"]
        by_url[sp["url"]] = sp
        for base in sp["base"]:
            by_base.setdefault(base, []).append((i, sp))
    return by_url, {base: tuple(sps) for base, sps in by_base.items()}


def _definitions_for(res_type: str, by_base: dict[str, tuple[tuple[int, dict], ...]]) -> list[dict]:
    """Definitions whose base is ``res_type``, ``Resource`` or ``DomainResource``, in spec order."""
    found = {i: sp for base in (res_type, *_GENERIC_BASES) for i, sp in by_base.get(base, ())}
    return [found[i] for i in sorted(found)]


@lru_cache(maxsize=1)
def _patient_compartment() -> dict[str, tuple[str, ...]]:
    raw = json.loads((DATA_DIR / "compartmentdefinition-patient.json").read_text(encoding="utf-8"))
    return {r["code"]: tuple(r.get("param", ())) for r in raw.get("resource", ())}


_RELATIVE_BRANCH = re.compile(r"^[a-z][A-Za-z0-9_]*(?:\.[a-z][A-Za-z0-9_]*)*$")


def _branches_for(expression: str, res_type: str) -> list[str]:
    """The union branches that apply to ``res_type``, each rooted at a type name.

    A plain relative path (R4's ``InsurancePlan-name`` is ``name | alias``) is evaluated on the
    resource itself, so it becomes ``InsurancePlan.name``.
    """
    out = []
    for b in split_union(expression):
        if branch_root(b) in (res_type, *_GENERIC_BASES):
            out.append(b)
        elif _RELATIVE_BRANCH.match(b):
            out.append(f"{res_type}.{b}")
    return out


def _strip_parens(text: str) -> str:
    text = text.strip()
    while text.startswith("(") and text.endswith(")"):
        depth = 0
        for i, ch in enumerate(text):
            depth += ch == "("
            depth -= ch == ")"
            if depth == 0 and i < len(text) - 1:
                return text
        text = text[1:-1].strip()
    return text


def _component_expression(composite_expr: str, component: dict, definition: SearchParam) -> str:
    """The component's path relative to each composite value.

    R4's ``DocumentReference-relationship`` swaps its two component expressions (the reference
    component says ``code``, the token one ``target``). When the component's own definition is a
    plain path below the composite's path, that path is unambiguous and wins; otherwise the
    composite's ``component.expression`` is used as written.
    """
    given = component.get("expression", "")
    base = _strip_parens(composite_expr)
    own = _strip_parens(definition.expression)
    if "|" not in base and "|" not in own and own.startswith(base + "."):
        rest = own[len(base) + 1 :]
        if rest.replace(".", "").isalnum():
            return rest
    return given


class Registry:
    """Search parameters of the enabled resource types; immutable once built."""

    def __init__(self, enabled_types: list[str]) -> None:
        self._types = list(dict.fromkeys(enabled_types))
        self._params: dict[str, dict[str, SearchParam]] = {}
        self._unsupported: dict[str, dict[str, str]] = {}
        by_url, by_base = _spec_index()
        for res_type in self._types:
            params: dict[str, SearchParam] = {}
            unsupported: dict[str, str] = {}
            for sp in _definitions_for(res_type, by_base):
                param, reason = self._build(sp, res_type, by_url)
                if param is None:
                    unsupported[sp["code"]] = reason
                elif sp["code"] in params:
                    raise ValueError(f"two definitions of {res_type}.{sp['code']}")
                else:
                    params[sp["code"]] = param
            self._params[res_type] = params
            self._unsupported[res_type] = unsupported

    def _build(
        self, sp: dict, res_type: str, by_url: dict[str, dict]
    ) -> tuple[SearchParam | None, str]:
        sp_type = sp["type"]
        expression = sp.get("expression") or ""
        if sp_type not in EVALUABLE_TYPES:
            return None, f"type {sp_type} has no index"
        if not expression:
            return None, "no FHIRPath expression"
        if sp["url"] in _NOT_INDEXABLE:
            return None, _NOT_INDEXABLE[sp["url"]]
        branches = _branches_for(expression, res_type)
        if not branches:
            return None, f"no expression branch for {res_type}"
        expr = " | ".join(branches)
        try:
            compile_expression(expr)
        except FhirPathError as exc:
            return None, f"expression not supported: {exc}"
        narrowed = resolve_targets(expr)
        targets = narrowed if narrowed and len(narrowed) == len(branches) else tuple(
            sp.get("target", ())
        )
        components: list[tuple[SearchParam, str]] = []
        for comp in sp.get("component", ()):
            definition = by_url.get(comp["definition"])
            if definition is None:
                return None, f"component {comp['definition']} not found"
            cparam, reason = self._build(definition, res_type, by_url)
            if cparam is None or cparam.type == "composite":
                return None, f"component {definition['code']}: {reason or 'nested composite'}"
            cexpr = _component_expression(expr, comp, cparam)
            if any(var in cexpr for var in _ROOT_VARIABLES):
                return None, (
                    f"component {definition['code']} reads the resource root ({cexpr}); "
                    "components are evaluated on each composite value alone"
                )
            try:
                compile_expression(cexpr)
            except FhirPathError as exc:
                return None, f"component expression not supported: {exc}"
            components.append((cparam, cexpr))
        return (
            SearchParam(
                code=sp["code"],
                type=sp_type,
                expression=expr,
                url=sp["url"],
                base_type=res_type,
                targets=targets,
                components=tuple(components),
                modifiers=tuple(sp.get("modifier", ())),
                comparators=tuple(sp.get("comparator", ())),
                column=COLUMN_PARAMS.get(sp["code"]),
                multiple_or=sp.get("multipleOr"),
                multiple_and=sp.get("multipleAnd"),
                chain=tuple(sp.get("chain", ())),
                description=sp.get("description", ""),
            ),
            "",
        )

    def types(self) -> list[str]:
        """The enabled resource types, in configuration order."""
        return list(self._types)

    def params(self, res_type: str) -> dict[str, SearchParam]:
        """Evaluable parameters of a type by code (``_id``/``_lastUpdated`` have ``column``)."""
        return self._params.get(res_type, {})

    def get(self, res_type: str, code: str) -> SearchParam | None:
        return self._params.get(res_type, {}).get(code)

    def unsupported(self, res_type: str) -> dict[str, str]:
        """Spec parameters of a type that cannot be indexed, with the reason (code -> reason)."""
        return self._unsupported.get(res_type, {})

    def compartment_params(self, res_type: str) -> tuple[str, ...]:
        """Parameters linking ``res_type`` to the Patient compartment (CompartmentDefinition)."""
        return _patient_compartment().get(res_type, ())


@lru_cache(maxsize=16)
def _load(types: tuple[str, ...]) -> Registry:
    return Registry(list(types))


def load_registry(enabled_types: list[str]) -> Registry:
    """The registry for these types; built once per process and set of types."""
    return _load(tuple(enabled_types))

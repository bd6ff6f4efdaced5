"""Result shaping: ``_summary`` (true | text | data | count | false) and ``_elements``.

Which elements are "summary" and which are mandatory is read from the fhir.resources R4B model
field metadata (``summary_element_property`` / ``element_required`` in each field's
``json_schema_extra``, plus pydantic's required flag for complex elements), i.e. from the
specification's StructureDefinitions, never from a hand-typed list.  R4B and R4 agree on the summary flags of the results resources.

Shaping applies to top-level elements (as the spec's examples do); shaped resources are marked
with the ``SUBSETTED`` tag in ``meta.tag`` as http://hl7.org/fhir/R4/search.html#summary asks.
Unshaped resources are spliced into the Bundle as stored bytes (no re-serialisation).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import orjson

from app.fhir.errors import FhirError

SUBSETTED = {
    "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
    "code": "SUBSETTED",
    "display": "subsetted",
}
SUMMARY_MODES = ("true", "text", "data", "count", "false")
ALWAYS = ("resourceType", "id", "meta")


@dataclass(frozen=True)
class ElementInfo:
    """Top-level JSON keys of a resource type, by their spec flags."""

    summary: frozenset[str]
    required: frozenset[str]
    all: frozenset[str]
    choice: dict  # JSON key -> choice base name (``valueQuantity`` -> ``value``)


@lru_cache(maxsize=128)
def element_info(res_type: str) -> ElementInfo:
    from fhir.resources.R4B import get_fhir_model_class

    try:
        model = get_fhir_model_class(res_type)
    except (KeyError, ValueError, ImportError):
        return ElementInfo(frozenset(), frozenset(), frozenset(), {})
    summary, required, everything, choice = set(), set(), set(), {}
    for f in model.model_fields.values():
        extra = f.json_schema_extra if isinstance(f.json_schema_extra, dict) else {}
        if not extra.get("element_property"):
            continue
        key = f.alias or ""
        everything.add(key)
        if extra.get("summary_element_property"):
            summary.add(key)
        if extra.get("element_required") or f.is_required():
            required.add(key)
        if extra.get("one_of_many"):
            choice[key] = extra["one_of_many"]
    return ElementInfo(frozenset(summary), frozenset(required), frozenset(everything), choice)


@dataclass(frozen=True)
class Shape:
    """How to shape each matched resource; ``None`` fields mean "leave as stored"."""

    summary: str = "false"
    elements: tuple[str, ...] | None = None

    @property
    def identity(self) -> bool:
        return self.summary in ("false", "count") and self.elements is None


def parse_shape(summary_values: list[str], elements_values: list[str]) -> Shape:
    summary = summary_values[-1] if summary_values else "false"
    if summary not in SUMMARY_MODES:
        raise FhirError(400, "invalid", f"_summary must be one of {', '.join(SUMMARY_MODES)}; got {summary[:40]!r}.",
                        ["_summary"])
    elements: tuple[str, ...] | None = None
    if elements_values:
        names: list[str] = []
        for raw in elements_values:
            for part in raw.split(","):
                part = part.strip()
                if not part:
                    continue
                # ``Observation.code`` and plain ``code`` both name a top-level element.
                name = part.split(".", 1)[1] if "." in part and part[:1].isupper() else part
                if not name.replace("_", "").isalnum():
                    raise FhirError(400, "invalid", f"_elements: '{part[:60]}' is not an element name.", ["_elements"])
                names.append(name)
        elements = tuple(dict.fromkeys(names))
    if summary != "false" and elements is not None:
        raise FhirError(400, "invalid", "_summary and _elements cannot be combined.", ["_summary", "_elements"])
    return Shape(summary, elements)


def _keep(key: str, info: ElementInfo, wanted: frozenset[str] | set[str]) -> bool:
    base = key[1:] if key.startswith("_") else key  # ``_status`` carries ``status``'s extensions
    if base in wanted:
        return True
    return info.choice.get(base) in wanted


def shape_resource(res_type: str, content: bytes | str, shape: Shape) -> bytes:
    """The resource's JSON shaped by ``shape`` (stored bytes unchanged when no shaping applies)."""
    raw = content.encode() if isinstance(content, str) else content
    if shape.identity:
        return raw
    doc = orjson.loads(raw)
    info = element_info(res_type)
    if shape.elements is not None:
        wanted = set(shape.elements) | info.required
    elif shape.summary == "true":
        wanted = set(info.summary)
    elif shape.summary == "text":
        wanted = {"text"} | info.required
    else:  # data
        wanted = set(info.all) - {"text"}
        wanted |= {k for k in doc if k not in info.all and k != "text"}  # keep anything unknown but text
    out = {k: v for k, v in doc.items() if k in ALWAYS or _keep(k, info, wanted)}
    meta = dict(out.get("meta") or {})
    tags = [t for t in meta.get("tag", []) if t.get("code") != "SUBSETTED"]
    meta["tag"] = [*tags, SUBSETTED]
    out["meta"] = meta
    return orjson.dumps(out)

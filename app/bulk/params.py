"""Kick-off parameters of ``$export`` (FHIR Bulk Data 2.0.0), validated once, at kick-off.

Everything a worker needs later is in :class:`ExportParams` (stored as JSON on the job), so a bad
parameter is a 400 OperationOutcome at kick-off, never a failed job an hour later.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl

from app.fhir.errors import FhirError
from app.search.parse import CONTROL_PARAMS, parse
from app.search.shape import parse_shape
from app.search.values import parse_date_range

OUTPUT_FORMATS = ("application/fhir+ndjson", "application/ndjson", "ndjson")
# includeAssociatedData values defined by the IG; others must start with "_" (server-defined).
ASSOCIATED_DATA = ("LatestProvenanceResources", "RelevantProvenanceResources")
KNOWN = frozenset({
    "_outputFormat", "_since", "_type", "_typeFilter", "_elements", "patient", "includeAssociatedData",
})
# Several queries in one value: split at a comma that starts the next ``Type?`` (commas inside a
# query are OR-ed values).
_FILTER_SPLIT = re.compile(r",(?=[A-Z][A-Za-z]{1,63}\?)")
# Harmless request parameters that are not export parameters.
PASSIVE = frozenset({"_format", "_pretty"})


@dataclass
class ExportParams:
    types: list[str]  # the types to export, in output order
    type_explicit: bool = False  # _type was given
    since: str | None = None  # ISO naive UTC
    type_filters: dict[str, list[str]] = field(default_factory=dict)  # type -> query strings (OR-ed)
    elements: list[str] | None = None
    output_format: str = "application/fhir+ndjson"
    include_associated: list[str] = field(default_factory=list)
    patients: list[str] = field(default_factory=list)  # the ``patient`` parameter (ids)
    # The token's granular scopes per type (search queries, OR-ed; AND-ed with _typeFilter).
    scope_filters: dict[str, list[str]] = field(default_factory=dict)
    # Security labels [system, code] the token was not cleared for at kick-off (app.protect).
    withheld: list[list[str]] = field(default_factory=list)
    # Warnings for the error file (unknown patients, ignored includeAssociatedData values).
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, doc: dict) -> ExportParams:
        return cls(**doc)

    def since_dt(self) -> datetime | None:
        return datetime.fromisoformat(self.since) if self.since else None


def _bad(message: str, param: str) -> FhirError:
    return FhirError(400, "invalid", message, [param])


def _split(values: list[str]) -> list[str]:
    return [p.strip() for v in values for p in v.split(",") if p.strip()]


def params_from_parameters(body: Any) -> list[tuple[str, str]]:
    """A POST kick-off's ``Parameters`` resource as (name, value) pairs (``patient``: the reference)."""
    if not isinstance(body, dict) or body.get("resourceType") != "Parameters":
        raise FhirError(400, "invalid", "A POST $export takes a Parameters resource.")
    out: list[tuple[str, str]] = []
    for p in body.get("parameter") or []:
        if not isinstance(p, dict) or not isinstance(p.get("name"), str):
            raise FhirError(400, "invalid", "Each Parameters.parameter needs a name.")
        name = p["name"]
        if name == "patient":
            ref = p.get("valueReference")
            if not isinstance(ref, dict) or not isinstance(ref.get("reference"), str):
                raise _bad("patient must be given as valueReference {reference: 'Patient/id'}.", "patient")
            out.append(("patient", ref["reference"]))
            continue
        values = [v for k, v in p.items() if k.startswith("value")]
        if len(values) != 1 or not isinstance(values[0], str):
            raise _bad(f"Parameter {name[:40]} needs exactly one string-like value[x].", name[:40])
        out.append((name, values[0]))
    return out


def parse_export_params(
    pairs: list[tuple[str, str]],
    *,
    level: str,
    enabled: frozenset[str],
    registry: Any,
    tz: Any,
    base_url: str,
    strict: bool,
) -> ExportParams:
    """Validate the kick-off parameters. ``level``: system | patient | group."""
    by: dict[str, list[str]] = {}
    for k, v in pairs:
        if k in PASSIVE:
            continue
        if k not in KNOWN:
            if strict:
                raise FhirError(400, "not-supported", f"$export does not support the parameter {k[:40]}.", [k[:40]])
            continue
        by.setdefault(k, []).append(v)

    fmt = (by.get("_outputFormat") or ["application/fhir+ndjson"])[-1].strip()
    if fmt not in OUTPUT_FORMATS:
        raise _bad(f"_outputFormat {fmt[:60]!r} is not supported; use application/fhir+ndjson.", "_outputFormat")

    if level == "system":
        allowed = sorted(enabled)
    else:  # Patient compartment types (and Patient itself)
        allowed = sorted(t for t in enabled if t == "Patient" or registry.compartment_params(t))

    types: list[str] = []
    explicit = "_type" in by
    for t in _split(by.get("_type", [])):
        if t not in enabled:
            raise FhirError(400, "not-supported", f"_type: resource type {t[:64]!r} is not supported by this server.", ["_type"])
        if t not in allowed:
            raise _bad(f"_type: {t} is not in the Patient compartment, so a {level}-level export cannot contain it.", "_type")
        if t not in types:
            types.append(t)
    if explicit and not types:
        raise _bad("_type is empty.", "_type")
    if not explicit:
        types = allowed

    since = None
    if by.get("_since"):
        raw = by["_since"][-1].strip()
        if "T" in raw and not (raw.endswith("Z") or "+" in raw[10:] or "-" in raw[10:]):
            raise _bad("_since must be a FHIR instant with a time zone, e.g. 2024-01-01T00:00:00Z.", "_since")
        low, _high = parse_date_range("_since", raw, tz)
        since = low.isoformat()

    filters: dict[str, list[str]] = {}
    for raw in by.get("_typeFilter", []):
        for q in (s.strip() for s in _FILTER_SPLIT.split(raw) if s.strip()):
            t, sep, query = q.partition("?")
            if not sep or not query:
                raise _bad(f"_typeFilter {q[:80]!r} is not of the form Type?search-params.", "_typeFilter")
            if t not in enabled:
                raise FhirError(400, "not-supported", f"_typeFilter: resource type {t[:64]!r} is not supported.", ["_typeFilter"])
            if t not in types:
                raise _bad(f"_typeFilter on {t}, which this export does not include.", "_typeFilter")
            qparams = parse_qsl(query, keep_blank_values=True)
            bad = [k for k, _ in qparams if k.split(":", 1)[0] in CONTROL_PARAMS]
            if bad:
                raise _bad(f"_typeFilter may only hold search criteria, not {bad[0][:40]}.", "_typeFilter")
            req = parse(t, qparams, registry, strict=True, base_url=base_url, tz=tz)  # 400 on any error
            if not req.clauses:
                raise _bad(f"_typeFilter {q[:80]!r} has no search criteria.", "_typeFilter")
            filters.setdefault(t, []).append(query)

    elements = None
    if by.get("_elements"):
        names = _split(by["_elements"])
        for n in names:
            if "." in n and n.split(".", 1)[0] not in enabled:
                raise _bad(f"_elements: {n[:60]!r} names a type this server does not support.", "_elements")
        parse_shape([], [",".join(n.split(".", 1)[1] if "." in n else n for n in names)])  # validates names
        elements = names

    # The IG's values are applied (app.bulk.associated); "_"-prefixed values are server-defined
    # and this server defines none: refused with handling=strict, else ignored with a warning in
    # the error file (the IG's rule for unsupported kick-off values). Anything else is invalid.
    assoc: list[str] = []
    notes: list[str] = []
    for a in _split(by.get("includeAssociatedData", [])):
        if a in ASSOCIATED_DATA:
            if "Provenance" not in enabled:
                raise FhirError(400, "not-supported", f"includeAssociatedData={a} needs Provenance, which this "
                                "server does not support.", ["includeAssociatedData"])
            if a not in assoc:
                assoc.append(a)
        elif a.startswith("_"):
            if strict:
                raise FhirError(400, "not-supported", f"includeAssociatedData value {a[:60]!r} is not supported "
                                "by this server.", ["includeAssociatedData"])
            notes.append(f"includeAssociatedData={a[:60]} is not supported by this server and was ignored.")
        else:
            raise _bad(f"includeAssociatedData value {a[:60]!r} is not defined.", "includeAssociatedData")

    patients: list[str] = []
    if by.get("patient"):
        if level == "system":
            raise _bad("patient is not allowed in a system-level export.", "patient")
        for ref in _split(by["patient"]):
            rtype, _, rid = ref.rstrip("/").rpartition("/")
            rtype = rtype.rsplit("/", 1)[-1]
            if rtype != "Patient" or not rid:
                raise _bad(f"patient {ref[:80]!r} is not a Patient reference.", "patient")
            if rid not in patients:
                patients.append(rid)

    return ExportParams(
        types=types, type_explicit=explicit, since=since, type_filters=filters, elements=elements,
        output_format=fmt, include_associated=assoc, patients=patients, notes=notes,
    )

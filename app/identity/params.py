"""Reading the Parameters resource an operation is called with."""

from __future__ import annotations

from typing import Any

from app.fhir.errors import FhirError


def parameters(body: object, operation: str, allowed: set[str]) -> dict[str, list[dict]]:
    """name -> the parameter entries with that name; unknown names are a 400 (a misspelt
    ``preview`` must not run a real merge)."""
    if not isinstance(body, dict) or body.get("resourceType") != "Parameters":
        raise FhirError(400, "invalid", f"{operation} takes a Parameters resource.")
    raw = body.get("parameter") or []
    if not isinstance(raw, list):
        raise FhirError(400, "structure", "Parameters.parameter must be an array.", ["Parameters.parameter"])
    out: dict[str, list[dict]] = {}
    for i, p in enumerate(raw):
        if not isinstance(p, dict) or not isinstance(p.get("name"), str):
            raise FhirError(400, "structure", f"Parameters.parameter[{i}] needs a name.", [f"Parameters.parameter[{i}]"])
        if p["name"] not in allowed:
            raise FhirError(400, "not-supported", f"{operation} has no parameter '{p['name'][:64]}' "
                            f"(it takes: {', '.join(sorted(allowed))}).", [f"Parameters.parameter[{i}]"])
        out.setdefault(p["name"], []).append(p)
    return out


def one(params: dict[str, list[dict]], name: str, key: str, kind: type | tuple[type, ...]) -> Any:
    """The ``key`` value (e.g. ``valueBoolean``) of the single parameter ``name``, or None."""
    items = params.get(name) or []
    if len(items) > 1:
        raise FhirError(400, "invalid", f"Parameter '{name}' may appear once.")
    if not items:
        return None
    value = items[0].get(key)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise FhirError(400, "invalid", f"Parameter '{name}' must carry {key}.")
    return value

"""The CapabilityStatement, generated from what the server really does."""

from __future__ import annotations

from app.fhir.jsonutil import instant, utcnow
from app.interactions.context import FhirContext

INTERACTIONS = ["read", "vread", "update", "patch", "delete", "history-instance", "history-type", "create", "search-type"]

# Parameters every type has (search.html "Parameters for all resources"); listed once at the
# system level as well, where _type selects the types.
COMMON = ("_id", "_lastUpdated", "_tag", "_profile", "_security", "_source")
PATIENT_COMPARTMENT = "http://hl7.org/fhir/CompartmentDefinition/patient"
BULK = "http://hl7.org/fhir/uv/bulkdata"
BULK_OPERATIONS = {
    "Patient": {"name": "export", "definition": f"{BULK}/OperationDefinition/patient-export"},
    "Group": {"name": "export", "definition": f"{BULK}/OperationDefinition/group-export"},
}


def _includes(registry, enabled: frozenset[str]) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """``_include`` values per type and ``_revinclude`` values per target type, from the registry's
    reference parameters (restricted to enabled targets: others cannot be returned)."""
    inc: dict[str, list[str]] = {t: ["*"] for t in enabled}
    rev: dict[str, list[str]] = {t: [] for t in enabled}
    for t in sorted(enabled):
        for code, sp in sorted(registry.params(t).items()):
            if sp.type != "reference":
                continue
            targets = [x for x in sp.targets if x in enabled] if sp.targets else sorted(enabled)
            if not targets:
                continue
            inc[t].append(f"{t}:{code}")
            for target in targets:
                rev[target].append(f"{t}:{code}")
    return inc, rev


def _smart_security(base_url: str) -> dict:
    from app.auth.discovery import capability_security  # SMART oauth-uris extension (issue 4)

    return capability_security(base_url)


def capability_statement(ctx: FhirContext, config) -> dict:
    resources = []
    registry = ctx.registry
    inc, rev = _includes(registry, ctx.enabled_types) if registry is not None else ({}, {})
    system_params: list[dict] = []
    for t in sorted(ctx.enabled_types):
        params = []
        if registry is not None:
            for code, sp in sorted(registry.params(t).items()):
                entry = {"name": code, "type": sp.type}
                if getattr(sp, "url", None):
                    entry["definition"] = sp.url
                params.append(entry)
                if code in COMMON and all(p["name"] != code for p in system_params):
                    system_params.append(entry)
        res = {
            "type": t,
            "interaction": [{"code": c} for c in INTERACTIONS],
            "versioning": "versioned-update",
            "readHistory": True,
            "updateCreate": True,
            "conditionalCreate": True,
            "conditionalRead": "not-supported",
            "conditionalUpdate": True,
            "conditionalDelete": "single",
            "referencePolicy": ["literal", "enforced", "local"],
            "searchInclude": inc.get(t, []),
            "searchRevInclude": sorted(set(rev.get(t, []))),
            "searchParam": params,
        }
        if t in BULK_OPERATIONS:  # Bulk Data $export (app/bulk)
            res["operation"] = [BULK_OPERATIONS[t]]
        if t == "Patient":  # $match, $merge, $unmerge, $correct-nhs-number (app/identity)
            from app.identity.operations import CAPABILITY_OPERATIONS

            res["operation"] = [*res.get("operation", []), *CAPABILITY_OPERATIONS]
        resources.append(res)
    from app.audit.query import capability as audit_capability  # the read-only audit trail

    resources.append(audit_capability())
    resources.sort(key=lambda r: r["type"])
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": instant(utcnow()),
        "publisher": "Regional results repository",
        "kind": "instance",
        "instantiates": [f"{BULK}/CapabilityStatement/bulk-data"],
        "software": {"name": "results-repo", "version": "0.1.0"},
        "implementation": {"description": "Regional results repository (FHIR R4)", "url": ctx.base_url},
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "json"],
        "patchFormat": ["application/json-patch+json"],
        "rest": [
            {
                "mode": "server",
                "security": _smart_security(ctx.base_url),
                "documentation": (
                    f"Batch and transaction Bundles accept at most {ctx.max_bundle_entries} entries; "
                    f"request bodies at most {config.get('MAX_CONTENT_LENGTH')} bytes. References to "
                    "resources of the supported types must resolve (referential integrity)."
                ),
                "resource": resources,
                "interaction": [
                    {"code": "transaction"},
                    {"code": "batch"},
                    {"code": "search-system"},
                    {"code": "history-system"},
                ],
                "searchParam": system_params,
                "compartment": [PATIENT_COMPARTMENT],
                "operation": [{"name": "export", "definition": f"{BULK}/OperationDefinition/export"}],
            }
        ],
    }

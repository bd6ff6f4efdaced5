"""The CapabilityStatement, generated from what the server really does."""

from __future__ import annotations

from app.fhir.jsonutil import instant, utcnow
from app.interactions.context import FhirContext

INTERACTIONS = ["read", "vread", "update", "patch", "delete", "history-instance", "history-type", "create", "search-type"]


def capability_statement(ctx: FhirContext, config) -> dict:
    resources = []
    for t in sorted(ctx.enabled_types):
        params = []
        registry = ctx.registry
        if registry is not None:
            for code, sp in sorted(registry.params(t).items()):
                entry = {"name": code, "type": sp.type}
                if getattr(sp, "url", None):
                    entry["definition"] = sp.url
                params.append(entry)
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
            "searchParam": params,
        }
        resources.append(res)
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": instant(utcnow()),
        "publisher": "Regional results repository",
        "kind": "instance",
        "software": {"name": "results-repo", "version": "0.1.0"},
        "implementation": {"description": "Regional results repository (FHIR R4)", "url": ctx.base_url},
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "json"],
        "patchFormat": ["application/json-patch+json"],
        "rest": [
            {
                "mode": "server",
                "documentation": (
                    f"Batch and transaction Bundles accept at most {ctx.max_bundle_entries} entries; "
                    f"request bodies at most {config.get('MAX_CONTENT_LENGTH')} bytes. References to "
                    "resources of the supported types must resolve (referential integrity)."
                ),
                "resource": resources,
                "interaction": [{"code": "transaction"}, {"code": "batch"}, {"code": "history-system"}],
            }
        ],
    }

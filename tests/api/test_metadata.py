"""GET /fhir/metadata: the CapabilityStatement."""

from __future__ import annotations

from apihelp import assert_outcome

import config

INTERACTIONS = {
    "read",
    "vread",
    "update",
    "patch",
    "delete",
    "history-instance",
    "history-type",
    "create",
    "search-type",
}


def _cs(http, base) -> dict:
    r = http.get(f"{base}/metadata")
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"].startswith("application/fhir+json")
    return r.json()


def test_capability_statement_basics(http, base):
    cs = _cs(http, base)
    assert cs["resourceType"] == "CapabilityStatement"
    assert cs["fhirVersion"] == "4.0.1"
    assert cs["status"] == "active"
    assert cs["kind"] == "instance"
    assert "json" in cs["format"] or "application/fhir+json" in cs["format"]
    assert "application/json-patch+json" in cs["patchFormat"]
    assert cs["implementation"]["url"] == base
    rest = cs["rest"]
    assert len(rest) == 1 and rest[0]["mode"] == "server"
    assert {i["code"] for i in rest[0]["interaction"]} >= {"transaction", "batch", "history-system"}


def test_every_enabled_type_listed_with_interactions_and_search_params(http, base):
    cs = _cs(http, base)
    # AuditEvent: the read-only audit trail, listed apart (tests/audit/test_audit_api.py)
    resources = {r["type"]: r for r in cs["rest"][0]["resource"] if r["type"] != "AuditEvent"}
    assert set(resources) == set(config.RESULTS_RESOURCE_TYPES)
    assert "Claim" not in resources and "Condition" not in resources
    for t, res in resources.items():
        assert {i["code"] for i in res["interaction"]} >= INTERACTIONS, t
        assert res["versioning"] == "versioned-update"
        assert res["conditionalCreate"] is True and res["conditionalUpdate"] is True
        assert res["conditionalDelete"] in ("single", "multiple")
        params = res["searchParam"]
        assert params, t
        names = [p["name"] for p in params]
        assert len(names) == len(set(names)), t
        for p in params:
            assert p["type"] in (
                "number",
                "date",
                "string",
                "token",
                "reference",
                "composite",
                "quantity",
                "uri",
                "special",
            ), p
    patient = {p["name"]: p["type"] for p in resources["Patient"]["searchParam"]}
    assert patient["identifier"] == "token"
    assert patient["name"] == "string"
    assert patient["birthdate"] == "date"
    assert patient["gender"] == "token"
    obs = {p["name"]: p["type"] for p in resources["Observation"]["searchParam"]}
    assert obs["subject"] == "reference"
    assert obs["code"] == "token"
    assert obs["date"] == "date"
    assert obs["value-quantity"] == "quantity"
    assert obs["component-code-value-quantity"] == "composite"
    assert {p["name"] for p in resources["DiagnosticReport"]["searchParam"]} >= {
        "patient",
        "result",
        "code",
        "status",
    }


def test_metadata_format_negotiation(http, base):
    assert _cs(http, base)["resourceType"] == "CapabilityStatement"
    r = http.get(f"{base}/metadata", params={"_format": "json"})
    assert r.status_code == 200
    assert_outcome(
        http.get(f"{base}/metadata", headers={"Accept": "application/fhir+xml"}),
        406,
        "not-supported",
    )
    assert_outcome(http.get(f"{base}/metadata", params={"_format": "xml"}), 406, "not-supported")
    assert_outcome(http.post(f"{base}/metadata", json={}), 405)


def test_search_capabilities_are_declared(http, base):
    """System search, the common parameters, the Patient compartment and include lists."""
    rest = _cs(http, base)["rest"][0]
    assert "search-system" in {i["code"] for i in rest["interaction"]}
    assert {p["name"] for p in rest["searchParam"]} == {
        "_id",
        "_lastUpdated",
        "_tag",
        "_profile",
        "_security",
        "_source",
    }
    assert rest["compartment"] == ["http://hl7.org/fhir/CompartmentDefinition/patient"]
    by_type = {r["type"]: r for r in rest["resource"]}
    report = by_type["DiagnosticReport"]
    assert {"*", "DiagnosticReport:result", "DiagnosticReport:patient"} <= set(report["searchInclude"])
    assert "Observation:patient" in by_type["Patient"]["searchRevInclude"]
    assert "DiagnosticReport:result" in by_type["Observation"]["searchRevInclude"]

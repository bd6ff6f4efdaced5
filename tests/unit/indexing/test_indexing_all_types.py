"""Every R4 resource type's search parameters: indexable by the FHIRPath subset, or knowingly not.

Operators may enable any R4 type (``ENABLED_RESOURCE_TYPES``), so the registry is loaded here for
all of them at once. Each spec parameter must compile for extraction, or be in the explicit
unsupported set below with the reason the registry gives; extraction over real examples of types
outside the default set must not raise.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.indexing import COLUMNS, extract, load_registry
from app.indexing.fhirpath import compile_expression, first_elements
from app.indexing.registry import DATA_DIR

DATA = Path(__file__).resolve().parents[2] / "data"
SPEC_PARAMS = [
    e["resource"]
    for e in json.loads((DATA_DIR / "search-parameters.json").read_text(encoding="utf-8"))["entry"]
]
GENERIC = {"Resource", "DomainResource"}
ALL_TYPES = sorted({b for sp in SPEC_PARAMS for b in sp["base"]} - GENERIC)

# The R4 definitions the server does not index, with a fragment of the registry's reason. Kept as
# small as is honest: everything else compiles and is extracted (some branches of a supported
# parameter index nothing, e.g. a Range under a quantity parameter; see test_partial_branches).
UNSUPPORTED_EVERY_TYPE = {
    # Full-text search and named queries: the spec gives no expression to index.
    "_text": "no FHIRPath expression",
    "_content": "no FHIRPath expression",
    "_query": "no FHIRPath expression",
}
UNSUPPORTED = {
    # Geographic distance over Location.position: type special, no index table for it.
    ("Location", "near"): "type special has no index",
    # Bundle.entry[0].resource is an inline resource, not a Reference: only chaining into the
    # document's Composition / the message's MessageHeader could use it.
    ("Bundle", "composition"): "not a Reference",
    ("Bundle", "message"): "not a Reference",
    # A component reads %resource.referenceSeq...; components are evaluated on each
    # MolecularSequence.variant alone, where the resource root is out of reach.
    ("MolecularSequence", "chromosome-variant-coordinate"): "reads the resource root",
    ("MolecularSequence", "referenceseqid-variant-coordinate"): "reads the resource root",
}


@pytest.fixture(scope="module")
def reg():
    return load_registry(ALL_TYPES)


def _spec_codes(res_type: str) -> set[str]:
    return {sp["code"] for sp in SPEC_PARAMS if res_type in sp["base"] or GENERIC & set(sp["base"])}


def test_data_file_holds_every_r4_search_parameter():
    # The whole R4 4.0.1 search-parameters.json Bundle: 1375 definitions over 133 types.
    assert len(SPEC_PARAMS) == len({sp["url"] for sp in SPEC_PARAMS}) == 1375
    assert len(ALL_TYPES) == 133
    assert {"Condition", "MedicationRequest", "AllergyIntolerance", "Procedure", "Immunization",
            "Location", "Task", "Consent", "MolecularSequence"} <= set(ALL_TYPES)


def test_registry_builds_entries_for_enabled_types_only():
    reg = load_registry(["Condition"])
    assert reg.types() == ["Condition"]
    assert reg.params("Observation") == {} and reg.unsupported("Observation") == {}
    assert "clinical-status" in reg.params("Condition")


@pytest.mark.parametrize("res_type", ALL_TYPES)
def test_every_parameter_is_indexable_or_knowingly_not(reg, res_type):
    params, unsupported = reg.params(res_type), reg.unsupported(res_type)
    assert set(params) | set(unsupported) == _spec_codes(res_type)
    assert not set(params) & set(unsupported)
    expected = {**UNSUPPORTED_EVERY_TYPE, **{c: r for (t, c), r in UNSUPPORTED.items() if t == res_type}}
    assert set(unsupported) == set(expected), unsupported
    for code, reason in unsupported.items():
        assert expected[code] in reason, (code, reason)


@pytest.mark.parametrize("res_type", ALL_TYPES)
def test_every_indexable_parameter_compiles_for_extraction(reg, res_type):
    for code, sp in reg.params(res_type).items():
        assert sp.base_type == res_type
        compile_expression(sp.expression, res_type)
        first_elements(sp.expression, res_type)
        for csp, cexpr in sp.components:
            assert csp.type != "composite", code
            compile_expression(cexpr)
            first_elements(cexpr)
    # The extraction plan of the type builds, and a bare resource gives no rows (but
    # Patient's "deceased", which is false when absent).
    out = extract(reg, {"resourceType": res_type, "id": "x"})
    assert [(r["param"], kind) for kind, rows in out.items() for r in rows] == (
        [("deceased", "token")] if res_type == "Patient" else [])


def test_relative_spec_expression_is_rooted_at_its_type(reg):
    # R4's InsurancePlan-name says "name | alias", relative to the resource.
    assert reg.get("InsurancePlan", "name").expression == "InsurancePlan.name | InsurancePlan.alias"
    out = extract(reg, {"resourceType": "InsurancePlan", "name": "Gold", "alias": ["Au plan"]})
    assert {r["value"] for r in out["string"] if r["param"] == "name"} == {"Gold", "Au plan"}


def test_condition_has_its_21_r4_parameters(reg):
    own = {
        "abatement-age", "abatement-date", "abatement-string", "asserter", "body-site", "category",
        "clinical-status", "code", "encounter", "evidence", "evidence-detail", "identifier",
        "onset-age", "onset-date", "onset-info", "patient", "recorded-date", "severity", "stage",
        "subject", "verification-status",
    }
    common = {"_id", "_lastUpdated", "_profile", "_security", "_source", "_tag"}
    assert set(reg.params("Condition")) == own | common
    assert reg.get("Condition", "onset-date").expression == (
        "Condition.onset.as(dateTime) | Condition.onset.as(Period)")
    assert reg.get("Condition", "patient").targets == ("Patient",)


def test_partial_branches(reg):
    """Supported parameters whose spec expression also selects a type with no index value."""
    # onset-age: Age is indexed, a Range is not (the quantity table holds one value per row).
    age = extract(reg, {"resourceType": "Condition", "onsetAge": {
        "value": 52, "unit": "years", "system": "http://unitsofmeasure.org", "code": "a"}})
    assert [r["value"] for r in age["quantity"] if r["param"] == "onset-age"] == [52.0]
    rng = extract(reg, {"resourceType": "Condition", "onsetRange": {"low": {"value": 50}}})
    assert not rng["quantity"]
    # Procedure.performed[x]: dateTime/Period are dates; a free-text string or an Age is not.
    text = extract(reg, {"resourceType": "Procedure", "performedString": "last spring"})
    assert not text["date"]


# --------------------------------------------------------------------------- real examples


def _resources(doc: dict) -> Iterator[dict]:
    """A resource, its contained ones, and (recursively) the resources of a Bundle's entries."""
    yield doc
    yield from doc.get("contained", ())
    for entry in doc.get("entry", ()) if doc.get("resourceType") == "Bundle" else ():
        if isinstance(entry.get("resource"), dict):
            yield from _resources(entry["resource"])


def _extract_all(reg, doc: dict) -> dict[str, list[dict]]:
    """Extract every resource of a document; check the rows; ``{type: [rows by kind, ...]}``."""
    seen: dict[str, list[dict]] = {}
    for res in _resources(doc):
        res_type = res["resourceType"]
        out = extract(reg, res)
        for kind, rows in out.items():
            for row in rows:
                assert tuple(row) == COLUMNS[kind]
                assert row["param"].split("$")[0].split(":")[0] in reg.params(res_type), row
        seen.setdefault(res_type, []).append(out)
    return seen


def _load(name: str) -> dict:
    return json.loads((DATA / name).read_text(encoding="utf-8"))


def _rows(out: dict, kind: str, param: str) -> list[dict]:
    return [r for r in out[kind] if r["param"] == param]


def test_official_condition_examples(reg):
    """The four R4 Condition examples (in a batch-response Bundle of the spec)."""
    seen = _extract_all(reg, _load("Bundle-bundle-response-simplesummary.json"))
    assert len(seen["Condition"]) == 4
    first = seen["Condition"][0]  # Condition/example: "Burnt Ear"
    assert [(r["system"], r["code"]) for r in _rows(first, "token", "clinical-status")] == [
        ("http://terminology.hl7.org/CodeSystem/condition-clinical", "active")]
    assert [(r["system"], r["code"]) for r in _rows(first, "token", "code")] == [
        ("http://snomed.info/sct", "39065001")]
    assert [(r["target_type"], r["target_id"]) for r in _rows(first, "reference", "subject")] == [
        ("Patient", "example")]
    assert len(_rows(first, "date", "onset-date")) == 1
    for out in seen["Condition"]:
        assert _rows(out, "token", "clinical-status")


def test_official_medication_request_and_allergy_examples(reg):
    """The R4 document Bundle "father": MedicationRequest, AllergyIntolerance, Composition ..."""
    seen = _extract_all(reg, _load("Bundle-father.json"))
    assert {"Composition", "MedicationRequest", "MedicationStatement", "AllergyIntolerance"} <= set(seen)
    (med,) = seen["MedicationRequest"]
    assert [(r["system"], r["code"]) for r in _rows(med, "token", "code")] == [
        ("http://snomed.info/sct", "66493003")]
    assert [r["code"] for r in _rows(med, "token", "intent")] == ["order"]
    (allergy,) = seen["AllergyIntolerance"]
    assert [r["code"] for r in _rows(allergy, "token", "criticality")] == ["high"]
    assert len(_rows(allergy, "date", "date")) == 1
    # An absolute reference to another server keeps its URL.
    assert _rows(allergy, "reference", "patient")[0]["url"].startswith("http://fhir.healthintersections")


@pytest.mark.parametrize("path", sorted((DATA / "loader").glob("*.json.gz")), ids=lambda p: p.name[:20])
def test_synthea_bundles_of_every_type(reg, path):
    """Synthea patients: Condition, MedicationRequest, AllergyIntolerance, Procedure, Immunization,
    CarePlan, Claim, ExplanationOfBenefit ... (the spec's own Procedure and Immunization examples
    are not among the shared data)."""
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        seen = _extract_all(reg, json.load(fh))
    assert {"Condition", "MedicationRequest", "Procedure", "Immunization", "Claim"} <= set(seen)
    # Synthea's references are urn:uuid: ones (a transaction): subject keeps the URL, and
    # "patient" (subject.where(resolve() is Patient)) cannot tell the target type.
    for out in seen["Procedure"]:
        assert _rows(out, "token", "code") and _rows(out, "date", "date")
        assert _rows(out, "reference", "subject")[0]["url"].startswith("urn:uuid:")
    for out in seen["Immunization"]:
        assert _rows(out, "token", "vaccine-code") and _rows(out, "date", "date")
        assert _rows(out, "token", "status")
    for out in seen["Condition"]:
        assert _rows(out, "token", "clinical-status") and _rows(out, "date", "onset-date")
    for out in seen["MedicationRequest"]:
        assert _rows(out, "token", "code") and _rows(out, "date", "authoredon")

"""The registry is built from the spec's SearchParameters; nothing may be lost silently."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.indexing.registry import DATA_DIR, SearchParam, load_registry
from config import RESULTS_RESOURCE_TYPES

SPEC = json.loads((DATA_DIR / "search-parameters.json").read_text(encoding="utf-8"))
SPEC_PARAMS = [e["resource"] for e in SPEC["entry"]]


@pytest.fixture(scope="module")
def reg():
    return load_registry(RESULTS_RESOURCE_TYPES)


def test_cached_per_process(reg):
    assert load_registry(list(RESULTS_RESOURCE_TYPES)) is reg
    assert reg.types() == list(RESULTS_RESOURCE_TYPES)


def test_data_file_covers_enabled_types_and_components():
    urls = {sp["url"] for sp in SPEC_PARAMS}
    for sp in SPEC_PARAMS:
        assert "text" not in sp and "contact" not in sp and "extension" not in sp
        for comp in sp.get("component", ()):
            assert comp["definition"] in urls
    for res_type in RESULTS_RESOURCE_TYPES:
        assert any(res_type in sp["base"] for sp in SPEC_PARAMS), res_type


@pytest.mark.parametrize("res_type", RESULTS_RESOURCE_TYPES)
def test_no_parameter_lost(reg, res_type):
    expected = {
        sp["code"]
        for sp in SPEC_PARAMS
        if res_type in sp["base"] or {"Resource", "DomainResource"} & set(sp["base"])
    }
    params, unsupported = set(reg.params(res_type)), set(reg.unsupported(res_type))
    assert params | unsupported == expected
    assert not params & unsupported


@pytest.mark.parametrize("res_type", RESULTS_RESOURCE_TYPES)
def test_expressions_only_keep_own_branches(reg, res_type):
    for sp in reg.params(res_type).values():
        assert isinstance(sp, SearchParam) and sp.base_type == res_type
        for branch in sp.expression.split(" | "):
            root = branch.lstrip("(").split(".")[0].split(" ")[0]
            assert root in (res_type, "Resource", "DomainResource"), (sp.code, sp.expression)


def test_unsupported_are_the_expressionless_ones(reg):
    assert set(reg.unsupported("Observation")) == {"_text", "_content", "_query"}


def test_column_params(reg):
    assert reg.get("Observation", "_id").column == "res_id"
    assert reg.get("Observation", "_lastUpdated").column == "last_updated"
    assert reg.get("Observation", "_tag").column is None
    assert reg.get("Observation", "_tag").type == "token"
    assert reg.get("Patient", "_profile").type == "uri"
    assert reg.get("Patient", "_source").expression == "Resource.meta.source"
    assert reg.get("Patient", "nonsense") is None
    assert reg.params("NotAType") == {}


OBSERVATION = {
    "_id": ("token", "Resource.id"),
    "_lastUpdated": ("date", "Resource.meta.lastUpdated"),
    "_profile": ("uri", "Resource.meta.profile"),
    "_security": ("token", "Resource.meta.security"),
    "_source": ("uri", "Resource.meta.source"),
    "_tag": ("token", "Resource.meta.tag"),
    "based-on": ("reference", "Observation.basedOn"),
    "category": ("token", "Observation.category"),
    "code": ("token", "Observation.code"),
    "code-value-concept": ("composite", "Observation"),
    "code-value-date": ("composite", "Observation"),
    "code-value-quantity": ("composite", "Observation"),
    "code-value-string": ("composite", "Observation"),
    "combo-code": ("token", "Observation.code | Observation.component.code"),
    "combo-code-value-concept": ("composite", "Observation | Observation.component"),
    "combo-code-value-quantity": ("composite", "Observation | Observation.component"),
    "combo-data-absent-reason": (
        "token", "Observation.dataAbsentReason | Observation.component.dataAbsentReason"),
    "combo-value-concept": (
        "token",
        "(Observation.value as CodeableConcept) | (Observation.component.value as CodeableConcept)"),
    "combo-value-quantity": (
        "quantity",
        "(Observation.value as Quantity) | (Observation.value as SampledData) | "
        "(Observation.component.value as Quantity) | (Observation.component.value as SampledData)"),
    "component-code": ("token", "Observation.component.code"),
    "component-code-value-concept": ("composite", "Observation.component"),
    "component-code-value-quantity": ("composite", "Observation.component"),
    "component-data-absent-reason": ("token", "Observation.component.dataAbsentReason"),
    "component-value-concept": ("token", "(Observation.component.value as CodeableConcept)"),
    "component-value-quantity": (
        "quantity",
        "(Observation.component.value as Quantity) | (Observation.component.value as SampledData)"),
    "data-absent-reason": ("token", "Observation.dataAbsentReason"),
    "date": ("date", "Observation.effective"),
    "derived-from": ("reference", "Observation.derivedFrom"),
    "device": ("reference", "Observation.device"),
    "encounter": ("reference", "Observation.encounter"),
    "focus": ("reference", "Observation.focus"),
    "has-member": ("reference", "Observation.hasMember"),
    "identifier": ("token", "Observation.identifier"),
    "method": ("token", "Observation.method"),
    "part-of": ("reference", "Observation.partOf"),
    "patient": ("reference", "Observation.subject.where(resolve() is Patient)"),
    "performer": ("reference", "Observation.performer"),
    "specimen": ("reference", "Observation.specimen"),
    "status": ("token", "Observation.status"),
    "subject": ("reference", "Observation.subject"),
    "value-concept": ("token", "(Observation.value as CodeableConcept)"),
    "value-date": ("date", "(Observation.value as dateTime) | (Observation.value as Period)"),
    "value-quantity": (
        "quantity", "(Observation.value as Quantity) | (Observation.value as SampledData)"),
    "value-string": (
        "string", "(Observation.value as string) | (Observation.value as CodeableConcept).text"),
}

DIAGNOSTIC_REPORT = {
    "based-on": ("reference", "DiagnosticReport.basedOn"),
    "category": ("token", "DiagnosticReport.category"),
    "code": ("token", "DiagnosticReport.code"),
    "conclusion": ("token", "DiagnosticReport.conclusionCode"),
    "date": ("date", "DiagnosticReport.effective"),
    "encounter": ("reference", "DiagnosticReport.encounter"),
    "identifier": ("token", "DiagnosticReport.identifier"),
    "issued": ("date", "DiagnosticReport.issued"),
    "media": ("reference", "DiagnosticReport.media.link"),
    "patient": ("reference", "DiagnosticReport.subject.where(resolve() is Patient)"),
    "performer": ("reference", "DiagnosticReport.performer"),
    "result": ("reference", "DiagnosticReport.result"),
    "results-interpreter": ("reference", "DiagnosticReport.resultsInterpreter"),
    "specimen": ("reference", "DiagnosticReport.specimen"),
    "status": ("token", "DiagnosticReport.status"),
    "subject": ("reference", "DiagnosticReport.subject"),
}

IMAGING_STUDY = {
    "basedon": ("reference", "ImagingStudy.basedOn"),
    "bodysite": ("token", "ImagingStudy.series.bodySite"),
    "dicom-class": ("token", "ImagingStudy.series.instance.sopClass"),
    "encounter": ("reference", "ImagingStudy.encounter"),
    "endpoint": ("reference", "ImagingStudy.endpoint | ImagingStudy.series.endpoint"),
    "identifier": ("token", "ImagingStudy.identifier"),
    "instance": ("token", "ImagingStudy.series.instance.uid"),
    "interpreter": ("reference", "ImagingStudy.interpreter"),
    "modality": ("token", "ImagingStudy.series.modality"),
    "patient": ("reference", "ImagingStudy.subject.where(resolve() is Patient)"),
    "performer": ("reference", "ImagingStudy.series.performer.actor"),
    "reason": ("token", "ImagingStudy.reasonCode"),
    "referrer": ("reference", "ImagingStudy.referrer"),
    "series": ("token", "ImagingStudy.series.uid"),
    "started": ("date", "ImagingStudy.started"),
    "status": ("token", "ImagingStudy.status"),
    "subject": ("reference", "ImagingStudy.subject"),
}

PATIENT = {
    "active": ("token", "Patient.active"),
    "address": ("string", "Patient.address"),
    "address-city": ("string", "Patient.address.city"),
    "address-country": ("string", "Patient.address.country"),
    "address-postalcode": ("string", "Patient.address.postalCode"),
    "address-state": ("string", "Patient.address.state"),
    "address-use": ("token", "Patient.address.use"),
    "birthdate": ("date", "Patient.birthDate"),
    "death-date": ("date", "(Patient.deceased as dateTime)"),
    "deceased": ("token", "Patient.deceased.exists() and Patient.deceased != false"),
    "email": ("token", "Patient.telecom.where(system='email')"),
    "family": ("string", "Patient.name.family"),
    "gender": ("token", "Patient.gender"),
    "general-practitioner": ("reference", "Patient.generalPractitioner"),
    "given": ("string", "Patient.name.given"),
    "identifier": ("token", "Patient.identifier"),
    "language": ("token", "Patient.communication.language"),
    "link": ("reference", "Patient.link.other"),
    "name": ("string", "Patient.name"),
    "organization": ("reference", "Patient.managingOrganization"),
    "phone": ("token", "Patient.telecom.where(system='phone')"),
    "phonetic": ("string", "Patient.name"),
    "telecom": ("token", "Patient.telecom"),
}

RESOURCE_LEVEL = {k: v for k, v in OBSERVATION.items() if k.startswith("_")}


@pytest.mark.parametrize(
    ("res_type", "expected"),
    [
        ("Observation", OBSERVATION),
        ("DiagnosticReport", {**RESOURCE_LEVEL, **DIAGNOSTIC_REPORT}),
        ("ImagingStudy", {**RESOURCE_LEVEL, **IMAGING_STUDY}),
        ("Patient", {**RESOURCE_LEVEL, **PATIENT}),
    ],
)
def test_params_exactly(reg, res_type, expected):
    got = {code: (sp.type, sp.expression) for code, sp in reg.params(res_type).items()}
    assert got == expected


@pytest.mark.parametrize(
    ("res_type", "code", "targets"),
    [
        ("Observation", "patient", ("Patient",)),
        ("Observation", "subject", ("Group", "Device", "Patient", "Location")),
        ("Observation", "specimen", ("Specimen",)),
        ("DiagnosticReport", "result", ("Observation",)),
        ("ImagingStudy", "endpoint", ("Endpoint",)),
        ("Encounter", "practitioner", ("Practitioner",)),
        ("Provenance", "patient", ("Patient",)),
        ("Patient", "general-practitioner", ("Practitioner", "Organization", "PractitionerRole")),
    ],
)
def test_targets(reg, res_type, code, targets):
    assert reg.get(res_type, code).targets == targets


@pytest.mark.parametrize(
    ("res_type", "code", "components"),
    [
        ("Observation", "component-code-value-quantity",
         [("component-code", "token", "code"),
          ("component-value-quantity", "quantity", "value.as(Quantity)")]),
        ("Observation", "code-value-quantity",
         [("code", "token", "code"), ("value-quantity", "quantity", "value.as(Quantity)")]),
        ("Observation", "code-value-date",
         [("code", "token", "code"),
          ("value-date", "date", "value.as(DateTime) | value.as(Period)")]),
        # R4 swaps this composite's component expressions; the registry repairs them.
        ("DocumentReference", "relationship",
         [("relatesto", "reference", "target"), ("relation", "token", "code")]),
        ("Group", "characteristic-value",
         [("characteristic", "token", "code"), ("value", "token", "value")]),
    ],
)
def test_composite_components(reg, res_type, code, components):
    sp = reg.get(res_type, code)
    assert sp.type == "composite"
    assert [(c.code, c.type, expr) for c, expr in sp.components] == components


def test_comparators_and_modifiers_from_spec(reg):
    assert reg.get("Observation", "date").comparators == (
        "eq", "ne", "gt", "ge", "lt", "le", "sa", "eb", "ap")
    assert reg.get("Observation", "code").comparators == ()
    assert reg.get("Observation", "code").modifiers == ()
    assert reg.get("Observation", "code").url == "http://hl7.org/fhir/SearchParameter/clinical-code"


@pytest.mark.parametrize(
    ("res_type", "params"),
    [
        ("Observation", ("subject", "performer")),
        ("DiagnosticReport", ("subject",)),
        ("ImagingStudy", ("patient",)),
        ("Patient", ("link",)),
        ("Encounter", ("patient",)),
        ("Organization", ()),
        ("Provenance", ("patient",)),
    ],
)
def test_compartment_params(reg, res_type, params):
    assert reg.compartment_params(res_type) == params


def test_compartment_params_are_known_params(reg):
    for res_type in reg.types():
        for code in reg.compartment_params(res_type):
            assert reg.get(res_type, code) is not None, (res_type, code)


def test_data_readme_records_origin():
    readme = Path(DATA_DIR / "README.md").read_text(encoding="utf-8")
    assert "CC0" in readme and "4.0.1" in readme

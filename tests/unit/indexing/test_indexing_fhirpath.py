"""The FHIRPath subset used by the R4 search parameters, on plain JSON."""

from __future__ import annotations

import pytest

from app.indexing.fhirpath import (
    FhirPathError,
    branch_root,
    compile_expression,
    evaluate,
    first_elements,
    reference_type,
    resolve_targets,
    split_union,
)

OBS = {
    "resourceType": "Observation",
    "id": "o1",
    "meta": {"tag": [{"system": "s", "code": "t"}], "profile": ["http://p"]},
    "status": "final",
    "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9"}], "text": "BP"},
    "subject": {"reference": "Patient/p1"},
    "performer": [{"reference": "Practitioner/d1"}, {"reference": "https://x.org/fhir/Organization/o9"},
                  {"reference": "urn:uuid:1234"}, {"type": "Patient", "display": "me"}],
    "effectivePeriod": {"start": "2024-01-01"},
    "valueQuantity": {"value": 1.5, "code": "mg"},
    "component": [
        {"code": {"coding": [{"code": "a"}]}, "valueQuantity": {"value": 107}},
        {"code": {"coding": [{"code": "b"}]}, "valueCodeableConcept": {"text": "x"}},
        {"code": {"coding": [{"code": "c"}]}, "valueString": "s"},
    ],
    "extension": [{"url": "http://e/1", "valueBoolean": True}, {"url": "http://e/2", "valueInteger": 3}],
}
PAT = {
    "resourceType": "Patient",
    "telecom": [{"system": "phone", "value": "1"}, {"system": "email", "value": "a@b"}],
    "deceasedBoolean": False,
}

CASES = [
    ("Observation.status", OBS, ["final"]),
    ("Patient.status", OBS, []),
    ("Resource.id", OBS, ["o1"]),
    ("DomainResource.id", OBS, ["o1"]),
    ("Resource.meta.tag", OBS, [{"system": "s", "code": "t"}]),
    ("Observation.code.coding.code", OBS, ["85354-9"]),
    ("Observation.component.code.coding.code", OBS, ["a", "b", "c"]),
    ("Observation.code.text | Observation.status", OBS, ["BP", "final"]),
    ("Observation.status | Observation.status", OBS, ["final"]),
    # choice types
    ("Observation.effective", OBS, [{"start": "2024-01-01"}]),
    ("Observation.value", OBS, [{"value": 1.5, "code": "mg"}]),
    ("(Observation.value as Quantity)", OBS, [{"value": 1.5, "code": "mg"}]),
    ("Observation.value.as(Quantity).value", OBS, [1.5]),
    ("Observation.value.ofType(Quantity).value", OBS, [1.5]),
    ("(Observation.value as CodeableConcept)", OBS, []),
    ("(Observation.effective as dateTime)", OBS, []),
    ("(Observation.effective as Period).start", OBS, ["2024-01-01"]),
    ("(Observation.component.value as CodeableConcept).text", OBS, ["x"]),
    ("(Observation.component.value as Quantity).value", OBS, [107]),
    ("(Observation.component.value as string)", OBS, ["s"]),
    ("Observation.component.value.as(DateTime)", OBS, []),
    # where / resolve
    ("Observation.subject.where(resolve() is Patient)", OBS, [{"reference": "Patient/p1"}]),
    ("Observation.subject.where(resolve() is Group)", OBS, []),
    ("Observation.performer.where(resolve() is Organization)", OBS,
     [{"reference": "https://x.org/fhir/Organization/o9"}]),
    ("Observation.performer.where(resolve() is Patient)", OBS, [{"type": "Patient", "display": "me"}]),
    ("Patient.telecom.where(system='email')", PAT, [{"system": "email", "value": "a@b"}]),
    ("Patient.telecom.where(system='fax')", PAT, []),
    ("Observation.component.where(code.coding.code='b').value", OBS, [{"text": "x"}]),
    # functions and logic
    ("Observation.component.exists()", OBS, [True]),
    ("Observation.method.exists()", OBS, [False]),
    ("Observation.method.empty()", OBS, [True]),
    ("Observation.component.first().code.coding.code", OBS, ["a"]),
    ("Observation.component.last().value", OBS, ["s"]),
    ("Observation.component.count()", OBS, [3]),
    ("Observation.component[1].value.text", OBS, ["x"]),
    ("Observation.extension('http://e/2').value", OBS, [3]),
    ("Observation.extension('http://e/3').value", OBS, []),
    ("Observation.status = 'final'", OBS, [True]),
    ("Observation.status != 'final'", OBS, [False]),
    ("Observation.method = 'x'", OBS, []),
    ("Patient.deceased.exists() and Patient.deceased != false", PAT, [False]),
    ("Patient.deceased.exists() and Patient.deceased != false",
     {"resourceType": "Patient", "deceasedDateTime": "2020-01-01"}, [True]),
    ("Patient.deceased.exists() and Patient.deceased != false", {"resourceType": "Patient"}, [False]),
    ("Patient.deceased.exists() or Patient.active", {"resourceType": "Patient", "active": True}, [True]),
    ("Observation.status.not()", {"resourceType": "Observation", "status": True}, [False]),
    ("Observation is Observation", OBS, [True]),
    ("$this.status", OBS, ["final"]),
    ("Observation | Observation.component.first()", OBS, [OBS, OBS["component"][0]]),
]


@pytest.mark.parametrize(("expression", "resource", "expected"), CASES)
def test_evaluate(expression, resource, expected):
    assert evaluate(expression, resource) == expected


def test_relative_component_expressions():
    comp = OBS["component"][0]
    assert evaluate("code", comp) == [{"coding": [{"code": "a"}]}]
    assert evaluate("value.as(Quantity)", comp) == [{"value": 107}]
    assert evaluate("value.as(DateTime) | value.as(Period)", comp) == []


def test_assume_type_drops_root_test_but_keeps_semantics():
    fn = compile_expression("Observation.status | Resource.id", "Observation")
    assert fn([OBS]) == ["final", "o1"]


def test_compiled_once():
    assert compile_expression("Observation.code") is compile_expression("Observation.code")


@pytest.mark.parametrize(
    "bad", ["Observation.code.", "Observation.(code", "Observation.code.children()", "a ~ b", "%x"]
)
def test_unsupported_raise_at_compile_time(bad):
    with pytest.raises(FhirPathError):
        compile_expression(bad)


@pytest.mark.parametrize(
    ("expression", "branches"),
    [
        ("A.b | (C.d as X) | E.f.where(g='|')", ["A.b", "(C.d as X)", "E.f.where(g='|')"]),
        ("Observation", ["Observation"]),
    ],
)
def test_split_union(expression, branches):
    assert split_union(expression) == branches


@pytest.mark.parametrize(
    ("branch", "root"),
    [("Observation.code", "Observation"), ("(Patient.deceased as dateTime)", "Patient"),
     ("code", None), ("Resource.id", "Resource")],
)
def test_branch_root(branch, root):
    assert branch_root(branch) == root


def test_resolve_targets():
    assert resolve_targets("A.subject.where(resolve() is Patient) | B.x") == ("Patient",)
    assert resolve_targets("A.subject") == ()


@pytest.mark.parametrize(
    ("ref", "type_"),
    [({"reference": "Patient/1"}, "Patient"), ({"reference": "Patient/1/_history/2"}, "Patient"),
     ({"reference": "http://a/b/Observation/x"}, "Observation"), ({"reference": "urn:uuid:1"}, None),
     ({"reference": "#c1"}, None), ({"type": "Group"}, "Group"),
     ("http://a/PlanDefinition/p|1.0", "PlanDefinition"), (3, None)],
)
def test_reference_type(ref, type_):
    assert reference_type(ref) == type_


@pytest.mark.parametrize(
    ("expression", "names"),
    [
        ("Observation.code", {"code"}),
        ("Resource.meta.tag", {"meta"}),
        ("Observation.subject.where(resolve() is Patient)", {"subject"}),
        ("(Observation.value as CodeableConcept)", {"valueCodeableConcept"}),
        ("Observation.code | Observation.component.code", {"code", "component"}),
        ("Observation", None),
        ("Observation.deceased.exists()", None),
    ],
)
def test_first_elements(expression, names):
    got = first_elements(expression, "Observation")
    assert (None if got is None else set(got)) == names

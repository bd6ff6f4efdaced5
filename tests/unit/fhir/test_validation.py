import copy
import gzip
import json
from pathlib import Path

import pytest

from app.fhir.errors import FhirError
from app.fhir.nhs_number import NHS_NUMBER_SYSTEM
from app.fhir.validation import MAX_ISSUES, validate_json_bytes, validate_resource

DATA = Path(__file__).resolve().parents[2] / "data" / "validation"
SHARED = Path(__file__).resolve().parents[4] / "shared" / "data"
EXAMPLES = sorted(p.name for p in DATA.glob("*.json"))


def load(name: str) -> dict:
    return json.loads((DATA / name).read_text(encoding="utf-8"))


def obs(**elements: object) -> dict:
    base: dict = {"resourceType": "Observation", "status": "final", "code": {"text": "Hb"}}
    base.update(elements)
    return base


def nhs_patient(value: str) -> dict:
    return {"resourceType": "Patient", "identifier": [{"system": NHS_NUMBER_SYSTEM, "value": value}]}


def raises(data: object, expected_type: str | None = None) -> FhirError:
    with pytest.raises(FhirError) as info:
        validate_resource(data, expected_type)
    return info.value


@pytest.mark.parametrize("name", EXAMPLES)
def test_examples_are_valid(name: str) -> None:
    data = load(name)
    validate_resource(data, data["resourceType"])


def test_examples_present() -> None:
    assert len(EXAMPLES) >= 10


# (case id, resource, expected status, issue code, expression of the first issue)
BAD = [
    ("unknown element", obs(foo=1), 400, "structure", "Observation.foo"),
    (
        "unknown nested element",
        obs(valueQuantity={"value": 1, "unit": "g", "colour": "red"}),
        400,
        "structure",
        "Observation.valueQuantity.colour",
    ),
    ("python field name", obs(status__ext={"id": "a"}), 400, "structure", "Observation.status__ext"),
    ("fhir_comments", obs(fhir_comments="x"), 400, "structure", "Observation.fhir_comments"),
    ("string for object", obs(code="Hb"), 400, "structure", "Observation.code"),
    ("object for array", obs(category={"text": "lab"}), 400, "structure", "Observation.category"),
    (
        "string for boolean",
        {"resourceType": "Patient", "active": "true"},
        400,
        "structure",
        "Patient.active",
    ),
    (
        "string for integer",
        {"resourceType": "Patient", "multipleBirthInteger": "2"},
        400,
        "structure",
        "Patient.multipleBirthInteger",
    ),
    (
        "fractional integer",
        {"resourceType": "Patient", "multipleBirthInteger": 1.5},
        400,
        "structure",
        "Patient.multipleBirthInteger",
    ),
    (
        "string decimal",
        obs(valueQuantity={"value": "5.4"}),
        400,
        "structure",
        "Observation.valueQuantity.value",
    ),
    (
        "boolean decimal",
        obs(valueQuantity={"value": True}),
        400,
        "structure",
        "Observation.valueQuantity.value",
    ),
    ("missing status", {"resourceType": "Observation", "code": {"text": "Hb"}}, 400, "required", "Observation.status"),
    ("missing code", {"resourceType": "Observation", "status": "final"}, 400, "required", "Observation.code"),
    ("empty string", obs(status=""), 400, "value", "Observation.status"),
    (
        "empty string in array",
        {"resourceType": "Patient", "name": [{"given": ["Ann", ""]}]},
        400,
        "value",
        "Patient.name[0].given[1]",
    ),
    ("null", obs(issued=None), 400, "structure", "Observation.issued"),
    (
        "null in array",
        {"resourceType": "Patient", "name": [{"given": ["Ann", None]}]},
        400,
        "structure",
        "Patient.name[0].given[1]",
    ),
    ("empty array", obs(category=[]), 400, "structure", "Observation.category"),
    ("empty object", obs(code={}), 400, "structure", "Observation.code"),
    ("bad dateTime", obs(effectiveDateTime="2020-13-01"), 400, "value", "Observation.effectiveDateTime"),
    ("dateTime without zone", obs(effectiveDateTime="2020-01-01T10:00:00"), 400, "value", "Observation.effectiveDateTime"),
    ("bad instant", obs(issued="2020-01-01"), 400, "value", "Observation.issued"),
    ("bad date", {"resourceType": "Patient", "birthDate": "1990-02-30"}, 400, "value", "Patient.birthDate"),
    ("bad id", obs(id="a b"), 400, "value", "Observation.id"),
    ("id too long", obs(id="a" * 65), 400, "value", "Observation.id"),
    (
        "bad code",
        obs(code={"coding": [{"system": "http://loinc.org", "code": " 718-7"}]}),
        400,
        "value",
        "Observation.code.coding[0].code",
    ),
    (
        "uri with space",
        obs(code={"coding": [{"system": "http://loinc .org", "code": "718-7"}]}),
        400,
        "value",
        "Observation.code.coding[0].system",
    ),
    ("integer overflow", obs(valueInteger=2**31), 400, "value", "Observation.valueInteger"),
    (
        "two value[x]",
        obs(valueString="a", valueBoolean=True),
        400,
        "structure",
        "Observation.value[x]",
    ),
    (
        "two value[x] in component",
        obs(component=[{"code": {"text": "c"}, "valueString": "a", "valueInteger": 1}]),
        400,
        "structure",
        "Observation.component[0].value[x]",
    ),
    (
        "missing required in array item",
        obs(component=[{"valueString": "a"}]),
        400,
        "required",
        "Observation.component[0].code",
    ),
    (
        "unknown contained type",
        obs(contained=[{"resourceType": "Foo", "id": "x"}]),
        400,
        "structure",
        "Observation.contained[0].resourceType",
    ),
    (
        "R4B-only contained type",
        obs(contained=[{"resourceType": "Citation", "id": "x"}]),
        400,
        "structure",
        "Observation.contained[0].resourceType",
    ),
    (
        "invalid contained resource",
        obs(contained=[{"resourceType": "Patient", "id": "p", "gender": ""}]),
        400,
        "value",
        "Observation.contained[0].gender",
    ),
    (
        "R4B-only open type",
        {"resourceType": "Patient", "extension": [{"url": "http://x", "valueRatioRange": {"lowNumerator": {"value": 1}}}]},
        400,
        "structure",
        "Patient.extension[0].valueRatioRange",
    ),
    (
        "narrative without namespace",
        {"resourceType": "Patient", "text": {"status": "generated", "div": "<div>x</div>"}},
        400,
        "value",
        "Patient.text.div",
    ),
    (
        "narrative with script",
        {
            "resourceType": "Patient",
            "text": {
                "status": "generated",
                "div": '<div xmlns="http://www.w3.org/1999/xhtml"><script>alert(1)</script></div>',
            },
        },
        400,
        "value",
        "Patient.text.div",
    ),
    ("bad NHS number", nhs_patient("9434765918"), 422, "business-rule", "Patient.identifier[0].value"),
    ("NHS number with spaces", nhs_patient("943 476 5919"), 422, "business-rule", "Patient.identifier[0].value"),
    ("placeholder NHS number", nhs_patient("0000000000"), 422, "business-rule", "Patient.identifier[0].value"),
    (
        "bad NHS number in Reference.identifier",
        obs(subject={"identifier": {"system": NHS_NUMBER_SYSTEM, "value": "1234567890"}}),
        422,
        "business-rule",
        "Observation.subject.identifier.value",
    ),
    (
        "bad NHS number in contained resource",
        obs(contained=[nhs_patient("9434765918")]),
        422,
        "business-rule",
        "Observation.contained[0].identifier[0].value",
    ),
]


@pytest.mark.parametrize(
    "data, status, code, expression", [c[1:] for c in BAD], ids=[c[0] for c in BAD]
)
def test_bad_input(data: dict, status: int, code: str, expression: str) -> None:
    err = raises(data)
    assert (err.status, err.code, err.expression) == (status, code, [expression])
    assert err.outcome()["resourceType"] == "OperationOutcome"


@pytest.mark.parametrize(
    "data, expression",
    [
        ([], None),
        ("Patient", None),
        ({"id": "x"}, ["resourceType"]),
        ({"resourceType": 5}, ["resourceType"]),
        ({"resourceType": "Foo"}, ["resourceType"]),
        ({"resourceType": "Resource"}, ["resourceType"]),
        ({"resourceType": "Citation"}, ["resourceType"]),  # R4B only, not R4
        ({"resourceType": "MedicinalProduct"}, ["resourceType"]),  # R4, dropped by R4B
    ],
)
def test_structure_of_the_envelope(data: object, expression: list[str] | None) -> None:
    err = raises(data)
    assert (err.status, err.code, err.expression) == (400, "structure", expression)


def test_unknown_resource_type_is_named() -> None:
    assert "Unknown resourceType 'Foo'" in raises({"resourceType": "Foo"}).diagnostics


def test_resource_type_mismatch() -> None:
    err = raises(obs(), "Patient")
    assert (err.status, err.code, err.expression) == (400, "invalid", ["resourceType"])
    assert "Observation" in err.diagnostics and "Patient" in err.diagnostics


def test_null_placeholders_lined_up_with_extensions_are_valid() -> None:
    validate_resource(
        {
            "resourceType": "Patient",
            "name": [{"given": ["Ann", None], "_given": [None, {"extension": [{"url": "http://x", "valueString": "y"}]}]}],
        }
    )


def test_r4_meta_in_extension_is_accepted_and_checked() -> None:
    """R4 allows Extension.valueMeta; R4B dropped it (docs/decisions/0002)."""
    ext = {"url": "http://x", "valueMeta": {"versionId": "1"}}
    validate_resource({"resourceType": "Patient", "extension": [ext]})
    ext["valueMeta"] = {"lastUpdated": "yesterday"}
    err = raises({"resourceType": "Patient", "extension": [ext]})
    assert (err.code, err.expression) == ("value", ["Patient.extension[0].valueMeta.lastUpdated"])


def test_valid_nhs_number_passes() -> None:
    validate_resource(nhs_patient("9434765919"))


def test_other_identifier_systems_are_not_checked() -> None:
    validate_resource({"resourceType": "Patient", "identifier": [{"system": "urn:x", "value": "1"}]})


def test_structure_errors_win_over_business_rules() -> None:
    data = nhs_patient("9434765918")
    data["active"] = "yes"
    assert raises(data).status == 400


def test_all_issues_are_reported_together() -> None:
    err = raises({"resourceType": "Observation", "code": {}, "foo": 1, "issued": "x"})
    paths = {i.expression[0] for i in err.issues}
    assert {"Observation.code", "Observation.foo", "Observation.issued", "Observation.status"} <= paths


def test_issue_count_is_capped() -> None:
    data = obs(note=[{"text": ""} for _ in range(500)])
    err = raises(data)
    assert len(err.issues) <= MAX_ISSUES + 1
    assert err.issues[-1].severity == "information"


def test_diagnostics_do_not_echo_large_input() -> None:
    huge = "x" * 100_000
    err = raises({"resourceType": huge})
    assert len(err.diagnostics) < 200
    err = raises(obs(valueQuantity={"value": huge}))
    assert all(len(i.diagnostics) < 300 for i in err.issues)
    err = raises(nhs_patient("9" * 5000))
    assert len(err.diagnostics) < 200


def test_no_pydantic_internals_in_paths() -> None:
    err = raises(obs(valueQuantity={"value": 1}, subject={"reference": 5}, effectiveDateTime=7))
    for issue in err.issues:
        assert issue.expression and issue.expression[0].startswith("Observation.")
        assert "[" not in issue.expression[0].replace("[0]", "") or "[x]" in issue.expression[0]
        assert "function" not in issue.diagnostics and "Traceback" not in issue.diagnostics


def test_input_is_not_modified() -> None:
    data = load("Observation-blood-pressure.json")
    before = copy.deepcopy(data)
    validate_resource(data)
    assert data == before


def test_validate_json_bytes_returns_the_parsed_resource() -> None:
    raw = (DATA / "synthea-Observation.json").read_bytes()
    assert validate_json_bytes(raw, "Observation") == json.loads(raw)


@pytest.mark.parametrize("raw", [b"", b"{", b'{"resourceType": "Patient",}', b"\xff"])
def test_validate_json_bytes_rejects_bad_json(raw: bytes) -> None:
    with pytest.raises(FhirError) as info:
        validate_json_bytes(raw)
    assert (info.value.status, info.value.code) == (400, "structure")


def _shared_resources():
    for path in sorted((SHARED / "fhir-examples").glob("*.json")) + sorted(
        (SHARED / "uk-core").glob("*.json")
    ):
        if path.name != "manifest.json":
            yield path.name, json.loads(path.read_text(encoding="utf-8"))
    for path in sorted((SHARED / "synthea").glob("*.json.gz")):
        yield path.name, json.loads(gzip.decompress(path.read_bytes()))


@pytest.mark.slow
@pytest.mark.skipif(not SHARED.is_dir(), reason="shared/data is not present")
def test_every_shared_example_is_valid() -> None:
    failures = []
    count = 0
    for name, data in _shared_resources():
        units = [(name, data)]
        if data.get("resourceType") == "Bundle":
            units += [
                (f"{name}#entry[{i}]", e["resource"])
                for i, e in enumerate(data.get("entry", []))
                if "resource" in e
            ]
        for unit, resource in units:
            count += 1
            try:
                validate_resource(resource)
            except FhirError as exc:
                failures.append((unit, [i.to_json() for i in exc.issues]))
    assert count > 16_000
    assert failures == []


def test_required_binding_codes_are_enforced_where_the_list_is_complete() -> None:
    with pytest.raises(FhirError) as exc:
        validate_resource({"resourceType": "Patient", "gender": "x"})
    assert exc.value.status == 400
    assert exc.value.code == "code-invalid"
    assert exc.value.expression == ["Patient.gender"]
    validate_resource({"resourceType": "Patient", "gender": "unknown"})


@pytest.mark.parametrize("depth, refused", [(90, False), (3000, True)])
def test_deep_nesting_is_a_400_not_a_recursion_error(depth: int, refused: bool) -> None:
    """Direct callers (loader, bundle entries) get the depth cap too, not only the HTTP layer."""
    data = obs()
    node = data
    for _ in range(depth // 2):
        child: dict = {"url": "http://example.org/x"}
        node["extension"] = [child]
        node = child
    node["valueString"] = "leaf"
    if refused:
        err = raises(data)
        assert err.status == 400
        assert err.issues[0].code == "structure"
        assert "deeper than" in err.issues[0].diagnostics
    else:
        validate_resource(data)

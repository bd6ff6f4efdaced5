"""Index rows from real spec examples and from small hand-made resources."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from app.indexing import COLUMNS, KINDS, extract, load_registry
from app.indexing.dates import MAX_DATETIME, MIN_DATETIME
from app.indexing.extract import parse_reference
from app.storage.tables import INDEX_TABLES
from config import RESULTS_RESOURCE_TYPES

DATA = Path(__file__).resolve().parents[2] / "data"
LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
UCUM = "http://unitsofmeasure.org"
D = datetime
US = 999999


@pytest.fixture(scope="module")
def reg():
    return load_registry(RESULTS_RESOURCE_TYPES)


def load(name: str) -> dict:
    return json.loads((DATA / name).read_text(encoding="utf-8"))


def rows(out: dict, kind: str, param: str) -> list[tuple]:
    """Rows of one param as tuples of the remaining columns (but the date envelope of token and
    reference rows, tested on its own), in emission order."""
    cols = [c for c in COLUMNS[kind] if c not in ("param", "date_low", "date_high")]
    return [tuple(r[c] for c in cols) for r in out[kind] if r["param"] == param]


def params(out: dict, kind: str) -> set[str]:
    return {r["param"] for r in out[kind]}


def test_row_keys_match_index_tables(reg):
    out = extract(reg, load("Observation-blood-pressure.json"))
    assert set(out) == set(KINDS) == set(INDEX_TABLES)
    for kind, table in INDEX_TABLES.items():
        assert set(COLUMNS[kind]) == {c.name for c in table.columns} - {"rid", "res_type"}
        for row in out[kind]:
            assert tuple(row) == COLUMNS[kind]


# --------------------------------------------------------------------------- blood pressure


def test_blood_pressure_components_keep_their_own_group(reg):
    out = extract(reg, load("Observation-blood-pressure.json"))
    codes = rows(out, "token", "component-code-value-quantity$0")
    values = rows(out, "quantity", "component-code-value-quantity$1")
    grp_of_code = {code: grp for _system, code, grp in codes}
    grp_of_value = {value: grp for value, *_rest, grp in values}
    assert grp_of_code["8480-6"] == grp_of_value[107.0] == 1
    assert grp_of_code["271649006"] == grp_of_code["bp-s"] == 1
    assert grp_of_code["8462-4"] == grp_of_value[60.0] == 2
    assert values[0] == (107.0, UCUM, "mm[Hg]", "mmHg", values[0][4], values[0][5], 1)
    # the panel itself has no value: no code-value-quantity group at all
    assert rows(out, "token", "code-value-quantity$0") == []
    # combo: the Observation (no value) is skipped, the components numbered 1 and 2
    assert {g for *_x, g in rows(out, "token", "combo-code-value-quantity$0")} == {1, 2}


def test_blood_pressure_plain_rows(reg):
    out = extract(reg, load("Observation-blood-pressure.json"))
    assert rows(out, "token", "code") == [(LOINC, "85354-9", None)]
    assert rows(out, "token", "component-code") == [
        (LOINC, "8480-6", None), (SNOMED, "271649006", None),
        ("http://acme.org/devices/clinical-codes", "bp-s", None), (LOINC, "8462-4", None)]
    assert rows(out, "token", "status") == [(None, "final", None)]
    assert rows(out, "token", "identifier") == [
        ("urn:ietf:rfc:3986", "urn:uuid:187e0c12-8dd2-67e2-99b2-bf273c878281", None)]
    # basedOn has only an identifier: no reference row, a :identifier token row
    assert rows(out, "reference", "based-on") == []
    assert rows(out, "token", "based-on:identifier") == [("https://acme.org/identifiers", "1234", None)]
    assert rows(out, "string", "code:text") == [
        ("blood pressure panel with all children optional",
         "Blood pressure panel with all children optional", None),
        ("blood pressure systolic & diastolic", "Blood pressure systolic & diastolic", None)]
    # 2012-09-17 is a BST day in London
    assert rows(out, "date", "date") == [(D(2012, 9, 16, 23), D(2012, 9, 17, 22, 59, 59, US), None)]
    assert rows(out, "reference", "subject") == [("Patient", "example", None, None)]
    assert rows(out, "reference", "patient") == [("Patient", "example", None, None)]
    assert rows(out, "reference", "performer") == [("Practitioner", "example", None, None)]
    assert rows(out, "uri", "_profile") == [("http://hl7.org/fhir/StructureDefinition/vitalsigns", None)]
    assert [v for v, *_ in rows(out, "quantity", "component-value-quantity")] == [107.0, 60.0]
    assert rows(out, "quantity", "value-quantity") == []


def test_non_composite_rows_have_no_group(reg):
    out = extract(reg, load("Observation-blood-pressure.json"))
    for kind in KINDS:
        for r in out[kind]:
            assert (r["grp"] is not None) == ("$" in r["param"]), r


def test_observation_example(reg):
    out = extract(reg, load("Observation-example.json"))
    assert rows(out, "quantity", "value-quantity") == [
        (185.0, UCUM, "[lb_av]", "lbs", pytest.approx(83914.58845), "g", None)]
    assert rows(out, "token", "code-value-quantity$0")[0] == (LOINC, "29463-7", 1)
    assert {g for *_x, g in rows(out, "token", "code-value-quantity$0")} == {1}
    assert rows(out, "quantity", "code-value-quantity$1")[0][-1] == 1
    assert rows(out, "date", "date") == [(D(2016, 3, 27, 23), D(2016, 3, 28, 22, 59, 59, US), None)]
    assert params(out, "token") >= {"code", "category", "combo-code", "status"}


# --------------------------------------------------------------------------- other examples


def test_patient_example(reg):
    out = extract(reg, load("Patient-example.json"))
    assert rows(out, "token", "identifier") == [("urn:oid:1.2.36.146.595.217.0.1", "12345", None)]
    assert rows(out, "token", "identifier:of-type") == [
        ("http://terminology.hl7.org/CodeSystem/v2-0203", "MR|12345", None)]
    assert rows(out, "token", "gender") == [(None, "male", None)]
    assert rows(out, "token", "active") == [(None, "true", None)]
    assert rows(out, "token", "deceased") == [(None, "false", None)]
    assert rows(out, "token", "phone") == [
        (None, "(03) 5555 6473", None), (None, "(03) 3410 5613", None), (None, "(03) 5555 8834", None)]
    assert rows(out, "token", "email") == []
    assert rows(out, "string", "family") == [("chalmers", "Chalmers", None), ("windsor", "Windsor", None)]
    assert rows(out, "string", "given") == [
        ("peter", "Peter", None), ("james", "James", None), ("jim", "Jim", None)]
    assert rows(out, "string", "address-city") == [("pleasantville", "PleasantVille", None)]
    assert ("534 erewhon st", "534 Erewhon St", None) in rows(out, "string", "address")
    assert rows(out, "date", "birthdate") == [(D(1974, 12, 25), D(1974, 12, 25, 23, 59, 59, US), None)]
    assert rows(out, "reference", "organization") == [("Organization", "1", None, None)]
    assert rows(out, "reference", "link") == []


def test_uk_core_patient(reg):
    out = extract(reg, load("UKCore-Patient-RichardSmith-Example.json"))
    assert rows(out, "token", "identifier") == [("https://fhir.nhs.uk/Id/nhs-number", "9912003888", None)]
    # 1970 was "British Standard Time" all year (UTC+1)
    assert rows(out, "date", "birthdate") == [(D(1970, 9, 10, 23), D(1970, 9, 11, 22, 59, 59, US), None)]


def test_diagnostic_report_f201(reg):
    out = extract(reg, load("DiagnosticReport-f201.json"))
    assert rows(out, "token", "code") == [(SNOMED, "429858000", None)]
    assert rows(out, "token", "category") == [
        (SNOMED, "394914008", None), ("http://terminology.hl7.org/CodeSystem/v2-0074", "RAD", None)]
    assert rows(out, "token", "conclusion") == [(SNOMED, "188340000", None)]
    assert rows(out, "date", "issued") == [(D(2012, 12, 1, 11), D(2012, 12, 1, 11, 0, 0, US), None)]
    assert rows(out, "reference", "subject") == [("Patient", "f201", None, None)]
    assert rows(out, "reference", "performer") == [("Organization", "f203", None, None)]


def test_imaging_study_xr(reg):
    out = extract(reg, load("ImagingStudy-example-xr.json"))
    assert rows(out, "token", "modality") == [("http://dicom.nema.org/resources/ontology/DCM", "DX", None)]
    assert rows(out, "token", "series") == [
        (None, "2.16.124.113543.6003.1154777499.30246.19789.3503430045.1", None)]
    assert len(rows(out, "token", "instance")) == 2
    assert rows(out, "token", "dicom-class") == [
        ("urn:ietf:rfc:3986", "urn:oid:1.2.840.10008.5.1.4.1.1.2", None)]
    assert rows(out, "token", "identifier:of-type") == [
        ("http://terminology.hl7.org/CodeSystem/v2-0203", "ACSN|W12342398", None)]
    assert rows(out, "reference", "endpoint") == [("Endpoint", "example-wadors", None, None)]
    assert rows(out, "reference", "patient") == [("Patient", "dicom", None, None)]
    assert rows(out, "date", "started") == [(D(2017, 1, 1, 8, 1, 20), D(2017, 1, 1, 8, 1, 20, US), None)]


# --------------------------------------------------------------------------- hand-made cases

REFS = {
    "resourceType": "Observation",
    "id": "r",
    "performer": [
        {"reference": "Practitioner/p1/_history/3"},
        {"reference": "https://other.example/fhir/Organization/o1"},
        {"reference": "https://other.example/fhir/Organization/o1/_history/2"},
        {"reference": "urn:uuid:0b9c1d4e-4f36-4f7a-a1f3-5b1f3c2e7d10"},
        {"reference": "urn:oid:1.2.3"},
        {"reference": "#contained1"},
        {"identifier": {"system": "https://fhir.nhs.uk/Id/sds-user-id", "value": "U1"}},
        {"reference": "PractitionerRole/pr1", "identifier": {"value": "x"}},
    ],
    "subject": {"reference": "Group/g1"},
}


@pytest.mark.parametrize(("base_url", "ours"), [
    (None, False),                              # no base known: every absolute URL is another server's
    ("https://results.example/fhir", False),    # another server's Organization/o1 is not our o1
    ("https://other.example/fh", False),        # a base is a whole path segment, not a string prefix
    ("https://other.example/fhir", True),       # absolute on our own base: ours
    ("https://other.example/fhir/", True),
])
def test_references(reg, base_url, ours):
    out = extract(reg, REFS, base_url=base_url)
    tail = ("Organization", "o1") if ours else (None, None)
    assert rows(out, "reference", "performer") == [
        ("Practitioner", "p1", None, None),
        (*tail, "https://other.example/fhir/Organization/o1", None),
        (*tail, "https://other.example/fhir/Organization/o1/_history/2", None),
        (None, None, "urn:uuid:0b9c1d4e-4f36-4f7a-a1f3-5b1f3c2e7d10", None),
        (None, None, "urn:oid:1.2.3", None),
        ("PractitionerRole", "pr1", None, None),
    ]
    assert rows(out, "token", "performer:identifier") == [
        ("https://fhir.nhs.uk/Id/sds-user-id", "U1", None), (None, "x", None)]
    # patient = subject.where(resolve() is Patient): a Group subject is not a patient
    assert rows(out, "reference", "subject") == [("Group", "g1", None, None)]
    assert rows(out, "reference", "patient") == []


@pytest.mark.parametrize(
    ("ref", "parsed"),
    [("Patient/1", ("Patient", "1", None)), ("Patient/1/_history/2", ("Patient", "1", None)),
     ("http://a/fhir/Patient/1", ("Patient", "1", "http://a/fhir/Patient/1")),
     ("urn:uuid:1", (None, None, "urn:uuid:1")), ("#x", None), ("", None),
     ("Patient?identifier=a|b", (None, None, "Patient?identifier=a|b"))],
)
def test_parse_reference(ref, parsed):
    assert parse_reference(ref) == parsed


def test_canonical_references_and_uris(reg):
    sr = {"resourceType": "ServiceRequest", "id": "s",
          "instantiatesCanonical": ["http://example.org/fhir/PlanDefinition/kdn5|1.0"],
          "instantiatesUri": ["http://example.org/protocol"],
          "meta": {"source": "http://lab.example/feed#1", "profile": ["http://p/1", "http://p/1"],
                   "security": [{"system": "http://s", "code": "R", "display": "restricted"}],
                   "tag": [{"system": "http://t", "code": "x"}], "lastUpdated": "2024-01-01T00:00:00Z"}}
    out = extract(reg, sr)
    assert rows(out, "reference", "instantiates-canonical") == [
        (None, None, "http://example.org/fhir/PlanDefinition/kdn5|1.0", None)]
    assert rows(out, "uri", "instantiates-uri") == [("http://example.org/protocol", None)]
    assert rows(out, "uri", "_source") == [("http://lab.example/feed#1", None)]
    assert rows(out, "uri", "_profile") == [("http://p/1", None)]  # deduplicated
    assert rows(out, "token", "_security") == [("http://s", "R", None)]
    assert rows(out, "string", "_security:text") == [("restricted", "restricted", None)]
    assert rows(out, "token", "_tag") == [("http://t", "x", None)]
    # _id and _lastUpdated are columns of the resource table: no index rows
    assert not any(r["param"] in ("_id", "_lastUpdated") for k in KINDS for r in out[k])


def test_tokens_of_every_shape(reg):
    pat = {
        "resourceType": "Patient", "id": "p", "active": False, "gender": "female",
        "identifier": [
            {"system": "https://fhir.nhs.uk/Id/nhs-number", "value": "9434765919",
             "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                                  "code": "NH"}]}},
            {"value": "no-system"}, {"system": "http://x"}],
        "telecom": [{"system": "email", "value": "a@b.nhs.uk"}, {"system": "phone"},
                    {"system": "url", "value": "https://a"}],
        "communication": [{"language": {"text": "Welsh only"}}],
        "deceasedDateTime": "2020-02-03",
    }
    out = extract(reg, pat)
    # an Identifier with a system and no value still answers ``identifier=http://x|``
    assert rows(out, "token", "identifier") == [
        ("https://fhir.nhs.uk/Id/nhs-number", "9434765919", None), (None, "no-system", None),
        ("http://x", None, None)]
    assert rows(out, "token", "identifier:of-type") == [
        ("http://terminology.hl7.org/CodeSystem/v2-0203", "NH|9434765919", None)]
    assert rows(out, "token", "telecom") == [(None, "a@b.nhs.uk", None), (None, "https://a", None)]
    assert rows(out, "token", "email") == [(None, "a@b.nhs.uk", None)]
    assert rows(out, "token", "active") == [(None, "false", None)]
    assert rows(out, "token", "deceased") == [(None, "true", None)]
    assert rows(out, "date", "death-date") == [(D(2020, 2, 3), D(2020, 2, 3, 23, 59, 59, US), None)]
    assert rows(out, "token", "language") == []
    assert rows(out, "string", "language:text") == [("welsh only", "Welsh only", None)]


def test_strings_and_value_string(reg):
    obs = {"resourceType": "Observation", "id": "s", "status": "final",
           "code": {"text": "Comment"}, "valueString": "  Négatif   pour\tle SARS "}
    out = extract(reg, obs)
    assert rows(out, "string", "value-string") == [
        ("negatif pour le sars", "  Négatif   pour\tle SARS ", None)]
    assert rows(out, "string", "code:text") == [("comment", "Comment", None)]
    assert rows(out, "token", "code") == []
    # code-value-string needs a code row: the CodeableConcept has only text, so no group
    assert rows(out, "string", "code-value-string$1") == []


def test_long_string_value_norm_truncated_value_kept(reg):
    long = "A" * 400
    out = extract(reg, {"resourceType": "Organization", "id": "o", "name": long})
    assert rows(out, "string", "name") == [("a" * 255, long, None)]


def test_dates_period_timing_and_zone(reg):
    enc = {"resourceType": "Encounter", "id": "e", "period": {"start": "2024-03-31T00:30:00"},
           "location": [{"location": {"reference": "Location/l"}, "period": {"end": "2024-07"}}],
           "length": {"value": 90, "system": UCUM, "code": "min", "unit": "minutes"}}
    out = extract(reg, enc)
    assert rows(out, "date", "date") == [(D(2024, 3, 31, 0, 30), MAX_DATETIME, None)]
    assert rows(out, "date", "location-period") == [(MIN_DATETIME, D(2024, 7, 31, 22, 59, 59, US), None)]
    assert rows(out, "quantity", "length") == [(90.0, UCUM, "min", "minutes", 5400.0, "s", None)]
    out_utc = extract(reg, enc, ZoneInfo("UTC"))
    assert rows(out_utc, "date", "location-period") == [(MIN_DATETIME, D(2024, 7, 31, 23, 59, 59, US), None)]
    sr = {"resourceType": "ServiceRequest", "id": "s", "occurrenceTiming": {
        "event": ["2024-01-02T10:00:00Z", "2024-01-03T10:00:00Z"],
        "repeat": {"boundsPeriod": {"start": "2024-01-01", "end": "2024-01-31"}}}}
    assert rows(extract(reg, sr), "date", "occurrence") == [
        (D(2024, 1, 2, 10), D(2024, 1, 2, 10, 0, 0, US), None),
        (D(2024, 1, 3, 10), D(2024, 1, 3, 10, 0, 0, US), None),
        (D(2024, 1, 1), D(2024, 1, 31, 23, 59, 59, US), None)]
    bad = {"resourceType": "Observation", "id": "b", "effectiveDateTime": "not a date"}
    assert rows(extract(reg, bad), "date", "date") == []


def test_quantities(reg):
    obs = {"resourceType": "Observation", "id": "q", "code": {"coding": [{"system": LOINC, "code": "2345-7"}]},
           "valueQuantity": {"value": 90, "unit": "mg/dL", "system": UCUM, "code": "mg/dL"}}
    out = extract(reg, obs)
    assert rows(out, "quantity", "value-quantity") == [(90.0, UCUM, "mg/dL", "mg/dL", 0.9, "g/L", None)]
    assert rows(out, "quantity", "code-value-quantity$1") == [(90.0, UCUM, "mg/dL", "mg/dL", 0.9, "g/L", 1)]
    assert rows(out, "token", "code-value-quantity$0") == [(LOINC, "2345-7", 1)]
    other = {"resourceType": "Observation", "id": "q2",
             "valueQuantity": {"value": 3, "unit": "tabs", "system": "http://other", "code": "TAB"}}
    assert rows(extract(reg, other), "quantity", "value-quantity") == [
        (3.0, "http://other", "TAB", "tabs", 3.0, "TAB", None)]
    unitless = {"resourceType": "Observation", "id": "q3", "valueQuantity": {"value": 3, "comparator": "<"}}
    assert rows(extract(reg, unitless), "quantity", "value-quantity") == [
        (3.0, None, None, None, 3.0, None, None)]
    sampled = {"resourceType": "Observation", "id": "q4",
               "valueSampledData": {"origin": {"value": 0}, "period": 10, "dimensions": 1, "data": "1 2"}}
    assert rows(extract(reg, sampled), "quantity", "value-quantity") == []


def test_code_value_concept_and_date_composites(reg):
    obs = {"resourceType": "Observation", "id": "c",
           "code": {"coding": [{"system": LOINC, "code": "883-9"}]},
           "valueCodeableConcept": {"coding": [{"system": SNOMED, "code": "112144000"}], "text": "A"},
           "component": [{"code": {"coding": [{"code": "k"}]}, "valueDateTime": "2024-05-05T00:00:00Z"}]}
    out = extract(reg, obs)
    assert rows(out, "token", "code-value-concept$0") == [(LOINC, "883-9", 1)]
    assert rows(out, "token", "code-value-concept$1") == [(SNOMED, "112144000", 1)]
    assert rows(out, "token", "value-concept") == [(SNOMED, "112144000", None)]
    assert rows(out, "string", "value-string") == [("a", "A", None)]
    assert rows(out, "token", "combo-code-value-concept$1") == [(SNOMED, "112144000", 1)]
    assert rows(out, "token", "code-value-date$0") == []  # the value is not a date
    assert not any(r["param"].endswith(":text") and r["grp"] for r in out["string"])


def test_group_characteristic_value_with_boolean(reg):
    grp = {"resourceType": "Group", "id": "g", "type": "person", "actual": True,
           "characteristic": [
               {"code": {"coding": [{"system": "http://c", "code": "smoker"}]}, "valueBoolean": False,
                "exclude": False},
               {"code": {"coding": [{"system": "http://c", "code": "sex"}]},
                "valueCodeableConcept": {"coding": [{"system": "http://g", "code": "female"}]},
                "exclude": True}],
           "member": [{"entity": {"reference": "Patient/p1"}}, {"entity": {"reference": "Patient/p2"}}]}
    out = extract(reg, grp)
    assert rows(out, "token", "characteristic-value$0") == [("http://c", "smoker", 1), ("http://c", "sex", 2)]
    assert rows(out, "token", "characteristic-value$1") == [(None, "false", 1), ("http://g", "female", 2)]
    assert rows(out, "token", "exclude") == [(None, "false", None), (None, "true", None)]
    assert rows(out, "token", "actual") == [(None, "true", None)]
    assert rows(out, "reference", "member") == [("Patient", "p1", None, None), ("Patient", "p2", None, None)]


def test_document_reference_relationship(reg):
    doc = {"resourceType": "DocumentReference", "id": "d", "status": "current",
           "relatesTo": [{"code": "replaces", "target": {"reference": "DocumentReference/old"}}],
           "content": [{"attachment": {"contentType": "application/pdf", "url": "https://x/doc.pdf"}}]}
    out = extract(reg, doc)
    assert rows(out, "reference", "relationship$0") == [("DocumentReference", "old", None, 1)]
    assert rows(out, "token", "relationship$1") == [(None, "replaces", 1)]
    assert rows(out, "token", "contenttype") == [(None, "application/pdf", None)]
    assert rows(out, "uri", "location") == [("https://x/doc.pdf", None)]


def test_duplicates_removed(reg):
    obs = {"resourceType": "Observation", "id": "dup",
           "category": [{"coding": [{"system": "http://c", "code": "lab"}]},
                        {"coding": [{"system": "http://c", "code": "lab"}]}]}
    out = extract(reg, obs)
    assert rows(out, "token", "category") == [("http://c", "lab", None)]


def test_unknown_type_and_empty_resource(reg):
    assert extract(reg, {"resourceType": "Basic", "id": "b"}) == {k: [] for k in KINDS}
    assert extract(reg, {"resourceType": "Observation"}) == {k: [] for k in KINDS}


def test_long_values_fit_the_columns(reg):
    obs = {"resourceType": "Observation", "id": "l",
           "code": {"coding": [{"system": "http://s/" + "s" * 300, "code": "c" * 300}]},
           "valueQuantity": {"value": 1, "unit": "u" * 100, "code": "x" * 100}}
    out = extract(reg, obs)
    for kind, table in INDEX_TABLES.items():
        for r in out[kind]:
            for col, val in r.items():
                length = getattr(table.c[col].type, "length", None)
                if isinstance(val, str) and length:
                    assert len(val) <= length, (kind, col)


# --------------------------------------------------------------------------- date envelope
@pytest.mark.parametrize(("effective", "span"), [
    ({"effectiveDateTime": "2020-03-04"}, ("2020-03-04", "2020-03-04")),
    ({"effectivePeriod": {"start": "2019-01-01", "end": "2019-02-01"}}, ("2019-01-01", "2019-02-01")),
    ({"effectiveTiming": {"event": ["2015-05-05", "2010-01-02"]}}, ("2010-01-02", "2015-05-05")),
    ({}, None),
])
def test_token_and_reference_rows_carry_the_date_envelope(reg, effective, span):
    """Every token and reference row of a resource holds the earliest start and latest end of
    its ``date`` rows (several for a Timing), or None when it has none."""
    obs = {"resourceType": "Observation", "status": "final", "subject": {"reference": "Patient/p"},
           "code": {"coding": [{"system": "http://loinc.org", "code": "2339-0"}]}, **effective}
    out = extract(reg, obs)
    dates = [r for r in out["date"] if r["param"] == "date"]
    assert out["reference"]
    envelopes = {(r["date_low"], r["date_high"]) for r in out["token"] + out["reference"]}
    if span is None:
        assert not dates and envelopes == {(None, None)}
        return
    assert envelopes == {(min(r["low"] for r in dates), max(r["high"] for r in dates))}
    low, high = envelopes.pop()
    assert (low.date().isoformat() <= span[0] <= high.date().isoformat()
            and low.date().isoformat() <= span[1] <= high.date().isoformat())


def test_a_type_without_a_date_parameter_has_no_envelope(reg):
    """Patient has ``birthdate``, not ``date``: its rows carry no envelope."""
    out = extract(reg, {"resourceType": "Patient", "birthDate": "1970-01-01", "gender": "female",
                        "generalPractitioner": [{"reference": "Practitioner/x"}]})
    assert out["date"] and out["token"] and out["reference"]
    assert {(r["date_low"], r["date_high"]) for r in out["token"] + out["reference"]} == {(None, None)}

"""Types outside the default set, enabled by configuration, get all their R4 search parameters.

The registry's data holds every R4 type's SearchParameters; an app with ``Condition`` (and other
clinical types) in ``ENABLED_RESOURCE_TYPES`` must index and search them, and list them in its
CapabilityStatement, like the default types.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from apihelp import FHIR_JSON, LiveServer, assert_outcome, create, headers, patient

import config

EXTRA_TYPES = ["Condition", "MedicationRequest", "AllergyIntolerance", "Procedure", "Immunization", "Location"]
CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
SNOMED = "http://snomed.info/sct"
STRICT = {"Prefer": "handling=strict"}
CONDITION_PARAMS = {
    "abatement-age", "abatement-date", "abatement-string", "asserter", "body-site", "category",
    "clinical-status", "code", "encounter", "evidence", "evidence-detail", "identifier",
    "onset-age", "onset-date", "onset-info", "patient", "recorded-date", "severity", "stage",
    "subject", "verification-status",
}
COMMON = {"_id", "_lastUpdated", "_profile", "_security", "_source", "_tag"}


@pytest.fixture(scope="module")
def server(database_url) -> Iterator[LiveServer]:
    from app import create_app

    application = create_app({
        "DATABASE_URL": database_url, "TESTING": True, "SECRET_KEY": "test-secret",
        "AUTH_REQUIRED": False,  # tests search over extra types, not authorisation
        "API_RATE_LIMIT_PER_MINUTE": 0, "TOKEN_RATE_LIMIT_PER_MINUTE": 0,
        "ENABLED_RESOURCE_TYPES": [*config.RESULTS_RESOURCE_TYPES, *EXTRA_TYPES],
    })
    srv = LiveServer(application)
    application.config["PUBLIC_BASE_URL"] = srv.base
    yield srv
    srv.stop()
    application.extensions["results_repo"].engine.dispose()


@pytest.fixture(scope="module")
def base(server) -> str:
    return server.base


def _condition(subject: str, status: str, onset: str, code: str) -> dict:
    return {
        "resourceType": "Condition",
        "clinicalStatus": {"coding": [{"system": CLINICAL, "code": status}]},
        "verificationStatus": {"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/condition-ver-status", "code": "confirmed"}]},
        "code": {"coding": [{"system": SNOMED, "code": code}], "text": "condition"},
        "subject": {"reference": subject},
        "onsetDateTime": onset,
    }


@pytest.fixture(scope="module")
def data(http, base) -> dict:
    p1 = create(http, base, patient())["id"]
    p2 = create(http, base, patient())["id"]
    c1 = create(http, base, _condition(f"Patient/{p1}", "active", "2021-03-04", "44054006"))["id"]
    c2 = create(http, base, _condition(f"Patient/{p2}", "resolved", "2015-06-01", "195967001"))["id"]
    return {"p1": p1, "p2": p2, "c1": c1, "c2": c2}


def _ids(http, base: str, res_type: str, **params: str) -> set[str]:
    r = http.get(f"{base}/{res_type}", params={**params, "_count": "100"}, headers=headers(**STRICT))
    assert r.status_code == 200, r.text[:2000]
    body = r.json()
    assert all(e["search"]["mode"] == "match" for e in body.get("entry", [])), body  # no warnings
    return {e["resource"]["id"] for e in body.get("entry", [])}


@pytest.mark.parametrize(
    ("params", "match", "other"),
    [
        ({"clinical-status": "active"}, "c1", "c2"),
        ({"clinical-status": f"{CLINICAL}|resolved"}, "c2", "c1"),
        ({"subject": "Patient/{p1}"}, "c1", "c2"),
        ({"patient": "{p2}"}, "c2", "c1"),
        ({"onset-date": "ge2020"}, "c1", "c2"),
        ({"onset-date": "lt2016-01-01"}, "c2", "c1"),
        ({"code": f"{SNOMED}|44054006"}, "c1", "c2"),
        ({"code": "195967001", "clinical-status": "resolved"}, "c2", "c1"),
        ({"verification-status": "confirmed", "subject": "Patient/{p1}"}, "c1", "c2"),
    ],
)
def test_condition_parameters_under_strict_handling(http, base, data, params, match, other):
    query = {k: v.format(**data) for k, v in params.items()}
    found = _ids(http, base, "Condition", **query)
    assert data[match] in found and data[other] not in found, (query, found)


@pytest.mark.parametrize(
    "params",
    [
        {"clinical-status": "inactive"},
        {"subject": "Patient/no-such-patient"},
        {"onset-date": "ge2030"},
        {"code": f"{SNOMED}|00000000"},
        {"code": "http://loinc.org|44054006"},
    ],
)
def test_condition_non_matching_values(http, base, data, params):
    found = _ids(http, base, "Condition", **params)
    assert not {data["c1"], data["c2"]} & found


def test_condition_in_the_patient_compartment(http, base, data):
    r = http.get(f"{base}/Patient/{data['p1']}/Condition", headers=headers(**STRICT))
    assert r.status_code == 200, r.text[:2000]
    assert [e["resource"]["id"] for e in r.json().get("entry", [])] == [data["c1"]]


def test_metadata_lists_condition_r4_parameters(http, base):
    r = http.get(f"{base}/metadata", headers={"Accept": FHIR_JSON})
    assert r.status_code == 200, r.text[:2000]
    by_type = {res["type"]: res for res in r.json()["rest"][0]["resource"]}
    assert set(EXTRA_TYPES) <= set(by_type)
    params = {p["name"]: p for p in by_type["Condition"]["searchParam"]}
    assert set(params) == CONDITION_PARAMS | COMMON
    assert params["clinical-status"]["type"] == "token"
    assert params["onset-date"]["type"] == "date"
    assert params["subject"]["type"] == "reference"
    assert params["code"]["definition"] == "http://hl7.org/fhir/SearchParameter/clinical-code"
    # The common ones as every default type has them.
    assert COMMON <= {p["name"] for p in by_type["Observation"]["searchParam"]}
    for t in EXTRA_TYPES:
        assert COMMON < {p["name"] for p in by_type[t]["searchParam"]}, t


def test_other_enabled_types_are_searchable(http, base, data):
    proc = create(http, base, {
        "resourceType": "Procedure", "status": "completed",
        "code": {"coding": [{"system": SNOMED, "code": "80146002"}]},
        "subject": {"reference": f"Patient/{data['p1']}"}, "performedDateTime": "2019-04-05",
    })["id"]
    imm = create(http, base, {
        "resourceType": "Immunization", "status": "completed",
        "vaccineCode": {"coding": [{"system": "http://hl7.org/fhir/sid/cvx", "code": "140"}]},
        "patient": {"reference": f"Patient/{data['p1']}"}, "occurrenceDateTime": "2020-10-01",
    })["id"]
    assert _ids(http, base, "Procedure", code=f"{SNOMED}|80146002", date="2019-04") == {proc}
    assert _ids(http, base, "Procedure", date="2020") == set()
    assert _ids(http, base, "Immunization", **{"vaccine-code": "140", "patient": data["p1"]}) == {imm}
    assert _ids(http, base, "Immunization", **{"vaccine-code": "141"}) == set()


def test_unindexable_spec_parameter_is_400_strict_and_ignored_lenient(http, base):
    """Location's "near" (type special) is known but not supported: never a 500."""
    q = {"near": "42.25|-83.69|10|km"}
    body = assert_outcome(http.get(f"{base}/Location", params=q, headers=headers(**STRICT)), 400, "not-supported")
    assert "not supported" in body["issue"][0]["diagnostics"]
    r = http.get(f"{base}/Location", params=q, headers=headers())
    assert r.status_code == 200, r.text[:2000]

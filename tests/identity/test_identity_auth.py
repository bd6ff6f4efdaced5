"""The identity operations under SMART enforcement (AUTH_REQUIRED, real tokens from the token
store, real HTTP), on both databases: $merge/$unmerge/$correct-nhs-number need unrestricted
update on Patient and on every affected type; a patient-scoped or filtered token cannot merge;
$match needs Patient search and sees only what the token may search."""

from __future__ import annotations

import pytest
import requests
from idhelp import (
    FHIR_JSON,
    HOSP_A,
    hdr,
    merge_body,
    nhs_number,
    observation,
    params,
    patient,
    ref_param,
    uid,
)


class Client:
    def __init__(self, base: str, token: str) -> None:
        self.base = base
        self.s = requests.Session()
        self.s.headers.update({"Accept": FHIR_JSON, "Authorization": f"Bearer {token}"})

    def post(self, path: str, body: dict, **h):
        return self.s.post(f"{self.base}/{path}", json=body, headers=hdr(**h))

    def get(self, path: str, **p):
        return self.s.get(f"{self.base}/{path}", params=p)


@pytest.fixture(scope="module")
def w(auth_server, issue_token) -> dict:
    base = auth_server.base
    admin = Client(base, issue_token("system/*.cruds", client_id="loader"))
    fam = "Auth" + uid()
    out: dict = {"base": base, "fam": fam}
    for key in ("a", "b"):
        r = admin.post("Patient", patient(nhs_number(), mrn=(HOSP_A, uid()), family=fam, given=key.upper() + "nna"))
        assert r.status_code == 201, r.text
        out[key] = r.json()["id"]
        r = admin.post("Observation", {**observation(f"Patient/{out[key]}"),
                                       "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/"
                                                                 "observation-category", "code": "laboratory"}]}]})
        assert r.status_code == 201, r.text
    return out


@pytest.fixture(scope="module")
def tok(w, issue_token):
    def make(scope: str, **kw) -> Client:
        return Client(w["base"], issue_token(scope, **kw))

    return make


@pytest.mark.parametrize("scope,kw,patient_update", [
    ("patient/*.cruds", {"patient": "a"}, False),  # patient-scoped: never
    ("system/Patient.cruds", {}, True),  # no update on the Observations that would move
    ("system/Patient.cruds system/Observation.cruds?category=laboratory", {}, True),  # filtered
    ("system/*.rs", {}, False),  # read only
    ("user/*.cruds", {"fhir_user": "Patient/a"}, False),  # a patient user acts in their compartment
])
def test_merge_refused_without_full_update(w, tok, scope, kw, patient_update):
    if "patient" in kw:
        kw = {"patient": w[kw["patient"]]}
    if kw.get("fhir_user") == "Patient/a":
        kw = {"fhir_user": f"Patient/{w['a']}"}
    c = tok(scope, **kw)
    r = c.post("Patient/$merge", merge_body(w["b"], w["a"]))
    assert r.status_code == 403, (scope, r.text)
    r = c.post("Patient/$merge", merge_body(w["b"], w["a"], preview=True))
    assert r.status_code == 403, (scope, r.text)
    if not patient_update:  # (with Patient update: 422, B is not merged)
        r = c.post("Patient/$unmerge", params(ref_param("source-patient", f"Patient/{w['b']}")))
        assert r.status_code == 403, (scope, r.text)
        body = params({"name": "nhs-number", "valueString": nhs_number()}, {"name": "reason", "valueString": "x"})
        assert c.post(f"Patient/{w['a']}/$correct-nhs-number", body).status_code == 403
    # nothing changed
    admin = tok("system/*.rs")
    assert admin.get(f"Patient/{w['b']}").json()["meta"]["versionId"] == "1"


def test_merge_and_unmerge_with_system_scopes_record_the_client(w, tok):
    c = tok("system/Patient.cruds system/Observation.cruds system/Provenance.rs", client_id="mpi-admin")
    r = c.post("Patient/$merge", merge_body(w["b"], w["a"]))
    assert r.status_code == 200, r.text
    prov = c.get("Provenance", target=f"Patient/{w['b']}").json()["entry"][0]["resource"]
    assert prov["agent"][0]["who"]["identifier"]["value"] == "mpi-admin"
    r = c.post("Patient/$unmerge", params(ref_param("source-patient", f"Patient/{w['b']}")))
    assert r.status_code == 200, r.text


def test_practitioner_user_may_merge_and_is_the_agent(w, tok):
    c = tok("user/*.cruds", fhir_user="Practitioner/p1", client_id="epr")
    r = c.post("Patient/$merge", merge_body(w["b"], w["a"], preview=True))
    assert r.status_code == 200, r.text


def test_match_needs_patient_search(w, tok):
    query = params({"name": "resource", "resource": patient(None, family=w["fam"], given="Anna", postcode=None)})
    assert tok("system/Observation.rs").post("Patient/$match", query).status_code == 403
    got = tok("system/Patient.rs").post("Patient/$match", query)
    assert got.status_code == 200
    assert {e["resource"]["id"] for e in got.json()["entry"]} == {w["a"], w["b"]}
    # a patient-scoped token only ever sees its own patient
    mine = tok("patient/Patient.rs", patient=w["a"]).post("Patient/$match", query)
    assert mine.status_code == 200
    assert {e["resource"]["id"] for e in mine.json().get("entry", [])} == {w["a"]}

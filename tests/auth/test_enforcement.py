"""Scope enforcement on every FHIR path, over real HTTP with real tokens from the token store.

Two patients, A and B, each with a lab and a vital-signs Observation and a DiagnosticReport; A's
report also (wrongly) lists B's lab result, and one Practitioner performed all the Observations:
those links are the routes by which a patient-scoped token could reach the other patient
(include, revinclude, chains, _has).  Every test runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import base64
import uuid

import orjson
import pytest
import requests

FHIR_JSON = "application/fhir+json"
CAT = "http://terminology.hl7.org/CodeSystem/observation-category"


def _uid() -> str:
    return uuid.uuid4().hex[:10]


class Client:
    """requests with one bearer token (or none)."""

    def __init__(self, base: str, token: str | None) -> None:
        self.base = base
        self.s = requests.Session()
        self.s.headers["Accept"] = FHIR_JSON
        if token:
            self.s.headers["Authorization"] = f"Bearer {token}"

    def url(self, path: str) -> str:
        return path if path.startswith("http") else f"{self.base}/{path}" if path else self.base

    def get(self, path: str, **params):
        return self.s.get(self.url(path), params=params or None)

    def post(self, path: str, body: dict, **headers):
        return self.s.post(self.url(path), data=orjson.dumps(body), headers={"Content-Type": FHIR_JSON, **headers})

    def put(self, body: dict, **headers):
        return self.s.put(self.url(f"{body['resourceType']}/{body['id']}"), data=orjson.dumps(body),
                          headers={"Content-Type": FHIR_JSON, **headers})

    def patch(self, path: str, ops: list):
        return self.s.patch(self.url(path), data=orjson.dumps(ops), headers={"Content-Type": "application/json-patch+json"})

    def delete(self, path: str):
        return self.s.delete(self.url(path))


def obs(oid: str, patient: str, category: str, code: str, performer: str) -> dict:
    return {
        "resourceType": "Observation", "id": oid, "status": "final",
        "category": [{"coding": [{"system": CAT, "code": category}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
        "subject": {"reference": f"Patient/{patient}"},
        "performer": [{"reference": f"Practitioner/{performer}"}],
        "valueQuantity": {"value": 1.5, "unit": "g/dL", "system": "http://unitsofmeasure.org", "code": "g/dL"},
    }


def new_obs(patient: str, category: str = "laboratory") -> dict:
    return {
        "resourceType": "Observation", "status": "final",
        "category": [{"coding": [{"system": CAT, "code": category}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": "718-7"}]},
        "subject": {"reference": f"Patient/{patient}"},
    }


@pytest.fixture(scope="module")
def w(auth_server, issue_token) -> dict:
    """The data set, written with a system token; returns ids and a token factory."""
    u = _uid()
    base = auth_server.base
    admin = Client(base, issue_token("system/*.cruds", client_id="loader"))
    ids = {"u": u, "d1": f"{u}-d1", "pa": f"{u}-pa", "pb": f"{u}-pb"}
    r = admin.put({"resourceType": "Practitioner", "id": ids["d1"], "name": [{"family": f"Doc{u}"}]})
    assert r.status_code == 201, r.text
    for key, family in (("pa", f"Alpha{u}"), ("pb", f"Beta{u}")):
        r = admin.put({"resourceType": "Patient", "id": ids[key], "name": [{"family": family}], "gender": "female"})
        assert r.status_code == 201, r.text
    for p in ("pa", "pb"):
        for cat, code in (("laboratory", "718-7"), ("vital-signs", "8867-4")):
            oid = f"{u}-{p}-{cat[:3]}"
            ids[f"{p}-{cat[:3]}"] = oid
            r = admin.put(obs(oid, ids[p], cat, code, ids["d1"]))
            assert r.status_code == 201, r.text
    for p, results in (("pa", ["pa-lab", "pb-lab"]), ("pb", ["pb-lab"])):
        rid = f"{u}-{p}-dr"
        ids[f"{p}-dr"] = rid
        r = admin.put({"resourceType": "DiagnosticReport", "id": rid, "status": "final",
                       "code": {"coding": [{"system": "http://loinc.org", "code": "58410-2"}]},
                       "subject": {"reference": f"Patient/{ids[p]}"},
                       "result": [{"reference": f"Observation/{ids[k]}"} for k in results]})
        assert r.status_code == 201, r.text
    # a second version of B's lab result, for history and vread
    body = obs(ids["pb-lab"], ids["pb"], "laboratory", "718-7", ids["d1"])
    body["valueQuantity"]["value"] = 2.5
    assert admin.put(body).status_code == 200
    ids["base"] = base
    return ids


@pytest.fixture(scope="module")
def tok(w, issue_token):
    def make(scope: str = "patient/*.*", **kw) -> Client:
        if "patient" not in kw and "fhir_user" not in kw and scope.startswith("patient/"):
            kw["patient"] = w["pa"]
        return Client(w["base"], issue_token(scope, **kw))

    return make


@pytest.fixture(scope="module")
def a(tok) -> Client:
    """Patient A's app: full patient scopes."""
    return tok("patient/*.cruds")


@pytest.fixture(scope="module")
def admin(tok) -> Client:
    return tok("system/*.cruds", client_id="loader")


def entries(r, mode: str | None = None) -> list[dict]:
    assert r.status_code == 200, r.text[:2000]
    out = r.json().get("entry", [])
    return [e for e in out if mode is None or e.get("search", {}).get("mode") == mode]


def refs(r, mode: str | None = None) -> set[str]:
    return {f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in entries(r, mode) if "resource" in e}


def b_refs(w) -> set[str]:
    """Everything that belongs to patient B."""
    return {f"Patient/{w['pb']}", f"Observation/{w['pb-lab']}", f"Observation/{w['pb-vit']}",
            f"DiagnosticReport/{w['pb-dr']}"}


def assert_outcome(r, status: int, code: str) -> dict:
    assert r.status_code == status, (r.status_code, r.text[:2000])
    assert r.headers["Content-Type"].startswith(FHIR_JSON)
    body = r.json()
    assert body["resourceType"] == "OperationOutcome"
    assert code in [i["code"] for i in body["issue"]], body
    return body


# ---- 401 -----------------------------------------------------------------------------------


def test_no_token_is_401_with_a_challenge(w) -> None:
    r = Client(w["base"], None).get(f"Observation/{w['pa-lab']}")
    assert_outcome(r, 401, "login")
    assert r.headers["WWW-Authenticate"].startswith('Bearer realm="')
    for path in ("Observation", "", "_history", f"Patient/{w['pa']}/*"):
        assert Client(w["base"], None).get(path).status_code == 401
    r = Client(w["base"], None).post("Observation", new_obs(w["pa"]))
    assert r.status_code == 401


@pytest.mark.parametrize("header", ["Bearer not-a-real-token", "Bearer ", "Basic dXNlcjpwYXNz", "Bearer a b"])
def test_bad_token_is_401_invalid(w, header) -> None:
    r = requests.get(f"{w['base']}/Observation", headers={"Authorization": header, "Accept": FHIR_JSON})
    assert_outcome(r, 401, "login")
    assert "error=" in r.headers["WWW-Authenticate"]


def test_unknown_token_names_invalid_token(w) -> None:
    r = Client(w["base"], "x" * 43).get("Observation")
    assert r.status_code == 401
    assert 'error="invalid_token"' in r.headers["WWW-Authenticate"]


def test_expired_token_is_401(w, issue_token) -> None:
    c = Client(w["base"], issue_token("system/*.rs", lifetime_s=-5))
    r = c.get("Observation")
    assert_outcome(r, 401, "login")
    assert 'error="invalid_token"' in r.headers["WWW-Authenticate"]


def test_revoked_token_stops_at_once(w, auth_app, issue_token) -> None:
    from app.auth.tokens import revoke_token

    raw = issue_token("system/*.rs")
    c = Client(w["base"], raw)
    assert c.get(f"Patient/{w['pa']}").status_code == 200
    revoke_token(auth_app.extensions["results_repo"].engine, raw)
    assert_outcome(c.get(f"Patient/{w['pa']}"), 401, "login")


def test_metadata_and_discovery_stay_open(w) -> None:
    r = Client(w["base"], None).get("metadata")
    assert r.status_code == 200 and r.json()["resourceType"] == "CapabilityStatement"
    r = requests.get(f"{w['base']}/.well-known/smart-configuration")
    assert r.status_code != 401


# ---- 403: scope letters ----------------------------------------------------------------------


@pytest.mark.parametrize(("scope", "method", "path"), [
    ("patient/Observation.r", "GET", "Observation"),  # search needs s
    ("patient/Observation.s", "GET", "Observation/{pa-lab}"),  # read needs r
    ("patient/Observation.s", "GET", "Observation/{pa-lab}/_history/1"),
    ("patient/Observation.rs", "GET", "DiagnosticReport"),  # another type
    ("patient/Observation.rs", "GET", "?_type=DiagnosticReport"),
    ("patient/Observation.rs", "POST", "Observation"),  # create needs c
    ("patient/Observation.rs", "DELETE", "Observation/{pa-vit}"),  # delete needs d
    ("patient/Observation.read", "PUT", "Observation/{pa-vit}"),  # update needs u
    ("user/*.read", "POST", "Observation"),
    ("system/Observation.rs", "GET", "_history"),
    ("system/*.rs", "DELETE", "Observation/{pa-vit}"),
])
def test_missing_scope_letter_is_403(w, tok, scope, method, path) -> None:
    c = tok(scope, fhir_user="Practitioner/" + w["d1"]) if scope.startswith("user/") else tok(scope)
    path = path.format(**w)
    if method == "GET":
        r = c.get(path)
    elif method == "POST":
        r = c.post(path, new_obs(w["pa"]))
    elif method == "PUT":
        r = c.put(obs(w["pa-vit"], w["pa"], "vital-signs", "8867-4", w["d1"]))
    else:
        r = c.delete(path)
    assert_outcome(r, 403, "forbidden")


def test_patient_scope_without_a_patient_grants_nothing(w, issue_token) -> None:
    c = Client(w["base"], issue_token("patient/*.rs"))  # no patient, no fhirUser
    assert c.get(f"Observation/{w['pa-lab']}").status_code in (403, 404)
    assert c.get("Observation").status_code == 403


# ---- read, vread, history ---------------------------------------------------------------------


def test_read_own_and_not_others(w, a) -> None:
    assert a.get(f"Observation/{w['pa-lab']}").status_code == 200
    assert a.get(f"Patient/{w['pa']}").status_code == 200
    for ref in b_refs(w):
        assert_outcome(a.get(ref), 404, "not-found")


def test_read_directory_data_outside_the_compartment(w, a) -> None:
    assert a.get(f"Practitioner/{w['d1']}").status_code == 200


def test_vread_of_another_patients_resource_is_404(w, a) -> None:
    for v in ("1", "2"):
        assert_outcome(a.get(f"Observation/{w['pb-lab']}/_history/{v}"), 404, "not-found")
    assert a.get(f"Observation/{w['pa-lab']}/_history/1").status_code == 200


def test_instance_history_of_another_patient_is_404(w, a) -> None:
    assert_outcome(a.get(f"Observation/{w['pb-lab']}/_history"), 404, "not-found")
    r = a.get(f"Observation/{w['pa-lab']}/_history")
    assert r.status_code == 200 and r.json()["type"] == "history"


def test_type_and_system_history_refused_for_patient_tokens(w, a, admin) -> None:
    assert_outcome(a.get("Observation/_history"), 403, "forbidden")
    assert_outcome(a.get("_history"), 403, "forbidden")
    assert admin.get("Observation/_history").status_code == 200
    assert admin.get("_history").status_code == 200


def test_history_of_a_resource_moved_between_patients(w, a, admin) -> None:
    """A result filed against B, then corrected to A: A sees it now, but not the version that
    was in B's record."""
    oid = f"{w['u']}-moved"
    assert admin.put(obs(oid, w["pb"], "laboratory", "718-7", w["d1"])).status_code == 201
    assert admin.put(obs(oid, w["pa"], "laboratory", "718-7", w["d1"])).status_code == 200
    assert a.get(f"Observation/{oid}").status_code == 200
    assert a.get(f"Observation/{oid}/_history/2").status_code == 200
    assert_outcome(a.get(f"Observation/{oid}/_history/1"), 404, "not-found")
    assert_outcome(a.get(f"Observation/{oid}/_history"), 403, "forbidden")


# ---- search ---------------------------------------------------------------------------------


def in_a(w, res: dict) -> bool:
    pa = f"Patient/{w['pa']}"
    if res["resourceType"] == "Patient":
        return res["id"] == w["pa"]
    if res["resourceType"] == "Practitioner":
        return True
    return pa in orjson.dumps(res).decode()


def test_type_search_sees_only_the_compartment(w, a, admin) -> None:
    got = refs(a.get("Observation", _count="100"))
    assert f"Observation/{w['pa-lab']}" in got and not got & b_refs(w)
    assert refs(a.get("Patient")) == {f"Patient/{w['pa']}"}
    everyone = refs(admin.get("Observation", _count="1000"))
    assert {f"Observation/{w['pa-lab']}", f"Observation/{w['pb-lab']}"} <= everyone


def test_patients_tokens_sharing_a_search_shape_see_their_own(w, a, tok) -> None:
    """The page statement of a search shape is built once and reused with each request's values
    (app.search.template), the token's patient among them: A, then B, then A again."""
    b = tok("patient/*.cruds", patient=w["pb"])
    a_obs = {f"Observation/{w['pa-lab']}"}
    b_obs = {f"Observation/{w['pb-lab']}", f"Observation/{w['pb-vit']}"}
    for client, own, other in ((a, a_obs, b_obs), (b, b_obs, a_obs), (a, a_obs, b_obs)):
        for params in ({"_count": "100"}, {"_sort": "-date", "_count": "100"}, {"code": "http://loinc.org|718-7"}):
            got = refs(client.get("Observation", **params))
            assert not got & other, params
            if "code" not in params:
                assert own <= got, params


def test_search_by_the_other_patient_finds_nothing(w, a) -> None:
    assert refs(a.get("Observation", subject=f"Patient/{w['pb']}")) == set()
    assert refs(a.get("Observation", _id=w["pb-lab"])) == set()
    r = a.get("Observation", subject=f"Patient/{w['pb']}", _total="accurate")
    assert r.json()["total"] == 0
    r = a.get("Observation", subject=f"Patient/{w['pb']}", _summary="count")
    assert r.json()["total"] == 0


def test_system_search(w, a) -> None:
    r = a.get("", _type="Observation,DiagnosticReport,Patient", _count="200")
    got = refs(r)
    assert f"DiagnosticReport/{w['pa-dr']}" in got and not got & b_refs(w)
    got = refs(a.get("", _count="500"))  # no _type: every type the token may search
    assert f"Patient/{w['pa']}" in got and not got & b_refs(w)


def test_compartment_search_of_another_patient_is_empty(w, a) -> None:
    assert refs(a.get(f"Patient/{w['pb']}/Observation")) == set()
    assert refs(a.get(f"Patient/{w['pb']}/*", _count="200")) == set()
    got = refs(a.get(f"Patient/{w['pa']}/*", _count="200"))
    assert f"Observation/{w['pa-lab']}" in got and not got & b_refs(w)


def test_include_does_not_leak(w, a) -> None:
    r = a.get("DiagnosticReport", _include="DiagnosticReport:result")
    assert f"Observation/{w['pa-lab']}" in refs(r, "include")
    assert not refs(r) & b_refs(w)
    for inc in ("DiagnosticReport:*", "*"):
        r = a.get("DiagnosticReport", _include=inc)
        assert not refs(r) & b_refs(w), inc
    r = a.get("DiagnosticReport", **{"_include:iterate": "DiagnosticReport:result"})
    assert not refs(r) & b_refs(w)


def test_revinclude_does_not_leak(w, a, admin) -> None:
    params = {"_id": w["d1"], "_revinclude": "Observation:performer"}
    got = refs(a.get("Practitioner", **params), "include")
    assert f"Observation/{w['pa-lab']}" in got and not got & b_refs(w)
    assert f"Observation/{w['pb-lab']}" in refs(admin.get("Practitioner", **params), "include")
    r = a.get("Practitioner", _id=w["d1"], _revinclude="*")
    assert not refs(r) & b_refs(w)
    r = a.get("Practitioner", _id=w["d1"], _revinclude="Observation:performer",
              **{"_include:iterate": "Observation:subject", "_revinclude:iterate": "DiagnosticReport:result"})
    got = refs(r)
    assert f"Patient/{w['pa']}" in got and not got & b_refs(w)
    r = a.get("Patient", _revinclude="DiagnosticReport:subject")
    assert not refs(r) & b_refs(w)


def test_chain_cannot_reach_another_patient(w, a) -> None:
    assert refs(a.get("Observation", **{"subject.name": f"Beta{w['u']}"})) == set()
    assert refs(a.get("Observation", **{"subject:Patient.name": f"Beta{w['u']}"})) == set()
    assert f"Observation/{w['pa-lab']}" in refs(a.get("Observation", **{"subject.name": f"Alpha{w['u']}"}))
    # a chain through directory data still only returns the compartment's resources
    got = refs(a.get("Observation", **{"performer:Practitioner.name": f"Doc{w['u']}"}))
    assert got and not got & b_refs(w)


def test_has_cannot_probe_another_patients_data(w, a, admin) -> None:
    """Practitioner is readable, but whether B has an Observation performed by it is B's data."""
    q = {"_has:Observation:performer:subject": f"Patient/{w['pb']}", "_total": "accurate"}
    assert refs(admin.get("Practitioner", **q)) == {f"Practitioner/{w['d1']}"}
    r = a.get("Practitioner", **q)
    assert refs(r) == set() and r.json()["total"] == 0
    r = a.get("Patient", **{"_has:Observation:subject:code": "718-7"})
    assert refs(r) == {f"Patient/{w['pa']}"}


def test_paging_link_is_bound_to_its_token(w, a, tok) -> None:
    r = a.get("Observation", _count="1")
    nxt = [link["url"] for link in r.json()["link"] if link["relation"] == "next"]
    assert nxt
    assert a.get(nxt[0]).status_code == 200
    other = tok("patient/*.cruds")  # same patient, another token
    r = other.get(nxt[0])
    assert r.status_code in (400, 403), r.text
    assert "resource" not in r.text or r.json()["resourceType"] == "OperationOutcome"


def test_granular_scope_hides_other_categories(w, tok) -> None:
    c = tok("patient/Observation.rs?category=laboratory")
    got = refs(c.get("Observation", _count="100"))
    assert f"Observation/{w['pa-lab']}" in got
    assert f"Observation/{w['pa-vit']}" not in got
    assert refs(c.get("Observation", category="vital-signs")) == set()
    assert c.get(f"Observation/{w['pa-lab']}").status_code == 200
    assert_outcome(c.get(f"Observation/{w['pa-vit']}"), 404, "not-found")
    r = c.get("Observation", _include="Observation:subject")  # no Patient scope: not included
    assert not [e for e in entries(r, "include")]


def test_granular_scope_applies_to_includes(w, tok) -> None:
    c = tok("patient/Observation.rs?category=laboratory patient/DiagnosticReport.rs")
    r = c.get("DiagnosticReport", _revinclude="Observation:subject", _include="DiagnosticReport:result")
    got = refs(r, "include")
    assert f"Observation/{w['pa-lab']}" in got and f"Observation/{w['pa-vit']}" not in got


def test_system_and_practitioner_tokens_see_every_patient(w, tok) -> None:
    for c in (tok("system/*.rs"), tok("user/*.read", fhir_user=f"Practitioner/{w['d1']}")):
        got = refs(c.get("Observation", _count="1000"))
        assert {f"Observation/{w['pa-vit']}", f"Observation/{w['pb-vit']}"} <= got
        assert c.get(f"Observation/{w['pb-lab']}/_history/1").status_code == 200


def test_patient_fhir_user_with_user_scopes_is_its_own_record(w, tok) -> None:
    c = tok("user/*.rs", fhir_user=f"Patient/{w['pa']}")
    got = refs(c.get("Observation", _count="100"))
    assert f"Observation/{w['pa-lab']}" in got and not got & b_refs(w)


# ---- writes -----------------------------------------------------------------------------------


def test_create_in_own_compartment_only(w, a) -> None:
    assert a.post("Observation", new_obs(w["pa"])).status_code == 201
    assert_outcome(a.post("Observation", new_obs(w["pb"])), 403, "forbidden")
    assert_outcome(a.post("Patient", {"resourceType": "Patient", "gender": "male"}), 403, "forbidden")
    no_subject = {k: v for k, v in new_obs(w["pa"]).items() if k != "subject"}
    assert_outcome(a.post("Observation", no_subject), 403, "forbidden")


def test_update_patch_delete_of_another_patients_resource_are_refused(w, a, admin) -> None:
    body = obs(w["pb-vit"], w["pb"], "vital-signs", "8867-4", w["d1"])
    body["status"] = "amended"
    assert_outcome(a.put(body), 403, "forbidden")
    assert_outcome(a.patch(f"Observation/{w['pb-vit']}", [{"op": "replace", "path": "/status", "value": "amended"}]),
                   403, "forbidden")
    assert_outcome(a.delete(f"Observation/{w['pb-vit']}"), 403, "forbidden")
    assert admin.get(f"Observation/{w['pb-vit']}").json()["status"] == "final"


def test_cannot_move_own_resource_into_another_record(w, a, admin) -> None:
    r = a.post("Observation", new_obs(w["pa"]))
    oid = r.headers["Location"].split("/Observation/")[1].split("/")[0]
    moved = {**new_obs(w["pb"]), "id": oid}
    assert_outcome(a.put(moved), 403, "forbidden")
    assert_outcome(a.patch(f"Observation/{oid}", [{"op": "replace", "path": "/subject/reference",
                                                   "value": f"Patient/{w['pb']}"}]), 403, "forbidden")
    assert admin.get(f"Observation/{oid}").json()["subject"]["reference"] == f"Patient/{w['pa']}"
    assert a.delete(f"Observation/{oid}").status_code == 204


def test_patient_writes_only_its_own_patient(w, a) -> None:
    me = a.get(f"Patient/{w['pa']}").json()
    me["gender"] = "other"
    for k in ("meta", "text"):
        me.pop(k, None)
    assert a.put(me).status_code == 200
    assert_outcome(a.put({"resourceType": "Patient", "id": w["pb"], "gender": "male"}), 403, "forbidden")
    assert_outcome(a.put({"resourceType": "Patient", "id": f"{w['u']}-new", "gender": "male"}), 403, "forbidden")


def test_conditional_operations_only_see_the_compartment(w, a, admin) -> None:
    # conditional delete matching only B's resource: nothing matches for A, nothing is deleted
    r = a.delete(f"Observation?_id={w['pb-vit']}")
    assert r.status_code == 204
    assert admin.get(f"Observation/{w['pb-vit']}").status_code == 200
    # If-None-Exist naming B's resource does not reveal it: A's create goes ahead
    r = a.post("Observation", new_obs(w["pa"]), **{"If-None-Exist": f"_id={w['pb-lab']}"})
    assert r.status_code == 201
    assert w["pb-lab"] not in r.headers["Location"]
    # conditional update aimed at B's resource: no match for A -> creates in A's record, B untouched
    body = {**new_obs(w["pa"]), "status": "amended"}
    r = a.s.put(a.url(f"Observation?_id={w['pb-lab']}"), data=orjson.dumps(body), headers={"Content-Type": FHIR_JSON})
    assert r.status_code == 201, r.text
    assert admin.get(f"Observation/{w['pb-lab']}").json()["status"] == "final"


def test_a_create_only_sender_whose_if_none_exist_matches_is_not_shown_the_match(w, tok, admin) -> None:
    """A lab system may create results but not read them: its duplicate-avoiding create is
    told which resource matched (Location, ETag) but not given its content, plain or in a
    transaction with return=representation."""
    sender = tok("system/Observation.c", client_id="lab-sender")
    criteria = f"_id={w['pb-lab']}"
    for prefer in (None, "return=representation"):
        headers = {"If-None-Exist": criteria, **({"Prefer": prefer} if prefer else {})}
        r = sender.post("Observation", new_obs(w["pb"]), **headers)
        assert r.status_code == 200, r.text
        assert f"/Observation/{w['pb-lab']}/_history/" in r.headers["Location"]
        assert r.headers["ETag"]
        assert b"valueQuantity" not in r.content and b'"Observation"' not in r.content
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:0b3a1f56-8f59-4e4c-9d3e-1d0c5d6c9a11", "resource": new_obs(w["pb"]),
         "request": {"method": "POST", "url": "Observation", "ifNoneExist": criteria}}]}
    r = sender.post("", bundle, Prefer="return=representation")
    assert r.status_code == 200, r.text
    entry = r.json()["entry"][0]
    assert entry["response"]["status"].startswith("200")
    assert w["pb-lab"] in entry["response"]["location"]
    assert "resource" not in entry
    # a sender that may read gets the match, as before
    r = admin.post("Observation", new_obs(w["pb"]), **{"If-None-Exist": criteria})
    assert r.status_code == 200 and r.json()["id"] == w["pb-lab"]


# ---- batch and transaction --------------------------------------------------------------------


def test_batch_entries_are_checked_one_by_one(w, a) -> None:
    bundle = {"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "GET", "url": f"Observation/{w['pa-lab']}"}},
        {"request": {"method": "GET", "url": f"Observation/{w['pb-lab']}"}},
        {"request": {"method": "GET", "url": f"Observation?subject=Patient/{w['pb']}"}},
        {"request": {"method": "POST", "url": "Observation"}, "resource": new_obs(w["pa"])},
        {"request": {"method": "POST", "url": "Observation"}, "resource": new_obs(w["pb"])},
        {"request": {"method": "DELETE", "url": f"Observation/{w['pb-vit']}"}},
        {"request": {"method": "GET", "url": "Observation/_history"}},
    ]}
    r = a.post("", bundle)
    assert r.status_code == 200, r.text
    got = r.json()["entry"]
    statuses = [e["response"]["status"].split()[0] for e in got]
    assert statuses == ["200", "404", "200", "201", "403", "403", "403"]
    assert got[2]["resource"].get("entry", []) == []
    assert "Beta" not in r.text


def test_transaction_with_one_forbidden_entry_writes_nothing(w, a, admin) -> None:
    marker = f"tx{_uid()}"
    mine = {**new_obs(w["pa"]), "identifier": [{"system": "urn:test", "value": marker}]}
    theirs = {**new_obs(w["pb"]), "identifier": [{"system": "urn:test", "value": marker}]}
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": f"urn:uuid:{uuid.uuid4()}", "request": {"method": "POST", "url": "Observation"}, "resource": mine},
        {"fullUrl": f"urn:uuid:{uuid.uuid4()}", "request": {"method": "POST", "url": "Observation"}, "resource": theirs},
    ]}
    assert_outcome(a.post("", bundle), 403, "forbidden")
    assert refs(admin.get("Observation", identifier=f"urn:test|{marker}")) == set()
    for tx_entry in (
        {"request": {"method": "GET", "url": f"Observation/{w['pb-lab']}"}},
        {"request": {"method": "DELETE", "url": f"Observation/{w['pb-vit']}"}},
        {"request": {"method": "PATCH", "url": f"Observation/{w['pb-vit']}"},
         "resource": {"resourceType": "Binary", "contentType": "application/json-patch+json",
                      "data": base64.b64encode(b'[{"op":"replace","path":"/status","value":"amended"}]').decode()}},
    ):
        bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
            {"fullUrl": f"urn:uuid:{uuid.uuid4()}", "request": {"method": "POST", "url": "Observation"}, "resource": mine},
            tx_entry]}
        r = a.post("", bundle)
        assert r.status_code in (403, 404), r.text
        assert refs(admin.get("Observation", identifier=f"urn:test|{marker}")) == set()
    assert admin.get(f"Observation/{w['pb-vit']}").json()["status"] == "final"
    bundle["entry"] = bundle["entry"][:1]
    assert a.post("", bundle).status_code == 200
    assert len(refs(admin.get("Observation", identifier=f"urn:test|{marker}"))) == 1


def test_transaction_conditional_reference_cannot_resolve_to_another_patient(w, a) -> None:
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": f"urn:uuid:{uuid.uuid4()}", "request": {"method": "POST", "url": "Observation"},
         "resource": {**new_obs(w["pa"]), "subject": {"reference": f"Patient?_id={w['pb']}"}}}]}
    r = a.post("", bundle)
    assert r.status_code in (403, 412), r.text


def test_conditional_reference_needs_read_or_search_on_its_type(w, tok) -> None:
    def tx(client: Client):
        return client.post("", {"resourceType": "Bundle", "type": "transaction", "entry": [
            {"fullUrl": f"urn:uuid:{uuid.uuid4()}", "request": {"method": "POST", "url": "Observation"},
             "resource": {**new_obs(w["pa"]), "subject": {"reference": f"Patient?_id={w['pa']}"}}}]})

    assert_outcome(tx(tok("system/Observation.c")), 403, "forbidden")
    r = tx(tok("system/Observation.c system/Patient.s"))
    assert r.status_code == 200, r.text

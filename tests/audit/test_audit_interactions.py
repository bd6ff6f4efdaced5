"""Every interaction leaves the right AuditEvent (BALP shapes): codes, outcome, agents, patients,
request id; refusals (401/403/404) are recorded; a failed transaction leaves neither data nor a
success record for its entries.  Real HTTP, real tokens, SQLite and PostgreSQL."""

from __future__ import annotations

import base64
from urllib.parse import unquote

import orjson
import pytest
import requests
from audithelp import (
    AUDITOR,
    agent,
    call,
    client_of,
    detail,
    events,
    patients,
    query_of,
    rid,
    subtype,
    target,
    user_of,
)


@pytest.fixture(scope="module")
def t(token) -> dict:
    return {
        "writer": token("system/*.cruds", client_id="epr-1"),
        "doctor": token("user/*.rs", fhir_user="Practitioner/doc1", client_id="clinic-app"),
        "auditor": token(AUDITOR, client_id="privacy-office"),
        "narrow": token("system/Practitioner.rs", client_id="directory"),
    }


@pytest.fixture(scope="module")
def data(live, t) -> dict:
    b = live.base
    out = {}
    for name in ("a", "b"):
        r = call("POST", f"{b}/Patient", t["writer"], {"resourceType": "Patient", "name": [{"family": f"Audit{name}"}]})
        assert r.status_code == 201, r.text
        out[name] = r.json()["id"]
        r = call("POST", f"{b}/Observation", t["writer"], {
            "resourceType": "Observation", "status": "final", "code": {"coding": [{"system": "http://loinc.org",
                                                                                  "code": "718-7"}]},
            "subject": {"reference": f"Patient/{out[name]}"}})
        assert r.status_code == 201, r.text
        out[f"obs_{name}"] = r.json()["id"]
    return out


def one(live, t, request_id: str) -> dict:
    evs = events(live.base, t["auditor"], request_id)
    assert len(evs) == 1, [(subtype(e), e["outcome"]) for e in evs]
    return evs[0]


def test_create_is_recorded_with_its_patient_and_the_request_id(live, t, data):
    req = rid()
    r = call("POST", f"{live.base}/Observation", t["writer"], {
        "resourceType": "Observation", "status": "final", "code": {"text": "x"},
        "subject": {"reference": f"Patient/{data['a']}"}}, request_id=req)
    assert r.status_code == 201 and r.headers["X-Request-Id"] == req
    ev = one(live, t, req)
    assert ev["type"]["code"] == "rest" and subtype(ev) == "create" and ev["action"] == "C"
    assert ev["outcome"] == "0" and ev["meta"]["profile"][0].endswith("IHE.BasicAudit.PatientCreate")
    assert patients(ev) == {data["a"]}
    assert target(ev) == f"Observation/{r.json()['id']}/_history/1"
    assert client_of(ev) == "epr-1"
    user = agent(ev, "UserOauthAgent")
    assert user["requestor"] is True and user["policy"] and user["role"][0]["text"] == "system/*.cruds"
    assert agent(ev, "110153")["network"]["address"] == "127.0.0.1"
    assert agent(ev, "110152")["who"]["display"] == live.base


def test_read_vread_and_history(live, t, data):
    for path, sub in ((f"Observation/{data['obs_a']}", "read"),
                      (f"Observation/{data['obs_a']}/_history/1", "vread"),
                      (f"Observation/{data['obs_a']}/_history", "history-instance"),
                      (f"Patient/{data['b']}", "read")):
        req = rid()
        r = call("GET", f"{live.base}/{path}", t["doctor"], request_id=req)
        assert r.status_code == 200, r.text
        ev = one(live, t, req)
        assert subtype(ev) == sub and ev["action"] == "R" and ev["outcome"] == "0"
        assert user_of(ev) == "Practitioner/doc1" and client_of(ev) == "clinic-app"
        assert patients(ev) == ({data["b"]} if path.startswith("Patient") else {data["a"]})
        if sub != "history-instance":
            assert target(ev) == path
            assert ev["meta"]["profile"][0].endswith("IHE.BasicAudit.PatientRead")


def test_search_records_the_query_and_every_patient_returned(live, t, data):
    req = rid()
    q = "code=http://loinc.org|718-7&_count=50"
    r = call("GET", f"{live.base}/Observation?{q}", t["doctor"], request_id=req)
    assert r.status_code == 200 and len(r.json()["entry"]) >= 2
    ev = one(live, t, req)
    assert subtype(ev) == "search-type" and ev["action"] == "E"
    assert unquote(query_of(ev)) == q  # entity[query].query: base64 of the query as received
    assert {data["a"], data["b"]} <= patients(ev)
    assert ev["meta"]["profile"][0].endswith("IHE.BasicAudit.Query")  # several patients: one event, all of them


def test_search_for_one_patient_uses_the_patient_query_profile(live, t, data):
    req = rid()
    r = call("POST", f"{live.base}/Observation/_search", t["doctor"], request_id=req,
             data=f"subject=Patient/{data['b']}", headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 200, r.text
    ev = one(live, t, req)
    assert patients(ev) == {data["b"]} and query_of(ev) == f"subject=Patient%2F{data['b']}"
    assert ev["meta"]["profile"][0].endswith("IHE.BasicAudit.PatientQuery")


def test_update_patch_delete(live, t, data):
    b = live.base
    r = call("POST", f"{b}/Observation", t["writer"], {
        "resourceType": "Observation", "status": "preliminary", "code": {"text": "y"},
        "subject": {"reference": f"Patient/{data['b']}"}})
    oid = r.json()["id"]
    body = {**r.json(), "status": "final"}
    req = rid()
    assert call("PUT", f"{b}/Observation/{oid}", t["writer"], body, request_id=req).status_code == 200
    ev = one(live, t, req)
    assert (subtype(ev), ev["action"], target(ev), patients(ev)) == ("update", "U", f"Observation/{oid}/_history/2", {data["b"]})

    req = rid()
    patch = [{"op": "replace", "path": "/status", "value": "amended"}]
    r = requests.patch(f"{b}/Observation/{oid}", data=orjson.dumps(patch), headers={
        "Authorization": f"Bearer {t['writer']}", "Content-Type": "application/json-patch+json", "X-Request-Id": req})
    assert r.status_code == 200, r.text
    ev = one(live, t, req)
    assert (subtype(ev), ev["action"], target(ev)) == ("patch", "U", f"Observation/{oid}/_history/3")

    req = rid()
    assert call("DELETE", f"{b}/Observation/{oid}", t["writer"], request_id=req).status_code == 204
    ev = one(live, t, req)
    assert (subtype(ev), ev["action"], ev["outcome"]) == ("delete", "D", "0")
    assert target(ev) == f"Observation/{oid}/_history/4"
    assert patients(ev) == {data["b"]}  # from the version the delete replaced
    assert ev["meta"]["profile"][0].endswith("IHE.BasicAudit.PatientDelete")


def test_refusals_are_recorded(live, t, data):
    b = live.base
    req = rid()  # no token: 401
    r = call("GET", f"{b}/Patient/{data['a']}", None, request_id=req)
    assert r.status_code == 401 and r.headers["X-Request-Id"] == req
    ev = one(live, t, req)
    assert (subtype(ev), ev["outcome"]) == ("read", "8") and ev["outcomeDesc"].startswith("HTTP 401")
    assert agent(ev, "UserOauthAgent") is None and client_of(ev) is None
    assert patients(ev) == {data["a"]}  # the patient the refused request asked for

    req = rid()  # a token without the scope: 403
    r = call("GET", f"{b}/Observation?subject=Patient/{data['b']}", t["narrow"], request_id=req)
    assert r.status_code == 403
    ev = one(live, t, req)
    assert (subtype(ev), ev["outcome"], client_of(ev)) == ("search-type", "8", "directory")
    assert "forbidden" in ev["outcomeDesc"] and patients(ev) == {data["b"]}

    req = rid()  # unknown resource: 404, a minor failure
    r = call("GET", f"{b}/Observation/no-such-thing", t["doctor"], request_id=req)
    assert r.status_code == 404
    ev = one(live, t, req)
    assert (subtype(ev), ev["outcome"]) == ("read", "4") and not patients(ev)

    req = rid()  # an invalid write: no change, a failure record
    r = call("POST", f"{b}/Observation", t["writer"], {"resourceType": "Observation", "status": "nonsense"},
             request_id=req)
    assert r.status_code == 400
    ev = one(live, t, req)
    assert (subtype(ev), ev["outcome"]) == ("create", "4") and target(ev) is None


def test_batch_entries_are_recorded_one_by_one(live, t, data):
    req = rid()
    bundle = {"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "GET", "url": f"Patient/{data['a']}"}},
        {"request": {"method": "POST", "url": "Observation"}, "resource": {
            "resourceType": "Observation", "status": "final", "code": {"text": "z"},
            "subject": {"reference": f"Patient/{data['b']}"}}},
        {"request": {"method": "GET", "url": "Observation/missing"}},
    ]}
    r = call("POST", live.base, t["writer"], bundle, request_id=req)
    assert r.status_code == 200, r.text
    evs = {(subtype(e), detail(e).get("entry")): e for e in events(live.base, t["auditor"], req)}
    assert set(evs) == {("read", "0"), ("create", "1"), ("read", "2"), ("batch", None)}
    assert patients(evs[("read", "0")]) == {data["a"]} and evs[("read", "0")]["outcome"] == "0"
    assert patients(evs[("create", "1")]) == {data["b"]} and evs[("create", "1")]["outcome"] == "0"
    assert evs[("read", "2")]["outcome"] == "4"


def _count(live, t, family: str) -> int:
    r = call("GET", f"{live.base}/Patient?family={family}&_total=accurate", t["doctor"])
    return r.json()["total"]


def test_transaction_success_and_failure(live, t, data):
    b = live.base
    req = rid()
    ok = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:11111111-1111-1111-1111-111111111111", "request": {"method": "POST", "url": "Patient"},
         "resource": {"resourceType": "Patient", "name": [{"family": "Txok"}]}},
        {"request": {"method": "POST", "url": "Observation"}, "resource": {
            "resourceType": "Observation", "status": "final", "code": {"text": "t"},
            "subject": {"reference": "urn:uuid:11111111-1111-1111-1111-111111111111"}}},
        {"request": {"method": "GET", "url": f"Patient/{data['b']}"}},
    ]}
    r = call("POST", b, t["writer"], ok, request_id=req)
    assert r.status_code == 200, r.text
    new_pid = r.json()["entry"][0]["response"]["location"].split("/")[1]
    evs = {(subtype(e), detail(e).get("entry")): e for e in events(b, t["auditor"], req)}
    assert set(evs) == {("create", "0"), ("create", "1"), ("read", "2"), ("transaction", None)}
    assert patients(evs[("create", "1")]) == {new_pid} and patients(evs[("read", "2")]) == {data["b"]}

    req = rid()
    bad = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"request": {"method": "POST", "url": "Patient"},
         "resource": {"resourceType": "Patient", "name": [{"family": "Txfail"}]}},
        {"request": {"method": "GET", "url": f"Patient/{data['a']}"}},
        {"request": {"method": "POST", "url": "Observation"}, "resource": {
            "resourceType": "Observation", "status": "final", "code": {"text": "t"},
            "subject": {"reference": "Patient/does-not-exist"}}},
    ]}
    r = call("POST", b, t["writer"], bad, request_id=req)
    assert r.status_code == 422, r.text
    assert _count(live, t, "Txfail") == 0  # no data
    evs = events(b, t["auditor"], req)
    # only the transaction's own failure: no create or read record for its entries
    assert [(subtype(e), e["outcome"]) for e in evs] == [("transaction", "4")]
    assert "business-rule" in evs[0]["outcomeDesc"]


def test_token_issue_and_refusal(live, t, audit_app):
    from smarthelp import assertion, backend_form, jwks_of, rsa_key

    from app.auth.clients import add_client

    key = rsa_key("audit-1")
    add_client(audit_app.extensions["results_repo"].engine, client_id="audit-backend", kind="backend",
               scope="system/*.rs", jwks=jwks_of(key))
    url = live.url + "/auth/token"
    req = rid()
    r = requests.post(url, data=backend_form(assertion(key, "RS384", "audit-backend", url), "system/Observation.rs"),
                      headers={"X-Request-Id": req})
    assert r.status_code == 200, r.text
    assert r.headers["X-Request-Id"] == req
    ev = one(live, t, req)
    assert (ev["type"]["code"], subtype(ev), ev["outcome"]) == ("110114", "ITI-71", "0")
    assert client_of(ev) == "audit-backend" and target(ev).startswith("token/")
    q = query_of(ev)
    assert "grant_type=client_credentials" in q and "client_assertion=" not in q  # never the assertion
    assert r.json()["access_token"] not in orjson.dumps(ev).decode()

    req = rid()  # signed with another key: refused
    r = requests.post(url, data=backend_form(assertion(rsa_key("audit-1"), "RS384", "audit-backend", url)),
                      headers={"X-Request-Id": req})
    assert r.status_code in (400, 401)
    ev = one(live, t, req)
    assert subtype(ev) == "ITI-71" and ev["outcome"] in ("4", "8") and client_of(ev) == "audit-backend"
    assert "invalid_client" in ev["outcomeDesc"] and target(ev) is None


def test_break_glass_is_carried_as_purpose_of_use(live, t, data):
    req = rid()
    r = call("GET", f"{live.base}/Patient/{data['a']}", t["doctor"], request_id=req,
             headers={"X-Test-Break-Glass": "1"})
    assert r.status_code == 200
    ev = one(live, t, req)
    btg = {"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "BTG"}
    assert ev["purposeOfEvent"][0]["coding"] == [btg]
    assert agent(ev, "UserOauthAgent")["purposeOfUse"][0]["coding"] == [btg]


def test_metadata_and_discovery_are_not_recorded_but_carry_a_request_id(live, t):
    for path in ("/fhir/metadata", "/fhir/.well-known/smart-configuration"):
        req = rid()
        r = requests.get(live.url + path, headers={"X-Request-Id": req})
        assert r.status_code == 200 and r.headers["X-Request-Id"] == req
        assert events(live.base, t["auditor"], req) == []


def test_request_id_is_generated_when_missing_or_unsafe(live, t, data):
    r = call("GET", f"{live.base}/Patient/{data['a']}", t["doctor"])
    generated = r.headers["X-Request-Id"]
    assert len(generated) == 32
    assert len(events(live.base, t["auditor"], generated)) == 1
    for bad in ("has space", "x" * 65, "a;b", "<script>"):
        r = call("GET", f"{live.base}/Patient/{data['a']}", t["doctor"], headers={"X-Request-Id": bad})
        assert r.headers["X-Request-Id"] != bad and len(r.headers["X-Request-Id"]) == 32


def test_export_kick_off_and_download(live, t, data, audit_app, token):
    from app.bulk.worker import Worker

    exporter = token("system/Observation.rs system/Patient.rs", client_id="analyst-1")
    req = rid()
    r = call("GET", f"{live.base}/$export?_type=Observation", exporter, request_id=req,
             headers={"Prefer": "respond-async"})
    assert r.status_code == 202, r.text
    status_url = r.headers["Content-Location"]
    ev = one(live, t, req)
    assert (ev["type"]["code"], subtype(ev), ev["outcome"]) == ("110106", "export", "0")
    assert query_of(ev) == "_type=Observation" and client_of(ev) == "analyst-1"
    Worker(audit_app).run_pending()
    r = call("GET", status_url, exporter)
    assert r.status_code == 200, r.text
    file_url = r.json()["output"][0]["url"]
    req = rid()
    r = requests.get(file_url, headers={"Authorization": f"Bearer {exporter}", "X-Request-Id": req,
                                        "Accept": "application/fhir+ndjson"})
    assert r.status_code == 200 and r.headers["X-Request-Id"] == req
    ev = one(live, t, req)
    assert (ev["type"]["code"], subtype(ev), ev["outcome"]) == ("110106", "export-download", "0")
    assert {data["a"], data["b"]} <= patients(ev)  # every patient whose data the file holds
    assert target(ev).startswith("export/")


def test_the_query_entity_is_base64_of_the_raw_query(live, t, data):
    req = rid()
    raw = "family=Audit%C3%A9&_count=1"
    call("GET", f"{live.base}/Patient?{raw}", t["doctor"], request_id=req)
    ev = one(live, t, req)
    q = next(e for e in ev["entity"] if e.get("role", {}).get("code") == "24")
    assert base64.b64decode(q["query"]).decode() == raw == q["description"]


def test_other_reads_and_conditional_writes(live, t, data):
    b = live.base
    cases = [
        ("GET", f"{b}/Observation/_history?_count=2", "history-type", None),
        ("GET", f"{b}/_history?_count=2", "history-system", None),
        ("GET", f"{b}?_type=Patient&_id={data['a']}", "search-system", {data["a"]}),
        ("GET", f"{b}/Patient/{data['a']}/Observation", "search-type", {data["a"]}),
        ("DELETE", f"{b}/Observation?code=http://loinc.org|no-such-code", "delete", set()),
    ]
    for method, url, sub, pats in cases:
        req = rid()
        r = call(method, url, t["writer"], request_id=req)
        assert r.status_code in (200, 204), (url, r.text)
        ev = one(live, t, req)
        assert (subtype(ev), ev["outcome"]) == (sub, "0"), url
        if pats is not None:
            assert patients(ev) == pats, url
    req = rid()  # conditional update that creates
    r = call("PUT", f"{b}/Patient?identifier=urn:test:audit|cu-1", t["writer"],
             {"resourceType": "Patient", "identifier": [{"system": "urn:test:audit", "value": "cu-1"}]}, request_id=req)
    assert r.status_code == 201, r.text
    ev = one(live, t, req)
    assert (subtype(ev), ev["action"]) == ("create", "C") and patients(ev) == {r.json()["id"]}


def test_a_refused_update_leaves_no_success_record(live, t, data):
    b = live.base
    current = call("GET", f"{b}/Observation/{data['obs_b']}", t["writer"]).json()
    req = rid()
    r = call("PUT", f"{b}/Observation/{data['obs_b']}", t["writer"], {**current, "status": "cancelled"},
             request_id=req, headers={"If-Match": 'W/"999"'})
    assert r.status_code == 412
    ev = one(live, t, req)
    assert (subtype(ev), ev["outcome"]) == ("update", "4") and "conflict" in ev["outcomeDesc"]
    assert "profile" not in ev["meta"]  # BALP profiles are for successes
    assert call("GET", f"{b}/Observation/{data['obs_b']}", t["writer"]).json()["status"] == current["status"]

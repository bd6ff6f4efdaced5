"""The trail as a FHIR API: auditors search it (patient, date, agent, type, subtype, outcome,
entity, paging), a patient reads their own access log and nothing else, nobody can write it.
Real HTTP and tokens, SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import requests
from audithelp import AUDITOR, FHIR_JSON, call, patients, query_of, rid, subtype

BASE_AUDIT = "AuditEvent"


@pytest.fixture(scope="module")
def t(token) -> dict:
    return {
        "writer": token("system/*.cruds", client_id="epr-2"),
        "doctor": token("user/*.rs", fhir_user="Practitioner/doc2", client_id="clinic-2"),
        "auditor": token(AUDITOR, client_id="privacy-office"),
        "wildcard": token("system/*.rs", client_id="analyst"),
    }


@pytest.fixture(scope="module")
def world(live, t, token) -> dict:
    """Two patients with a result each; the doctor reads both (one search) and each alone."""
    b = live.base
    out: dict = {}
    for name in ("p", "q"):
        r = call("POST", f"{b}/Patient", t["writer"], {"resourceType": "Patient", "name": [{"family": f"Api{name}"}]})
        out[name] = r.json()["id"]
        r = call("POST", f"{b}/Observation", t["writer"], {
            "resourceType": "Observation", "status": "final", "code": {"text": "hb"},
            "subject": {"reference": f"Patient/{out[name]}"}})
        out[f"obs_{name}"] = r.json()["id"]
    out["both"] = rid()
    r = call("GET", f"{b}/Observation?subject=Patient/{out['p']},Patient/{out['q']}", t["doctor"], request_id=out["both"])
    assert r.status_code == 200 and len(r.json()["entry"]) == 2
    out["read_q"] = rid()
    assert call("GET", f"{b}/Observation/{out['obs_q']}", t["doctor"], request_id=out["read_q"]).status_code == 200
    out["patient_p"] = token("patient/*.rs patient/AuditEvent.rs", patient=out["p"], client_id="patient-app")
    out["patient_user_p"] = token("user/AuditEvent.rs", fhir_user=f"Patient/{out['p']}", client_id="patient-portal")
    return out


def search(live, tok: str, params: dict | str | None = None) -> requests.Response:
    return requests.get(f"{live.base}/{BASE_AUDIT}", params=params,
                        headers={"Authorization": f"Bearer {tok}", "Accept": FHIR_JSON})


def resources(r: requests.Response) -> list[dict]:
    assert r.status_code == 200, r.text[:500]
    return [e["resource"] for e in r.json().get("entry", [])]


def test_auditor_searches_by_patient_and_date(live, t, world):
    today = datetime.now(UTC).date().isoformat()
    evs = resources(search(live, t["auditor"], {"patient": f"Patient/{world['q']}", "date": today}))
    assert evs and all(world["q"] in patients(e) for e in evs)
    assert {"create", "search-type", "read"} <= {subtype(e) for e in evs}
    ids = [int(e["id"]) for e in evs]
    assert ids == sorted(ids, reverse=True)  # newest first
    tomorrow = (datetime.now(UTC) + timedelta(days=2)).date().isoformat()
    assert resources(search(live, t["auditor"], {"patient": world["q"], "date": f"ge{tomorrow}"})) == []
    yesterday = (datetime.now(UTC) - timedelta(days=1)).date().isoformat()
    assert len(resources(search(live, t["auditor"], {"patient": world["q"], "date": f"gt{yesterday}"}))) == len(evs)


def test_auditor_filters(live, t, world):
    reads = resources(search(live, t["auditor"], {"agent": "Practitioner/doc2", "subtype": "read"}))
    assert reads and all(subtype(e) == "read" for e in reads)
    by_client = resources(search(live, t["auditor"], {"agent": "clinic-2", "_count": "200"}))
    assert {e["id"] for e in reads} <= {e["id"] for e in by_client}
    entity = resources(search(live, t["auditor"], {"entity": f"Observation/{world['obs_q']}"}))
    assert {subtype(e) for e in entity} == {"create", "read"}  # the create is Observation/X/_history/1
    creates = resources(search(live, t["auditor"], {"type": "http://terminology.hl7.org/CodeSystem/audit-event-type|rest",
                                                     "subtype": "create", "outcome": "0", "action": "C"}))
    assert len(creates) >= 4
    assert resources(search(live, t["auditor"], {"outcome": "8", "agent": "epr-2"})) == []
    r = search(live, t["auditor"], {"outcome": "bad"})
    assert r.status_code == 400 and r.json()["resourceType"] == "OperationOutcome"


def test_auditor_pages_with_next_links(live, t, world):
    all_ids = [e["id"] for e in resources(search(live, t["auditor"], {"_count": "1000"}))]
    seen: list[str] = []
    r = search(live, t["auditor"], {"_count": "3"})
    while True:
        seen += [e["id"] for e in resources(r)]
        nxt = next((link["url"] for link in r.json()["link"] if link["relation"] == "next"), None)
        if not nxt:
            break
        r = requests.get(nxt, headers={"Authorization": f"Bearer {t['auditor']}"})
    # the trail grew while paging (each page is itself recorded), never shifting earlier pages
    assert seen[: len(all_ids)] == all_ids[-len(seen):][: len(all_ids)] or set(all_ids) <= set(seen)
    assert len(seen) == len(set(seen))
    cur = next(link["url"] for link in search(live, t["auditor"], {"_count": "1"}).json()["link"] if link["relation"] == "next")
    r = requests.get(cur, headers={"Authorization": f"Bearer {t['doctor']}"})
    assert r.status_code == 403  # a cursor does not open the trail to another token


def test_auditor_reads_one_event(live, t, world):
    ev = resources(search(live, t["auditor"], {"_count": "1"}))[0]
    r = requests.get(f"{live.base}/AuditEvent/{ev['id']}", headers={"Authorization": f"Bearer {t['auditor']}"})
    assert r.status_code == 200 and r.json()["id"] == ev["id"]
    r = requests.get(f"{live.base}/AuditEvent/999999999", headers={"Authorization": f"Bearer {t['auditor']}"})
    assert r.status_code == 404 and r.json()["issue"][0]["code"] == "not-found"


def test_patient_sees_who_looked_at_their_results_and_nothing_else(live, t, world):
    for tok in (world["patient_p"], world["patient_user_p"]):
        evs = resources(search(live, tok, {"_count": "200"}))
        assert evs and all(patients(e) == {world["p"]} for e in evs)  # only themselves, never Patient q
        both = [e for e in evs if subtype(e) == "search-type"]
        assert both, "the doctor's search over p and q is in p's log"
        assert all(query_of(e) is None for e in evs)  # the query could name other patients
        callers = [a for e in evs for a in e["agent"] if a["type"]["coding"][0]["code"] != "110152"]
        assert all("network" not in a and "policy" not in a and "role" not in a for a in callers)
        doctor = [a for e in both for a in e["agent"] if a.get("who", {}).get("reference") == "Practitioner/doc2"]
        assert doctor  # who looked
        # asking about another patient finds nothing
        assert resources(search(live, tok, {"patient": world["q"]})) == []
        # the read of q's result is not in p's log, and not readable by id
        q_read = resources(search(live, t["auditor"], {"entity": f"Observation/{world['obs_q']}", "subtype": "read"}))[0]
        r = requests.get(f"{live.base}/AuditEvent/{q_read['id']}", headers={"Authorization": f"Bearer {tok}"})
        assert r.status_code == 404


def test_reads_of_the_trail_are_recorded_but_stay_out_of_the_patient_log(live, t, world):
    req = rid()
    r = call("GET", f"{live.base}/AuditEvent?patient={world['p']}", world["patient_p"], request_id=req)
    assert r.status_code == 200
    from audithelp import events

    mine = events(live.base, t["auditor"], req)
    assert len(mine) == 1 and subtype(mine[0]) == "search-type" and patients(mine[0]) == set()
    assert query_of(mine[0]) == f"patient={world['p']}"
    log = resources(search(live, world["patient_p"], {"_count": "500"}))
    assert all(e["id"] != mine[0]["id"] for e in log)
    # and the patient's log does not grow with every look at it
    again = resources(search(live, world["patient_p"], {"_count": "500"}))
    assert len(again) == len(log)


def test_the_trail_needs_a_scope_naming_audit_event(live, t, world, token):
    for tok in (t["wildcard"], t["doctor"], t["writer"]):
        r = search(live, tok)
        assert r.status_code == 403 and r.json()["issue"][0]["code"] == "forbidden"
    r = requests.get(f"{live.base}/AuditEvent")
    assert r.status_code == 401
    no_patient = call("GET", f"{live.base}/AuditEvent", token("patient/AuditEvent.rs", client_id="p-app"))
    assert no_patient.status_code == 403  # a patient scope without a patient reaches nothing
    filtered = call("GET", f"{live.base}/AuditEvent", token("system/AuditEvent.rs?outcome=0", client_id="x"))
    assert filtered.status_code == 403  # a filtered AuditEvent scope grants nothing (fail closed)


@pytest.mark.parametrize("method,path", [("POST", "AuditEvent"), ("PUT", "AuditEvent/1"), ("DELETE", "AuditEvent/1"),
                                         ("PATCH", "AuditEvent/1"), ("DELETE", "AuditEvent?outcome=0"),
                                         ("POST", "AuditEvent/1/_history")])
def test_the_trail_cannot_be_written(live, t, method, path):
    before = len(resources(search(live, t["auditor"], {"_count": "1000", "subtype": "create"})))
    r = requests.request(method, f"{live.base}/{path}", data=b'{"resourceType":"AuditEvent"}',
                         headers={"Authorization": f"Bearer {t['auditor']}", "Content-Type": FHIR_JSON})
    assert r.status_code == 405, r.text
    assert r.json()["resourceType"] == "OperationOutcome" and r.json()["issue"][0]["code"] == "not-supported"
    assert len(resources(search(live, t["auditor"], {"_count": "1000", "subtype": "create"}))) == before


def test_audit_event_in_a_transaction_is_refused(live, t):
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"request": {"method": "POST", "url": "AuditEvent"}, "resource": {"resourceType": "AuditEvent"}}]}
    r = call("POST", live.base, t["writer"], bundle)
    assert r.status_code in (400, 404) and r.json()["resourceType"] == "OperationOutcome"


def test_capability_statement_lists_audit_event_read_only(live):
    cs = requests.get(f"{live.base}/metadata").json()
    ae = next(r for r in cs["rest"][0]["resource"] if r["type"] == "AuditEvent")
    assert {i["code"] for i in ae["interaction"]} == {"read", "search-type"}
    assert {"patient", "date", "agent", "type", "subtype", "outcome", "entity"} <= {p["name"] for p in ae["searchParam"]}


def test_custom_events_through_record(live, t, audit_app, world):
    """The interface other packages use (identity merges, break-glass alerts)."""
    from app.audit import record
    from app.db import unit_of_work

    engine = audit_app.extensions["results_repo"].engine
    with audit_app.app_context():
        record("break-glass", patients={world["q"]}, description="emergency access asserted", engine=engine)
    try:
        with unit_of_work(engine, write=True) as conn:
            record("custom", entity=f"Patient/{world['q']}", description="rolled back", conn=conn)
            raise RuntimeError("the caller's transaction fails")
    except RuntimeError:
        pass
    evs = resources(search(live, t["auditor"], {"patient": world["q"], "type": "110113"}))
    assert [(subtype(e), e["outcomeDesc"]) for e in evs] == [("break-glass", "Success: emergency access asserted")]

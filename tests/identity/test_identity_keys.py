"""One Patient per NHS number and per local identifier, over real HTTP, on both databases:
409 naming the holder, conditional requests converge, transactions fail whole, batch entries
fail alone, and the update rails (identifiers kept, NHS number changes refused)."""

from __future__ import annotations

from urllib.parse import quote

from idhelp import HOSP_A, HOSP_B, NHS, hdr, nhs_number, observation, outcome_codes, patient, uid


def _post(http, base, body, **h):
    return http.post(f"{base}/{body['resourceType']}", json=body, headers=hdr(**h))


def _search(http, base, path, **params):
    r = http.get(f"{base}/{path}", params=params)
    assert r.status_code == 200, r.text[:500]
    return r.json()


def _ids(bundle):
    return sorted(e["resource"]["id"] for e in bundle.get("entry", []))


def test_second_patient_with_same_nhs_number_is_409_naming_the_first(server, http):
    base, n = server.base, nhs_number()
    first = _post(http, base, patient(n))
    assert first.status_code == 201
    pid = first.json()["id"]
    r = _post(http, base, patient(n, family="Other"))
    assert r.status_code == 409
    assert "duplicate" in outcome_codes(r)
    assert f"Patient/{pid}" in r.text
    assert _ids(_search(http, base, "Patient", identifier=f"{NHS}|{n}")) == [pid]


def test_conditional_create_on_nhs_number_returns_the_existing_patient(server, http):
    base, n = server.base, nhs_number()
    pid = _post(http, base, patient(n)).json()["id"]
    r = _post(http, base, patient(n), If_None_Exist=f"identifier={quote(NHS)}|{n}")
    assert r.status_code == 200
    assert r.json()["id"] == pid


def test_update_giving_another_patients_nhs_number_is_409(server, http):
    base, n = server.base, nhs_number()
    holder = _post(http, base, patient(n)).json()["id"]
    other = _post(http, base, patient(None, mrn=(HOSP_A, uid()))).json()
    other["identifier"].append({"system": NHS, "value": n})
    r = http.put(f"{base}/Patient/{other['id']}", json=other, headers=hdr())
    assert r.status_code == 409 and f"Patient/{holder}" in r.text


def test_deleted_patient_frees_its_nhs_number(server, http):
    base, n = server.base, nhs_number()
    pid = _post(http, base, patient(n)).json()["id"]
    assert http.delete(f"{base}/Patient/{pid}").status_code == 204
    assert _post(http, base, patient(n)).status_code == 201


def test_invalid_nhs_number_is_422(server, http):
    r = _post(http, server.base, patient("9434765918"))  # check digit should be 9
    assert r.status_code == 422 and "business-rule" in outcome_codes(r)


def test_local_identifier_belongs_to_one_patient(server, http):
    base, mrn = server.base, uid()
    pid = _post(http, base, patient(nhs_number(), mrn=(HOSP_A, mrn))).json()["id"]
    r = _post(http, base, patient(nhs_number(), mrn=(HOSP_A, mrn)))
    assert r.status_code == 409 and f"Patient/{pid}" in r.text
    # the same value under another hospital's system is another identifier
    assert _post(http, base, patient(nhs_number(), mrn=(HOSP_B, mrn))).status_code == 201


def test_mrn_finds_patient_and_its_results(server, http):
    base, n, mrn_a, mrn_b = server.base, nhs_number(), uid(), uid()
    pid = _post(http, base, patient(n, mrn=(HOSP_A, mrn_a))).json()["id"]
    # hospital B adds its own number with a conditional update on the NHS number
    body = patient(n, mrn=(HOSP_B, mrn_b))
    r = http.put(f"{base}/Patient?identifier={quote(NHS)}|{n}", json=body, headers=hdr())
    assert r.status_code == 200, r.text
    stored = r.json()
    assert stored["id"] == pid
    # hospital A's number was kept: a PUT does not drop other systems' identifiers
    assert {(i["system"], i["value"]) for i in stored["identifier"]} == {(NHS, n), (HOSP_A, mrn_a), (HOSP_B, mrn_b)}
    oid = _post(http, base, observation(f"Patient/{pid}")).json()["id"]
    for system, value in ((HOSP_A, mrn_a), (HOSP_B, mrn_b), (NHS, n)):
        assert _ids(_search(http, base, "Patient", identifier=f"{system}|{value}")) == [pid]
        assert _ids(_search(http, base, "Observation", **{"patient.identifier": f"{system}|{value}"})) == [oid]


def test_nhs_number_cannot_be_changed_by_update(server, http):
    base, n, mrn = server.base, nhs_number(), uid()
    created = _post(http, base, patient(n, mrn=(HOSP_A, mrn))).json()
    changed = {**created, "identifier": [{"system": NHS, "value": nhs_number()}]}
    r = http.put(f"{base}/Patient/{created['id']}", json=changed, headers=hdr())
    assert r.status_code == 422 and "business-rule" in outcome_codes(r)
    ops = [{"op": "remove", "path": "/identifier/0"}]
    r = http.patch(f"{base}/Patient/{created['id']}", json=ops, headers=hdr(Content_Type="application/json-patch+json"))
    assert r.status_code == 422, r.text
    # a PUT that leaves the NHS number out keeps it
    bare = {k: v for k, v in created.items() if k != "identifier"}
    r = http.put(f"{base}/Patient/{created['id']}", json={**bare, "gender": "other"}, headers=hdr())
    assert r.status_code == 200 and r.json()["identifier"] == [{"system": NHS, "value": n}, {"system": HOSP_A, "value": mrn}]
    # adding a number to a patient that had none is allowed (a traced patient)
    p = _post(http, base, patient(None, mrn=(HOSP_A, uid()))).json()
    p["identifier"].append({"system": NHS, "value": nhs_number()})
    assert http.put(f"{base}/Patient/{p['id']}", json=p, headers=hdr()).status_code == 200


def test_correct_nhs_number_is_recorded(server, http):
    base, n, fixed = server.base, nhs_number(), nhs_number()
    pid = _post(http, base, patient(n)).json()["id"]
    body = {"resourceType": "Parameters", "parameter": [{"name": "nhs-number", "valueString": fixed},
                                                         {"name": "reason", "valueString": "transposed digits"}]}
    r = http.post(f"{base}/Patient/{pid}/$correct-nhs-number", json=body, headers=hdr())
    assert r.status_code == 200, r.text
    assert [i["value"] for i in r.json()["identifier"] if i["system"] == NHS] == [fixed]
    assert not _search(http, base, "Patient", identifier=f"{NHS}|{n}").get("entry")
    prov = _search(http, base, "Provenance", target=f"Patient/{pid}")
    texts = [e["resource"].get("reason", [{}])[0].get("text", "") for e in prov.get("entry", [])]
    assert any("transposed digits" in t for t in texts)
    # to a number held by another patient: 409 naming it
    other_n = nhs_number()
    other = _post(http, base, patient(other_n)).json()["id"]
    body["parameter"][0]["valueString"] = other_n
    r = http.post(f"{base}/Patient/{pid}/$correct-nhs-number", json=body, headers=hdr())
    assert r.status_code == 409 and f"Patient/{other}" in r.text
    body["parameter"][0]["valueString"] = "9434765918"
    assert http.post(f"{base}/Patient/{pid}/$correct-nhs-number", json=body, headers=hdr()).status_code == 422


def _tx(*entries, kind="transaction"):
    return {"resourceType": "Bundle", "type": kind, "entry": list(entries)}


def test_transaction_creating_two_patients_with_one_nhs_number_fails_whole(server, http):
    base, n, run = server.base, nhs_number(), uid()
    bundle = _tx(
        {"fullUrl": "urn:uuid:a", "resource": patient(n), "request": {"method": "POST", "url": "Patient"}},
        {"fullUrl": "urn:uuid:b", "resource": patient(n, given="Other"), "request": {"method": "POST", "url": "Patient"}},
        {"resource": observation("urn:uuid:a", run=run), "request": {"method": "POST", "url": "Observation"}},
    )
    r = http.post(base, json=bundle, headers=hdr())
    assert r.status_code == 409 and "duplicate" in outcome_codes(r)
    assert not _search(http, base, "Patient", identifier=f"{NHS}|{n}").get("entry")
    assert not _search(http, base, "Observation", identifier=f"urn:test:run|{run}").get("entry")


def test_transaction_against_existing_patient_is_409_naming_it(server, http):
    base, n = server.base, nhs_number()
    pid = _post(http, base, patient(n)).json()["id"]
    bundle = _tx({"fullUrl": "urn:uuid:a", "resource": patient(n), "request": {"method": "POST", "url": "Patient"}})
    r = http.post(base, json=bundle, headers=hdr())
    assert r.status_code == 409 and f"Patient/{pid}" in r.text


def test_batch_entry_with_taken_nhs_number_fails_alone(server, http):
    base, n, n2 = server.base, nhs_number(), nhs_number()
    pid = _post(http, base, patient(n)).json()["id"]
    bundle = _tx(
        {"resource": patient(n), "request": {"method": "POST", "url": "Patient"}},
        {"resource": patient(n2), "request": {"method": "POST", "url": "Patient"}},
        kind="batch",
    )
    r = http.post(base, json=bundle, headers=hdr())
    assert r.status_code == 200
    e0, e1 = r.json()["entry"]
    assert e0["response"]["status"] == "409" and f"Patient/{pid}" in str(e0["response"]["outcome"])
    assert e1["response"]["status"].startswith("201")


def _hospital_bundle(n: str, system: str, mrn: str, run: str, family: str = "Jones") -> dict:
    q = f"identifier={quote(NHS)}|{n}"
    return _tx(
        {"fullUrl": "urn:uuid:p", "resource": patient(n, mrn=(system, mrn), family=family),
         "request": {"method": "PUT", "url": f"Patient?{q}"}},
        {"resource": observation("urn:uuid:p", run=run), "request": {"method": "POST", "url": "Observation"}},
        {"resource": observation(f"Patient?{q}", code="2345-7", run=run), "request": {"method": "POST", "url": "Observation"}},
    )


def test_two_hospitals_conditional_transactions_converge(server, http):
    base, n, run = server.base, nhs_number(), uid()
    mrn_a, mrn_b = uid(), uid()
    r = http.post(base, json=_hospital_bundle(n, HOSP_A, mrn_a, run), headers=hdr())
    assert r.status_code == 200, r.text
    r = http.post(base, json=_hospital_bundle(n, HOSP_B, mrn_b, run, family="Jones-Smith"), headers=hdr())
    assert r.status_code == 200, r.text
    pats = _search(http, base, "Patient", identifier=f"{NHS}|{n}")
    assert len(pats["entry"]) == 1
    p = pats["entry"][0]["resource"]
    assert {(i["system"], i["value"]) for i in p["identifier"]} == {(NHS, n), (HOSP_A, mrn_a), (HOSP_B, mrn_b)}
    for system, value in ((HOSP_A, mrn_a), (HOSP_B, mrn_b)):
        obs = _search(http, base, "Observation", **{"patient.identifier": f"{system}|{value}"})
        assert len(obs["entry"]) == 4
        assert {e["resource"]["subject"]["reference"] for e in obs["entry"]} == {f"Patient/{p['id']}"}

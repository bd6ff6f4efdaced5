"""Patient/$match and Patient/$merge / $unmerge over real HTTP, on both databases."""

from __future__ import annotations

import random
import string

import pytest
from idhelp import (
    HOSP_A,
    HOSP_B,
    NHS,
    hdr,
    merge_body,
    nhs_number,
    observation,
    params,
    patient,
    ref_param,
    uid,
)

MATCH_GRADE = "http://hl7.org/fhir/StructureDefinition/match-grade"


def _post(http, base, body, **h):
    r = http.post(f"{base}/{body['resourceType']}", json=body, headers=hdr(**h))
    assert r.status_code == 201, r.text
    return r.json()


def _get(http, url, **p):
    r = http.get(url, params=p)
    assert r.status_code == 200, r.text[:500]
    return r.json()


def _match(http, base, query: dict, **extra):
    items = [{"name": "resource", "resource": query}]
    items += [{"name": k, **v} for k, v in extra.items()]
    return http.post(f"{base}/Patient/$match", json=params(*items), headers=hdr())


def _family() -> str:
    return "Fam" + "".join(random.choice(string.ascii_lowercase) for _ in range(8))


def _grades(bundle: dict) -> dict[str, tuple[str, float]]:
    out = {}
    for e in bundle.get("entry", []):
        ext = {x["url"]: x["valueCode"] for x in e["search"].get("extension", [])}
        out[e["resource"]["id"]] = (ext[MATCH_GRADE], e["search"]["score"])
    return out


# ---- $match ---------------------------------------------------------------------------------
def test_match_grades_demographic_cases(server, http):
    base, fam, n = server.base, _family(), nhs_number()
    megan = _post(http, base, patient(n, family=fam, given="Megan", birth="1980-03-04"))["id"]
    twin = _post(http, base, patient(None, mrn=(HOSP_A, uid()), family=fam, given="Olivia", birth="1980-03-04"))["id"]
    namesake = _post(http, base, patient(None, mrn=(HOSP_B, uid()), family=fam, given="Megan", birth="1955-10-21",
                                         postcode="LL57 2DG"))["id"]
    typo = fam[0] + fam[2] + fam[1] + fam[3:]

    by_nhs = _grades(_match(http, base, patient(n, family="Anything", postcode=None)).json())
    assert by_nhs[megan] == ("certain", 1.0)

    exact = _grades(_match(http, base, patient(None, family=fam)).json())
    assert exact[megan][0] == "probable" and exact[twin][0] == "possible" and namesake not in exact
    assert exact[megan][1] > exact[twin][1]

    assert _grades(_match(http, base, patient(None, family=typo)).json())[megan][0] == "probable"
    swapped = _grades(_match(http, base, patient(None, family=fam, birth="1980-04-03")).json())
    assert swapped[megan][0] == "probable"

    r = _match(http, base, patient(None, family=fam), onlyCertainMatches={"valueBoolean": True})
    assert r.status_code == 200 and not r.json().get("entry")
    body = _match(http, base, patient(None, family=fam), count={"valueInteger": 1}).json()
    assert [e["resource"]["id"] for e in body["entry"]] == [megan]
    assert body["entry"][0]["search"]["mode"] == "match"


def test_match_bad_input(server, http):
    base = server.base
    assert http.post(f"{base}/Patient/$match", json=params(), headers=hdr()).status_code == 400
    r = _match(http, base, {"resourceType": "Observation", "status": "final", "code": {"text": "x"}})
    assert r.status_code == 400
    assert _match(http, base, {"resourceType": "Patient", "gender": "male"}).status_code == 400
    assert _match(http, base, patient("9434765918")).status_code == 422
    r = http.post(f"{base}/Patient/$match", json=params({"name": "bogus", "valueString": "x"}), headers=hdr())
    assert r.status_code == 400


# ---- $merge / $unmerge --------------------------------------------------------------------
@pytest.fixture
def pair(server, http):
    """Two records of one person: A (hospital A, NHS number a) and B (hospital B, NHS number b,
    a temporary number later found to be wrong), each with results."""
    base = server.base
    a_nhs, b_nhs, mrn_a, mrn_b = nhs_number(), nhs_number(), uid(), uid()
    a = _post(http, base, patient(a_nhs, mrn=(HOSP_A, mrn_a)))["id"]
    b = _post(http, base, patient(b_nhs, mrn=(HOSP_B, mrn_b), family="Jonse"))["id"]
    a_obs = [_post(http, base, observation(f"Patient/{a}", value=float(i)))["id"] for i in range(2)]
    b_obs = [_post(http, base, observation(f"Patient/{b}", value=10.0 + i))["id"] for i in range(3)]
    dr = _post(http, base, {"resourceType": "DiagnosticReport", "status": "final", "code": {"text": "FBC"},
                            "subject": {"reference": f"Patient/{b}"},
                            "result": [{"reference": f"Observation/{o}"} for o in b_obs]})["id"]
    return {"a": a, "b": b, "a_nhs": a_nhs, "b_nhs": b_nhs, "mrn_a": mrn_a, "mrn_b": mrn_b, "a_obs": a_obs,
            "b_obs": b_obs, "dr": dr}


def _strip(res: dict) -> dict:
    return {k: v for k, v in res.items() if k != "meta"}


def _snapshot(http, base, d) -> dict:
    """Everything a clinician's searches show, without versions and timestamps."""
    out = {}
    queries = {
        "obs_a": ("Observation", {"subject": f"Patient/{d['a']}"}),
        "obs_b": ("Observation", {"subject": f"Patient/{d['b']}"}),
        "obs_mrn_b": ("Observation", {"patient.identifier": f"{HOSP_B}|{d['mrn_b']}"}),
        "dr_b": ("DiagnosticReport", {"patient": d["b"]}),
        "pat_nhs_b": ("Patient", {"identifier": f"{NHS}|{d['b_nhs']}"}),
        "pat_mrn_a": ("Patient", {"identifier": f"{HOSP_A}|{d['mrn_a']}"}),
        "pat_a": ("Patient", {"_id": d["a"]}),
        "pat_b": ("Patient", {"_id": d["b"]}),
    }
    for name, (t, p) in queries.items():
        b = _get(http, f"{base}/{t}", **p)
        out[name] = sorted((_strip(e["resource"]) for e in b.get("entry", [])), key=lambda r: r["id"])
    return out


def test_merge_preview_changes_nothing(server, http, pair):
    base = server.base
    before = _snapshot(http, base, pair)
    r = http.post(f"{base}/Patient/$merge", json=merge_body(pair["b"], pair["a"], preview=True), headers=hdr())
    assert r.status_code == 200, r.text
    out = {p["name"]: p for p in r.json()["parameter"]}
    assert "Preview" in out["outcome"]["resource"]["issue"][0]["diagnostics"]
    assert "3 Observation" in out["outcome"]["resource"]["issue"][0]["diagnostics"]
    assert {"other": {"reference": f"Patient/{pair['b']}"}, "type": "replaces"} in out["result"]["resource"]["link"]
    assert _snapshot(http, base, pair) == before
    assert _get(http, f"{base}/Observation/{pair['b_obs'][0]}")["meta"]["versionId"] == "1"


def test_merge_then_unmerge_round_trips(server, http, pair):
    base, a, b = server.base, pair["a"], pair["b"]
    r = http.post(f"{base}/Patient/$merge", json=merge_body(b, a), headers=hdr())
    assert r.status_code == 200, r.text
    out = {p["name"]: p for p in r.json()["parameter"]}
    assert out["result"]["resource"]["id"] == a

    src, tgt = _get(http, f"{base}/Patient/{b}"), _get(http, f"{base}/Patient/{a}")
    assert src["active"] is False and {"other": {"reference": f"Patient/{a}"}, "type": "replaced-by"} in src["link"]
    assert "identifier" not in src
    assert {"other": {"reference": f"Patient/{b}"}, "type": "replaces"} in tgt["link"]
    idents = {(i["system"], i["value"], i.get("use")) for i in tgt["identifier"]}
    assert (NHS, pair["a_nhs"], None) in idents and (NHS, pair["b_nhs"], "old") in idents
    assert (HOSP_B, pair["mrn_b"], None) in idents

    # every result now on the survivor, as a new version; history shows the old reference
    for o in pair["b_obs"]:
        cur = _get(http, f"{base}/Observation/{o}")
        assert cur["subject"]["reference"] == f"Patient/{a}" and cur["meta"]["versionId"] == "2"
        old = _get(http, f"{base}/Observation/{o}/_history/1")
        assert old["subject"]["reference"] == f"Patient/{b}"
    assert _get(http, f"{base}/DiagnosticReport/{pair['dr']}")["subject"]["reference"] == f"Patient/{a}"

    # searches by either id (and by B's numbers) find all of the survivor's results
    all_obs = sorted(pair["a_obs"] + pair["b_obs"])
    for p in ({"subject": f"Patient/{b}"}, {"subject": f"Patient/{a}"}, {"patient": b},
              {"patient.identifier": f"{HOSP_B}|{pair['mrn_b']}"}):
        assert sorted(e["resource"]["id"] for e in _get(http, f"{base}/Observation", **p)["entry"]) == all_obs, p
    comp = _get(http, f"{base}/Patient/{b}/Observation")
    assert sorted(e["resource"]["id"] for e in comp["entry"]) == all_obs
    found = _get(http, f"{base}/Patient", identifier=f"{NHS}|{pair['b_nhs']}")["entry"]
    assert [e["resource"]["id"] for e in found] == [a]

    # the merge is recorded
    prov = _get(http, f"{base}/Provenance", target=f"Patient/{b}")["entry"]
    merges = [e["resource"] for e in prov if e["resource"]["activity"]["coding"][0]["code"] == "merge"]
    assert len(merges) == 1
    targets = {t["reference"] for t in merges[0]["target"]}
    assert f"Observation/{pair['b_obs'][0]}/_history/2" in targets and f"Patient/{b}/_history/2" in targets
    assert f"Observation/{pair['b_obs'][0]}/_history/1" in {e["what"]["reference"] for e in merges[0]["entity"]}

    # a hospital re-sending the survivor with only its own NHS number keeps B's as former
    resent = {**patient(pair["a_nhs"], gender="unknown"), "id": a, "link": tgt["link"]}
    r = http.put(f"{base}/Patient/{a}", json=resent, headers=hdr())
    assert r.status_code == 200, r.text
    assert (NHS, pair["b_nhs"], "old") in {(i["system"], i["value"], i.get("use")) for i in r.json()["identifier"]}
    r = http.post(f"{base}/Patient/$unmerge", json=params(ref_param("source-patient", f"Patient/{b}")), headers=hdr())
    assert r.status_code == 409 and f"Patient/{a}" in r.text  # the survivor changed since: no silent undo


def test_unmerge_restores_identical_search_results(server, http, pair):
    base, a, b = server.base, pair["a"], pair["b"]
    before = _snapshot(http, base, pair)
    assert http.post(f"{base}/Patient/$merge", json=merge_body(b, a), headers=hdr()).status_code == 200
    assert _snapshot(http, base, pair) != before
    body = params(ref_param("source-patient", f"Patient/{b}"), {"name": "reason", "valueString": "not the same person"})
    r = http.post(f"{base}/Patient/$unmerge", json=body, headers=hdr())
    assert r.status_code == 200, r.text
    assert _snapshot(http, base, pair) == before
    assert _get(http, f"{base}/Observation/{pair['b_obs'][0]}")["meta"]["versionId"] == "3"
    prov = _get(http, f"{base}/Provenance", target=f"Patient/{b}")["entry"]
    codes = sorted(e["resource"]["activity"]["coding"][0]["code"] for e in prov)
    assert codes == ["merge", "unmerge"]
    # merge again works after an unmerge; unmerging twice does not
    r = http.post(f"{base}/Patient/$unmerge", json=params(ref_param("source-patient", f"Patient/{b}")), headers=hdr())
    assert r.status_code == 422
    assert http.post(f"{base}/Patient/$merge", json=merge_body(b, a), headers=hdr()).status_code == 200


def test_unmerge_refused_when_a_result_changed_since(server, http, pair):
    base, a, b = server.base, pair["a"], pair["b"]
    assert http.post(f"{base}/Patient/$merge", json=merge_body(b, a), headers=hdr()).status_code == 200
    o = _get(http, f"{base}/Observation/{pair['b_obs'][1]}")
    o["status"] = "amended"
    assert http.put(f"{base}/Observation/{o['id']}", json=o, headers=hdr()).status_code == 200
    r = http.post(f"{base}/Patient/$unmerge", json=params(ref_param("source-patient", f"Patient/{b}")), headers=hdr())
    assert r.status_code == 409 and f"Observation/{o['id']}" in r.text


def test_merge_by_identifier_and_rules(server, http, pair):
    base, a, b = server.base, pair["a"], pair["b"]
    body = params({"name": "source-patient-identifier", "valueIdentifier": {"system": HOSP_B, "value": pair["mrn_b"]}},
                  {"name": "target-patient-identifier", "valueIdentifier": {"system": NHS, "value": pair["a_nhs"]}})
    r = http.post(f"{base}/Patient/$merge", json=body, headers=hdr())
    assert r.status_code == 200, r.text
    # already merged: the source cannot be merged again, nor used as a target
    assert http.post(f"{base}/Patient/$merge", json=merge_body(b, a), headers=hdr()).status_code == 422
    c = _post(http, base, patient(nhs_number()))["id"]
    r = http.post(f"{base}/Patient/$merge", json=merge_body(c, b), headers=hdr())
    assert r.status_code == 422 and f"Patient/{a}" in r.text
    # a merged-away record takes no more updates
    src = _get(http, f"{base}/Patient/{b}")
    assert http.put(f"{base}/Patient/{b}", json={**src, "gender": "other"}, headers=hdr()).status_code == 409


def test_merge_bad_requests(server, http, pair):
    base, a, b = server.base, pair["a"], pair["b"]
    assert http.post(f"{base}/Patient/$merge", json=merge_body(a, a), headers=hdr()).status_code == 422
    assert http.post(f"{base}/Patient/$merge", json=merge_body(b, "nope"), headers=hdr()).status_code == 404
    assert http.post(f"{base}/Patient/$merge", json=params(ref_param("source-patient", f"Patient/{b}")),
                     headers=hdr()).status_code == 400
    bad = merge_body(b, a)
    bad["parameter"].append({"name": "previwe", "valueBoolean": True})
    assert http.post(f"{base}/Patient/$merge", json=bad, headers=hdr()).status_code == 400
    with_result = merge_body(b, a)
    with_result["parameter"].append({"name": "result-patient", "resource": {"resourceType": "Patient", "id": a}})
    assert http.post(f"{base}/Patient/$merge", json=with_result, headers=hdr()).status_code == 400
    body = params({"name": "source-patient-identifier", "valueIdentifier": {"system": HOSP_B, "value": "missing"}},
                  ref_param("target-patient", f"Patient/{a}"))
    assert http.post(f"{base}/Patient/$merge", json=body, headers=hdr()).status_code == 404
    assert http.post(f"{base}/Patient/$merge", json={"resourceType": "Patient"}, headers=hdr()).status_code == 400
    # nothing of that changed anything
    assert _get(http, f"{base}/Patient/{b}")["meta"]["versionId"] == "1"


def test_capability_statement_declares_the_operations(server, http):
    cs = _get(http, f"{server.base}/metadata")
    pat = next(r for r in cs["rest"][0]["resource"] if r["type"] == "Patient")
    ops = {o["name"]: o["definition"] for o in pat["operation"]}
    assert ops["merge"] == "http://hl7.org/fhir/OperationDefinition/Patient-merge"
    assert ops["match"] == "http://hl7.org/fhir/OperationDefinition/Patient-match"
    assert "unmerge" in ops and "export" in ops


def test_chained_merges_widen_searches_transitively(server, http, pair):
    base, a, b = server.base, pair["a"], pair["b"]
    assert http.post(f"{base}/Patient/$merge", json=merge_body(b, a), headers=hdr()).status_code == 200
    c = _post(http, base, patient(nhs_number(), mrn=(HOSP_A, uid())))["id"]
    c_obs = _post(http, base, observation(f"Patient/{c}"))["id"]
    r = http.post(f"{base}/Patient/$merge", json=merge_body(a, c), headers=hdr())
    assert r.status_code == 200, r.text
    everything = sorted(pair["a_obs"] + pair["b_obs"] + [c_obs])
    for pid in (a, b, c):
        got = _get(http, f"{base}/Observation", subject=f"Patient/{pid}")
        assert sorted(e["resource"]["id"] for e in got["entry"]) == everything, pid
    # the first merge cannot be undone before the second (A changed since)
    r = http.post(f"{base}/Patient/$unmerge", json=params(ref_param("source-patient", f"Patient/{b}")), headers=hdr())
    assert r.status_code == 409
    for src in (a, b):
        r = http.post(f"{base}/Patient/$unmerge", json=params(ref_param("source-patient", f"Patient/{src}")),
                      headers=hdr())
        assert r.status_code == 200, r.text
    got = _get(http, f"{base}/Observation", subject=f"Patient/{b}")
    assert sorted(e["resource"]["id"] for e in got["entry"]) == sorted(pair["b_obs"])


def test_merge_is_audited_with_both_patients(server, http, pair):
    base, a, b = server.base, pair["a"], pair["b"]
    r = http.post(f"{base}/Patient/$merge", json=merge_body(b, a), headers=hdr())
    assert r.status_code == 200, r.text
    found = _get(http, f"{base}/AuditEvent", patient=b, subtype="merge")
    events = [e["resource"] for e in found.get("entry", [])]
    assert len(events) == 1, found
    refs = {d["what"]["reference"] for d in events[0]["entity"] if "what" in d and "reference" in d["what"]}
    assert {f"Patient/{a}", f"Patient/{b}"} <= refs

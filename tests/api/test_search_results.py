"""_include/_revinclude, _total, _summary/_elements, system and compartment search, strict vs lenient
handling and the _explain debug switch, over real HTTP on both back ends."""

from __future__ import annotations

import pytest
from apihelp import assert_outcome, create, headers, link_params, observation, patient, uid

SUBSETTED = "SUBSETTED"


@pytest.fixture(scope="module")
def data(http, base) -> dict:
    run = uid()
    pr = create(http, base, {"resourceType": "Practitioner", "name": [{"family": f"Doc{run}"}]})
    p = create(http, base, patient(text={"status": "generated", "div": '<div xmlns="http://www.w3.org/1999/xhtml">Ada</div>'}))
    other = create(http, base, patient())
    obs = [
        create(http, base, observation(f"Patient/{p['id']}", performer=[{"reference": f"Practitioner/{pr['id']}"}],
                                       effectiveDateTime=f"2024-0{i + 1}-01", identifier=[{"system": "urn:run", "value": run}]))
        for i in range(3)
    ]
    other_obs = create(http, base, observation(f"Patient/{other['id']}", identifier=[{"system": "urn:run", "value": run}]))
    dr = create(http, base, {
        "resourceType": "DiagnosticReport", "status": "final", "code": {"text": "FBC"},
        "subject": {"reference": f"Patient/{p['id']}"},
        "result": [{"reference": f"Observation/{o['id']}"} for o in obs[:2]],
    })
    return {"run": run, "pr": pr["id"], "p": p["id"], "other": other["id"], "obs": [o["id"] for o in obs],
            "other_obs": other_obs["id"], "dr": dr["id"]}


def _by_mode(bundle: dict) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for e in bundle.get("entry", []):
        mode = e["search"]["mode"]
        if mode == "outcome":
            continue
        out.setdefault(mode, set()).add(f"{e['resource']['resourceType']}/{e['resource']['id']}")
    return out


def _get(http, url, **params):
    r = http.get(url, params=params)
    assert r.status_code == 200, r.text[:2000]
    return r.json()


def _self(app, base: str, bundle: dict) -> dict:
    """The search the (opaque) self link carries."""
    url = [link["url"] for link in bundle["link"] if link["relation"] == "self"][0]
    return link_params(app, base, url)


# -- includes ----------------------------------------------------------------------------------

def test_include_specific(http, base, data):
    b = _get(http, f"{base}/DiagnosticReport", _id=data["dr"], _include="DiagnosticReport:result")
    modes = _by_mode(b)
    assert modes["match"] == {f"DiagnosticReport/{data['dr']}"}
    assert modes["include"] == {f"Observation/{o}" for o in data["obs"][:2]}


def test_include_with_target_type(http, base, data):
    b = _get(http, f"{base}/DiagnosticReport", _id=data["dr"], _include="DiagnosticReport:subject:Patient")
    assert _by_mode(b)["include"] == {f"Patient/{data['p']}"}
    b = _get(http, f"{base}/DiagnosticReport", _id=data["dr"], _include="DiagnosticReport:subject:Group")
    assert "include" not in _by_mode(b)


def test_revinclude(http, base, data):
    b = _get(http, f"{base}/Patient", _id=data["p"], _revinclude="Observation:subject")
    modes = _by_mode(b)
    assert modes["match"] == {f"Patient/{data['p']}"}
    assert modes["include"] == {f"Observation/{o}" for o in data["obs"]}


def test_include_iterate(http, base, data):
    params = [("_id", data["dr"]), ("_include", "DiagnosticReport:result"), ("_include:iterate", "Observation:performer")]
    b = http.get(f"{base}/DiagnosticReport", params=params).json()
    assert _by_mode(b)["include"] == {f"Observation/{o}" for o in data["obs"][:2]} | {f"Practitioner/{data['pr']}"}
    # without :iterate the performer is not followed from the included Observations
    params[2] = ("_include", "Observation:performer")
    b = http.get(f"{base}/DiagnosticReport", params=params).json()
    assert f"Practitioner/{data['pr']}" not in _by_mode(b)["include"]


def test_revinclude_then_include_iterate(http, base, data):
    params = [("_id", data["p"]), ("_revinclude", "DiagnosticReport:subject"),
              ("_include:iterate", "DiagnosticReport:result")]
    b = http.get(f"{base}/Patient", params=params).json()
    assert _by_mode(b)["include"] == {f"DiagnosticReport/{data['dr']}"} | {f"Observation/{o}" for o in data["obs"][:2]}


def test_include_wildcards(http, base, data):
    want = {f"Patient/{data['p']}"} | {f"Observation/{o}" for o in data["obs"][:2]}
    for value in ("*", "DiagnosticReport:*"):
        b = _get(http, f"{base}/DiagnosticReport", _id=data["dr"], _include=value)
        assert _by_mode(b)["include"] == want, value


def test_includes_are_one_query_per_parameter_per_iteration(http, base, app, data):
    app.config["SEARCH_DEBUG_SQL"] = True
    try:
        params = [("identifier", f"urn:run|{data['run']}"), ("_include", "Observation:subject"),
                  ("_include", "Observation:performer"), ("_revinclude", "DiagnosticReport:result"),
                  ("_explain", "true")]
        b = http.get(f"{base}/Observation", params=params).json()
    finally:
        app.config["SEARCH_DEBUG_SQL"] = False
    assert len(_by_mode(b)["match"]) == 4
    diags = [i["diagnostics"] for e in b["entry"] if e["search"]["mode"] == "outcome" for i in e["resource"]["issue"]]
    assert sum(d.startswith("include") for d in diags) == 3  # not one per matched Observation


def test_unknown_include_strict_vs_lenient(http, base, app, data):
    r = http.get(f"{base}/Patient", params={"_include": "Patient:nope"}, headers=headers(Prefer="handling=strict"))
    assert_outcome(r, 400)
    b = _get(http, f"{base}/Patient", _id=data["p"], _include="Patient:nope")
    assert "_include" not in _self(app, base, b)


# -- _total, _summary, _elements -----------------------------------------------------------------

def test_total_modes(http, base, data):
    q = {"identifier": f"urn:run|{data['run']}", "_count": "2"}
    assert "total" not in _get(http, f"{base}/Observation", **q)
    assert "total" not in _get(http, f"{base}/Observation", **q, _total="none")
    assert _get(http, f"{base}/Observation", **q, _total="accurate")["total"] == 4
    est = _get(http, f"{base}/Observation", **q, _total="estimate")
    assert isinstance(est.get("total", 0), int) and est.get("total", 0) >= 0
    # one page holding everything: the total is exact whatever the mode
    assert _get(http, f"{base}/Observation", identifier=f"urn:run|{data['run']}", _total="estimate")["total"] == 4
    assert_outcome(http.get(f"{base}/Observation", params={"_total": "lots"}), 400)


def test_summary_count(http, base, data):
    b = _get(http, f"{base}/Observation", identifier=f"urn:run|{data['run']}", _summary="count")
    assert b["total"] == 4 and not b.get("entry")


def test_summary_true_keeps_summary_elements_and_tags(http, base, data):
    b = _get(http, f"{base}/Observation", _id=data["obs"][0], _summary="true")
    res = b["entry"][0]["resource"]
    assert {"resourceType", "id", "meta", "status", "code", "subject", "valueQuantity", "effectiveDateTime"} <= set(res)
    assert "performer" in res  # performer is a summary element of Observation
    assert SUBSETTED in [t["code"] for t in res["meta"]["tag"]]
    b = _get(http, f"{base}/Patient", _id=data["p"], _summary="true")
    assert "text" not in b["entry"][0]["resource"]


def test_summary_text_and_data(http, base, data):
    res = _get(http, f"{base}/Patient", _id=data["p"], _summary="text")["entry"][0]["resource"]
    assert "text" in res and "name" not in res and "birthDate" not in res
    assert SUBSETTED in [t["code"] for t in res["meta"]["tag"]]
    res = _get(http, f"{base}/Patient", _id=data["p"], _summary="data")["entry"][0]["resource"]
    assert "text" not in res and res["name"] and res["birthDate"] == "1970-01-01"
    res = _get(http, f"{base}/Patient", _id=data["p"], _summary="false")["entry"][0]["resource"]
    assert "text" in res and SUBSETTED not in [t.get("code") for t in res.get("meta", {}).get("tag", [])]
    assert_outcome(http.get(f"{base}/Patient", params={"_summary": "maybe"}), 400)


def test_elements(http, base, data):
    res = _get(http, f"{base}/Observation", _id=data["obs"][0], _elements="subject,effective")["entry"][0]["resource"]
    # asked for, plus mandatory (status, code) and id/meta
    assert set(res) == {"resourceType", "id", "meta", "subject", "effectiveDateTime", "status", "code"}
    assert SUBSETTED in [t["code"] for t in res["meta"]["tag"]]


# -- system and compartment search ---------------------------------------------------------------

def test_system_search_with_type(http, base, data):
    b = _get(http, base, _type="Patient,Practitioner", _id=f"{data['p']},{data['pr']}")
    assert _by_mode(b)["match"] == {f"Patient/{data['p']}", f"Practitioner/{data['pr']}"}
    b = _get(http, f"{base}/_search", _type="Patient", _id=f"{data['p']},{data['pr']}")
    assert _by_mode(b)["match"] == {f"Patient/{data['p']}"}
    r = http.post(f"{base}/_search", data={"_type": "Practitioner", "_id": data["pr"]}, headers={"Accept": "application/fhir+json"})
    assert r.status_code == 200 and _by_mode(r.json())["match"] == {f"Practitioner/{data['pr']}"}


def test_system_search_paging_and_sort_across_types(http, base, data):
    ids = f"{data['p']},{data['pr']},{data['other']}," + ",".join(data["obs"])
    all_ = _get(http, base, _type="Patient,Practitioner,Observation", _id=ids, _sort="-_lastUpdated", _count="100")
    seen, b = [], _get(http, base, _type="Patient,Practitioner,Observation", _id=ids, _sort="-_lastUpdated", _count="2")
    while True:
        seen += [e["fullUrl"] for e in b["entry"]]
        nxt = [link["url"] for link in b["link"] if link["relation"] == "next"]
        if not nxt:
            break
        b = http.get(nxt[0]).json()
    assert seen == [e["fullUrl"] for e in all_["entry"]] and len(seen) == 6


def test_compartment_search(http, base, data):
    b = _get(http, f"{base}/Patient/{data['p']}/Observation")
    assert _by_mode(b)["match"] == {f"Observation/{o}" for o in data["obs"]}
    b = _get(http, f"{base}/Patient/{data['p']}/Observation", date="ge2024-02-01")
    assert _by_mode(b)["match"] == {f"Observation/{o}" for o in data["obs"][1:]}
    b = _get(http, f"{base}/Patient/{data['p']}/*")
    assert _by_mode(b)["match"] == ({f"Observation/{o}" for o in data["obs"]} | {f"DiagnosticReport/{data['dr']}"}
                                    | {f"Patient/{data['p']}"})
    b = _get(http, f"{base}/Patient/{data['other']}/*", _type="Observation")
    assert _by_mode(b)["match"] == {f"Observation/{data['other_obs']}"}
    assert http.get(f"{base}/Patient/{data['p']}/Practitioner").status_code == 400
    assert http.get(f"{base}/Encounter/x/Observation").status_code == 404


# -- strict vs lenient, _explain ---------------------------------------------------------------

def test_strict_vs_lenient_unknown_parameter(http, base, app, data):
    r = http.get(f"{base}/Observation", params={"bogus": "1"}, headers=headers(Prefer="handling=strict"))
    assert_outcome(r, 400)
    b = _get(http, f"{base}/Observation", bogus="1", identifier=f"urn:run|{data['run']}")
    assert "bogus" not in _self(app, base, b) and len(_by_mode(b)["match"]) == 4
    r = http.get(base, params={"_type": "Observation,Patient", "code": "x"}, headers=headers(Prefer="handling=strict"))
    assert_outcome(r, 400)


def test_explain_only_with_the_switch(http, base, app, data):
    b = _get(http, f"{base}/Observation", _id=data["obs"][0], _explain="true")
    issues = [i for e in b["entry"] if e["search"]["mode"] == "outcome" for i in e["resource"]["issue"]]
    # just an unknown parameter: ignored, and named in the Bundle's warning, no SQL
    assert [i["severity"] for i in issues] == ["warning"] and "_explain" in issues[0]["diagnostics"]
    assert "_explain" not in _self(app, base, b)
    app.config["SEARCH_DEBUG_SQL"] = True
    try:
        b = _get(http, f"{base}/Observation", _id=data["obs"][0], _explain="true", _sort="date")
    finally:
        app.config["SEARCH_DEBUG_SQL"] = False
    issues = [i for e in b["entry"] if e["search"]["mode"] == "outcome" for i in e["resource"]["issue"]]
    assert issues and issues[0]["severity"] == "information"
    assert "SELECT" in issues[0]["diagnostics"] and data["obs"][0] in issues[0]["diagnostics"]


def test_summary_count_and_accurate_total_skip_deleted_and_changed(http, base):
    """One-clause counts are taken from the index table alone: deletes and updates must show."""
    run = uid()
    code = {"coding": [{"system": "urn:count", "code": run}]}
    ids = [create(http, base, observation(code=code))["id"] for _ in range(4)]
    assert http.delete(f"{base}/Observation/{ids[0]}").status_code in (200, 204)
    moved = observation(code={"coding": [{"system": "urn:count", "code": run + "-other"}]})
    moved["id"] = ids[1]
    r = http.put(f"{base}/Observation/{ids[1]}", json=moved, headers=headers())
    assert r.status_code == 200, r.text[:500]
    # two codings of the same resource count once
    both = observation(code={"coding": [{"system": "urn:count", "code": run},
                                        {"system": "urn:count2", "code": run}]})
    ids.append(create(http, base, both)["id"])
    assert _get(http, f"{base}/Observation", code=f"urn:count|{run}", _summary="count")["total"] == 3
    assert _get(http, f"{base}/Observation", code=run, _summary="count")["total"] == 3
    b = _get(http, f"{base}/Observation", code=run, _total="accurate", _count="1")
    assert b["total"] == 3
    nxt = [link["url"] for link in b["link"] if link["relation"] == "next"][0]
    assert http.get(nxt).json()["total"] == 3

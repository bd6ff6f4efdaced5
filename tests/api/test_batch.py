"""batch Bundles: each entry succeeds or fails alone, failures carry their OperationOutcome."""

from __future__ import annotations

import orjson
from apihelp import SYS, assert_outcome, create, headers, history_total, observation, patient, uid


def batch(entries: list[dict]) -> dict:
    return {"resourceType": "Bundle", "type": "batch", "entry": entries}


def send(http, base, bundle: dict, **hdrs):
    return http.post(base, data=orjson.dumps(bundle), headers=headers(**hdrs))


def _outcome_codes(entry: dict) -> list[str]:
    oo = entry["response"]["outcome"]
    assert oo["resourceType"] == "OperationOutcome"
    return [i["code"] for i in oo["issue"]]


def test_entries_succeed_or_fail_alone(http, base):
    p = create(http, base, patient())
    good, bad = uid(), uid()
    entries = [
        {"resource": patient(good), "request": {"method": "POST", "url": "Patient"}},
        {"resource": patient(bad, bogus=1), "request": {"method": "POST", "url": "Patient"}},
        {"request": {"method": "GET", "url": f"Patient/{uid()}"}},
        {
            "resource": {**p, "gender": "male"},
            "request": {"method": "PUT", "url": f"Patient/{p['id']}", "ifMatch": 'W/"9"'},
        },
        {
            "resource": observation("Patient/does-not-exist"),
            "request": {"method": "POST", "url": "Observation"},
        },
        {"request": {"method": "GET", "url": f"Patient/{p['id']}"}},
        {"resource": patient(), "request": {"method": "POST", "url": "Claim"}},
        {
            "resource": patient(),
            "request": {"method": "POST", "url": "Patient"},
            "fullUrl": "urn:uuid:8d7a2e2c-0d2b-4b0f-9d5a-0e5c9a1e6f00",
        },
        {"request": {"method": "DELETE", "url": f"Patient/{p['id']}"}},
    ]
    before = history_total(http, base)
    r = send(http, base, batch(entries))
    assert r.status_code == 200, r.text
    b = r.json()
    assert b["resourceType"] == "Bundle" and b["type"] == "batch-response"
    e = b["entry"]
    assert len(e) == len(entries)
    statuses = [x["response"]["status"][:3] for x in e]
    assert statuses == ["201", "400", "404", "412", "422", "200", "404", "201", "204"], statuses
    assert (
        e[0]["response"]["location"].startswith("Patient/") and e[0]["response"]["etag"] == 'W/"1"'
    )
    assert "structure" in _outcome_codes(e[1])
    assert "not-found" in _outcome_codes(e[2])
    assert _outcome_codes(e[3])
    assert "business-rule" in _outcome_codes(e[4])
    assert e[5]["resource"]["id"] == p["id"]
    assert "not-supported" in _outcome_codes(e[6])
    for ok in (0, 5, 7, 8):
        assert "outcome" not in e[ok]["response"]
    # two creates and one delete were written, nothing else
    assert history_total(http, base) == before + 3
    assert http.get(f"{base}/Patient", params={"identifier": f"{SYS}|{good}"}).json()["entry"]
    assert (
        not http.get(f"{base}/Patient", params={"identifier": f"{SYS}|{bad}"}).json().get("entry")
    )
    assert http.get(f"{base}/Patient/{p['id']}").status_code == 410


def test_batch_entry_without_request(http, base):
    v = uid()
    r = send(
        http,
        base,
        batch(
            [
                {"resource": patient()},
                {"resource": patient(v), "request": {"method": "POST", "url": "Patient"}},
            ]
        ),
    )
    assert r.status_code == 200, r.text
    e = r.json()["entry"]
    assert e[0]["response"]["status"].startswith("400")
    assert _outcome_codes(e[0])
    assert e[1]["response"]["status"].startswith("201")


def test_batch_conditional_entries(http, base):
    v = uid()
    existing = create(http, base, patient(v))
    q = f"identifier={SYS}|{v}"
    entries = [
        {"resource": patient(v), "request": {"method": "POST", "url": "Patient", "ifNoneExist": q}},
        {
            "resource": patient(v, gender="male"),
            "request": {"method": "PUT", "url": f"Patient?{q}"},
        },
        {"request": {"method": "GET", "url": f"Patient?{q}"}},
    ]
    r = send(http, base, batch(entries))
    assert r.status_code == 200, r.text
    e = r.json()["entry"]
    assert e[0]["response"]["status"].startswith("200")
    assert e[0]["response"]["location"] == f"Patient/{existing['id']}/_history/1"
    assert e[1]["response"]["status"].startswith("200")
    assert e[1]["response"]["location"] == f"Patient/{existing['id']}/_history/2"
    assert e[2]["resource"]["type"] == "searchset"
    assert len(e[2]["resource"]["entry"]) == 1


def test_batch_prefer_representation(http, base):
    v = uid()
    r = send(
        http,
        base,
        batch([{"resource": patient(v), "request": {"method": "POST", "url": "Patient"}}]),
        Prefer="return=representation",
    )
    e = r.json()["entry"][0]
    assert e["resource"]["identifier"][0]["value"] == v
    assert e["fullUrl"] == f"{base}/Patient/{e['resource']['id']}"


def test_batch_size_limit(http, base):
    before = history_total(http, base)
    entries = [
        {"resource": patient(), "request": {"method": "POST", "url": "Patient"}} for _ in range(201)
    ]
    assert_outcome(send(http, base, batch(entries)), 413)
    assert history_total(http, base) == before


def test_batch_response_content_type(http, base):
    r = send(http, base, batch([]))
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("application/fhir+json")
    assert r.json()["type"] == "batch-response"

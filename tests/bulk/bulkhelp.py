"""Helpers for the bulk export tests (plain functions)."""

from __future__ import annotations

import time
import uuid

import orjson

FHIR_JSON = "application/fhir+json"
ASYNC = {"Accept": FHIR_JSON, "Prefer": "respond-async"}


def uid() -> str:
    return uuid.uuid4().hex[:16]


def post(http, base: str, body: dict) -> dict:
    r = http.post(f"{base}/{body['resourceType']}", data=orjson.dumps(body),
                  headers={"Content-Type": FHIR_JSON, "Accept": FHIR_JSON})
    assert r.status_code == 201, r.text[:1000]
    return r.json()


def patient(http, base: str, tag: str) -> dict:
    return post(http, base, {"resourceType": "Patient", "identifier": [{"system": "urn:test:bulk", "value": tag}],
                             "name": [{"family": "Bulk", "given": [tag]}], "gender": "female"})


def observation(http, base: str, patient_id: str, code: str = "718-7", status: str = "final") -> dict:
    return post(http, base, {
        "resourceType": "Observation", "status": status,
        "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
        "subject": {"reference": f"Patient/{patient_id}"},
        "valueQuantity": {"value": 13.2, "unit": "g/dL", "system": "http://unitsofmeasure.org", "code": "g/dL"},
    })


def report(http, base: str, patient_id: str, obs_ids: list[str]) -> dict:
    return post(http, base, {
        "resourceType": "DiagnosticReport", "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "58410-2"}]},
        "subject": {"reference": f"Patient/{patient_id}"},
        "result": [{"reference": f"Observation/{o}"} for o in obs_ids],
    })


def kick_off(http, url: str, params=None, **headers) -> str:
    r = http.get(url, params=params, headers={**ASYNC, **headers})
    assert r.status_code == 202, r.text[:2000]
    loc = r.headers["Content-Location"]
    assert loc.startswith("http://"), loc
    return loc


def run_worker(app) -> int:
    from app.bulk.worker import Worker

    return Worker(app).run_pending()


def manifest(http, status_url: str) -> dict:
    r = http.get(status_url, headers={"Accept": "application/json"})
    assert r.status_code == 200, (r.status_code, r.text[:2000])
    assert r.headers.get("Expires"), r.headers
    return r.json()


def export(http, app, url: str, params=None, **headers) -> tuple[str, dict]:
    """Kick off, run the worker, return (status url, manifest)."""
    loc = kick_off(http, url, params, **headers)
    run_worker(app)
    return loc, manifest(http, loc)


def download(http, m: dict) -> dict[str, list[dict]]:
    """Every output file's resources by type (checking one type per file and the counts)."""
    out: dict[str, list[dict]] = {}
    for o in m["output"]:
        r = http.get(o["url"], headers={"Accept": "application/fhir+ndjson"})
        assert r.status_code == 200, r.text[:500]
        assert r.headers["Content-Type"] == "application/fhir+ndjson"
        lines = [orjson.loads(x) for x in r.content.splitlines() if x]
        assert len(lines) == o["count"]
        assert {x["resourceType"] for x in lines} == {o["type"]}
        out.setdefault(o["type"], []).extend(lines)
    return out


def ids(resources: list[dict]) -> set[str]:
    return {r["id"] for r in resources}


def wait_done(http, status_url: str, timeout: float = 60) -> dict:
    """Poll as a well-behaved client: honour Retry-After until the manifest arrives."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        r = http.get(status_url, headers={"Accept": "application/json"})
        if r.status_code == 200:
            return r.json()
        assert r.status_code in (202, 429), (r.status_code, r.text[:500])
        time.sleep(float(r.headers.get("Retry-After", "1")))
    raise AssertionError("export did not finish")

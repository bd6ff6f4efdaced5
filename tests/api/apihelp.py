"""Small helpers shared by the HTTP API tests (plain functions, no fixtures)."""

from __future__ import annotations

import uuid

from livehttp import LiveServer  # noqa: F401  (re-exported for the API tests)

FHIR_JSON = "application/fhir+json"
SYS = "urn:test:mrn"
NHS = "https://fhir.nhs.uk/Id/nhs-number"
VALID_NHS = "9434765919"


def uid() -> str:
    return uuid.uuid4().hex[:16]


def patient(value: str | None = None, system: str = SYS, **extra) -> dict:
    body = {
        "resourceType": "Patient",
        "identifier": [{"system": system, "value": value or uid()}],
        "name": [{"family": "Test", "given": ["Ada"]}],
        "gender": "female",
        "birthDate": "1970-01-01",
    }
    body.update(extra)
    return body


def observation(subject: str | None = None, **extra) -> dict:
    body = {
        "resourceType": "Observation",
        "status": "final",
        "code": {
            "coding": [{"system": "http://loinc.org", "code": "718-7", "display": "Hemoglobin"}]
        },
        "valueQuantity": {
            "value": 13.2,
            "unit": "g/dL",
            "system": "http://unitsofmeasure.org",
            "code": "g/dL",
        },
    }
    if subject:
        body["subject"] = {"reference": subject}
    body.update(extra)
    return body


def headers(**extra: str) -> dict:
    h = {"Content-Type": FHIR_JSON, "Accept": FHIR_JSON}
    h.update({k.replace("_", "-"): v for k, v in extra.items()})
    return h


def assert_outcome(resp, status: int, code: str | None = None) -> dict:
    """The response has ``status`` and an OperationOutcome body whose issues include ``code``."""
    assert resp.status_code == status, (resp.status_code, resp.text[:2000])
    assert resp.headers.get("Content-Type", "").startswith(FHIR_JSON), resp.headers.get(
        "Content-Type"
    )
    body = resp.json()
    assert body["resourceType"] == "OperationOutcome", body
    assert body["issue"], body
    if code is not None:
        codes = [i["code"] for i in body["issue"]]
        assert code in codes, (code, body)
    return body


def create(http, base: str, body: dict, **hdrs: str) -> dict:
    r = http.post(f"{base}/{body['resourceType']}", json=body, headers=headers(**hdrs))
    assert r.status_code == 201, r.text[:2000]
    return r.json()


def put(http, base: str, body: dict, **hdrs: str):
    return http.put(
        f"{base}/{body['resourceType']}/{body['id']}", json=body, headers=headers(**hdrs)
    )


def read(http, base: str, ref: str):
    return http.get(f"{base}/{ref}")


def history_total(http, base: str, path: str = "_history") -> int:
    """Total number of stored versions at a history level: every write adds one."""
    r = http.get(f"{base}/{path}", params={"_count": "1"})
    assert r.status_code == 200, r.text[:2000]
    return r.json()["total"]


def search_ids(http, base: str, res_type: str, **params: str) -> list[str]:
    r = http.get(f"{base}/{res_type}", params={**params, "_count": "100"})
    assert r.status_code == 200, r.text[:2000]
    return [
        e["resource"]["id"]
        for e in r.json().get("entry", [])
        if e.get("search", {}).get("mode", "match") == "match"
    ]


def all_pages(http, url: str, params: dict | None = None) -> list[dict]:
    """Follow ``next`` links until exhausted; return every entry."""
    entries: list[dict] = []
    seen_urls: set[str] = set()
    r = http.get(url, params=params)
    while True:
        assert r.status_code == 200, r.text[:2000]
        page = r.json()
        entries.extend(page.get("entry", []))
        nxt = [link["url"] for link in page.get("link", []) if link["relation"] == "next"]
        if not nxt:
            return entries
        assert nxt[0] not in seen_urls, "paging loops"
        seen_urls.add(nxt[0])
        r = http.get(nxt[0])




def link_params(app, base: str, url: str, caller: str = "anonymous") -> dict[str, list[str]]:
    """The search a generated link carries, unsealed with the server's key: ``{name: [values]}``.

    Every search link is ``<path>?_cursor=<opaque>`` and nothing else (decision 0015)."""
    from urllib.parse import parse_qs, urlsplit

    from app.search.paging import open_search

    query = parse_qs(urlsplit(url).query)
    assert set(query) == {"_cursor"}, url
    rel = url.split("?", 1)[0][len(base):].lstrip("/")
    out: dict[str, list[str]] = {}
    for k, v in open_search(app.config["SECRET_KEY"], caller, rel, query["_cursor"][0]).params:
        out.setdefault(k, []).append(v)
    return out

"""No lost update under contention, shown by counting: many clients change the same resources
and every change that was acknowledged is in the final state.

Complements test_concurrency.py (version numbering and conflict codes on one resource):
- If-Match read-modify-write with retries on several resources: the final counters equal the
  number of acknowledged increments;
- JSON Patch without If-Match: the server's own read-modify-write is atomic, so every
  acknowledged ``add`` is present;
- transactions patching two shared resources at once: each acknowledged transaction shows in
  both, never in one only.
"""

from __future__ import annotations

import base64
import json
import threading
from concurrent.futures import ThreadPoolExecutor

import requests
from apihelp import FHIR_JSON, create, headers, patient

CLIENTS = 8
RESOURCES = 3
INCREMENTS = 4
COUNTER = "http://example.org/fhir/StructureDefinition/test-counter"
PATCH_JSON = "application/json-patch+json"


def _counter(body: dict) -> int:
    for ext in body.get("extension", []):
        if ext["url"] == COUNTER:
            return ext["valueInteger"]
    return 0


def _with_counter(body: dict, value: int) -> dict:
    out = {k: v for k, v in body.items() if k != "meta"}
    out["extension"] = [e for e in body.get("extension", []) if e["url"] != COUNTER]
    out["extension"].append({"url": COUNTER, "valueInteger": value})
    return out


def test_if_match_increments_are_never_lost(http, base):
    refs = [f"Patient/{create(http, base, patient())['id']}" for _ in range(RESOURCES)]
    barrier = threading.Barrier(CLIENTS)

    def client(n: int) -> tuple[int, int]:
        s = requests.Session()
        s.headers["Accept"] = FHIR_JSON
        barrier.wait()
        acked = conflicts = 0
        for i in range(INCREMENTS * RESOURCES):
            ref = refs[(n + i) % RESOURCES]
            while True:
                cur = s.get(f"{base}/{ref}")
                assert cur.status_code == 200
                body = cur.json()
                r = s.put(f"{base}/{ref}", json=_with_counter(body, _counter(body) + 1),
                          headers=headers(If_Match=cur.headers["ETag"]))
                if r.status_code == 200:
                    acked += 1
                    break
                assert r.status_code in (409, 412), (r.status_code, r.text[:300])
                assert r.json()["issue"][0]["code"] == "conflict"
                conflicts += 1
        s.close()
        return acked, conflicts

    with ThreadPoolExecutor(CLIENTS) as pool:
        results = list(pool.map(client, range(CLIENTS)))
    assert sum(a for a, _ in results) == CLIENTS * INCREMENTS * RESOURCES
    total = 0
    for ref in refs:
        final = http.get(f"{base}/{ref}").json()
        total += _counter(final)
        # one version per acknowledged increment, none for a refused one
        assert int(final["meta"]["versionId"]) == 1 + _counter(final)
    assert total == CLIENTS * INCREMENTS * RESOURCES


def test_concurrent_patches_without_if_match_all_land(http, base):
    p = create(http, base, patient())
    ref = f"Patient/{p['id']}"
    barrier = threading.Barrier(CLIENTS)

    def client(n: int) -> list[str]:
        s = requests.Session()
        barrier.wait()
        acked = []
        for i in range(INCREMENTS):
            value = f"patch-{n}-{i}"
            op = [{"op": "add", "path": "/identifier/-", "value": {"system": "urn:test:lost", "value": value}}]
            r = s.patch(f"{base}/{ref}", data=json.dumps(op),
                        headers={"Content-Type": PATCH_JSON, "Accept": FHIR_JSON})
            assert r.status_code in (200, 409), (r.status_code, r.text[:300])
            if r.status_code == 200:
                acked.append(value)
            else:
                assert r.json()["issue"][0]["code"] == "conflict"
        s.close()
        return acked

    with ThreadPoolExecutor(CLIENTS) as pool:
        acked = [v for lst in pool.map(client, range(CLIENTS)) for v in lst]
    assert acked, "no patch succeeded"
    final = http.get(f"{base}/{ref}").json()
    present = [i["value"] for i in final["identifier"] if i["system"] == "urn:test:lost"]
    assert sorted(present) == sorted(acked), "an acknowledged patch was lost (or a refused one applied)"
    assert int(final["meta"]["versionId"]) == 1 + len(acked)


MARK = "http://example.org/fhir/StructureDefinition/test-mark"


def _marked_patient() -> dict:
    # identifiers belong to one Patient only (app/identity), so the marks are extensions
    return patient(extension=[{"url": MARK, "valueString": "seed"}])


def _marks(body: dict) -> list[str]:
    return sorted(e["valueString"] for e in body.get("extension", []) if e["url"] == MARK and e["valueString"] != "seed")


def _patch_entry(ref: str, value: str) -> dict:
    op = [{"op": "add", "path": "/extension/-", "value": {"url": MARK, "valueString": value}}]
    return {"resource": {"resourceType": "Binary", "contentType": PATCH_JSON,
                         "data": base64.b64encode(json.dumps(op).encode()).decode()},
            "request": {"method": "PATCH", "url": ref}}


def test_transactions_on_shared_resources_land_whole(http, base):
    a = f"Patient/{create(http, base, _marked_patient())['id']}"
    b = f"Patient/{create(http, base, _marked_patient())['id']}"
    barrier = threading.Barrier(CLIENTS)

    def client(n: int) -> list[str]:
        s = requests.Session()
        barrier.wait()
        acked = []
        for i in range(INCREMENTS):
            value = f"tx-{n}-{i}"
            pair = [a, b] if (n + i) % 2 else [b, a]  # both lock orders
            bundle = {"resourceType": "Bundle", "type": "transaction",
                      "entry": [_patch_entry(ref, value) for ref in pair]}
            r = s.post(base, json=bundle, headers={**headers(), "Prefer": "return=minimal"})
            assert r.status_code in (200, 409), (r.status_code, r.text[:300])
            if r.status_code == 200:
                acked.append(value)
        s.close()
        return acked

    with ThreadPoolExecutor(CLIENTS) as pool:
        acked = sorted(v for lst in pool.map(client, range(CLIENTS)) for v in lst)
    assert acked, "no transaction succeeded"
    for ref in (a, b):
        final = http.get(f"{base}/{ref}").json()
        assert _marks(final) == acked, ref
        assert int(final["meta"]["versionId"]) == 1 + len(acked)

"""Batch/transaction response Bundles carry their own label, and conditional writes cannot
reach a resource the token may not see (docs/decisions/0011-sensitive-results.md).

Real HTTP, real tokens, both databases.  LOINC 7918-6 (HIV) is labelled HIV + R on arrival
(conftest); ``V`` is set by the sender."""

from __future__ import annotations

import pytest
import requests
from protecthelp import (
    ACT,
    CONF,
    HIV_CODE,
    Fhir,
    backend_client,
    observation,
    put_entry,
    token,
    uid,
)

GLUCOSE = "2345-7"
RUN = "urn:test:lab-accession"
REPRESENTATION = {"Prefer": "return=representation"}


def _ident(body: dict, value: str) -> dict:
    return {**body, "identifier": [{"system": RUN, "value": value}]}


def _codes(r) -> list[str]:  # noqa: ANN001
    body = r.json()
    assert body["resourceType"] == "OperationOutcome", body
    return [i["code"] for i in body["issue"]]


@pytest.fixture(scope="module")
def world(protect_app, protect_server):
    app, base = protect_app, protect_server.base
    scope = "system/*.cruds"
    writer = Fhir(base, token(app, backend_client(app, scope), scope))  # no clearance
    cleared = Fhir(base, token(app, backend_client(app, scope, "*"), scope))
    pid = uid("p-")
    ids = {k: uid(k + "-") for k in ("plain", "hiv", "vlab")}
    acc = {k: uid("acc-") for k in ids}
    entries = [
        put_entry({"resourceType": "Patient", "id": pid, "name": [{"family": "Labels"}]}),
        put_entry(_ident(observation(ids["plain"], pid, GLUCOSE), acc["plain"])),
        put_entry(_ident(observation(ids["hiv"], pid, HIV_CODE), acc["hiv"])),
        put_entry(_ident(observation(ids["vlab"], pid, GLUCOSE, [{"system": CONF, "code": "V"}]), acc["vlab"])),
    ]
    r = writer.post("", {"resourceType": "Bundle", "type": "transaction", "entry": entries})
    assert r.status_code == 200, r.text[:2000]
    return {"base": base, "pid": pid, "ids": ids, "acc": acc, "writer": writer, "cleared": cleared}


def _post_entry(res: dict) -> dict:
    return {"fullUrl": f"urn:uuid:{uid()}", "resource": res, "request": {"method": "POST", "url": res["resourceType"]}}


def _new_obs(pid: str, code: str, security: list[dict] | None = None) -> dict:
    body = observation("x", pid, code, security)
    body.pop("id")
    return body


# ---- the Bundle's own label on batch/transaction responses -------------------------------------
@pytest.mark.parametrize("who", ["writer", "cleared"])
def test_transaction_with_representation_is_labelled(world, who) -> None:
    client, pid = world[who], world["pid"]
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        _post_entry(_new_obs(pid, GLUCOSE)),
        _post_entry(_new_obs(pid, GLUCOSE, [{"system": CONF, "code": "R"}])),
    ]}
    r = client.post("", bundle, **REPRESENTATION)
    assert r.status_code == 200, r.text[:1000]
    body = r.json()
    assert body["type"] == "transaction-response"
    assert [e["response"]["status"] for e in body["entry"]] == ["201 Created", "201 Created"]
    assert body["meta"]["security"] == [{"system": CONF, "code": "R"}]  # the R entry's level
    # the same without the resources in the response: nothing to label
    r = client.post("", bundle)
    assert r.status_code == 200, r.text[:1000]
    assert "meta" not in r.json() and "resource" not in r.json()["entry"][1]
    # only normal results: no label
    r = client.post("", {"resourceType": "Bundle", "type": "transaction",
                         "entry": [_post_entry(_new_obs(pid, GLUCOSE))]}, **REPRESENTATION)
    assert r.status_code == 200 and "meta" not in r.json()


def test_transaction_labelled_on_arrival_counts_as_r(world) -> None:
    """A sensitivity label added on arrival (HIV + R) marks the response too, even for a writer
    that may not read the result back."""
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [_post_entry(_new_obs(world["pid"], HIV_CODE))]}
    r = world["writer"].post("", bundle, **REPRESENTATION)
    assert r.status_code == 200, r.text[:1000]
    assert r.json()["meta"]["security"] == [{"system": CONF, "code": "R"}]
    assert {"system": ACT, "code": "HIV"} in r.json()["entry"][0]["resource"]["meta"]["security"]


def test_batch_get_of_a_labelled_resource(world) -> None:
    ids = world["ids"]
    entries = [
        {"request": {"method": "GET", "url": f"Observation/{ids['vlab']}"}},
        {"request": {"method": "GET", "url": f"Observation/{ids['plain']}"}},
    ]
    r = world["cleared"].post("", {"resourceType": "Bundle", "type": "batch", "entry": entries})
    assert r.status_code == 200, r.text[:1000]
    body = r.json()
    assert body["type"] == "batch-response"
    assert [e["response"]["status"] for e in body["entry"]] == ["200 OK", "200 OK"]
    assert body["meta"]["security"] == [{"system": CONF, "code": "V"}]
    # a token not cleared: the V result is not found, and nothing labelled is returned
    r = world["writer"].post("", {"resourceType": "Bundle", "type": "batch", "entry": entries})
    assert r.status_code == 200, r.text[:1000]
    body = r.json()
    assert body["entry"][0]["response"]["status"].startswith("404")
    assert body["entry"][0]["response"]["outcome"]["issue"][0]["code"] == "not-found"
    assert "meta" not in body
    # a search inside a batch counts by its own Bundle label (the HIV + R result: R)
    r = world["cleared"].post("", {"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "GET", "url": f"Observation?_id={ids['hiv']},{ids['plain']}"}}]})
    assert r.status_code == 200, r.text[:1000]
    assert r.json()["entry"][0]["resource"]["meta"]["security"] == [{"system": CONF, "code": "R"}]
    assert r.json()["meta"]["security"] == [{"system": CONF, "code": "R"}]
    # the same reads in a transaction
    r = world["cleared"].post("", {"resourceType": "Bundle", "type": "transaction", "entry": entries})
    assert r.status_code == 200, r.text[:1000]
    assert r.json()["meta"]["security"] == [{"system": CONF, "code": "V"}]


def test_patient_match_bundle_is_labelled(world) -> None:
    """$match answers a searchset Bundle: a restricted Patient among its entries labels it."""
    nhs = "9434765919"
    restricted = {"resourceType": "Patient", "id": uid("rp-"), "meta": {"security": [{"system": CONF, "code": "R"}]},
                  "identifier": [{"system": "https://fhir.nhs.uk/Id/nhs-number", "value": nhs}],
                  "name": [{"family": "Hidden", "given": ["Rhian"]}], "birthDate": "1970-01-01"}
    assert world["cleared"].put(f"Patient/{restricted['id']}", restricted).status_code == 201
    query = {"resourceType": "Parameters", "parameter": [{"name": "resource", "resource": {
        "resourceType": "Patient", "identifier": [{"system": "https://fhir.nhs.uk/Id/nhs-number", "value": nhs}]}}]}
    r = world["cleared"].post("Patient/$match", query)
    assert r.status_code == 200, r.text[:1000]
    assert [e["resource"]["id"] for e in r.json()["entry"]] == [restricted["id"]]
    assert r.json()["meta"]["security"] == [{"system": CONF, "code": "R"}]
    r = world["writer"].post("Patient/$match", query)  # not cleared: not a candidate, no label
    assert r.status_code == 200, r.text[:1000]
    assert not r.json().get("entry") and "meta" not in r.json()


def test_history_bundles_are_labelled(world) -> None:
    r = world["cleared"].get(f"Observation/{world['ids']['vlab']}/_history")
    assert r.status_code == 200, r.text[:500]
    assert r.json()["meta"]["security"] == [{"system": CONF, "code": "V"}]
    r = world["cleared"].get(f"Observation/{world['ids']['plain']}/_history")
    assert r.status_code == 200 and "meta" not in r.json()


# ---- conditional writes that match a withheld resource --------------------------------------------
def _version(world, key: str) -> str:
    r = world["cleared"].get(f"Observation/{world['ids'][key]}")
    assert r.status_code == 200, r.text
    return r.json()["meta"]["versionId"]


def _count(world, key: str) -> int:
    r = world["cleared"].get(f"Observation?identifier={RUN}|{world['acc'][key]}&_summary=count")
    return r.json()["total"]


def _forbidden_without_leak(world, r, key: str) -> None:  # noqa: ANN001
    assert r.status_code == 403, r.text
    assert _codes(r) == ["forbidden"]
    assert world["ids"][key] not in r.text  # neither its id nor its content
    assert "Location" not in r.headers and "ETag" not in r.headers


@pytest.mark.parametrize("key", ["hiv", "vlab"])
def test_conditional_writes_matching_a_withheld_resource_are_refused(world, key) -> None:
    w, pid, acc = world["writer"], world["pid"], world["acc"][key]
    criteria = f"identifier={RUN}|{acc}"
    before = _version(world, key)
    body = _ident(_new_obs(pid, GLUCOSE), acc)

    r = w.post("Observation", body, **{"If-None-Exist": criteria})  # conditional create
    _forbidden_without_leak(world, r, key)
    r = w.put(f"Observation?{criteria}", body)  # conditional update
    _forbidden_without_leak(world, r, key)
    r = requests.patch(f"{world['base']}/Observation?{criteria}", data=b'[{"op":"test","path":"/status","value":"final"}]',
                       headers={**w.h, "Content-Type": "application/json-patch+json"})  # conditional patch
    _forbidden_without_leak(world, r, key)
    r = requests.delete(f"{world['base']}/Observation?{criteria}", headers=w.h)  # conditional delete
    _forbidden_without_leak(world, r, key)

    # inside a transaction: the whole transaction is refused, nothing of it is written
    other = uid("acc-")
    tx = {"resourceType": "Bundle", "type": "transaction", "entry": [
        _post_entry(_ident(_new_obs(pid, GLUCOSE), other)),
        {"resource": body, "request": {"method": "POST", "url": "Observation", "ifNoneExist": criteria}},
    ]}
    r = w.post("", tx)
    _forbidden_without_leak(world, r, key)
    assert world["cleared"].get(f"Observation?identifier={RUN}|{other}&_summary=count").json()["total"] == 0
    tx = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": body, "request": {"method": "PUT", "url": f"Observation?{criteria}"}}]}
    _forbidden_without_leak(world, w.post("", tx), key)
    tx = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"request": {"method": "DELETE", "url": f"Observation?{criteria}"}}]}
    _forbidden_without_leak(world, w.post("", tx), key)

    # in a batch: that entry is refused, the others run
    r = w.post("", {"resourceType": "Bundle", "type": "batch", "entry": [
        {"resource": body, "request": {"method": "POST", "url": "Observation", "ifNoneExist": criteria}},
        {"request": {"method": "GET", "url": f"Observation/{world['ids']['plain']}"}},
    ]})
    assert r.status_code == 200, r.text[:1000]
    out = r.json()["entry"]
    assert out[0]["response"]["status"] == "403"
    assert out[0]["response"]["outcome"]["issue"][0]["code"] == "forbidden"
    assert world["ids"][key] not in str(out[0])
    assert out[1]["response"]["status"] == "200 OK"

    # nothing was created beside it, changed or deleted
    assert _version(world, key) == before
    assert _count(world, key) == 1


def test_conditional_writes_by_a_cleared_token_match_as_before(world) -> None:
    c, pid, acc = world["cleared"], world["pid"], world["acc"]["vlab"]
    body = _ident(_new_obs(pid, GLUCOSE, [{"system": CONF, "code": "V"}]), acc)
    r = c.post("Observation", body, **{"If-None-Exist": f"identifier={RUN}|{acc}"})
    assert r.status_code == 200, r.text
    assert r.json()["id"] == world["ids"]["vlab"]
    assert _count(world, "vlab") == 1


def test_conditional_writes_matching_visible_resources_are_unchanged(world) -> None:
    w, pid, acc = world["writer"], world["pid"], world["acc"]["plain"]
    criteria = f"identifier={RUN}|{acc}"
    r = w.post("Observation", _ident(_new_obs(pid, GLUCOSE), acc), **{"If-None-Exist": criteria})
    assert r.status_code == 200, r.text
    assert r.json()["id"] == world["ids"]["plain"]
    r = w.put(f"Observation?{criteria}", {**_ident(_new_obs(pid, GLUCOSE), acc), "status": "amended"})
    assert r.status_code == 200, r.text
    assert r.json()["id"] == world["ids"]["plain"] and r.json()["status"] == "amended"
    # no match at all: created, as before
    fresh = uid("acc-")
    r = w.post("Observation", _ident(_new_obs(pid, GLUCOSE), fresh), **{"If-None-Exist": f"identifier={RUN}|{fresh}"})
    assert r.status_code == 201, r.text

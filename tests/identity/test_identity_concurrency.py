"""Several clients create the same person at once (real HTTP, one thread per client, each with
its own connection): exactly one Patient is left, on SQLite and on PostgreSQL. Plain creates:
one 201, the others 409 naming the winner. Conditional creates and transactions (how EPRs are
told to send patients): every client gets the one Patient back."""

from __future__ import annotations

import threading
from urllib.parse import quote

import requests
from idhelp import NHS, hdr, nhs_number, observation, patient, uid

CLIENTS = 6


def _race(fn) -> list:
    """Run ``fn(i)`` in CLIENTS threads released together."""
    barrier = threading.Barrier(CLIENTS)
    out: list = [None] * CLIENTS

    def run(i: int) -> None:
        with requests.Session() as s:
            barrier.wait()
            out[i] = fn(s, i)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return out


def _patients(http, base, n):
    r = http.get(f"{base}/Patient", params={"identifier": f"{NHS}|{n}"})
    return [e["resource"]["id"] for e in r.json().get("entry", [])]


def test_concurrent_plain_creates_leave_one_patient(server, http):
    base, n = server.base, nhs_number()
    results = _race(lambda s, i: s.post(f"{base}/Patient", json=patient(n, given=f"G{i}"), headers=hdr()))
    statuses = sorted(r.status_code for r in results)
    assert statuses.count(201) == 1, [r.text[:300] for r in results]
    assert statuses.count(409) == CLIENTS - 1, statuses
    ids = _patients(http, base, n)
    assert len(ids) == 1
    for r in results:
        if r.status_code == 409:
            assert f"Patient/{ids[0]}" in r.text


def test_concurrent_conditional_creates_all_get_the_one_patient(server, http):
    base, n = server.base, nhs_number()
    cond = f"identifier={quote(NHS)}|{n}"
    results = _race(lambda s, i: s.post(f"{base}/Patient", json=patient(n), headers=hdr(If_None_Exist=cond)))
    assert sorted(r.status_code for r in results).count(201) == 1, [r.text[:300] for r in results]
    assert all(r.status_code in (200, 201) for r in results), [r.text[:300] for r in results]
    ids = _patients(http, base, n)
    assert len(ids) == 1
    assert {r.json()["id"] for r in results} == set(ids)


def test_concurrent_conditional_transactions_converge(server, http):
    base, n, run = server.base, nhs_number(), uid()
    q = f"identifier={quote(NHS)}|{n}"

    def send(s, i):
        bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
            {"fullUrl": "urn:uuid:p", "resource": patient(n, mrn=(f"https://hospital-{i}.example/Id/mrn", uid())),
             "request": {"method": "PUT", "url": f"Patient?{q}"}},
            {"resource": observation("urn:uuid:p", run=run), "request": {"method": "POST", "url": "Observation"}},
        ]}
        return s.post(base, json=bundle, headers=hdr())

    results = _race(send)
    assert all(r.status_code == 200 for r in results), [r.text[:300] for r in results]
    ids = _patients(http, base, n)
    assert len(ids) == 1
    obs = http.get(f"{base}/Observation", params={"identifier": f"urn:test:run|{run}"}).json()["entry"]
    assert len(obs) == CLIENTS
    assert {e["resource"]["subject"]["reference"] for e in obs} == {f"Patient/{ids[0]}"}

"""Sensitive results are withheld on every path unless the token's client (and user) is cleared.

Real HTTP, real tokens from the token store, both databases.  The data is written by a writer
with no clearance at all (writes are governed by scopes only), through a transaction, so the
HIV result is labelled on arrival (conftest: LOINC 7918-6 -> HIV + R)."""

from __future__ import annotations

import orjson
import pytest
from protecthelp import (
    ACT,
    CHLAMYDIA_CODE,
    CONF,
    HIV_CODE,
    Fhir,
    backend_client,
    observation,
    put_entry,
    security_of,
    token,
    uid,
)

GLUCOSE = "2345-7"


@pytest.fixture(scope="module")
def world(protect_app, protect_server):
    app, base = protect_app, protect_server.base
    writer_id = backend_client(app, "system/*.cruds")  # no clearance
    w = Fhir(base, token(app, writer_id, "system/*.cruds"))
    p1, p2 = uid("p1-"), uid("p2-")
    ids = {k: uid(k + "-") for k in ("plain", "hiv", "vlab", "std", "later", "unlabelled", "p2hiv")}
    dr = uid("dr-")
    entries = [
        put_entry({"resourceType": "Patient", "id": p1, "name": [{"family": "Protect"}]}),
        put_entry({"resourceType": "Patient", "id": p2, "name": [{"family": "Other"}]}),
        put_entry(observation(ids["plain"], p1, GLUCOSE)),
        put_entry(observation(ids["hiv"], p1, HIV_CODE)),  # labelled on arrival: HIV + R
        put_entry(observation(ids["vlab"], p1, GLUCOSE, [{"system": CONF, "code": "V"}])),
        put_entry(observation(ids["std"], p1, CHLAMYDIA_CODE)),  # labelled on arrival: STD
        put_entry(observation(ids["later"], p1, GLUCOSE)),
        put_entry(observation(ids["unlabelled"], p1, GLUCOSE, [{"system": CONF, "code": "R"}])),
        put_entry(observation(ids["p2hiv"], p2, HIV_CODE)),
        put_entry({"resourceType": "DiagnosticReport", "id": dr, "status": "final",
                   "code": {"coding": [{"system": "http://loinc.org", "code": "58410-2"}]},
                   "subject": {"reference": f"Patient/{p1}"},
                   "result": [{"reference": f"Observation/{ids['plain']}"},
                              {"reference": f"Observation/{ids['hiv']}"}]}),
    ]
    r = w.post("", {"resourceType": "Bundle", "type": "transaction", "entry": entries})
    assert r.status_code == 200, r.text[:2000]
    # "later": labelled V by an update (version 2); "unlabelled": its R label removed (version 2)
    r = w.put(f"Observation/{ids['later']}", observation(ids["later"], p1, GLUCOSE, [{"system": CONF, "code": "V"}]))
    assert r.status_code == 200, r.text
    # (removing a label takes a writer cleared for it: an uncleared one is refused, test_withheld_writes)
    w_cleared = Fhir(base, token(app, backend_client(app, "system/*.cruds", "R"), "system/*.cruds"))
    r = w_cleared.put(f"Observation/{ids['unlabelled']}", observation(ids["unlabelled"], p1, GLUCOSE))
    assert r.status_code == 200, r.text

    scope = "system/*.rs"
    analyst = Fhir(base, token(app, backend_client(app, scope), scope))  # no clearance
    cleared = Fhir(base, token(app, backend_client(app, scope, "*"), scope))
    hiv_only = Fhir(base, token(app, backend_client(app, scope, "HIV R"), scope))
    return {"p1": p1, "p2": p2, "dr": dr, "ids": ids, "analyst": analyst, "cleared": cleared,
            "hiv_only": hiv_only, "writer": w, "base": base}


def _obs(world, *keys: str) -> set[str]:
    return {f"Observation/{world['ids'][k]}" for k in keys}


ALL_P1 = ("plain", "hiv", "vlab", "std", "later", "unlabelled")


def test_labelled_on_arrival_through_a_transaction(world) -> None:
    r = world["cleared"].get(f"Observation/{world['ids']['hiv']}")
    assert r.status_code == 200
    assert {(ACT, "HIV"), (CONF, "R")} <= security_of(r.json())
    r = world["cleared"].get(f"Observation/{world['ids']['std']}")
    assert security_of(r.json()) == {(ACT, "STD")}
    r = world["cleared"].get(f"Observation/{world['ids']['plain']}")
    assert security_of(r.json()) == set()


def test_read_of_a_withheld_resource_is_not_found(world) -> None:
    for key in ("hiv", "vlab", "std", "later", "p2hiv"):
        r = world["analyst"].get(f"Observation/{world['ids'][key]}")
        assert r.status_code == 404, (key, r.text)
        assert r.json()["issue"][0]["code"] == "not-found"
    assert world["analyst"].get(f"Observation/{world['ids']['plain']}").status_code == 200
    assert world["analyst"].get(f"Observation/{world['ids']['unlabelled']}").status_code == 200  # label removed


def test_clearance_allows_exactly_its_labels(world) -> None:
    for key in ("hiv", "vlab", "std", "later"):
        assert world["cleared"].get(f"Observation/{world['ids'][key]}").status_code == 200, key
    hiv_only = world["hiv_only"]
    assert hiv_only.get(f"Observation/{world['ids']['hiv']}").status_code == 200  # HIV + R: both cleared
    assert hiv_only.get(f"Observation/{world['ids']['vlab']}").status_code == 404  # V: not cleared
    assert hiv_only.get(f"Observation/{world['ids']['std']}").status_code == 404  # STD: not cleared


def test_vread(world) -> None:
    hiv = world["ids"]["hiv"]
    assert world["analyst"].get(f"Observation/{hiv}/_history/1").status_code == 404
    assert world["cleared"].get(f"Observation/{hiv}/_history/1").status_code == 200
    # version 1 of "unlabelled" carried R: its vread stays withheld though the current one is not
    un = world["ids"]["unlabelled"]
    assert world["analyst"].get(f"Observation/{un}/_history/1").status_code == 404
    assert world["analyst"].get(f"Observation/{un}/_history/2").status_code == 200


def test_search_and_counts(world) -> None:
    p1 = world["p1"]
    got = set(world["analyst"].ids(f"Observation?subject=Patient/{p1}"))
    assert got == _obs(world, "plain", "unlabelled")
    r = world["analyst"].get(f"Observation?subject=Patient/{p1}&_total=accurate&_count=1")
    assert r.json()["total"] == 2  # the count is compiled with the same predicate
    r = world["analyst"].get(f"Observation?subject=Patient/{p1}&_summary=count")
    assert r.json()["total"] == 2
    assert set(world["cleared"].ids(f"Observation?subject=Patient/{p1}")) == _obs(world, *ALL_P1)
    assert set(world["hiv_only"].ids(f"Observation?subject=Patient/{p1}")) == _obs(world, "plain", "hiv", "unlabelled")
    # several labels from two systems in one search (grouped per system in the SQL)
    got = set(world["cleared"].ids(f"Observation?subject=Patient/{p1}&_security={ACT}|HIV,{CONF}|V,{ACT}|STD"))
    assert got == _obs(world, "hiv", "vlab", "std", "later")
    # searching for the label itself finds nothing withheld
    assert world["analyst"].ids(f"Observation?_security={ACT}|HIV") == []
    assert world["analyst"].ids(f"Observation?code=http://loinc.org|{HIV_CODE}") == []


def test_paging_counts_whole_pages(world) -> None:
    """Withholding is in the query, so pages are full and the links walk every visible row."""
    seen: list[str] = []
    r = world["analyst"].get(f"Observation?subject=Patient/{world['p1']}&_count=1")
    while True:
        body = r.json()
        seen += [e["resource"]["id"] for e in body.get("entry", [])]
        nxt = [link["url"] for link in body["link"] if link["relation"] == "next"]
        if not nxt:
            break
        assert len(body["entry"]) == 1
        r = world["analyst"].get(nxt[0])
    assert sorted(seen) == sorted([world["ids"]["plain"], world["ids"]["unlabelled"]])


def test_bundle_label_is_the_high_water_mark(world) -> None:
    p1 = world["p1"]
    r = world["cleared"].get(f"Observation?subject=Patient/{p1}")
    assert r.json()["meta"]["security"] == [{"system": CONF, "code": "V"}]
    r = world["hiv_only"].get(f"Observation?subject=Patient/{p1}")
    assert r.json()["meta"]["security"] == [{"system": CONF, "code": "R"}]  # HIV + R entry
    r = world["cleared"].get(f"Observation?_id={world['ids']['std']}")
    assert r.json()["meta"]["security"] == [{"system": CONF, "code": "R"}]  # a sensitivity label alone = R
    r = world["analyst"].get(f"Observation?subject=Patient/{p1}")
    assert "meta" not in r.json()  # nothing labelled in it


def test_include_and_revinclude(world) -> None:
    dr, p1 = world["dr"], world["p1"]
    q = f"DiagnosticReport?_id={dr}&_include=DiagnosticReport:result"
    assert set(world["analyst"].ids(q, "include")) == _obs(world, "plain")
    assert set(world["cleared"].ids(q, "include")) == _obs(world, "plain", "hiv")
    q = f"Patient?_id={p1}&_revinclude=Observation:subject"
    assert set(world["analyst"].ids(q, "include")) == _obs(world, "plain", "unlabelled")
    assert set(world["cleared"].ids(q, "include")) == _obs(world, *ALL_P1)
    q = f"Observation?_id={world['ids']['plain']}&_include=Observation:subject&_revinclude=DiagnosticReport:result"
    assert world["analyst"].ids(q, "include") != []


def test_chain_and_has(world) -> None:
    p1, p2 = world["p1"], world["p2"]
    q = f"Patient?_has:Observation:subject:code=http://loinc.org|{HIV_CODE}"
    assert world["analyst"].ids(q) == []  # who had an HIV test is not revealed through _has
    assert set(world["cleared"].ids(q)) == {f"Patient/{p1}", f"Patient/{p2}"}
    q = f"DiagnosticReport?result.code=http://loinc.org|{HIV_CODE}"
    assert world["analyst"].ids(q) == []
    assert world["cleared"].ids(q) == [f"DiagnosticReport/{world['dr']}"]


def test_compartment_search(world) -> None:
    p1 = world["p1"]
    assert set(world["analyst"].ids(f"Patient/{p1}/Observation")) == _obs(world, "plain", "unlabelled")
    got = set(world["analyst"].ids(f"Patient/{p1}/*"))
    assert not got & _obs(world, "hiv", "vlab", "std", "later")
    assert _obs(world, "plain") <= got
    assert _obs(world, "hiv") <= set(world["cleared"].ids(f"Patient/{p1}/*"))


def test_history(world) -> None:
    ids = world["ids"]
    # instance history of a withheld resource: not found, like its read
    for key in ("hiv", "later", "unlabelled"):  # "unlabelled": an older version carried R
        r = world["analyst"].get(f"Observation/{ids[key]}/_history")
        assert r.status_code == 404, key
    r = world["cleared"].get(f"Observation/{ids['unlabelled']}/_history")
    assert r.status_code == 200 and len(r.json()["entry"]) == 2
    # type and system history leave withheld versions out
    for path in ("Observation/_history?_count=1000", "_history?_count=1000"):
        r = world["analyst"].get(path)
        assert r.status_code == 200, r.text
        shown = {(e["resource"]["id"], e["resource"]["meta"]["versionId"]) for e in r.json()["entry"] if "resource" in e}
        for key in ("hiv", "vlab", "std", "p2hiv"):
            assert not any(i == ids[key] for i, _v in shown), key
        assert not any(i == ids["later"] for i, _v in shown)  # current version labelled: all versions hidden
        assert (ids["unlabelled"], "2") in shown and (ids["unlabelled"], "1") not in shown
        assert (ids["plain"], "1") in shown
        assert "total" not in r.json()
        r = world["cleared"].get(path)
        shown = {(e["resource"]["id"], e["resource"]["meta"]["versionId"]) for e in r.json()["entry"] if "resource" in e}
        assert {(ids["hiv"], "1"), (ids["later"], "2"), (ids["unlabelled"], "1")} <= shown
        assert r.json()["meta"]["security"] == [{"system": CONF, "code": "V"}]


def test_batch_and_transaction_reads(world) -> None:
    ids, p1 = world["ids"], world["p1"]
    entries = [
        {"request": {"method": "GET", "url": f"Observation/{ids['hiv']}"}},
        {"request": {"method": "GET", "url": f"Observation/{ids['plain']}"}},
        {"request": {"method": "GET", "url": f"Observation?subject=Patient/{p1}"}},
    ]
    for kind in ("batch", "transaction"):
        r = world["analyst"].post("", {"resourceType": "Bundle", "type": kind, "entry": entries})
        if kind == "transaction" and r.status_code == 404:
            assert r.json()["issue"][0]["code"] == "not-found"  # a failed entry fails the transaction
            continue
        assert r.status_code == 200, r.text[:1000]
        out = r.json()["entry"]
        assert out[0]["response"]["status"].startswith("404")
        assert out[1]["response"]["status"].startswith("200")
        found = {f"Observation/{e['resource']['id']}" for e in out[2]["resource"].get("entry", [])}
        assert found == _obs(world, "plain", "unlabelled")
    r = world["cleared"].post("", {"resourceType": "Bundle", "type": "batch", "entry": entries})
    assert r.json()["entry"][0]["response"]["status"].startswith("200")


def test_writes_are_not_withheld(world) -> None:
    """A source system writes labelled results without read clearance (scopes govern writes)."""
    oid = uid("w-")
    r = world["writer"].put(f"Observation/{oid}", observation(oid, world["p1"], HIV_CODE))
    assert r.status_code == 201, r.text
    assert world["writer"].get(f"Observation/{oid}").status_code == 404  # but it cannot read it back
    assert world["cleared"].get(f"Observation/{oid}").status_code == 200


def test_bulk_export(world, protect_app) -> None:
    from app.bulk.worker import Worker

    def export(client: Fhir) -> set[str]:
        r = client.get("$export?_type=Observation", Prefer="respond-async")
        assert r.status_code == 202, r.text[:1000]
        status = r.headers["Content-Location"]
        Worker(protect_app).run_pending()
        m = client.get(status, Accept="application/json")
        assert m.status_code == 200, m.text[:500]
        out: set[str] = set()
        for o in m.json()["output"]:
            f = client.get(o["url"], Accept="application/fhir+ndjson")
            assert f.status_code == 200
            out |= {orjson.loads(line)["id"] for line in f.content.splitlines() if line.strip()}
        return out

    ids = world["ids"]
    got = export(world["analyst"])
    assert ids["plain"] in got and ids["unlabelled"] in got
    assert not {ids[k] for k in ("hiv", "vlab", "std", "later", "p2hiv")} & got
    got = export(world["cleared"])
    assert {ids[k] for k in ("hiv", "vlab", "std", "later", "p2hiv", "plain")} <= got

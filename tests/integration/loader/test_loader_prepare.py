"""The file -> transaction rules of app.loader.prepare (no database needed)."""

from __future__ import annotations

from app.loader.files import RawUnit
from app.loader.prepare import prepare

ENABLED = frozenset({"Patient", "Observation", "Encounter", "Organization"})


def unit(body: object, kind: str = "json") -> RawUnit:
    return RawUnit("f.json", "f.json", kind, body=body, first_line=1 if kind == "ndjson" else None)


def tx(entries: list[dict], kind: str = "transaction") -> dict:
    return {"resourceType": "Bundle", "type": kind, "entry": entries}


def test_post_with_id_becomes_put_and_unknown_types_are_dropped():
    b = tx(
        [
            {
                "fullUrl": "urn:uuid:p",
                "resource": {"resourceType": "Patient", "id": "p"},
                "request": {"method": "POST", "url": "Patient"},
            },
            {
                "fullUrl": "urn:uuid:c",
                "resource": {"resourceType": "Claim", "id": "c"},
                "request": {"method": "POST", "url": "Claim"},
            },
            {
                "resource": {"resourceType": "Observation"},
                "request": {"method": "POST", "url": "Observation"},
            },
            {
                "resource": {"resourceType": "Observation", "id": "o"},
                "request": {
                    "method": "POST",
                    "url": "Observation",
                    "ifNoneExist": "identifier=x|1",
                },
            },
        ]
    )
    p = prepare(unit(b), ENABLED)
    reqs = [e["request"] for e in p.bundle["entry"]]
    assert {"method": "PUT", "url": "Patient/p"} in reqs
    assert {"method": "POST", "url": "Observation"} in reqs  # no id: stays a create
    assert any(r.get("ifNoneExist") and r["method"] == "POST" for r in reqs)  # conditional kept
    assert p.skipped == {"Claim": 1} and p.resources == 3
    assert p.bundle["entry"][-1]["fullUrl"] == "urn:uuid:p"  # PUTs last, fullUrl kept


def test_references_to_dropped_entries_become_type_and_id():
    b = tx(
        [
            {
                "fullUrl": "urn:uuid:cond",
                "resource": {"resourceType": "Condition", "id": "cond-1"},
                "request": {"method": "POST", "url": "Condition"},
            },
            {
                "fullUrl": "urn:uuid:enc",
                "resource": {
                    "resourceType": "Encounter",
                    "id": "e",
                    "reasonReference": [{"reference": "urn:uuid:cond"}],
                },
                "request": {"method": "POST", "url": "Encounter"},
            },
        ]
    )
    p = prepare(unit(b), ENABLED)
    assert p.bundle["entry"][0]["resource"]["reasonReference"] == [
        {"reference": "Condition/cond-1"}
    ]


def test_batch_collection_single_and_ndjson_become_transactions():
    batch = tx(
        [
            {
                "resource": {"resourceType": "Patient"},
                "request": {"method": "POST", "url": "Patient"},
            }
        ],
        "batch",
    )
    assert prepare(unit(batch), ENABLED).bundle["type"] == "transaction"
    coll = {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [
            {"resource": {"resourceType": "Patient", "id": "a"}, "search": {"mode": "match"}},
            {"resource": {"resourceType": "OperationOutcome"}},
        ],
    }
    p = prepare(unit(coll), ENABLED)
    assert [e["request"] for e in p.bundle["entry"]] == [{"method": "PUT", "url": "Patient/a"}]
    assert p.skipped == {"OperationOutcome": 1}
    single = prepare(unit({"resourceType": "Organization", "id": "org"}), ENABLED)
    assert single.bundle["entry"][0]["request"] == {"method": "PUT", "url": "Organization/org"}
    nd = prepare(
        unit([{"resourceType": "Patient", "id": "1"}, {"resourceType": "Patient"}], "ndjson"),
        ENABLED,
    )
    assert nd.resources == 2 and nd.by_type == {"Patient": 2}


def test_unloadable_inputs_say_why():
    assert "no resourceType" in prepare(unit([1, 2]), ENABLED).error
    assert "line 2" in prepare(unit([{"resourceType": "Patient"}, "x"], "ndjson"), ENABLED).error
    doc = prepare(unit({"resourceType": "Bundle", "type": "message", "entry": []}), ENABLED)
    assert doc.bundle is None and doc.skipped == {"Bundle (message)": 1}
    skipped_only = prepare(unit({"resourceType": "Claim", "id": "c"}), ENABLED)
    assert skipped_only.bundle is None and skipped_only.skipped == {"Claim": 1}

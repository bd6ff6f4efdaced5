"""transaction Bundles: atomicity, processing order, urn:uuid and conditional references."""

from __future__ import annotations

import base64
import uuid
from urllib.parse import quote

import orjson
from apihelp import SYS, assert_outcome, create, headers, history_total, observation, patient, uid


def urn() -> str:
    return f"urn:uuid:{uuid.uuid4()}"


def tx(entries: list[dict], kind: str = "transaction") -> dict:
    return {"resourceType": "Bundle", "type": kind, "entry": entries}


def post_entry(resource: dict, full_url: str | None = None, **req) -> dict:
    e = {
        "resource": resource,
        "request": {"method": "POST", "url": resource["resourceType"], **req},
    }
    if full_url:
        e["fullUrl"] = full_url
    return e


def put_entry(resource: dict, url: str | None = None, **req) -> dict:
    return {
        "resource": resource,
        "request": {
            "method": "PUT",
            "url": url or f"{resource['resourceType']}/{resource['id']}",
            **req,
        },
    }


def send(http, base, bundle: dict, **hdrs):
    return http.post(base, data=orjson.dumps(bundle), headers=headers(**hdrs))


def ident(v: str) -> str:
    return f"identifier={quote(SYS)}|{v}"


def assert_nothing_written(http, base, before: int, idents: list[str]) -> None:
    assert history_total(http, base) == before
    for v in idents:
        r = http.get(f"{base}/Patient", params={"identifier": f"{SYS}|{v}"})
        assert r.status_code == 200
        assert not r.json().get("entry"), v


def test_urn_uuid_resolution_everywhere(http, base):
    pu, ou = urn(), urn()
    v = uid()
    pat = patient(v)
    obs = observation(
        pu,
        extension=[
            {
                "url": "http://example.org/fhir/StructureDefinition/about",
                "valueReference": {"reference": pu},
            }
        ],
        text={
            "status": "generated",
            "div": f'<div xmlns="http://www.w3.org/1999/xhtml">About <a href="{pu}">the patient</a></div>',
        },
    )
    report = {
        "resourceType": "DiagnosticReport",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "58410-2"}]},
        "subject": {"reference": pu},
        "result": [{"reference": ou}],
    }
    # the report comes first: references may point forward in the Bundle
    bundle = tx([post_entry(report, urn()), post_entry(obs, ou), post_entry(pat, pu)])
    r = send(http, base, bundle)
    assert r.status_code == 200, r.text
    b = r.json()
    assert b["resourceType"] == "Bundle" and b["type"] == "transaction-response"
    assert len(b["entry"]) == 3
    locs = []
    for e, t in zip(b["entry"], ["DiagnosticReport", "Observation", "Patient"], strict=True):
        resp = e["response"]
        assert resp["status"].startswith("201")
        assert resp["location"].startswith(f"{t}/") and resp["location"].endswith("/_history/1")
        assert resp["etag"] == 'W/"1"'
        locs.append(resp["location"].split("/_history")[0])
    rep_ref, obs_ref, pat_ref = locs
    got_obs = http.get(f"{base}/{obs_ref}").json()
    assert got_obs["subject"] == {"reference": pat_ref}
    assert got_obs["extension"][0]["valueReference"] == {"reference": pat_ref}
    assert f'href="{pat_ref}"' in got_obs["text"]["div"]
    assert "urn:uuid" not in orjson.dumps(got_obs).decode()
    got_rep = http.get(f"{base}/{rep_ref}").json()
    assert got_rep["subject"] == {"reference": pat_ref}
    assert got_rep["result"] == [{"reference": obs_ref}]
    assert http.get(f"{base}/{pat_ref}").json()["identifier"][0]["value"] == v


def test_unresolved_urn_uuid_reference_fails(http, base):
    before = history_total(http, base)
    v = uid()
    r = send(http, base, tx([post_entry(patient(v), urn()), post_entry(observation(urn()))]))
    assert r.status_code in (400, 422), r.text
    assert_outcome(r, r.status_code)
    assert_nothing_written(http, base, before, [v])


def test_processing_order_get_sees_writes(http, base):
    p = create(http, base, patient())
    v = uid()
    bundle = tx(
        [
            {"request": {"method": "GET", "url": f"Patient/{p['id']}"}},
            {"request": {"method": "GET", "url": f"Patient?identifier={quote(SYS)}|{v}"}},
            put_entry({**p, "gender": "male"}),
            post_entry(patient(v)),
        ]
    )
    r = send(http, base, bundle)
    assert r.status_code == 200, r.text
    e = r.json()["entry"]
    assert [x["response"]["status"][:3] for x in e] == ["200", "200", "200", "201"]
    # GETs run last, after the PUT and POST listed after them
    assert e[0]["resource"]["gender"] == "male"
    assert e[0]["resource"]["meta"]["versionId"] == "2"
    assert e[0]["response"]["etag"] == 'W/"2"'
    search = e[1]["resource"]
    assert search["resourceType"] == "Bundle" and search["type"] == "searchset"
    assert [x["resource"]["identifier"][0]["value"] for x in search["entry"]] == [v]
    assert e[2]["response"]["location"] == f"Patient/{p['id']}/_history/2"


def test_processing_order_delete_before_post(http, base):
    """DELETE runs before POST: a POST cannot reference what the same transaction deletes."""
    p = create(http, base, patient())
    before = history_total(http, base)
    bundle = tx(
        [
            post_entry(observation(f"Patient/{p['id']}")),
            {"request": {"method": "DELETE", "url": f"Patient/{p['id']}"}},
        ]
    )
    r = send(http, base, bundle)
    # processed in request order the DELETE would hit the new Observation's reference (409);
    # in the spec's order the delete succeeds and the POST then references a deleted Patient (422)
    assert_outcome(r, 422, "business-rule")
    assert history_total(http, base) == before
    assert http.get(f"{base}/Patient/{p['id']}").status_code == 200


def test_delete_put_and_response_in_request_order(http, base):
    a = create(http, base, patient())
    b = create(http, base, patient())
    v = uid()
    bundle = tx(
        [
            put_entry({**a, "gender": "male"}),
            {"request": {"method": "DELETE", "url": f"Patient/{b['id']}"}},
            post_entry(patient(v)),
            put_entry(patient(id=f"tx-{v}"), url=f"Patient/tx-{v}"),
        ]
    )
    r = send(http, base, bundle)
    assert r.status_code == 200, r.text
    e = r.json()["entry"]
    assert e[0]["response"]["status"].startswith("200") and e[0]["response"]["etag"] == 'W/"2"'
    assert e[1]["response"]["status"].startswith("204")
    assert e[2]["response"]["status"].startswith("201")
    assert e[3]["response"]["status"].startswith("201")
    assert e[3]["response"]["location"] == f"Patient/tx-{v}/_history/1"
    assert http.get(f"{base}/Patient/{b['id']}").status_code == 410
    assert http.get(f"{base}/Patient/tx-{v}").status_code == 200


def test_invalid_resource_rolls_back_everything(http, base):
    p = create(http, base, patient())
    v1, v2 = uid(), uid()
    before = history_total(http, base)
    bundle = tx(
        [
            post_entry(patient(v1)),
            put_entry({**p, "gender": "male"}),
            post_entry(patient(v2, bogus=True)),
        ]
    )
    oo = assert_outcome(send(http, base, bundle), 400)
    assert any("Bundle.entry[2]" in x for i in oo["issue"] for x in i.get("expression", [])), oo
    assert_nothing_written(http, base, before, [v1, v2])
    assert http.get(f"{base}/Patient/{p['id']}").json() == p


def test_missing_reference_rolls_back_everything(http, base):
    v = uid()
    pu = urn()
    before = history_total(http, base)
    bundle = tx(
        [
            post_entry(patient(v), pu),
            post_entry(observation(pu)),
            post_entry(observation("Patient/does-not-exist")),
        ]
    )
    assert_outcome(send(http, base, bundle), 422, "business-rule")
    assert_nothing_written(http, base, before, [v])


def test_if_match_mismatch_rolls_back_everything(http, base):
    p = create(http, base, patient())
    q = create(http, base, patient())
    v = uid()
    before = history_total(http, base)
    bundle = tx(
        [
            post_entry(patient(v)),
            {"request": {"method": "DELETE", "url": f"Patient/{q['id']}"}},
            put_entry({**p, "gender": "male"}, ifMatch='W/"3"'),
        ]
    )
    assert_outcome(send(http, base, bundle), 412)
    assert_nothing_written(http, base, before, [v])
    assert http.get(f"{base}/Patient/{q['id']}").status_code == 200
    assert http.get(f"{base}/Patient/{p['id']}").json() == p
    # with the right version it goes through
    bundle["entry"][2]["request"]["ifMatch"] = 'W/"1"'
    r = send(http, base, bundle)
    assert r.status_code == 200, r.text
    assert http.get(f"{base}/Patient/{p['id']}").json()["gender"] == "male"


def test_failing_get_rolls_back(http, base):
    v = uid()
    before = history_total(http, base)
    bundle = tx([post_entry(patient(v)), {"request": {"method": "GET", "url": f"Patient/{uid()}"}}])
    r = send(http, base, bundle)
    assert_outcome(r, 404, "not-found")
    assert_nothing_written(http, base, before, [v])


def test_conditional_reference_resolved(http, base):
    v = uid()
    p = create(http, base, patient(v))
    obs = observation(f"Patient?{ident(v)}", hasMember=None)
    obs.pop("hasMember")
    r = send(http, base, tx([post_entry(obs)]))
    assert r.status_code == 200, r.text
    loc = r.json()["entry"][0]["response"]["location"].split("/_history")[0]
    assert http.get(f"{base}/{loc}").json()["subject"] == {"reference": f"Patient/{p['id']}"}


def test_conditional_reference_zero_or_many_fails(http, base):
    v_none, v_two = uid(), uid()
    # two Patients cannot share an identifier (decision 0009): these two share a family name
    create(http, base, patient(name=[{"family": v_two}]))
    create(http, base, patient(name=[{"family": v_two}]))
    for query in (ident(v_none), f"family={v_two}"):
        w = uid()
        before = history_total(http, base)
        r = send(
            http, base, tx([post_entry(patient(w)), post_entry(observation(f"Patient?{query}"))])
        )
        assert_outcome(r, 412)
        assert_nothing_written(http, base, before, [w])


def test_conditional_reference_to_unknown_parameter_fails(http, base):
    before = history_total(http, base)
    r = send(http, base, tx([post_entry(observation("Patient?no-such-param=1"))]))
    assert r.status_code == 400, r.text
    assert_outcome(r, 400)
    assert history_total(http, base) == before


def test_if_none_exist_in_transaction(http, base):
    v = uid()
    existing = create(http, base, patient(v))
    pu = urn()
    before = history_total(http, base)
    bundle = tx([post_entry(patient(v), pu, ifNoneExist=ident(v)), post_entry(observation(pu))])
    r = send(http, base, bundle)
    assert r.status_code == 200, r.text
    e = r.json()["entry"]
    assert e[0]["response"]["status"].startswith("200")
    assert e[0]["response"]["location"] == f"Patient/{existing['id']}/_history/1"
    assert e[1]["response"]["status"].startswith("201")
    obs_ref = e[1]["response"]["location"].split("/_history")[0]
    assert http.get(f"{base}/{obs_ref}").json()["subject"] == {
        "reference": f"Patient/{existing['id']}"
    }
    assert history_total(http, base) == before + 1
    # no match: created
    w = uid()
    r = send(http, base, tx([post_entry(patient(w), urn(), ifNoneExist=ident(w))]))
    assert r.json()["entry"][0]["response"]["status"].startswith("201")
    # several matches: the whole transaction fails (two Patients cannot share an identifier,
    # decision 0009: these two share a family name)
    create(http, base, patient(name=[{"family": w}]))
    create(http, base, patient(name=[{"family": w}]))
    before = history_total(http, base)
    r = send(
        http,
        base,
        tx([post_entry(patient(uid())), post_entry(patient(uid()), urn(), ifNoneExist=f"family={w}")]),
    )
    assert_outcome(r, 412)
    assert history_total(http, base) == before


def test_conditional_update_in_transaction(http, base):
    v = uid()
    existing = create(http, base, patient(v))
    w = uid()
    bundle = tx(
        [
            put_entry(patient(v, gender="male"), url=f"Patient?{ident(v)}"),
            put_entry(patient(w), url=f"Patient?{ident(w)}"),
        ]
    )
    r = send(http, base, bundle)
    assert r.status_code == 200, r.text
    e = r.json()["entry"]
    assert e[0]["response"]["location"] == f"Patient/{existing['id']}/_history/2"
    assert e[1]["response"]["status"].startswith("201")


def test_same_resource_twice_is_400(http, base):
    p = create(http, base, patient())
    before = history_total(http, base)
    bundle = tx([put_entry({**p, "gender": "male"}), put_entry({**p, "gender": "other"})])
    assert_outcome(send(http, base, bundle), 400)
    bundle = tx(
        [
            put_entry({**p, "gender": "male"}),
            {"request": {"method": "DELETE", "url": f"Patient/{p['id']}"}},
        ]
    )
    assert_outcome(send(http, base, bundle), 400)
    # two fullUrls that resolve to the same conditional update target
    v = p["identifier"][0]["value"]
    bundle = tx(
        [
            put_entry(patient(v, gender="male"), url=f"Patient?{ident(v)}"),
            put_entry({**p, "gender": "other"}),
        ]
    )
    assert_outcome(send(http, base, bundle), 400)
    assert history_total(http, base) == before


def test_patch_in_transaction(http, base):
    p = create(http, base, patient())
    ops = [{"op": "replace", "path": "/gender", "value": "male"}]
    entry = {
        "resource": {
            "resourceType": "Binary",
            "contentType": "application/json-patch+json",
            "data": base64.b64encode(orjson.dumps(ops)).decode(),
        },
        "request": {"method": "PATCH", "url": f"Patient/{p['id']}"},
    }
    r = send(http, base, tx([entry]))
    assert r.status_code == 200, r.text
    assert r.json()["entry"][0]["response"]["etag"] == 'W/"2"'
    assert http.get(f"{base}/Patient/{p['id']}").json()["gender"] == "male"


def test_prefer_representation_returns_resources(http, base):
    v = uid()
    r = send(http, base, tx([post_entry(patient(v))]), Prefer="return=representation")
    assert r.status_code == 200
    e = r.json()["entry"][0]
    assert e["resource"]["identifier"][0]["value"] == v
    assert e["fullUrl"] == f"{base}/Patient/{e['resource']['id']}"


def test_bundle_size_limit_is_413(http, base):
    before = history_total(http, base)
    entries = [post_entry(patient()) for _ in range(201)]
    assert_outcome(send(http, base, tx(entries)), 413)
    assert_outcome(send(http, base, tx(entries, "batch")), 413)
    assert history_total(http, base) == before
    # exactly at the limit is fine
    r = send(http, base, tx(entries[:200]))
    assert r.status_code == 200, r.text[:500]
    assert len(r.json()["entry"]) == 200
    assert history_total(http, base) == before + 200


def test_wrong_bundle_type_and_shape(http, base):
    before = history_total(http, base)
    assert_outcome(send(http, base, tx([post_entry(patient())], "collection")), 400)
    assert_outcome(send(http, base, tx([post_entry(patient())], "document")), 400)
    assert_outcome(send(http, base, {"resourceType": "Bundle", "entry": []}), 400)
    assert_outcome(send(http, base, patient()), 400)
    assert_outcome(
        send(http, base, {"resourceType": "Bundle", "type": "transaction", "entry": {"x": 1}}), 400
    )
    assert_outcome(send(http, base, tx([{"resource": patient()}])), 400)
    assert_outcome(
        send(
            http,
            base,
            tx([{"resource": patient(), "request": {"method": "TRACE", "url": "Patient"}}]),
        ),
        400,
    )
    assert_outcome(
        send(
            http,
            base,
            tx(
                [
                    post_entry(patient()),
                    {"resource": patient(), "request": {"method": "POST", "url": "Claim"}},
                ]
            ),
        ),
        404,
        "not-supported",
    )
    assert_outcome(
        send(
            http,
            base,
            tx([{"resource": patient(id="x"), "request": {"method": "PUT", "url": "Patient/y"}}]),
        ),
        400,
    )
    assert history_total(http, base) == before


def test_empty_transaction(http, base):
    r = send(http, base, tx([]))
    assert r.status_code == 200, r.text
    assert r.json()["type"] == "transaction-response"


def test_delete_still_referenced_in_transaction_is_409(http, base):
    p = create(http, base, patient())
    create(http, base, observation(f"Patient/{p['id']}"))
    v = uid()
    before = history_total(http, base)
    bundle = tx(
        [post_entry(patient(v)), {"request": {"method": "DELETE", "url": f"Patient/{p['id']}"}}]
    )
    assert_outcome(send(http, base, bundle), 409, "conflict")
    assert_nothing_written(http, base, before, [v])
    assert http.get(f"{base}/Patient/{p['id']}").status_code == 200


def test_delete_with_referrers_repointed_or_deleted_in_same_transaction(http, base):
    p = create(http, base, patient())
    q = create(http, base, patient())
    o1 = create(http, base, observation(f"Patient/{p['id']}"))
    o2 = create(http, base, observation(f"Patient/{p['id']}"))
    bundle = tx(
        [
            put_entry({**o1, "subject": {"reference": f"Patient/{q['id']}"}}),
            {"request": {"method": "DELETE", "url": f"Patient/{p['id']}"}},
            {"request": {"method": "DELETE", "url": f"Observation/{o2['id']}"}},
        ]
    )
    r = send(http, base, bundle)
    assert r.status_code == 200, r.text
    assert http.get(f"{base}/Patient/{p['id']}").status_code == 410
    assert http.get(f"{base}/Observation/{o2['id']}").status_code == 410
    assert http.get(f"{base}/Observation/{o1['id']}").json()["subject"] == {
        "reference": f"Patient/{q['id']}"
    }

"""read, vread, create, update, patch, delete; headers, Prefer, server-owned meta, integrity."""

from __future__ import annotations

import re

from apihelp import (
    NHS,
    SYS,
    VALID_NHS,
    assert_outcome,
    create,
    headers,
    history_total,
    observation,
    patient,
    put,
    uid,
)


def test_create_sets_location_etag_last_modified_and_meta(http, base):
    body = patient(
        id="client-chosen",
        meta={"versionId": "99", "lastUpdated": "2001-01-01T00:00:00Z", "source": "urn:src"},
    )
    r = http.post(f"{base}/Patient", json=body, headers=headers())
    assert r.status_code == 201, r.text
    res = r.json()
    rid = res["id"]
    assert rid != "client-chosen"  # the server assigns ids on create
    assert r.headers["Location"] == f"{base}/Patient/{rid}/_history/1"
    assert r.headers["ETag"] == 'W/"1"'
    assert re.match(r"^\w{3}, \d{2} \w{3} \d{4} \d{2}:\d{2}:\d{2} GMT$", r.headers["Last-Modified"])
    assert res["meta"]["versionId"] == "1"
    assert not res["meta"]["lastUpdated"].startswith("2001")
    assert res["meta"]["source"] == "urn:src"  # other meta kept
    assert res["identifier"] == body["identifier"]


def test_read_returns_resource_with_headers(http, base):
    created = create(http, base, patient())
    r = http.get(f"{base}/Patient/{created['id']}")
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("application/fhir+json")
    assert r.headers["ETag"] == 'W/"1"'
    assert r.headers["Last-Modified"]
    assert r.json() == created


def test_read_unknown_id_is_404_not_found(http, base):
    assert_outcome(http.get(f"{base}/Patient/{uid()}"), 404, "not-found")


def test_read_invalid_id_is_400(http, base):
    assert_outcome(http.get(f"{base}/Patient/{'x' * 65}"), 400, "invalid")
    assert_outcome(http.get(f"{base}/Patient/a_b"), 400, "invalid")
    # legal by R4's pattern, but a URL cannot carry them: refused, never created
    for dots in ("%2E", "%2E%2E", "..."):
        r = http.put(f"{base}/Patient/{dots}", json={**patient(), "id": dots.replace("%2E", ".")},
                     headers=headers())
        assert_outcome(r, 400, "invalid")


def test_vread(http, base):
    created = create(http, base, patient())
    pid = created["id"]
    r1 = http.get(f"{base}/Patient/{pid}/_history/1")
    assert r1.status_code == 200
    assert r1.headers["ETag"] == 'W/"1"'
    assert r1.json() == created
    assert_outcome(http.get(f"{base}/Patient/{pid}/_history/7"), 404, "not-found")
    assert_outcome(http.get(f"{base}/Patient/{pid}/_history/abc"), 400, "invalid")
    assert_outcome(http.get(f"{base}/Patient/{uid()}/_history/1"), 404, "not-found")


def test_update_creates_new_version_and_overwrites_server_meta(http, base):
    created = create(http, base, patient())
    pid = created["id"]
    changed = {
        **created,
        "gender": "male",
        "meta": {"versionId": "42", "lastUpdated": "1999-01-01T00:00:00Z"},
    }
    r = put(http, base, changed, If_Match='W/"1"')
    assert r.status_code == 200, r.text
    assert r.headers["ETag"] == 'W/"2"'
    assert r.headers["Location"] == f"{base}/Patient/{pid}/_history/2"
    assert r.headers["Last-Modified"]
    res = r.json()
    assert res["gender"] == "male"
    assert res["meta"]["versionId"] == "2"
    assert not res["meta"]["lastUpdated"].startswith("1999")
    assert res["meta"]["lastUpdated"] > created["meta"]["lastUpdated"]
    assert http.get(f"{base}/Patient/{pid}").json() == res
    # the old version is still there
    assert http.get(f"{base}/Patient/{pid}/_history/1").json() == created


def test_update_with_identical_content_makes_no_new_version(http, base):
    created = create(http, base, patient())
    pid = created["id"]
    before = history_total(http, base, f"Patient/{pid}/_history")
    same = {**created, "meta": {"versionId": "7", "lastUpdated": "2020-01-01T00:00:00Z"}}
    r = put(http, base, same)
    assert r.status_code == 200, r.text
    assert r.headers["ETag"] == 'W/"1"'
    assert r.json()["meta"]["versionId"] == "1"
    assert history_total(http, base, f"Patient/{pid}/_history") == before == 1
    same_no_meta = {k: v for k, v in created.items() if k != "meta"}
    assert put(http, base, same_no_meta).headers["ETag"] == 'W/"1"'


def test_update_as_create_with_client_id(http, base):
    pid = f"client-{uid()}"
    r = put(http, base, patient(id=pid))
    assert r.status_code == 201, r.text
    assert r.headers["Location"] == f"{base}/Patient/{pid}/_history/1"
    assert r.headers["ETag"] == 'W/"1"'
    assert r.json()["id"] == pid
    assert http.get(f"{base}/Patient/{pid}").status_code == 200


def test_update_id_errors(http, base):
    pid = f"p-{uid()}"
    body = patient()
    assert_outcome(http.put(f"{base}/Patient/{pid}", json=body, headers=headers()), 400)
    r = http.put(f"{base}/Patient/{pid}", json={**body, "id": "other"}, headers=headers())
    oo = assert_outcome(r, 400, "invalid")
    assert any("id" in (i.get("expression") or [""])[0] for i in oo["issue"]), oo
    r = http.put(f"{base}/Patient/{pid}", json={**observation(), "id": pid}, headers=headers())
    assert_outcome(r, 400, "invalid")
    r = http.post(f"{base}/Patient", json=observation(), headers=headers())
    assert_outcome(r, 400, "invalid")
    assert http.get(f"{base}/Patient/{pid}").status_code == 404


def test_if_match_stale_is_412_and_nothing_changes(http, base):
    created = create(http, base, patient())
    pid = created["id"]
    assert put(http, base, {**created, "gender": "male"}, If_Match='W/"1"').status_code == 200
    r = put(http, base, {**created, "gender": "other"}, If_Match='W/"1"')
    assert_outcome(r, 412)
    cur = http.get(f"{base}/Patient/{pid}").json()
    assert cur["gender"] == "male" and cur["meta"]["versionId"] == "2"
    assert_outcome(
        put(http, base, {**created, "gender": "other"}, If_Match="garbage"), 400, "invalid"
    )
    # If-Match on a resource that does not exist cannot be satisfied
    assert_outcome(put(http, base, patient(id=f"nope-{uid()}"), If_Match='W/"1"'), 412)


def test_prefer_return(http, base):
    r = http.post(f"{base}/Patient", json=patient(), headers=headers(Prefer="return=minimal"))
    assert r.status_code == 201
    assert r.content == b""
    assert r.headers["Location"].endswith("/_history/1")
    r = http.post(
        f"{base}/Patient", json=patient(), headers=headers(Prefer="return=OperationOutcome")
    )
    assert r.status_code == 201
    assert r.json()["resourceType"] == "OperationOutcome"
    r = http.post(
        f"{base}/Patient", json=patient(), headers=headers(Prefer="return=representation")
    )
    assert r.status_code == 201
    res = r.json()
    assert res["resourceType"] == "Patient"
    r = put(http, base, {**res, "gender": "male"}, Prefer="return=minimal")
    assert r.status_code == 200 and r.content == b""
    assert r.headers["ETag"] == 'W/"2"'


def test_json_patch(http, base):
    created = create(http, base, patient())
    pid = created["id"]
    ops = [
        {"op": "replace", "path": "/gender", "value": "male"},
        {"op": "add", "path": "/active", "value": True},
    ]
    r = http.patch(
        f"{base}/Patient/{pid}",
        json=ops,
        headers=headers(Content_Type="application/json-patch+json", If_Match='W/"1"'),
    )
    assert r.status_code == 200, r.text
    assert r.headers["ETag"] == 'W/"2"'
    res = r.json()
    assert res["gender"] == "male" and res["active"] is True and res["meta"]["versionId"] == "2"
    assert http.get(f"{base}/Patient/{pid}").json() == res
    # stale If-Match
    r = http.patch(
        f"{base}/Patient/{pid}",
        json=ops,
        headers=headers(Content_Type="application/json-patch+json", If_Match='W/"1"'),
    )
    assert_outcome(r, 412)
    # wrong content type
    r = http.patch(f"{base}/Patient/{pid}", json=ops, headers=headers())
    assert_outcome(r, 415, "not-supported")
    # cannot change the id
    r = http.patch(
        f"{base}/Patient/{pid}",
        json=[{"op": "replace", "path": "/id", "value": "x"}],
        headers=headers(Content_Type="application/json-patch+json"),
    )
    assert_outcome(r, 422, "processing")
    # failing test op
    r = http.patch(
        f"{base}/Patient/{pid}",
        json=[{"op": "test", "path": "/gender", "value": "female"}],
        headers=headers(Content_Type="application/json-patch+json"),
    )
    assert_outcome(r, 422, "processing")
    # a patch that produces an invalid resource
    r = http.patch(
        f"{base}/Patient/{pid}",
        json=[{"op": "add", "path": "/bogus", "value": 1}],
        headers=headers(Content_Type="application/json-patch+json"),
    )
    assert_outcome(r, 400)
    # not an array
    r = http.patch(
        f"{base}/Patient/{pid}",
        json={"op": "add"},
        headers=headers(Content_Type="application/json-patch+json"),
    )
    assert_outcome(r, 400)
    # unknown resource
    r = http.patch(
        f"{base}/Patient/{uid()}",
        json=ops,
        headers=headers(Content_Type="application/json-patch+json"),
    )
    assert_outcome(r, 404, "not-found")
    assert http.get(f"{base}/Patient/{pid}").json() == res


def test_delete_tombstone_then_410_and_vread_still_works(http, base):
    created = create(http, base, patient())
    pid = created["id"]
    r = http.delete(f"{base}/Patient/{pid}")
    assert r.status_code in (200, 204), r.text
    assert r.headers.get("ETag") == 'W/"2"'
    oo = assert_outcome(http.get(f"{base}/Patient/{pid}"), 410, "deleted")
    assert oo
    assert http.get(f"{base}/Patient/{pid}/_history/1").json() == created
    assert_outcome(http.get(f"{base}/Patient/{pid}/_history/2"), 410, "deleted")
    # deleting again is idempotent and makes no new version
    assert http.delete(f"{base}/Patient/{pid}").status_code in (200, 204)
    hist = http.get(f"{base}/Patient/{pid}/_history").json()
    assert hist["total"] == 2
    # an update brings it back as version 3
    r = put(http, base, {k: v for k, v in created.items() if k != "meta"})
    assert r.status_code == 201, r.text
    assert r.json()["meta"]["versionId"] == "3"
    assert http.get(f"{base}/Patient/{pid}").status_code == 200


def test_delete_unknown_and_with_if_match(http, base):
    assert_outcome(http.delete(f"{base}/Patient/{uid()}"), 404, "not-found")
    created = create(http, base, patient())
    r = http.delete(f"{base}/Patient/{created['id']}", headers={"If-Match": 'W/"5"'})
    assert_outcome(r, 412)
    assert http.get(f"{base}/Patient/{created['id']}").status_code == 200


def test_reference_to_missing_resource_is_422(http, base):
    before = history_total(http, base)
    r = http.post(f"{base}/Observation", json=observation(f"Patient/{uid()}"), headers=headers())
    assert_outcome(r, 422, "business-rule")
    # the absolute form on our own base is checked too
    r = http.post(
        f"{base}/Observation", json=observation(f"{base}/Patient/{uid()}"), headers=headers()
    )
    assert_outcome(r, 422, "business-rule")
    # also on update
    pat = create(http, base, patient())
    obs = create(http, base, observation(f"Patient/{pat['id']}"))
    r = put(http, base, {**obs, "subject": {"reference": "Patient/missing-one"}})
    assert_outcome(r, 422, "business-rule")
    assert http.get(f"{base}/Observation/{obs['id']}").json() == obs
    assert history_total(http, base) == before + 2


def test_reference_to_deleted_resource_is_422(http, base):
    pat = create(http, base, patient())
    assert http.delete(f"{base}/Patient/{pat['id']}").status_code in (200, 204)
    r = http.post(
        f"{base}/Observation", json=observation(f"Patient/{pat['id']}"), headers=headers()
    )
    assert_outcome(r, 422, "business-rule")


def test_reference_to_non_enabled_type_is_kept(http, base):
    pat = create(http, base, patient())
    body = observation(f"Patient/{pat['id']}", focus=[{"reference": "Condition/x"}])
    obs = create(http, base, body)
    assert obs["focus"] == [{"reference": "Condition/x"}]
    assert http.get(f"{base}/Observation/{obs['id']}").json()["focus"] == [
        {"reference": "Condition/x"}
    ]


def test_delete_of_referenced_resource_is_409(http, base):
    pat = create(http, base, patient())
    obs = create(http, base, observation(f"Patient/{pat['id']}"))
    assert_outcome(http.delete(f"{base}/Patient/{pat['id']}"), 409, "conflict")
    assert http.get(f"{base}/Patient/{pat['id']}").status_code == 200
    assert http.delete(f"{base}/Observation/{obs['id']}").status_code in (200, 204)
    assert http.delete(f"{base}/Patient/{pat['id']}").status_code in (200, 204)


def test_self_contained_references_do_not_need_the_server(http, base):
    body = observation(
        "#p1",
        contained=[{"resourceType": "Patient", "id": "p1", "name": [{"family": "Inline"}]}],
    )
    obs = create(http, base, body)
    assert obs["subject"] == {"reference": "#p1"}


def test_nhs_number_check_digit(http, base):
    r = http.post(f"{base}/Patient", json=patient("9434765918", system=NHS), headers=headers())
    oo = assert_outcome(r, 422, "business-rule")
    assert oo
    r = http.post(f"{base}/Patient", json=patient(VALID_NHS, system=NHS), headers=headers())
    assert r.status_code == 201, r.text


def test_validation_errors_carry_expression_paths(http, base):
    cases = [
        ({"bogus": 1}, "Patient.bogus"),
        ({"active": "yes"}, "Patient.active"),
        ({"birthDate": "2020-13-45"}, "Patient.birthDate"),
        ({"name": [{"family": 7}]}, "Patient.name[0].family"),
    ]
    for extra, path in cases:
        r = http.post(f"{base}/Patient", json=patient(**extra), headers=headers())
        oo = assert_outcome(r, 400)
        exprs = [e for i in oo["issue"] for e in i.get("expression", [])]
        assert path in exprs, (extra, oo)
        assert {i["code"] for i in oo["issue"]} & {"structure", "value", "invalid", "required"}, oo
    # nothing was written by any of them
    assert http.get(f"{base}/Patient", params={"identifier": f"{SYS}|nothing"}).status_code == 200


def test_code_outside_required_binding_is_400(http, base):
    r = http.post(f"{base}/Patient", json=patient(gender="banana"), headers=headers())
    oo = assert_outcome(r, 400)
    assert "Patient.gender" in [e for i in oo["issue"] for e in i.get("expression", [])], oo


def test_missing_resource_type_is_400(http, base):
    body = patient()
    del body["resourceType"]
    assert_outcome(http.post(f"{base}/Patient", json=body, headers=headers()), 400)

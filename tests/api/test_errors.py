"""Every 4xx is an OperationOutcome with the right code; hostile input never gives a 500."""

from __future__ import annotations

import orjson
import pytest
from apihelp import (
    FHIR_JSON,
    LiveServer,
    assert_outcome,
    create,
    headers,
    history_total,
    observation,
    patient,
    uid,
)


@pytest.fixture(scope="module")
def small_server(database_url):
    """A second app on the same database with a small request-body cap."""
    from app import create_app

    application = create_app(
        {
            "DATABASE_URL": database_url,
            "TESTING": True,
            "SECRET_KEY": "test-secret",
            "MAX_CONTENT_LENGTH": 2000,
            "AUTH_REQUIRED": False,  # tests the body cap, not authorisation
        }
    )
    srv = LiveServer(application)
    application.config["PUBLIC_BASE_URL"] = srv.base
    yield srv
    srv.stop()
    application.extensions["results_repo"].engine.dispose()


def test_unknown_resource_type_is_404_not_supported(http, base):
    assert_outcome(http.get(f"{base}/Claim/1"), 404, "not-supported")
    assert_outcome(http.get(f"{base}/Claim"), 404, "not-supported")
    assert_outcome(http.get(f"{base}/Claim/1/_history/1"), 404, "not-supported")
    assert_outcome(
        http.post(f"{base}/Claim", json={"resourceType": "Claim"}, headers=headers()),
        404,
        "not-supported",
    )
    assert_outcome(
        http.put(f"{base}/Claim/1", json={"resourceType": "Claim", "id": "1"}, headers=headers()),
        404,
        "not-supported",
    )
    assert_outcome(http.delete(f"{base}/Claim/1"), 404, "not-supported")
    # R4 types that are not enabled here, and names that are not types at all
    assert_outcome(http.get(f"{base}/Condition/1"), 404, "not-supported")
    assert_outcome(http.get(f"{base}/NotAType/1"), 404, "not-supported")
    assert_outcome(http.get(f"{base}/patient/1"), 404)


def test_unknown_route_is_404_outcome(http, base, server):
    assert_outcome(http.get(f"{base}/Patient/1/_history/1/extra"), 404)
    assert_outcome(http.get(f"{base}/Patient/1/foo"), 404)
    assert_outcome(http.get(f"{server.url}/nothing-here"), 404)


def test_wrong_method_is_405_outcome(http, base):
    r = http.post(f"{base}/Patient/123", json=patient(), headers=headers())
    assert_outcome(r, 405, "not-supported")
    assert "GET" in r.headers.get("Allow", "")
    assert_outcome(http.delete(f"{base}/metadata"), 405)
    assert_outcome(http.put(f"{base}/Patient/1/_history/1", json=patient(), headers=headers()), 405)


@pytest.mark.parametrize(
    "ctype",
    ["text/plain", "application/xml", "application/fhir+xml", "application/x-www-form-urlencoded"],
)
def test_wrong_content_type_is_415(http, base, ctype):
    before = history_total(http, base)
    data = b'{"resourceType":"Patient"}'
    assert_outcome(
        http.post(f"{base}/Patient", data=data, headers={"Content-Type": ctype}),
        415,
        "not-supported",
    )
    assert_outcome(
        http.put(
            f"{base}/Patient/x1",
            data=b'{"resourceType":"Patient","id":"x1"}',
            headers={"Content-Type": ctype},
        ),
        415,
        "not-supported",
    )
    assert_outcome(
        http.post(base, data=data, headers={"Content-Type": ctype}), 415, "not-supported"
    )
    assert history_total(http, base) == before


def test_missing_content_type_is_415(http, base):
    r = http.post(
        f"{base}/Patient", data=b'{"resourceType":"Patient"}', headers={"Content-Type": ""}
    )
    assert_outcome(r, 415, "not-supported")


def test_json_content_types_accepted(http, base):
    for ctype in (
        "application/fhir+json",
        "application/json",
        "application/fhir+json; charset=utf-8",
        "application/json+fhir",
    ):
        r = http.post(f"{base}/Patient", json=patient(), headers={"Content-Type": ctype})
        assert r.status_code == 201, (ctype, r.text)


def test_accept_xml_only_is_406(http, base):
    p = create(http, base, patient())
    for accept in ("application/fhir+xml", "application/xml", "text/html"):
        assert_outcome(
            http.get(f"{base}/Patient/{p['id']}", headers={"Accept": accept}), 406, "not-supported"
        )
    assert_outcome(
        http.get(f"{base}/metadata", headers={"Accept": "application/fhir+xml"}),
        406,
        "not-supported",
    )
    assert_outcome(
        http.get(f"{base}/Patient/{p['id']}", params={"_format": "xml"}), 406, "not-supported"
    )
    before = history_total(http, base)
    r = http.post(
        f"{base}/Patient",
        json=patient(),
        headers={"Content-Type": FHIR_JSON, "Accept": "application/fhir+xml"},
    )
    assert_outcome(r, 406, "not-supported")
    assert history_total(http, base) == before
    # JSON alternatives, wildcards and _format=json are fine
    for accept in ("application/fhir+xml, application/fhir+json;q=0.5", "*/*", "application/json"):
        assert (
            http.get(f"{base}/Patient/{p['id']}", headers={"Accept": accept}).status_code == 200
        ), accept
    assert (
        http.get(
            f"{base}/Patient/{p['id']}",
            params={"_format": "json"},
            headers={"Accept": "application/fhir+xml"},
        ).status_code
        == 200
    )


def test_malformed_json_is_400(http, base):
    before = history_total(http, base)
    for data in (
        b'{"resourceType": "Patient",',
        b"not json",
        b"",
        b"[1, 2]",
        b'"Patient"',
        b"null",
        b"\xff\xfe{}",
    ):
        r = http.post(f"{base}/Patient", data=data, headers=headers())
        assert_outcome(r, 400)
        r = http.post(base, data=data, headers=headers())
        assert_outcome(r, 400)
    assert history_total(http, base) == before


def test_body_over_max_content_length_is_413(http, small_server):
    base = small_server.base
    small = patient()
    assert http.post(f"{base}/Patient", json=small, headers=headers()).status_code == 201
    before = history_total(http, base)
    big = patient(name=[{"family": "x" * 3000}])
    assert_outcome(http.post(f"{base}/Patient", json=big, headers=headers()), 413, "too-costly")
    assert_outcome(
        http.put(f"{base}/Patient/big", json={**big, "id": "big"}, headers=headers()),
        413,
        "too-costly",
    )
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [{"resource": big, "request": {"method": "POST", "url": "Patient"}}],
    }
    assert_outcome(http.post(base, json=bundle, headers=headers()), 413, "too-costly")
    assert history_total(http, base) == before


def test_body_over_max_content_length_chunked_is_413(http, small_server):
    """Without Content-Length (chunked), the cap must still hold."""
    base = small_server.base
    before = history_total(http, base)
    payload = b'{"resourceType":"Patient","name":[{"family":"' + b"y" * 5000 + b'"}]}'

    def gen():
        for i in range(0, len(payload), 500):
            yield payload[i : i + 500]

    r = http.post(f"{base}/Patient", data=gen(), headers=headers())
    assert_outcome(r, 413, "too-costly")
    assert history_total(http, base) == before


def test_deeply_nested_json_is_400_not_500(http, base):
    before = history_total(http, base)
    deep = b'{"resourceType":"Patient","extension":' + b"[" * 5000 + b"]" * 5000 + b"}"
    assert_outcome(http.post(f"{base}/Patient", data=deep, headers=headers()), 400)
    # nesting within (and just over) the JSON parser's limit, deep in FHIR terms: extensions of
    # extensions, written by hand because client JSON encoders refuse such depths
    for depth in (20, 100, 300, 500, 600):
        leaf = b'{"url":"http://example.org/leaf","valueString":"x"}'
        ext = b'{"url":"http://example.org/node","extension":[' * depth + leaf + b"]}" * depth
        data = b'{"resourceType":"Patient","extension":[' + ext + b"]}"
        r = http.post(f"{base}/Patient", data=data, headers=headers())
        if depth == 20:  # plausible nesting is fine
            assert r.status_code == 201, r.text[:500]
        assert r.status_code in (201, 400, 413), (depth, r.status_code, r.text[:500])
        if r.status_code != 201:
            assert_outcome(r, r.status_code)
        else:
            before += 1
            assert http.get(r.headers["Location"]).status_code == 200
    assert history_total(http, base) == before


def test_deeply_nested_transaction_is_not_500(http, base):
    before = history_total(http, base)
    for depth in (100, 450):
        leaf = b'{"url":"http://example.org/leaf","valueReference":{"reference":"urn:uuid:11111111-1111-1111-1111-111111111111"}}'
        ext = b'{"url":"http://example.org/node","extension":[' * depth + leaf + b"]}" * depth
        obs = orjson.dumps(observation())[:-1] + b',"extension":[' + ext + b"]}"
        data = (
            b'{"resourceType":"Bundle","type":"transaction","entry":['
            b'{"fullUrl":"urn:uuid:11111111-1111-1111-1111-111111111111","resource":'
            + orjson.dumps(patient())
            + b',"request":{"method":"POST","url":"Patient"}},'
            b'{"resource":' + obs + b',"request":{"method":"POST","url":"Observation"}}]}'
        )
        r = http.post(base, data=data, headers=headers())
        assert r.status_code in (200, 400), (depth, r.status_code, r.text[:500])
        if r.status_code == 200:
            before += 2
            loc = r.json()["entry"][1]["response"]["location"]
            assert http.get(f"{base}/{loc}").status_code == 200
        else:
            assert_outcome(r, 400)
    assert history_total(http, base) == before


def test_huge_strings_are_not_500(http, base):
    r = http.post(
        f"{base}/Patient", json=patient(name=[{"family": "z" * 1_000_000}]), headers=headers()
    )
    assert r.status_code in (201, 400, 413), r.text[:500]
    if r.status_code == 201:
        assert http.get(r.headers["Location"]).json()["name"][0]["family"] == "z" * 1_000_000
    else:
        assert_outcome(r, r.status_code)
    # a huge id in the URL or the body
    assert_outcome(http.get(f"{base}/Patient/{'a' * 5000}"), 400, "invalid")
    assert_outcome(
        http.put(f"{base}/Patient/{'a' * 5000}", json=patient(id="a" * 5000), headers=headers()),
        400,
    )
    r = http.get(f"{base}/Patient", params={"identifier": "x" * 100_000})
    assert r.status_code in (200, 400, 414), r.status_code
    # a huge identifier value: indexed without breaking the index
    r = http.post(f"{base}/Patient", json=patient("v" * 20_000), headers=headers())
    assert r.status_code in (201, 400), r.text[:500]


def test_nul_and_control_characters_are_not_500(http, base):
    before = history_total(http, base)
    for value in ("a\u0000b", "\u0000", "line\u0001break"):
        r = http.post(f"{base}/Patient", json=patient(name=[{"family": value}]), headers=headers())
        assert r.status_code in (201, 400), (value, r.status_code, r.text[:500])
        if r.status_code == 201:
            before += 1
            assert http.get(r.headers["Location"]).json()["name"][0]["family"] == value
        else:
            assert_outcome(r, 400)
        r = http.post(f"{base}/Patient", json=patient(value), headers=headers())
        assert r.status_code in (201, 400), (value, r.status_code, r.text[:500])
        if r.status_code == 201:
            before += 1
        r = http.get(f"{base}/Patient", params={"identifier": f"urn:test:mrn|{value}"})
        assert r.status_code in (200, 400), (value, r.status_code, r.text[:500])
        r = http.delete(f"{base}/Patient", params={"identifier": f"urn:test:mrn|{value}zz"})
        assert r.status_code in (200, 204, 400), (value, r.status_code, r.text[:500])
    assert history_total(http, base) == before


@pytest.mark.parametrize(
    "path",
    [
        "Patient/..%2F..%2Fetc%2Fpasswd",
        "Patient/%2E%2E",
        "Patient/a%00b",
        "Patient/%27%20OR%201%3D1",
        "Patient/a%20b",
        "Patient/%E2%82%AC",
    ],
)
def test_hostile_ids_in_url(http, base, path):
    before = history_total(http, base)
    r = http.get(f"{base}/{path}")
    assert r.status_code in (400, 404), (path, r.status_code)
    assert_outcome(r, r.status_code)
    r = http.put(f"{base}/{path}", json=patient(id="x"), headers=headers())
    assert r.status_code in (400, 404), (path, r.status_code)
    assert_outcome(r, r.status_code)
    r = http.delete(f"{base}/{path}")
    assert r.status_code in (400, 404), (path, r.status_code)
    assert_outcome(r, r.status_code)
    assert history_total(http, base) == before


def test_hostile_ids_in_body(http, base):
    before = history_total(http, base)
    for bad in ("../etc", "a/b", "x" * 65, "a b", "' OR 1=1 --", 12, None):
        r = http.put(f"{base}/Patient/ok-id", json=patient(id=bad), headers=headers())
        assert_outcome(r, 400)
    # POST ignores the body id, but a malformed one is still a structure error or ignored, never stored
    r = http.post(f"{base}/Patient", json=patient(id="../../x"), headers=headers())
    assert r.status_code in (201, 400)
    if r.status_code == 201:
        assert r.json()["id"] != "../../x"
        before += 1
    assert history_total(http, base) == before


def test_hostile_transaction_urls(http, base):
    before = history_total(http, base)
    for url in (
        "../Patient",
        "Patient/../../x",
        "Patient/a/b/c/d/e",
        "http://evil.example.org/fhir/Patient",
        "Patient?identifier=' OR 1=1 --",
    ):
        bundle = {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [{"resource": patient(), "request": {"method": "PUT", "url": url}}],
        }
        r = http.post(base, json=bundle, headers=headers())
        assert r.status_code in (200, 201, 400, 404, 412), (url, r.status_code, r.text[:300])
        if r.status_code >= 400:
            assert_outcome(r, r.status_code)
        else:
            before += 1
    assert history_total(http, base) == before


def test_sql_looking_search_values_are_not_500(http, base):
    p = create(http, base, patient())
    for value in ("' OR 1=1 --", "x'); DELETE FROM resource; --", "\\", "%", "_", "*"):
        r = http.get(f"{base}/Patient", params={"identifier": value, "name": value})
        assert r.status_code in (200, 400), r.text[:300]
        if r.status_code == 200:
            assert not r.json().get("entry"), value
    assert http.get(f"{base}/Patient/{p['id']}").status_code == 200


def test_wrong_json_shapes_are_400(http, base):
    before = history_total(http, base)
    for body in (
        {"resourceType": "Patient", "name": "not-a-list"},
        {"resourceType": "Patient", "name": [None]},
        {"resourceType": "Patient", "name": [{}]},
        {"resourceType": "Patient", "birthDate": 19700101},
        {"resourceType": "Patient", "identifier": [{"system": {"x": 1}}]},
        {"resourceType": 7},
        {"resourceType": "Patient", "extension": [{"valueString": "no url"}]},
    ):
        assert_outcome(http.post(f"{base}/Patient", json=body, headers=headers()), 400)
    assert history_total(http, base) == before


def test_every_error_is_json_outcome(http, base):
    for r in (
        http.get(f"{base}/Patient/{uid()}"),
        http.get(f"{base}/Claim"),
        http.post(f"{base}/Patient/1", json={}, headers=headers()),
        http.get(f"{base}/Patient/bad_id"),
    ):
        assert r.headers["Content-Type"].startswith("application/fhir+json")
        assert r.json()["resourceType"] == "OperationOutcome"
        for issue in r.json()["issue"]:
            assert issue["severity"] in ("fatal", "error", "warning", "information")
            assert issue["code"]

"""Property-based robustness: random and hostile payloads and query strings over real HTTP never
give a 500, every refusal is an OperationOutcome, and a refused write changes no row.

Profiles (tests/protect_limits/conftest.py): ``dev`` 40 random examples per property; ``ci``
(CI=true) the same count, derandomised, so a CI failure reproduces.
"""

from __future__ import annotations

import pytest
import requests
from hypothesis import given
from hypothesis import strategies as st
from limitshelp import FHIR_JSON, H, Live, make_app, patient, row_counts

json_scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
                         st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=40))
json_values = st.recursive(json_scalars, lambda kids: st.one_of(
    st.lists(kids, max_size=4), st.dictionaries(st.text(max_size=12), kids, max_size=4)), max_leaves=25)
hostile_text = st.one_of(
    st.text(max_size=60),
    st.sampled_from(["", " ", "\x00", "\\u0000", "' OR 1=1 --", "%00", "%", "|", "||", "$", ":", "::", "..",
                     "../../etc/passwd", "<script>alert(1)</script>", "\ud7ff", "😀" * 30, "a" * 5000,
                     "1e309", "-0", "9" * 40, "ge", "ge2020-13-45", "2020-02-30T25:61:61Z", "urn:uuid:x",
                     "Patient/", "Patient/../x", "http://evil.example/Patient/1", "null", "[]", "{}"]),
)
PARAMS = ["_id", "_lastUpdated", "_tag", "_profile", "_security", "_text", "_content", "_list", "_has",
          "_type", "_sort", "_count", "_total", "_summary", "_elements", "_include", "_revinclude",
          "_cursor", "_format", "_pretty", "identifier", "name", "family", "birthdate", "gender",
          "subject", "patient", "code", "value-quantity", "date", "status", "category",
          "code-value-quantity", "component-code-value-quantity", "subject:Patient.name",
          "subject.identifier", "_has:Observation:patient:code", "name:exact", "name:contains",
          "identifier:of-type", "code:text", "code:not", "code:in", "date:missing", "x-unknown"]
param_names = st.one_of(st.sampled_from(PARAMS), st.text(max_size=20))
queries = st.lists(st.tuples(param_names, hostile_text), max_size=6)


@pytest.fixture(scope="module")
def srv(database_url):
    app = make_app(database_url, MAX_BUNDLE_ENTRIES=50, MAX_CONTENT_LENGTH=256 * 1024)
    live = Live(app)
    app.config["PUBLIC_BASE_URL"] = live.base
    seed = requests.post(f"{live.base}/Patient", json=patient(), headers=H)
    assert seed.status_code == 201
    yield app, live, seed.json()
    live.stop()
    app.extensions["results_repo"].engine.dispose()


@pytest.fixture(scope="module")
def session():
    s = requests.Session()
    yield s
    s.close()


def _sound(r: requests.Response) -> None:
    assert r.status_code < 500, (r.status_code, r.request.method, r.request.url, r.text[:500])
    if r.status_code >= 400:
        assert r.headers.get("Content-Type", "").startswith(FHIR_JSON), (r.status_code, r.text[:200])
        body = r.json()
        assert body["resourceType"] == "OperationOutcome" and body["issue"], body


@given(body=json_values)
def test_random_json_bodies(srv, session, body) -> None:
    app, live, _ = srv
    before = row_counts(app)
    for method, url in (("POST", f"{live.base}/Patient"), ("PUT", f"{live.base}/Observation/fuzz-1"),
                        ("POST", live.base)):
        r = session.request(method, url, json=body, headers=H)
        _sound(r)
        if r.status_code >= 400:
            assert row_counts(app) == before, (method, url, r.status_code)
        before = row_counts(app)


@given(key=st.sampled_from(["name", "birthDate", "gender", "identifier", "active", "telecom", "address",
                            "meta", "id", "text", "extension", "contained", "managingOrganization",
                            "resourceType", "link", "deceasedBoolean", "multipleBirthInteger"]),
       value=json_values)
def test_hostile_field_values(srv, session, key, value) -> None:
    app, live, seed = srv
    body = {**patient(), key: value}
    before = row_counts(app)
    r = session.post(f"{live.base}/Patient", json=body, headers=H)
    _sound(r)
    if r.status_code >= 400:
        assert row_counts(app) == before
    update = {**seed, key: value}
    update.pop("meta", None)
    r = session.put(f"{live.base}/Patient/{seed['id']}", json=update, headers=H)
    _sound(r)


@given(raw=st.binary(max_size=300), ctype=st.sampled_from([FHIR_JSON, "application/json", "text/plain",
                                                           "application/json-patch+json", ""]))
def test_random_bytes(srv, session, raw, ctype) -> None:
    app, live, seed = srv
    before = row_counts(app)
    for method, url in (("POST", f"{live.base}/Patient"), ("PATCH", f"{live.base}/Patient/{seed['id']}"),
                        ("POST", live.base)):
        r = session.request(method, url, data=raw, headers={"Content-Type": ctype, "Accept": FHIR_JSON})
        _sound(r)
        assert r.status_code >= 400 or raw.strip(), r.status_code
    if row_counts(app) != before:  # only a valid resource may write: random bytes almost never are
        assert raw.strip().startswith(b"{")


@given(params=queries, res=st.sampled_from(["Patient", "Observation", "DiagnosticReport", "Nope", "_history",
                                             "Patient/_search"]))
def test_random_search_queries(srv, session, params, res) -> None:
    _, live, _ = srv
    r = session.get(f"{live.base}/{res}", params=params, headers={"Accept": FHIR_JSON})
    _sound(r)
    if res.endswith("_search"):
        return
    r = session.post(f"{live.base}/{res}/_search", data=params, headers={"Accept": FHIR_JSON})
    _sound(r)


@given(n_good=st.integers(min_value=0, max_value=4), bad=json_values, where=st.integers(min_value=0, max_value=4))
def test_transaction_is_all_or_nothing(srv, session, n_good, bad, where) -> None:
    app, live, _ = srv
    entries = [{"fullUrl": f"urn:uuid:00000000-0000-4000-8000-{i:012d}", "resource": patient(),
                "request": {"method": "POST", "url": "Patient"}} for i in range(n_good)]
    bad_entry = {"resource": {**patient(), "gender": bad} if not isinstance(bad, dict) else bad,
                 "request": {"method": "POST", "url": "Patient"}}
    entries.insert(min(where, len(entries)), bad_entry)
    before = row_counts(app)
    r = session.post(live.base, json={"resourceType": "Bundle", "type": "transaction", "entry": entries},
                     headers={**H, "Prefer": "return=minimal"})
    _sound(r)
    after = row_counts(app)
    if r.status_code >= 400:
        assert after == before
    else:
        assert r.status_code == 200
        written = len(entries)
        assert after == {"resource": before["resource"] + written, "version": before["version"] + written}

"""Opaque search links and the audit trail (decision 0015 follow-ups).

1. A search page fetched through a ``_cursor`` link is recorded with the search the link carries,
   unsealed, in the form a first page records (``name=value&...``), with the patients of its own
   page; never with the token.  A link that does not open (tampered, another caller's) is
   recorded as a failure without a query.
2. The AuditEvent search's own links are opaque and caller-bound like every search link:
   ``AuditEvent?_cursor=<token>`` only, no ``patient=``/``agent=`` value in clear or in the
   token's bytes, ``next``/``previous``/``self`` walk the same pages as one big page, and a
   tampered link, another token's, another search's or one with parameters added is a 400.

Real HTTP and tokens, SQLite and PostgreSQL.
"""

from __future__ import annotations

import base64
import json
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
import requests
from audithelp import AUDITOR, FHIR_JSON, call, detail, events, patients, query_of, rid, subtype
from linkcheck import assert_opaque_link

FORM = "application/x-www-form-urlencoded"
CODE_SYSTEM = "urn:test:audit-links"


@pytest.fixture(scope="module")
def t(token) -> dict:
    return {
        "writer": token("system/*.cruds", client_id="epr-links"),
        "doctor": token("user/*.rs", fhir_user="Practitioner/doc-links", client_id="clinic-links"),
        "doctor2": token("user/*.rs", fhir_user="Practitioner/doc-links", client_id="clinic-links"),
        "auditor": token(AUDITOR, client_id="privacy-links"),
        "auditor2": token(AUDITOR, client_id="privacy-links"),
        "auditor_obs": token(f"{AUDITOR} system/Observation.rs", client_id="privacy-links"),
    }


@pytest.fixture(scope="module")
def w(live, t) -> dict:
    """Three patients with one result each, in order (p0, p1, p2), and a second result for p0."""
    b = live.base
    out: dict = {"code": f"{CODE_SYSTEM}|{rid()}"}
    system, code = out["code"].split("|")
    out["p"] = []
    for i in range(3):
        r = call("POST", f"{b}/Patient", t["writer"], {"resourceType": "Patient", "name": [{"family": f"Links{i}"}]})
        assert r.status_code == 201, r.text
        out["p"].append(r.json()["id"])
    for pid in [*out["p"], out["p"][0]]:
        r = call("POST", f"{b}/Observation", t["writer"], {
            "resourceType": "Observation", "status": "final", "code": {"coding": [{"system": system, "code": code}]},
            "subject": {"reference": f"Patient/{pid}"}})
        assert r.status_code == 201, r.text
    return out


def _links(r: requests.Response) -> dict[str, str]:
    assert r.status_code == 200, r.text[:500]
    return {link["relation"]: link["url"] for link in r.json()["link"]}


def _token(url: str) -> str:
    return parse_qs(urlsplit(url).query)["_cursor"][0]


def _one(live, t, request_id: str) -> dict:
    evs = events(live.base, t["auditor"], request_id)
    assert len(evs) == 1, [(subtype(e), e["outcome"]) for e in evs]
    return evs[0]


def _outcome(r: requests.Response, status: int, code: str) -> dict:
    assert r.status_code == status, (r.status_code, r.text[:500])
    assert r.headers["Content-Type"].startswith(FHIR_JSON)
    body = r.json()
    assert body["resourceType"] == "OperationOutcome" and code in [i["code"] for i in body["issue"]], body
    return body


def _first(live, tok: str, method: str, path: str, params: list[tuple[str, str]], request_id: str) -> requests.Response:
    url = f"{live.base}/{path}".rstrip("/")
    if method == "POST":
        return call("POST", url, tok, request_id=request_id, data=urlencode(params), headers={"Content-Type": FORM})
    return call("GET", url, tok, request_id=request_id, params=params)


# ---- 1. the audit record of a followed link ---------------------------------------------------
CASES = [
    # (label, method, path, params in the order the server keeps them, subtype, patients of pages 1
    # and 2: those returned, and those the search names, as on a first page)
    ("type GET", "GET", "Observation", lambda w: [("code", w["code"]), ("_count", "1")], "search-type",
     ({0}, {1})),
    ("type POST _search", "POST", "Observation/_search", lambda w: [("code", w["code"]), ("_count", "1")],
     "search-type", ({0}, {1})),
    ("system GET", "GET", "", lambda w: [("_type", "Observation"), ("code", w["code"]), ("_count", "1")],
     "search-system", ({0}, {1})),
    ("compartment GET", "GET", "Patient/{p0}/Observation", lambda w: [("code", w["code"]), ("_count", "1")],
     "search-type", ({0}, {0})),
    ("patients named, sorted", "GET", "Observation",
     lambda w: [("subject", f"Patient/{w['p'][2]},Patient/{w['p'][1]}"), ("_sort", "-_lastUpdated"),
                ("_count", "1")],
     "search-type", ({2, 1}, {2, 1})),
]


@pytest.mark.parametrize("label,method,path,params,sub,pages", CASES, ids=[c[0] for c in CASES])
def test_a_followed_link_is_recorded_with_the_search_it_carries(live, t, w, label, method, path, params, sub, pages):
    params = params(w)
    path = path.format(p0=w["p"][0])
    want = urlencode(params)  # what page 1 records: the query as received (form-encoded by requests)
    r1 = _first(live, t["doctor"], method, path, params, req1 := rid())
    nxt = _links(r1)["next"]
    assert set(parse_qs(urlsplit(nxt).query)) == {"_cursor"}
    r2 = call("GET", nxt, t["doctor"], request_id=(req2 := rid()))
    assert r2.status_code == 200, r2.text[:500]
    ev1, ev2 = _one(live, t, req1), _one(live, t, req2)
    assert (subtype(ev1), subtype(ev2)) == (sub, sub) and ev1["outcome"] == ev2["outcome"] == "0"
    assert query_of(ev1) == query_of(ev2) == want
    q2 = next(e for e in ev2["entity"] if e.get("role", {}).get("code") == "24")
    assert q2["description"] == want and base64.b64decode(q2["query"]).decode() == want
    assert patients(ev1) == {w["p"][i] for i in pages[0]} and patients(ev2) == {w["p"][i] for i in pages[1]}
    assert "page" not in detail(ev1) and detail(ev2)["page"] == "next"
    assert _token(nxt) not in json.dumps(ev2) and "_cursor" not in json.dumps(ev2)


def test_self_and_previous_links_record_the_same_search(live, t, w):
    params = [("code", w["code"]), ("_count", "1")]
    r1 = _first(live, t["doctor"], "GET", "Observation", params, rid())
    page1_self = _links(r1)["self"]
    page2 = call("GET", _links(r1)["next"], t["doctor"])
    cases = [(page1_self, "first", w["p"][0]), (_links(page2)["self"], "next", w["p"][1]),
             (_links(page2)["previous"], "previous", w["p"][0])]
    for url, page, pid in cases:
        r = call("GET", url, t["doctor"], request_id=(req := rid()))
        assert r.status_code == 200, r.text[:500]
        ev = _one(live, t, req)
        assert query_of(ev) == urlencode(params) and detail(ev)["page"] == page and patients(ev) == {pid}
        assert _token(url) not in json.dumps(ev)


def test_a_link_that_does_not_open_is_a_failure_without_a_query(live, t, w):
    r1 = _first(live, t["doctor"], "GET", "Observation", [("code", w["code"]), ("_count", "1")], rid())
    nxt = _links(r1)["next"]
    token = _token(nxt)
    tampered = token[:10] + ("A" if token[10] != "A" else "B") + token[11:]
    refusals = [
        (t["doctor"], f"{live.base}/Observation?_cursor={tampered}", "not valid"),
        (t["doctor"], f"{live.base}/Observation?_cursor={token[:-4]}", "not valid"),
        (t["doctor2"], nxt, "another caller"),  # the same client and user, another token
        (t["doctor"], f"{live.base}/Patient?_cursor={token}", "another search"),
    ]
    for tok, url, says in refusals:
        r = call("GET", url, tok, request_id=(req := rid()))
        body = _outcome(r, 400, "invalid")
        assert says in body["issue"][0]["diagnostics"]
        ev = _one(live, t, req)
        assert subtype(ev) == "search-type" and ev["outcome"] == "4" and "invalid" in ev["outcomeDesc"]
        assert query_of(ev) is None and patients(ev) == set() and "page" not in detail(ev)
        assert token[:-4] not in json.dumps(ev) and "_cursor" not in json.dumps(ev)


def test_a_link_followed_in_a_batch_entry_is_recorded_with_its_search(live, t, w):
    params = [("code", w["code"]), ("_count", "1")]
    nxt = _links(_first(live, t["doctor"], "GET", "Observation", params, rid()))["next"]
    token = _token(nxt)
    bundle = {"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "GET", "url": f"Observation?_cursor={token}"}},
        {"request": {"method": "GET", "url": f"Observation?_cursor={token[:-4]}"}},
    ]}
    r = call("POST", live.base, t["doctor"], bundle, request_id=(req := rid()))
    assert r.status_code == 200, r.text[:500]
    assert [e["response"]["status"] for e in r.json()["entry"]] == ["200 OK", "400"]
    evs = {detail(e).get("entry"): e for e in events(live.base, t["auditor"], req)}
    ok, bad = evs["0"], evs["1"]
    assert (subtype(ok), ok["outcome"]) == ("search-type", "0")
    assert query_of(ok) == urlencode(params) and detail(ok)["page"] == "next" and patients(ok) == {w["p"][1]}
    assert bad["outcome"] == "4" and query_of(bad) == "Observation"
    for ev in (ok, bad):
        assert token[:-4] not in json.dumps(ev) and "_cursor" not in json.dumps(ev)


def test_a_followed_audit_event_search_is_recorded_with_its_search(live, t, w):
    params = [("agent", "clinic-links"), ("_count", "1")]
    r1 = call("GET", f"{live.base}/AuditEvent", t["auditor"], params=params, request_id=(req1 := rid()))
    nxt = _links(r1)["next"]
    r2 = call("GET", nxt, t["auditor"], request_id=(req2 := rid()))
    assert r2.status_code == 200, r2.text[:500]
    ev1, ev2 = _one(live, t, req1), _one(live, t, req2)
    assert query_of(ev1) == query_of(ev2) == urlencode(params) and detail(ev2)["page"] == "next"
    assert patients(ev2) == set()  # reads of the trail: no patient fan-out
    assert _token(nxt) not in json.dumps(ev2)


# ---- 2. the AuditEvent search's own links -----------------------------------------------------
def _audit(live, tok: str, params=None, **kw) -> requests.Response:  # noqa: ANN001
    return call("GET", f"{live.base}/AuditEvent", tok, params=params, **kw)


def _ids(r: requests.Response) -> list[str]:
    assert r.status_code == 200, r.text[:500]
    return [e["resource"]["id"] for e in r.json().get("entry", [])]


def _assert_opaque(url: str, base: str, secrets: tuple[str, ...]) -> None:
    assert_opaque_link(url, f"{base}/AuditEvent?", secrets)


def test_audit_event_links_are_opaque_and_page_like_one_page(live, t, w):
    for i in range(3):  # a few more of the doctor's events, so that there are several pages
        assert call("GET", f"{live.base}/Patient/{w['p'][i]}", t["doctor"]).status_code == 200
    params = {"agent": "clinic-links", "patient": w["p"][0]}
    secrets = (w["p"][0], "clinic-links", "agent", "patient")
    whole = _ids(_audit(live, t["auditor"], {**params, "_count": "100"}))
    assert len(whole) >= 3
    pages = [_audit(live, t["auditor"], {**params, "_count": "1"})]
    while True:
        links = _links(pages[-1])
        for url in links.values():
            _assert_opaque(url, live.base, secrets)
        assert _ids(call("GET", links["self"], t["auditor"])) == _ids(pages[-1])  # self re-runs the page
        if "next" not in links:
            break
        pages.append(call("GET", links["next"], t["auditor"]))
    assert [i for p in pages for i in _ids(p)] == whole
    back = []
    page = pages[-1]
    while "previous" in _links(page):
        page = call("GET", _links(page)["previous"], t["auditor"])
        back.append(_ids(page))
    assert back == [_ids(p) for p in reversed(pages[:-1])]
    assert "previous" not in _links(pages[0])


def test_audit_event_links_keep_count_and_strict_handling(live, t, w):
    r = _audit(live, t["auditor"], {"agent": "clinic-links", "bogus": "x", "_count": "2"})
    nxt = _links(r)["next"]
    page2 = call("GET", nxt, t["auditor"], headers={"Prefer": "handling=strict"})
    assert page2.status_code == 200 and len(_ids(page2)) == 2  # the unknown parameter is not in the link
    assert _ids(call("GET", nxt + "&_format=json", t["auditor"])) == _ids(page2)
    strict = _audit(live, t["auditor"], {"agent": "clinic-links", "bogus": "x"}, headers={"Prefer": "handling=strict"})
    _outcome(strict, 400, "not-supported")


def test_audit_event_links_are_bound_to_their_search_and_caller(live, t, w):
    r = _audit(live, t["auditor"], {"agent": "clinic-links", "_count": "1"})
    links = _links(r)
    for rel in ("self", "next"):
        url = links[rel]
        token = _token(url)
        assert call("GET", url, t["auditor"]).status_code == 200
        other = _outcome(call("GET", url, t["auditor2"]), 400, "invalid")  # same client, another token
        assert "another caller" in other["issue"][0]["diagnostics"]
        bad = token[:10] + ("A" if token[10] != "A" else "B") + token[11:]
        _outcome(_audit(live, t["auditor"], {"_cursor": bad}), 400, "invalid")
        _outcome(_audit(live, t["auditor"], {"_cursor": token[:-4]}), 400, "invalid")
        # nothing may be added to a link
        _outcome(call("GET", url + "&agent=epr-links", t["auditor"]), 400, "invalid")
        _outcome(call("POST", f"{live.base}/AuditEvent/_search", t["auditor"], data=f"_cursor={token}&outcome=0",
                      headers={"Content-Type": FORM}), 400, "invalid")
        # an AuditEvent link is not a link of another search, nor the other way round
        moved = _outcome(call("GET", f"{live.base}/Observation?_cursor={token}", t["auditor"]), 400, "invalid")
        assert "another search" in moved["issue"][0]["diagnostics"]
    search_link = _links(call("GET", f"{live.base}/Observation", t["auditor_obs"],
                              params={"code": w["code"], "_count": "1"}))["next"]
    moved = _outcome(_audit(live, t["auditor_obs"], {"_cursor": _token(search_link)}), 400, "invalid")
    assert "another search" in moved["issue"][0]["diagnostics"]
    # a POST _search's links hold its form values as sealed as a GET's
    r = call("POST", f"{live.base}/AuditEvent/_search", t["auditor"], data="agent=clinic-links&_count=1",
             headers={"Content-Type": FORM})
    for url in _links(r).values():
        _assert_opaque(url, live.base, ("clinic-links", "agent"))

"""Search links carry no search value in clear (issue 6 part 7, decision 0015): every ``self``,
``next`` and ``previous`` link of a type, ``POST _search``, compartment, system, chained and
``_has`` search is ``<path>?_cursor=<opaque>``; following the links gives the same results as
one big page, with ``_sort``, ``_include``, ``_total``, ``_summary`` and ``_elements`` kept; a
link is bound to its path and its caller; a search too long for a link is refused. Both back
ends, over real HTTP."""

from __future__ import annotations

import base64
import os
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
import requests
from apihelp import NHS, assert_outcome, create, headers, link_params, observation, uid
from linkcheck import assert_opaque_link

from app.search.paging import MAX_LINK_CHARS

NHS_NUMBER = "9000000009"
FORM = {"Accept": "application/fhir+json", "Content-Type": "application/x-www-form-urlencoded"}
# What must never appear in a generated link: its path and parameter names are compared
# lower-case and percent-decoded; its token (random-looking base64, where a short word can turn up
# by chance) as the bytes it decodes to.
SECRETS = (NHS_NUMBER, "Smith", "nhs-number", "1961-07-04", "718-7", "identifier", "name")


@pytest.fixture(scope="module")
def w(http, base) -> dict:
    run = uid()
    tag = {"system": "urn:test:links", "code": run}
    a = create(http, base, {"resourceType": "Patient", "meta": {"tag": [tag]},
                            "identifier": [{"system": NHS, "value": NHS_NUMBER}],
                            "name": [{"family": "Smith", "given": ["Ada"]}], "birthDate": "1961-07-04"})
    others = [create(http, base, {"resourceType": "Patient", "meta": {"tag": [tag]},
                                  "identifier": [{"system": "urn:test:mrn", "value": uid()}],
                                  "name": [{"family": "Smith", "given": [f"G{i}"]}], "birthDate": "1961-07-04"})
              for i in range(3)]
    obs = [create(http, base, observation(f"Patient/{a['id']}", effectiveDateTime=f"2024-0{i + 1}-01",
                                          identifier=[{"system": "urn:run", "value": run}]))
           for i in range(4)]
    create(http, base, observation(f"Patient/{others[0]['id']}"))  # a second Patient for _has
    return {"run": run, "a": a["id"], "others": [p["id"] for p in others], "obs": [o["id"] for o in obs]}


def _ids(bundle: dict, mode: str = "match") -> list[str]:
    return [f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in bundle.get("entry", [])
            if e["search"]["mode"] == mode]


def _links(bundle: dict) -> dict[str, str]:
    return {link["relation"]: link["url"] for link in bundle["link"]}


def _assert_opaque(url: str, base: str) -> None:
    assert_opaque_link(url, base, SECRETS)


def _walk(http, base: str, first: requests.Response) -> list[dict]:
    """Every page from ``first`` on through ``next`` links; each link checked on the way, each
    page's self link re-run, and the previous links walked back to the same pages."""
    assert first.status_code == 200, first.text[:1000]
    pages = [first.json()]
    while True:
        links = _links(pages[-1])
        for url in links.values():
            _assert_opaque(url, base)
        again = http.get(links["self"])  # the self link re-runs the same page
        assert again.status_code == 200, again.text[:500]
        assert _ids(again.json()) == _ids(pages[-1]) and _ids(again.json(), "include") == _ids(pages[-1], "include")
        if "next" not in links:
            break
        r = http.get(links["next"])
        assert r.status_code == 200, r.text[:1000]
        pages.append(r.json())
    back = []
    page = pages[-1]
    while "previous" in _links(page):
        page = http.get(_links(page)["previous"]).json()
        back.append(_ids(page))
    assert back == [_ids(p) for p in reversed(pages[:-1])]
    return pages


def _all(pages: list[dict]) -> list[str]:
    return [i for p in pages for i in _ids(p)]


SEARCHES = [
    # (label, method, path relative to the base, parameters)
    ("type GET identifier", "GET", "Patient", [("identifier", f"{NHS}|{NHS_NUMBER},urn:test:mrn|")]),
    ("type GET name", "GET", "Patient", [("name", "Smith"), ("birthdate", "1961-07-04"), ("_sort", "-_id")]),
    ("type POST _search", "POST", "Patient/_search", [("name", "Smith"), ("birthdate", "1961-07-04")]),
    ("chain", "GET", "Observation", [("subject:Patient.identifier", f"{NHS}|{NHS_NUMBER}"), ("_sort", "date")]),
    ("_has", "GET", "Patient", [("_has:Observation:subject:code", "http://loinc.org|718-7"), ("name", "Smith")]),
    ("system GET", "GET", "", [("_type", "Patient,Observation"), ("identifier", f"{NHS}|{NHS_NUMBER},urn:test:mrn|")]),
    ("system POST", "POST", "_search", [("_type", "Patient"), ("name", "Smith")]),
    ("compartment GET", "GET", "Patient/{a}/Observation", [("code", "http://loinc.org|718-7"),
                                                           ("subject:Patient.name", "Smith")]),
    ("compartment POST", "POST", "Patient/{a}/*/_search", [("_type", "Observation"),
                                                           ("subject:Patient.name", "Smith")]),
]


def _send(http, base: str, method: str, path: str, params: list[tuple[str, str]]) -> requests.Response:
    url = f"{base}/{path}".rstrip("/")
    if method == "POST":
        return http.post(url, data=urlencode(params), headers=FORM)
    return http.get(url, params=params)


@pytest.mark.parametrize("label,method,path,params", SEARCHES, ids=[s[0] for s in SEARCHES])
def test_links_hold_no_search_value_and_page_like_one_page(http, base, w, label, method, path, params):
    path = path.format(a=w["a"])
    whole = _send(http, base, method, path, [*params, ("_count", "100")])
    assert whole.status_code == 200, whole.text[:1000]
    want = _ids(whole.json())
    assert len(want) >= 2, (label, want)
    for url in _links(whole.json()).values():
        _assert_opaque(url, base)
    pages = _walk(http, base, _send(http, base, method, path, [*params, ("_count", "1")]))
    assert len(pages) == len(want)
    assert _all(pages) == want


def test_result_controls_survive_the_links(http, base, w):
    params = {"identifier": f"urn:run|{w['run']}", "_sort": "-date", "_include": "Observation:subject",
              "_total": "accurate", "_elements": "status,effective", "_count": "1"}
    pages = _walk(http, base, http.post(f"{base}/Observation/_search", data=params, headers=FORM))
    assert _all(pages) == [f"Observation/{o}" for o in reversed(w["obs"])]  # -date
    for p in pages:
        assert p["total"] == 4
        assert _ids(p, "include") == [f"Patient/{w['a']}"]
        res = p["entry"][0]["resource"]
        assert "valueQuantity" not in res and "effectiveDateTime" in res
        assert "SUBSETTED" in [t["code"] for t in res["meta"]["tag"]]
    r = http.post(f"{base}/Observation/_search", data={"identifier": params["identifier"], "_summary": "count"},
                  headers=FORM).json()
    assert r["total"] == 4 and not r.get("entry")
    again = http.get(_links(r)["self"]).json()
    assert again["total"] == 4 and not again.get("entry")


def test_unknown_parameters_stay_out_of_the_link(http, base, app, w):
    r = http.get(f"{base}/Patient", params={"name": "Smith", "bogus": "Jones", "_sort": "nonsense,family",
                                            "_include": "Patient:nope", "_count": "1"})
    assert r.status_code == 200
    # the self link no longer shows what was used: a warning names what was not (names only)
    outcome = [e["resource"] for e in r.json()["entry"] if e["search"]["mode"] == "outcome"]
    assert len(outcome) == 1 and outcome[0]["issue"][0]["severity"] == "warning"
    diagnostics = outcome[0]["issue"][0]["diagnostics"]
    assert "bogus" in diagnostics and "_sort nonsense" in diagnostics and "_include Patient:nope" in diagnostics
    assert "Jones" not in diagnostics and "Smith" not in diagnostics
    links = _links(r.json())
    assert link_params(app, base, links["self"])["_sort"] == ["family"]
    assert "bogus" not in link_params(app, base, links["self"])
    assert "bogus" not in link_params(app, base, links["next"])
    strict = http.get(links["next"], headers=headers(Prefer="handling=strict"))
    assert strict.status_code == 200, strict.text[:500]
    assert not [e for e in strict.json()["entry"] if e["search"]["mode"] == "outcome"]


def test_a_link_is_bound_to_its_path(http, base, w):
    r = http.get(f"{base}/Patient/{w['a']}/Observation", params={"_count": "1"}).json()
    nxt = _links(r)["next"]
    token = parse_qs(urlsplit(nxt).query)["_cursor"][0]
    assert http.get(nxt).status_code == 200
    other = f"{base}/Patient/{w['others'][0]}/Observation"
    assert_outcome(http.get(other, params={"_cursor": token}), 400, "invalid")
    assert_outcome(http.get(f"{base}/Observation", params={"_cursor": token}), 400, "invalid")
    assert_outcome(http.get(base, params={"_cursor": token}), 400, "invalid")
    # nothing may be added to a link: it would look like a change of search that does not happen
    assert_outcome(http.get(nxt, params={"code": "x"}), 400, "invalid")
    assert_outcome(http.post(f"{other}/_search", data={"_cursor": token}, headers=FORM), 400, "invalid")


def test_tampered_links_are_400(http, base, w):
    r = http.get(f"{base}/Patient", params={"name": "Smith", "_count": "1"}).json()
    for rel in ("self", "next"):
        url = _links(r)[rel]
        token = parse_qs(urlsplit(url).query)["_cursor"][0]
        bad = token[:10] + ("A" if token[10] != "A" else "B") + token[11:]
        assert_outcome(http.get(f"{base}/Patient", params={"_cursor": bad}), 400, "invalid")
        assert_outcome(http.get(f"{base}/Patient", params={"_cursor": token[:-4]}), 400, "invalid")


def test_a_search_with_many_parameters_still_has_short_links(http, base, w):
    params = [("name", "Smith"), ("given", "Ada"), ("birthdate", "ge1961-07-04"), ("birthdate", "le1961-07-04"),
              ("identifier", f"{NHS}|{NHS_NUMBER}"), ("gender:missing", "true"), ("_lastUpdated", "ge2000-01-01"),
              ("_id", w["a"]), ("address-postalcode:missing", "true"), ("family:exact", "Smith"),
              ("_tag", f"urn:test:links|{w['run']}"), ("_revinclude", "Observation:subject"),
              ("_include", "Patient:organization"), ("_sort", "family,-birthdate"), ("_total", "accurate"),
              ("_elements", "name,birthDate"), ("_count", "1")]
    r = http.post(f"{base}/Patient/_search", data=urlencode(params), headers=FORM)
    assert r.status_code == 200, r.text[:500]
    b = r.json()
    assert _ids(b) == [f"Patient/{w['a']}"] and len(_ids(b, "include")) == 4 and b["total"] == 1
    for url in _links(b).values():
        _assert_opaque(url, base)
        assert len(url) < 1000, len(url)  # compressed: far below the 8 KB request-line limits


def test_a_search_too_long_for_a_link_is_refused_not_a_broken_link(http, base, w):
    # random (incompressible) values: the sealed search would not fit in 8 KB (90 values: fewer
    # than the 100 one parameter may have, decision 0019)
    values = ",".join(base64.b32encode(os.urandom(120)).decode() for _ in range(90))
    r = http.post(f"{base}/Patient/_search", data={"name": values}, headers=FORM)
    body = assert_outcome(r, 400, "too-long")
    assert "paging link" in body["issue"][0]["diagnostics"]
    # the same values, fewer of them: links of a few KB, which work
    values = ",".join(base64.b32encode(os.urandom(30)).decode() for _ in range(80)) + ",Smith"
    r = http.post(f"{base}/Patient/_search", data={"name": values, "_count": "1"}, headers=FORM)
    assert r.status_code == 200, r.text[:300]
    links = _links(r.json())
    assert 2000 < len(links["next"]) <= MAX_LINK_CHARS
    assert http.get(links["next"]).status_code == 200


def test_links_are_bound_to_the_token_that_made_them(auth_server, issue_token, w):
    base = auth_server.base
    a = {"Authorization": f"Bearer {issue_token('system/*.rs', client_id='links-a')}", "Accept": FORM["Accept"]}
    b = {"Authorization": f"Bearer {issue_token('system/*.rs', client_id='links-a')}", "Accept": FORM["Accept"]}
    r = requests.post(f"{base}/Patient/_search", data={"identifier": f"{NHS}|{NHS_NUMBER}", "name": "Smith",
                                                         "_count": "1", "_revinclude": "Observation:subject"},
                      headers={**a, "Content-Type": FORM["Content-Type"]})
    assert r.status_code == 200, r.text[:500]
    links = _links(r.json())
    for url in links.values():
        _assert_opaque(url, base)
    r = requests.get(f"{base}/Patient", params={"name": "Smith", "_count": "1"}, headers=a)
    links = _links(r.json())
    for rel in ("self", "next"):
        assert requests.get(links[rel], headers=a).status_code == 200
        refused = requests.get(links[rel], headers=b)  # same client and scopes, another token
        assert_outcome(refused, 400, "invalid")
        assert "another caller" in refused.json()["issue"][0]["diagnostics"]

"""Statement templates (app.search.template) and pages sorted on the index tables, over real HTTP
on both back ends.

What must hold: a search that reuses the statement built for an earlier search of the same
shape gets *its own* values (another patient's search never returns the first patient's
results), sorted pages cut on the index tables give the order the spec asks for (NULLs last,
ties by insertion order) on every page, and ``_explain`` shows the request's own values.
"""

from __future__ import annotations

import pytest
from apihelp import all_pages, create, observation, patient, uid

from app.search.template import templates_for


@pytest.fixture(scope="module")
def data(http, base) -> dict:
    run = uid()
    pats = [create(http, base, patient())["id"] for _ in range(3)]
    obs: dict[str, list[tuple[str | None, str]]] = {}
    for n, p in enumerate(pats):
        rows = []
        # dates out of insertion order, two without a date, one tie
        for d in ("2024-03-01", None, "2024-01-15", "2024-05-20", "2024-01-15", None, f"2023-0{n + 1}-01"):
            extra = {"effectiveDateTime": d} if d else {}
            o = create(http, base, observation(f"Patient/{p}", identifier=[{"system": "urn:tpl", "value": run}], **extra))
            rows.append((d, o["id"]))
        obs[p] = rows
    return {"run": run, "patients": pats, "obs": obs}


def _templates(app) -> int:
    return len(templates_for(app.extensions["results_repo"].registry))


def _match_ids(bundle: dict) -> list[str]:
    return [e["resource"]["id"] for e in bundle.get("entry", []) if e["search"]["mode"] == "match"]


def _expected_desc(rows: list[tuple[str | None, str]]) -> list[str]:
    """-date: latest first, no date last, ties in insertion order."""
    dated = [(d, i, oid) for i, (d, oid) in enumerate(rows) if d]
    dated.sort(key=lambda t: (t[0], -t[1]), reverse=True)
    return [oid for _, _, oid in dated] + [oid for d, oid in rows if not d]


def test_same_shape_other_patient_gets_its_own_results(http, base, app, data):
    url = f"{base}/Observation"
    first = data["patients"][0]
    http.get(url, params={"subject": f"Patient/{first}", "_sort": "-date", "_count": "3"})
    before = _templates(app)
    for p in [*data["patients"], *reversed(data["patients"])]:
        b = http.get(url, params={"subject": f"Patient/{p}", "_sort": "-date", "_count": "3"}).json()
        assert _match_ids(b) == _expected_desc(data["obs"][p])[:3], p
    assert _templates(app) == before  # every one of them ran the first search's statement


def test_other_shapes_rebind_their_values(http, base, app, data):
    p0, p1 = data["patients"][:2]
    url = f"{base}/Observation"
    for p in (p0, p1, p0):
        # token + reference + date prefixes, in rid order (page cut on the index tables)
        b = http.get(url, params={"subject": f"Patient/{p}", "code": "http://loinc.org|718-7",
                                  "date": "ge2024-01-15", "_count": "50"}).json()
        want = [oid for d, oid in data["obs"][p] if d and d >= "2024-01-15"]
        assert _match_ids(b) == want
        # _id with several values (a column clause: the page is cut on the resource row)
        ids = [oid for _, oid in data["obs"][p][:2]]
        b = http.get(url, params={"_id": ",".join(ids)}).json()
        assert sorted(_match_ids(b)) == sorted(ids)
    # a different number of _id values is another shape, not a wrong reuse
    ids = [oid for _, oid in data["obs"][p1][:3]]
    b = http.get(url, params={"_id": ",".join(ids)}).json()
    assert sorted(_match_ids(b)) == sorted(ids)


@pytest.mark.parametrize("sort", ["-date", "date"])
def test_sorted_pages_cut_on_index_tables_follow_the_order(http, base, data, sort):
    p = data["patients"][1]
    rows = data["obs"][p]
    want = _expected_desc(rows)
    if sort == "date":
        dated = sorted(((d, i, oid) for i, (d, oid) in enumerate(rows) if d))
        want = [oid for _, _, oid in dated] + [oid for d, oid in rows if not d]
    one = http.get(f"{base}/Observation", params={"subject": f"Patient/{p}", "_sort": sort, "_count": "50"}).json()
    assert _match_ids(one) == want
    entries = all_pages(http, f"{base}/Observation", {"subject": f"Patient/{p}", "_sort": sort, "_count": "2"})
    assert [e["resource"]["id"] for e in entries if e["search"]["mode"] == "match"] == want
    # and back: previous links from the last page give the pages in reverse
    r = http.get(f"{base}/Observation", params={"subject": f"Patient/{p}", "_sort": sort, "_count": "2"})
    pages = [r.json()]
    while nxt := [link["url"] for link in pages[-1]["link"] if link["relation"] == "next"]:
        pages.append(http.get(nxt[0]).json())
    back = [pages[-1]]
    while prev := [link["url"] for link in back[-1]["link"] if link["relation"] == "previous"]:
        back.append(http.get(prev[0]).json())
    assert [_match_ids(b) for b in reversed(back)] == [_match_ids(b) for b in pages]


def test_explain_shows_this_requests_values_and_the_index_cut(http, base, app, data):
    p0, p1 = data["patients"][:2]
    app.config["SEARCH_DEBUG_SQL"] = True
    try:
        http.get(f"{base}/Observation", params={"subject": f"Patient/{p0}", "_sort": "-date"})
        b = http.get(f"{base}/Observation", params={"subject": f"Patient/{p1}", "_sort": "-date",
                                                   "_explain": "true"}).json()
    finally:
        app.config["SEARCH_DEBUG_SQL"] = False
    diags = [i["diagnostics"] for e in b["entry"] if e["search"]["mode"] == "outcome"
             for i in e["resource"]["issue"] if i["severity"] == "information"]
    page = next(d for d in diags if d.startswith("page"))
    assert p1 in page and p0 not in page
    # sorted on the index tables: the resource row is joined only for the page's rids
    assert "SELECT DISTINCT sp_reference_1.rid" in page and "JOIN resource ON resource.rid = p.rid" in page

"""_sort (several keys, descending, missing values) and keyset paging over real HTTP, both back ends."""

from __future__ import annotations

import itertools
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
from apihelp import all_pages, assert_outcome, create, headers, link_params, uid

TAG = "urn:test:paging"


def _patient(run: str, i: int, family: str | None, birth: str | None) -> dict:
    body: dict = {
        "resourceType": "Patient",
        "identifier": [{"system": TAG, "value": f"{run}-{i}"}],
        "meta": {"tag": [{"system": TAG, "code": run}]},
    }
    if family is not None:
        body["name"] = [{"family": family, "given": [f"G{i}"]}]
    if birth is not None:
        body["birthDate"] = birth
    return body


# (family, birthDate): duplicates, missing values and several values per key on purpose.
ROWS = [
    ("Baker", "1980-05-01"),
    ("adams", "1970-01-01"),
    (None, "1990-01-01"),
    ("Carter", None),
    ("Baker", "1960-03-03"),
    ("Evans", "1980-05-01"),
    (None, None),
    ("Davis", "1975-07-07"),
    ("Baker", None),
    ("Adams", "2000-12-31"),
    ("Fox", "1980-05-01"),
    ("Green", "1955-02-02"),
]


@pytest.fixture(scope="module")
def run(http, base) -> dict:
    run = uid()
    ids = [create(http, base, _patient(run, i, f, b))["id"] for i, (f, b) in enumerate(ROWS)]
    return {"run": run, "ids": ids}


def _ids(entries: list[dict]) -> list[str]:
    return [e["resource"]["id"] for e in entries if e["search"]["mode"] == "match"]


def _expected(ids: list[str], keyfns) -> list[str]:
    """Spec order: each key asc/desc with missing values last in both directions, ties by insertion."""
    order = list(range(len(ROWS)))
    for fn, desc in reversed(keyfns):  # stable multi-key sort, last key first
        present = [i for i in order if fn(ROWS[i]) is not None]
        missing = [i for i in order if fn(ROWS[i]) is None]
        present.sort(key=lambda i: fn(ROWS[i]), reverse=desc)  # stable for ties either way
        order = present + missing
    return [ids[i] for i in order]


def FAMILY(r):  # noqa: N802 - reads as a constant in the table below
    return r[0].lower() if r[0] else None


def BIRTH(r):  # noqa: N802
    return r[1]


@pytest.mark.parametrize(
    "sort,keyfns",
    [
        ("family", [(FAMILY, False)]),
        ("-family", [(FAMILY, True)]),
        ("birthdate", [(BIRTH, False)]),
        ("-birthdate", [(BIRTH, True)]),
        ("family,-birthdate", [(FAMILY, False), (BIRTH, True)]),
        ("-birthdate,family", [(BIRTH, True), (FAMILY, False)]),
        ("_id", []),  # checked against the sorted ids below
    ],
)
def test_sort_orders_with_missing_values_last(http, base, run, sort, keyfns):
    got = _ids(
        all_pages(
            http, f"{base}/Patient", {"_tag": f"{TAG}|{run['run']}", "_sort": sort, "_count": "100"}
        )
    )
    if sort == "_id":
        assert got == sorted(run["ids"])
        return
    assert got == _expected(run["ids"], keyfns)


@pytest.mark.parametrize(
    "sort", ["", "family", "-family,birthdate", "-birthdate", "_lastUpdated", "-_lastUpdated,_id"]
)
@pytest.mark.parametrize("count", ["1", "3", "5"])
def test_paging_returns_every_result_exactly_once_in_order(http, base, run, sort, count):
    params = {"_tag": f"{TAG}|{run['run']}", "_count": "100"}
    if sort:
        params["_sort"] = sort
    one_page = _ids(all_pages(http, f"{base}/Patient", params))
    paged = _ids(all_pages(http, f"{base}/Patient", {**params, "_count": count}))
    assert paged == one_page
    assert sorted(paged) == sorted(run["ids"])


def test_previous_links_walk_back_to_the_same_pages(http, base, run):
    params = {"_tag": f"{TAG}|{run['run']}", "_sort": "-birthdate,family", "_count": "4"}
    pages = []
    r = http.get(f"{base}/Patient", params=params).json()
    pages.append(_ids(r["entry"]))
    assert not [link for link in r["link"] if link["relation"] == "previous"]
    while nxt := [link["url"] for link in r["link"] if link["relation"] == "next"]:
        r = http.get(nxt[0]).json()
        pages.append(_ids(r["entry"]))
    assert len(pages) == 3
    back = []
    while prev := [link["url"] for link in r["link"] if link["relation"] == "previous"]:
        r = http.get(prev[0]).json()
        back.append(_ids(r["entry"]))
    assert back == list(reversed(pages[:-1]))


def test_paging_is_stable_while_new_resources_arrive(http, base):
    run = uid()
    first_ids = [
        create(http, base, _patient(run, i, f"N{i:02d}", f"19{50 + i}-01-01"))["id"]
        for i in range(9)
    ]
    newcomers = itertools.count()
    for sort in ("family", "-birthdate", ""):
        seen: list[str] = []
        params = {"_tag": f"{TAG}|{run}", "_count": "2"}
        if sort:
            params["_sort"] = sort
        r = http.get(f"{base}/Patient", params=params).json()
        while True:
            seen += _ids(r.get("entry", []))
            # A newcomer between pages, sorting both before and after the cursor.
            create(
                http,
                base,
                # (a new identifier each time: a Patient identifier belongs to one Patient only)
                _patient(run, 100 + next(newcomers), "A-first" if len(seen) % 4 else "Z-last", "2099-01-01"),
            )
            nxt = [link["url"] for link in r["link"] if link["relation"] == "next"]
            if not nxt:
                break
            r = http.get(nxt[0]).json()
        assert len(seen) == len(set(seen)), "a result was served twice"
        assert set(first_ids) <= set(seen), "a result present from the start was skipped"


def _next(http, base, run) -> str:
    r = http.get(
        f"{base}/Patient", params={"_tag": f"{TAG}|{run['run']}", "_sort": "family", "_count": "2"}
    )
    return [link["url"] for link in r.json()["link"] if link["relation"] == "next"][0]


def test_tampered_cursor_is_400(http, base, run):
    url = _next(http, base, run)
    parts = urlsplit(url)
    q = parse_qs(parts.query)
    token = q["_cursor"][0]
    q["_cursor"] = [token[:-3] + ("AAA" if token[-3:] != "AAA" else "BBB")]
    r = http.get(f"{parts.scheme}://{parts.netloc}{parts.path}?{urlencode(q, doseq=True)}")
    assert_outcome(r, 400, "invalid")
    r = http.get(f"{base}/Patient", params={"_cursor": "garbage"})
    assert_outcome(r, 400, "invalid")


def test_cursor_from_another_query_is_400(http, base, run):
    """A link carries its whole search: parameters sent with it, or another path, are a 400."""
    token = parse_qs(urlsplit(_next(http, base, run)).query)["_cursor"][0]
    for params in (
        {"_tag": f"{TAG}|{run['run']}", "_sort": "-family"},
        {"_tag": f"{TAG}|other", "_sort": "family"},
    ):
        r = http.get(f"{base}/Patient", params={**params, "_cursor": token})
        assert_outcome(r, 400, "invalid")
    r = http.get(f"{base}/Observation", params={"_sort": "family", "_cursor": token})
    assert r.status_code == 400
    assert_outcome(http.get(f"{base}/Observation", params={"_cursor": token}), 400, "invalid")
    assert_outcome(http.get(f"{base}/Patient", params={"_cursor": token, "_count": "50"}), 400, "invalid")
    assert http.get(f"{base}/Patient", params={"_cursor": token, "_format": "json"}).status_code == 200


def test_links_are_opaque_and_keep_the_query(http, base, app, run):
    params = {"_tag": f"{TAG}|{run['run']}", "_sort": "-family", "_count": "2"}
    r = http.get(f"{base}/Patient", params=params).json()
    nxt = [link["url"] for link in r["link"] if link["relation"] == "next"][0]
    q = parse_qs(urlsplit(nxt).query)
    assert set(q) == {"_cursor"} and run["run"] not in nxt and "family" not in nxt
    # the search is inside, sealed
    assert link_params(app, base, nxt) == {"_tag": [params["_tag"]], "_sort": ["-family"], "_count": ["2"]}
    page2 = http.get(nxt).json()
    assert len(page2["entry"]) == 2
    want = _ids(all_pages(http, f"{base}/Patient", {**params, "_count": "100"}))
    assert _ids(r["entry"]) + _ids(page2["entry"]) == want[:4]


def test_sort_on_unknown_parameter_strict_vs_lenient(http, base, app, run):
    r = http.get(
        f"{base}/Patient", params={"_sort": "nonsense"}, headers=headers(Prefer="handling=strict")
    )
    assert_outcome(r, 400)
    r = http.get(
        f"{base}/Patient", params={"_tag": f"{TAG}|{run['run']}", "_sort": "nonsense,-family"}
    )
    assert r.status_code == 200
    self_url = [link["url"] for link in r.json()["link"] if link["relation"] == "self"][0]
    assert link_params(app, base, self_url)["_sort"] == ["-family"]
    # the dropped key stays dropped: the self link re-runs the search under strict handling too
    again = http.get(self_url, headers=headers(Prefer="handling=strict"))
    assert again.status_code == 200, again.text[:500]
    assert _ids(again.json()["entry"]) == _ids(r.json()["entry"])


def test_count_over_maximum_is_capped_with_warning(http, base, app, run):
    r = http.get(
        f"{base}/Patient",
        params={"_tag": f"{TAG}|{run['run']}", "_count": str(app.config["MAX_PAGE_SIZE"] + 1)},
    )
    assert r.status_code == 200
    outcomes = [e for e in r.json()["entry"] if e["search"]["mode"] == "outcome"]
    assert outcomes and outcomes[0]["resource"]["issue"][0]["severity"] == "warning"
    assert_outcome(http.get(f"{base}/Patient", params={"_count": "abc"}), 400, "invalid")


# --- default order (rid): the cursor's rid bound is pushed into every index subquery ---------------


@pytest.mark.parametrize(
    "extra",
    [
        {},  # one token clause (_tag)
        {"family:missing": "false"},  # + a positive :missing clause
        {"birthdate": "ge1970-01-01"},  # + a date clause with its implied bound
        {"family": "baker,adams,fox,green"},  # + OR-ed string values in one subquery
        {"family:not": "baker"},  # + a negation (anti-join, no bound inside)
    ],
)
@pytest.mark.parametrize("count", ["1", "2", "5"])
def test_default_order_pages_equal_one_page(http, base, run, extra, count):
    params = {"_tag": f"{TAG}|{run['run']}", "_count": "100", **extra}
    one_page = _ids(all_pages(http, f"{base}/Patient", params))
    assert one_page, "the filter should match something"
    paged = _ids(all_pages(http, f"{base}/Patient", {**params, "_count": count}))
    assert paged == one_page
    # the default order is insertion order
    assert one_page == [i for i in run["ids"] if i in set(one_page)]


def test_default_order_previous_links_and_totals(http, base, run):
    params = {"_tag": f"{TAG}|{run['run']}", "_count": "3", "_total": "accurate"}
    r = http.get(f"{base}/Patient", params=params).json()
    pages = [_ids(r["entry"])]
    while nxt := [link["url"] for link in r["link"] if link["relation"] == "next"]:
        r = http.get(nxt[0]).json()
        # the total counts every match, not only those past the cursor
        assert r["total"] == len(ROWS)
        pages.append(_ids(r["entry"]))
    assert [i for p in pages for i in p] == run["ids"]
    back = []
    while prev := [link["url"] for link in r["link"] if link["relation"] == "previous"]:
        r = http.get(prev[0]).json()
        assert r["total"] == len(ROWS)
        back.append(_ids(r["entry"]))
    assert back == list(reversed(pages[:-1]))


def test_default_order_page_n_unchanged_by_inserts_and_deletes(http, base):
    run = uid()
    ids = [create(http, base, _patient(run, i, f"P{i}", None))["id"] for i in range(7)]
    params = {"_tag": f"{TAG}|{run}", "_count": "2"}
    r = http.get(f"{base}/Patient", params=params).json()
    nxt = [link["url"] for link in r["link"] if link["relation"] == "next"][0]
    page2 = _ids(http.get(nxt).json()["entry"])
    assert page2 == ids[2:4]
    # newcomers sort after every existing row; a deleted row before the cursor changes nothing
    create(http, base, _patient(run, 99, "New", None))
    assert http.delete(f"{base}/Patient/{ids[0]}").status_code in (200, 204)
    again = http.get(nxt).json()
    assert _ids(again["entry"]) == page2
    rest = _ids(all_pages(http, nxt))
    assert rest[:2] == page2 and len(rest) == 6 and ids[0] not in rest


# --- polling: _lastUpdated lower bound without _sort orders by (lastUpdated, rid) -----------------


def test_last_updated_polling_order_paging_and_links(http, base, app):
    run = uid()
    made = [create(http, base, _patient(run, i, f"Q{i}", None)) for i in range(5)]
    since = made[0]["meta"]["lastUpdated"]
    ids = [m["id"] for m in made]
    # an update moves the first one to the end of the change order
    body = {**made[0], "gender": "female"}
    r = http.put(f"{base}/Patient/{ids[0]}", json=body, headers=headers())
    assert r.status_code == 200, r.text[:500]
    params = {"_tag": f"{TAG}|{run}", "_lastUpdated": f"ge{since}", "_count": "100"}
    one = http.get(f"{base}/Patient", params=params).json()
    assert _ids(one["entry"]) == ids[1:] + ids[:1]
    self_q = link_params(app, base, one["link"][0]["url"])
    assert "_sort" not in self_q  # the order is implied, not shown
    pages = []
    r = http.get(f"{base}/Patient", params={**params, "_count": "2"}).json()
    pages.append(_ids(r["entry"]))
    while nxt := [link["url"] for link in r["link"] if link["relation"] == "next"]:
        r = http.get(nxt[0]).json()
        pages.append(_ids(r["entry"]))
    assert [i for p in pages for i in p] == ids[1:] + ids[:1]
    back = []
    while prev := [link["url"] for link in r["link"] if link["relation"] == "previous"]:
        r = http.get(prev[0]).json()
        back.append(_ids(r["entry"]))
    assert back == list(reversed(pages[:-1]))
    # upper bounds only: insertion order as usual
    le = _ids(all_pages(http, f"{base}/Patient", {"_tag": f"{TAG}|{run}", "_lastUpdated": "le2999-01-01"}))
    assert le == ids


def test_default_order_page_cut_counts_resources_not_index_rows(http, base):
    """Several index rows of one resource match the driving clause: each resource still counts once."""
    run = uid()
    system = f"urn:test:dup:{run}"
    ids = []
    for i in range(5):
        body = _patient(run, i, f"D{i}", None)
        body["identifier"] += [{"system": system, "value": f"a{i}"}, {"system": system, "value": f"b{i}"}]
        ids.append(create(http, base, body)["id"])
    for count in ("1", "2", "4", "5", "6"):
        pages = []
        r = http.get(f"{base}/Patient", params={"identifier": f"{system}|", "_count": count}).json()
        pages.append(_ids(r["entry"]))
        while nxt := [link["url"] for link in r["link"] if link["relation"] == "next"]:
            r = http.get(nxt[0]).json()
            pages.append(_ids(r["entry"]))
        assert [i for p in pages for i in p] == ids, count
        assert all(len(p) == int(count) for p in pages[:-1]), count
    # with _id (a column clause) the page is cut on the resource rows as before
    got = _ids(all_pages(http, f"{base}/Patient", {"identifier": f"{system}|", "_id": ",".join(ids[1:4]),
                                                    "_count": "1"}))
    assert got == ids[1:4]

"""Conditional create (If-None-Exist), conditional update and conditional delete."""

from __future__ import annotations

from urllib.parse import quote

from apihelp import SYS, assert_outcome, create, headers, history_total, patient, uid


def _ident(value: str) -> str:
    return f"identifier={quote(SYS)}|{value}"


def test_conditional_create_no_match_creates(http, base):
    v = uid()
    r = http.post(f"{base}/Patient", json=patient(v), headers=headers(If_None_Exist=_ident(v)))
    assert r.status_code == 201, r.text
    assert r.headers["Location"].endswith("/_history/1")


def test_conditional_create_one_match_returns_existing(http, base):
    v = uid()
    existing = create(http, base, patient(v))
    before = history_total(http, base)
    r = http.post(
        f"{base}/Patient", json=patient(v, gender="male"), headers=headers(If_None_Exist=_ident(v))
    )
    assert r.status_code == 200, r.text
    assert r.json() == existing
    assert r.headers["ETag"] == 'W/"1"'
    assert r.headers["Location"] == f"{base}/Patient/{existing['id']}/_history/1"
    assert history_total(http, base) == before
    # the leading "Patient?" form of the header is accepted too
    r = http.post(
        f"{base}/Patient", json=patient(v), headers=headers(If_None_Exist=f"Patient?{_ident(v)}")
    )
    assert r.status_code == 200 and r.json()["id"] == existing["id"]


def test_conditional_create_two_matches_is_412(http, base):
    v = uid()  # two Patients cannot share an identifier (decision 0009): they share a family name
    create(http, base, patient(name=[{"family": v}]))
    create(http, base, patient(name=[{"family": v}]))
    before = history_total(http, base)
    r = http.post(f"{base}/Patient", json=patient(v), headers=headers(If_None_Exist=f"family={v}"))
    assert_outcome(r, 412)
    assert history_total(http, base) == before


def test_conditional_create_bad_criteria(http, base):
    before = history_total(http, base)
    r = http.post(
        f"{base}/Patient", json=patient(), headers=headers(If_None_Exist="no-such-param=1")
    )
    assert_outcome(r, 400)
    assert history_total(http, base) == before


def test_conditional_update_no_match_creates(http, base):
    v = uid()
    r = http.put(f"{base}/Patient?{_ident(v)}", json=patient(v), headers=headers())
    assert r.status_code == 201, r.text
    pid = r.json()["id"]
    assert r.headers["Location"] == f"{base}/Patient/{pid}/_history/1"
    assert http.get(f"{base}/Patient/{pid}").status_code == 200


def test_conditional_update_one_match_updates(http, base):
    v = uid()
    existing = create(http, base, patient(v))
    r = http.put(f"{base}/Patient?{_ident(v)}", json=patient(v, gender="male"), headers=headers())
    assert r.status_code == 200, r.text
    res = r.json()
    assert res["id"] == existing["id"]
    assert res["gender"] == "male" and res["meta"]["versionId"] == "2"
    assert r.headers["ETag"] == 'W/"2"'
    # a body id that differs from the match is refused
    r = http.put(
        f"{base}/Patient?{_ident(v)}", json=patient(v, id="someone-else"), headers=headers()
    )
    assert_outcome(r, 400)
    # a stale If-Match on the match is refused
    r = http.put(
        f"{base}/Patient?{_ident(v)}",
        json=patient(v, gender="other"),
        headers=headers(If_Match='W/"1"'),
    )
    assert_outcome(r, 412)
    assert http.get(f"{base}/Patient/{existing['id']}").json()["gender"] == "male"


def test_conditional_update_several_matches_is_412(http, base):
    v = uid()  # two Patients cannot share an identifier (decision 0009): they share a family name
    a = create(http, base, patient(name=[{"family": v}]))
    b = create(http, base, patient(name=[{"family": v}]))
    before = history_total(http, base)
    r = http.put(f"{base}/Patient?family={v}", json=patient(v, gender="male"), headers=headers())
    assert_outcome(r, 412)
    assert history_total(http, base) == before
    for p in (a, b):
        assert http.get(f"{base}/Patient/{p['id']}").json() == p


def test_conditional_update_without_criteria_is_400(http, base):
    r = http.put(f"{base}/Patient", json=patient(), headers=headers())
    assert_outcome(r, 400)


def test_conditional_delete_one_match(http, base):
    v = uid()
    p = create(http, base, patient(v))
    r = http.delete(f"{base}/Patient?{_ident(v)}")
    assert r.status_code in (200, 204), r.text
    assert_outcome(http.get(f"{base}/Patient/{p['id']}"), 410, "deleted")


def test_conditional_delete_several_is_412(http, base):
    v = uid()  # two Patients cannot share an identifier (decision 0009): they share a family name
    a = create(http, base, patient(name=[{"family": v}]))
    b = create(http, base, patient(name=[{"family": v}]))
    before = history_total(http, base)
    assert_outcome(http.delete(f"{base}/Patient?family={v}"), 412)
    assert history_total(http, base) == before
    assert http.get(f"{base}/Patient/{a['id']}").status_code == 200
    assert http.get(f"{base}/Patient/{b['id']}").status_code == 200


def test_conditional_delete_none_is_204(http, base):
    before = history_total(http, base)
    r = http.delete(f"{base}/Patient?{_ident(uid())}")
    assert r.status_code in (200, 204)
    assert history_total(http, base) == before


def test_conditional_delete_without_criteria_is_400(http, base):
    create(http, base, patient())
    before = history_total(http, base)
    assert_outcome(http.delete(f"{base}/Patient"), 400)
    assert history_total(http, base) == before


def test_conditional_delete_unknown_type(http, base):
    assert_outcome(http.delete(f"{base}/Claim?identifier=x"), 404, "not-supported")


def test_sql_looking_values_in_conditional_queries(http, base):
    hostile = [
        "x' OR '1'='1",
        "x'; DROP TABLE resource; --",
        '" OR 1=1 --',
        "%' OR 1=1 --",
        "\\'; SELECT pg_sleep(5); --",
    ]
    a = create(http, base, patient())
    for value in hostile:
        q = f"identifier={quote(SYS)}|{quote(value)}"
        before = history_total(http, base)
        r = http.delete(f"{base}/Patient?{q}")
        assert r.status_code in (200, 204, 400), r.text
        assert history_total(http, base) == before
        r = http.put(f"{base}/Patient?{q}", json=patient(value), headers=headers())
        assert r.status_code == 201, r.text
        pid = r.json()["id"]
        r = http.post(f"{base}/Patient", json=patient(value), headers=headers(If_None_Exist=q))
        assert r.status_code == 200, r.text
        assert r.json()["id"] == pid
    assert http.get(f"{base}/Patient/{a['id']}").status_code == 200

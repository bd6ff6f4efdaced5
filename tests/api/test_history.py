"""history at instance, type and system level: order, _since, _count, paging, deletes."""

from __future__ import annotations

from apihelp import assert_outcome, create, headers, patient, put, uid


def _versions(entries: list[dict]) -> list[str]:
    return [e["response"]["etag"] for e in entries]


def _make_history(http, base) -> tuple[str, list[dict]]:
    """A Patient with versions 1 (create), 2, 3 (updates) and 4 (delete)."""
    created = create(http, base, patient())
    pid = created["id"]
    v2 = put(http, base, {**created, "gender": "male"}).json()
    v3 = put(http, base, {**v2, "active": True}).json()
    assert http.delete(f"{base}/Patient/{pid}").status_code in (200, 204)
    return pid, [created, v2, v3]


def test_instance_history_newest_first_with_delete(http, base):
    pid, versions = _make_history(http, base)
    r = http.get(f"{base}/Patient/{pid}/_history")
    assert r.status_code == 200
    b = r.json()
    assert b["resourceType"] == "Bundle" and b["type"] == "history"
    assert b["total"] == 4
    assert _versions(b["entry"]) == ['W/"4"', 'W/"3"', 'W/"2"', 'W/"1"']
    deleted = b["entry"][0]
    assert deleted["request"]["method"] == "DELETE"
    assert "resource" not in deleted
    assert deleted["fullUrl"] == f"{base}/Patient/{pid}"
    assert [e["resource"] for e in b["entry"][1:]] == versions[::-1]
    assert b["entry"][-1]["request"]["method"] == "POST"
    assert b["entry"][1]["request"] == {"method": "PUT", "url": f"Patient/{pid}"}
    stamps = [e["response"]["lastModified"] for e in b["entry"]]
    assert stamps == sorted(stamps, reverse=True)
    assert len(set(stamps)) == 4


def test_instance_history_paging_with_count(http, base):
    pid, _ = _make_history(http, base)
    r = http.get(f"{base}/Patient/{pid}/_history", params={"_count": "1"})
    first = r.json()
    assert len(first["entry"]) == 1 and first["total"] == 4
    assert any(link["relation"] == "self" for link in first["link"])
    seen = []
    page = first
    pages = 1
    while True:
        seen.extend(_versions(page["entry"]))
        nxt = [link["url"] for link in page["link"] if link["relation"] == "next"]
        if not nxt:
            break
        assert nxt[0].startswith(f"{base}/Patient/{pid}/_history")
        page = http.get(nxt[0]).json()
        pages += 1
        assert len(page["entry"]) <= 1
    assert seen == ['W/"4"', 'W/"3"', 'W/"2"', 'W/"1"']
    assert pages == 4


def test_instance_history_since(http, base):
    created = create(http, base, patient())
    pid = created["id"]
    v2 = put(http, base, {**created, "gender": "male"}).json()
    put(http, base, {**v2, "gender": "other"})
    since = v2["meta"]["lastUpdated"]
    b = http.get(f"{base}/Patient/{pid}/_history", params={"_since": since}).json()
    assert _versions(b["entry"]) == ['W/"3"', 'W/"2"']
    b = http.get(f"{base}/Patient/{pid}/_history", params={"_since": "2999-01-01T00:00:00Z"}).json()
    assert b.get("entry", []) == [] and b["total"] == 0
    # a "+" left unencoded in the query string arrives as a space and is still understood
    b = http.get(f"{base}/Patient/{pid}/_history?_since=2999-01-01T00:00:00+00:00").json()
    assert b["total"] == 0
    b = http.get(f"{base}/Patient/{pid}/_history?_since=2000-01-01T00:00:00+00:00").json()
    assert b["total"] == 3


def test_type_history(http, base):
    tag = uid()
    start = create(
        http, base, {"resourceType": "Practitioner", "name": [{"family": f"Start-{tag}"}]}
    )
    since = start["meta"]["lastUpdated"]
    made = [start]
    for i in range(6):
        made.append(
            create(
                http, base, {"resourceType": "Practitioner", "name": [{"family": f"P{i}-{tag}"}]}
            )
        )
    put(http, base, {**made[2], "active": True})
    assert http.delete(f"{base}/Practitioner/{made[3]['id']}").status_code in (200, 204)
    create(http, base, patient())  # another type: not in Practitioner history
    entries = []
    url = f"{base}/Practitioner/_history"
    r = http.get(url, params={"_since": since, "_count": "3"})
    assert r.json()["total"] == 9
    while True:
        page = r.json()
        assert page["type"] == "history"
        assert len(page.get("entry", [])) <= 3
        entries.extend(page.get("entry", []))
        nxt = [link["url"] for link in page["link"] if link["relation"] == "next"]
        if not nxt:
            break
        r = http.get(nxt[0])
        assert r.status_code == 200
    assert len(entries) == 9
    assert all(e["fullUrl"].startswith(f"{base}/Practitioner/") for e in entries)
    keys = [(e["fullUrl"], e["response"]["etag"]) for e in entries]
    assert len(set(keys)) == 9
    stamps = [e["response"]["lastModified"] for e in entries]
    assert stamps == sorted(stamps, reverse=True)
    assert entries[0]["request"]["method"] == "DELETE"
    assert entries[0]["fullUrl"].endswith(made[3]["id"])
    assert entries[-1]["resource"]["id"] == start["id"]


def test_system_history(http, base):
    p = create(http, base, patient())
    since = p["meta"]["lastUpdated"]
    o = create(http, base, {"resourceType": "Organization", "name": f"Org {uid()}"})
    put(http, base, {**p, "gender": "male"})
    r = http.get(f"{base}/_history", params={"_since": since, "_count": "2"})
    assert r.status_code == 200
    b = r.json()
    assert b["total"] == 3
    entries = list(b["entry"])
    while nxt := [link["url"] for link in b["link"] if link["relation"] == "next"]:
        b = http.get(nxt[0]).json()
        entries.extend(b.get("entry", []))
    assert [(e["fullUrl"].rsplit("/", 2)[-2], e["response"]["etag"]) for e in entries] == [
        ("Patient", 'W/"2"'),
        ("Organization", 'W/"1"'),
        ("Patient", 'W/"1"'),
    ]
    assert entries[1]["resource"]["id"] == o["id"]
    # unfiltered system history also pages to the end without repeats
    all_entries = []
    b = http.get(f"{base}/_history", params={"_count": "7"}).json()
    total = b["total"]
    all_entries.extend(b.get("entry", []))
    while nxt := [link["url"] for link in b["link"] if link["relation"] == "next"]:
        b = http.get(nxt[0]).json()
        all_entries.extend(b.get("entry", []))
    assert len(all_entries) == total
    assert len({(e["fullUrl"], e["response"]["etag"]) for e in all_entries}) == total


def test_history_errors(http, base):
    assert_outcome(http.get(f"{base}/Patient/{uid()}/_history"), 404, "not-found")
    assert_outcome(http.get(f"{base}/_history", params={"_count": "abc"}), 400, "invalid")
    assert_outcome(http.get(f"{base}/_history", params={"_count": "-1"}), 400, "invalid")
    assert_outcome(http.get(f"{base}/_history", params={"_since": "yesterday"}), 400, "invalid")
    assert_outcome(http.get(f"{base}/_history", params={"_cursor": "forged"}), 400, "invalid")
    assert_outcome(http.get(f"{base}/Claim/_history"), 404, "not-supported")


def test_history_headers(http, base):
    r = http.get(f"{base}/_history", headers=headers())
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("application/fhir+json")

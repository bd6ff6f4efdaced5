"""Code + date searches check the token rows' date envelope (decision 0016) and find exactly
what the date clauses alone find, on both databases, for every prefix and for resources whose
date is a point, a period, a partial date or a Timing of several events."""

from __future__ import annotations

import pytest

from app.search import plan
from app.search.template import templates_for

CODE = {"coding": [{"system": "urn:env", "code": "C"}]}
OTHER = {"coding": [{"system": "urn:env", "code": "D"}]}
OBSERVATIONS = {
    "point": {"effectiveDateTime": "2010-03-01"},
    "period": {"effectivePeriod": {"start": "2009-11-01", "end": "2010-02-01"}},
    "timing": {"effectiveTiming": {"event": ["2009-06-01", "2012-06-01"]}},  # two date rows
    "none": {},
    "boundary": {"effectiveDateTime": "2011-01-01T00:30:00+00:00"},
    "year": {"effectiveDateTime": "2010"},
    "instant": {"effectiveInstant": "2010-12-31T23:59:59Z"},
    "open-period": {"effectivePeriod": {"start": "2013-05-01"}},
}
QUERIES = [
    ["ge2010-01-01", "lt2011-01-01"],
    ["ge2011-01-01", "lt2010-01-01"],  # only a resource with two rows far apart: "timing"
    ["2010"], ["eq2010-03-01"], ["ne2010-03-01"], ["gt2010-06"], ["lt2010-06"],
    ["ge2012-06-01"], ["le2009-06-01"], ["sa2011"], ["eb2010"], ["ap2010-03-01"],
    ["ge2014", "le2020"], ["eq2009,eq2013"], ["gt2099"], ["lt1900"], ["ne2010,gt2012"],
    ["le2011-01-01T00:30:00Z", "ge2011-01-01T00:30:00Z"],
]


@pytest.fixture
def client(app):
    c = app.test_client()
    for name, effective in OBSERVATIONS.items():
        for code, suffix in ((CODE, ""), (OTHER, "-other")):
            obs = {"resourceType": "Observation", "id": f"env-{name}{suffix}", "status": "final",
                   "code": code, **effective}
            assert c.put(f"/fhir/Observation/env-{name}{suffix}", json=obs).status_code in (200, 201)
    return c


def _ids(client, dates: list[str]) -> set[str]:
    q = "&".join(f"date={d}" for d in dates)
    r = client.get(f"/fhir/Observation?code=urn:env|C&{q}&_count=100")
    assert r.status_code == 200, r.data[:300]
    return {e["resource"]["id"] for e in r.json.get("entry", [])}


def test_the_envelope_changes_no_result(app, client, monkeypatch):
    templates = templates_for(app.extensions["results_repo"].registry)
    templates.clear()
    real, used = plan._envelope_filters, []

    def counted(t, tree):
        found = real(t, tree)
        used.append(bool(found))
        return found

    monkeypatch.setattr(plan, "_envelope_filters", counted)
    with_envelope = {tuple(q): _ids(client, q) for q in QUERIES}
    assert any(used)  # the searches did check the envelope
    monkeypatch.setattr(plan, "_envelope_filters", lambda t, tree: [])
    templates.clear()
    without = {tuple(q): _ids(client, q) for q in QUERIES}
    assert with_envelope == without
    assert with_envelope[("ge2011-01-01", "lt2010-01-01")] == {"env-timing"}
    assert with_envelope[("ge2010-01-01", "lt2011-01-01")] == {"env-point", "env-period", "env-timing", "env-year",
                                                              "env-instant"}
    assert with_envelope[("gt2099",)] == {"env-open-period"}  # no end: open to the future
    assert all(not i.endswith("-other") and i != "env-none" for ids in with_envelope.values() for i in ids)


def test_an_update_of_the_date_moves_the_envelope(client):
    assert _ids(client, ["ge2030"]) == {"env-open-period"}
    obs = {"resourceType": "Observation", "id": "env-point", "status": "final", "code": CODE,
           "effectiveDateTime": "2031-01-01"}
    assert client.put("/fhir/Observation/env-point", json=obs).status_code == 200
    assert _ids(client, ["ge2030"]) == {"env-point", "env-open-period"}
    assert "env-point" not in _ids(client, ["ge2010-01-01", "lt2011-01-01"])


# ---- a patient's results sorted by date: the key is read from the reference rows' envelope ----
def _pages(client, url: str) -> list[str]:
    """Every id of a search, following its next links."""
    ids: list[str] = []
    while url:
        r = client.get(url)
        assert r.status_code == 200, r.data[:300]
        ids += [e["resource"]["id"] for e in r.json.get("entry", []) if e["search"]["mode"] == "match"]
        nxt = [ln["url"] for ln in r.json["link"] if ln["relation"] == "next"]
        url = "/fhir" + nxt[0].split("/fhir", 1)[1] if nxt else ""
    return ids


@pytest.fixture
def patient_results(app):
    c = app.test_client()
    for pid in ("env-p1", "env-p2"):
        assert c.put(f"/fhir/Patient/{pid}", json={"resourceType": "Patient", "id": pid}).status_code in (200, 201)
        for name, effective in OBSERVATIONS.items():
            for k, code in enumerate((CODE, OTHER)):
                oid = f"{pid}-{name}-{k}"
                obs = {"resourceType": "Observation", "id": oid, "status": "final", "code": code,
                       "subject": {"reference": f"Patient/{pid}"}, **effective}
                assert c.put(f"/fhir/Observation/{oid}", json=obs).status_code in (200, 201)
    return c


SORTED = [
    "/fhir/Observation?subject=Patient/env-p1&_sort=-date&_count=3",
    "/fhir/Observation?subject=Patient/env-p1&_sort=date&_count=4",
    "/fhir/Observation?subject=Patient/env-p1&code=urn:env|C&_sort=-date&_count=1",
    "/fhir/Observation?subject=Patient/env-p1&_sort=-date,code&_count=5",
    "/fhir/Observation?subject=Patient/env-p1&date=ge2010&_sort=-date&_count=2",
    "/fhir/Observation?code=urn:env|D&_sort=date&_count=3",  # a token driver carries it too
]


def test_date_sort_keys_read_from_the_envelope_give_the_same_pages(app, patient_results, monkeypatch):
    from app.interactions import search as interaction

    templates = templates_for(app.extensions["results_repo"].registry)
    templates.clear()
    with_envelope = {u: _pages(patient_results, u) for u in SORTED}
    built = [str(v[0]) for v in templates._stmts.values()]
    assert any("d.date_high" in sql for sql in built) and any("d.date_low" in sql for sql in built)
    monkeypatch.setattr(interaction, "_envelope_key", lambda *_a: False)
    templates.clear()
    without = {u: _pages(patient_results, u) for u in SORTED}
    assert not any("d.date_high" in str(v[0]) for v in templates._stmts.values())
    assert with_envelope == without
    newest = with_envelope[SORTED[0]]
    assert len(newest) == len(set(newest)) == 2 * len(OBSERVATIONS)
    assert newest[:2] == ["env-p1-open-period-0", "env-p1-open-period-1"]  # open to the future
    assert set(newest[-2:]) == {"env-p1-none-0", "env-p1-none-1"}  # no date: last either way
    assert with_envelope[SORTED[2]][0] == "env-p1-open-period-0"

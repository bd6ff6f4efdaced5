"""Update diffs touch only the rows that changed."""

from __future__ import annotations

import copy

from app.indexing import extract, load_registry
from app.indexing.diff import diff_rows
from config import RESULTS_RESOURCE_TYPES

OBS = {"resourceType": "Observation", "id": "o", "status": "preliminary",
       "code": {"coding": [{"system": "http://loinc.org", "code": "2345-7"}]},
       "subject": {"reference": "Patient/p"},
       "valueQuantity": {"value": 5, "system": "http://unitsofmeasure.org", "code": "mmol/L"}}


def test_diff_only_changed_rows():
    reg = load_registry(RESULTS_RESOURCE_TYPES)
    new = copy.deepcopy(OBS)
    new["status"] = "final"
    old_rows, new_rows = extract(reg, OBS), extract(reg, new)
    deleted, inserted = diff_rows(old_rows, new_rows)
    none = {"date_low": None, "date_high": None}
    assert deleted["token"] == [{"param": "status", "system": None, "code": "preliminary", **none, "grp": None}]
    assert inserted["token"] == [{"param": "status", "system": None, "code": "final", **none, "grp": None}]
    assert all(not deleted[k] and not inserted[k] for k in deleted if k != "token")


def test_diff_identical_and_from_empty():
    reg = load_registry(RESULTS_RESOURCE_TYPES)
    rows = extract(reg, OBS)
    deleted, inserted = diff_rows(rows, extract(reg, copy.deepcopy(OBS)))
    assert not any(deleted.values()) and not any(inserted.values())
    deleted, inserted = diff_rows({}, rows)
    assert inserted == rows and not any(deleted.values())


def test_a_new_date_rewrites_the_token_and_reference_rows_that_carry_it():
    """Token and reference rows carry the resource's date envelope, so a changed ``effective``
    rewrites them (and only them, besides the date row itself)."""
    reg = load_registry(RESULTS_RESOURCE_TYPES)
    old = {**copy.deepcopy(OBS), "effectiveDateTime": "2020-01-01"}
    new = {**copy.deepcopy(OBS), "effectiveDateTime": "2021-06-01"}
    deleted, inserted = diff_rows(extract(reg, old), extract(reg, new))
    assert {r["param"] for r in inserted["token"]} == {r["param"] for r in extract(reg, new)["token"]}
    assert {r["date_low"].year for r in inserted["token"] + inserted["reference"]} == {2021}
    assert {r["param"] for r in inserted["reference"]} == {r["param"] for r in extract(reg, new)["reference"]}
    assert [r["param"] for r in inserted["date"]] == ["date"]
    assert all(not inserted[k] for k in inserted if k not in ("token", "reference", "date"))

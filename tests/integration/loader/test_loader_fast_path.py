"""The loader's fast paths: the parallel run where this process loads too, and the quick test
that spares entries the copying rewrite (see conftest for the databases)."""

from __future__ import annotations

import shutil
from pathlib import Path

from sqlalchemy import text

from app.loader.files import RawUnit
from app.loader.prepare import _mentions, prepare

LOADER_DATA = Path(__file__).parents[2] / "data" / "loader"
SYNTHEA_FILES = sorted(LOADER_DATA.glob("*.json.gz"))


def test_parallel_load_with_more_files_than_queued_work(loader_app, db_url, tmp_path):
    """3 writers (this process and 2 spawned) over 8 files: the spawned ones get at most two
    files queued each, this process takes from the other end; shared Organizations and
    Practitioners are written once, every file is accounted for."""
    from app.loader import load_paths

    files = []
    for n in range(4):
        for p in SYNTHEA_FILES:
            dst = tmp_path / f"{n}_{p.name}"
            shutil.copy(p, dst)
            files.append(dst)
    labels: list[str] = []
    summary = load_paths(loader_app, files, workers=3, progress=lambda n, label: labels.append(label))
    assert summary.ok, summary.failed
    assert summary.bundles == len(files) == len(labels)
    with loader_app.extensions["results_repo"].engine.connect() as c:
        assert c.execute(text("SELECT max(version) FROM resource")).scalar_one() == 1
        dup = c.execute(
            text("SELECT count(*) FROM (SELECT res_type, res_id FROM resource GROUP BY 1, 2 HAVING count(*) > 1) d")
        ).scalar_one()
        assert dup == 0
        orphans = c.execute(
            text("SELECT count(*) FROM ref_link l LEFT JOIN resource r ON r.res_type = l.target_type AND r.res_id = l.target_id WHERE r.rid IS NULL")
        ).scalar_one()
        assert orphans == 0
    # each resource was created once; the copies found it stored (unchanged), or lost a race
    # and were retried
    assert summary.created + summary.unchanged == summary.processed
    if db_url.startswith("sqlite"):
        assert summary.workers == 1
    else:
        assert summary.workers == 3


def test_quick_reference_scan():
    dropped = {"urn:uuid:claim-1": "Claim/1"}
    assert _mentions({"a": {"reference": "urn:uuid:claim-1"}}, dropped)
    assert _mentions({"a": [{"x": ["urn:uuid:claim-1"]}]}, dropped)  # anywhere: conservative
    assert not _mentions({"a": {"reference": "urn:uuid:claim-2"}, "b": "urn:uuid:claim-1x"}, dropped)
    assert not _mentions({"a": "no urn here", "n": 1.5, "b": None}, dropped)
    # an escape sequence inside a urn string is not decoded by the scan: rewrite to be safe
    assert _mentions({"a": 'urn:uuid:"quoted"'}, dropped)


def test_entries_that_mention_no_dropped_entry_are_passed_through():
    kept = {"resourceType": "Patient", "id": "p", "name": [{"family": "X"}]}
    obs = {"resourceType": "Observation", "id": "o", "status": "final", "code": {"text": "x"},
           "subject": {"reference": "urn:uuid:p"}, "hasMember": [{"reference": "urn:uuid:c"}]}
    claim = {"resourceType": "Claim", "id": "c", "patient": {"reference": "urn:uuid:p"}}
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"fullUrl": "urn:uuid:p", "resource": kept, "request": {"method": "POST", "url": "Patient"}},
            {"fullUrl": "urn:uuid:c", "resource": claim, "request": {"method": "POST", "url": "Claim"}},
            {"fullUrl": "urn:uuid:o", "resource": obs, "request": {"method": "POST", "url": "Observation"}},
        ],
    }
    p = prepare(RawUnit("f.json", "f.json", "json", body=bundle), frozenset({"Patient", "Observation"}))
    by_type = {e["resource"]["resourceType"]: e["resource"] for e in p.bundle["entry"]}
    assert by_type["Patient"] is kept  # nothing to rewrite: not even copied
    assert by_type["Observation"]["hasMember"] == [{"reference": "Claim/c"}]  # rewritten copy
    assert by_type["Observation"]["subject"] == {"reference": "urn:uuid:p"}  # left to the core
    assert obs["hasMember"] == [{"reference": "urn:uuid:c"}]  # the input is unchanged

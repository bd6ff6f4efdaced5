"""``results-repo load`` / ``demo`` end to end, on SQLite and PostgreSQL (see conftest)."""

from __future__ import annotations

import gzip
import json
import re
import shutil
from collections import Counter, defaultdict
from pathlib import Path

import orjson
import pytest
from sqlalchemy import text

LOADER_DATA = Path(__file__).parents[2] / "data" / "loader"
SYNTHEA_FILES = sorted(LOADER_DATA.glob("*.json.gz"))
SHARED = Path("/work/shared/data")


def read_bundle(p: Path) -> dict:
    opener = gzip.open if p.name.endswith(".gz") else open
    with opener(p, "rb") as fh:
        return orjson.loads(fh.read())


def bundle_resources(paths: list[Path]) -> dict[str, set[str]]:
    """type -> distinct ids over the bundles: what the database should hold."""
    out: dict[str, set[str]] = defaultdict(set)
    for p in paths:
        for e in read_bundle(p)["entry"]:
            out[e["resource"]["resourceType"]].add(e["resource"]["id"])
    return out


def expected_links(paths: list[Path], types: frozenset[str]) -> int:
    """Distinct (source resource, target) references to enabled types, urn:uuid resolved."""
    from app.storage.references import iter_references

    links: set[tuple[str, str, str]] = set()
    for p in paths:
        entries = read_bundle(p)["entry"]
        urls = {
            e["fullUrl"]: f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in entries
        }
        for e in entries:
            res = e["resource"]
            if res["resourceType"] not in types:
                continue
            for _path, ref in iter_references(res):
                target = urls.get(ref, ref)
                if target.split("/")[0] in types:
                    links.add((res["resourceType"], res["id"], target))
    return len(links)


def stored_counts(app) -> dict[str, int]:
    with app.extensions["results_repo"].engine.connect() as c:
        rows = c.execute(text("SELECT res_type, count(*) FROM resource GROUP BY res_type")).all()
    return {t: n for t, n in rows}


def scalar(app, sql: str):
    with app.extensions["results_repo"].engine.connect() as c:
        return c.execute(text(sql)).scalar_one()


def enabled(app) -> frozenset[str]:
    return app.extensions["results_repo"].enabled_types


def write_json(path: Path, obj: object) -> Path:
    path.write_bytes(orjson.dumps(obj))
    return path


def observation(oid: str, patient: str) -> dict:
    return {
        "resourceType": "Observation",
        "id": oid,
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "718-7"}]},
        "subject": {"reference": f"Patient/{patient}"},
        "valueQuantity": {
            "value": 13.1,
            "unit": "g/dL",
            "system": "http://unitsofmeasure.org",
            "code": "g/dL",
        },
    }


# ---- Synthea bundles ---------------------------------------------------------------------------
def test_two_synthea_bundles_each_resource_stored_once(loader_app, run_cli):
    res = run_cli("load", "--no-progress", *map(str, SYNTHEA_FILES))
    assert res.exit_code == 0, res.output
    expected = bundle_resources(SYNTHEA_FILES)
    want = {t: len(ids) for t, ids in expected.items() if t in enabled(loader_app)}
    assert stored_counts(loader_app) == want
    # the two files share one Organization and one Practitioner: stored once each
    entries = Counter(
        e["resource"]["resourceType"] for p in SYNTHEA_FILES for e in read_bundle(p)["entry"]
    )
    assert entries["Organization"] == want["Organization"] + 1
    assert entries["Practitioner"] == want["Practitioner"] + 1
    # ids from the source are kept
    pid = next(iter(expected["Patient"]))
    assert (
        scalar(
            loader_app, f"SELECT count(*) FROM resource WHERE res_type='Patient' AND res_id='{pid}'"
        )
        == 1
    )
    assert "Load summary" in res.output and "resources/s" in res.output


def test_every_stored_reference_resolves(loader_app, run_cli):
    assert run_cli("load", "--no-progress", str(LOADER_DATA)).exit_code == 0
    links = scalar(loader_app, "SELECT count(*) FROM ref_link")
    dangling = scalar(
        loader_app,
        "SELECT count(*) FROM ref_link l LEFT JOIN resource r "
        "ON r.res_type = l.target_type AND r.res_id = l.target_id AND r.deleted = false "
        "WHERE r.rid IS NULL",
    )
    assert links == expected_links(SYNTHEA_FILES, enabled(loader_app)) and dangling == 0
    # every urn:uuid reference was resolved to Type/id
    left = scalar(
        loader_app,
        'SELECT count(*) FROM resource_version WHERE content LIKE \'%"reference":"urn:%\'',
    )
    assert left == 0


def test_loading_again_creates_no_versions_or_rows(loader_app):
    from app.loader import load_paths

    first = load_paths(loader_app, SYNTHEA_FILES)
    assert first.ok and first.updated == 0
    assert first.unchanged == 2  # the Organization and Practitioner the second file repeats
    rows = scalar(loader_app, "SELECT count(*) FROM resource")
    versions = scalar(loader_app, "SELECT count(*) FROM resource_version")
    second = load_paths(loader_app, SYNTHEA_FILES)
    assert second.ok
    assert (second.created, second.updated, second.unchanged) == (0, 0, first.processed)
    assert scalar(loader_app, "SELECT max(version) FROM resource") == 1
    assert scalar(loader_app, "SELECT count(*) FROM resource") == rows
    assert scalar(loader_app, "SELECT count(*) FROM resource_version") == versions


def test_skipped_by_type_counts(loader_app):
    from app.loader import load_paths

    summary = load_paths(loader_app, SYNTHEA_FILES)
    entries = Counter(
        e["resource"]["resourceType"] for p in SYNTHEA_FILES for e in read_bundle(p)["entry"]
    )
    want = {t: n for t, n in entries.items() if t not in enabled(loader_app)}
    assert dict(summary.skipped_by_type) == want
    assert want["Claim"] == 24 and want["ExplanationOfBenefit"] == 19
    # every entry is either loaded (counted once per entry, shared ones twice) or skipped
    assert summary.processed + sum(summary.skipped_by_type.values()) == sum(entries.values())


def test_cli_summary_lists_skipped_types(run_cli):
    res = run_cli("load", "--no-progress", str(LOADER_DATA))
    assert res.exit_code == 0
    assert "skipped by type" in res.output
    assert "ExplanationOfBenefit" in res.output and "Claim" in res.output


# ---- order independence, NDJSON, failures ---------------------------------------------------
def test_ndjson_observations_before_their_patient_still_load(loader_app, run_cli, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    lines = [orjson.dumps(observation(f"obs-{i}", "p1")).decode() for i in range(5)]
    lines.append(
        orjson.dumps({**observation("obs-x", "p1"), "id": None} | {"id": "obs-5"}).decode()
    )
    with gzip.open(folder / "a_observations.ndjson.gz", "wt") as fh:
        fh.write("\n".join(lines) + "\n\n")
    write_json(
        folder / "b_patient.json", {"resourceType": "Patient", "id": "p1", "gender": "female"}
    )
    res = run_cli("load", "--no-progress", "--batch-size", "2", str(folder))
    assert res.exit_code == 0, res.output
    assert stored_counts(loader_app) == {"Observation": 6, "Patient": 1}
    assert "retries" in res.output
    assert re.search(r"units \(transactions\)\s+4\b", res.output)  # 3 NDJSON batches + 1 file


def test_dangling_reference_is_reported_failed_with_exit_1(loader_app, run_cli, tmp_path):
    bad = write_json(tmp_path / "dangling.json", observation("o-nope", "nope"))
    good = write_json(tmp_path / "patient.json", {"resourceType": "Patient", "id": "p2"})
    res = run_cli("load", "--no-progress", str(bad), str(good))
    assert res.exit_code == 1
    assert "Reference(s) to resources this server does not hold: Patient/nope" in res.output
    assert str(bad) in res.output and "Exit code 1" in res.output
    assert stored_counts(loader_app) == {"Patient": 1}


def test_invalid_resource_fails_without_retry(loader_app, tmp_path):
    from app.loader import load_paths

    bad = write_json(tmp_path / "bad.json", {"resourceType": "Patient", "id": "p3", "gender": 42})
    notjson = tmp_path / "broken.json"
    notjson.write_text("{not json")
    summary = load_paths(loader_app, [bad, notjson])
    assert not summary.ok and summary.retried == 0
    reasons = {Path(f.source).name: f.reason for f in summary.failed}
    assert reasons["bad.json"].startswith("400 ")
    assert "not valid JSON" in reasons["broken.json"]


def test_bad_path_gives_a_clear_error(run_cli, tmp_path):
    res = run_cli("load", str(tmp_path / "missing-folder"))
    assert res.exit_code == 2
    assert "Path not found" in res.output and "missing-folder" in res.output
    (tmp_path / "notes.txt").write_text("x")
    res = run_cli("load", str(tmp_path / "notes.txt"))
    assert res.exit_code == 2 and ".ndjson" in res.output
    empty = tmp_path / "empty"
    empty.mkdir()
    res = run_cli("load", str(empty))
    assert res.exit_code == 2 and "No loadable files" in res.output


def test_collection_bundle_and_unsupported_bundle_types(loader_app, tmp_path):
    from app.loader import load_paths

    coll = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [
            {
                "fullUrl": "urn:uuid:11111111-1111-4111-8111-111111111111",
                "resource": {"resourceType": "Patient", "id": "c1"},
            },
            {"resource": observation("c-obs", "c1")},
            {
                "resource": {
                    "resourceType": "Observation",
                    **{k: v for k, v in observation("x", "c1").items() if k != "id"},
                }
            },
            {
                "resource": {
                    "resourceType": "Condition",
                    "id": "cond1",
                    "subject": {"reference": "Patient/c1"},
                }
            },
        ],
    }
    doc = {"resourceType": "Bundle", "type": "document", "entry": []}
    summary = load_paths(
        loader_app, [write_json(tmp_path / "c.json", coll), write_json(tmp_path / "d.json", doc)]
    )
    assert summary.ok, summary.failed
    assert stored_counts(loader_app) == {"Patient": 1, "Observation": 2}
    assert summary.skipped_by_type == Counter({"Condition": 1, "Bundle (document)": 1})


def test_parallel_workers(loader_app, db_url, tmp_path):
    from app.loader import load_paths

    files = []
    for p in SYNTHEA_FILES:  # both files twice (copies): maximum contention on shared ids
        for n in range(2):
            dst = tmp_path / f"{n}_{p.name}"
            shutil.copy(p, dst)
            files.append(dst)
    summary = load_paths(loader_app, files, workers=2)
    assert summary.ok, summary.failed
    want = {
        t: len(ids)
        for t, ids in bundle_resources(SYNTHEA_FILES).items()
        if t in enabled(loader_app)
    }
    assert stored_counts(loader_app) == want
    assert scalar(loader_app, "SELECT max(version) FROM resource") == 1
    if db_url.startswith("sqlite"):
        assert summary.workers == 1 and "SQLite" in summary.notes[0]
    else:
        assert summary.workers == 2


# ---- demo ------------------------------------------------------------------------------------
def test_demo_command_loads_and_explains(loader_app, run_cli):
    res = run_cli("demo", "--no-progress")
    assert res.exit_code == 0, res.output
    counts = stored_counts(loader_app)
    assert (
        counts["Patient"] == 5 and counts["ImagingStudy"] >= 8 and counts["DiagnosticReport"] >= 9
    )
    assert "curl -s" in res.output and "/Patient/UKCore-Patient-RichardSmith-Example" in res.output
    assert "does not hold" in res.output  # UK Core examples with dangling references, reported
    again = run_cli("demo", "--no-progress", "--reset")
    assert again.exit_code == 0 and stored_counts(loader_app) == counts


def test_load_demo_function(loader_app):
    from app.loader import load_demo

    summary = load_demo(loader_app)
    assert summary.created > 300
    assert all("does not hold" in f.reason for f in summary.failed)


# ---- the whole shared set (slow) ---------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.skipif(not (SHARED / "synthea").is_dir(), reason="shared data set not present")
def test_all_shared_synthea_and_spec_examples(tmp_path):
    from app import create_app
    from app.db.migrate import upgrade
    from app.loader import load_paths

    url = f"sqlite:///{tmp_path / 'all.db'}"
    upgrade(url)
    app = create_app({"DATABASE_URL": url, "TESTING": True, "SECRET_KEY": "x"})
    summary = load_paths(app, [SHARED / "synthea"])
    assert summary.ok, summary.failed[:3]
    counts = stored_counts(app)
    manifest = json.loads((SHARED / "synthea" / "manifest.json").read_text())
    assert counts["Observation"] == 7783 == manifest["resource_counts_total"]["Observation"]
    assert counts["Patient"] == 100
    assert counts["DiagnosticReport"] == 376
    assert counts["ImagingStudy"] == 38
    assert counts["Encounter"] == 1418
    ids = bundle_resources(sorted((SHARED / "synthea").glob("*.json.gz")))
    assert counts["Organization"] == len(ids["Organization"])
    assert counts["Practitioner"] == len(ids["Practitioner"])
    assert summary.skipped_by_type["Claim"] == 1730
    assert scalar(app, "SELECT max(version) FROM resource") == 1

    ex = load_paths(app, [SHARED / "fhir-examples"])
    # The spec examples reference many resources that are not in the package (Patient/example,
    # Practitioner/example, Organization/1, ...); the server refuses dangling references, and the
    # loader must say so for each unit rather than stop or stay silent.
    assert not ex.ok and ex.created >= 4 and len(ex.failed) >= 40
    by_file = {Path(f.source).name: f.reason for f in ex.failed}
    assert "Patient/infant" in by_file["Observation-bloodgroup.json"]
    assert all(f.reason and len(f.reason) > 20 for f in ex.failed)
    assert "does not hold" in by_file["Observation-example.json"]
    assert "Bundle (document)" in ex.skipped_by_type
    assert ex.skipped_by_type["MolecularSequence"] == 12
    assert ex.skipped_by_type["(read requests: GET/HEAD entries)"] >= 4
    app.extensions["results_repo"].engine.dispose()


def test_load_into_a_new_sqlite_database_creates_the_schema(tmp_path):
    """Like `run`, `load` migrates first: a new user's first command may be `load`."""
    from app import create_app
    from app.cli import main

    url = f"sqlite:///{tmp_path / 'new.db'}"
    app = create_app({"DATABASE_URL": url, "TESTING": True, "SECRET_KEY": "x"})
    try:
        patient = write_json(tmp_path / "p.json", {"resourceType": "Patient", "id": "p-new"})
        res = app.test_cli_runner().invoke(main, ["load", "--no-progress", str(patient)])
        assert res.exit_code == 0, res.output
        assert stored_counts(app) == {"Patient": 1}
    finally:
        app.extensions["results_repo"].engine.dispose()

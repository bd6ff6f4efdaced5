"""includeAssociatedData: the Provenance of the exported resources (Bulk Data 2.0.0)."""

from __future__ import annotations

import time

import orjson
import pytest
from bulkhelp import (
    ASYNC,
    FHIR_JSON,
    download,
    export,
    ids,
    kick_off,
    manifest,
    observation,
    patient,
    post,
    run_worker,
    uid,
)


def provenance(http, base: str, targets: list[str], recorded: str) -> dict:
    return post(http, base, {
        "resourceType": "Provenance", "recorded": recorded,
        "target": [{"reference": t} for t in targets],
        "agent": [{"who": {"display": "Lab system"}}],
    })


@pytest.fixture(scope="module")
def data(http, base) -> dict:
    p = patient(http, base, uid())
    o1, o2, o3 = (observation(http, base, p["id"]) for _ in range(3))
    o_out = observation(http, base, p["id"], status="preliminary")  # filtered out below
    pv = {
        "o1_old": provenance(http, base, [f"Observation/{o1['id']}"], "2024-01-01T10:00:00Z"),
        "o1_new": provenance(http, base, [f"Observation/{o1['id']}"], "2024-02-01T10:00:00+01:00"),
        "o2_and_out": provenance(http, base, [f"Observation/{o2['id']}", f"Observation/{o_out['id']}"],
                                 "2024-01-15T00:00:00Z"),
        "o2_older": provenance(http, base, [f"Observation/{o2['id']}"], "2023-12-31T23:00:00Z"),
        "out_only": provenance(http, base, [f"Observation/{o_out['id']}"], "2024-03-01T00:00:00Z"),
        "patient": provenance(http, base, [f"Patient/{p['id']}"], "2024-03-01T00:00:00Z"),
    }
    return {"p": p, "o": [o1, o2, o3], "out": o_out, "pv": pv}


def _params(data: dict, value: str, types: str = "Observation", **extra) -> dict:
    return {"_type": types, "includeAssociatedData": value,
            "_typeFilter": f"Observation?status=final&subject=Patient/{data['p']['id']}", **extra}


def _pv_ids(data: dict, *names: str) -> set[str]:
    return {data["pv"][n]["id"] for n in names}


def test_relevant_provenance(http, base, app, data) -> None:
    _loc, m = export(http, app, f"{base}/$export", _params(data, "RelevantProvenanceResources"))
    got = download(http, m)
    assert ids(got["Observation"]) == ids(data["o"])
    assert ids(got["Provenance"]) == _pv_ids(data, "o1_old", "o1_new", "o2_and_out", "o2_older")
    prov_files = [o for o in m["output"] if o["type"] == "Provenance"]
    assert [o["url"].rsplit("/", 1)[-1] for o in prov_files] == ["Provenance-associated-1.ndjson"]
    assert m["error"] == []


def test_latest_provenance(http, base, app, data) -> None:
    _loc, m = export(http, app, f"{base}/$export", _params(data, "LatestProvenanceResources"))
    got = download(http, m)
    # o1: 2024-02-01T09:00Z beats 2024-01-01; o2: 2024-01-15 beats 2023-12-31; o3 has none
    assert ids(got["Provenance"]) == _pv_ids(data, "o1_new", "o2_and_out")


def test_both_values_mean_relevant(http, base, app, data) -> None:
    body = {"resourceType": "Parameters", "parameter": [
        {"name": "_type", "valueString": "Observation"},
        {"name": "_typeFilter", "valueString": f"Observation?status=final&subject=Patient/{data['p']['id']}"},
        {"name": "includeAssociatedData", "valueCode": "LatestProvenanceResources"},
        {"name": "includeAssociatedData", "valueCode": "RelevantProvenanceResources"},
    ]}
    r = http.post(f"{base}/$export", data=orjson.dumps(body), headers={**ASYNC, "Content-Type": FHIR_JSON})
    assert r.status_code == 202, r.text
    run_worker(app)
    got = download(http, manifest(http, r.headers["Content-Location"]))
    assert ids(got["Provenance"]) == _pv_ids(data, "o1_old", "o1_new", "o2_and_out", "o2_older")


def test_patient_level_includes_provenance_of_patient_and_results(http, base, app, data) -> None:
    body = {"resourceType": "Parameters", "parameter": [
        {"name": "patient", "valueReference": {"reference": f"Patient/{data['p']['id']}"}},
        {"name": "_type", "valueString": "Patient,Observation"},
        {"name": "includeAssociatedData", "valueCode": "LatestProvenanceResources"},
    ]}
    r = http.post(f"{base}/Patient/$export", data=orjson.dumps(body), headers={**ASYNC, "Content-Type": FHIR_JSON})
    assert r.status_code == 202, r.text
    run_worker(app)
    got = download(http, manifest(http, r.headers["Content-Location"]))
    # o_out is exported here (no filter): out_only (2024-03-01) is its latest, beating o2_and_out
    assert ids(got["Provenance"]) == _pv_ids(data, "o1_new", "o2_and_out", "out_only", "patient")


def test_provenance_exported_as_a_type_is_not_repeated(http, base, app, data) -> None:
    # Provenance as an unfiltered type: every Provenance is in its own files already
    _loc, m = export(http, app, f"{base}/$export", _params(data, "RelevantProvenanceResources",
                                                         types="Observation,Provenance"))
    got = download(http, m)
    assert len(got["Provenance"]) == len(ids(got["Provenance"]))
    assert _pv_ids(data, *data["pv"]) <= ids(got["Provenance"])
    assert not any("associated" in o["url"] for o in m["output"])
    # Provenance filtered to one of them: the others come from the associated stage, no repeats
    one = data["pv"]["o1_old"]["id"]
    _loc, m = export(http, app, f"{base}/$export", {
        "_type": "Observation,Provenance", "includeAssociatedData": "RelevantProvenanceResources",
        "_typeFilter": [f"Observation?status=final&subject=Patient/{data['p']['id']}", f"Provenance?_id={one}"]})
    got = download(http, m)
    names = [o["url"].rsplit("/", 1)[-1] for o in m["output"] if o["type"] == "Provenance"]
    assert names == ["Provenance-1.ndjson", "Provenance-associated-1.ndjson"]
    assert sorted(p["id"] for p in got["Provenance"]) == sorted(
        _pv_ids(data, "o1_old", "o1_new", "o2_and_out", "o2_older"))


def test_provenance_written_after_kick_off_is_not_included(http, base, app, data) -> None:
    loc = kick_off(http, f"{base}/$export", _params(data, "LatestProvenanceResources"))
    time.sleep(0.01)
    late = provenance(http, base, [f"Observation/{data['o'][2]['id']}"], "2025-01-01T00:00:00Z")
    run_worker(app)
    got = download(http, manifest(http, loc))
    assert late["id"] not in ids(got["Provenance"])
    assert ids(got["Provenance"]) == _pv_ids(data, "o1_new", "o2_and_out")
    assert http.delete(f"{base}/Provenance/{late['id']}").status_code in (200, 204)  # for the next tests


def test_associated_stage_resumes_after_a_crash(http, base, app, data) -> None:
    """A worker dying after the types, mid-Provenance stage: the next one finishes it from the
    tracker kept in the job directory, with nothing repeated."""
    from datetime import timedelta

    from sqlalchemy import update

    from app.bulk.tables import bulk_job
    from app.bulk.worker import Worker
    from app.db import unit_of_work
    from app.fhir.jsonutil import utcnow

    class Crash(BaseException):
        pass

    app.config["BULK_FILE_MAX_BYTES"] = 600  # about one Provenance per file
    try:
        loc = kick_off(http, f"{base}/$export", _params(data, "RelevantProvenanceResources"))
        w = Worker(app)
        orig = w._owned
        seen: list[str] = []

        def owned(conn, job_id, **values):
            orig(conn, job_id, **values)
            if "cursor" in values and '"type_idx":1' in values["cursor"].replace(" ", ""):
                seen.append(values["cursor"])
                if len(seen) == 2:
                    raise Crash()

        w._owned = owned
        job_id = w.claim()
        with pytest.raises(Crash):
            w.run_job(job_id)
        engine = app.extensions["results_repo"].engine
        with unit_of_work(engine, write=True) as conn:
            conn.execute(update(bulk_job).where(bulk_job.c.id == job_id)
                         .values(heartbeat_at=utcnow() - timedelta(seconds=600)))
        assert run_worker(app) == 1
    finally:
        app.config.pop("BULK_FILE_MAX_BYTES")
    m = manifest(http, loc)
    got = download(http, m)
    provs = [p["id"] for p in got["Provenance"]]
    assert len(seen) == 2 and len(m["output"]) > 5  # it did die in the middle of the stage
    assert sorted(provs) == sorted(_pv_ids(data, "o1_old", "o1_new", "o2_and_out", "o2_older"))
    from app.bulk.settings import settings_of

    assert not (settings_of(app).export_dir / job_id / ".exported.sqlite").exists()


@pytest.mark.parametrize(("value", "headers", "status"), [
    ("EverythingPlease", {}, 400),
    ("_acmeExtras", {"Prefer": "respond-async, handling=strict"}, 400),
])
def test_refusals(http, base, value, headers, status) -> None:
    r = http.get(f"{base}/$export", params={"includeAssociatedData": value}, headers={**ASYNC, **headers})
    assert r.status_code == status, r.text
    assert r.json()["issue"][0]["code"] in ("invalid", "not-supported")


def test_custom_value_ignored_with_a_warning(http, base, app, data) -> None:
    _loc, m = export(http, app, f"{base}/$export", _params(data, "_acmeExtras"))
    got = download(http, m)
    assert "Provenance" not in got
    err = http.get(m["error"][0]["url"])
    issue = orjson.loads(err.content.splitlines()[0])["issue"][0]
    assert issue["severity"] == "warning" and issue["code"] == "not-supported"
    assert "_acmeExtras" in issue["diagnostics"]


@pytest.mark.parametrize(("reference", "ours"), [
    ("Observation/o1", True),
    ("https://results.example/fhir/Observation/o1", True),
    ("https://results.example/fhir/Observation/o1/_history/2", True),
    ("https://other.example/fhir/Observation/o1", False),  # another server's o1
    ("https://results.example/fhirX/Observation/o1", False),
    ("urn:uuid:5", False),
    ("Provenance/p1", False),  # a Provenance of a Provenance is not associated data
])
def test_provenance_targets_are_ours_only(reference, ours) -> None:
    """Another server's Observation/o1 is not our o1: its Provenance is not associated data of our
    o1's export (decision 0018)."""
    from app.bulk.associated import targets

    doc = {"resourceType": "Provenance", "target": [{"reference": reference}]}
    assert targets(doc, "https://results.example/fhir") == ([("Observation", "o1")] if ours else [])

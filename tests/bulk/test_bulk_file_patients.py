"""Each export file's patient set (``bulk_file.patients``), recorded by the worker as it writes the
file, for the download audit: the same set the audit's scan of the file finds (the scan before
this change is kept here as the oracle), on tricky lines, across write blocks and file splits,
for every kind of file; stored with the file's row on SQLite and PostgreSQL."""

from __future__ import annotations

import re
from pathlib import Path

import orjson
import pytest
from bulkhelp import export, observation, patient, post, uid
from sqlalchemy import select

# app/audit/patients.py as it was (0006), verbatim: the reference semantics
_ID = rb"([A-Za-z0-9\-.]{1,64})"
_CANDIDATE = re.compile(rb"Patient/" + _ID + rb'(?:"|/_history/[^"]{0,64}")')
_KEYS = (b'"reference"', b'"fullUrl"')
_PATIENT_LINE = re.compile(rb'(?m)^\{"resourceType"\s*:\s*"Patient"\s*,\s*"id"\s*:\s*"' + _ID + rb'"')


def old_scan(body: bytes) -> set[str]:
    out: set[str] = set()
    for m in _CANDIDATE.finditer(body):
        pid = m.group(1).decode()
        if pid in out:
            continue
        start = m.start()
        quote = body.rfind(b'"', max(0, start - 1024), start)
        if quote < 0:
            continue
        prefix = body[quote + 1:start]
        if prefix and not prefix.endswith(b"/"):
            continue
        key = body[max(0, quote - 24):quote].rstrip()
        if key.endswith(b":") and key[:-1].rstrip().endswith(_KEYS):
            out.add(pid)
    out.update(m.decode() for m in _PATIENT_LINE.findall(body))
    return out


TRICKY = [
    b'{"resourceType":"Patient","id":"p1","name":[{"family":"X"}]}',
    b'{"resourceType" : "Patient" , "id" : "p2"}',  # spaces around the Patient line's keys
    b' {"resourceType":"Patient","id":"not-at-line-start"}',
    b'{"resourceType":"Bundle","entry":[{"fullUrl":"http://x/fhir/Patient/p3","resource":'
    b'{"resourceType":"Patient","id":"p3"}}]}',
    b'{"resourceType":"Observation","subject":{"reference":"Patient/p4/_history/2"}}',
    b'{"resourceType":"Observation","subject":{"reference":"https://other.example/fhir/Patient/p5"}}',
    b'{"resourceType":"Observation","subject":{"reference" :  "Patient/p6"}}',
    b'{"resourceType":"Observation","note":[{"text":"see Patient/text1"}]}',  # text, not a reference
    b'{"resourceType":"Observation","code":{"text":"Patient/text2"}}',  # another key
    b'{"resourceType":"Observation","subject":{"reference":"SomePatient/np"}}',
    b'{"resourceType":"Observation","subject":{"reference":"Patient/' + b"a" * 65 + b'"}}',  # id too long
    b'{"resourceType":"Observation","subject":{"reference":"' + b"x/" * 600 + b'Patient/long"}}',  # > 1 KiB prefix
    b'{"resourceType":"Observation","subject":{"reference":"' + b"x/" * 400 + b'Patient/p7"}}',
    b'{"resourceType":"Provenance","target":[{"reference":"Observation/o1"}],'
    b'"agent":[{"who":{"reference":"Patient/p8"}}]}',
    b'{"resourceType":"Group","member":[{"entity":{"reference":"Patient/p1"}},{"entity":{"reference":"Patient/p9"}}]}',
    b'{"resourceType":"Bundle","type":"transaction","entry":[{"request":{"method":"DELETE","url":"Patient/del"}}]}',
    b'{"resourceType":"OperationOutcome","issue":[{"diagnostics":"patient Patient/missing is not on this server"}]}',
    b'{"resourceType":"Observation","contained":[{"resourceType":"Patient","id":"inner"}],'
    b'"subject":{"reference":"#inner"}}',
]


def test_scan_matches_the_previous_scan_line_by_line_and_by_blocks() -> None:
    from app.audit.patients import PatientScan, patients_in

    body = b"\n".join(TRICKY) + b"\n"
    expected = old_scan(body)
    assert expected == {"p1", "p2", "p3", "p4", "p5", "p6", "p7", "p8", "p9"}  # the cases mean what they say
    assert patients_in(body, ndjson=True) == expected
    for step in (1, 2, 5, len(TRICKY)):  # any cut at line ends gives the same union
        scan = PatientScan(ndjson=True)
        for i in range(0, len(TRICKY), step):
            scan.feed(b"\n".join(TRICKY[i:i + step]))
        assert scan.ids == expected, step
    # not NDJSON (a search page): Patient resources count only through references and fullUrls
    assert patients_in(body) == expected - {"p2"}  # p1 is also a Group member (a reference)


def test_scan_of_a_file_matches(tmp_path: Path) -> None:
    from app.audit.patients import patients_in_file

    path = tmp_path / "f.ndjson"
    lines = TRICKY * 50
    path.write_bytes(b"\n".join(lines) + b"\n")
    assert patients_in_file(path, chunk=700) == old_scan(path.read_bytes())
    path.write_bytes(b"\n".join(lines))  # no final newline
    assert patients_in_file(path, chunk=333) == old_scan(path.read_bytes())


def test_part_writer_records_each_files_set_across_blocks_and_splits(tmp_path: Path, monkeypatch) -> None:
    from app.bulk import export as ex

    monkeypatch.setattr(ex, "SCAN_BLOCK", 300)  # many blocks per file
    done: list = []
    w = ex.PartWriter(tmp_path, "Observation", 1, 2_000, lambda f, rid, part: done.append(f))
    for i, line in enumerate(TRICKY * 3):
        w.write(i + 1, line)
    w.finish()
    assert len(done) > 3  # split into several files
    for f in done:
        data = (tmp_path / f.name).read_bytes()
        assert f.count == data.count(b"\n") and f.size == len(data)
        assert f.patients == old_scan(data), f.name
    assert set().union(*(f.patients for f in done)) == old_scan(b"\n".join(TRICKY))
    assert not list(tmp_path.glob("*.part"))

    off: list = []
    w = ex.PartWriter(tmp_path, "Patient", 1, 10_000, lambda f, rid, part: off.append(f), scan_patients=False)
    w.write(1, TRICKY[0])
    w.finish()
    assert off[0].patients is None and (tmp_path / off[0].name).read_bytes() == TRICKY[0] + b"\n"


def test_abandoned_writer_leaves_nothing(tmp_path: Path) -> None:
    from app.bulk import export as ex

    done: list = []
    w = ex.PartWriter(tmp_path, "Observation", 1, 10_000, lambda f, rid, part: done.append(f))
    w.write(1, TRICKY[4])
    w.abandon()
    assert done == [] and list(tmp_path.iterdir()) == [] and w.pending == []


def test_pack_and_read_back() -> None:
    from app.bulk.jobs import pack_patients

    assert pack_patients(None) is None
    assert pack_patients(set()) == ""
    assert pack_patients({"b-2", "a.1", "c"}) == "a.1 b-2 c"


# ---- through the worker, stored with the file's row (SQLite and PostgreSQL) ------------------------
@pytest.fixture(scope="module")
def data(http, base) -> dict:
    ps = [patient(http, base, f"fp{i}-{uid()}") for i in range(3)]
    for p in ps[:2]:
        observation(http, base, p["id"])
    prac = post(http, base, {"resourceType": "Practitioner", "name": [{"family": "NoPatients"}]})
    return {"p": [p["id"] for p in ps], "prac": prac["id"]}


def _rows(app, job_id: str) -> dict[str, str | None]:
    from app.bulk.tables import bulk_file

    with app.extensions["results_repo"].engine.connect() as conn:
        return {r.name: r.patients for r in conn.execute(
            select(bulk_file.c.name, bulk_file.c.patients).where(bulk_file.c.job_id == job_id))}


def test_worker_stores_each_files_set(http, base, app, data) -> None:
    from app.bulk.jobs import file_patients

    loc, m = export(http, app, f"{base}/$export", {"_type": "Patient,Observation,Practitioner"})
    job = loc.rsplit("/", 1)[-1]
    rows = _rows(app, job)
    p = data["p"]
    assert set(rows) == {"Patient-1.ndjson", "Observation-1.ndjson", "Practitioner-1.ndjson"}
    assert set(rows["Patient-1.ndjson"].split()) >= set(p)  # other modules' patients may be there too
    assert set(p[:2]) <= set(rows["Observation-1.ndjson"].split()) and p[2] not in rows["Observation-1.ndjson"]
    assert rows["Practitioner-1.ndjson"] == ""  # recorded, and empty (not NULL)
    engine = app.extensions["results_repo"].engine
    from app.bulk.settings import settings_of

    for name, stored in rows.items():  # exactly what the scan of the written file finds
        body = (settings_of(app).export_dir / job / name).read_bytes()
        assert stored == " ".join(sorted(old_scan(body))), name
        assert file_patients(engine, job, name) == old_scan(body)
    assert file_patients(engine, job, "no-such-file.ndjson") is None
    # the manifest does not change
    assert [o["type"] for o in m["output"]] == ["Patient", "Observation", "Practitioner"]


def test_worker_with_the_audit_off_stores_no_set(http, base, app, data) -> None:
    from bulkhelp import kick_off, manifest

    from app.bulk.worker import Worker

    loc = kick_off(http, f"{base}/$export", {"_type": "Observation"})
    app.config["AUDIT_ENABLED"] = False
    try:
        w = Worker(app)
    finally:
        app.config["AUDIT_ENABLED"] = True
    assert w.run_pending() == 1
    m = manifest(http, loc)
    assert m["output"] and _rows(app, loc.rsplit("/", 1)[-1]) == {"Observation-1.ndjson": None}


def test_error_file_gets_an_empty_set(http, base, app, data) -> None:
    body = {"resourceType": "Parameters", "parameter": [
        {"name": "_type", "valueString": "Observation"},
        {"name": "patient", "valueReference": {"reference": f"Patient/{data['p'][0]}"}},
        {"name": "patient", "valueReference": {"reference": "Patient/not-there"}}]}
    r = http.post(f"{base}/Patient/$export", data=orjson.dumps(body),
                  headers={"Content-Type": "application/fhir+json", "Accept": "application/fhir+json",
                           "Prefer": "respond-async"})
    assert r.status_code == 202, r.text[:500]
    from bulkhelp import manifest, run_worker

    run_worker(app)
    loc = r.headers["Content-Location"]
    m = manifest(http, loc)
    assert len(m["error"]) == 1
    assert _rows(app, loc.rsplit("/", 1)[-1]) == {"Observation-1.ndjson": data["p"][0], "OperationOutcome-1.ndjson": ""}

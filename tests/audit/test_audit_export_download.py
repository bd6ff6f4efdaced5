"""The export-download AuditEvent names exactly the patients whose data the file holds, from the
set the export worker recorded when it wrote the file (``bulk_file.patients``), not from a scan
of the file at download time; a file without a recorded set (written before migration 0007, or
with the audit off) is scanned as before.  System, Patient-level and Group-level exports,
Provenance from includeAssociatedData, a file with no patients.  Real HTTP, real tokens, SQLite
and PostgreSQL."""

from __future__ import annotations

import re
from pathlib import Path

import orjson
import pytest
import requests
from audithelp import AUDITOR, call, events, patients, rid, subtype, target
from sqlalchemy import select, update

EXPORTER = ("system/Patient.rs system/Observation.rs system/Practitioner.rs system/Provenance.rs "
            "system/Group.rs")


# The download audit's scan as it was before the worker recorded the sets (app/audit/patients.py
# at 0006, verbatim): the oracle for "the same set as the scan computes".
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


@pytest.fixture(scope="module")
def tok(token) -> dict:
    return {"writer": token("system/*.cruds", client_id="epr-dl"),
            "auditor": token(AUDITOR, client_id="privacy-office-dl"),
            "exporter": token(EXPORTER, client_id="analyst-dl")}


def _create(live, tok, body: dict) -> str:
    r = call("POST", f"{live.base}/{body['resourceType']}", tok["writer"], body)
    assert r.status_code == 201, r.text[:500]
    return r.json()["id"]


def _obs(subject: str | None, note: str | None = None) -> dict:
    body = {"resourceType": "Observation", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "718-7"}]}}
    if subject:
        body["subject"] = {"reference": f"Patient/{subject}"}
    if note:
        body["note"] = [{"text": note}]
    return body


@pytest.fixture(scope="module")
def data(live, tok) -> dict:
    """Patients a, b, c with an Observation each; d only as the agent of a Provenance; an
    Observation with no subject that names d in free text (not a reference: not d's data); a
    Practitioner (no patient at all); Group g = {a, b}."""
    p = {k: _create(live, tok, {"resourceType": "Patient", "name": [{"family": f"Dl{k}"}]}) for k in "abcd"}
    doc = _create(live, tok, {"resourceType": "Practitioner", "name": [{"family": "Doc"}]})
    obs = {k: _create(live, tok, _obs(p[k])) for k in "abc"}
    obs["none"] = _create(live, tok, _obs(None, note=f"compare with Patient/{p['d']}"))
    prov = _create(live, tok, {"resourceType": "Provenance", "recorded": "2024-01-01T00:00:00Z",
                               "target": [{"reference": f"Observation/{obs['a']}"}],
                               "agent": [{"who": {"reference": f"Patient/{p['d']}"}}]})
    group = _create(live, tok, {"resourceType": "Group", "type": "person", "actual": True,
                                "member": [{"entity": {"reference": f"Patient/{p[k]}"}} for k in "ab"]})
    return {"p": p, "doc": doc, "obs": obs, "prov": prov, "group": group}


def _export(live, tok, audit_app, url: str, params: dict | None = None, body: dict | None = None) -> dict:
    from app.bulk.worker import Worker

    headers = {"Prefer": "respond-async"}
    if body is None:
        r = requests.get(url, params=params, headers={"Authorization": f"Bearer {tok['exporter']}",
                                                      "Accept": "application/fhir+json", **headers})
    else:
        r = call("POST", url, tok["exporter"], body, headers=headers)
    assert r.status_code == 202, r.text[:500]
    status_url = r.headers["Content-Location"]
    assert Worker(audit_app).run_pending() == 1
    r = call("GET", status_url, tok["exporter"])
    assert r.status_code == 200, r.text[:500]
    return r.json()


def _download(live, tok, url: str) -> tuple[bytes, dict]:
    """Download one file; return its bytes and the download's AuditEvent."""
    req = rid()
    r = requests.get(url, headers={"Authorization": f"Bearer {tok['exporter']}", "X-Request-Id": req,
                                   "Accept": "application/fhir+ndjson"})
    assert r.status_code == 200, r.text[:500]
    evs = events(live.base, tok["auditor"], req)
    assert len(evs) == 1, [subtype(e) for e in evs]
    ev = evs[0]
    assert (ev["type"]["code"], subtype(ev), ev["outcome"]) == ("110106", "export-download", "0")
    assert target(ev) == "export/" + "/".join(url.rsplit("/", 2)[-2:])
    return r.content, ev


def _name(url: str) -> str:
    return url.rsplit("/", 1)[-1]


def _stored(audit_app, url: str) -> str | None:
    from app.bulk.tables import bulk_file

    job, name = url.rsplit("/", 2)[-2:]
    with audit_app.extensions["results_repo"].engine.connect() as conn:
        return conn.execute(select(bulk_file.c.patients).where(bulk_file.c.job_id == job,
                                                               bulk_file.c.name == name)).scalar_one()


@pytest.fixture
def scans(monkeypatch) -> list[Path]:
    """Records every fallback scan the download audit makes (the live server runs in-process)."""
    import app.audit.web as web

    calls: list[Path] = []
    real = web.patients_in_file

    def spy(path: Path) -> set[str]:
        calls.append(Path(path))
        return real(path)

    monkeypatch.setattr(web, "patients_in_file", spy)
    return calls


def _check_files(live, tok, audit_app, m: dict, expected: dict[str, set[str]], scans: list[Path]) -> None:
    """Every output file: the audited set is the expected one, equals the stored one and what the
    old scan finds in the downloaded bytes; no file is scanned at download time."""
    seen = {}
    for o in m["output"] + m.get("error", []):
        body, ev = _download(live, tok, o["url"])
        name = _name(o["url"])
        seen[name] = patients(ev)
        stored = _stored(audit_app, o["url"])
        assert stored is not None and set(stored.split()) == patients(ev), name
        assert stored == " ".join(sorted(patients(ev))), name  # sorted, space-separated
        assert patients(ev) == old_scan(body), name
    assert seen == expected
    assert scans == []


def test_system_export_files_name_their_patients(live, tok, audit_app, data, scans):
    p = data["p"]
    m = _export(live, tok, audit_app, f"{live.base}/$export",
                {"_type": "Patient,Observation,Practitioner", "includeAssociatedData": "RelevantProvenanceResources"})
    _check_files(live, tok, audit_app, m, {
        "Patient-1.ndjson": {p["a"], p["b"], p["c"], p["d"]},  # a Patient file: its own patients
        "Observation-1.ndjson": {p["a"], p["b"], p["c"]},  # not d: named in free text only
        "Practitioner-1.ndjson": set(),  # no patient at all: an empty set, still recorded
        "Provenance-associated-1.ndjson": {p["d"]},  # d is the Provenance's agent
    }, scans)
    assert _stored(audit_app, next(o["url"] for o in m["output"] if o["type"] == "Practitioner")) == ""


def test_patient_level_export(live, tok, audit_app, data, scans):
    p = data["p"]
    m = _export(live, tok, audit_app, f"{live.base}/Patient/$export", {"_type": "Patient,Observation"})
    _check_files(live, tok, audit_app, m, {"Patient-1.ndjson": {p["a"], p["b"], p["c"], p["d"]},
                                           "Observation-1.ndjson": {p["a"], p["b"], p["c"]}}, scans)
    body = {"resourceType": "Parameters", "parameter": [
        {"name": "_type", "valueString": "Observation"},
        {"name": "patient", "valueReference": {"reference": f"Patient/{p['b']}"}},
        {"name": "patient", "valueReference": {"reference": "Patient/not-there"}}]}
    m = _export(live, tok, audit_app, f"{live.base}/Patient/$export", body=body)
    # the error file (an OperationOutcome naming the unknown patient in text) holds no patient data
    _check_files(live, tok, audit_app, m, {"Observation-1.ndjson": {p["b"]},
                                           "OperationOutcome-1.ndjson": set()}, scans)


def test_group_export(live, tok, audit_app, data, scans):
    p = data["p"]
    m = _export(live, tok, audit_app, f"{live.base}/Group/{data['group']}/$export", {"_type": "Patient,Observation"})
    _check_files(live, tok, audit_app, m, {"Patient-1.ndjson": {p["a"], p["b"]},
                                           "Observation-1.ndjson": {p["a"], p["b"]}}, scans)


def test_stored_set_is_used_not_the_file_and_old_files_are_scanned(live, tok, audit_app, data, scans):
    """A file changed on disk after it was written does not change the audited set (the stored
    one is used); with the set removed (as for a file written before migration 0007) the
    download audit scans the file and finds what is in it now."""
    from app.bulk.settings import settings_of
    from app.bulk.tables import bulk_file

    p = data["p"]
    m = _export(live, tok, audit_app, f"{live.base}/$export", {"_type": "Observation"})
    url = m["output"][0]["url"]
    job, name = url.rsplit("/", 2)[-2:]
    path = settings_of(audit_app).export_dir / job / name
    extra = orjson.dumps({"resourceType": "Observation", "id": "edited", "status": "final",
                          "code": {"text": "x"}, "subject": {"reference": f"Patient/{p['d']}"}})
    with open(path, "ab") as fh:
        fh.write(extra + b"\n")

    body, ev = _download(live, tok, url)
    assert body.endswith(extra + b"\n")  # the edited file is what was served ...
    assert patients(ev) == {p["a"], p["b"], p["c"]}  # ... but the audit used the recorded set
    assert scans == []

    engine = audit_app.extensions["results_repo"].engine
    with engine.begin() as conn:
        conn.execute(update(bulk_file).where(bulk_file.c.job_id == job, bulk_file.c.name == name)
                     .values(patients=None))
    body, ev = _download(live, tok, url)
    assert scans == [path]  # no recorded set: the file is scanned, as before
    assert patients(ev) == {p["a"], p["b"], p["c"], p["d"]} == old_scan(body)


def test_audit_off_worker_records_no_set_and_the_download_falls_back(live, tok, audit_app, data, scans):
    """A worker running with AUDIT_ENABLED=false does not compute the sets (NULL); when such a file
    is downloaded from an audited server, it is scanned."""
    p = data["p"]
    audit_app.config["AUDIT_ENABLED"] = False
    try:
        from app.bulk.worker import Worker

        r = requests.get(f"{live.base}/$export", params={"_type": "Observation"},
                         headers={"Authorization": f"Bearer {tok['exporter']}", "Accept": "application/fhir+json",
                                  "Prefer": "respond-async"})
        assert r.status_code == 202, r.text[:500]
        status_url = r.headers["Content-Location"]
        assert Worker(audit_app).run_pending() == 1
    finally:
        audit_app.config["AUDIT_ENABLED"] = True
    url = call("GET", status_url, tok["exporter"]).json()["output"][0]["url"]
    assert _stored(audit_app, url) is None
    body, ev = _download(live, tok, url)
    assert len(scans) == 1 and patients(ev) == {p["a"], p["b"], p["c"]} == old_scan(body)


def test_a_range_download_names_the_files_patients(live, tok, audit_app, data, scans):
    """A partial download (Range, 206) is audited with the file's whole patient set: an auditor
    may be told of more patients than the part held, never of fewer."""
    p = data["p"]
    m = _export(live, tok, audit_app, f"{live.base}/$export", {"_type": "Observation"})
    url = m["output"][0]["url"]
    req = rid()
    r = requests.get(url, headers={"Authorization": f"Bearer {tok['exporter']}", "X-Request-Id": req,
                                   "Accept": "application/fhir+ndjson", "Range": "bytes=0-99"})
    assert r.status_code == 206, r.text[:300]
    assert len(r.content) == 100
    (ev,) = events(live.base, tok["auditor"], req)
    assert (subtype(ev), ev["outcome"]) == ("export-download", "0")
    assert patients(ev) == {p["a"], p["b"], p["c"]}
    assert scans == []

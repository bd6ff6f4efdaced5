"""$export over HTTP on a fixed data set: kick-off parameters and refusals, status codes,
manifest, files, filters, Patient and Group level."""

from __future__ import annotations

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
    report,
    run_worker,
    uid,
)


@pytest.fixture(scope="module")
def data(http, base) -> dict:
    p1, p2, p3 = (patient(http, base, f"p{i}-{uid()}") for i in (1, 2, 3))
    o1 = observation(http, base, p1["id"], "718-7")
    o2 = observation(http, base, p1["id"], "2345-7")
    o3 = observation(http, base, p2["id"], "718-7")
    o4 = observation(http, base, p3["id"], "2345-7", status="preliminary")
    d1 = report(http, base, p1["id"], [o1["id"], o2["id"]])
    pr = post(http, base, {"resourceType": "Practitioner", "name": [{"family": "Who"}]})
    g = post(http, base, {"resourceType": "Group", "type": "person", "actual": True, "member": [
        {"entity": {"reference": f"Patient/{p1['id']}"}},
        {"entity": {"reference": f"Patient/{p2['id']}"}},
        {"entity": {"reference": f"Patient/{p3['id']}"}, "inactive": True},
    ]})
    return {"p": [p1, p2, p3], "o": [o1, o2, o3, o4], "d": [d1], "pr": pr, "g": g}


def _outcome(r, status: int) -> dict:
    assert r.status_code == status, (r.status_code, r.text[:1000])
    assert r.headers["Content-Type"].startswith(FHIR_JSON)
    body = r.json()
    assert body["resourceType"] == "OperationOutcome"
    return body


# --- kick-off -------------------------------------------------------------------------------

def test_system_export_manifest_and_files(http, base, app, data) -> None:
    loc, m = export(http, app, f"{base}/$export", {"_type": "Patient,Observation,DiagnosticReport,Practitioner,Group"})
    assert loc.startswith(base + "/$export-status/")
    assert m["requiresAccessToken"] is True
    assert m["request"] == f"{base}/$export?_type=Patient,Observation,DiagnosticReport,Practitioner,Group".replace(",", "%2C")
    assert m["transactionTime"].endswith("+00:00")
    assert m["error"] == []
    for o in m["output"]:
        assert o["url"].startswith(base + "/$export-file/")
    got = download(http, m)
    assert ids(got["Patient"]) == ids(data["p"])
    assert ids(got["Observation"]) == ids(data["o"])
    assert ids(got["DiagnosticReport"]) == ids(data["d"])
    assert ids(got["Practitioner"]) == {data["pr"]["id"]}
    assert [o["type"] for o in m["output"]] == ["Patient", "Observation", "DiagnosticReport", "Practitioner", "Group"]
    # the lines are the stored bytes: each equals what a read returns
    o1 = data["o"][0]["id"]
    line = next(x for x in got["Observation"] if x["id"] == o1)
    assert line == http.get(f"{base}/Observation/{o1}", headers={"Accept": FHIR_JSON}).json()


def test_file_bytes_are_the_stored_bytes(http, base, app, data) -> None:
    _loc, m = export(http, app, f"{base}/$export", {"_type": "Patient"})
    r = http.get(m["output"][0]["url"])
    first = r.content.splitlines()[0]
    rid = orjson.loads(first)["id"]
    assert first == http.get(f"{base}/Patient/{rid}", headers={"Accept": FHIR_JSON}).content


def test_kick_off_post_with_parameters(http, base, app, data) -> None:
    body = {"resourceType": "Parameters", "parameter": [
        {"name": "_type", "valueString": "Observation"},
        {"name": "_outputFormat", "valueString": "application/ndjson"},
        {"name": "_typeFilter", "valueString": "Observation?code=http://loinc.org|2345-7"},
    ]}
    r = http.post(f"{base}/$export", data=orjson.dumps(body), headers={**ASYNC, "Content-Type": FHIR_JSON})
    assert r.status_code == 202, r.text
    run_worker(app)
    got = download(http, manifest(http, r.headers["Content-Location"]))
    assert ids(got["Observation"]) == {data["o"][1]["id"], data["o"][3]["id"]}


def test_missing_prefer_is_400(http, base, data) -> None:
    _outcome(http.get(f"{base}/$export", headers={"Accept": FHIR_JSON}), 400)
    _outcome(http.get(f"{base}/Patient/$export", headers={"Accept": FHIR_JSON, "Prefer": "return=minimal"}), 400)


@pytest.mark.parametrize("params", [
    {"_outputFormat": "text/csv"},
    {"_type": "NoSuchType"},
    {"_type": "Observation", "_typeFilter": "Patient?gender=female"},
    {"_typeFilter": "Observation?no-such-param=1"},
    {"_typeFilter": "Observation?date=not-a-date"},
    {"_typeFilter": "Observation?_count=10"},
    {"_typeFilter": "Observation"},
    {"_since": "yesterday"},
    {"_since": "2024-01-01T10:00:00"},
    {"_elements": "bad name!"},
    {"includeAssociatedData": "EverythingPlease"},
])
def test_bad_parameters_are_400(http, base, params) -> None:
    _outcome(http.get(f"{base}/$export", params=params, headers=ASYNC), 400)


def test_unknown_parameter_ignored_unless_strict(http, base, app) -> None:
    kick_off(http, f"{base}/$export", {"_type": "Patient", "foo": "bar"})
    _outcome(http.get(f"{base}/$export", params={"foo": "bar"}, headers={**ASYNC, "Prefer": "respond-async, handling=strict"}), 400)
    run_worker(app)


def test_patient_level_type_outside_compartment_is_400(http, base) -> None:
    _outcome(http.get(f"{base}/Patient/$export", params={"_type": "Practitioner"}, headers=ASYNC), 400)


def test_patient_param_refused_at_system_level(http, base, data) -> None:
    body = {"resourceType": "Parameters", "parameter": [
        {"name": "patient", "valueReference": {"reference": f"Patient/{data['p'][0]['id']}"}}]}
    r = http.post(f"{base}/$export", data=orjson.dumps(body), headers={**ASYNC, "Content-Type": FHIR_JSON})
    _outcome(r, 400)
    bad = {"resourceType": "Parameters", "parameter": [{"name": "patient", "valueReference": {"reference": "Observation/x"}}]}
    r = http.post(f"{base}/Patient/$export", data=orjson.dumps(bad), headers={**ASYNC, "Content-Type": FHIR_JSON})
    _outcome(r, 400)
    r = http.post(f"{base}/Patient/$export", data=b'{"resourceType":"Patient"}', headers={**ASYNC, "Content-Type": FHIR_JSON})
    _outcome(r, 400)


def test_unknown_group_is_404(http, base) -> None:
    _outcome(http.get(f"{base}/Group/no-such-group/$export", headers=ASYNC), 404)


# --- status, delete -----------------------------------------------------------------------------

def test_status_202_then_429_then_200_then_delete_404(http, base, app, data) -> None:
    loc = kick_off(http, f"{base}/$export", {"_type": "Patient"})
    r = http.get(loc)
    assert r.status_code == 202
    assert r.headers["X-Progress"] == "queued"
    assert r.headers["Retry-After"] == "1"
    r = http.get(loc)  # at once again: too soon
    body = _outcome(r, 429)
    assert body["issue"][0]["code"] == "throttled"
    assert int(r.headers["Retry-After"]) >= 1
    run_worker(app)
    m = manifest(http, loc)
    files = [o["url"] for o in m["output"]]
    assert http.get(files[0]).status_code == 200
    r = http.delete(loc)
    assert r.status_code == 202
    _outcome(http.get(loc), 404)
    _outcome(http.get(files[0]), 404)
    _outcome(http.delete(loc), 404)
    job = loc.rsplit("/", 1)[1]
    from app.bulk.settings import settings_of

    assert not (settings_of(app).export_dir / job).exists()


def test_delete_while_queued_cancels(http, base, app) -> None:
    loc = kick_off(http, f"{base}/$export", {"_type": "Patient"})
    assert http.delete(loc).status_code == 202
    assert run_worker(app) == 0  # nothing left to run
    _outcome(http.get(loc), 404)


def test_unknown_job_and_file_are_404(http, base, app) -> None:
    _outcome(http.get(f"{base}/$export-status/0123456789abcdef"), 404)
    _outcome(http.get(f"{base}/$export-status/..%2Fetc"), 404)
    _loc, m = export(http, app, f"{base}/$export", {"_type": "Patient"})
    job = m["output"][0]["url"].split("/")[-2]
    _outcome(http.get(f"{base}/$export-file/{job}/Patient-99.ndjson"), 404)
    _outcome(http.get(f"{base}/$export-file/{job}/..%2F..%2Fsecret"), 404)


# --- parameters -------------------------------------------------------------------------------

def test_type_filter_and_type(http, base, app, data) -> None:
    _loc, m = export(http, app, f"{base}/$export", {
        "_type": "Observation,Patient",
        "_typeFilter": "Observation?status=preliminary,Observation?code=http://loinc.org|718-7&subject=Patient/" + data["p"][1]["id"],
    })
    got = download(http, m)
    assert set(got) == {"Observation", "Patient"}
    assert ids(got["Observation"]) == {data["o"][3]["id"], data["o"][2]["id"]}
    assert ids(got["Patient"]) == ids(data["p"])  # no filter on Patient: all of them


def test_type_filter_without_type_keeps_other_types(http, base, app, data) -> None:
    _loc, m = export(http, app, f"{base}/$export", {"_typeFilter": "Observation?status=preliminary"})
    got = download(http, m)
    assert ids(got["Observation"]) == {data["o"][3]["id"]}
    assert ids(got["Patient"]) == ids(data["p"])


def test_elements(http, base, app, data) -> None:
    _loc, m = export(http, app, f"{base}/$export", {"_type": "Observation,Patient", "_elements": "Observation.status,gender"})
    got = download(http, m)
    for o in got["Observation"]:
        assert set(o) <= {"resourceType", "id", "meta", "status", "code", "gender"}
        assert "valueQuantity" not in o and "subject" not in o
        assert any(t["code"] == "SUBSETTED" for t in o["meta"]["tag"])
    for p in got["Patient"]:
        assert "gender" in p and "name" not in p


def test_output_format_aliases(http, base, app) -> None:
    for fmt in ("ndjson", "application/ndjson", "application/fhir+ndjson"):
        kick_off(http, f"{base}/$export", {"_type": "Patient", "_outputFormat": fmt})
    run_worker(app)


def test_patient_level_export(http, base, app, data) -> None:
    _loc, m = export(http, app, f"{base}/Patient/$export")
    got = download(http, m)
    assert "Practitioner" not in got
    assert ids(got["Patient"]) == ids(data["p"])
    assert ids(got["Observation"]) == ids(data["o"])


def test_patient_param(http, base, app, data) -> None:
    p1 = data["p"][0]["id"]
    body = {"resourceType": "Parameters", "parameter": [
        {"name": "patient", "valueReference": {"reference": f"Patient/{p1}"}},
        {"name": "patient", "valueReference": {"reference": "Patient/not-there"}},
        {"name": "includeAssociatedData", "valueCode": "_acmeExtras"},  # custom: ignored with a warning
    ]}
    r = http.post(f"{base}/Patient/$export", data=orjson.dumps(body), headers={**ASYNC, "Content-Type": FHIR_JSON})
    assert r.status_code == 202, r.text
    run_worker(app)
    m = manifest(http, r.headers["Content-Location"])
    got = download(http, m)
    assert ids(got["Patient"]) == {p1}
    assert ids(got["Observation"]) == {data["o"][0]["id"], data["o"][1]["id"]}
    assert ids(got["DiagnosticReport"]) == {data["d"][0]["id"]}
    assert len(m["error"]) == 1
    err = http.get(m["error"][0]["url"])
    assert err.headers["Content-Type"] == "application/fhir+ndjson"
    issues = [orjson.loads(x)["issue"][0]["diagnostics"] for x in err.content.splitlines()]
    assert any("Patient/not-there" in i for i in issues)
    assert any("includeAssociatedData=_acmeExtras" in i for i in issues)
    codes = {orjson.loads(x)["issue"][0]["code"] for x in err.content.splitlines()}
    assert codes == {"not-found", "not-supported"}


def test_group_export_uses_active_members(http, base, app, data) -> None:
    _loc, m = export(http, app, f"{base}/Group/{data['g']['id']}/$export", {"_type": "Patient,Observation"})
    got = download(http, m)
    assert ids(got["Patient"]) == {data["p"][0]["id"], data["p"][1]["id"]}
    assert ids(got["Observation"]) == {o["id"] for o in data["o"][:3]}


def test_group_export_with_patient_param_intersects(http, base, app, data) -> None:
    p2 = data["p"][1]["id"]
    body = {"resourceType": "Parameters", "parameter": [
        {"name": "patient", "valueReference": {"reference": f"Patient/{p2}"}},
        {"name": "_type", "valueString": "Observation"}]}
    r = http.post(f"{base}/Group/{data['g']['id']}/$export", data=orjson.dumps(body),
                  headers={**ASYNC, "Content-Type": FHIR_JSON})
    assert r.status_code == 202, r.text
    run_worker(app)
    got = download(http, manifest(http, r.headers["Content-Location"]))
    assert ids(got["Observation"]) == {data["o"][2]["id"]}


def test_since(http, base, app, data) -> None:
    _loc, m = export(http, app, f"{base}/$export", {"_type": "Patient", "_since": "2999-01-01T00:00:00Z"})
    assert m["output"] == []
    _loc, m = export(http, app, f"{base}/$export", {"_type": "Patient", "_since": "2000-01-01T00:00:00+01:00"})
    assert ids(download(http, m)["Patient"]) == ids(data["p"])


def test_per_client_limit_is_429(http, base, app) -> None:
    app.config["BULK_MAX_JOBS_PER_CLIENT"] = 1
    try:
        kick_off(http, f"{base}/$export", {"_type": "Patient"})
        r = http.get(f"{base}/$export", params={"_type": "Patient"}, headers=ASYNC)
        body = _outcome(r, 429)
        assert body["issue"][0]["code"] == "throttled"
        assert int(r.headers["Retry-After"]) > 0
        run_worker(app)
        kick_off(http, f"{base}/$export", {"_type": "Patient"})  # the first one finished
        run_worker(app)
    finally:
        app.config["BULK_MAX_JOBS_PER_CLIENT"] = 1000


def test_capability_statement_lists_export(http, base) -> None:
    cs = http.get(f"{base}/metadata").json()
    assert "http://hl7.org/fhir/uv/bulkdata/CapabilityStatement/bulk-data" in cs["instantiates"]
    assert cs["rest"][0]["operation"][0]["name"] == "export"
    by_type = {r["type"]: r for r in cs["rest"][0]["resource"]}
    assert by_type["Group"]["operation"][0]["definition"].endswith("group-export")

"""The export is a snapshot at transactionTime: writes after kick-off are not mixed in."""

from __future__ import annotations

import time

import orjson
from bulkhelp import (
    FHIR_JSON,
    download,
    export,
    ids,
    kick_off,
    manifest,
    observation,
    patient,
    run_worker,
    uid,
)


def test_writes_after_kick_off_are_not_exported(http, base, app) -> None:
    p = patient(http, base, uid())
    obs = [observation(http, base, p["id"]) for _ in range(4)]
    loc = kick_off(http, f"{base}/$export", {"_type": "Observation,Patient"})
    time.sleep(0.01)
    # after kick-off: update one, delete one, create one, update the patient
    changed = dict(obs[0], status="amended")
    r = http.put(f"{base}/Observation/{changed['id']}", data=orjson.dumps(changed),
                 headers={"Content-Type": FHIR_JSON, "Accept": FHIR_JSON})
    assert r.status_code == 200
    assert http.delete(f"{base}/Observation/{obs[1]['id']}").status_code in (200, 204)
    new = observation(http, base, p["id"])
    p2 = dict(p, gender="male")
    assert http.put(f"{base}/Patient/{p['id']}", data=orjson.dumps(p2),
                    headers={"Content-Type": FHIR_JSON, "Accept": FHIR_JSON}).status_code == 200
    run_worker(app)
    got = download(http, manifest(http, loc))
    by_id = {o["id"]: o for o in got["Observation"]}
    assert set(by_id) == ids(obs)  # the deleted one is in, the new one is not
    assert new["id"] not in by_id
    assert by_id[obs[0]["id"]]["status"] == "final"  # the version at transactionTime
    assert by_id[obs[0]["id"]]["meta"]["versionId"] == "1"
    assert got["Patient"][0]["gender"] == "female"
    # a new export sees the new state
    _loc, m = export(http, app, f"{base}/$export", {"_type": "Observation"})
    now = {o["id"]: o for o in download(http, m)["Observation"]}
    assert obs[1]["id"] not in now and new["id"] in now
    assert now[obs[0]["id"]]["status"] == "amended"


def test_since_uses_transaction_time_of_previous_export(http, base, app) -> None:
    p = patient(http, base, uid())
    observation(http, base, p["id"])
    time.sleep(0.01)  # timestamps have millisecond resolution
    _loc, m1 = export(http, app, f"{base}/$export", {"_type": "Observation"})
    time.sleep(0.01)
    later = observation(http, base, p["id"])
    _loc, m2 = export(http, app, f"{base}/$export", {"_type": "Observation", "_since": m1["transactionTime"]})
    assert ids(download(http, m2)["Observation"]) == {later["id"]}


def test_since_lists_deletions_in_deleted_files(http, base, app) -> None:
    p = patient(http, base, uid())
    keep = observation(http, base, p["id"])
    gone = observation(http, base, p["id"])
    _loc, m1 = export(http, app, f"{base}/$export", {"_type": "Observation"})
    assert "deleted" not in m1
    time.sleep(0.01)
    assert http.delete(f"{base}/Observation/{gone['id']}").status_code in (200, 204)
    changed = dict(keep, status="amended")
    assert http.put(f"{base}/Observation/{keep['id']}", data=orjson.dumps(changed),
                    headers={"Content-Type": FHIR_JSON, "Accept": FHIR_JSON}).status_code == 200
    _loc, m2 = export(http, app, f"{base}/$export", {"_type": "Observation,Patient", "_since": m1["transactionTime"]})
    assert ids(download(http, m2)["Observation"]) == {keep["id"]}
    assert len(m2["deleted"]) == 1 and m2["deleted"][0]["type"] == "Bundle" and m2["deleted"][0]["count"] == 1
    r = http.get(m2["deleted"][0]["url"])
    assert r.headers["Content-Type"] == "application/fhir+ndjson"
    bundle = orjson.loads(r.content.splitlines()[0])
    assert bundle["type"] == "transaction"
    assert bundle["entry"] == [{"request": {"method": "DELETE", "url": f"Observation/{gone['id']}"}}]
    # with a filter the deletions are not listed (they cannot be tested against it)
    _loc, m3 = export(http, app, f"{base}/$export", {"_type": "Observation", "_since": m1["transactionTime"],
                                                     "_typeFilter": "Observation?status=amended"})
    assert ids(download(http, m3)["Observation"]) == {keep["id"]}
    assert "deleted" not in m3

"""Row filters are decided on the snapshot: a resource changed after kick-off is selected (or
not) by the version that is exported, not by its current index rows."""

from __future__ import annotations

import time

import orjson
from bulkhelp import (
    FHIR_JSON,
    download,
    ids,
    kick_off,
    manifest,
    observation,
    patient,
    post,
    run_worker,
    uid,
)

JSON = {"Content-Type": FHIR_JSON, "Accept": FHIR_JSON}


def _put(http, base: str, res: dict) -> dict:
    r = http.put(f"{base}/{res['resourceType']}/{res['id']}", data=orjson.dumps(res), headers=JSON)
    assert r.status_code == 200, r.text[:500]
    return r.json()


def _run(http, app, loc: str) -> dict[str, list[dict]]:
    run_worker(app)
    return download(http, manifest(http, loc))


def test_type_filter_uses_the_version_at_transaction_time(http, base, app) -> None:
    p = patient(http, base, uid())
    was_final = observation(http, base, p["id"], status="final")
    was_prelim = observation(http, base, p["id"], status="preliminary")
    stays_final = observation(http, base, p["id"], status="final")
    gone_final = observation(http, base, p["id"], status="final")
    time.sleep(0.01)  # timestamps have millisecond resolution
    loc = kick_off(http, f"{base}/$export", {
        "_type": "Observation", "_typeFilter": f"Observation?status=final&subject=Patient/{p['id']}"})
    time.sleep(0.01)
    # after kick-off: flip both filters' answers, delete one match, create a new match
    _put(http, base, dict(was_final, status="amended"))
    _put(http, base, dict(was_prelim, status="final"))
    assert http.delete(f"{base}/Observation/{gone_final['id']}").status_code in (200, 204)
    new_final = observation(http, base, p["id"], status="final")
    got = {o["id"]: o for o in _run(http, app, loc)["Observation"]}
    assert set(got) == {was_final["id"], stays_final["id"], gone_final["id"]}
    assert got[was_final["id"]]["status"] == "final" and got[was_final["id"]]["meta"]["versionId"] == "1"
    assert was_prelim["id"] not in got and new_final["id"] not in got
    # a new export sees the new state
    loc = kick_off(http, f"{base}/$export", {
        "_type": "Observation", "_typeFilter": f"Observation?status=final&subject=Patient/{p['id']}"})
    assert ids(_run(http, app, loc)["Observation"]) == {was_prelim["id"], stays_final["id"], new_final["id"]}


def test_type_filter_several_changes_and_versions(http, base, app) -> None:
    """A resource updated twice after kick-off is tested in its version at transactionTime,
    among many unchanged rows (the changed rows are merged into the batches in rid order)."""
    p = patient(http, base, uid())
    obs = [observation(http, base, p["id"], code="718-7" if i % 2 else "2345-7") for i in range(30)]
    time.sleep(0.01)
    app.config["BULK_BATCH_BYTES"] = 4000  # several small batches
    try:
        loc = kick_off(http, f"{base}/$export", {
            "_type": "Observation",
            "_typeFilter": f"Observation?code=http://loinc.org|718-7&subject=Patient/{p['id']}"})
        time.sleep(0.01)
        for o in obs[:10]:  # swap the codes of the first ten, twice over for the first two
            swapped = "2345-7" if o["code"]["coding"][0]["code"] == "718-7" else "718-7"
            v2 = _put(http, base, dict(o, code={"coding": [{"system": "http://loinc.org", "code": swapped}]}))
            if o in obs[:2]:
                _put(http, base, dict(v2, status="amended"))
        got = _run(http, app, loc)["Observation"]
    finally:
        app.config.pop("BULK_BATCH_BYTES")
    expected = {o["id"] for o in obs if o["code"]["coding"][0]["code"] == "718-7"}
    assert ids(got) == expected and len(got) == len(expected) == 15
    assert {o["meta"]["versionId"] for o in got} == {"1"}
    assert [o["id"] for o in got] == [o["id"] for o in obs if o["id"] in expected]  # rid order kept


def test_group_membership_by_reference_at_transaction_time(http, base, app) -> None:
    """Patient compartment / Group: an Observation moved to another patient after kick-off is
    exported with the patient it had then."""
    member, other = patient(http, base, uid()), patient(http, base, uid())
    g = post(http, base, {"resourceType": "Group", "type": "person", "actual": True,
                          "member": [{"entity": {"reference": f"Patient/{member['id']}"}}]})
    moves_out = observation(http, base, member["id"])
    moves_in = observation(http, base, other["id"])
    stays = observation(http, base, member["id"])
    time.sleep(0.01)
    loc = kick_off(http, f"{base}/Group/{g['id']}/$export", {"_type": "Observation"})
    time.sleep(0.01)
    _put(http, base, dict(moves_out, subject={"reference": f"Patient/{other['id']}"}))
    _put(http, base, dict(moves_in, subject={"reference": f"Patient/{member['id']}"}))
    got = {o["id"]: o for o in _run(http, app, loc)["Observation"]}
    assert set(got) == {moves_out["id"], stays["id"]}
    assert got[moves_out["id"]]["subject"]["reference"] == f"Patient/{member['id']}"


def test_last_updated_filter_and_since_on_the_snapshot(http, base, app) -> None:
    p = patient(http, base, uid())
    time.sleep(0.01)
    mark = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(time.time() - 1)) + "Z"
    a = observation(http, base, p["id"])
    time.sleep(0.01)
    loc = kick_off(http, f"{base}/$export", {
        "_type": "Observation", "_since": mark,
        "_typeFilter": f"Observation?_lastUpdated=ge{mark}&subject=Patient/{p['id']}"})
    time.sleep(0.01)
    _put(http, base, dict(a, status="amended"))
    got = _run(http, app, loc)["Observation"]
    assert ids(got) == {a["id"]} and got[0]["status"] == "final"


def test_chained_filter_still_works_for_changed_rows(http, base, app) -> None:
    """Chains look at other resources: evaluated on the live index (decision 0014)."""
    tag = uid()
    p = patient(http, base, tag)
    o = observation(http, base, p["id"])
    time.sleep(0.01)
    loc = kick_off(http, f"{base}/$export", {
        "_type": "Observation", "_typeFilter": f"Observation?subject:Patient.identifier=urn:test:bulk|{tag}"})
    time.sleep(0.01)
    _put(http, base, dict(o, status="amended"))
    got = _run(http, app, loc)["Observation"]
    assert ids(got) == {o["id"]} and got[0]["status"] == "final"

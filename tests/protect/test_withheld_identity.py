"""``Patient/$merge``, ``$unmerge`` and ``Patient/{id}/$correct-nhs-number`` on a Patient withheld
from the token (a ``V``-labelled Patient, the label set by the sender) answer 403 ``forbidden``,
change nothing and show nothing of that Patient (preview and result included), whether the
Patient is named by reference or found by identifier; cleared tokens and break-glass requests
work as before (docs/decisions/0011-sensitive-results.md).

Real HTTP, real tokens (users through the authorization-code flow), both databases."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from protecthelp import (
    CONF,
    Fhir,
    app_client,
    backend_client,
    engine_of,
    token,
    uid,
    user,
    user_token,
)

sys.path.append(str(Path(__file__).resolve().parents[1] / "identity"))

from idhelp import NHS, merge_body, nhs_number, params, ref_param  # noqa: E402

SCOPE = "system/*.cruds"
USER_SCOPE = "openid fhirUser user/*.cruds"
MRN = "https://hospital-a.example.nhs.uk/Id/mrn"


@pytest.fixture(scope="module")
def world(protect_app, protect_server):
    app, base = protect_app, protect_server.base
    ehr = app_client(app, USER_SCOPE, break_glass=True)
    doctor = user(app, "Practitioner/doc-identity", break_glass=True)
    return {"app": app, "base": base,
            "mpi": Fhir(base, token(app, backend_client(app, SCOPE), SCOPE)),  # no clearance
            "cleared": Fhir(base, token(app, backend_client(app, SCOPE, "V"), SCOPE)),
            "doctor": Fhir(base, user_token(protect_server, ehr, doctor, USER_SCOPE))}


def _patient(world, hidden: bool) -> dict:  # noqa: ANN001
    """A new Patient (V-labelled when ``hidden``) with an NHS number, an MRN and a family name
    that must never show in an answer to a token not cleared for V; and one Observation."""
    pid, nhs, mrn, family = uid("pt-"), nhs_number(), uid("mrn-"), uid("Secret")
    body = {"resourceType": "Patient", "id": pid, "name": [{"family": family}],
            "identifier": [{"system": NHS, "value": nhs}, {"system": MRN, "value": mrn}]}
    if hidden:
        body["meta"] = {"security": [{"system": CONF, "code": "V"}]}
    r = world["cleared"].put(f"Patient/{pid}", body)
    assert r.status_code == 201, r.text
    oid = uid("o-")
    r = world["cleared"].put(f"Observation/{oid}", {
        "resourceType": "Observation", "id": oid, "status": "final", "subject": {"reference": f"Patient/{pid}"},
        "code": {"coding": [{"system": "http://loinc.org", "code": "718-7"}]}})
    assert r.status_code == 201, r.text
    return {"id": pid, "nhs": nhs, "mrn": mrn, "family": family, "obs": oid}


def _versions(world, *pats: dict) -> list:  # noqa: ANN001
    """What a cleared token reads: each Patient's and its Observation's version and subject."""
    c, out = world["cleared"], []
    for p in pats:
        pr = c.get(f"Patient/{p['id']}").json()
        ob = c.get(f"Observation/{p['obs']}").json()
        out.append((pr["meta"]["versionId"], pr.get("active"), ob["meta"]["versionId"], ob["subject"]["reference"]))
    return out


def _refused(r, *hidden: dict) -> None:  # noqa: ANN001
    assert r.status_code == 403, r.text
    body = r.json()
    assert body["resourceType"] == "OperationOutcome"
    assert [i["code"] for i in body["issue"]] == ["forbidden"]
    for p in hidden:
        assert p["family"] not in r.text and p["nhs"] not in r.text and p["mrn"] not in r.text


def _ident(role: str, system: str, value: str) -> dict:
    return {"name": f"{role}-patient-identifier", "valueIdentifier": {"system": system, "value": value}}


def _correct(new: str) -> dict:
    return params({"name": "nhs-number", "valueString": new}, {"name": "reason", "valueString": "typo"})


def test_merge_involving_a_withheld_patient_is_refused(world) -> None:
    m = world["mpi"]
    hidden, seen = _patient(world, True), _patient(world, False)
    before = _versions(world, hidden, seen)
    for body in (merge_body(hidden["id"], seen["id"]), merge_body(seen["id"], hidden["id"]),
                 merge_body(hidden["id"], seen["id"], preview=True), merge_body(seen["id"], hidden["id"], preview=True)):
        _refused(m.post("Patient/$merge", body), hidden)
    # found by identifier: refused too, and its id is not revealed
    for body in (params(_ident("source", NHS, hidden["nhs"]), ref_param("target-patient", f"Patient/{seen['id']}")),
                 params(ref_param("source-patient", f"Patient/{seen['id']}"), _ident("target", MRN, hidden["mrn"]),
                        {"name": "preview", "valueBoolean": True})):
        r = m.post("Patient/$merge", body)
        _refused(r, hidden)
        assert hidden["id"] not in r.text
    assert _versions(world, hidden, seen) == before


def test_correct_nhs_number_of_a_withheld_patient_is_refused(world) -> None:
    hidden = _patient(world, True)
    before = _versions(world, hidden)
    _refused(world["mpi"].post(f"Patient/{hidden['id']}/$correct-nhs-number", _correct(nhs_number())), hidden)
    assert _versions(world, hidden) == before
    # a visible Patient: corrected as before
    seen = _patient(world, False)
    r = world["mpi"].post(f"Patient/{seen['id']}/$correct-nhs-number", _correct(nhs_number()))
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("hidden_role", ["source", "target"])
def test_unmerge_involving_a_withheld_patient_is_refused(world, hidden_role) -> None:
    hidden, seen = _patient(world, True), _patient(world, False)
    src, tgt = (hidden, seen) if hidden_role == "source" else (seen, hidden)
    r = world["cleared"].post("Patient/$merge", merge_body(src["id"], tgt["id"]))
    assert r.status_code == 200, r.text
    before = _versions(world, hidden, seen)
    for extra in ((), ({"name": "preview", "valueBoolean": True},)):
        body = params(ref_param("source-patient", f"Patient/{src['id']}"), *extra)
        _refused(world["mpi"].post("Patient/$unmerge", body), hidden)
    assert _versions(world, hidden, seen) == before
    r = world["cleared"].post("Patient/$unmerge", params(ref_param("source-patient", f"Patient/{src['id']}")))
    assert r.status_code == 200, r.text


def test_cleared_token_merges_and_corrects_as_before(world) -> None:
    c = world["cleared"]
    hidden, seen = _patient(world, True), _patient(world, False)
    body = params(_ident("source", MRN, seen["mrn"]), _ident("target", NHS, hidden["nhs"]))
    r = c.post("Patient/$merge", params(*body["parameter"], {"name": "preview", "valueBoolean": True}))
    assert r.status_code == 200, r.text
    r = c.post("Patient/$merge", body)
    assert r.status_code == 200, r.text
    result = next(p["resource"] for p in r.json()["parameter"] if p["name"] == "result")
    assert result["id"] == hidden["id"]
    assert c.get(f"Observation/{seen['obs']}").json()["subject"]["reference"] == f"Patient/{hidden['id']}"
    r = c.post(f"Patient/{hidden['id']}/$correct-nhs-number", _correct(nhs_number()))
    assert r.status_code == 200, r.text


def test_break_glass_merge_unmerge_and_correction(world) -> None:
    from sqlalchemy import select

    from app.audit.tables import audit_event
    from app.protect.alerts import list_alerts

    doc = world["doctor"]
    hidden, seen = _patient(world, True), _patient(world, False)
    _refused(doc.post("Patient/$merge", merge_body(seen["id"], hidden["id"], preview=True)), hidden)  # not cleared
    bg = "emergency: duplicate record of a patient in resus"
    rids = {k: uid("bg-") for k in ("preview", "merge", "unmerge", "correct")}

    def post(path: str, body: dict, key: str):  # noqa: ANN202
        return doc.post(path, body, **{"X-Break-Glass": bg, "X-Request-Id": rids[key]})

    r = post("Patient/$merge", merge_body(seen["id"], hidden["id"], preview=True), "preview")
    assert r.status_code == 200, r.text
    r = post("Patient/$merge", merge_body(seen["id"], hidden["id"]), "merge")
    assert r.status_code == 200, r.text
    assert world["cleared"].get(f"Patient/{seen['id']}").json()["active"] is False
    r = post("Patient/$unmerge", params(ref_param("source-patient", f"Patient/{seen['id']}")), "unmerge")
    assert r.status_code == 200, r.text
    r = post(f"Patient/{hidden['id']}/$correct-nhs-number", _correct(nhs_number()), "correct")
    assert r.status_code == 200, r.text

    alerts = {a.request_id: a for a in list_alerts(engine_of(world["app"]), limit=1000)}
    with engine_of(world["app"]).connect() as conn:
        for key, rid in rids.items():
            assert alerts[rid].reason == bg and alerts[rid].method == "POST"
            purposes = conn.execute(select(audit_event.c.purpose, audit_event.c.outcome)
                                    .where(audit_event.c.request_id == rid)).all()
            assert purposes and {tuple(x) for x in purposes} == {("BTG", 0)}, key

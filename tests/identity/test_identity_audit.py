"""Patient $merge, $unmerge and $correct-nhs-number are audited inside their own transaction
(docs/decisions/0010-audit-trail.md), on both databases, over real HTTP:

- a success has exactly one event (subtype merge / unmerge / correct-nhs-number, outcome 0), written
  by the operation's unit of work before it commits, naming the patients whose records changed;
- a refused or failed operation has one failure event and no success event, and changes nothing;
  also when the failure comes *after* the audit insert: a deferred foreign key, violated by a row
  that a trigger adds when the success event is inserted, fails the COMMIT, and the success event
  goes with the rest of the transaction.
"""

from __future__ import annotations

import uuid

import orjson
import pytest
import requests
from idhelp import (
    HOSP_A,
    HOSP_B,
    hdr,
    merge_body,
    nhs_number,
    observation,
    params,
    patient,
    ref_param,
    uid,
)
from sqlalchemy import func, select, text

OPS = ("merge", "unmerge", "correct-nhs-number")


def _engine(app):  # noqa: ANN001, ANN202
    return app.extensions["results_repo"].engine


def _post(http, base, body):  # noqa: ANN001, ANN202
    r = http.post(f"{base}/{body['resourceType']}", json=body, headers=hdr())
    assert r.status_code == 201, r.text
    return r.json()["id"]


def _rid() -> str:
    return "id-audit-" + uuid.uuid4().hex


def _events(app, request_id: str) -> list[dict]:
    """The audit rows of one request, with their patients, straight from the tables."""
    from app.audit.tables import audit_event, audit_patient

    with _engine(app).connect() as c:
        rows = c.execute(select(audit_event).where(audit_event.c.request_id == request_id)
                         .order_by(audit_event.c.id)).mappings().all()
        out = []
        for r in rows:
            pats = set(c.execute(select(audit_patient.c.patient_id)
                                 .where(audit_patient.c.event_id == r["id"])).scalars())
            out.append({**r, "patients": pats, "detail": orjson.loads(r["detail"]) if r["detail"] else {}})
    return out


def _state(app) -> dict:
    """What a merge, unmerge or correction changes: every current row (type, id, version), the
    version count, the merge records, the Provenance count and the identity operations' success
    events."""
    from app.audit.tables import audit_event
    from app.identity.tables import patient_merge
    from app.storage.tables import resource, resource_version

    with _engine(app).connect() as c:
        return {
            "current": sorted(c.execute(select(resource.c.res_type, resource.c.res_id, resource.c.version,
                                               resource.c.deleted, resource.c.content_hash)).all()),
            "versions": c.execute(select(func.count()).select_from(resource_version)).scalar(),
            "merges": sorted(c.execute(select(patient_merge.c.id, patient_merge.c.unmerged_at)).all()),
            "successes": c.execute(select(func.count()).select_from(audit_event).where(
                audit_event.c.subtype.in_(OPS), audit_event.c.outcome == 0)).scalar(),
        }


@pytest.fixture
def trio(server, http) -> dict:
    """B (to be merged away, with results and a report), A (the survivor, with a result) and C,
    another person whose record links to B (its link is re-pointed by the merge)."""
    base = server.base
    a = _post(http, base, patient(nhs_number(), mrn=(HOSP_A, uid())))
    b = _post(http, base, patient(nhs_number(), mrn=(HOSP_B, uid()), family="Jonse"))
    c = _post(http, base, patient(nhs_number(), family="Other", given="Carys",
                                  link=[{"other": {"reference": f"Patient/{b}"}, "type": "seealso"}]))
    _post(http, base, observation(f"Patient/{a}"))
    b_obs = [_post(http, base, observation(f"Patient/{b}", value=10.0 + i)) for i in range(2)]
    _post(http, base, {"resourceType": "DiagnosticReport", "status": "final", "code": {"text": "FBC"},
                       "subject": {"reference": f"Patient/{b}"},
                       "result": [{"reference": f"Observation/{o}"} for o in b_obs]})
    return {"a": a, "b": b, "c": c, "b_obs": b_obs}


def _merge(http, base, source, target, request_id):  # noqa: ANN001, ANN202
    return http.post(f"{base}/Patient/$merge", json=merge_body(source, target),
                     headers=hdr(X_Request_Id=request_id))


def _unmerge(http, base, source, request_id):  # noqa: ANN001, ANN202
    return http.post(f"{base}/Patient/$unmerge", json=params(ref_param("source-patient", f"Patient/{source}")),
                     headers=hdr(X_Request_Id=request_id))


def _correct(http, base, pid, number, request_id):  # noqa: ANN001, ANN202
    body = params({"name": "nhs-number", "valueString": number}, {"name": "reason", "valueString": "transposed"})
    return http.post(f"{base}/Patient/{pid}/$correct-nhs-number", json=body, headers=hdr(X_Request_Id=request_id))


def _codes(resp) -> list[str]:  # noqa: ANN001
    body = resp.json()
    assert body["resourceType"] == "OperationOutcome", body
    return [i["code"] for i in body["issue"]]


# ---- success: one event, in the operation's transaction -------------------------------------
def test_merge_unmerge_and_correction_each_have_one_success_event(app, server, http, trio) -> None:
    base, a, b, c = server.base, trio["a"], trio["b"], trio["c"]
    rid = _rid()
    r = _merge(http, base, b, a, rid)
    assert r.status_code == 200, r.text
    prov = r.json()["parameter"][1]["resource"]["issue"][0]["diagnostics"].rsplit("Provenance/", 1)[1].rstrip(".")
    [ev] = _events(app, rid)
    assert (ev["type"], ev["subtype"], ev["action"], ev["outcome"], ev["status"]) == ("rest", "merge", "U", 0, 200)
    assert ev["patients"] == {a, b, c}  # both records, and C whose link was re-pointed
    b_version = http.get(f"{base}/Patient/{b}").json()["meta"]["versionId"]
    assert ev["entity"] == f"Patient/{b}/_history/{b_version}"
    assert ev["detail"]["provenance"] == f"Provenance/{prov}"
    assert ev["detail"]["target"] == f"Patient/{a}"

    # rendered through the AuditEvent API as the auditor sees it
    found = http.get(f"{base}/AuditEvent", params={"patient": c, "subtype": "merge"}).json()
    [rendered] = [e["resource"] for e in found["entry"]]
    assert rendered["outcome"] == "0" and rendered["action"] == "U"
    assert rendered["subtype"][0] == {"system": "urn:results-repo:audit-subtype", "code": "merge",
                                      "display": "Patient records merged (Patient/$merge)"}

    rid = _rid()
    r = _unmerge(http, base, b, rid)
    assert r.status_code == 200, r.text
    [ev] = _events(app, rid)
    assert (ev["subtype"], ev["action"], ev["outcome"], ev["status"]) == ("unmerge", "U", 0, 200)
    assert ev["patients"] == {a, b, c}
    assert ev["entity"].startswith(f"Patient/{b}/_history/")

    rid, number = _rid(), nhs_number()
    r = _correct(http, base, a, number, rid)
    assert r.status_code == 200, r.text
    [ev] = _events(app, rid)
    assert (ev["subtype"], ev["action"], ev["outcome"], ev["status"]) == ("correct-nhs-number", "U", 0, 200)
    assert ev["patients"] == {a}
    assert ev["entity"] == f"Patient/{a}/_history/{r.json()['meta']['versionId']}"
    assert number not in orjson.dumps(ev["detail"]).decode()  # the numbers stay in the Provenance


def test_the_operation_writes_its_own_record(app, server, http, trio) -> None:
    """Run in-process, with no HTTP layer to write anything afterwards: the event is there as
    soon as the merge has returned, committed by the merge's own unit of work."""
    from app.audit.events import Who
    from app.audit.recorder import Recorder
    from app.identity.merge import merge
    from app.interactions.context import from_app

    rid = _rid()
    with app.app_context():
        ctx = from_app(app, server.base)
        ctx.audit = Recorder(rid, lambda: Who(client_id="in-process"))
        result = merge(ctx, merge_body(trio["b"], trio["a"]))
    assert result.status == 200
    [ev] = _events(app, rid)
    assert (ev["subtype"], ev["outcome"], ev["client_id"]) == ("merge", 0, "in-process")
    assert ev["patients"] == {trio["a"], trio["b"], trio["c"]}


def test_preview_is_recorded_as_the_request_not_as_a_change(app, server, http, trio) -> None:
    before, rid = _state(app), _rid()
    r = http.post(f"{server.base}/Patient/$merge", json=merge_body(trio["b"], trio["a"], preview=True),
                  headers=hdr(X_Request_Id=rid))
    assert r.status_code == 200, r.text
    after = _state(app)
    assert after == {**before, "successes": before["successes"] + 1}  # nothing written but the event
    [ev] = _events(app, rid)
    assert (ev["subtype"], ev["outcome"]) == ("merge", 0)
    assert {trio["a"], trio["b"]} <= ev["patients"]


# ---- failures: one failure event, no success event, nothing changed ---------------------------
def test_rule_violations_leave_only_a_failure_event(app, server, http, trio) -> None:
    base, a, b = server.base, trio["a"], trio["b"]
    before = _state(app)
    rid = _rid()
    r = _merge(http, base, b, b, rid)
    assert r.status_code == 422 and _codes(r) == ["business-rule"]
    [ev] = _events(app, rid)
    assert (ev["subtype"], ev["outcome"], ev["status"]) == ("merge", 4, 422)
    assert ev["patients"] == {b}
    assert ev["detail"]["description"].startswith("business-rule: ")

    rid = _rid()
    r = _unmerge(http, base, b, rid)  # never merged
    assert r.status_code == 422 and _codes(r) == ["business-rule"]
    [ev] = _events(app, rid)
    assert (ev["subtype"], ev["outcome"], ev["status"]) == ("unmerge", 4, 422)
    assert ev["patients"] == {b}

    rid = _rid()
    r = _correct(http, base, a, "9434765918", rid)  # fails Modulus 11
    assert r.status_code == 422 and _codes(r) == ["business-rule"]
    [ev] = _events(app, rid)
    assert (ev["subtype"], ev["outcome"], ev["status"]) == ("correct-nhs-number", 4, 422)
    assert ev["patients"] == {a}
    assert _state(app) == before


def test_merge_of_an_already_merged_patient_is_refused_and_recorded(app, server, http, trio) -> None:
    base, a, b, c = server.base, trio["a"], trio["b"], trio["c"]
    r = _merge(http, base, b, a, _rid())
    assert r.status_code == 200, r.text
    before, rid = _state(app), _rid()
    r = _merge(http, base, c, b, rid)  # into a Patient that was merged away
    assert r.status_code == 422 and _codes(r) == ["business-rule"]
    assert [(e["subtype"], e["outcome"], e["status"]) for e in _events(app, rid)] == [("merge", 4, 422)]
    assert _state(app) == before


def _force_commit_failure(app) -> None:
    """A deferred foreign key that a trigger violates whenever an identity operation's success
    event is inserted: the violation is found at COMMIT, after the audit insert and every other
    write of the operation's transaction."""
    stmts_sqlite = [
        "CREATE TABLE force_parent (id INTEGER PRIMARY KEY)",
        "CREATE TABLE force_child (pid INTEGER REFERENCES force_parent (id) DEFERRABLE INITIALLY DEFERRED)",
        "CREATE TRIGGER force_fail AFTER INSERT ON audit_event "
        "WHEN NEW.outcome = 0 AND NEW.subtype IN ('merge', 'unmerge', 'correct-nhs-number') "
        "BEGIN INSERT INTO force_child (pid) VALUES (1); END",
    ]
    stmts_pg = [
        "CREATE TABLE force_parent (id integer PRIMARY KEY)",
        "CREATE TABLE force_child (pid integer REFERENCES force_parent (id) DEFERRABLE INITIALLY DEFERRED)",
        "CREATE FUNCTION force_fail() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN INSERT INTO force_child (pid) VALUES (1); RETURN NULL; END $$",
        "CREATE TRIGGER force_fail AFTER INSERT ON audit_event FOR EACH ROW "
        "WHEN (NEW.outcome = 0 AND NEW.subtype IN ('merge', 'unmerge', 'correct-nhs-number')) "
        "EXECUTE FUNCTION force_fail()",
    ]
    engine = _engine(app)
    with engine.begin() as c:
        for s in stmts_pg if engine.dialect.name == "postgresql" else stmts_sqlite:
            c.execute(text(s))


def _allow_commit(app) -> None:
    engine = _engine(app)
    with engine.begin() as c:
        if engine.dialect.name == "postgresql":
            c.execute(text("DROP TRIGGER force_fail ON audit_event"))
            c.execute(text("DROP FUNCTION force_fail()"))
        else:
            c.execute(text("DROP TRIGGER force_fail"))
        c.execute(text("DROP TABLE force_child"))
        c.execute(text("DROP TABLE force_parent"))


def test_a_failure_after_the_audit_insert_takes_the_success_event_with_it(app, server, http, trio) -> None:
    base, a, b = server.base, trio["a"], trio["b"]
    r = _merge(http, base, b, a, _rid())  # merged, so that the unmerge can be tried too
    assert r.status_code == 200, r.text
    other = _post(http, base, patient(nhs_number(), family="Eleri"))
    _post(http, base, observation(f"Patient/{other}"))
    before = _state(app)
    _force_commit_failure(app)
    try:
        attempts = {
            "merge": (lambda rid: _merge(http, base, other, a, rid), {other, a}),
            "unmerge": (lambda rid: _unmerge(http, base, b, rid), {b}),
            "correct-nhs-number": (lambda rid: _correct(http, base, a, nhs_number(), rid), {a}),
        }
        for op, (run, named) in attempts.items():
            rid = _rid()
            r = run(rid)
            assert r.status_code == 500, (op, r.text)
            assert _codes(r) == ["exception"]
            events = _events(app, rid)
            assert [(e["subtype"], e["outcome"], e["status"]) for e in events] == [(op, 12, 500)], op
            assert named <= events[0]["patients"], op
            assert _state(app) == before, op  # nothing written, no success event
    finally:
        _allow_commit(app)
    # the same operations succeed once the COMMIT may succeed, each with its one success event
    rid = _rid()
    assert _unmerge(http, base, b, rid).status_code == 200
    assert [(e["subtype"], e["outcome"]) for e in _events(app, rid)] == [("unmerge", 0)]
    rid = _rid()
    assert _merge(http, base, other, a, rid).status_code == 200
    assert [(e["subtype"], e["outcome"]) for e in _events(app, rid)] == [("merge", 0)]


def test_a_refused_merge_is_recorded_as_a_refusal(auth_app, auth_server, issue_token) -> None:
    base = auth_server.base
    admin = {"Authorization": f"Bearer {issue_token('system/*.cruds')}", **hdr()}
    ids = []
    for fam in ("Refa", "Refb"):
        r = requests.post(f"{base}/Patient", json=patient(nhs_number(), family=fam), headers=admin)
        assert r.status_code == 201, r.text
        ids.append(r.json()["id"])
    before, rid = _state(auth_app), _rid()
    reader = {"Authorization": f"Bearer {issue_token('system/*.rs')}", **hdr(X_Request_Id=rid)}
    r = requests.post(f"{base}/Patient/$merge", json=merge_body(ids[1], ids[0]), headers=reader)
    assert r.status_code == 403 and _codes(r) == ["forbidden"]
    [ev] = _events(auth_app, rid)
    assert (ev["subtype"], ev["outcome"], ev["status"]) == ("merge", 8, 403)
    assert ev["patients"] == set(ids)
    assert _state(auth_app) == before

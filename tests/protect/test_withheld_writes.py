"""Writes by id (update, JSON Patch, delete; plain and as batch/transaction entries) aimed at a
resource carrying a label the token is not cleared for answer 403 ``forbidden`` and write
nothing; cleared tokens and break-glass requests write as before; the labelling on arrival
re-applies on every update (docs/decisions/0011-sensitive-results.md).

Real HTTP, real tokens (users through the authorization-code flow), both databases.  LOINC
7918-6 (HIV) is labelled HIV + R on arrival (conftest); ``V`` is set by the sender."""

from __future__ import annotations

import base64

import orjson
import pytest
import requests
from protecthelp import (
    ACT,
    CONF,
    HIV_CODE,
    Fhir,
    app_client,
    backend_client,
    engine_of,
    observation,
    put_entry,
    security_of,
    token,
    uid,
    user,
    user_token,
)

GLUCOSE = "2345-7"
SCOPE = "system/*.cruds"
USER_SCOPE = "openid fhirUser user/*.cruds"
PATCH_JSON = "application/json-patch+json"
HIV_LABELS = {(ACT, "HIV"), (CONF, "R")}
V_LABEL = [{"system": CONF, "code": "V"}]
SECRET = "negative"  # the value of every test Observation (protecthelp.observation)


@pytest.fixture(scope="module")
def world(protect_app, protect_server):
    app, base = protect_app, protect_server.base
    writer = Fhir(base, token(app, backend_client(app, SCOPE), SCOPE))  # no clearance
    cleared = Fhir(base, token(app, backend_client(app, SCOPE, "*"), SCOPE))
    ehr = app_client(app, USER_SCOPE, break_glass=True)  # may relay break-glass, cleared for nothing
    doctor = user(app, "Practitioner/doc-writes", break_glass=True)
    pid = uid("p-")
    assert cleared.put(f"Patient/{pid}", {"resourceType": "Patient", "id": pid}).status_code == 201
    return {"app": app, "base": base, "pid": pid, "writer": writer, "cleared": cleared,
            "doctor": Fhir(base, user_token(protect_server, ehr, doctor, USER_SCOPE))}


def _fresh(world, kind: str) -> str:  # noqa: ANN001
    """A new Observation: ``hiv`` (labelled HIV + R on arrival), ``vlab`` (sender-set V) or
    ``plain`` (no label)."""
    oid = uid(kind + "-")
    body = observation(oid, world["pid"], HIV_CODE if kind == "hiv" else GLUCOSE, V_LABEL if kind == "vlab" else None)
    r = world["cleared"].put(f"Observation/{oid}", body)
    assert r.status_code == 201, r.text
    return oid


def _current(world, oid: str) -> tuple[int, str | None, set]:  # noqa: ANN001
    """What a cleared token reads: (status, versionId, labels)."""
    r = world["cleared"].get(f"Observation/{oid}")
    if r.status_code != 200:
        return r.status_code, None, set()
    return 200, r.json()["meta"]["versionId"], security_of(r.json())


def _codes(r) -> list[str]:  # noqa: ANN001
    body = r.json()
    assert body["resourceType"] == "OperationOutcome", body
    return [i["code"] for i in body["issue"]]


def _refused(r) -> None:  # noqa: ANN001
    assert r.status_code == 403, r.text
    assert _codes(r) == ["forbidden"]
    assert SECRET not in r.text  # no content of the withheld resource
    assert "ETag" not in r.headers and "Location" not in r.headers


def _patch(f: Fhir, path: str, ops: list, **headers: str) -> requests.Response:
    return requests.patch(f"{f.base}/{path}", data=orjson.dumps(ops),
                          headers={**f.h, "Content-Type": PATCH_JSON, **headers})


def _delete(f: Fhir, path: str, **headers: str) -> requests.Response:
    return requests.delete(f"{f.base}/{path}", headers={**f.h, **headers})


def _put(f: Fhir, path: str, body: dict, **headers: str) -> requests.Response:
    return requests.put(f"{f.base}/{path}", data=orjson.dumps(body), headers={**f.h, **headers})


def _patch_entry(oid: str, ops: list) -> dict:
    return {"resource": {"resourceType": "Binary", "contentType": PATCH_JSON,
                         "data": base64.b64encode(orjson.dumps(ops)).decode()},
            "request": {"method": "PATCH", "url": f"Observation/{oid}"}}


def _amended(world, oid: str, code: str = GLUCOSE) -> dict:  # noqa: ANN001
    """A replacement body that omits meta.security (a writer who does not send the labels)."""
    return {**observation(oid, world["pid"], code), "status": "amended"}


# ---- refused: a token not cleared for the label ------------------------------------------------
@pytest.mark.parametrize("kind", ["hiv", "vlab"])
def test_writes_by_id_to_a_withheld_resource_are_refused(world, kind) -> None:
    w, oid = world["writer"], _fresh(world, kind)
    before = _current(world, oid)
    assert before[0] == 200 and before[2]

    _refused(w.put(f"Observation/{oid}", _amended(world, oid)))  # would drop a sender-set label
    _refused(_put(w, f"Observation/{oid}", _amended(world, oid), **{"If-Match": 'W/"99"'}))  # not a 412
    _refused(_put(w, f"Observation/{oid}", observation(oid, world["pid"], GLUCOSE)))
    _refused(_patch(w, f"Observation/{oid}", [{"op": "replace", "path": "/status", "value": "amended"}],
                    Prefer="return=representation"))
    # a failing "test" operation's error would quote the stored value: refused before the patch runs
    _refused(_patch(w, f"Observation/{oid}", [{"op": "test", "path": "/valueCodeableConcept/text", "value": "x"}]))
    _refused(_patch(w, f"Observation/{oid}", [{"op": "remove", "path": "/meta"}], **{"If-Match": 'W/"99"'}))
    _refused(_delete(w, f"Observation/{oid}"))

    assert _current(world, oid) == before  # nothing changed, labels intact
    assert w.get(f"Observation/{oid}").status_code == 404  # and still withheld from the writer


@pytest.mark.parametrize("kind", ["hiv", "vlab"])
def test_bundle_entries_by_id_to_a_withheld_resource_are_refused(world, kind) -> None:
    w, oid = world["writer"], _fresh(world, kind)
    before = _current(world, oid)
    other = uid("o-")
    # a transaction is refused whole: its other entry is not written either
    for entry in (put_entry(_amended(world, oid)),
                  _patch_entry(oid, [{"op": "replace", "path": "/status", "value": "amended"}]),
                  {"request": {"method": "DELETE", "url": f"Observation/{oid}"}}):
        tx = {"resourceType": "Bundle", "type": "transaction",
              "entry": [put_entry(observation(other, world["pid"], GLUCOSE)), entry]}
        r = w.post("", tx, Prefer="return=representation")
        _refused(r)
        assert _current(world, other)[0] == 404
    # in a batch, the entry alone is refused
    entries = [put_entry(_amended(world, oid)),
               _patch_entry(oid, [{"op": "test", "path": "/valueCodeableConcept/text", "value": "x"}]),
               {"request": {"method": "DELETE", "url": f"Observation/{oid}"}},
               put_entry(observation(other, world["pid"], GLUCOSE))]
    r = w.post("", {"resourceType": "Bundle", "type": "batch", "entry": entries}, Prefer="return=representation")
    assert r.status_code == 200, r.text[:2000]
    out = r.json()["entry"]
    for e in out[:3]:
        assert e["response"]["status"] == "403"
        assert [i["code"] for i in e["response"]["outcome"]["issue"]] == ["forbidden"]
        assert "resource" not in e
    assert out[3]["response"]["status"] == "201 Created"
    assert SECRET not in orjson.dumps(out[:3]).decode()
    assert _current(world, oid) == before


def test_refused_write_is_audited_as_a_refusal(world) -> None:
    from sqlalchemy import select

    from app.audit.tables import audit_event

    oid, rid = _fresh(world, "hiv"), uid("req-")
    _refused(_delete(world["writer"], f"Observation/{oid}", **{"X-Request-Id": rid}))
    with engine_of(world["app"]).connect() as conn:
        rows = conn.execute(select(audit_event.c.outcome, audit_event.c.status)
                            .where(audit_event.c.request_id == rid)).all()
    assert [tuple(r) for r in rows] == [(8, 403)]


def test_writes_the_token_may_make_are_unchanged(world) -> None:
    """Writes are still not withheld: a new id, an unlabelled resource, adding a label."""
    w, pid = world["writer"], world["pid"]
    new = uid("n-")
    r = w.put(f"Observation/{new}", observation(new, pid, HIV_CODE))  # a new id: created, labelled
    assert r.status_code == 201, r.text
    assert _current(world, new)[2] == HIV_LABELS
    plain = _fresh(world, "plain")
    r = w.put(f"Observation/{plain}", _amended(world, plain))
    assert r.status_code == 200, r.text
    r = _patch(w, f"Observation/{plain}", [{"op": "add", "path": "/meta", "value": {"security": V_LABEL}}])
    assert r.status_code == 200, r.text  # the writer labels it V (and can no longer see it) ...
    assert w.get(f"Observation/{plain}").status_code == 404
    _refused(w.put(f"Observation/{plain}", _amended(world, plain)))  # ... nor change it again
    gone = _fresh(world, "plain")
    assert _delete(w, f"Observation/{gone}").status_code == 204


# ---- allowed: cleared tokens and break-glass ---------------------------------------------------
@pytest.mark.parametrize("kind", ["hiv", "vlab"])
def test_cleared_token_writes_by_id(world, kind) -> None:
    c = world["cleared"]
    oid = _fresh(world, kind)
    r = c.put(f"Observation/{oid}", {**_amended(world, oid), "meta": {"security": V_LABEL}})
    assert r.status_code == 200, r.text
    r = _patch(c, f"Observation/{oid}", [{"op": "replace", "path": "/status", "value": "corrected"}])
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "corrected"
    tx_id = _fresh(world, kind)
    r = c.post("", {"resourceType": "Bundle", "type": "transaction", "entry": [
        _patch_entry(tx_id, [{"op": "replace", "path": "/status", "value": "amended"}])]})
    assert r.status_code == 200, r.text
    assert _current(world, tx_id)[1] == "2"
    assert _delete(c, f"Observation/{oid}").status_code == 204
    assert _current(world, oid)[0] == 410


def test_break_glass_writes_by_id_are_allowed_alerted_and_audited(world) -> None:
    from sqlalchemy import select

    from app.audit.tables import audit_event
    from app.protect.alerts import list_alerts

    doc = world["doctor"]
    oid = _fresh(world, "hiv")
    _refused(doc.put(f"Observation/{oid}", _amended(world, oid, HIV_CODE)))  # not cleared: refused
    rids = {m: uid("bg-") for m in ("PUT", "PATCH", "DELETE")}
    bg = "unconscious patient in ED, correcting the result"
    r = _put(doc, f"Observation/{oid}", _amended(world, oid, HIV_CODE),
             **{"X-Break-Glass": bg, "X-Request-Id": rids["PUT"]})
    assert r.status_code == 200, r.text
    r = _patch(doc, f"Observation/{oid}", [{"op": "replace", "path": "/status", "value": "corrected"}],
               **{"X-Break-Glass": bg, "X-Request-Id": rids["PATCH"]})
    assert r.status_code == 200, r.text
    assert _current(world, oid)[1:] == ("3", HIV_LABELS)
    r = _delete(doc, f"Observation/{oid}", **{"X-Break-Glass": bg, "X-Request-Id": rids["DELETE"]})
    assert r.status_code == 204, r.text
    assert _current(world, oid)[0] == 410

    alerts = {a.request_id: a for a in list_alerts(engine_of(world["app"]), limit=1000)}
    with engine_of(world["app"]).connect() as conn:
        for method, rid in rids.items():
            assert alerts[rid].method == method and alerts[rid].reason == bg
            assert alerts[rid].path == f"/fhir/Observation/{oid}"
            rows = conn.execute(select(audit_event.c.purpose, audit_event.c.outcome)
                                .where(audit_event.c.request_id == rid)).all()
            assert [tuple(x) for x in rows] == [("BTG", 0)], method


# ---- labels on update ---------------------------------------------------------------------------
def test_labelling_on_arrival_reapplies_on_update_and_patch(world) -> None:
    """A cleared writer's body is authoritative (a sender-set label it omits is gone), but the
    operator's code mapping labels every version again."""
    c = world["cleared"]
    hiv = _fresh(world, "hiv")
    r = c.put(f"Observation/{hiv}", _amended(world, hiv, HIV_CODE))  # no meta.security sent
    assert r.status_code == 200, r.text
    assert security_of(r.json()) == HIV_LABELS
    assert _current(world, hiv)[2] == HIV_LABELS
    r = _patch(c, f"Observation/{hiv}", [{"op": "remove", "path": "/meta/security"}])
    assert r.status_code == 200, r.text  # labelled again: the same content, no new version
    assert _current(world, hiv)[1:] == ("2", HIV_LABELS)
    r = _patch(c, f"Observation/{hiv}", [{"op": "remove", "path": "/meta/security"},
                                         {"op": "replace", "path": "/status", "value": "corrected"}])
    assert r.status_code == 200, r.text
    assert _current(world, hiv)[1:] == ("3", HIV_LABELS)
    assert world["writer"].get(f"Observation/{hiv}").status_code == 404  # still withheld

    vlab = _fresh(world, "vlab")
    r = c.put(f"Observation/{vlab}", _amended(world, vlab))
    assert r.status_code == 200, r.text
    assert _current(world, vlab)[2] == set()  # the sender-set V was not re-sent: dropped
    assert world["writer"].get(f"Observation/{vlab}").status_code == 200

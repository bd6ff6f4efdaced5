"""Break-glass: a practitioner asserts an emergency (``X-Break-Glass: <reason>``) through an app;
both hold the right -> the withheld result is served, an alert is recorded and listed for the
privacy officer (HTTP and CLI); every other combination is refused with no data.

Users get their tokens through the real authorization-code flow (login, consent, PKCE)."""

from __future__ import annotations

import pytest
from protecthelp import (
    HIV_CODE,
    Fhir,
    app_client,
    backend_client,
    engine_of,
    observation,
    token,
    uid,
    user,
    user_token,
)

USER_SCOPE = "openid fhirUser user/*.rs"


@pytest.fixture(scope="module")
def world(protect_app, protect_server):
    app, base = protect_app, protect_server.base
    writer_id = backend_client(app, "system/*.cruds")
    w = Fhir(base, token(app, writer_id, "system/*.cruds"))
    pid, oid = uid("p-"), uid("hiv-")
    assert w.put(f"Patient/{pid}", {"resourceType": "Patient", "id": pid}).status_code == 201
    assert w.put(f"Observation/{oid}", observation(oid, pid, HIV_CODE)).status_code == 201
    ehr = app_client(app, USER_SCOPE, break_glass=True)  # the EHR: may relay break-glass, sees nothing
    plain_app = app_client(app, USER_SCOPE)  # a third-party app: no right
    doctor = user(app, "Practitioner/doc-bg", break_glass=True)
    nurse = user(app, "Practitioner/nurse-1")  # no break-glass right
    srv = protect_server
    return {
        "app": app, "base": base, "pid": pid, "oid": oid,
        "doctor_ehr": user_token(srv, ehr, doctor, USER_SCOPE),
        "doctor_plain_app": user_token(srv, plain_app, doctor, USER_SCOPE),
        "nurse_ehr": user_token(srv, ehr, nurse, USER_SCOPE),
        "doctor": doctor, "ehr": ehr,
    }


def _alerts(app) -> list:  # noqa: ANN001
    from app.protect.alerts import list_alerts

    return list_alerts(engine_of(app), limit=1000)


def test_break_glass_sees_the_withheld_result_and_raises_an_alert(world) -> None:
    app, oid = world["app"], world["oid"]
    doc = Fhir(world["base"], world["doctor_ehr"])
    assert doc.get(f"Observation/{oid}").status_code == 404  # no clearance: withheld
    before = len(_alerts(app))
    r = doc.get(f"Observation/{oid}", **{"X-Break-Glass": "unconscious patient in ED, HIV status needed"})
    assert r.status_code == 200, r.text
    assert r.json()["id"] == oid
    r = doc.get(f"Observation?subject=Patient/{world['pid']}", **{"X-Break-Glass": "emergency"})
    assert [e["resource"]["id"] for e in r.json()["entry"]] == [oid]
    alerts = _alerts(app)
    assert len(alerts) == before + 2
    a = next(x for x in alerts if x.reason.startswith("unconscious"))
    assert a.username == world["doctor"] and a.client_id == world["ehr"]
    assert a.fhir_user == "Practitioner/doc-bg" and a.method == "GET" and a.path == f"/fhir/Observation/{oid}"
    assert a.acknowledged_at is None
    # the next request without the header is withheld again
    assert doc.get(f"Observation/{oid}").status_code == 404


def test_break_glass_request_is_audited_with_purpose_of_use_btg(world) -> None:
    """The alert and the AuditEvent share the request id; the event carries purpose BTG."""
    from sqlalchemy import select

    from app.audit.tables import audit_event

    rid = uid("req")
    doc = Fhir(world["base"], world["doctor_ehr"])
    r = doc.get(f"Observation/{world['oid']}", **{"X-Break-Glass": "audit check", "X-Request-Id": rid})
    assert r.status_code == 200
    assert r.headers.get("X-Request-Id") == rid
    alert = next(a for a in _alerts(world["app"]) if a.reason == "audit check")
    assert alert.request_id == rid
    with engine_of(world["app"]).connect() as conn:
        purposes = conn.execute(select(audit_event.c.purpose).where(audit_event.c.request_id == rid)).scalars().all()
    assert purposes and set(purposes) == {"BTG"}


@pytest.mark.parametrize("who", ["doctor_plain_app", "nurse_ehr"])
def test_break_glass_is_refused_without_the_right_on_app_and_user(world, who) -> None:
    before = len(_alerts(world["app"]))
    r = Fhir(world["base"], world[who]).get(f"Observation/{world['oid']}", **{"X-Break-Glass": "emergency"})
    assert r.status_code == 403
    assert r.json()["issue"][0]["code"] == "forbidden"
    assert "resourceType" in r.json() and r.json()["resourceType"] == "OperationOutcome"
    assert len(_alerts(world["app"])) == before


def test_break_glass_is_refused_for_services_and_patients(world, protect_server) -> None:
    app = world["app"]
    svc = backend_client(app, "system/*.rs", "", break_glass=True)  # a service is never a person
    r = Fhir(world["base"], token(app, svc, "system/*.rs")).get(f"Observation/{world['oid']}",
                                                                **{"X-Break-Glass": "emergency"})
    assert r.status_code == 403
    with pytest.raises(ValueError):  # a patient user cannot be given the right
        user(app, f"Patient/{world['pid']}", break_glass=True)


def test_break_glass_needs_a_reason(world) -> None:
    doc = Fhir(world["base"], world["doctor_ehr"])
    for bad in ("", "x" * 501):
        r = doc.get(f"Observation/{world['oid']}", **{"X-Break-Glass": bad})
        assert r.status_code == 400, bad
        assert r.json()["issue"][0]["code"] == "invalid"


def test_privacy_officer_lists_and_acknowledges_alerts_over_http(world, protect_server) -> None:
    import requests

    app = world["app"]
    doc = Fhir(world["base"], world["doctor_ehr"])
    assert doc.get(f"Observation/{world['oid']}", **{"X-Break-Glass": "cardiac arrest"}).status_code == 200
    officer_id = backend_client(app, "system/AuditEvent.rs")
    officer = {"Authorization": f"Bearer {token(app, officer_id, 'system/AuditEvent.rs')}"}
    url = f"{protect_server.url}/admin/break-glass-alerts"
    r = requests.get(url, headers=officer, params={"unacknowledged": "true"})
    assert r.status_code == 200, r.text
    assert r.headers["Cache-Control"] == "no-store"
    alerts = r.json()["alerts"]
    mine = [a for a in alerts if a["reason"] == "cardiac arrest"]
    assert len(mine) == 1 and mine[0]["username"] == world["doctor"]
    r = requests.post(f"{url}/{mine[0]['id']}/acknowledge", headers=officer)
    assert r.status_code == 200
    assert requests.post(f"{url}/{mine[0]['id']}/acknowledge", headers=officer).status_code == 404
    r = requests.get(url, headers=officer, params={"unacknowledged": "true"})
    assert all(a["id"] != mine[0]["id"] for a in r.json()["alerts"])
    # refusals: no token, a token that is not the auditor's, a bad parameter
    assert requests.get(url).status_code == 401
    analyst = {"Authorization": f"Bearer {token(app, backend_client(app, 'system/*.rs'), 'system/*.rs')}"}
    r = requests.get(url, headers=analyst)
    assert r.status_code == 403 and r.json()["issue"][0]["code"] == "forbidden"
    assert requests.get(url, headers=officer, params={"since": "yesterday"}).status_code == 400


def test_alerts_cli(world) -> None:
    from app.cli import main

    app = world["app"]
    doc = Fhir(world["base"], world["doctor_ehr"])
    assert doc.get(f"Observation/{world['oid']}", **{"X-Break-Glass": "cli check"}).status_code == 200
    runner = app.test_cli_runner()
    out = runner.invoke(main, ["alerts", "list", "--unacknowledged"], obj=_script_info(app))
    assert out.exit_code == 0, out.output
    line = next(x for x in out.output.splitlines() if "cli check" in x)
    assert "NOT acknowledged" in line and world["doctor"] in line
    alert_id = line.split("\t")[0].lstrip("#")
    out = runner.invoke(main, ["alerts", "ack", alert_id, "--by", "privacy.officer"], obj=_script_info(app))
    assert out.exit_code == 0, out.output
    out = runner.invoke(main, ["alerts", "list", "--json"], obj=_script_info(app))
    assert '"acknowledged_by": "privacy.officer"' in out.output
    out = runner.invoke(main, ["alerts", "ack", alert_id, "--by", "x"], obj=_script_info(app))
    assert out.exit_code != 0


def _script_info(app):  # noqa: ANN001, ANN202
    from flask.cli import ScriptInfo

    return ScriptInfo(create_app=lambda: app)

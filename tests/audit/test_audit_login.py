"""Logins and the authorization-code token exchange are recorded (DICOM 110114 User
Authentication): who tried, from where, the outcome; the token's user, patient context and id,
never the code, verifier or token.  Real OAuth flow (PKCE) over HTTP, SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
import requests
from audithelp import (
    AUDITOR,
    FHIR_JSON,
    agent,
    call,
    client_of,
    patients,
    query_of,
    subtype,
    target,
    user_of,
)
from smarthelp import REDIRECT, Browser, auth_params, exchange, get_code, pkce_pair

PASSWORD = "correct horse battery"


@pytest.fixture(scope="module")
def setup(live, audit_app, token):
    from app.auth.clients import add_client
    from app.auth.users import add_user

    e = audit_app.extensions["results_repo"].engine
    writer = token("system/*.cruds", client_id="epr-3")
    r = call("POST", f"{live.base}/Patient", writer, {"resourceType": "Patient", "name": [{"family": "Login"}]})
    pid = r.json()["id"]
    add_client(e, client_id="portal", kind="app", scope="openid fhirUser launch/patient patient/*.rs patient/AuditEvent.rs",
               redirect_uris=[REDIRECT])
    add_user(e, "pat-login", f"Patient/{pid}", PASSWORD)
    return {"pid": pid, "auditor": token(AUDITOR, client_id="privacy-office")}


def _trail(live, auditor: str, **params) -> list[dict]:
    r = requests.get(f"{live.base}/AuditEvent", params={"type": "110114", "_count": "50", **params},
                     headers={"Authorization": f"Bearer {auditor}", "Accept": FHIR_JSON})
    assert r.status_code == 200, r.text
    return [e["resource"] for e in r.json().get("entry", [])]


def test_failed_login_is_recorded(live, setup):
    _, challenge = pkce_pair()
    b = Browser(live)
    r = b.authorize(auth_params(live, "portal", "openid fhirUser patient/*.rs", challenge))
    r = b.login(r, "pat-login", "wrong password!")
    assert r.status_code == 401
    ev = _trail(live, setup["auditor"], subtype="110122")[0]
    assert ev["outcome"] == "8" and ev["type"]["code"] == "110114"
    assert agent(ev, "UserOauthAgent")["who"]["display"] == "pat-login"
    assert client_of(ev) == "portal"
    assert "wrong password" not in str(ev)


def test_login_and_code_exchange_are_recorded_and_the_patient_sees_them(live, setup):
    code, verifier, _ = get_code(live, "portal", "openid fhirUser patient/*.rs patient/AuditEvent.rs",
                                 "pat-login", PASSWORD)
    logins = _trail(live, setup["auditor"], subtype="110122", outcome="0")
    assert logins and agent(logins[0], "UserOauthAgent")["who"]["display"] == "pat-login"
    r = exchange(live, "portal", code, verifier)
    assert r.status_code == 200, r.text
    body = r.json()
    ev = next(e for e in _trail(live, setup["auditor"], subtype="ITI-71") if e["outcome"] == "0"
              and user_of(e) == f"Patient/{setup['pid']}")
    assert subtype(ev) == "ITI-71" and client_of(ev) == "portal"
    assert patients(ev) == {setup["pid"]} and target(ev).startswith("token/")
    q = query_of(ev)
    assert "grant_type=authorization_code" in q and "code=" not in q.replace("grant_type=authorization_code", "")
    for secret in (code, verifier, body["access_token"]):
        assert secret not in str(ev)
    # the patient's own log (through the token just issued) shows the app getting access
    r = requests.get(f"{live.base}/AuditEvent", params={"type": "110114"},
                     headers={"Authorization": f"Bearer {body['access_token']}"})
    assert r.status_code == 200, r.text
    assert any(subtype(e["resource"]) == "ITI-71" for e in r.json()["entry"])

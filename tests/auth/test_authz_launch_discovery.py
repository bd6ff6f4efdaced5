"""EHR launch (an EPR registers a launch context, the app gets it back in the token response),
discovery documents, JWKS, CORS and the CapabilityStatement security block."""

from __future__ import annotations

import pytest
import requests
from smarthelp import (
    REDIRECT,
    Browser,
    assertion,
    auth_params,
    backend_form,
    engine_of,
    exchange,
    jwks_of,
    pkce_pair,
    redirect_params,
    rsa_key,
    token_url,
)

from app.auth.clients import add_client
from app.auth.users import add_user

APP = "ehr-app"
EPR = "epr-system"
PASSWORD = "correct horse battery"
PATIENT_ID = "launch-pat"
ENCOUNTER_ID = "launch-enc"


@pytest.fixture(scope="module")
def epr(server, app, http):
    h = {"Content-Type": "application/fhir+json"}
    r = http.put(f"{server.base}/Patient/{PATIENT_ID}", json={"resourceType": "Patient", "id": PATIENT_ID}, headers=h)
    assert r.status_code in (200, 201), r.text
    r = http.put(f"{server.base}/Encounter/{ENCOUNTER_ID}", headers=h, json={
        "resourceType": "Encounter", "id": ENCOUNTER_ID, "status": "in-progress",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "subject": {"reference": f"Patient/{PATIENT_ID}"}})
    assert r.status_code in (200, 201), r.text
    e = engine_of(app)
    key = rsa_key("epr-1")
    add_client(e, client_id=EPR, kind="backend", scope="system/*.rs", jwks=jwks_of(key))
    add_client(e, client_id=APP, kind="app", scope="launch launch/patient launch/encounter openid fhirUser user/*.rs patient/*.rs",
               redirect_uris=[REDIRECT], secret="ehr-app-secret-0123456789")
    add_user(e, "clinician", "Practitioner/prac-1", PASSWORD)
    add_user(e, "clinician2", "Practitioner/prac-2", PASSWORD)
    tok = requests.post(token_url(server), data=backend_form(assertion(key, "RS384", EPR, token_url(server)))).json()
    return tok["access_token"]


def _register(server, token, body):  # noqa: ANN001, ANN202
    return requests.post(server.url + "/auth/launch", json=body, headers={"Authorization": f"Bearer {token}"})


def _launch_flow(server, launch, user="clinician"):  # noqa: ANN001, ANN202
    verifier, challenge = pkce_pair()
    b = Browser(server)
    r = b.authorize(auth_params(server, APP, "launch openid fhirUser user/*.rs", challenge, launch=launch))
    if r.status_code != 200:
        return r, verifier
    r = b.login(r, user, PASSWORD)
    assert r.status_code == 200, r.text
    assert 'name="patient"' not in r.text  # the launch supplies the patient: no picker
    return b.consent(r), verifier


def test_ehr_launch_context_comes_back_in_the_token_response(server, epr):
    r = _register(server, epr, {"patient": PATIENT_ID, "encounter": ENCOUNTER_ID, "fhirUser": "Practitioner/prac-1",
                                "need_patient_banner": False})
    assert r.status_code == 201, r.text
    assert r.headers["Cache-Control"] == "no-store"
    launch = r.json()["launch"]
    resp, verifier = _launch_flow(server, launch)
    code = redirect_params(resp)["code"]
    body = exchange(server, APP, code, verifier, auth=(APP, "ehr-app-secret-0123456789")).json()
    assert body["patient"] == PATIENT_ID and body["encounter"] == ENCOUNTER_ID
    assert body["need_patient_banner"] is False
    assert body["fhirUser"].endswith("/Practitioner/prac-1")


def test_launch_is_single_use(server, epr):
    launch = _register(server, epr, {"patient": PATIENT_ID}).json()["launch"]
    resp, _ = _launch_flow(server, launch)
    assert "code" in redirect_params(resp)
    resp, _ = _launch_flow(server, launch)
    p = redirect_params(resp)
    assert p["error"] == "invalid_request" and "launch" in p["error_description"]


def test_launch_for_another_user_is_refused(server, epr):
    launch = _register(server, epr, {"patient": PATIENT_ID, "fhirUser": "Practitioner/prac-1"}).json()["launch"]
    resp, _ = _launch_flow(server, launch, user="clinician2")
    assert resp.status_code == 403 and "Location" not in resp.headers


def test_unknown_launch_is_refused(server, epr):
    resp, _ = _launch_flow(server, "made-up-launch")
    assert redirect_params(resp)["error"] == "invalid_request"


def test_launch_registration_needs_authentication(server, app, epr):
    assert requests.post(server.url + "/auth/launch", json={"patient": PATIENT_ID}).status_code == 401
    assert _register(server, "not-a-token", {"patient": PATIENT_ID}).status_code == 401
    # a patient-level token of an app is not an EPR's system token
    from app.auth.tokens import issue_access_token

    raw, _ = issue_access_token(engine_of(app), client_id=APP, scope="patient/*.rs", patient=PATIENT_ID)
    assert _register(server, raw, {"patient": PATIENT_ID}).status_code == 401
    # a confidential client may register with its own credentials
    r = requests.post(server.url + "/auth/launch", json={"patient": PATIENT_ID},
                      auth=(APP, "ehr-app-secret-0123456789"))
    assert r.status_code == 201, r.text


def test_launch_registration_validates_its_input(server, epr):
    assert _register(server, epr, {"patient": "no-such-patient"}).status_code == 400
    assert _register(server, epr, {"patient": "bad id!"}).status_code == 400
    assert _register(server, epr, {"fhirUser": "Organization/x", "patient": PATIENT_ID}).status_code == 400
    assert _register(server, epr, {}).status_code == 400


# -- discovery ---------------------------------------------------------------------------------


def test_smart_configuration(server):
    r = requests.get(server.base + "/.well-known/smart-configuration", headers={"Origin": "https://any.example"})
    assert r.status_code == 200 and r.headers["Access-Control-Allow-Origin"] == "*"
    c = r.json()
    assert c["issuer"] == server.base
    assert c["authorization_endpoint"] == server.url + "/auth/authorize"
    assert c["token_endpoint"] == server.url + "/auth/token"
    assert c["jwks_uri"] == server.url + "/auth/jwks"
    assert c["introspection_endpoint"] and c["revocation_endpoint"]
    assert c["code_challenge_methods_supported"] == ["S256"]
    assert "private_key_jwt" in c["token_endpoint_auth_methods_supported"]
    assert {"RS384", "ES384"} <= set(c["token_endpoint_auth_signing_alg_values_supported"])
    assert {"authorization_code", "client_credentials", "refresh_token"} <= set(c["grant_types_supported"])
    assert {"launch-ehr", "launch-standalone", "client-public", "client-confidential-asymmetric",
            "sso-openid-connect", "context-ehr-patient", "permission-offline"} <= set(c["capabilities"])
    assert "launch/patient" in c["scopes_supported"]


def test_openid_configuration_and_jwks(server):
    for url in (server.url + "/.well-known/openid-configuration", server.base + "/.well-known/openid-configuration"):
        c = requests.get(url).json()
        assert c["issuer"] == server.base and c["jwks_uri"].endswith("/auth/jwks")
    jwks = requests.get(server.url + "/auth/jwks").json()
    assert jwks["keys"] and all("d" not in k and k["kid"] for k in jwks["keys"])


def test_capability_statement_security(server):
    r = requests.get(server.base + "/metadata", headers={"Accept": "application/fhir+json", "Origin": "https://x.example"})
    assert r.headers.get("Access-Control-Allow-Origin") == "*"
    sec = r.json()["rest"][0]["security"]
    assert sec["service"][0]["coding"][0]["code"] == "SMART-on-FHIR"
    ext = {e["url"]: e["valueUri"] for e in sec["extension"][0]["extension"]}
    assert ext["token"] == server.url + "/auth/token" and ext["authorize"] == server.url + "/auth/authorize"


def test_launch_without_patient_lets_the_practitioner_pick_one(server, epr):
    launch = _register(server, epr, {"encounter": ENCOUNTER_ID}).json()["launch"]
    verifier, challenge = pkce_pair()
    b = Browser(server)
    r = b.authorize(auth_params(server, APP, "launch launch/patient user/*.rs", challenge, launch=launch))
    r = b.login(r, "clinician", PASSWORD)
    assert 'name="patient"' in r.text and PATIENT_ID in r.text
    again = b.consent(r)  # no choice yet: asked again, and the launch is not used up
    assert again.status_code == 200 and "Choose a patient" in again.text
    code = redirect_params(b.consent(again, patient=PATIENT_ID))["code"]
    body = exchange(server, APP, code, verifier, auth=(APP, "ehr-app-secret-0123456789")).json()
    assert body["patient"] == PATIENT_ID and body["encounter"] == ENCOUNTER_ID


def test_launch_registered_with_a_client_assertion_form(server, app, epr):
    key = rsa_key("epr-form-1")
    add_client(engine_of(app), client_id="epr-form", kind="backend", scope="system/*.rs", jwks=jwks_of(key))
    r = requests.post(server.url + "/auth/launch", data={
        "patient": PATIENT_ID,
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        "client_assertion": assertion(key, "RS384", "epr-form", token_url(server))})
    assert r.status_code == 201, r.text


def test_expired_launch_is_refused(server, app, epr):
    from datetime import datetime

    from sqlalchemy import update

    from app.auth.tables import auth_launch

    launch = _register(server, epr, {"patient": PATIENT_ID}).json()["launch"]
    with engine_of(app).begin() as conn:
        conn.execute(update(auth_launch).values(expires_at=datetime(2000, 1, 1)))
    resp, _ = _launch_flow(server, launch)
    assert redirect_params(resp)["error"] == "invalid_request"

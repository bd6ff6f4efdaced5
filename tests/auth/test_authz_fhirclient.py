"""The SMART client library people use from Python (``fhirclient``) completes a standalone launch
against the live server: it reads the CapabilityStatement's oauth-uris, sends PKCE S256 and
``aud``, and exchanges the code. The login and consent forms are driven like a browser would."""

from __future__ import annotations

import pytest
import requests
from smarthelp import (
    REDIRECT,
    Browser,
    assertion,
    backend_form,
    ec_key,
    engine_of,
    jwks_of,
    token_url,
)

from app.auth.clients import add_client
from app.auth.tokens import lookup_access_token
from app.auth.users import add_user

fhirclient = pytest.importorskip("fhirclient.client")

APP = "fhirclient-app"
PATIENT_ID = "fc-pat"
PASSWORD = "correct horse battery"


@pytest.fixture(scope="module")
def registered(server, app, http):
    r = http.put(f"{server.base}/Patient/{PATIENT_ID}", headers={"Content-Type": "application/fhir+json"},
                 json={"resourceType": "Patient", "id": PATIENT_ID, "name": [{"family": "Client", "given": ["Fhir"]}]})
    assert r.status_code in (200, 201), r.text
    add_client(engine_of(app), client_id=APP, kind="app", redirect_uris=[REDIRECT],
               scope="launch launch/patient patient/*.rs user/*.rs openid fhirUser offline_access")
    add_user(engine_of(app), "fc-user", f"Patient/{PATIENT_ID}", PASSWORD)


def test_fhirclient_standalone_launch(server, app, registered):
    settings = {
        "app_id": APP,
        "api_base": server.base,
        "redirect_uri": REDIRECT,
        "scope": "launch/patient patient/*.rs openid fhirUser offline_access",
    }
    smart = fhirclient.FHIRClient(settings=settings)
    url = smart.authorize_url
    assert url.startswith(server.url + "/auth/authorize?")
    b = Browser(server)
    r = b.s.get(url, allow_redirects=False)
    assert r.status_code == 200, r.text[:500]
    r = b.consent(b.login(r, "fc-user", PASSWORD))
    assert r.status_code == 302
    smart.handle_callback(r.headers["Location"])
    assert smart.ready
    assert smart.patient_id == PATIENT_ID
    grant = lookup_access_token(engine_of(app), smart.server.auth.access_token)
    assert grant is not None and grant.patient == PATIENT_ID and grant.client_id == APP
    assert smart.server.auth.refresh_token  # offline_access
    # and the library reads the patient with its token
    from fhirclient.models.patient import Patient

    patient = Patient.read(PATIENT_ID, smart.server)
    assert patient.name[0].family == "Client"
    # refresh through the library
    assert smart.server.reauthorize() is not None


def test_fhirclient_ehr_launch(server, app, registered):
    key = ec_key("fc-epr-1")
    add_client(engine_of(app), client_id="fc-epr", kind="backend", scope="system/*.rs", jwks=jwks_of(key))
    add_user(engine_of(app), "fc-doc", "Practitioner/fc-doc", PASSWORD)
    tok = requests.post(token_url(server), data=backend_form(assertion(key, "ES384", "fc-epr", token_url(server))))
    launch = requests.post(server.url + "/auth/launch", json={"patient": PATIENT_ID},
                           headers={"Authorization": f"Bearer {tok.json()['access_token']}"}).json()["launch"]
    smart = fhirclient.FHIRClient(settings={
        "app_id": APP, "api_base": server.base, "redirect_uri": REDIRECT,
        "scope": "launch user/*.rs openid fhirUser", "launch_token": launch,
    })
    b = Browser(server)
    r = b.s.get(smart.authorize_url, allow_redirects=False)
    r = b.consent(b.login(r, "fc-doc", PASSWORD))
    smart.handle_callback(r.headers["Location"])
    assert smart.patient_id == PATIENT_ID

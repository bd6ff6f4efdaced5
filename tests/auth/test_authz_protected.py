"""With tokens required (the deployed configuration), discovery stays open and a token from our
own token endpoint opens the FHIR API; revoking it closes the API again at once."""

from __future__ import annotations

import requests
from smarthelp import assertion, backend_form, ec_key, jwks_of

from app.auth.clients import add_client

FHIR = {"Accept": "application/fhir+json"}


def test_discovery_open_and_a_real_backend_token_works_until_revoked(auth_server, auth_app):
    base, root = auth_server.base, auth_server.url
    assert requests.get(base + "/.well-known/smart-configuration").status_code == 200
    assert requests.get(base + "/metadata", headers=FHIR).status_code == 200
    assert requests.get(root + "/auth/jwks").status_code == 200
    assert requests.get(base + "/Patient", headers=FHIR).status_code == 401

    key = ec_key("prot-1")
    add_client(auth_app.extensions["results_repo"].engine, client_id="prot-epr", kind="backend",
               scope="system/*.rs", jwks=jwks_of(key))
    tok = requests.post(root + "/auth/token", data=backend_form(
        assertion(key, "ES384", "prot-epr", root + "/auth/token"))).json()["access_token"]
    auth = {**FHIR, "Authorization": f"Bearer {tok}"}
    assert requests.get(base + "/Patient", headers=auth).status_code == 200

    revoke = requests.post(root + "/auth/revoke", data={
        "token": tok, "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        "client_assertion": assertion(key, "ES384", "prot-epr", root + "/auth/token")})
    assert revoke.status_code == 200
    assert requests.get(base + "/Patient", headers=auth).status_code == 401

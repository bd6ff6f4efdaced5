"""End to end: a Backend Services client gets a token from /auth/token (client_credentials with a
signed private_key_jwt assertion) and the FHIR API holds it to the granted scopes."""

from __future__ import annotations

import time
import uuid

import orjson
import pytest
import requests

FHIR_JSON = "application/fhir+json"


@pytest.fixture(scope="module")
def backend(auth_app, auth_server):
    from joserfc.jwk import ECKey

    from app.auth.clients import add_client

    key = ECKey.generate_key("P-384", private=True)
    kid = uuid.uuid4().hex[:8]
    public = {**key.as_dict(private=False), "kid": kid, "alg": "ES384"}
    client_id = f"epr-{uuid.uuid4().hex[:8]}"
    add_client(auth_app.extensions["results_repo"].engine, client_id=client_id, kind="backend",
               scope="system/Patient.rs system/Observation.cruds", jwks={"keys": [public]})
    return client_id, key, kid


def _token(auth_server, backend, scope: str) -> requests.Response:
    from joserfc import jwt

    client_id, key, kid = backend
    token_url = auth_server.url + "/auth/token"
    now = int(time.time())
    assertion = jwt.encode({"alg": "ES384", "kid": kid, "typ": "JWT"},
                           {"iss": client_id, "sub": client_id, "aud": token_url, "exp": now + 240,
                            "jti": uuid.uuid4().hex}, key, algorithms=["ES384"])
    return requests.post(token_url, data={
        "grant_type": "client_credentials", "scope": scope,
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        "client_assertion": assertion})


def test_backend_token_from_the_token_endpoint_is_enforced(auth_server, backend) -> None:
    r = _token(auth_server, backend, "system/Patient.rs system/Observation.rs")
    if r.status_code == 404:
        pytest.skip("token endpoint not registered")
    assert r.status_code == 200, r.text
    access = r.json()["access_token"]
    h = {"Authorization": f"Bearer {access}", "Accept": FHIR_JSON, "Content-Type": FHIR_JSON}
    base = auth_server.base
    assert requests.get(f"{base}/Patient", headers=h).status_code == 200
    assert requests.get(f"{base}/DiagnosticReport", headers=h).status_code == 403  # not granted
    pid = uuid.uuid4().hex[:12]
    r = requests.put(f"{base}/Patient/{pid}", data=orjson.dumps({"resourceType": "Patient", "id": pid}), headers=h)
    assert r.status_code == 403  # rs only
    assert requests.get(f"{base}/Patient", headers={"Accept": FHIR_JSON}).status_code == 401

"""Authorization code flow over real HTTP: login, consent, patient picker, PKCE, codes, refresh
tokens, id_token, and every refusal (on SQLite and PostgreSQL)."""

from __future__ import annotations

import base64
import json

import pytest
import requests
from joserfc import jwt
from joserfc.jwk import KeySet
from smarthelp import (
    REDIRECT,
    Browser,
    assertion,
    auth_params,
    engine_of,
    exchange,
    get_code,
    jwks_of,
    pkce_pair,
    redirect_params,
    rsa_key,
    token_url,
)
from sqlalchemy import update

from app.auth.clients import add_client
from app.auth.tables import auth_code
from app.auth.tokens import lookup_access_token
from app.auth.users import add_user

PUBLIC = "viewer-app"
OTHER = "other-app"
CONFIDENTIAL = "conf-app"
JWT_APP = "jwt-app"
SECRET = "s3cret-value-for-tests-only"
PASSWORD = "correct horse battery"
APP_SCOPE = "openid fhirUser launch launch/patient offline_access online_access patient/*.rs user/*.rs"
PATIENT_ID = "pat-1"
OTHER_PATIENT = "pat-2"


@pytest.fixture(scope="module")
def setup(server, app, http):
    for pid, family in ((PATIENT_ID, "Smith"), (OTHER_PATIENT, "Jones")):
        r = http.put(f"{server.base}/Patient/{pid}", json={"resourceType": "Patient", "id": pid,
                     "name": [{"family": family, "given": ["Jo"]}]},
                     headers={"Content-Type": "application/fhir+json"})
        assert r.status_code in (200, 201), r.text
    e = engine_of(app)
    add_client(e, client_id=PUBLIC, kind="app", scope=APP_SCOPE, redirect_uris=[REDIRECT, "https://app.example.org/cb2"])
    add_client(e, client_id=OTHER, kind="app", scope=APP_SCOPE, redirect_uris=["https://other.example.org/cb"])
    add_client(e, client_id=CONFIDENTIAL, kind="app", scope=APP_SCOPE, redirect_uris=[REDIRECT], secret=SECRET)
    key = rsa_key("jwt-app-1")
    add_client(e, client_id=JWT_APP, kind="app", scope=APP_SCOPE, redirect_uris=[REDIRECT], jwks=jwks_of(key))
    add_user(e, "pat-user", f"Patient/{PATIENT_ID}", PASSWORD)
    add_user(e, "doc-user", "Practitioner/doc-1", PASSWORD)
    add_user(e, "lock-user", "Practitioner/doc-2", PASSWORD)
    return {"jwt_key": key}


def _claims(id_token: str, server) -> dict:  # noqa: ANN001
    keys = KeySet.import_key_set(requests.get(server.url + "/auth/jwks").json())
    return jwt.decode(id_token, keys).claims


# -- the happy paths ---------------------------------------------------------------------------


def test_standalone_patient_launch_returns_context_and_id_token(server, setup):
    code, verifier, params = get_code(server, PUBLIC, "openid fhirUser launch/patient patient/*.rs", "pat-user", PASSWORD)
    assert params["state"] == "st-123"
    r = exchange(server, PUBLIC, code, verifier)
    assert r.status_code == 200, r.text
    assert r.headers["Cache-Control"] == "no-store"
    body = r.json()
    assert body["token_type"] == "Bearer"
    assert body["patient"] == PATIENT_ID
    assert body["scope"].split() == ["openid", "fhirUser", "launch/patient", "patient/*.rs"]
    assert body["expires_in"] > 0
    assert body["need_patient_banner"] is True
    assert body["smart_style_url"].endswith("/auth/smart-style.json")
    assert body["fhirUser"] == f"{server.base}/Patient/{PATIENT_ID}"
    assert "refresh_token" not in body  # neither offline_access nor online_access asked
    claims = _claims(body["id_token"], server)
    assert claims["aud"] == PUBLIC and claims["iss"] == server.base
    assert claims["fhirUser"] == f"{server.base}/Patient/{PATIENT_ID}"
    grant = lookup_access_token(engine_of(server_app(server)), body["access_token"])
    assert grant.patient == PATIENT_ID and grant.fhir_user == f"Patient/{PATIENT_ID}" and grant.client_id == PUBLIC


def server_app(server):  # noqa: ANN001, ANN201
    return server.server.app


def test_state_is_returned_exactly_as_sent(server, setup):
    state = "a b&c=d/é~"
    _code, _v, params = get_code(server, PUBLIC, "patient/*.rs launch/patient", "pat-user", PASSWORD, state=state)
    assert params["state"] == state


def test_authorize_by_post_works(server, setup):
    verifier, challenge = pkce_pair()
    b = Browser(server)
    r = b.authorize(auth_params(server, PUBLIC, "launch/patient patient/*.rs", challenge), method="POST")
    assert r.status_code == 200 and 'name="step" value="login"' in r.text
    r = b.consent(b.login(r, "pat-user", PASSWORD))
    code = redirect_params(r)["code"]
    assert exchange(server, PUBLIC, code, verifier).status_code == 200


def test_practitioner_picks_a_patient(server, setup):
    verifier, challenge = pkce_pair()
    b = Browser(server)
    r = b.authorize(auth_params(server, PUBLIC, "launch/patient patient/*.rs openid fhirUser", challenge))
    r = b.login(r, "doc-user", PASSWORD)
    assert r.status_code == 200
    assert PATIENT_ID in r.text and OTHER_PATIENT in r.text  # the picker lists the repository's patients
    # search narrows the list
    s = b.s.get(server.url + "/auth/authorize", params={**auth_params(server, PUBLIC, "launch/patient patient/*.rs openid fhirUser", challenge),
                               "patient_q": "jon"})
    assert OTHER_PATIENT in s.text and f"[{PATIENT_ID}]" not in s.text
    # without a choice: asked again
    again = b.consent(r)
    assert again.status_code == 200 and "Choose a patient" in again.text
    r = b.consent(again, patient=OTHER_PATIENT)
    code = redirect_params(r)["code"]
    body = exchange(server, PUBLIC, code, verifier).json()
    assert body["patient"] == OTHER_PATIENT
    assert body["fhirUser"].endswith("/Practitioner/doc-1")


def test_user_can_untick_scopes(server, setup):
    code, verifier, _ = get_code(server, PUBLIC, "launch/patient patient/*.rs offline_access openid fhirUser",
                                 "pat-user", PASSWORD, scopes=["launch/patient", "patient/*.rs"])
    body = exchange(server, PUBLIC, code, verifier).json()
    assert body["scope"].split() == ["launch/patient", "patient/*.rs"]
    assert "refresh_token" not in body and "id_token" not in body


def test_scopes_not_registered_are_not_granted(server, setup):
    code, verifier, _ = get_code(server, PUBLIC, "launch/patient patient/*.rs system/*.cruds", "pat-user", PASSWORD)
    body = exchange(server, PUBLIC, code, verifier).json()
    assert "system/*.cruds" not in body["scope"].split()


def test_deny_redirects_with_access_denied_and_state(server, setup):
    _v, challenge = pkce_pair()
    b = Browser(server)
    r = b.consent(b.login(b.authorize(auth_params(server, PUBLIC, "patient/*.rs", challenge)), "pat-user", PASSWORD),
                  decision="deny")
    p = redirect_params(r)
    assert p["error"] == "access_denied" and p["state"] == "st-123"
    assert r.headers["Location"].startswith(REDIRECT)


def test_confidential_client_with_secret_basic_and_post(server, setup):
    code, verifier, _ = get_code(server, CONFIDENTIAL, "launch/patient patient/*.rs", "pat-user", PASSWORD)
    assert exchange(server, CONFIDENTIAL, code, verifier).status_code == 401  # no secret: refused
    code, verifier, _ = get_code(server, CONFIDENTIAL, "launch/patient patient/*.rs", "pat-user", PASSWORD)
    r = exchange(server, CONFIDENTIAL, code, verifier, auth=(CONFIDENTIAL, SECRET))
    assert r.status_code == 200, r.text
    code, verifier, _ = get_code(server, CONFIDENTIAL, "launch/patient patient/*.rs", "pat-user", PASSWORD)
    r = exchange(server, CONFIDENTIAL, code, verifier, extra={"client_secret": SECRET})
    assert r.status_code == 200, r.text
    code, verifier, _ = get_code(server, CONFIDENTIAL, "launch/patient patient/*.rs", "pat-user", PASSWORD)
    r = exchange(server, CONFIDENTIAL, code, verifier, auth=(CONFIDENTIAL, "wrong-secret-wrong-secret"))
    assert r.status_code == 401 and r.json()["error"] == "invalid_client"


def test_confidential_client_with_private_key_jwt(server, setup):
    code, verifier, _ = get_code(server, JWT_APP, "launch/patient patient/*.rs", "pat-user", PASSWORD)
    a = assertion(setup["jwt_key"], "RS384", JWT_APP, token_url(server))
    r = exchange(server, JWT_APP, code, verifier, auth=None, extra={
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer", "client_assertion": a})
    assert r.status_code == 200, r.text


# -- refusals at the authorize endpoint --------------------------------------------------------


def test_unknown_client_gets_an_error_page_not_a_redirect(server, setup):
    _v, challenge = pkce_pair()
    r = Browser(server).authorize(auth_params(server, "no-such-app", "patient/*.rs", challenge))
    assert r.status_code == 400 and "Location" not in r.headers
    assert "text/html" in r.headers["Content-Type"] and "invalid_client" in r.text


def test_unregistered_redirect_uri_is_never_redirected_to(server, setup):
    _v, challenge = pkce_pair()
    for uri in ("https://evil.example.com/cb", REDIRECT + "/extra", "https://other.example.org/cb"):
        r = Browser(server).authorize(auth_params(server, PUBLIC, "patient/*.rs", challenge, redirect_uri=uri))
        assert r.status_code == 400 and "Location" not in r.headers, uri
        assert "evil.example.com" not in r.headers.get("Location", "")


def test_wrong_aud_is_refused(server, setup):
    _v, challenge = pkce_pair()
    r = Browser(server).authorize(auth_params(server, PUBLIC, "patient/*.rs", challenge, aud="https://other.example/fhir"))
    p = redirect_params(r)
    assert p["error"] == "invalid_request" and "aud" in p["error_description"] and p["state"] == "st-123"
    r = Browser(server).authorize(auth_params(server, PUBLIC, "patient/*.rs", challenge, aud=None))
    assert redirect_params(r)["error"] == "invalid_request"


def test_plain_pkce_is_refused(server, setup):
    verifier, _ = pkce_pair()
    r = Browser(server).authorize(auth_params(server, PUBLIC, "patient/*.rs", verifier, code_challenge_method="plain"))
    p = redirect_params(r)
    assert p["error"] == "invalid_request" and "S256" in p["error_description"]


def test_missing_pkce_is_refused(server, setup):
    r = Browser(server).authorize(auth_params(server, PUBLIC, "patient/*.rs", None, code_challenge_method=None))
    assert redirect_params(r)["error"] == "invalid_request"
    r = Browser(server).authorize(auth_params(server, PUBLIC, "patient/*.rs", None))  # method without challenge
    assert redirect_params(r)["error"] == "invalid_request"


def test_unsupported_response_type(server, setup):
    _v, challenge = pkce_pair()
    r = Browser(server).authorize(auth_params(server, PUBLIC, "patient/*.rs", challenge, response_type="token"))
    assert redirect_params(r)["error"] == "unsupported_response_type"


def test_login_and_consent_forms_need_the_csrf_token(server, setup):
    _v, challenge = pkce_pair()
    b = Browser(server)
    r = b.authorize(auth_params(server, PUBLIC, "patient/*.rs", challenge))
    bad = b.login(r, "pat-user", PASSWORD, csrf=False)
    assert bad.status_code == 400 and "CSRF" in bad.text
    r = b.login(r, "pat-user", PASSWORD)
    assert r.status_code == 200
    forged = b.consent(r, csrf="forged-token")
    assert forged.status_code == 400 and "Location" not in forged.headers
    # a cross-site form post carries no session cookie: it gets the login page, never a code
    stranger = requests.post(b.form(r)[0], data={"step": "consent", "decision": "allow", "grant_scope": "patient/*.rs"},
                             allow_redirects=False)
    assert stranger.status_code == 400 and "Location" not in stranger.headers


def test_wrong_password_then_lockout(server, setup):
    _v, challenge = pkce_pair()
    b = Browser(server)
    r = b.authorize(auth_params(server, PUBLIC, "patient/*.rs", challenge))
    for _ in range(5):
        bad = b.login(r, "lock-user", "wrong password!")
        assert bad.status_code == 401 and "wrong" in bad.text
    locked = b.login(r, "lock-user", PASSWORD)
    assert locked.status_code == 429 and "locked" in locked.text
    # the lock is per user: others still log in
    assert b.login(r, "doc-user", PASSWORD).status_code == 200


# -- refusals at the token endpoint ------------------------------------------------------------


def test_bad_code(server, setup):
    verifier, _ = pkce_pair()
    r = exchange(server, PUBLIC, "not-a-code", verifier)
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"
    assert r.headers["Cache-Control"] == "no-store" and r.headers["Content-Type"].startswith("application/json")


def test_reused_code_is_refused_and_revokes_the_first_tokens(server, setup):
    code, verifier, _ = get_code(server, PUBLIC, "launch/patient patient/*.rs", "pat-user", PASSWORD)
    first = exchange(server, PUBLIC, code, verifier)
    assert first.status_code == 200
    again = exchange(server, PUBLIC, code, verifier)
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"
    assert lookup_access_token(engine_of(server_app(server)), first.json()["access_token"]) is None


def test_expired_code(server, setup):
    code, verifier, _ = get_code(server, PUBLIC, "launch/patient patient/*.rs", "pat-user", PASSWORD)
    from datetime import datetime

    with engine_of(server_app(server)).begin() as conn:
        conn.execute(update(auth_code).values(expires_at=datetime(2000, 1, 1)).where(auth_code.c.used.is_(False)))
    r = exchange(server, PUBLIC, code, verifier)
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"


def test_code_of_another_client_or_redirect_uri(server, setup):
    code, verifier, _ = get_code(server, PUBLIC, "launch/patient patient/*.rs", "pat-user", PASSWORD)
    r = exchange(server, OTHER, code, verifier, redirect_uri="https://other.example.org/cb")
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"
    code, verifier, _ = get_code(server, PUBLIC, "launch/patient patient/*.rs", "pat-user", PASSWORD)
    r = exchange(server, PUBLIC, code, verifier, redirect_uri="https://app.example.org/cb2")
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"


def test_wrong_or_missing_code_verifier(server, setup):
    code, _verifier, _ = get_code(server, PUBLIC, "launch/patient patient/*.rs", "pat-user", PASSWORD)
    other, _ = pkce_pair()
    r = exchange(server, PUBLIC, code, other)
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"
    code, _verifier, _ = get_code(server, PUBLIC, "launch/patient patient/*.rs", "pat-user", PASSWORD)
    r = requests.post(token_url(server), data={"grant_type": "authorization_code", "code": code,
                                               "redirect_uri": REDIRECT, "client_id": PUBLIC})
    assert r.status_code == 400 and r.json()["error"] == "invalid_request"


def test_unsupported_grant_type(server, setup):
    r = requests.post(token_url(server), data={"grant_type": "password", "username": "x", "password": "y"})
    assert r.status_code == 400 and r.json()["error"] == "unsupported_grant_type"


# -- refresh tokens ----------------------------------------------------------------------------


def _with_refresh(server, scope="launch/patient patient/*.rs offline_access"):  # noqa: ANN001, ANN202
    code, verifier, _ = get_code(server, PUBLIC, scope, "pat-user", PASSWORD)
    body = exchange(server, PUBLIC, code, verifier).json()
    assert "refresh_token" in body, body
    return body


def _refresh(server, rt, client_id=PUBLIC, scope=None):  # noqa: ANN001, ANN202
    data = {"grant_type": "refresh_token", "refresh_token": rt, "client_id": client_id}
    if scope:
        data["scope"] = scope
    return requests.post(token_url(server), data=data)


def test_refresh_same_and_narrower_scope(server, setup):
    body = _with_refresh(server)
    r = _refresh(server, body["refresh_token"])
    assert r.status_code == 200, r.text
    assert r.json()["patient"] == PATIENT_ID and r.json()["scope"] == body["scope"]
    r = _refresh(server, body["refresh_token"], scope="patient/*.rs")
    assert r.status_code == 200 and r.json()["scope"] == "patient/*.rs"


def test_online_access_also_gets_a_refresh_token(server, setup):
    _with_refresh(server, "launch/patient patient/*.rs online_access")


def test_widened_refresh_scope_is_refused(server, setup):
    body = _with_refresh(server, "launch/patient patient/Observation.rs offline_access")
    r = _refresh(server, body["refresh_token"], scope="patient/*.rs offline_access")
    assert r.status_code == 400 and r.json()["error"] == "invalid_scope"


def test_refresh_by_another_client_is_refused(server, setup):
    body = _with_refresh(server)
    r = _refresh(server, body["refresh_token"], client_id=OTHER)
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"


def test_access_token_is_not_a_refresh_token(server, setup):
    body = _with_refresh(server)
    assert _refresh(server, body["access_token"]).json()["error"] == "invalid_grant"


def test_revoked_refresh_token_stops_refreshing(server, setup):
    body = _with_refresh(server)
    r = requests.post(server.url + "/auth/revoke", data={"token": body["refresh_token"], "client_id": PUBLIC})
    assert r.status_code == 200
    assert _refresh(server, body["refresh_token"]).json()["error"] == "invalid_grant"
    # revoking the refresh token also revokes the access tokens of the same grant
    assert lookup_access_token(engine_of(server_app(server)), body["access_token"]) is None


def test_id_token_is_signed_by_the_server_key(server, setup):
    code, verifier, _ = get_code(server, PUBLIC, "openid fhirUser patient/*.rs launch/patient", "pat-user", PASSWORD,
                                 nonce="n-0S6_WzA2Mj")
    body = exchange(server, PUBLIC, code, verifier).json()
    header = json.loads(base64.urlsafe_b64decode(body["id_token"].split(".")[0] + "=="))
    assert header["alg"] == "RS256"
    claims = _claims(body["id_token"], server)
    assert claims["nonce"] == "n-0S6_WzA2Mj" and claims["sub"] == "pat-user"
    tampered = body["id_token"][:-4] + ("AAAA" if not body["id_token"].endswith("AAAA") else "BBBB")
    with pytest.raises(Exception):  # noqa: B017
        _claims(tampered, server)


def test_introspecting_a_refresh_token(server, setup):
    body = _with_refresh(server)
    r = requests.post(server.url + "/auth/introspect", data={"token": body["refresh_token"], "client_id": PUBLIC})
    info = r.json()
    assert info["active"] is True and info["token_type"] == "refresh_token" and info["patient"] == PATIENT_ID
    r = requests.post(server.url + "/auth/introspect", data={"token": body["access_token"], "client_id": PUBLIC})
    assert r.json()["sub"] == "pat-user" and r.json()["fhirUser"] == f"Patient/{PATIENT_ID}"


def test_pages_are_not_cached_or_framed(server, setup):
    _v, challenge = pkce_pair()
    r = Browser(server).authorize(auth_params(server, PUBLIC, "patient/*.rs", challenge))
    assert r.headers["Cache-Control"] == "no-store" and r.headers["X-Frame-Options"] == "DENY"
    assert "frame-ancestors 'none'" in r.headers["Content-Security-Policy"]
    assert '<label for="username">' in r.text and '<label for="password">' in r.text


def test_removing_a_user_revokes_their_tokens(server, app, setup):
    from app.auth.users import remove_user

    add_user(engine_of(app), "leaver", "Practitioner/doc-9", PASSWORD)
    code, verifier, _ = get_code(server, PUBLIC, "user/*.rs offline_access", "leaver", PASSWORD)
    body = exchange(server, PUBLIC, code, verifier).json()
    assert lookup_access_token(engine_of(app), body["access_token"]) is not None
    assert remove_user(engine_of(app), "leaver")
    assert lookup_access_token(engine_of(app), body["access_token"]) is None
    assert _refresh(server, body["refresh_token"]).json()["error"] == "invalid_grant"


def test_a_patient_users_token_always_carries_their_own_patient(server, setup):
    code, verifier, _ = get_code(server, PUBLIC, "user/*.rs openid fhirUser", "pat-user", PASSWORD)
    body = exchange(server, PUBLIC, code, verifier).json()
    assert body["patient"] == PATIENT_ID

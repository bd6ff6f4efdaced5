"""SMART Backend Services (client_credentials + private_key_jwt), introspection and revocation,
over real HTTP on both databases."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
import requests
from smarthelp import assertion, backend_form, ec_key, engine_of, jwks_of, rsa_key, token_url

from app.auth.clients import add_client
from app.auth.tokens import issue_access_token, lookup_access_token

RSA_CLIENT = "epr-rsa"
EC_CLIENT = "epr-ec"
URL_CLIENT = "epr-url"
NARROW = "analyst-obs"


@pytest.fixture(scope="module")
def keys(server, app):
    e = engine_of(app)
    rk, ek, uk, nk = rsa_key("rsa-1"), ec_key("ec-1"), ec_key("url-1"), rsa_key("narrow-1")
    add_client(e, client_id=RSA_CLIENT, kind="backend", scope="system/*.cruds", jwks=jwks_of(rk))
    add_client(e, client_id=EC_CLIENT, kind="backend", scope="system/*.rs", jwks=jwks_of(ek))
    add_client(e, client_id=NARROW, kind="backend", scope="system/Observation.rs", jwks=jwks_of(nk))

    body = json.dumps(jwks_of(uk)).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):  # noqa: ANN002
            pass

    jwks_server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=jwks_server.serve_forever, daemon=True).start()
    add_client(e, client_id=URL_CLIENT, kind="backend", scope="system/*.rs",
               jwks_uri=f"http://127.0.0.1:{jwks_server.server_port}/jwks.json")
    yield {"rsa": rk, "ec": ek, "url": uk, "narrow": nk}
    jwks_server.shutdown()


def _token(server, key, alg, client_id, scope="system/*.rs", **kw):  # noqa: ANN001, ANN003, ANN202
    return requests.post(token_url(server), data=backend_form(assertion(key, alg, client_id, token_url(server), **kw), scope))


def _error(r: requests.Response, status: int = 400, error: str = "invalid_client") -> str:
    """RFC 6749 section 5.2: JSON body with ``error``, not cached."""
    assert r.status_code in (status, 401) if error == "invalid_client" else r.status_code == status, (r.status_code, r.text)
    assert r.headers["Content-Type"].startswith("application/json")
    assert r.headers["Cache-Control"] == "no-store"
    body = r.json()
    assert body["error"] == error, body
    assert "access_token" not in body
    return body.get("error_description", "")


@pytest.mark.parametrize("which,alg,client", [("rsa", "RS384", RSA_CLIENT), ("ec", "ES384", EC_CLIENT)])
def test_backend_token_with_rs384_and_es384(server, app, keys, which, alg, client):
    r = _token(server, keys[which], alg, client)
    assert r.status_code == 200, r.text
    assert r.headers["Cache-Control"] == "no-store"
    body = r.json()
    assert body["token_type"] == "Bearer" and body["scope"] == "system/*.rs"
    assert 0 < body["expires_in"] <= 300
    assert "refresh_token" not in body and "patient" not in body
    grant = lookup_access_token(engine_of(app), body["access_token"])
    assert grant.client_id == client and grant.scope == "system/*.rs" and grant.fhir_user is None


def test_jwks_registered_by_url(server, keys):
    r = _token(server, keys["url"], "ES384", URL_CLIENT)
    assert r.status_code == 200, r.text


def test_replayed_jti_is_refused(server, keys):
    a = assertion(keys["rsa"], "RS384", RSA_CLIENT, token_url(server), jti="same-jti-1")
    assert requests.post(token_url(server), data=backend_form(a)).status_code == 200
    r = requests.post(token_url(server), data=backend_form(a))
    assert "JWT ID" in _error(r)
    # a fresh assertion re-using the jti is refused too
    r = _token(server, keys["rsa"], "RS384", RSA_CLIENT, jti="same-jti-1")
    _error(r)


def test_expired_assertion(server, keys):
    r = _token(server, keys["rsa"], "RS384", RSA_CLIENT, exp_in=-120)
    _error(r)


def test_exp_more_than_five_minutes_ahead(server, keys):
    r = _token(server, keys["rsa"], "RS384", RSA_CLIENT, exp_in=600)
    assert "five minutes" in _error(r)


def test_unknown_kid(server, keys):
    r = _token(server, keys["rsa"], "RS384", RSA_CLIENT, kid="not-registered")
    assert "kid" in _error(r)


def test_wrong_aud(server, keys):
    a = assertion(keys["rsa"], "RS384", RSA_CLIENT, server.base)
    _error(requests.post(token_url(server), data=backend_form(a)))


def test_iss_must_equal_sub(server, keys):
    r = _token(server, keys["rsa"], "RS384", RSA_CLIENT, iss="someone-else")
    _error(r)


def test_signed_by_another_key(server, keys):
    impostor = rsa_key("rsa-1")  # same kid, different key
    r = _token(server, impostor, "RS384", RSA_CLIENT)
    _error(r)


def test_algorithms_other_than_rs384_es384_are_refused(server, keys):
    r = _token(server, keys["rsa"], "RS256", RSA_CLIENT)
    assert "alg" in _error(r)
    from joserfc.jwk import OctKey

    hs = OctKey.import_key("a-shared-secret-that-is-long-enough-to-sign", {"kid": "rsa-1"})
    r = _token(server, hs, "HS384", RSA_CLIENT)
    _error(r)


def test_unknown_client(server, keys):
    r = _token(server, keys["rsa"], "RS384", "nobody")
    _error(r)


def test_scope_outside_registration(server, keys):
    r = _token(server, keys["narrow"], "RS384", NARROW, scope="system/Patient.rs")
    _error(r, 400, "invalid_scope")
    r = _token(server, keys["narrow"], "RS384", NARROW, scope="system/Observation.rs system/Patient.rs")
    assert r.status_code == 200 and r.json()["scope"] == "system/Observation.rs"
    r = _token(server, keys["narrow"], "RS384", NARROW, scope="")
    _error(r, 400, "invalid_scope")


def test_backend_cannot_use_a_secret_or_no_auth(server, keys):
    r = requests.post(token_url(server), data={"grant_type": "client_credentials", "scope": "system/*.rs",
                                               "client_id": RSA_CLIENT})
    _error(r)


def test_missing_assertion_parts(server, keys):
    r = requests.post(token_url(server), data={"grant_type": "client_credentials", "scope": "system/*.rs",
                                               "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                                               "client_assertion": "not.a.jwt"})
    _error(r)


# -- introspection and revocation --------------------------------------------------------------


def _introspect(server, key, alg, client, tok):  # noqa: ANN001, ANN202
    a = assertion(key, alg, client, token_url(server))
    return requests.post(server.url + "/auth/introspect", data={
        "token": tok, "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        "client_assertion": a})


def test_introspection_then_revocation(server, app, keys):
    tok = _token(server, keys["rsa"], "RS384", RSA_CLIENT).json()["access_token"]
    r = _introspect(server, keys["rsa"], "RS384", RSA_CLIENT, tok)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["active"] is True and body["client_id"] == RSA_CLIENT and body["scope"] == "system/*.rs"
    assert body["exp"] > body["iat"]
    # another client cannot see it
    assert _introspect(server, keys["ec"], "ES384", EC_CLIENT, tok).json() == {"active": False}
    a = assertion(keys["rsa"], "RS384", RSA_CLIENT, token_url(server))
    r = requests.post(server.url + "/auth/revoke", data={
        "token": tok, "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        "client_assertion": a})
    assert r.status_code == 200
    assert lookup_access_token(engine_of(app), tok) is None  # stops working at once
    assert _introspect(server, keys["rsa"], "RS384", RSA_CLIENT, tok).json() == {"active": False}


def test_revoking_an_unknown_or_foreign_token_is_quietly_accepted(server, app, keys):
    tok = _token(server, keys["rsa"], "RS384", RSA_CLIENT).json()["access_token"]
    a = assertion(keys["ec"], "ES384", EC_CLIENT, token_url(server))
    form = {"client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer", "client_assertion": a}
    assert requests.post(server.url + "/auth/revoke", data={**form, "token": tok}).status_code == 200
    assert lookup_access_token(engine_of(app), tok) is not None  # not EC_CLIENT's to revoke
    a = assertion(keys["ec"], "ES384", EC_CLIENT, token_url(server))
    form["client_assertion"] = a
    assert requests.post(server.url + "/auth/revoke", data={**form, "token": "unknown"}).status_code == 200


def test_introspection_needs_client_authentication(server, keys):
    tok = _token(server, keys["rsa"], "RS384", RSA_CLIENT).json()["access_token"]
    r = requests.post(server.url + "/auth/introspect", data={"token": tok})
    assert r.status_code in (400, 401) and r.json()["error"] == "invalid_client"


def test_token_store_interface(app):
    e = engine_of(app)
    raw, grant = issue_access_token(e, client_id="x", scope="patient/*.rs", patient="p1", lifetime_s=60)
    assert lookup_access_token(e, raw) == grant
    assert grant.expires_at.tzinfo is not None and len(grant.token_id) == 16
    expired, _ = issue_access_token(e, client_id="x", scope="patient/*.rs", lifetime_s=-1)
    assert lookup_access_token(e, expired) is None
    assert lookup_access_token(e, "garbage") is None


def test_cors_on_token_endpoint_only_for_registered_origins(server, app, keys):
    add_client(engine_of(app), client_id="browser-app", kind="app", scope="patient/*.rs",
               redirect_uris=["https://viewer.example.org/app/cb"])
    pre = requests.options(token_url(server), headers={"Origin": "https://viewer.example.org",
                                                       "Access-Control-Request-Method": "POST"})
    assert pre.headers.get("Access-Control-Allow-Origin") == "https://viewer.example.org"
    pre = requests.options(token_url(server), headers={"Origin": "https://evil.example.com",
                                                       "Access-Control-Request-Method": "POST"})
    assert "Access-Control-Allow-Origin" not in pre.headers


def test_jwks_url_is_fetched_again_when_the_client_rotates_its_key(server, app, keys):
    import app.auth.clients as clients_mod

    new = ec_key("url-2")
    body = json.dumps(jwks_of(keys["url"], new)).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_response(200)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):  # noqa: ANN002
            pass

    srv = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{srv.server_port}/jwks.json"
        # the cached copy (fetched over a minute ago) has only the old key
        clients_mod._jwks_cache[url] = (clients_mod.time.monotonic() - 120,
                                        clients_mod.KeySet.import_key_set(jwks_of(keys["url"])))
        add_client(engine_of(app), client_id="epr-rotating", kind="backend", scope="system/*.rs", jwks_uri=url)
        assert _token(server, new, "ES384", "epr-rotating").status_code == 200
    finally:
        srv.shutdown()


def test_cors_on_the_fhir_api_only_for_registered_origins(server, app, keys):
    add_client(engine_of(app), client_id="browser-app-2", kind="app", scope="patient/*.rs",
               redirect_uris=["https://viewer2.example.org/cb"])
    ask = {"Access-Control-Request-Method": "GET", "Access-Control-Request-Headers": "authorization"}
    pre = requests.options(server.base + "/Patient", headers={"Origin": "https://viewer2.example.org", **ask})
    assert pre.status_code in (200, 204)
    assert pre.headers["Access-Control-Allow-Origin"] == "https://viewer2.example.org"
    assert "Authorization" in pre.headers["Access-Control-Allow-Headers"]
    got = requests.get(server.base + "/Patient", headers={"Origin": "https://viewer2.example.org"})
    assert got.headers["Access-Control-Allow-Origin"] == "https://viewer2.example.org"
    assert "Location" in got.headers["Access-Control-Expose-Headers"]
    pre = requests.options(server.base + "/Patient", headers={"Origin": "https://evil.example.com", **ask})
    assert "Access-Control-Allow-Origin" not in pre.headers

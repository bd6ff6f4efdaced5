"""Helpers for the authorization-server tests: PKCE pairs, keys and signed client assertions,
and a tiny "browser" that drives the login and consent forms over real HTTP."""

from __future__ import annotations

import base64
import hashlib
import html
import re
import secrets
import time
import uuid
from urllib.parse import parse_qs, urljoin, urlsplit

import requests
from joserfc import jwt
from joserfc.jwk import ECKey, RSAKey

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
REDIRECT = "https://app.example.org/callback"


def pkce_pair() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


def rsa_key(kid: str) -> RSAKey:
    return RSAKey.generate_key(2048, parameters={"kid": kid}, private=True)


def ec_key(kid: str) -> ECKey:
    return ECKey.generate_key("P-384", parameters={"kid": kid}, private=True)


def jwks_of(*keys) -> dict:  # noqa: ANN002
    out = []
    for k in keys:
        d = k.as_dict(private=False)
        d["kid"] = k.kid
        out.append(d)
    return {"keys": out}


def assertion(key, alg: str, client_id: str, aud: str, *, exp_in: int = 240, jti: str | None = None,  # noqa: ANN001
              iss: str | None = None, sub: str | None = None, kid: str | None = None) -> str:
    now = int(time.time())
    claims = {"iss": iss or client_id, "sub": sub or client_id, "aud": aud, "exp": now + exp_in, "iat": now,
              "jti": jti or uuid.uuid4().hex}
    header = {"alg": alg, "kid": kid or key.kid, "typ": "JWT"}
    return jwt.encode(header, claims, key, algorithms=[alg])


def backend_form(assertion_value: str, scope: str = "system/*.rs") -> dict:
    return {
        "grant_type": "client_credentials",
        "scope": scope,
        "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": assertion_value,
    }


def token_url(server) -> str:  # noqa: ANN001
    return server.url + "/auth/token"


def authorize_url(server) -> str:  # noqa: ANN001
    return server.url + "/auth/authorize"


def engine_of(app):  # noqa: ANN001, ANN201
    return app.extensions["results_repo"].engine


_FORM = re.compile(r'<form method="post" action="([^"]*)">(.*?)</form>', re.S)
_INPUT = re.compile(r'<input type="hidden" name="([^"]+)" value="([^"]*)">')


class Browser:
    """A user agent: a cookie jar, no automatic redirects, forms parsed from the HTML."""

    def __init__(self, server) -> None:  # noqa: ANN001
        self.server = server
        self.s = requests.Session()

    def authorize(self, params: dict, method: str = "GET") -> requests.Response:
        if method == "GET":
            return self.s.get(authorize_url(self.server), params=params, allow_redirects=False)
        return self.s.post(authorize_url(self.server), data=params, allow_redirects=False)

    def form(self, resp: requests.Response) -> tuple[str, dict]:
        m = _FORM.search(resp.text)
        assert m, resp.text[:2000]
        action = urljoin(resp.url, html.unescape(m.group(1)))
        fields = {html.unescape(k): html.unescape(v) for k, v in _INPUT.findall(m.group(2))}
        return action, fields

    def login(self, resp: requests.Response, username: str, password: str, csrf: bool = True) -> requests.Response:
        action, fields = self.form(resp)
        assert fields.get("step") == "login", resp.text[:500]
        if not csrf:
            fields.pop("csrf_token")
        fields.update(username=username, password=password)
        r = self.s.post(action, data=fields, allow_redirects=False)
        if r.status_code == 303:  # logged in: on to the consent page
            assert r.headers["Location"].startswith("/auth/authorize?"), r.headers["Location"]
            r = self.s.get(urljoin(action, r.headers["Location"]), allow_redirects=False)
        return r

    def consent(self, resp: requests.Response, scopes: list[str] | None = None, patient: str | None = None,
                decision: str = "allow", csrf: str | None = None) -> requests.Response:
        action, fields = self.form(resp)
        assert fields.get("step") == "consent", resp.text[:500]
        offered = re.findall(r'name="grant_scope" value="([^"]+)"', resp.text)
        data = dict(fields)
        if csrf is not None:
            data["csrf_token"] = csrf
        data["decision"] = decision
        data["grant_scope"] = [html.unescape(s) for s in offered] if scopes is None else scopes
        if patient:
            data["patient"] = patient
        return self.s.post(action, data=data, allow_redirects=False)


def redirect_params(resp: requests.Response) -> dict[str, str]:
    assert resp.status_code in (302, 303), (resp.status_code, resp.text[:500])
    loc = resp.headers["Location"]
    q = parse_qs(urlsplit(loc).query)
    return {k: v[0] for k, v in q.items()}


def auth_params(server, client_id: str, scope: str, challenge: str, *, state: str = "st-123",  # noqa: ANN001
                redirect_uri: str = REDIRECT, **extra) -> dict:
    p = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": redirect_uri,
        "scope": scope,
        "state": state,
        "aud": server.base,
        "code_challenge": challenge,
        "code_challenge_method": "S256",
    }
    p.update(extra)
    return {k: v for k, v in p.items() if v is not None}


def get_code(server, client_id: str, scope: str, username: str, password: str, *,  # noqa: ANN001
             patient: str | None = None, scopes: list[str] | None = None, **extra) -> tuple[str, str, dict]:
    """Run authorize -> login -> consent; returns (code, verifier, redirect params)."""
    verifier, challenge = pkce_pair()
    b = Browser(server)
    r = b.authorize(auth_params(server, client_id, scope, challenge, **extra))
    assert r.status_code == 200, r.text[:1000]
    r = b.login(r, username, password)
    assert r.status_code == 200, r.text[:1000]
    r = b.consent(r, scopes=scopes, patient=patient)
    params = redirect_params(r)
    assert "code" in params, params
    return params["code"], verifier, params


def exchange(server, client_id: str, code: str, verifier: str, redirect_uri: str = REDIRECT,  # noqa: ANN001
             auth=None, extra: dict | None = None) -> requests.Response:  # noqa: ANN001
    data = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri,
            "code_verifier": verifier}
    if auth is None:
        data["client_id"] = client_id
    data.update(extra or {})
    return requests.post(token_url(server), data=data, auth=auth)

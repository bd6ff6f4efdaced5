"""Security headers on every response: API, errors, auth pages, discovery; HSTS only behind TLS."""

from __future__ import annotations

import pytest
import requests
from limitshelp import H, Live, make_app, patient

from app.api.headers import API_CSP, HTML_CSP


@pytest.fixture(scope="module")
def srv(database_url):
    app = make_app(database_url, AUTH_REQUIRED=True)
    live = Live(app)
    app.config["PUBLIC_BASE_URL"] = live.base
    yield app, live
    live.stop()
    app.extensions["results_repo"].engine.dispose()


def _common(r) -> None:  # noqa: ANN001
    assert r.headers["X-Content-Type-Options"] == "nosniff", r.url
    assert r.headers["X-Frame-Options"] == "DENY"
    assert "frame-ancestors 'none'" in r.headers["Content-Security-Policy"]
    assert "Strict-Transport-Security" not in r.headers  # plain http, http base URL


def _token(app) -> str:  # noqa: ANN001
    from app.auth.tokens import issue_access_token

    raw, _ = issue_access_token(app.extensions["results_repo"].engine, client_id="hdr", scope="system/*.cruds")
    return raw


def test_fhir_responses_are_never_cached(srv) -> None:
    app, live = srv
    auth = {**H, "Authorization": f"Bearer {_token(app)}"}
    created = requests.post(f"{live.base}/Patient", json=patient(), headers=auth)
    assert created.status_code == 201
    for r in (
        created,
        requests.get(f"{live.base}/Patient/{created.json()['id']}", headers=auth),
        requests.get(f"{live.base}/Patient", headers=auth),
        requests.get(f"{live.base}/Patient/does-not-exist", headers=auth),  # 404 OperationOutcome
        requests.get(f"{live.base}/Patient", headers=H),  # 401
        requests.get(f"{live.base}/metadata", headers=H),
        requests.post(f"{live.base}/Patient", data=b"{", headers=auth),  # 400
    ):
        _common(r)
        assert r.headers["Cache-Control"] == "no-store", (r.url, r.status_code)
        assert r.headers["Content-Security-Policy"] == API_CSP


def test_token_endpoint_and_discovery(srv) -> None:
    _, live = srv
    r = requests.post(f"{live.url}/auth/token", data={"grant_type": "client_credentials"})
    _common(r)
    assert r.headers["Cache-Control"] == "no-store"
    d = requests.get(f"{live.base}/.well-known/smart-configuration")
    assert d.status_code == 200
    _common(d)


def test_login_pages_get_a_csp_that_keeps_their_forms(srv) -> None:
    _, live = srv
    r = requests.get(f"{live.url}/auth/authorize", params={"response_type": "code", "client_id": "nobody"})
    assert r.headers["Content-Type"].startswith("text/html")
    _common(r)
    # the auth pages set their own policy (form-action naming the app's redirect origin), kept as is
    csp = r.headers["Content-Security-Policy"]
    assert "style-src 'unsafe-inline'" in csp  # the pages' own inline style sheet
    assert "form-action 'self'" in csp  # their forms post back here
    assert "script-src" not in csp and "default-src 'none'" in csp  # no scripts at all
    assert r.headers["Referrer-Policy"] == "no-referrer"


def test_other_html_gets_the_html_policy(database_url) -> None:
    from flask import Response

    app = make_app(database_url)
    app.add_url_rule("/auth/plain-page", "plain", lambda: Response("<p>x</p>", mimetype="text/html"))
    with app.test_client() as c:
        r = c.get("/auth/plain-page")
        assert r.headers["Content-Security-Policy"] == HTML_CSP
        assert r.headers["Cache-Control"] == "no-store"
    app.extensions["results_repo"].engine.dispose()
    assert r.headers["Cache-Control"] == "no-store"


def test_hsts_when_the_public_base_is_https(database_url) -> None:
    app = make_app(database_url, PUBLIC_BASE_URL="https://results.example.nhs.uk/fhir", HSTS_MAX_AGE=600)
    with app.test_client() as c:
        r = c.get("/fhir/metadata")
        assert r.headers["Strict-Transport-Security"] == "max-age=600; includeSubDomains"
    app.config["HSTS_MAX_AGE"] = 0
    with app.test_client() as c:
        assert "Strict-Transport-Security" not in c.get("/fhir/metadata").headers
    app.extensions["results_repo"].engine.dispose()


def test_hsts_when_the_request_came_over_tls(database_url) -> None:
    app = make_app(database_url)
    with app.test_client() as c:
        assert "Strict-Transport-Security" in c.get("/fhir/metadata", base_url="https://localhost").headers
        assert "Strict-Transport-Security" not in c.get("/fhir/metadata", base_url="http://localhost").headers
    app.extensions["results_repo"].engine.dispose()

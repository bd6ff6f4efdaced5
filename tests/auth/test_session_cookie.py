"""The login session is opened only for requests that carry its cookie (app.auth.session)."""

from __future__ import annotations

from app.auth.session import OnDemandCookieSessionInterface


def test_fhir_requests_get_no_session_and_no_cookie(app):
    assert isinstance(app.session_interface, OnDemandCookieSessionInterface)
    client = app.test_client()
    r = client.get("/fhir/metadata")
    assert r.status_code == 200
    assert "Set-Cookie" not in r.headers


def test_a_request_with_the_cookie_reads_and_keeps_its_session(app):
    client = app.test_client()
    with client.session_transaction() as s:  # signs and sets the cookie, as the login page does
        s["auth_user"] = "clinician"
    with client.session_transaction() as s:  # read back through open_session with the cookie
        assert s["auth_user"] == "clinician"
    # a tampered cookie is an empty session, as with Flask's own interface
    name = app.config.get("SESSION_COOKIE_NAME", "session")
    client.set_cookie(name, "tampered")
    with client.session_transaction() as s:
        assert "auth_user" not in s

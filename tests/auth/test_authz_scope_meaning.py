"""Scopes mean the same thing everywhere (client registration, the authorize and refresh
narrowing, enforcement), and a patient who logs in never reaches another patient through
``user/`` scopes. Real flows over HTTP on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
import requests
from smarthelp import (
    REDIRECT,
    Browser,
    auth_params,
    engine_of,
    exchange,
    get_code,
    pkce_pair,
    token_url,
)

from app.auth.clients import add_client, narrow_scope, scope_covered

APP = "meaning-app"
PASSWORD = "correct horse battery"
FHIR_JSON = "application/fhir+json"


# -- one parser: registration covers asks in the meaning of app.auth.scopes -------------------


@pytest.mark.parametrize(("asked", "registered", "ok"), [
    ("patient/Observation.rs", ["patient/*.read"], True),  # v1 read = v2 rs
    ("patient/Observation.read", ["patient/*.rs"], True),
    ("patient/Observation.s", ["patient/Observation.read"], True),
    ("patient/Observation.rs", ["patient/*.r"], False),
    ("patient/Observation.cruds", ["patient/*.read"], False),
    ("user/Observation.rs", ["patient/*.rs"], False),  # another context
    ("patient/Observation.rs?category=laboratory", ["patient/*.rs"], True),  # a filter narrows
    ("patient/Observation.rs", ["patient/Observation.rs?category=laboratory"], False),
    ("patient/Observation.rs?category=laboratory&status=final", ["patient/Observation.rs?category=laboratory"], True),
    ("patient/Observation.sr", ["patient/*.cruds"], False),  # malformed: letters out of order
    ("openid", ["openid"], True),
    ("openid", ["patient/*.rs"], False),
])
def test_registration_covers_asks_like_the_scope_parser(asked, registered, ok) -> None:
    assert scope_covered(asked, registered) is ok


def test_narrowing_keeps_only_covered_scopes() -> None:
    got = narrow_scope("openid patient/Observation.read user/*.rs patient/Observation.sr", ["openid", "patient/*.rs"])
    assert got == "openid patient/Observation.read"


@pytest.mark.parametrize(("kind", "scope", "message"), [
    ("app", "patient/Observation.sr", "order"),
    ("app", "nurse/Observation.rs", "context"),
    ("app", "patient/*.rs opneid", "unknown scope"),
    ("backend", "patient/*.rs", "system/ scopes only"),
    ("backend", "system/*.rs launch", "system/ scopes only"),
])
def test_registration_refuses_scopes_that_mean_nothing(auth_app, kind, scope, message) -> None:
    from smarthelp import ec_key, jwks_of

    extra = {"jwks": jwks_of(ec_key("k"))} if kind == "backend" else {"redirect_uris": [REDIRECT]}
    with pytest.raises(ValueError, match=message):
        add_client(engine_of(auth_app), client_id="bad-scope", kind=kind, scope=scope, **extra)


# -- the flows ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def world(auth_server, auth_app, issue_token) -> dict:
    admin = {"Authorization": f"Bearer {issue_token('system/*.cruds')}", "Content-Type": FHIR_JSON}
    base = auth_server.base
    for pid in ("mine", "theirs"):
        r = requests.put(f"{base}/Patient/{pid}", headers=admin,
                         json={"resourceType": "Patient", "id": pid, "name": [{"family": pid.title()}]})
        assert r.status_code in (200, 201), r.text
        r = requests.put(f"{base}/Observation/{pid}-obs", headers=admin, json={
            "resourceType": "Observation", "id": f"{pid}-obs", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "718-7"}]},
            "subject": {"reference": f"Patient/{pid}"}})
        assert r.status_code in (200, 201), r.text
    e = engine_of(auth_app)
    add_client(e, client_id=APP, kind="app", redirect_uris=[REDIRECT],
               scope="openid fhirUser launch/patient offline_access patient/*.rs user/*.cruds")
    from app.auth.users import add_user

    add_user(e, "meaning-patient", "Patient/mine", PASSWORD)
    add_user(e, "meaning-doc", "Practitioner/meaning-doc", PASSWORD)
    return {"base": base}


def _token(server, username: str, scope: str) -> dict:  # noqa: ANN001
    code, verifier, _ = get_code(server, APP, scope, username, PASSWORD)
    r = exchange(server, APP, code, verifier)
    assert r.status_code == 200, r.text
    return r.json()


def _get(base: str, token: str, path: str, **params) -> requests.Response:
    return requests.get(f"{base}/{path}", params=params or None,
                        headers={"Authorization": f"Bearer {token}", "Accept": FHIR_JSON})


def _ids(bundle: requests.Response) -> set[str]:
    assert bundle.status_code == 200, bundle.text
    return {f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in bundle.json().get("entry", [])}


def test_patient_user_with_user_scopes_stays_in_their_own_record(auth_server, world) -> None:
    body = _token(auth_server, "meaning-patient", "openid fhirUser user/*.cruds")
    tok, base = body["access_token"], world["base"]
    assert _get(base, tok, "Observation/mine-obs").status_code == 200
    assert _get(base, tok, "Observation/theirs-obs").status_code == 404
    assert _get(base, tok, "Patient/theirs").status_code == 404
    assert _get(base, tok, "Observation/theirs-obs/_history/1").status_code == 404
    assert _ids(_get(base, tok, "Observation")) == {"Observation/mine-obs"}
    assert _ids(_get(base, tok, "Patient", _revinclude="Observation:subject")) == {"Patient/mine", "Observation/mine-obs"}
    assert _ids(_get(base, tok, "Observation", **{"subject:Patient.name": "Theirs"})) == set()
    # writes: into another record refused, the resource left as it was
    w = requests.put(f"{base}/Observation/theirs-obs", headers={"Authorization": f"Bearer {tok}", "Content-Type": FHIR_JSON},
                     json={"resourceType": "Observation", "id": "theirs-obs", "status": "amended",
                           "code": {"coding": [{"system": "http://loinc.org", "code": "718-7"}]},
                           "subject": {"reference": "Patient/theirs"}})
    assert w.status_code == 403 and w.json()["issue"][0]["code"] == "forbidden"
    doc = _token(auth_server, "meaning-doc", "user/*.cruds")["access_token"]
    assert _get(base, doc, "Observation/theirs-obs").json()["status"] == "final"
    # while a practitioner's user/ scope reaches every patient
    assert _ids(_get(base, doc, "Observation")) >= {"Observation/mine-obs", "Observation/theirs-obs"}


def test_user_scope_without_a_user_grants_nothing(world, issue_token) -> None:
    tok = issue_token("user/*.rs")  # as a backend's client_credentials token would be: no fhirUser
    r = _get(world["base"], tok, "Observation")
    assert r.status_code == 403 and r.json()["issue"][0]["code"] == "forbidden"
    assert _get(world["base"], tok, "Observation/mine-obs").status_code in (403, 404)


def _refresh(server, rt: str, scope: str) -> requests.Response:  # noqa: ANN001
    return requests.post(token_url(server), data={"grant_type": "refresh_token", "refresh_token": rt,
                                                  "client_id": APP, "scope": scope})


def test_refresh_narrowing_uses_the_scope_meaning(auth_server, world) -> None:
    body = _token(auth_server, "meaning-patient", "launch/patient patient/*.rs offline_access")
    rt = body["refresh_token"]
    r = _refresh(auth_server, rt, "patient/Observation.read")  # v1 spelling of a narrower scope
    assert r.status_code == 200, r.text
    assert r.json()["scope"] == "patient/Observation.read"
    tok = r.json()["access_token"]
    assert _get(world["base"], tok, "Observation/mine-obs").status_code == 200
    assert _get(world["base"], tok, "Patient/mine").status_code == 403  # narrowed away
    r = _refresh(auth_server, rt, "patient/Observation.rs?code=http://loinc.org|718-7")
    assert r.status_code == 200, r.text
    for wider in ("patient/*.cruds", "user/*.rs", "patient/*.rs openid"):
        r = _refresh(auth_server, rt, wider)
        assert r.status_code == 400 and r.json()["error"] == "invalid_scope", (wider, r.text)


def test_consent_page_lets_the_answer_reach_the_app(auth_server, world) -> None:
    """Browsers hold the redirect after a form post to the page's CSP form-action: the consent
    page must allow the validated redirect URI's origin (the fhirclient.js test shows it live)."""
    _verifier, challenge = pkce_pair()
    b = Browser(auth_server)
    r = b.login(b.authorize(auth_params(auth_server, APP, "patient/*.rs launch/patient", challenge)),
                "meaning-patient", PASSWORD)
    assert r.status_code == 200
    csp = r.headers["Content-Security-Policy"]
    assert "form-action 'self' https://app.example.org;" in csp
    # an error page (no validated redirect URI) allows posting to ourselves only
    bad = b.authorize(auth_params(auth_server, APP, "patient/*.rs", challenge, redirect_uri="https://evil.example/cb"))
    assert bad.status_code == 400
    assert "evil.example" not in bad.headers["Content-Security-Policy"]


# -- the per-process token cache never outlives a revocation or an expiry -----------------------


def test_revocation_works_at_once_on_a_token_just_used(auth_server, auth_app, world) -> None:
    body = _token(auth_server, "meaning-patient", "launch/patient patient/*.rs offline_access")
    tok = body["access_token"]
    assert _get(world["base"], tok, "Patient/mine").status_code == 200  # now cached
    r = requests.post(auth_server.url + "/auth/revoke", data={"token": tok, "client_id": APP})
    assert r.status_code == 200
    r = _get(world["base"], tok, "Patient/mine")
    assert r.status_code == 401 and "invalid_token" in r.headers["WWW-Authenticate"]
    # revoking the refresh token ends the access tokens of its grant, also when just used
    fresh = _refresh(auth_server, body["refresh_token"], "patient/*.rs").json()["access_token"]
    assert _get(world["base"], fresh, "Patient/mine").status_code == 200
    requests.post(auth_server.url + "/auth/revoke", data={"token": body["refresh_token"], "client_id": APP})
    assert _get(world["base"], fresh, "Patient/mine").status_code == 401


def test_removing_a_user_ends_their_cached_tokens(auth_server, auth_app, world) -> None:
    from app.auth.users import add_user, remove_user

    add_user(engine_of(auth_app), "meaning-leaver", "Patient/mine", PASSWORD)
    tok = _token(auth_server, "meaning-leaver", "patient/*.rs")["access_token"]
    assert _get(world["base"], tok, "Patient/mine").status_code == 200
    remove_user(engine_of(auth_app), "meaning-leaver")
    assert _get(world["base"], tok, "Patient/mine").status_code == 401


def test_an_expired_token_is_refused_even_if_cached(world, issue_token) -> None:
    import time

    tok = issue_token("system/*.rs", lifetime_s=2)  # stored to the whole second: 1 to 2 s left
    assert _get(world["base"], tok, "Patient/mine").status_code == 200
    time.sleep(2.1)
    assert _get(world["base"], tok, "Patient/mine").status_code == 401

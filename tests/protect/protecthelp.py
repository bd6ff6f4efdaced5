"""Helpers for the sensitive-results tests: a live server, registered clients with clearances,
real tokens (the token store, and the authorization-code flow for users), FHIR calls."""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

import orjson
import requests
from livehttp import LiveServer  # noqa: F401  (re-exported)

sys.path.append(str(Path(__file__).resolve().parents[1] / "auth"))

from smarthelp import REDIRECT, exchange, get_code  # noqa: E402

FHIR_JSON = "application/fhir+json"
LOINC = "http://loinc.org"
CONF = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality"
ACT = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
PASSWORD = "correct horse battery"
HIV_CODE = "7918-6"  # LOINC HIV 1+2 Ab [Presence] in Serum
CHLAMYDIA_CODE = "21613-5"  # LOINC Chlamydia trachomatis DNA [Presence] in Specimen by NAA
# The test servers' labelling on arrival (conftest.protect_app).
SENSITIVE_CODES = {
    f"http://loinc.org|{HIV_CODE}": ["HIV", "R"],
    f"http://loinc.org|{CHLAMYDIA_CODE}": ["STD"],
}




def uid(prefix: str = "") -> str:
    return prefix + uuid.uuid4().hex[:12]


def engine_of(app):  # noqa: ANN001, ANN201
    return app.extensions["results_repo"].engine


def backend_client(app, scope: str, labels: str | None = None, break_glass: bool = False) -> str:  # noqa: ANN001
    """A registered Backend Services client (a throwaway public key), with a clearance if given."""
    from joserfc.jwk import ECKey

    from app.auth.clients import add_client
    from app.protect.clearance import parse_clearance, set_clearance

    key = ECKey.generate_key("P-384", private=True)
    cid = uid("svc-")
    add_client(engine_of(app), client_id=cid, kind="backend", scope=scope,
               jwks={"keys": [{**key.as_dict(private=False), "kid": "k1", "alg": "ES384"}]})
    if labels is not None or break_glass:
        set_clearance(engine_of(app), "client", cid, parse_clearance([labels or ""]), break_glass)
    return cid


def token(app, client_id: str, scope: str, **kw) -> str:  # noqa: ANN001
    """A real access token from the token store, issued to ``client_id``."""
    from app.auth.tokens import issue_access_token

    raw, _ = issue_access_token(engine_of(app), client_id=client_id, scope=scope, **kw)
    return raw


def app_client(app, scope: str, labels: str | None = None, break_glass: bool = False) -> str:  # noqa: ANN001
    from app.auth.clients import add_client
    from app.protect.clearance import parse_clearance, set_clearance

    cid = uid("app-")
    add_client(engine_of(app), client_id=cid, kind="app", scope=scope, redirect_uris=[REDIRECT])
    if labels is not None or break_glass:
        set_clearance(engine_of(app), "client", cid, parse_clearance([labels or ""]), break_glass)
    return cid


def user(app, fhir_user: str, labels: str | None = None, break_glass: bool = False) -> str:  # noqa: ANN001
    from app.auth.users import add_user
    from app.protect.clearance import parse_clearance, set_clearance

    name = uid("u")
    add_user(engine_of(app), name, fhir_user, PASSWORD)
    if labels is not None or break_glass:
        set_clearance(engine_of(app), "user", name, parse_clearance([labels or ""]), break_glass)
    return name


def user_token(server, client_id: str, username: str, scope: str) -> str:  # noqa: ANN001
    """A token from the real authorization-code flow (login, consent, PKCE exchange)."""
    code, verifier, _ = get_code(server, client_id, scope, username, PASSWORD)
    r = exchange(server, client_id, code, verifier)
    assert r.status_code == 200, r.text
    return r.json()["access_token"]


class Fhir:
    """FHIR calls with one bearer token."""

    def __init__(self, base: str, access: str, **headers: str) -> None:
        self.base = base
        self.h = {"Authorization": f"Bearer {access}", "Accept": FHIR_JSON, "Content-Type": FHIR_JSON, **headers}

    def get(self, path: str, **headers: str) -> requests.Response:
        url = path if path.startswith("http") else f"{self.base}/{path}"
        return requests.get(url, headers={**self.h, **headers})

    def post(self, path: str, body: dict, **headers: str) -> requests.Response:
        return requests.post(f"{self.base}/{path}" if path else self.base, data=orjson.dumps(body),
                             headers={**self.h, **headers})

    def put(self, path: str, body: dict) -> requests.Response:
        return requests.put(f"{self.base}/{path}", data=orjson.dumps(body), headers=self.h)

    def ids(self, path: str, mode: str | None = "match") -> list[str]:
        r = self.get(path)
        assert r.status_code == 200, (path, r.status_code, r.text[:500])
        return [f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in r.json().get("entry", [])
                if mode is None or e.get("search", {}).get("mode") == mode]


def observation(oid: str, patient: str, code: str, security: list[dict] | None = None) -> dict:
    body: dict = {"resourceType": "Observation", "id": oid, "status": "final",
                  "code": {"coding": [{"system": LOINC, "code": code}]},
                  "subject": {"reference": f"Patient/{patient}"},
                  "valueCodeableConcept": {"text": "negative"}}
    if security:
        body["meta"] = {"security": security}
    return body


def put_entry(res: dict) -> dict:
    return {"fullUrl": f"urn:uuid:{uuid.uuid4()}", "resource": res,
            "request": {"method": "PUT", "url": f"{res['resourceType']}/{res['id']}"}}


def security_of(res: dict) -> set[tuple[str, str]]:
    return {(c.get("system"), c.get("code")) for c in (res.get("meta") or {}).get("security", [])}

"""Nothing the server logs or links to carries a token, a patient's name or an NHS number.

A run of typical requests (token request, create, read, searches by name and NHS number, a
transaction, paging, errors, refused tokens) over real HTTP, through the development server's
request handler (app/api/accesslog.py) with every logger at DEBUG; then every log record, with
its traceback, is searched for the secrets. Paging links must hold opaque cursors only.
"""

from __future__ import annotations

import base64
import logging
import random
import uuid
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from limitshelp import NHS, H, Live, make_app

from app.api.accesslog import PathOnlyRequestHandler
from app.fhir.nhs_number import check_digit


def _nhs_number() -> str:
    while True:
        nine = "".join(random.choice("0123456789") for _ in range(9))
        d = check_digit(nine)
        if d is not None:
            return nine + str(d)


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith("urllib3"):  # the test's own HTTP client, not the server
            return
        self.lines.append(self.format(record))


@pytest.fixture
def logs():
    handler = Collect()
    root = logging.getLogger()
    old = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    yield handler
    root.removeHandler(handler)
    root.setLevel(old)


def _backend_token(app, live) -> str:  # noqa: ANN001
    from joserfc import jwt
    from joserfc.jwk import RSAKey

    from app.auth.clients import add_client

    key = RSAKey.generate_key(2048, parameters={"kid": "logs-1"}, private=True)
    jwk = key.as_dict(private=False)
    jwk["kid"] = key.kid
    cid = f"logs-{uuid.uuid4().hex[:8]}"
    add_client(app.extensions["results_repo"].engine, client_id=cid, kind="backend", scope="system/*.cruds",
               jwks={"keys": [jwk]})
    import time

    now = int(time.time())
    claims = {"iss": cid, "sub": cid, "aud": f"{live.url}/auth/token", "exp": now + 120, "iat": now,
              "jti": uuid.uuid4().hex}
    signed = jwt.encode({"alg": "RS384", "kid": key.kid, "typ": "JWT"}, claims, key, algorithms=["RS384"])
    r = requests.post(f"{live.url}/auth/token", data={
        "grant_type": "client_credentials", "scope": "system/*.cruds",
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        "client_assertion": signed})
    assert r.status_code == 200, r.text
    return r.json()["access_token"]


def test_typical_requests_leave_no_secrets_in_logs_or_links(database_url, logs) -> None:
    app = make_app(database_url, AUTH_REQUIRED=True, SQL_ECHO=False)
    live = Live(app, handler=PathOnlyRequestHandler)
    app.config["PUBLIC_BASE_URL"] = live.base
    try:
        token = _backend_token(app, live)
        auth = {**H, "Authorization": f"Bearer {token}"}
        family = f"Zebedee{uuid.uuid4().hex[:8]}"
        nhs = _nhs_number()
        tag = uuid.uuid4().hex
        patients = []
        for i in range(3):
            body = {"resourceType": "Patient", "meta": {"tag": [{"system": "urn:test:logs", "code": tag}]},
                    "identifier": [{"system": NHS, "value": nhs if i == 0 else _nhs_number()}],
                    "name": [{"family": f"{family}{i}", "given": ["Clementine"]}], "birthDate": "1961-07-04"}
            r = requests.post(f"{live.base}/Patient", json=body, headers=auth)
            assert r.status_code == 201, r.text
            patients.append(r.json())
        pid = patients[0]["id"]
        assert requests.get(f"{live.base}/Patient/{pid}", headers=auth).status_code == 200
        assert requests.get(f"{live.base}/Patient", params={"identifier": f"{NHS}|{nhs}"}, headers=auth).status_code == 200
        assert requests.get(f"{live.base}/Patient", params={"name": family}, headers=auth).status_code == 200
        r = requests.post(f"{live.base}/Patient/_search", data={"identifier": f"{NHS}|{nhs}"},
                          headers={"Accept": H["Accept"], "Authorization": auth["Authorization"]})
        assert r.status_code == 200
        # the body's search parameters do not come back in the links (decision 0015)
        for link in r.json()["link"]:
            assert nhs not in link["url"] and "identifier" not in link["url"], link
        # paging sorted by family name: the links hold an opaque cursor, not the name
        page = requests.get(f"{live.base}/Patient", params={"_tag": f"urn:test:logs|{tag}", "_sort": "family",
                                                           "_count": "1"}, headers=auth).json()
        links = {link["relation"]: link["url"] for link in page["link"]}
        assert "next" in links
        for url in links.values():
            cursor = parse_qs(urlsplit(url).query).get("_cursor", [""])[0]
            decoded = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)) if cursor else b""
            assert family.encode() not in decoded and family not in url, url
        assert requests.get(links["next"], headers=auth).status_code == 200
        # a transaction, an update, refusals that echo nothing
        tx = {"resourceType": "Bundle", "type": "transaction", "entry": [
            {"resource": {"resourceType": "Observation", "status": "final", "code": {"text": "Hb"},
                          "subject": {"reference": f"Patient/{pid}"}, "valueQuantity": {"value": 13.1}},
             "request": {"method": "POST", "url": "Observation"}}]}
        assert requests.post(live.base, json=tx, headers=auth).status_code == 200
        upd = {**patients[1], "name": [{"family": f"{family}X", "given": ["Clementine"]}]}
        assert requests.put(f"{live.base}/Patient/{upd['id']}", json=upd, headers=auth).status_code == 200
        bad = {"resourceType": "Patient", "name": [{"family": family}], "birthDate": f"not-a-date-{nhs}"}
        assert requests.post(f"{live.base}/Patient", json=bad, headers=auth).status_code == 400
        assert requests.get(f"{live.base}/Patient", headers={**H, "Authorization": f"Bearer {token}x"}).status_code == 401
        assert requests.post(f"{live.url}/auth/introspect", data={"token": token}).status_code in (400, 401)
    finally:
        live.stop()
        app.extensions["results_repo"].engine.dispose()

    text = "\n".join(logs.lines)
    assert logs.lines, "the run logged nothing at all: the capture is broken"
    assert any("GET /fhir/Patient " in line for line in logs.lines)  # access log lines, without query
    for secret in (token, token[:16], family, "Clementine", nhs):
        assert secret not in text, f"{secret!r} appears in the log"

"""Demo access: a ready SMART app, two users and a backend client whose private key is kept in
the instance folder, so ``results-repo demo-token`` can get a real token.

Only for ``results-repo demo`` / ``results-repo run --demo`` on a laptop: the user passwords are
new random values on every run and printed once.
"""

from __future__ import annotations

import json
import os
import secrets
import time
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

from flask import Flask
from joserfc import jwt
from joserfc.jwk import ECKey
from sqlalchemy import select

DEMO_APP = "demo-app"
DEMO_BACKEND = "demo-backend"
DEMO_APP_REDIRECTS = ["http://127.0.0.1:8000/callback", "http://localhost:8000/callback"]
DEMO_APP_SCOPE = (
    "openid fhirUser profile launch launch/patient launch/encounter offline_access online_access "
    "patient/*.rs user/*.rs"
)
DEMO_BACKEND_SCOPE = "system/*.cruds"
DEMO_CLINICIAN = "demo-clinician"
DEMO_PATIENT_USER = "demo-patient"
FALLBACK_PRACTITIONER = "e78eb359-e003-4912-bb67-0db9ae8e3ef5"  # in the Synthea demo bundles
ASSERTION_ALG = "ES384"


def key_path(app: Flask) -> Path:
    return Path(app.instance_path) / "demo-backend-key.json"


def _load_or_create_key(app: Flask) -> ECKey:
    path = key_path(app)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        key = ECKey.generate_key("P-384", private=True)
        key.ensure_kid()
        data = key.as_dict(private=True)
        data.update({"kid": key.kid, "alg": ASSERTION_ALG})
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh)
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            tmp.unlink(missing_ok=True)
    data = json.loads(path.read_text())
    return ECKey.import_key(data)


def _first_id(engine, res_type: str) -> str | None:  # noqa: ANN001
    from app.storage.tables import resource

    with engine.connect() as conn:
        return conn.execute(
            select(resource.c.res_id)
            .where(resource.c.res_type == res_type, resource.c.deleted.is_(False))
            .order_by(resource.c.res_id)
            .limit(1)
        ).scalar()


def setup_demo_access(app: Flask) -> dict:
    """(Re)create the demo clients and users; returns what the operator needs to use them."""
    from app.auth.clients import add_client
    from app.auth.users import add_user, remove_user
    from app.loader.demo import DEMO_SYNTHEA_PATIENT

    engine = app.extensions["results_repo"].engine
    key = _load_or_create_key(app)
    public = key.as_dict(private=False)
    public.update({"kid": key.kid, "alg": ASSERTION_ALG, "use": "sig"})
    add_client(engine, client_id=DEMO_BACKEND, kind="backend", scope=DEMO_BACKEND_SCOPE,
               jwks={"keys": [public]}, name="Demo EPR (backend services)", replace=True)
    add_client(engine, client_id=DEMO_APP, kind="app", scope=DEMO_APP_SCOPE, redirect_uris=DEMO_APP_REDIRECTS,
               name="Demo results viewer", replace=True)
    practitioner = _first_id(engine, "Practitioner") or FALLBACK_PRACTITIONER
    users = {
        DEMO_CLINICIAN: f"Practitioner/{practitioner}",
        DEMO_PATIENT_USER: f"Patient/{DEMO_SYNTHEA_PATIENT}",
    }
    passwords = {}
    for name, fhir_user in users.items():
        remove_user(engine, name)
        passwords[name] = secrets.token_urlsafe(12)
        add_user(engine, name, fhir_user, passwords[name])
    return {"users": users, "passwords": passwords, "key_path": str(key_path(app))}


def access_instructions(base_url: str, info: dict) -> str:
    from app.auth.discovery import endpoints

    b = base_url.rstrip("/")
    e = endpoints(b)
    lines = [
        "",
        "Access (SMART on FHIR):",
        f"  discovery:  curl -s {b}/.well-known/smart-configuration",
        f"  backend client '{DEMO_BACKEND}' (scope {DEMO_BACKEND_SCOPE}); its private key: {info['key_path']}",
        "  get a token with a real client_credentials + private_key_jwt flow and use it:",
        f"    TOKEN=$(results-repo demo-token --url {b})",
        f"    curl -s '{b}/Patient?_count=3' -H \"Authorization: Bearer $TOKEN\"",
        f"  app '{DEMO_APP}' (public, PKCE S256), redirect URIs: {', '.join(DEMO_APP_REDIRECTS)}",
        f"    authorize at {e['authorize']}?response_type=code&client_id={DEMO_APP}"
        f"&redirect_uri={urllib.parse.quote(DEMO_APP_REDIRECTS[0], safe='')}&scope=launch/patient%20patient/*.rs%20openid%20fhirUser"
        f"&aud={urllib.parse.quote(b, safe='')}&state=STATE&code_challenge=CHALLENGE&code_challenge_method=S256",
        "    (CHALLENGE = base64url(sha256(VERIFIER)), VERIFIER 43-128 characters; after login and consent the",
        "     browser lands on the redirect URI with ?code=...; exchange it within 60 s:)",
        f"    curl -s {e['token']} -d grant_type=authorization_code -d client_id={DEMO_APP} -d code=CODE \\",
        f"         -d code_verifier=VERIFIER --data-urlencode redirect_uri={DEMO_APP_REDIRECTS[0]}",
        "  users (passwords are new on every demo run):",
    ]
    for name, fhir_user in info["users"].items():
        lines.append(f"    {name:16} password {info['passwords'][name]}   ({fhir_user})")
    return "\n".join(lines)


def _assertion(key: ECKey, client_id: str, aud: str) -> str:
    now = int(time.time())
    claims = {"iss": client_id, "sub": client_id, "aud": aud, "exp": now + 240, "iat": now, "jti": uuid.uuid4().hex}
    header = {"alg": ASSERTION_ALG, "kid": key.kid, "typ": "JWT"}
    return jwt.encode(header, claims, key, algorithms=[ASSERTION_ALG])


def demo_backend_token(app: Flask, scope: str, url: str | None = None) -> str:
    path = key_path(app)
    if not path.exists():
        raise RuntimeError(f"No demo key at {path}: run `results-repo demo` first.")
    key = ECKey.import_key(json.loads(path.read_text()))
    form = {
        "grant_type": "client_credentials",
        "scope": scope,
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
    }
    if url:
        conf_url = url.rstrip("/") + "/.well-known/smart-configuration"
        with urllib.request.urlopen(conf_url, timeout=10) as resp:  # noqa: S310
            token_url = json.loads(resp.read())["token_endpoint"]
        form["client_assertion"] = _assertion(key, DEMO_BACKEND, token_url)
        req = urllib.request.Request(token_url, data=urllib.parse.urlencode(form).encode(), method="POST")
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310
                body = json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            raise RuntimeError(f"token endpoint said {exc.code}: {exc.read().decode(errors='replace')}") from None
    else:
        base = app.config.get("PUBLIC_BASE_URL") or "http://localhost/fhir"
        root = base.rstrip("/")[: -len("/fhir")] if base.rstrip("/").endswith("/fhir") else base.rstrip("/")
        form["client_assertion"] = _assertion(key, DEMO_BACKEND, root + "/auth/token")
        resp = app.test_client().post("/auth/token", data=form, base_url=root)
        body = resp.get_json(silent=True) or {}
        if resp.status_code != 200:
            raise RuntimeError(f"token endpoint said {resp.status_code}: {body}")
    return body["access_token"]

"""Registered clients: SMART apps (public with PKCE, or confidential with a secret or a key) and
backend services (``client_credentials`` + ``private_key_jwt``).

A client may only be granted scopes its registration covers: ``patient/*.rs`` registered covers
``patient/Observation.rs`` asked; non-resource scopes (``openid``, ``launch/patient``,
``offline_access`` ...) must be registered as such. Scopes asked but not covered are dropped (the
token response's ``scope`` says what was granted).
"""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.request
from dataclasses import dataclass
from urllib.parse import urlsplit

from authlib.oauth2.rfc6749 import ClientMixin
from joserfc.jwk import KeySet
from sqlalchemy import Engine, delete, select

from app.auth.scopes import OTHER_SCOPES, ScopeError, parse_scope, parse_scopes
from app.auth.tables import auth_client
from app.auth.tokens import utcnow
from app.auth.users import hash_secret, verify_secret
from app.db.engine import unit_of_work

CLIENT_ID = re.compile(r"^[A-Za-z0-9_.:\-]{1,255}$")
ASSERTION_ALGS = ("RS384", "ES384")


def scope_covered(asked: str, registered: list[str]) -> bool:
    """Whether a registration grants ``asked``: the same string, or a registered resource scope
    that covers it in the sense of app.auth.scopes (``patient/*.rs`` covers
    ``patient/Observation.read``; a registered filter covers only asks that carry it too)."""
    if asked in registered:
        return True
    try:
        a = parse_scope(asked)
    except ScopeError:
        return False
    if a is None:
        return False
    return any(r.covers(a) for r in parse_scopes(" ".join(registered)))


def validate_registered_scope(scope: str) -> str:
    """The scope a client is registered with, normalised; a malformed resource scope or an
    unknown non-resource scope is refused, so a typo never registers a scope that grants nothing."""
    parts = scope.split()
    for part in parts:
        sc = parse_scope(part)  # raises ScopeError (a ValueError) on a malformed resource scope
        if sc is None and part not in OTHER_SCOPES:
            raise ValueError(f"unknown scope {part!r}: resource scopes look like patient/Observation.rs; "
                             f"the others are {', '.join(OTHER_SCOPES)}")
    return " ".join(dict.fromkeys(parts))


def narrow_scope(asked: str | None, registered: list[str]) -> str:
    """The asked scopes this registration covers (all registered ones if nothing was asked)."""
    if not asked:
        return " ".join(registered)
    out: list[str] = []
    for s in asked.split():
        if s not in out and scope_covered(s, registered):
            out.append(s)
    return " ".join(out)


@dataclass
class Client(ClientMixin):
    client_id: str
    kind: str  # app | backend
    auth_method: str  # none | client_secret_basic | private_key_jwt
    redirect_uris: list[str]
    scope: str
    secret_hash: str | None = None
    jwks: dict | None = None
    jwks_uri: str | None = None
    name: str | None = None

    # authlib's ClientMixin
    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> str | None:
        return self.redirect_uris[0] if len(self.redirect_uris) == 1 else None

    def get_allowed_scope(self, scope: str | None) -> str:
        return narrow_scope(scope, self.scope.split())

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return redirect_uri in self.redirect_uris

    def check_client_secret(self, client_secret: str) -> bool:
        return self.auth_method == "client_secret_basic" and verify_secret(client_secret, self.secret_hash)

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        if self.auth_method == "client_secret_basic":
            return method in ("client_secret_basic", "client_secret_post")
        return method == self.auth_method

    def check_response_type(self, response_type: str) -> bool:
        return self.kind == "app" and response_type == "code"

    def check_grant_type(self, grant_type: str) -> bool:
        if self.kind == "backend":
            return grant_type == "client_credentials"
        return grant_type in ("authorization_code", "refresh_token")

    @property
    def is_public(self) -> bool:
        return self.auth_method == "none"

    @property
    def origins(self) -> set[str]:
        out = set()
        for uri in self.redirect_uris:
            p = urlsplit(uri)
            if p.scheme and p.netloc:
                out.add(f"{p.scheme}://{p.netloc}")
        return out

    def key_set(self, max_age: float = 300) -> KeySet:
        """The client's public keys: registered by value, or fetched from its JWKS URL (a fetched
        set is reused for ``max_age`` seconds)."""
        if self.jwks is not None:
            return KeySet.import_key_set(self.jwks)
        if not self.jwks_uri:
            raise ValueError("the client has no keys")
        return _fetch_jwks(self.jwks_uri, max_age)


_jwks_cache: dict[str, tuple[float, KeySet]] = {}
_jwks_lock = threading.Lock()


def _fetch_jwks(url: str, max_age: float = 300) -> KeySet:
    now = time.monotonic()
    with _jwks_lock:
        hit = _jwks_cache.get(url)
        if hit and now - hit[0] < max_age:
            return hit[1]
    req = urllib.request.Request(url, headers={"Accept": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as resp:  # noqa: S310 (operator-registered URL)
        data = json.loads(resp.read(1_000_000))
    ks = KeySet.import_key_set(data)
    with _jwks_lock:
        _jwks_cache[url] = (now, ks)
    return ks


def validate_jwks(jwks: dict) -> dict:
    """Only public keys usable for RS384/ES384 assertions are accepted; every key needs a kid."""
    if not isinstance(jwks, dict) or not isinstance(jwks.get("keys"), list) or not jwks["keys"]:
        raise ValueError("a JWKS is an object with a non-empty 'keys' list")
    for k in jwks["keys"]:
        if not isinstance(k, dict) or not k.get("kid"):
            raise ValueError("every key in the JWKS needs a 'kid'")
        if k.get("kty") not in ("RSA", "EC"):
            raise ValueError("keys must be RSA or EC")
        if "d" in k:
            raise ValueError("the JWKS holds a private key: register the public keys only")
    KeySet.import_key_set(jwks)  # parses
    return jwks


def _row_to_client(r) -> Client:  # noqa: ANN001
    return Client(
        client_id=r.client_id,
        kind=r.kind,
        auth_method=r.auth_method,
        redirect_uris=json.loads(r.redirect_uris),
        scope=r.scope,
        secret_hash=r.secret_hash,
        jwks=json.loads(r.jwks) if r.jwks else None,
        jwks_uri=r.jwks_uri,
        name=r.name,
    )


def get_client(engine: Engine, client_id: str | None) -> Client | None:
    if not client_id or not isinstance(client_id, str) or len(client_id) > 255:
        return None
    with engine.connect() as conn:
        r = conn.execute(select(auth_client).where(auth_client.c.client_id == client_id)).first()
    return None if r is None else _row_to_client(r)


def list_clients(engine: Engine) -> list[Client]:
    with engine.connect() as conn:
        return [_row_to_client(r) for r in conn.execute(select(auth_client).order_by(auth_client.c.client_id))]


def add_client(
    engine: Engine,
    *,
    client_id: str,
    kind: str,
    scope: str,
    redirect_uris: list[str] | None = None,
    secret: str | None = None,
    jwks: dict | None = None,
    jwks_uri: str | None = None,
    name: str | None = None,
    replace: bool = False,
) -> Client:
    if not CLIENT_ID.match(client_id):
        raise ValueError("client id: letters, digits and _ . : - (1 to 255)")
    scope = validate_registered_scope(scope)
    if not scope:
        raise ValueError("--scope must name at least one scope")
    if kind == "backend" and any(p.startswith(("patient/", "user/")) or p in OTHER_SCOPES for p in scope.split()):
        raise ValueError("a backend service has no user or launch: register system/ scopes only")
    redirect_uris = list(redirect_uris or [])
    for uri in redirect_uris:
        p = urlsplit(uri)
        if p.scheme not in ("https", "http") or not p.netloc or p.fragment:
            raise ValueError(f"redirect URI {uri!r} must be an absolute http(s) URI without a fragment")
    if kind == "app" and not redirect_uris:
        raise ValueError("an app needs at least one --redirect-uri")
    if jwks is not None:
        validate_jwks(jwks)
    if jwks_uri:
        p = urlsplit(jwks_uri)
        if not (p.scheme == "https" or (p.scheme == "http" and p.hostname in ("127.0.0.1", "localhost", "::1"))):
            raise ValueError("--jwks-url must be https (http only on loopback, for development)")
    if jwks is not None or jwks_uri:
        method = "private_key_jwt"
    elif secret is not None:
        if len(secret) < 16:
            raise ValueError("a client secret must have at least 16 characters")
        method = "client_secret_basic"
    else:
        method = "none"
    if kind == "backend" and method != "private_key_jwt":
        raise ValueError("a backend client authenticates with private_key_jwt: give its JWKS")
    row = {
        "client_id": client_id,
        "kind": kind,
        "auth_method": method,
        "redirect_uris": json.dumps(redirect_uris),
        "scope": scope,
        "secret_hash": hash_secret(secret) if secret is not None else None,
        "jwks": json.dumps(jwks) if jwks is not None else None,
        "jwks_uri": jwks_uri,
        "name": name,
        "created_at": utcnow(),
    }
    with unit_of_work(engine, write=True) as conn:
        exists = conn.execute(select(auth_client.c.client_id).where(auth_client.c.client_id == client_id)).first()
        if exists and not replace:
            raise ValueError(f"client {client_id!r} already exists (remove it first)")
        if exists:
            conn.execute(delete(auth_client).where(auth_client.c.client_id == client_id))
        conn.execute(auth_client.insert().values(**row))
    _origins.clear()
    return _row_to_client(type("R", (), row))


def remove_client(engine: Engine, client_id: str) -> bool:
    """Remove a client and revoke every token it holds."""
    from app.auth.tables import auth_token
    from app.auth.tokens import forget_cached_tokens, mark_revoked

    with unit_of_work(engine, write=True) as conn:
        mark_revoked(conn, auth_token.c.client_id == client_id)
        removed = conn.execute(delete(auth_client).where(auth_client.c.client_id == client_id)).rowcount > 0
        from app.protect.clearance import forget_clearance  # a re-registered id starts with none

        forget_clearance(conn, "client", client_id)
    forget_cached_tokens()
    _origins.clear()
    return removed


_origins: dict[str, tuple[float, frozenset[str]]] = {}
ORIGINS_TTL_S = 10


def registered_origin(engine: Engine, origin: str) -> bool:
    """Whether ``origin`` is the origin of some registered app's redirect URI (CORS on the token
    endpoints and the FHIR API). The set is re-read every ``ORIGINS_TTL_S`` seconds."""
    now = time.monotonic()
    key = str(engine.url)
    hit = _origins.get(key)
    if hit is None or now - hit[0] > ORIGINS_TTL_S:
        allowed = frozenset(o for c in list_clients(engine) if c.kind == "app" for o in c.origins)
        hit = _origins[key] = (now, allowed)
    return origin in hit[1]

"""The OAuth 2 / SMART authorization server, built on authlib's Flask ``AuthorizationServer``.

Grants: ``authorization_code`` (PKCE S256 required for every client, plain refused; public
clients, client secrets and ``private_key_jwt``), ``refresh_token`` (bound to its client, the same
or a narrower scope), ``client_credentials`` (backend services, ``private_key_jwt`` only).
Endpoints: token, introspection (RFC 7662), revocation (RFC 7009).

Access and refresh tokens are opaque (app/auth/tokens.py); authlib's token generator only fills
in ``token_type``/``expires_in``/``scope`` and :func:`SmartServer.save_token` creates and stores
the values together with the launch context, then adds the SMART fields to the response.
"""

from __future__ import annotations

import logging
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

from authlib.integrations.flask_oauth2 import AuthorizationServer
from authlib.integrations.flask_oauth2.requests import FlaskOAuth2Payload
from authlib.oauth2.rfc6749 import (
    InvalidClientError,
    InvalidRequestError,
    InvalidScopeError,
    OAuth2Request,
    grants,
)
from authlib.oauth2.rfc7009 import RevocationEndpoint
from authlib.oauth2.rfc7523 import JWTBearerClientAssertion
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oauth2.rfc7662 import IntrospectionEndpoint
from flask import current_app, g, request
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jws import extract_compact
from sqlalchemy import Engine, delete, select, update
from sqlalchemy.exc import IntegrityError

from app.auth.clients import ASSERTION_ALGS, Client, get_client
from app.auth.keys import ID_TOKEN_ALG
from app.auth.scopes import is_narrower
from app.auth.tables import auth_code, auth_jti, auth_launch, auth_token
from app.auth.tokens import (
    find_token,
    forget_cached_tokens,
    mark_revoked,
    store_token,
    token_hash,
    utcnow,
)
from app.auth.users import User
from app.db.engine import unit_of_work

log = logging.getLogger("results_repo.auth")

CODE_LIFETIME_S = 60
LAUNCH_LIFETIME_S = 300
ACCESS_LIFETIME_S = 3600
BACKEND_LIFETIME_S = 300  # SMART Backend Services: access tokens live at most 5 minutes
OFFLINE_LIFETIME_S = 30 * 24 * 3600
ONLINE_LIFETIME_S = 12 * 3600
MAX_ASSERTION_AHEAD_S = 300
CLOCK_SKEW_S = 30
ALL_AUTH_METHODS = ["client_secret_basic", "client_secret_post", "private_key_jwt", "none"]


def engine() -> Engine:
    return current_app.extensions["results_repo"].engine


def fhir_base() -> str:
    """Our FHIR base URL as callers see it (the value ``aud`` must carry)."""
    base = current_app.config.get("PUBLIC_BASE_URL")
    if base:
        return base.rstrip("/")
    return request.host_url.rstrip("/") + "/fhir"


def public_root() -> str:
    """Scheme://host[:port][/prefix] under which /auth lives (the FHIR base minus ``/fhir``)."""
    base = fhir_base()
    return base[: -len("/fhir")] if base.endswith("/fhir") else base


def auth_url(path: str) -> str:
    return public_root() + "/auth/" + path


def same_url(a: str | None, b: str) -> bool:
    return bool(a) and a.rstrip("/") == b.rstrip("/")


# ---------------------------------------------------------------------------------------------
# What an approved authorization carries


@dataclass
class GrantUser:
    """The resource owner's decision: who, which scopes, which launch context."""

    user: User
    scope: str
    patient: str | None = None
    encounter: str | None = None
    need_patient_banner: bool = True

    def get_user_id(self) -> str:
        return self.user.username


@dataclass
class CodeRow:
    code_hash: str
    client_id: str
    redirect_uri: str
    scope: str
    username: str | None
    fhir_user: str | None
    patient: str | None
    encounter: str | None
    need_patient_banner: bool
    code_challenge: str
    nonce: str | None
    code_challenge_method: str = "S256"

    def get_redirect_uri(self) -> str:
        return self.redirect_uri

    def get_scope(self) -> str:
        return self.scope


class TokenRow:
    """A stored token as authlib's endpoints see it."""

    def __init__(self, row) -> None:  # noqa: ANN001
        self.row = row

    def check_client(self, client: Client) -> bool:
        return self.row.client_id == client.client_id

    def get_scope(self) -> str:
        return self.row.scope

    def is_expired(self) -> bool:
        return self.row.expires_at <= utcnow()

    def is_revoked(self) -> bool:
        return bool(self.row.revoked)

    def get_client_id(self) -> str:
        return self.row.client_id


# ---------------------------------------------------------------------------------------------
# Client authentication: private_key_jwt (SMART asymmetric client authentication)


class PrivateKeyJWT(JWTBearerClientAssertion):
    """``private_key_jwt``: RS384 or ES384 assertions, ``iss`` = ``sub`` = client_id, ``aud`` =
    the token endpoint, ``exp`` at most five minutes ahead, ``kid`` naming a registered key,
    ``jti`` never seen before (kept until the assertion expires)."""

    CLIENT_AUTH_METHOD = "private_key_jwt"

    def __init__(self) -> None:
        super().__init__(validate_jti=True, leeway=CLOCK_SKEW_S)

    def get_audiences(self) -> list[str]:
        return [auth_url("token")]

    def resolve_client_public_key(self, client: Client):  # noqa: ANN201
        g.smart_assertion_client = client
        if client.auth_method != "private_key_jwt":
            raise InvalidClientError(description="The client does not authenticate with private_key_jwt.")
        try:
            return client.key_set()
        except Exception as exc:  # noqa: BLE001 (unreachable JWKS URL, bad JWKS)
            log.warning("JWKS of %s unusable: %s", client.client_id, exc)
            raise InvalidClientError(description="The client's JWKS could not be used.") from exc

    def process_assertion_claims(self, assertion: str, resolve_key):  # noqa: ANN001, ANN201
        try:
            header = extract_compact(assertion.encode("ascii")).headers()
        except (JoseError, UnicodeEncodeError, ValueError) as exc:
            raise InvalidClientError(description="Invalid JWT assertion.") from exc
        alg, kid = header.get("alg"), header.get("kid")
        if alg not in ASSERTION_ALGS:
            raise InvalidClientError(description=f"Assertion alg must be one of {', '.join(ASSERTION_ALGS)}.")
        if not kid or not isinstance(kid, str):
            raise InvalidClientError(description="The assertion header has no 'kid'.")
        key = _by_kid(resolve_key, kid)
        client = g.get("smart_assertion_client")  # per request: this object is shared by threads
        if key is None and client is not None and client.jwks_uri:
            # the client may have rotated its keys: fetch its JWKS again (at most once a minute)
            try:
                key = _by_kid(client.key_set(max_age=60), kid)
            except Exception:  # noqa: BLE001
                key = None
        if key is None:
            raise InvalidClientError(description=f"No registered key has kid {kid!r}.")
        try:
            token = jwt.decode(assertion, key, algorithms=[alg])
        except JoseError as exc:
            raise InvalidClientError(description="The assertion signature does not verify.") from exc
        claims = token.claims
        exp = claims.get("exp")
        if not isinstance(exp, int | float):
            raise InvalidClientError(description="The assertion has no 'exp'.")
        if exp > time.time() + MAX_ASSERTION_AHEAD_S + CLOCK_SKEW_S:
            raise InvalidClientError(description="The assertion's 'exp' is more than five minutes ahead.")
        self.verify_claims(claims)
        return claims

    def validate_jti(self, claims: dict, jti: str) -> bool:
        if not isinstance(jti, str) or not jti or len(jti) > 255:
            return False
        now = utcnow()
        exp = _naive_utc(float(claims["exp"]))
        try:
            with unit_of_work(engine(), write=True) as conn:
                conn.execute(delete(auth_jti).where(auth_jti.c.expires_at < now))
                conn.execute(auth_jti.insert().values(client_id=claims["sub"], jti=jti, expires_at=max(exp, now)))
        except IntegrityError:
            return False
        return True


def _by_kid(keys, kid: str):  # noqa: ANN001, ANN202
    try:
        return keys.get_by_kid(kid)
    except (JoseError, ValueError, AttributeError, KeyError):
        return None


def _naive_utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC).replace(tzinfo=None)


# ---------------------------------------------------------------------------------------------
# PKCE: S256 only, for every client


class S256Required(CodeChallenge):
    SUPPORTED_CODE_CHALLENGE_METHOD = ["S256"]
    DEFAULT_CODE_CHALLENGE_METHOD = "S256"

    def validate_code_challenge(self, grant, redirect_uri):  # noqa: ANN001, ANN201
        data = grant.request.payload.data
        if not data.get("code_challenge"):
            raise InvalidRequestError("PKCE is required: send code_challenge with code_challenge_method=S256.")
        if data.get("code_challenge_method") != "S256":
            raise InvalidRequestError("code_challenge_method must be S256 (plain is not accepted).")
        return super().validate_code_challenge(grant, redirect_uri)

    def validate_code_verifier(self, grant, result):  # noqa: ANN001, ANN201
        if not grant.request.form.get("code_verifier"):
            raise InvalidRequestError("Missing 'code_verifier'.")
        return super().validate_code_verifier(grant, result)


class SmartAuthorizeChecks:
    """``aud`` must be our FHIR base; a ``launch`` value must be live (it is consumed on consent)."""

    def __call__(self, grant) -> None:  # noqa: ANN001
        grant.register_hook("after_validate_authorization_request_payload", self.check)

    def check(self, grant, redirect_uri) -> None:  # noqa: ANN001
        data = grant.request.payload.data
        if not same_url(data.get("aud"), fhir_base()):
            raise InvalidRequestError(f"'aud' must be this server's FHIR base URL ({fhir_base()}).")
        launch = data.get("launch")
        if launch and g.get("smart_launch_consumed") != launch and peek_launch(launch) is None:
            raise InvalidRequestError("Unknown, used or expired 'launch' value.")
        if not grant.request.scope:
            raise InvalidScopeError("None of the requested scopes is allowed for this client.")


# ---------------------------------------------------------------------------------------------
# Grants


class AuthorizationCodeGrant(grants.AuthorizationCodeGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = ALL_AUTH_METHODS

    def save_authorization_code(self, code: str, request: OAuth2Request) -> None:
        gu: GrantUser = request.user
        data = request.payload.data
        now = utcnow()
        with unit_of_work(engine(), write=True) as conn:
            conn.execute(delete(auth_code).where(auth_code.c.expires_at < now))
            conn.execute(
                auth_code.insert().values(
                    code_hash=token_hash(code),
                    client_id=request.client.client_id,
                    redirect_uri=request.payload.redirect_uri or request.client.get_default_redirect_uri(),
                    scope=gu.scope,
                    username=gu.user.username,
                    fhir_user=gu.user.fhir_user,
                    patient=gu.patient,
                    encounter=gu.encounter,
                    need_patient_banner=gu.need_patient_banner,
                    code_challenge=data.get("code_challenge"),
                    nonce=(data.get("nonce") or None),
                    expires_at=now.replace(microsecond=0) + _seconds(CODE_LIFETIME_S),
                    used=False,
                )
            )

    def query_authorization_code(self, code: str, client: Client) -> CodeRow | None:
        """Single use: the first redemption marks the code used; a second one revokes the tokens
        the first one produced (RFC 6749 section 4.1.2)."""
        if not code or len(code) > 512:
            return None
        h = token_hash(code)
        now = utcnow()
        replayed = False
        with unit_of_work(engine(), write=True) as conn:
            row = conn.execute(select(auth_code).where(auth_code.c.code_hash == h)).first()
            if row is None or row.client_id != client.client_id:
                return None
            if row.used:
                mark_revoked(conn, auth_token.c.grant_id == h[:32])
                replayed = True
            else:
                taken = conn.execute(
                    update(auth_code).where(auth_code.c.code_hash == h, auth_code.c.used.is_(False)).values(used=True)
                ).rowcount
                if taken != 1 or row.expires_at <= now:
                    return None
        if replayed:
            forget_cached_tokens()  # committed: every process has dropped the revoked tokens
            return None
        return CodeRow(
            code_hash=h,
            client_id=row.client_id,
            redirect_uri=row.redirect_uri,
            scope=row.scope,
            username=row.username,
            fhir_user=row.fhir_user,
            patient=row.patient,
            encounter=row.encounter,
            need_patient_banner=bool(row.need_patient_banner),
            code_challenge=row.code_challenge,
            nonce=row.nonce,
        )

    def delete_authorization_code(self, authorization_code: CodeRow) -> None:
        pass  # kept (marked used) until it expires, so a replay can be recognised

    def authenticate_user(self, authorization_code: CodeRow) -> GrantUser | None:
        if not authorization_code.username:
            return None
        return GrantUser(
            User(authorization_code.username, authorization_code.fhir_user or ""),
            authorization_code.scope,
            authorization_code.patient,
            authorization_code.encounter,
            authorization_code.need_patient_banner,
        )


class RefreshTokenGrant(grants.RefreshTokenGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = ALL_AUTH_METHODS
    INCLUDE_NEW_REFRESH_TOKEN = False

    def authenticate_refresh_token(self, refresh_token: str) -> TokenRow | None:
        with engine().connect() as conn:
            row = find_token(conn, refresh_token, "refresh")
        return None if row is None else TokenRow(row)

    def authenticate_user(self, refresh_token: TokenRow) -> GrantUser | None:
        r = refresh_token.row
        if not r.username:
            return None
        return GrantUser(User(r.username, r.fhir_user or ""), r.scope, r.patient, r.encounter)

    def _validate_token_scope(self, token: TokenRow) -> None:
        """Same or narrower, in the meaning of app.auth.scopes (``patient/*.rs`` granted covers
        ``patient/Observation.read`` asked); anything wider is ``invalid_scope``."""
        asked = self.request.payload.scope
        if asked and not is_narrower(asked, token.get_scope() or ""):
            raise InvalidScopeError("The refresh may ask for the granted scopes or fewer, never more.")

    def revoke_old_credential(self, refresh_token: TokenRow) -> None:
        pass  # the refresh token stays valid until it expires or is revoked


class ClientCredentialsGrant(grants.ClientCredentialsGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = ["private_key_jwt"]

    def create_token_response(self):  # noqa: ANN201
        client: Client = self.request.client
        scope = client.get_allowed_scope(self.request.payload.scope)
        asked = (self.request.payload.scope or "").split()
        if not asked:
            raise InvalidScopeError("Ask for the scopes you need (scope=system/...).")
        if not scope:
            raise InvalidScopeError("None of the requested scopes is allowed for this client.")
        token = self.generate_token(scope=scope, include_refresh_token=False)
        self.save_token(token)
        return 200, token, self.TOKEN_RESPONSE_HEADER


def _seconds(n: int) -> timedelta:
    return timedelta(seconds=n)


# ---------------------------------------------------------------------------------------------
# Introspection and revocation


def _query_token(token_string: str, token_type_hint: str | None) -> TokenRow | None:
    if not token_string or len(token_string) > 512:
        return None
    with engine().connect() as conn:
        row = conn.execute(select(auth_token).where(auth_token.c.token_hash == token_hash(token_string))).first()
    return None if row is None else TokenRow(row)


class SmartIntrospection(IntrospectionEndpoint):
    CLIENT_AUTH_METHODS = ALL_AUTH_METHODS

    def query_token(self, token_string, token_type_hint):  # noqa: ANN001, ANN201
        return _query_token(token_string, token_type_hint)

    def check_permission(self, token: TokenRow, client: Client, request) -> bool:  # noqa: ANN001
        return token.check_client(client)

    def introspect_token(self, token: TokenRow) -> dict:
        r = token.row
        out = {
            "active": True,
            "client_id": r.client_id,
            "scope": r.scope,
            "token_type": "Bearer" if r.kind == "access" else "refresh_token",
            "exp": int(_epoch(r.expires_at)),
            "iat": int(_epoch(r.issued_at)),
            "iss": fhir_base(),
        }
        if r.username:
            out["username"] = r.username
            out["sub"] = r.username
        for key, value in (("fhirUser", r.fhir_user), ("patient", r.patient), ("encounter", r.encounter)):
            if value:
                out[key] = value
        return out


class SmartRevocation(RevocationEndpoint):
    CLIENT_AUTH_METHODS = ALL_AUTH_METHODS

    def query_token(self, token_string, token_type_hint):  # noqa: ANN001, ANN201
        return _query_token(token_string, token_type_hint)

    def authenticate_token(self, request, client):  # noqa: ANN001, ANN201
        self.check_params(request, client)
        token = self.query_token(request.form["token"], request.form.get("token_type_hint"))
        # RFC 7009 2.2: an unknown token, or another client's, is answered 200 and left alone
        return token if token and token.check_client(client) else None

    def revoke_token(self, token: TokenRow, request) -> None:  # noqa: ANN001
        with unit_of_work(engine(), write=True) as conn:
            if token.row.kind == "refresh":
                mark_revoked(conn, auth_token.c.grant_id == token.row.grant_id)
            else:
                mark_revoked(conn, auth_token.c.token_hash == token.row.token_hash)
        forget_cached_tokens()


def _epoch(naive_utc: datetime) -> float:
    return naive_utc.replace(tzinfo=UTC).timestamp()


# ---------------------------------------------------------------------------------------------
# The server


class PublicUrlRequest(OAuth2Request):
    """authlib's Flask request, with the URL callers used (PUBLIC_BASE_URL) for its transport check."""

    def __init__(self) -> None:
        base = current_app.config.get("PUBLIC_BASE_URL")
        uri = request.url
        if base:
            p = urlsplit(base)
            uri = f"{p.scheme}://{p.netloc}{request.full_path}"
        super().__init__(method=request.method, uri=uri, headers=request.headers)
        self._request = request
        self.payload = FlaskOAuth2Payload(request)

    @property
    def args(self):  # noqa: ANN201
        return self._request.args

    @property
    def form(self):  # noqa: ANN201
        return self._request.form


class SmartServer(AuthorizationServer):
    def __init__(self, app, signing_key) -> None:  # noqa: ANN001
        super().__init__()
        self.signing_key = signing_key
        self.init_app(app, query_client=self._query_client_impl, save_token=self._save_token_impl)
        self.register_token_generator("default", self._generate)
        self.register_client_auth_method("private_key_jwt", PrivateKeyJWT())
        self.register_grant(AuthorizationCodeGrant, [S256Required(required=True), SmartAuthorizeChecks()])
        self.register_grant(RefreshTokenGrant)
        self.register_grant(ClientCredentialsGrant)
        self.register_endpoint(SmartIntrospection)
        self.register_endpoint(SmartRevocation)

    def create_oauth2_request(self, req):  # noqa: ANN001, ANN201
        return PublicUrlRequest()

    def validate_requested_scope(self, scope):  # noqa: ANN001, ANN201
        return None  # each client's registration decides (Client.get_allowed_scope)

    @staticmethod
    def _query_client_impl(client_id: str) -> Client | None:
        return get_client(engine(), client_id)

    @staticmethod
    def _generate(grant_type, client, user=None, scope=None, expires_in=None, include_refresh_token=True):  # noqa: ANN001, ANN205
        lifetime = BACKEND_LIFETIME_S if grant_type == "client_credentials" else ACCESS_LIFETIME_S
        return {"token_type": "Bearer", "expires_in": lifetime, "scope": scope or ""}

    def _save_token_impl(self, token: dict, req: OAuth2Request) -> None:
        """Create and store the opaque tokens; add the SMART launch context to the response."""
        grant_type = req.payload.grant_type
        client: Client = req.client
        scope = token.get("scope") or ""
        scopes = scope.split()
        code: CodeRow | None = getattr(req, "authorization_code", None)
        refresh: TokenRow | None = getattr(req, "refresh_token", None)
        gu: GrantUser | None = req.user if isinstance(req.user, GrantUser) else None
        grant_id = None
        nonce = None
        banner = True
        if grant_type == "authorization_code" and code is not None:
            grant_id = code.code_hash[:32]
            nonce = code.nonce
            banner = code.need_patient_banner
        elif grant_type == "refresh_token" and refresh is not None:
            grant_id = refresh.row.grant_id
        ctx = {
            "username": gu.user.username if gu else None,
            "fhir_user": (gu.user.fhir_user or None) if gu else None,
            "patient": gu.patient if gu else None,
            "encounter": gu.encounter if gu else None,
        }
        with unit_of_work(engine(), write=True) as conn:
            if secrets.randbelow(200) == 0:  # now and then, forget tokens expired for a day
                conn.execute(delete(auth_token).where(auth_token.c.expires_at < utcnow() - _seconds(86400)))
            raw, row = store_token(
                conn,
                kind="access",
                client_id=client.client_id,
                scope=scope,
                grant_id=grant_id,
                lifetime_s=int(token["expires_in"]),
                **ctx,
            )
            token["access_token"] = raw
            if grant_type == "authorization_code" and ({"offline_access", "online_access"} & set(scopes)):
                lifetime = OFFLINE_LIFETIME_S if "offline_access" in scopes else ONLINE_LIFETIME_S
                rraw, _ = store_token(
                    conn,
                    kind="refresh",
                    client_id=client.client_id,
                    scope=scope,
                    grant_id=row["grant_id"],
                    lifetime_s=lifetime,
                    **ctx,
                )
                token["refresh_token"] = rraw
        # for the audit trail (app/audit/web.py): what was issued, to whom; never the token itself
        g.audit_token = {"client_id": client.client_id, "scope": scope, "token_id": row["token_hash"][:16], **ctx}
        if ctx["patient"]:
            token["patient"] = ctx["patient"]
        if ctx["encounter"]:
            token["encounter"] = ctx["encounter"]
        if gu is not None:
            if ctx["fhir_user"] and ("fhirUser" in scopes or "openid" in scopes):
                token["fhirUser"] = f"{fhir_base()}/{ctx['fhir_user']}"
            token["need_patient_banner"] = banner
            token["smart_style_url"] = auth_url("smart-style.json")
            if "openid" in scopes:
                token["id_token"] = self.id_token(client.client_id, gu.user, nonce, scopes)

    def id_token(self, client_id: str, user: User, nonce: str | None, scopes: list[str]) -> str:
        now = int(time.time())
        claims = {
            "iss": fhir_base(),
            "sub": user.username,
            "aud": client_id,
            "iat": now,
            "exp": now + ACCESS_LIFETIME_S,
        }
        if "fhirUser" in scopes and user.fhir_user:
            claims["fhirUser"] = f"{fhir_base()}/{user.fhir_user}"
        if nonce:
            claims["nonce"] = nonce
        header = {"alg": ID_TOKEN_ALG, "kid": self.signing_key.kid, "typ": "JWT"}
        return jwt.encode(header, claims, self.signing_key)


# ---------------------------------------------------------------------------------------------
# EHR launch contexts


def register_launch(engine_: Engine, created_by: str, patient: str | None, encounter: str | None,
                    fhir_user: str | None, need_patient_banner: bool = True,
                    lifetime_s: int = LAUNCH_LIFETIME_S) -> str:
    from app.auth.tokens import new_token

    raw = new_token()
    now = utcnow()
    with unit_of_work(engine_, write=True) as conn:
        conn.execute(delete(auth_launch).where(auth_launch.c.expires_at < now))
        conn.execute(
            auth_launch.insert().values(
                launch_hash=token_hash(raw),
                created_by=created_by,
                patient=patient,
                encounter=encounter,
                fhir_user=fhir_user,
                need_patient_banner=need_patient_banner,
                expires_at=now.replace(microsecond=0) + _seconds(lifetime_s),
                used=False,
            )
        )
    return raw


def peek_launch(raw: str):  # noqa: ANN201
    if not raw or len(raw) > 512:
        return None
    with engine().connect() as conn:
        row = conn.execute(select(auth_launch).where(auth_launch.c.launch_hash == token_hash(raw))).first()
    if row is None or row.used or row.expires_at <= utcnow():
        return None
    return row


def consume_launch(raw: str):  # noqa: ANN201
    """The launch context, marking it used; None when unknown, used or expired."""
    if not raw or len(raw) > 512:
        return None
    h = token_hash(raw)
    with unit_of_work(engine(), write=True) as conn:
        row = conn.execute(select(auth_launch).where(auth_launch.c.launch_hash == h)).first()
        if row is None or row.used or row.expires_at <= utcnow():
            return None
        taken = conn.execute(
            update(auth_launch).where(auth_launch.c.launch_hash == h, auth_launch.c.used.is_(False)).values(used=True)
        ).rowcount
    return row if taken == 1 else None


__all__ = ["SmartServer", "GrantUser", "register_launch", "consume_launch"]

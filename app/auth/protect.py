"""The resource server side of SMART: the bearer check on every FHIR request.

``check_bearer`` runs before every request of the FHIR blueprint: ``Authorization: Bearer
<token>`` -> ``lookup_access_token`` -> a :class:`~app.auth.permission.Permission` kept on
``flask.g`` and put on the request's FhirContext (``apply``), which the interactions compile into
their queries.  Open without a token: ``/fhir/metadata``, ``/fhir/.well-known/*`` and CORS
preflights (``OPTIONS``).

``AUTH_REQUIRED`` (default true) makes every other FHIR request need a valid token: none, an
unknown, expired or revoked one is a 401 with ``WWW-Authenticate`` and an OperationOutcome.  With
``AUTH_REQUIRED=false`` (an explicit open demo) a request without a token runs unrestricted; a
request that does send a token is still held to it.
"""

from __future__ import annotations

import logging

from flask import current_app, g, request

from app.auth.permission import Permission
from app.fhir.errors import FhirError

log = logging.getLogger("results_repo.auth")

OPEN_ENDPOINTS = frozenset({"fhir.metadata", "fhir.metadata_other"})
OPEN_PREFIXES = ("/fhir/.well-known/",)

OPEN_WARNING = (
    "\n" + "!" * 78 + "\n"
    "!! AUTH_REQUIRED is off: the FHIR API is OPEN. Anyone who can reach this port reads\n"
    "!! and writes every patient's data without a token. A demo on 127.0.0.1 only;\n"
    "!! never with real patient data.\n" + "!" * 78
)


class Unauthorized(FhirError):
    """401 with a ``WWW-Authenticate`` challenge (RFC 6750 section 3)."""

    def __init__(self, realm: str, error: str | None, text: str) -> None:
        super().__init__(401, "login", text)
        challenge = f'Bearer realm="{realm}"'
        if error:
            challenge += f', error="{error}", error_description="{text}"'
        self.headers = {"WWW-Authenticate": challenge}


def _realm() -> str:
    return current_app.config.get("PUBLIC_BASE_URL") or (request.host_url.rstrip("/") + "/fhir")


def bearer_token() -> str | None:
    """The raw bearer token of the request, or None; a malformed header is a 401."""
    header = request.headers.get("Authorization")
    if header is None:
        return None
    scheme, _, raw = header.strip().partition(" ")
    raw = raw.strip()
    if scheme.lower() != "bearer" or not raw or " " in raw:
        raise Unauthorized(_realm(), "invalid_request", "The Authorization header must be 'Bearer <access token>'.")
    return raw


def check_bearer() -> None:
    """``before_request`` of the FHIR blueprint."""
    req = request._get_current_object()
    gl = g._get_current_object()
    app_ = current_app._get_current_object()
    gl.fhir_permission = None
    if req.method == "OPTIONS" or req.endpoint in OPEN_ENDPOINTS or req.path.startswith(OPEN_PREFIXES):
        return
    raw = bearer_token()
    if raw is None:
        if not app_.config.get("AUTH_REQUIRED", True):
            return
        raise Unauthorized(_realm(), None, "This FHIR server needs an access token (Authorization: Bearer ...); "
                                           "see /fhir/.well-known/smart-configuration.")
    from app.auth.tokens import lookup_access_token

    state = app_.extensions["results_repo"]
    grant = lookup_access_token(state.engine, raw, float(app_.config.get("TOKEN_CACHE_SECONDS", 60.0)))
    if grant is None:
        raise Unauthorized(_realm(), "invalid_token", "The access token is unknown, expired or revoked.")
    gl.fhir_permission = Permission.from_grant(grant, state.registry)
    # Sensitive results: the labels this token may not see; X-Break-Glass (app/protect/enforce.py).
    from app.protect.enforce import apply_sensitivity

    apply_sensitivity(gl.fhir_permission, grant)


def apply(ctx):
    """Put the request's permission and caller identity on a FhirContext."""
    gl = g._get_current_object()
    perm = gl.get("fhir_permission")
    if perm is not None:
        ctx.permission = perm
        # Paging cursors are bound to the token (and its client) that made them.
        ctx.caller = f"token:{perm.client_id}:{perm.token_id}"
    return ctx


def check_startup(app, env: str) -> None:
    """At create_app: refuse an open API in production, shout about it elsewhere."""
    if app.config.get("AUTH_REQUIRED", True):
        return
    if env == "production":
        raise RuntimeError("AUTH_REQUIRED=false (an open API) is refused when RESULTS_REPO_ENV=production.")
    if not app.config.get("TESTING"):
        log.warning(OPEN_WARNING)

"""HTTP endpoints of the authorization server (blueprint ``smart_auth``) and its wiring.

``/auth/authorize`` (GET and POST) validates the request with authlib first: a request with an
unknown client or a redirect URI the client did not register gets an HTML error page and is never
redirected; other errors go back to the registered redirect URI with ``error`` and ``state``.
Then the user logs in (``step=login``), and approves, narrows or denies the scopes and picks a
patient when needed (``step=consent``). Every form carries a CSRF token bound to the session; the
OAuth parameters travel in the form's action URL and are validated again on every step.
"""

from __future__ import annotations

import hmac
import json
import os
import secrets
import time
from urllib.parse import urlencode, urlsplit

from authlib.oauth2 import OAuth2Error
from authlib.oauth2.rfc6749 import InvalidClientError
from flask import Blueprint, Flask, Response, current_app, g, render_template, request, session
from marshmallow import EXCLUDE, Schema, ValidationError, fields, validate
from sqlalchemy import and_, select

from app.auth import clients as client_store
from app.auth import discovery
from app.auth.keys import load_signing_key, public_jwks
from app.auth.server import (
    GrantUser,
    SmartServer,
    consume_launch,
    engine,
    fhir_base,
    peek_launch,
    register_launch,
)
from app.auth.tokens import lookup_access_token
from app.auth.users import LockedOut, authenticate, get_user

bp = Blueprint("smart_auth", __name__, template_folder="templates")

OAUTH_PARAMS = (
    "response_type",
    "client_id",
    "redirect_uri",
    "scope",
    "state",
    "aud",
    "code_challenge",
    "code_challenge_method",
    "launch",
    "nonce",
)
LOGIN_MAX_AGE_S = 3600
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
SCOPE_TEXT = {
    "openid": "Confirm who you are (OpenID Connect)",
    "fhirUser": "Know your user record (practitioner or patient)",
    "profile": "Know your user profile",
    "launch": "Use the context the EPR launched it in",
    "launch/patient": "Choose the patient it works on",
    "launch/encounter": "Know the current encounter",
    "offline_access": "Keep access after you log out (until you revoke it)",
    "online_access": "Keep access while you are logged in",
}


def server() -> SmartServer:
    return current_app.extensions["smart_auth"]


# ---------------------------------------------------------------------------------------------
# Discovery, JWKS, style (open CORS)


@bp.get("/fhir/.well-known/smart-configuration")
def smart_configuration() -> Response:
    return _json(discovery.smart_configuration(fhir_base()))


@bp.get("/.well-known/openid-configuration")
@bp.get("/fhir/.well-known/openid-configuration")
def openid_configuration() -> Response:
    return _json(discovery.openid_configuration(fhir_base()))


@bp.get("/auth/jwks")
def jwks() -> Response:
    return _json(public_jwks(server().signing_key))


@bp.get("/auth/smart-style.json")
def smart_style() -> Response:
    return _json(
        {
            "color_background": "#f5f5f5",
            "color_error": "#d5281b",
            "color_highlight": "#005eb8",
            "color_modal_backdrop": "",
            "color_success": "#007f3b",
            "color_text": "#212b32",
            "dim_border_radius": "4px",
            "dim_font_size": "16px",
            "dim_spacing_size": "16px",
            "font_family_body": "Arial, sans-serif",
            "font_family_heading": "Arial, sans-serif",
        }
    )


def _json(body: dict, status: int = 200, headers: dict | None = None) -> Response:
    return Response(json.dumps(body), status=status, mimetype="application/json", headers=headers)


# ---------------------------------------------------------------------------------------------
# Authorize: login, consent, patient picker


def _csrf_token() -> str:
    tok = session.get("csrf")
    if not tok:
        tok = session["csrf"] = secrets.token_urlsafe(32)
    return tok


def _csrf_ok() -> bool:
    sent = request.form.get("csrf_token", "")
    have = session.get("csrf", "")
    return bool(sent) and bool(have) and hmac.compare_digest(sent, have)


def _oauth_pairs() -> list[tuple[str, str]]:
    return [(k, v) for k in OAUTH_PARAMS for v in request.values.getlist(k)]


def _action_url() -> str:
    return request.path + "?" + urlencode(_oauth_pairs())


def _page(template: str, status: int = 200, **ctx) -> Response:
    html = render_template(template, csrf_token=_csrf_token(), action=_action_url(), oauth_pairs=_oauth_pairs(), **ctx)
    # Browsers apply form-action to the redirects that follow a form post too: the consent
    # form's answer is a redirect to the app, so the (already validated) redirect URI's origin
    # must be allowed there, or Allow/Deny never reaches the app.
    targets = " ".join(["'self'", *_redirect_origin()])
    headers = {
        **NO_STORE,
        "X-Frame-Options": "DENY",
        "Content-Security-Policy": f"default-src 'none'; style-src 'unsafe-inline'; form-action {targets}; "
                                   "frame-ancestors 'none'",
        "Referrer-Policy": "no-referrer",
    }
    return Response(html, status=status, mimetype="text/html", headers=headers)


def _redirect_origin() -> list[str]:
    """The origin of the redirect URI authlib validated for this request (none on error pages)."""
    uri = g.get("smart_redirect_uri")
    if not uri:
        return []
    p = urlsplit(uri)
    return [f"{p.scheme}://{p.netloc}"] if p.scheme in ("http", "https") and p.netloc else []


def _session_user():  # noqa: ANN202
    name, at = session.get("auth_user"), session.get("auth_at", 0)
    if not name or time.time() - at > LOGIN_MAX_AGE_S:
        return None
    return get_user(engine(), name)


@bp.route("/auth/authorize", methods=["GET", "POST"])
def authorize() -> Response:
    srv = server()
    try:
        grant = srv.get_consent_grant(end_user=None)
    except OAuth2Error as error:
        if error.redirect_uri:  # the client and its redirect URI are known good
            return srv.handle_error_response(None, error)
        return _page("error.html", status=400, error=error.error, description=error.get_error_description())
    client = grant.request.client
    g.smart_redirect_uri = grant.redirect_uri or client.get_default_redirect_uri()
    allowed = (grant.request.scope or "").split()
    step = request.form.get("step") if request.method == "POST" else None

    if step and not _csrf_ok():
        return _page("error.html", status=400, error="invalid_request",
                     description="The form expired or did not come from this site (CSRF check failed). Start again.")

    if step == "login":
        username = request.form.get("username", "")
        try:
            user = authenticate(engine(), username, request.form.get("password", ""))
        except LockedOut:
            return _page("login.html", status=429, client=client, username=username,
                         message="Too many failed attempts: this account is locked for 15 minutes.")
        if user is None:
            return _page("login.html", status=401, client=client, username=username,
                         message="The user name or password is wrong.")
        session.clear()
        session["auth_user"], session["auth_at"] = user.username, time.time()
        session["csrf"] = secrets.token_urlsafe(32)
        # Post/Redirect/Get: reloading the consent page never re-sends the password
        return Response(status=303, headers={"Location": _action_url(), **NO_STORE})

    user = _session_user()
    if user is None:
        return _page("login.html", client=client, username="", message=None)

    if step != "consent":
        return _consent_page(client, allowed, user)

    if request.form.get("decision") != "allow":
        return srv.create_authorization_response(grant_user=None, grant=grant)
    chosen = [s for s in allowed if s in request.form.getlist("grant_scope")]
    if not chosen:
        return _consent_page(client, allowed, user, message="Choose at least one permission, or deny.")
    patient = encounter = None
    banner = True
    own = user.fhir_user.split("/", 1)[1] if user.fhir_user.startswith("Patient/") else None
    launch = request.values.get("launch")
    ctx = peek_launch(launch) if launch else None
    if launch and ctx is None:
        return _launch_gone()
    if ctx is not None:
        if (ctx.fhir_user and ctx.fhir_user != user.fhir_user) or (own and ctx.patient and ctx.patient != own):
            return _page("error.html", status=403, error="access_denied",
                         description="This launch was registered for another user.")
        patient, encounter = ctx.patient, ctx.encounter
        banner = bool(ctx.need_patient_banner)
    if patient is None and own:
        patient = own  # a patient user's tokens always carry their own record as context
    if "launch/patient" in chosen and patient is None:
        picked = request.form.get("patient", "")
        if not picked or not _patient_exists(picked):
            return _consent_page(client, allowed, user, message="Choose a patient.")
        patient = picked
    if "launch/encounter" not in chosen and "launch" not in chosen:
        encounter = None
    if launch:  # everything checked: now the launch is used up (once, even under a race)
        if consume_launch(launch) is None:
            return _launch_gone()
        g.smart_launch_consumed = launch  # the final validation below must not refuse it
    gu = GrantUser(user=user, scope=" ".join(chosen), patient=patient, encounter=encounter, need_patient_banner=banner)
    return srv.create_authorization_response(grant_user=gu, grant=grant)


def _launch_gone() -> Response:
    return _page("error.html", status=400, error="invalid_request",
                 description="This launch has expired or was already used: launch the app again from the EPR.")


def _consent_page(client, allowed: list[str], user, message: str | None = None) -> Response:  # noqa: ANN001
    launch = request.values.get("launch")
    ctx = peek_launch(launch) if launch else None
    needs_picker = (
        "launch/patient" in allowed and not user.fhir_user.startswith("Patient/") and not (ctx and ctx.patient)
    )
    query = request.values.get("patient_q", "").strip()[:64]
    patients = _list_patients(query) if needs_picker else []
    items = [(s, SCOPE_TEXT.get(s, _describe(s))) for s in allowed]
    return _page("consent.html", client=client, user=user, scopes=items, needs_picker=needs_picker,
                 patients=patients, patient_q=query, message=message)


def _describe(scope: str) -> str:
    ctx, _, rest = scope.partition("/")
    who = {"patient": "the chosen patient's", "user": "your", "system": "all"}.get(ctx, ctx)
    typ, _, perm = rest.partition(".")
    perm = perm.split("?", 1)[0]
    verbs = {"read": "read", "write": "write", "*": "read and write"}.get(perm)
    if verbs is None:
        names = {"c": "create", "r": "read", "u": "update", "d": "delete", "s": "search"}
        verbs = ", ".join(names[c] for c in perm if c in names)
    what = "all record types" if typ == "*" else typ
    return f"{verbs.capitalize()} {who} {what}" + (f" ({scope.split('?', 1)[1]})" if "?" in scope else "")


def _patient_exists(pid: str) -> bool:
    from app.storage.tables import resource

    with engine().connect() as conn:
        return conn.execute(
            select(resource.c.rid).where(
                resource.c.res_type == "Patient", resource.c.res_id == pid[:64], resource.c.deleted.is_(False)
            )
        ).first() is not None


def _list_patients(query: str, limit: int = 25) -> list[dict]:
    """Patients from the repository for the picker (name prefix search on the string index)."""
    from app.storage.tables import resource, resource_version, sp_string

    stmt = (
        select(resource.c.res_id, resource_version.c.content)
        .join(resource_version, and_(resource_version.c.rid == resource.c.rid,
                                     resource_version.c.version == resource.c.version))
        .where(resource.c.res_type == "Patient", resource.c.deleted.is_(False))
    )
    if query:
        norm = query.lower()
        sub = select(sp_string.c.rid).where(
            sp_string.c.res_type == "Patient",
            sp_string.c.param.in_(("name", "family", "given")),
            sp_string.c.value_norm.startswith(norm, autoescape=True),
        )
        stmt = stmt.where(resource.c.rid.in_(sub))
    stmt = stmt.order_by(resource.c.res_id).limit(limit)
    out = []
    with engine().connect() as conn:
        for pid, content in conn.execute(stmt):
            try:
                res = json.loads(content)
            except (TypeError, ValueError):
                res = {}
            out.append({"id": pid, "label": _patient_label(res, pid)})
    return out


def _patient_label(res: dict, pid: str) -> str:
    name = ""
    for n in res.get("name") or []:
        if isinstance(n, dict):
            name = n.get("text") or " ".join([*(n.get("given") or []), n.get("family") or ""]).strip()
            if name:
                break
    born = res.get("birthDate")
    nhs = next(
        (i.get("value") for i in res.get("identifier") or []
         if isinstance(i, dict) and i.get("system") == "https://fhir.nhs.uk/Id/nhs-number"),
        None,
    )
    bits = [name or "(no name)"]
    if born:
        bits.append(f"born {born}")
    if nhs:
        bits.append(f"NHS {nhs}")
    return ", ".join(bits) + f" [{pid}]"


# ---------------------------------------------------------------------------------------------
# Token, introspection, revocation (CORS only for registered app origins)


def _oauth_endpoint(call) -> Response:  # noqa: ANN001
    """Run an authlib endpoint; errors raised before authlib's own handling (e.g. plain HTTP
    on a non-loopback address: ``insecure_transport``) still answer as RFC 6749 section 5.2."""
    if request.method == "OPTIONS":
        return Response(status=204)
    try:
        resp = call()
    except OAuth2Error as error:
        status, body, headers = error()
        resp = Response(json.dumps(dict(body)), status=status, headers=headers, mimetype="application/json")
    resp.headers.update(NO_STORE)
    return resp


@bp.route("/auth/token", methods=["POST", "OPTIONS"])
def token() -> Response:
    return _oauth_endpoint(lambda: server().create_token_response())


@bp.route("/auth/introspect", methods=["POST", "OPTIONS"])
def introspect() -> Response:
    return _oauth_endpoint(lambda: server().create_endpoint_response("introspection"))


@bp.route("/auth/revoke", methods=["POST", "OPTIONS"])
def revoke() -> Response:
    return _oauth_endpoint(lambda: server().create_endpoint_response("revocation"))


# ---------------------------------------------------------------------------------------------
# EHR launch registration


class LaunchSchema(Schema):
    class Meta:
        unknown = EXCLUDE  # form posts also carry the client's credentials (client_assertion ...)

    patient = fields.String(load_default=None, validate=validate.Regexp(r"^[A-Za-z0-9\-.]{1,64}$"))
    encounter = fields.String(load_default=None, validate=validate.Regexp(r"^[A-Za-z0-9\-.]{1,64}$"))
    fhirUser = fields.String(  # noqa: N815 (the SMART name)
        load_default=None, validate=validate.Regexp(r"^(Practitioner|Patient)/[A-Za-z0-9\-.]{1,64}$")
    )
    need_patient_banner = fields.Boolean(load_default=True)


def _launch_caller() -> str | None:
    """The client registering a launch: a backend client's access token, or a confidential
    client authenticating as at the token endpoint (client secret or private_key_jwt)."""
    auth = request.headers.get("Authorization", "")
    if auth[:7].lower() == "bearer ":
        grant = lookup_access_token(engine(), auth[7:].strip())
        if grant is None:
            return None
        client = client_store.get_client(engine(), grant.client_id)
        if client is None or client.is_public or not any(s.startswith("system/") for s in grant.scope.split()):
            return None
        return client.client_id
    srv = server()
    try:
        req = srv.create_oauth2_request(None)
        client = srv.authenticate_client(req, ["client_secret_basic", "private_key_jwt"], endpoint="token")
    except (OAuth2Error, InvalidClientError):
        return None
    return None if client.is_public else client.client_id


@bp.post("/auth/launch")
def launch() -> Response:
    caller = _launch_caller()
    if caller is None:
        return _json(
            {"error": "invalid_client", "error_description": "Authenticate with a system token or as a confidential client."},
            401,
            {**NO_STORE, "WWW-Authenticate": 'Bearer realm="results-repo"'},
        )
    body = request.get_json(silent=True) if request.is_json else request.form.to_dict()
    try:
        data = LaunchSchema().load(body or {})
    except ValidationError as exc:
        return _json({"error": "invalid_request", "error_description": json.dumps(exc.messages)}, 400, NO_STORE)
    if not data["patient"] and not data["encounter"]:
        return _json({"error": "invalid_request", "error_description": "Give a patient and/or an encounter."}, 400, NO_STORE)
    if data["patient"] and not _patient_exists(data["patient"]):
        return _json({"error": "invalid_request", "error_description": "No such Patient."}, 400, NO_STORE)
    value = register_launch(engine(), caller, data["patient"], data["encounter"], data["fhirUser"],
                            need_patient_banner=data["need_patient_banner"])
    from app.auth.server import LAUNCH_LIFETIME_S

    return _json({"launch": value, "expires_in": LAUNCH_LIFETIME_S}, 201, NO_STORE)


# ---------------------------------------------------------------------------------------------
# Wiring


OPEN_CORS = ("/fhir/metadata", "/fhir/.well-known/", "/.well-known/", "/auth/jwks", "/auth/smart-style.json")
CLIENT_CORS = ("/auth/token", "/auth/introspect", "/auth/revoke")


def _cors(resp: Response) -> Response:
    req = request._get_current_object()
    path = req.path
    origin = req.headers.get("Origin")
    if any(path == p or (p.endswith("/") and path.startswith(p)) for p in OPEN_CORS):
        resp.headers["Access-Control-Allow-Origin"] = "*"
        if req.method == "OPTIONS":
            resp.headers["Access-Control-Allow-Methods"] = "GET, OPTIONS"
            resp.headers["Access-Control-Allow-Headers"] = "Accept, Authorization, Content-Type"
    elif path in CLIENT_CORS or path.startswith("/fhir/") or path == "/fhir":
        # token endpoints and the FHIR API: only the origins of registered apps' redirect URIs
        resp.headers.add("Vary", "Origin")
        if origin and client_store.registered_origin(engine(), origin):
            resp.headers["Access-Control-Allow-Origin"] = origin
            if req.method == "OPTIONS":
                methods = "POST, OPTIONS" if path in CLIENT_CORS else "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"
                resp.headers["Access-Control-Allow-Methods"] = methods
                resp.headers["Access-Control-Allow-Headers"] = FHIR_CORS_HEADERS
                resp.headers["Access-Control-Max-Age"] = "600"
            elif path not in CLIENT_CORS:
                resp.headers["Access-Control-Expose-Headers"] = "Location, Content-Location, ETag, Last-Modified, WWW-Authenticate"
    return resp


FHIR_CORS_HEADERS = "Authorization, Content-Type, Accept, If-Match, If-None-Exist, If-None-Match, If-Modified-Since, Prefer"


def init_app(app: Flask) -> None:
    """Load the signing key (production refuses to start without one), build the server and
    register the routes."""
    production = os.environ.get("RESULTS_REPO_ENV", "development").lower() == "production"
    key = load_signing_key(app.config, app.instance_path, production)
    if not app.config.get("SESSION_COOKIE_SAMESITE"):
        app.config["SESSION_COOKIE_SAMESITE"] = "Lax"
    if str(app.config.get("PUBLIC_BASE_URL") or "").startswith("https://"):
        app.config["SESSION_COOKIE_SECURE"] = True
    app.extensions["smart_auth"] = SmartServer(app, key)
    app.register_blueprint(bp)
    app.after_request(_cors)

"""The HTTP side of the audit trail (Flask): request ids, the per-request recorder, one event per
request (and per Bundle entry), the token endpoint and logins, and the read-only AuditEvent API.

Every response carries ``X-Request-Id`` (the caller's, when it is a sane token, else a new one).
Requests to the FHIR API (except ``/metadata`` and ``/.well-known``), the token endpoint and
login form posts are recorded.  Reads are written before the response leaves, in a transaction of
their own (one statement on PostgreSQL); changes were already written inside their own
transactions by the interactions and the patient identity operations (app/audit/recorder.py).
If a read's record cannot be written, the caller gets a 500 instead of the data: no unrecorded
access (fail closed).
"""

from __future__ import annotations

import base64
import logging
import re
import uuid
from functools import partial
from urllib.parse import urlencode

import orjson
from flask import Blueprint, Flask, Response, current_app, g, has_request_context, request
from werkzeug.exceptions import HTTPException

from app.audit.events import ACTIONS, AuditRecord, Who, outcome_for
from app.audit.patients import patients_in, patients_in_file
from app.audit.recorder import Followed, Recorder
from app.audit.store import store
from app.db.engine import read_snapshot
from app.search.paging import open_search

log = logging.getLogger("results_repo.audit")

# The functions that run on every request bind the real request, ``g`` and app once
# (``_get_current_object()``): every attribute read through a werkzeug LocalProxy first fails a
# normal lookup, which makes CPython raise and format an AttributeError, before the proxy
# forwards it (~50 such reads per search request before this).

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,64}$")
_OPEN = ("fhir.metadata", "fhir.metadata_other")
_SEARCH = {"fhir.type_search": "search-type", "fhir.type_search_post": "search-type",
           "fhir.system_search": "search-system", "fhir.compartment_search": "search-type",
           "fhir.audit_search": "search-type", "fhir.audit_search_post": "search-type"}
_SIMPLE = {"fhir.read": "read", "fhir.vread": "vread", "fhir.audit_read": "read",
           "fhir.instance_history": "history-instance", "fhir.type_history": "history-type",
           "fhir.system_history": "history-system",
           "fhir.create": "create", "fhir.update": "update", "fhir.conditional_update": "update",
           "fhir.patch": "patch", "fhir.conditional_patch": "patch",
           "fhir.delete": "delete", "fhir.conditional_delete": "delete", "fhir.audit_write": "operation"}
_EXPORT = {"fhir.bulk_export_system": "export", "fhir.bulk_export_patient": "export",
           "fhir.bulk_export_group": "export", "fhir.bulk_file": "export-download"}
# form fields of a token request that may be recorded (never codes, verifiers, secrets, assertions)
_IDENTITY_OPS = {"fhir.patient_merge": "merge", "fhir.patient_unmerge": "unmerge",
                 "fhir.patient_correct_nhs_number": "correct-nhs-number"}
_TOKEN_FIELDS = ("grant_type", "scope", "client_id", "redirect_uri", "client_assertion_type")
_PATIENT_PARAMS = ("patient", "subject", "subject:Patient", "_id")


def enabled() -> bool:
    app_ = current_app._get_current_object()
    return bool(app_.config.get("AUDIT_ENABLED", True))


# ---- per request ------------------------------------------------------------------------------
def _begin() -> None:
    req = request._get_current_object()
    gl = g._get_current_object()
    rid = req.headers.get("X-Request-Id", "")
    gl.request_id = rid if _REQUEST_ID.match(rid) else uuid.uuid4().hex
    if enabled() and _audited():
        gl.audit = Recorder(gl.request_id, _who)


def _audited() -> bool:
    req = request._get_current_object()
    path = req.path
    if req.method == "OPTIONS":
        return False
    if path == "/fhir" or path.startswith("/fhir/"):
        return req.endpoint not in _OPEN and not path.startswith("/fhir/.well-known/")
    return path == "/auth/token" or (path == "/auth/authorize" and req.method == "POST"
                                     and req.form.get("step") == "login")


def _who() -> Who:
    req = request._get_current_object()
    gl = g._get_current_object()
    perm = gl.get("fhir_permission")
    purpose = "BTG" if gl.get("break_glass") else gl.get("purpose_of_use")
    if perm is None:
        return Who(source_ip=req.remote_addr, purpose=purpose)
    return Who(
        client_id=perm.client_id,
        username=getattr(perm, "username", None),  # when the Permission carries it
        fhir_user=perm.fhir_user,
        token_id=perm.token_id,
        scope=" ".join(sc.raw for sc in perm.scopes) or None,
        source_ip=req.remote_addr,
        purpose=purpose,
    )


def attach(ctx):  # noqa: ANN001, ANN201 - a FhirContext
    """Give the request's FhirContext its recorder (app/api/fhir.py ``ctx()``), and the recorder
    the means to open the request's search links as its caller (the context knows the caller)."""
    rec: Recorder | None = g.get("audit")
    ctx.audit = rec
    if rec is not None:
        rec.open_link = partial(open_search, ctx.secret_key, ctx.caller)
    return ctx


def _finish(resp: Response) -> Response:
    gl = g._get_current_object()
    app_ = current_app._get_current_object()
    resp.headers["X-Request-Id"] = gl.get("request_id") or uuid.uuid4().hex
    rec: Recorder | None = gl.get("audit")
    if rec is None:
        return resp
    gl.audit = None
    try:
        records = _records(rec, resp)
        store(app_.extensions["results_repo"].engine, records,
              synchronous=bool(app_.config.get("AUDIT_SYNC_READS", False)))
    except Exception as exc:  # noqa: BLE001 - the response decides below
        log.error("audit record could not be written (%s, request %s)", type(exc).__name__, rec.request_id)
        if resp.status_code < 400:
            return _unrecorded(rec.request_id)
    return resp


def _unrecorded(request_id: str) -> Response:
    body = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "exception",
            "diagnostics": f"The access could not be recorded in the audit trail (request {request_id}); "
                           "nothing is returned without a record. Try again."}]}
    out = Response(orjson.dumps(body), status=500, content_type="application/fhir+json; charset=utf-8")
    out.headers["X-Request-Id"] = request_id
    return out


def _records(rec: Recorder, resp: Response) -> list[AuditRecord]:
    req = request._get_current_object()
    status = resp.status_code
    out = list(rec.custom)
    if req.path.startswith("/auth/"):
        out.append(_auth_record(rec, resp))
        return out
    ep = req.endpoint or ""
    if ep == "fhir.base_bundle":
        kind = rec.bundle_type or "batch"
        if status < 400 or kind == "batch":
            out.extend(rec.pending)  # a failed transaction returned nothing: its GET entries too
        out.append(_event(rec, kind, status, detail={"description": _error_text(resp)} if status >= 400 else None))
        return out
    if ep in _SIMPLE and ACTIONS.get(_SIMPLE[ep]) in ("C", "U", "D") and status < 400 and rec.changes_written:
        return out  # written with the change, in its transaction
    if ep in _IDENTITY_OPS and status < 400 and rec.changes_written:
        return out  # $merge, $unmerge, $correct-nhs-number: written inside the operation's transaction
    out.append(_request_record(rec, ep, resp))
    return out


def _event(rec: Recorder, subtype: str, status: int, *, type_: str = "rest", res_type: str | None = None,
           entity: str | None = None, query: str | None = None, detail: dict | None = None,
           patients: set[str] | None = None) -> AuditRecord:
    return AuditRecord(type_, subtype, ACTIONS.get(subtype, "E"), outcome_for(status), rec.request_id, rec.who,
                       status=status, res_type=res_type, entity=entity, query=query, detail=detail,
                       patients=patients or set())


def _query() -> str | None:
    req = request._get_current_object()
    q = req.query_string.decode("utf-8", "replace")
    if req.method == "POST" and req.mimetype == "application/x-www-form-urlencoded":
        form = urlencode(_form_items(req))
        q = "&".join(p for p in (q, form) if p)
    return q or None


def _form_items(req) -> list[tuple[str, str]]:  # noqa: ANN001
    """The form's fields; none when the body broke the limits (the 413 already answered it:
    reading ``form`` again would raise again, and the record would be lost)."""
    try:
        return list(req.form.items(multi=True))
    except HTTPException:
        return []


def _link_path(ep: str, args: dict) -> str | None:
    """The path a search request's links are bound to, relative to the base (as
    app.interactions.search and app.audit.query seal them)."""
    if ep in ("fhir.type_search", "fhir.type_search_post"):
        return args.get("res_type")
    if ep == "fhir.system_search":
        return ""
    if ep == "fhir.compartment_search":
        return f"{args.get('comp_type')}/{args.get('comp_id')}/{args.get('res_type')}"
    if ep in ("fhir.audit_search", "fhir.audit_search_post"):
        return "AuditEvent"
    return None


def _followed(rec: Recorder, ep: str, args: dict) -> Followed | None:
    """A search request that follows a paging link: the search the link carries (never the token)."""
    req = request._get_current_object()
    params = list(req.args.items(multi=True))
    if req.method == "POST" and req.mimetype == "application/x-www-form-urlencoded":
        params += _form_items(req)
    return rec.followed(_link_path(ep, args), params)


def _requested_patients(args: dict, params: list[tuple[str, str]] | None = None) -> set[str]:
    """Patients the request names (URL or search parameters; ``params``: the search a followed
    paging link carries): recorded even when it fails."""
    req = request._get_current_object()
    out: set[str] = set()
    if args.get("res_type") == "Patient" and args.get("res_id"):
        out.add(args["res_id"])
    if args.get("comp_type") == "Patient" and args.get("comp_id"):
        out.add(args["comp_id"])
    res_type = args.get("res_type")
    for k, v in req.args.items(multi=True) if params is None else params:
        if k in _PATIENT_PARAMS or k.startswith(("patient", "subject")):
            for part in v.split(","):
                part = part.rsplit("/_history/", 1)[0]
                if "Patient/" in part:
                    out.add(part.rsplit("Patient/", 1)[1][:64])
                elif k.split(":")[0] == "patient" or (k == "_id" and res_type == "Patient"):
                    out.add(part[:64])
    return {p for p in out if p and "/" not in p}


def _error_text(resp: Response) -> str | None:
    if resp.status_code < 400 or resp.direct_passthrough:
        return None
    try:
        issue = orjson.loads(resp.get_data())["issue"][0]
        return f"{issue.get('code')}: {issue.get('diagnostics', '')}"[:500]
    except (ValueError, KeyError, IndexError, TypeError):
        return None


def _request_record(rec: Recorder, ep: str, resp: Response) -> AuditRecord:
    req = request._get_current_object()
    status = resp.status_code
    args = dict(req.view_args or {})
    res_type = args.get("res_type")
    detail = {"description": _error_text(resp)} if status >= 400 else None
    patients = _requested_patients(args)
    body = None if resp.direct_passthrough or status >= 400 else resp.get_data()
    if ep in _EXPORT or ep == "fhir.bulk_status":
        return _export_record(rec, ep, args, status, detail)
    if ep in _SEARCH or ep in _SIMPLE:
        subtype = _SEARCH.get(ep) or _SIMPLE[ep]
        entity = None
        if args.get("res_id"):
            entity = f"{res_type}/{args['res_id']}" + (f"/_history/{args['version']}" if args.get("version") else "")
        elif ep == "fhir.compartment_search":
            entity = f"Patient/{args.get('comp_id')}"
        elif ep == "fhir.audit_read":
            entity = f"AuditEvent/{args.get('event_id')}"
        # A followed paging link: the search it carries, as page 1 records it (decision 0015).
        followed = _followed(rec, ep, args) if ep in _SEARCH else None
        if followed is not None:
            patients |= _requested_patients(args, followed.params)
            if followed.page:
                detail = {**(detail or {}), "page": followed.page}
        if ep.startswith("fhir.audit_"):
            res_type, patients, body = "AuditEvent", set(), None  # reads of the trail: no patient fan-out
        elif ep == "fhir.system_search":
            res_type = (dict(followed.params).get("_type") if followed is not None
                        else req.values.get("_type")) or None
        if followed is not None:
            query = followed.query
        else:
            query = _query() if (subtype.startswith("search") or subtype.startswith("history")
                                 or ep.startswith("fhir.conditional") or ep == "fhir.audit_write") else None
        patients |= patients_in(body)
        return _event(rec, subtype, status, res_type=res_type, entity=entity, query=query, detail=detail,
                      patients=patients)
    if ep in _IDENTITY_OPS:  # a refused or failed $merge, $unmerge, $correct-nhs-number, or a preview
        entity = f"Patient/{args['res_id']}" if args.get("res_id") else None
        return _event(rec, _IDENTITY_OPS[ep], status, res_type="Patient", entity=entity,
                      detail=detail, patients=patients | patients_in(body) | rec.named)
    # anything else under /fhir (an unknown URL, a method not allowed)
    return _event(rec, "operation", status, query=req.full_path[:2000], detail=detail)


def _export_record(rec: Recorder, ep: str, args: dict, status: int, detail: dict | None) -> AuditRecord:
    job = args.get("job_id")
    if ep == "fhir.bulk_status":
        subtype = "export-cancel" if request.method == "DELETE" else "export-status"
        return _event(rec, subtype, status, type_="110106", entity=f"export/{job}", detail=detail)
    if ep == "fhir.bulk_file":
        patients: set[str] = set()
        name = args.get("name", "")
        if status in (200, 206):  # a Range request (206) gets the whole file's set: never fewer
            from app.bulk.jobs import file_patients
            from app.bulk.settings import settings_of

            # the set the worker recorded while writing the file (the same scan, done once)
            stored = file_patients(current_app.extensions["results_repo"].engine, job, name)
            if stored is not None:
                patients = stored
            else:  # written before migration 0007, or with the audit off: scan the file
                path = settings_of(current_app).export_dir / job / name
                if path.is_file():
                    patients = patients_in_file(path)
        return _event(rec, "export-download", status, type_="110106", entity=f"export/{job}/{name}",
                      res_type=name.split(".")[0] or None, detail=detail, patients=patients)
    level = {"fhir.bulk_export_group": "group", "fhir.bulk_export_patient": "patient"}.get(ep, "system")
    entity = f"Group/{args['group_id']}" if args.get("group_id") else None
    return _event(rec, "export", status, type_="110106", entity=entity, query=_query(),
                  detail={**(detail or {}), "level": level})


# ---- token endpoint and logins ------------------------------------------------------------------
def _auth_record(rec: Recorder, resp: Response) -> AuditRecord:
    status = resp.status_code
    if request.path == "/auth/authorize":  # a login form post: 303 = logged in
        ok = status in (302, 303)
        return AuditRecord("110114", "110122", "E", 0 if ok else outcome_for(401 if status < 400 else status),
                           rec.request_id, Who(username=(request.form.get("username") or "")[:128] or None,
                                               client_id=request.values.get("client_id"),
                                               source_ip=request.remote_addr),
                           status=status, detail=None if ok else {"description": "login refused"})
    issued = g.get("audit_token") or {}
    error = None
    if status >= 400:
        try:
            body = orjson.loads(resp.get_data())
            error = f"{body.get('error')}: {body.get('error_description', '')}"[:500]
        except (ValueError, AttributeError):
            error = None
    client_id = issued.get("client_id") or _claimed_client()
    who = Who(client_id=client_id, username=issued.get("username"), fhir_user=issued.get("fhir_user"),
              token_id=issued.get("token_id"), scope=issued.get("scope"), source_ip=request.remote_addr)
    form = [(k, v) for k in _TOKEN_FIELDS for v in request.form.getlist(k)]
    detail = {"grant_type": request.form.get("grant_type", "")[:40]}
    if error:
        detail["description"] = error
    elif not issued.get("client_id"):
        detail["client"] = "as claimed by the request (not authenticated)"
    patients = {issued["patient"]} if issued.get("patient") else set()
    entity = f"token/{issued['token_id']}" if issued.get("token_id") else None
    return AuditRecord("110114", "ITI-71", "E", outcome_for(status), rec.request_id, who, status=status,
                       entity=entity, query=urlencode(form) or None, detail=detail, patients=patients)


def _claimed_client() -> str | None:
    """The client a refused token request says it is: client_id, HTTP Basic user, or the
    (unverified) ``sub`` of its assertion."""
    if request.form.get("client_id"):
        return request.form["client_id"][:255]
    if request.authorization and request.authorization.username:
        return request.authorization.username[:255]
    assertion = request.form.get("client_assertion", "")
    parts = assertion.split(".")
    if len(parts) == 3 and len(parts[1]) < 4096:
        try:
            claims = orjson.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
            sub = claims.get("sub") if isinstance(claims, dict) else None
            return str(sub)[:255] if sub else None
        except ValueError:
            return None
    return None


# ---- custom events (other packages) --------------------------------------------------------------
def record(subtype: str = "custom", *, type_: str = "110113", action: str = "E", outcome: int = 0,
           entity: str | None = None, res_type: str | None = None, patients: set[str] | list[str] | None = None,
           description: str | None = None, detail: dict | None = None, conn=None, engine=None) -> None:  # noqa: ANN001
    """Add an audit event for something the trail does not see by itself (a break-glass, an
    identity merge ...).  With ``conn``: written at once on that connection (inside the caller's
    transaction, so it commits with the change).  Otherwise, during a request: written with the
    request's own events before the response; outside a request: at once on ``engine``."""
    d = dict(detail or {})
    if description:
        d["description"] = description
    in_request = has_request_context()
    rec_ = g.get("audit") if in_request else None
    who = rec_.who if rec_ is not None else (_who() if in_request else Who())
    request_id = (g.get("request_id") if in_request else None) or uuid.uuid4().hex
    ev = AuditRecord(type_, subtype, action, outcome, request_id, who, res_type=res_type, entity=entity,
                     detail=d or None, patients=set(patients or ()))
    from app.audit.store import store_in

    if conn is not None:
        store_in(conn, [ev])
    elif rec_ is not None:
        rec_.add(ev)
    else:
        store(engine or current_app.extensions["results_repo"].engine, [ev])


# ---- the AuditEvent API (routes on the FHIR blueprint) ----------------------------------------------
def register_audit_routes(bp: Blueprint) -> None:
    from app.audit import query as q

    def _ctx():
        from app.api.fhir import ctx

        return ctx()

    def _search(params: list[tuple[str, str]]) -> Response:
        from app.api.negotiation import prefer_handling

        c = _ctx()
        access = q.access_for(c.permission, "s")
        # one snapshot for the page and its patients (app.db.engine.read_snapshot), and SET LOCAL
        # for the deadline
        with read_snapshot(c.engine) as conn:
            body = q.search(conn, params, access, base_url=c.base_url, secret=c.secret_key, caller=c.caller,
                            default_count=c.default_page_size, max_count=c.max_page_size,
                            strict=prefer_handling(request) == "strict", tz=c.tz,
                            timeout_ms=c.search_timeout_ms)
        return Response(body, content_type="application/fhir+json; charset=utf-8")

    @bp.get("/AuditEvent", endpoint="audit_search")
    def audit_search() -> Response:
        return _search(list(request.args.items(multi=True)))

    @bp.post("/AuditEvent/_search", endpoint="audit_search_post")
    def audit_search_post() -> Response:
        from app.api.fhir import _search_params

        return _search(_search_params())

    @bp.get("/AuditEvent/<event_id>", endpoint="audit_read")
    def audit_read(event_id: str) -> Response:
        c = _ctx()
        access = q.access_for(c.permission, "r")
        with c.engine.connect() as conn:
            body = q.read(conn, event_id, access, c.base_url)
        return Response(body, content_type="application/fhir+json; charset=utf-8")

    @bp.route("/AuditEvent", methods=["POST", "PUT", "PATCH", "DELETE"], endpoint="audit_write")
    @bp.route("/AuditEvent/<event_id>", methods=["PUT", "PATCH", "DELETE", "POST"], endpoint="audit_write")
    @bp.route("/AuditEvent/<event_id>/<path:rest>", methods=["GET", "PUT", "PATCH", "DELETE", "POST"],
              endpoint="audit_write")
    def audit_write(event_id: str | None = None, rest: str | None = None) -> Response:
        from app.fhir.errors import FhirError

        err = FhirError(405, "not-supported", "The audit trail is read-only: AuditEvent records cannot be created, "
                                              "changed or deleted through the API (history is not kept either).")
        err.headers = {"Allow": "GET"}  # type: ignore[attr-defined]
        raise err


def init_app(app: Flask) -> None:
    app.config.setdefault("AUDIT_ENABLED", True)
    app.before_request(_begin)
    app.after_request(_finish)

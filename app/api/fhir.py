"""The FHIR REST blueprint at /fhir: routes map one-to-one onto interactions."""

from __future__ import annotations

import re

from flask import Blueprint, Flask, Response, current_app, request
from werkzeug.exceptions import MethodNotAllowed, RequestEntityTooLarge

from app.api.bulk import register_bulk_routes
from app.api.identity import register_identity_routes
from app.api.negotiation import (
    check_accept,
    fhir_response,
    prefer_handling,
    require_json_body,
)
from app.audit.web import attach as attach_audit
from app.audit.web import register_audit_routes
from app.auth import protect
from app.fhir.errors import FhirError
from app.fhir.jsonutil import MAX_JSON_DEPTH, loads_body, too_deep
from app.interactions import bundle as bundle_ix
from app.interactions import history as history_ix
from app.interactions import read as read_ix
from app.interactions import write as write_ix
from app.interactions.capabilities import capability_statement
from app.interactions.common import parse_if_match
from app.interactions.context import FhirContext, from_app

bp = Blueprint("fhir", __name__, url_prefix="/fhir")


def ctx() -> FhirContext:
    req = request._get_current_object()
    app_ = current_app._get_current_object()
    base = app_.config.get("PUBLIC_BASE_URL") or (req.host_url.rstrip("/") + "/fhir")
    return attach_audit(protect.apply(from_app(app_, base)))


# Bearer token -> Permission (401 without a valid token unless AUTH_REQUIRED is off); first,
# so an unauthenticated caller learns nothing else about the request.
bp.before_request(protect.check_bearer)


@bp.before_request
def _negotiate() -> None:
    req = request._get_current_object()
    if req.endpoint == "fhir.bulk_file":  # NDJSON downloads (Accept: application/fhir+ndjson)
        return
    check_accept(req)


# A JSON-escaped NUL (\u0000 preceded by an even number of backslashes). PostgreSQL text cannot
# hold NUL (the insert fails with DataError -> 500) and FHIR strings may not contain it.
_NUL_ESCAPE = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")


def _body_bytes() -> bytes:
    raw = request.get_data(cache=False)
    limit = request.max_content_length
    # werkzeug stops a chunked (length-less) body silently at the cap: the JSON would then be
    # cut short and look malformed (400). A body that reached the cap is too large (413).
    if limit is not None and request.content_length is None and len(raw) >= limit:
        raise RequestEntityTooLarge()
    return raw


def _load(raw: bytes) -> object:
    if _NUL_ESCAPE.search(raw):
        raise FhirError(400, "invalid", "The body contains a NUL character (\\u0000); FHIR strings may not.")
    doc = loads_body(raw)
    depth = int(current_app.config.get("MAX_JSON_DEPTH", MAX_JSON_DEPTH))
    if isinstance(doc, (dict, list)) and too_deep(doc, depth):
        raise FhirError(400, "structure", f"The JSON is nested more than {depth} levels deep.")
    return doc


def _json_body() -> object:
    require_json_body(request)
    return _load(_body_bytes())


def _args() -> dict[str, str]:
    return {k: v for k, v in request.args.items()}


@bp.route("/metadata", methods=["POST", "PUT", "PATCH", "DELETE"])
def metadata_other() -> Response:
    # without this, DELETE /metadata would fall through to /<res_type> and answer 404
    raise MethodNotAllowed(valid_methods=["GET", "HEAD", "OPTIONS"])


@bp.get("/metadata")
def metadata() -> Response:
    from app.fhir.jsonutil import dumps

    return Response(dumps(capability_statement(ctx(), current_app.config)), content_type="application/fhir+json; charset=utf-8")


@bp.post("")
@bp.post("/")
def base_bundle() -> Response:
    body = _json_body()
    # Bundle responses carry resources only when asked: they can be large.
    explicit = "return=representation" in request.headers.get("Prefer", "")
    return fhir_response(bundle_ix.process(ctx(), body, explicit))


@bp.get("/_history")
def system_history() -> Response:
    return fhir_response(history_ix.history(ctx(), None, None, _args()))


@bp.get("/<res_type>")
def type_search(res_type: str) -> Response:
    from app.interactions.search import search_type

    return fhir_response(search_type(ctx(), res_type, list(request.args.items(multi=True)), strict=prefer_handling(request) == "strict"))


def _search_params() -> list[tuple[str, str]]:
    """Query parameters, plus the form body of a ``POST .../_search`` (same results as GET)."""
    params = list(request.args.items(multi=True))
    if request.method == "POST":
        if request.mimetype != "application/x-www-form-urlencoded":
            raise FhirError(415, "not-supported", "POST _search takes application/x-www-form-urlencoded parameters.")
        params += list(request.form.items(multi=True))
    return params


def _strict() -> bool:
    return prefer_handling(request) == "strict"


@bp.post("/<res_type>/_search")
def type_search_post(res_type: str) -> Response:
    from app.interactions.search import search_type

    return fhir_response(search_type(ctx(), res_type, _search_params(), strict=_strict()))


@bp.get("")
@bp.get("/")
@bp.get("/_search")
@bp.post("/_search")
def system_search() -> Response:
    """System search (``_type=A,B``); ``POST [base]`` itself is batch/transaction."""
    from app.interactions.search import search_system

    return fhir_response(search_system(ctx(), _search_params(), strict=_strict()))


@bp.get("/<comp_type>/<comp_id>/<res_type>")
@bp.post("/<comp_type>/<comp_id>/<res_type>/_search")
def compartment_search(comp_type: str, comp_id: str, res_type: str) -> Response:
    """``Patient/123/Observation`` and ``Patient/123/*`` (R4 Patient CompartmentDefinition)."""
    from app.interactions.search import search_compartment

    return fhir_response(search_compartment(ctx(), comp_type, comp_id, res_type, _search_params(), strict=_strict()))


@bp.post("/<res_type>")
def create(res_type: str) -> Response:
    c = ctx()
    c.check_type(res_type)
    body = _json_body()
    return fhir_response(write_ix.create(c, res_type, body, request.headers.get("If-None-Exist")), request, write=True)


@bp.put("/<res_type>")
def conditional_update(res_type: str) -> Response:
    c = ctx()
    c.check_type(res_type)
    body = _json_body()
    return fhir_response(
        write_ix.conditional_update(c, res_type, request.query_string.decode(), body, parse_if_match(request.headers.get("If-Match"))),
        request,
        write=True,
    )


@bp.patch("/<res_type>")
def conditional_patch(res_type: str) -> Response:
    c = ctx()
    c.check_type(res_type)
    doc = _patch_doc()
    return fhir_response(write_ix.patch(c, res_type, None, request.query_string.decode(), doc, parse_if_match(request.headers.get("If-Match"))), request, write=True)


@bp.delete("/<res_type>")
def conditional_delete(res_type: str) -> Response:
    c = ctx()
    return fhir_response(write_ix.delete(c, res_type, None, request.query_string.decode()), request, write=True)


@bp.get("/<res_type>/_history")
def type_history(res_type: str) -> Response:
    return fhir_response(history_ix.history(ctx(), res_type, None, _args()))


@bp.get("/<res_type>/<res_id>")
def read(res_type: str, res_id: str) -> Response:
    return fhir_response(read_ix.read(ctx(), res_type, res_id))


@bp.put("/<res_type>/<res_id>")
def update(res_type: str, res_id: str) -> Response:
    c = ctx()
    c.check_type(res_type)
    body = _json_body()
    return fhir_response(write_ix.update(c, res_type, res_id, body, parse_if_match(request.headers.get("If-Match"))), request, write=True)


def _patch_doc() -> object:
    if request.mimetype != "application/json-patch+json":
        raise FhirError(415, "not-supported", "PATCH takes a JSON Patch document (Content-Type: application/json-patch+json).")
    return _load(_body_bytes())


@bp.patch("/<res_type>/<res_id>")
def patch(res_type: str, res_id: str) -> Response:
    c = ctx()
    c.check_type(res_type)
    doc = _patch_doc()
    return fhir_response(write_ix.patch(c, res_type, res_id, None, doc, parse_if_match(request.headers.get("If-Match"))), request, write=True)


@bp.delete("/<res_type>/<res_id>")
def delete(res_type: str, res_id: str) -> Response:
    return fhir_response(
        write_ix.delete(ctx(), res_type, res_id, None, parse_if_match(request.headers.get("If-Match"))), request, write=True
    )


@bp.get("/<res_type>/<res_id>/_history")
def instance_history(res_type: str, res_id: str) -> Response:
    return fhir_response(history_ix.history(ctx(), res_type, res_id, _args()))


@bp.get("/<res_type>/<res_id>/_history/<version>")
def vread(res_type: str, res_id: str, version: str) -> Response:
    return fhir_response(read_ix.vread(ctx(), res_type, res_id, version))


register_bulk_routes(bp)  # $export, $export-status, $export-file (app/api/bulk.py)
register_identity_routes(bp, ctx, _json_body)  # Patient $match, $merge, $unmerge (app/api/identity.py)
register_audit_routes(bp)  # read-only AuditEvent search and read from the audit trail (app/audit)


def register(app: Flask) -> None:
    app.register_blueprint(bp)

"""Every error is an OperationOutcome: FhirError, HTTP errors from routing, and crashes."""

from __future__ import annotations

import logging
import uuid

from flask import Flask, Response
from werkzeug.exceptions import HTTPException

from app.fhir.errors import FhirError, Issue, operation_outcome
from app.fhir.jsonutil import dumps

log = logging.getLogger("results_repo.errors")

_HTTP_CODES = {
    400: "invalid",
    401: "login",
    403: "forbidden",
    404: "not-found",
    405: "not-supported",
    406: "not-supported",
    409: "conflict",
    410: "deleted",
    412: "conflict",
    413: "too-costly",
    415: "not-supported",
    422: "processing",
    429: "throttled",
}


def outcome_response(status: int, outcome: dict, headers: dict | None = None) -> Response:
    resp = Response(dumps(outcome), status=status, content_type="application/fhir+json; charset=utf-8")
    for k, v in (headers or {}).items():
        resp.headers[k] = v
    return resp


def register(app: Flask) -> None:
    @app.errorhandler(FhirError)
    def _fhir_error(err: FhirError) -> Response:
        return outcome_response(err.status, err.outcome(), getattr(err, "headers", None))

    @app.errorhandler(HTTPException)
    def _http_error(err: HTTPException) -> Response:
        status = err.code or 500
        text = {
            404: "No such FHIR endpoint. The FHIR base is /fhir (see /fhir/metadata).",
            405: "This HTTP method is not allowed on this URL.",
            413: "The request body is larger than this server accepts.",
        }.get(status, err.description or err.name)
        resp = outcome_response(status, operation_outcome([Issue(_HTTP_CODES.get(status, "exception"), text)]))
        if status == 405 and err.get_response().headers.get("Allow"):
            resp.headers["Allow"] = err.get_response().headers["Allow"]
        return resp

    @app.errorhandler(Exception)
    def _crash(err: Exception) -> Response:
        if isinstance(err, HTTPException):
            return _http_error(err)
        from app.db.deadline import is_transient_conflict

        if is_transient_conflict(err):  # a lost deadlock: rolled back whole, worth a retry
            return outcome_response(409, operation_outcome([Issue(
                "conflict", "Another request changed the same resources at the same moment; nothing was "
                            "changed. Send the request again.")]))
        incident = uuid.uuid4().hex[:12]
        # Log the type and where, never the request body (patient data) or headers (tokens).
        log.error("unhandled %s (incident %s)", type(err).__name__, incident, exc_info=err)
        return outcome_response(
            500,
            operation_outcome([Issue("exception", f"Internal error (incident {incident}); nothing was changed.")]),
        )

"""Content negotiation, Prefer and conditional headers: the HTTP details of FHIR REST."""

from __future__ import annotations

from functools import lru_cache

from flask import Request, Response
from werkzeug.datastructures import MIMEAccept
from werkzeug.http import parse_accept_header

from app.fhir.errors import FhirError
from app.fhir.jsonutil import dumps
from app.interactions.context import Result

FHIR_JSON = "application/fhir+json"
JSON_TYPES = ("application/fhir+json", "application/json", "application/json+fhir", "text/json")
JSON_FORMATS = ("json", "application/json", "application/fhir+json", "application/json+fhir")


def check_accept(request: Request) -> None:
    args = request.args
    if "_format" in args:  # (``.get`` of a missing key raises and catches inside werkzeug)
        fmt = args["_format"]
        if fmt.split(";")[0].strip() not in JSON_FORMATS:
            raise FhirError(406, "not-supported", f"_format={fmt[:40]} is not supported; this server speaks FHIR JSON only.")
        return
    if not _accepts_json(request.headers.get("Accept", "")):
        raise FhirError(406, "not-supported", "This server returns FHIR JSON only (Accept: application/fhir+json).")


@lru_cache(maxsize=512)
def _accepts_json(header: str) -> bool:
    """Whether an Accept header admits JSON (none at all does).  Cached by the header's text:
    clients send the same few, and parsing one on every request was ~2 % of a search's CPU."""
    accept = parse_accept_header(header, MIMEAccept)
    if not accept or accept.provided is False:
        return True
    for mt, _q in accept:
        base = mt.split(";")[0].strip()
        if base in JSON_TYPES or base in ("*/*", "application/*") or base.endswith("+json"):
            return True
    return False


def require_json_body(request: Request) -> None:
    ctype = (request.mimetype or "").lower()
    if ctype not in JSON_TYPES:
        raise FhirError(
            415,
            "not-supported",
            f"Content-Type '{ctype or 'missing'}' is not supported; send application/fhir+json.",
        )


def prefer_return(request: Request) -> str:
    prefer = request.headers.get("Prefer", "")
    for part in prefer.split(","):
        part = part.strip()
        if part.startswith("return="):
            value = part[len("return=") :].strip().strip('"')
            if value in ("minimal", "representation", "OperationOutcome"):
                return value
    return "representation"


def prefer_handling(request: Request) -> str:
    for part in request.headers.get("Prefer", "").split(","):
        part = part.strip()
        if part.startswith("handling="):
            return part[len("handling=") :].strip()
    return "lenient"


def fhir_response(result: Result, request: Request | None = None, write: bool = False) -> Response:
    """Render an interaction result, honouring Prefer: return= on writes."""
    body = result.body
    status = result.status
    if write and request is not None:
        pref = prefer_return(request)
        if pref == "minimal":
            body = None
        elif pref == "OperationOutcome" and result.outcome is not None:
            body = dumps(result.outcome)
            if status == 204:
                status = 200
        elif body is None:
            body = result.resource
    if status == 204:
        body = None
    resp = Response(body if body is not None else b"", status=status)
    if body is not None:
        resp.headers["Content-Type"] = f"{FHIR_JSON}; charset=utf-8"
    for k, v in result.headers.items():
        resp.headers[k] = v
    return resp

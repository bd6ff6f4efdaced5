"""Pieces shared by the write interactions: parse, validate, integrity, conditional matching."""

from __future__ import annotations

from urllib.parse import parse_qsl

from sqlalchemy import Connection

from app.fhir.errors import FhirError
from app.fhir.jsonutil import http_date
from app.fhir.validation import validate_resource
from app.interactions.context import FhirContext
from app.storage.repository import Repository, Stored


def parse_query(query: str) -> list[tuple[str, str]]:
    try:
        return parse_qsl(query, keep_blank_values=True, strict_parsing=False)
    except ValueError as exc:
        raise FhirError(400, "invalid", f"Malformed search query: {exc}") from None


def validated(ctx: FhirContext, body: object, expected_type: str) -> dict:
    if not isinstance(body, dict):
        raise FhirError(400, "structure", "The body must be a JSON object (a FHIR resource).")
    rt = body.get("resourceType")
    if isinstance(rt, str) and rt != expected_type:
        raise FhirError(
            400, "invalid", f"The body is a {rt[:64]} but the URL names {expected_type}.", ["resourceType"]
        )
    validate_resource(body, expected_type)
    if ctx.labeller is not None:  # the operator's labels for sensitive codes, before storage
        ctx.labeller(body)
    return body


def find(ctx: FhirContext, conn: Connection, res_type: str, query: str, limit: int = 2, letter: str = "s") -> list:
    """Matches for a conditional operation: strict parsing, so an unknown parameter is an error
    rather than silently matching everything.  Only rows the caller's token reaches with
    ``letter`` (c, r, u, d, s) can match."""
    from app.auth.permission import conditional_rewrite
    from app.search import find_matches

    params = parse_query(query)
    if not params:
        raise FhirError(400, "invalid", f"A conditional {res_type} operation needs search criteria.")
    rows = find_matches(conn, ctx.registry, res_type, params, base_url=ctx.base_url, tz=ctx.tz, limit=limit,
                        rewrite=conditional_rewrite(ctx, res_type, letter))
    if rows and set(letter) & set("cud"):
        refuse_withheld_match(ctx, conn, res_type, rows)
    return rows


def refuse_withheld_match(ctx: FhirContext, conn: Connection, res_type: str, rows: list) -> None:
    """A conditional write (If-None-Exist, conditional update, patch or delete) whose criteria
    match a resource carrying a label the token is not cleared for: 403, nothing written.  The
    match counts as a match (no duplicate is created beside it, it is not overwritten or deleted
    unseen) and its id, version and content are not disclosed (docs/decisions/0011)."""
    perm = ctx.permission
    if perm is None or not perm.withheld:
        return
    from app.protect.labels import labelled_rids

    if labelled_rids(conn, (r.rid for r in rows), perm.withheld):
        raise FhirError(403, "forbidden", f"The conditional criteria match a {res_type} that this access token may not "
                        "see (it carries a security label the token is not cleared for); nothing was written. Such "
                        "writes need a token cleared for that label.")


def check_references(repo: Repository, bodies: list[tuple[str, dict]]) -> None:
    """Every reference to a resource of an enabled type must resolve (issue: no result may point
    at a patient the repository does not hold)."""
    wanted: dict[tuple[str, str], str] = {}
    for where, body in bodies:
        for key in repo.links_of(body):
            wanted.setdefault(key, where)
    if not wanted:
        return
    missing = set(wanted) - repo.existing(set(wanted))
    if missing:
        shown = sorted(missing)[:5]
        text = ", ".join(f"{t}/{i} (from {wanted[(t, i)]})" for t, i in shown)
        raise FhirError(
            422,
            "business-rule",
            f"Reference(s) to resources this server does not hold: {text}. "
            "Send the referenced resources first, or in the same transaction.",
        )


def version_headers(ctx: FhirContext, stored: Stored) -> dict[str, str]:
    return {
        "ETag": stored.etag,
        "Last-Modified": http_date(stored.last_updated),
        "Location": f"{ctx.base_url}/{stored.location}",
    }


def parse_if_match(value: object) -> int | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):  # (a Bundle entry's request.ifMatch may be any JSON)
        raise FhirError(400, "invalid", "If-Match must be an ETag string like W/\"3\".", ["request.ifMatch"])
    v = value.strip()
    if v.startswith("W/"):
        v = v[2:]
    v = v.strip('"')
    if not (v.isascii() and v.isdigit()):  # (isdigit alone takes '²', which int() refuses)
        raise FhirError(400, "invalid", f"If-Match must be an ETag like W/\"3\", got {value[:40]!r}.")
    return int(v)

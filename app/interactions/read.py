"""read and vread: return the stored bytes, never a rebuilt model."""

from __future__ import annotations

from app.auth.permission import guard_read
from app.db.engine import read_snapshot, single_read
from app.fhir.errors import FhirError
from app.fhir.jsonutil import http_date
from app.interactions.context import FhirContext, Result
from app.storage.repository import Stored


def _answer(stored: Stored) -> Result:
    headers = {"ETag": stored.etag, "Last-Modified": http_date(stored.last_updated)}
    if stored.deleted:
        raise _gone(stored, headers)
    return Result(200, stored.content.encode(), headers)


def _gone(stored: Stored, headers: dict[str, str]) -> FhirError:
    err = FhirError(410, "deleted", f"{stored.res_type}/{stored.res_id} was deleted (version {stored.version}).")
    err.headers = headers  # type: ignore[attr-defined]
    return err


def read(ctx: FhirContext, res_type: str, res_id: str) -> Result:
    ctx.check_type(res_type)
    ctx.check_id(res_id)
    # The row check of a token bounded to a compartment (or by filters) is a second statement,
    # which must see the same snapshot as the read; every other read is one statement.
    perm = ctx.permission
    one = perm is None or not perm.bounded(res_type, "r")
    with (single_read if one else read_snapshot)(ctx.engine) as conn:
        stored = ctx.repo(conn).read(res_type, res_id)
        guard_read(ctx, conn, res_type, res_id, stored.rid if stored else None,
                   current=stored.content if stored is not None and not stored.deleted else None)
    if stored is None:
        raise FhirError(404, "not-found", f"{res_type}/{res_id} is not known to this server.")
    return _answer(stored)


def vread(ctx: FhirContext, res_type: str, res_id: str, version: str) -> Result:
    ctx.check_type(res_type)
    ctx.check_id(res_id)
    if not version.isdigit():
        raise FhirError(400, "invalid", f"'{version[:40]}' is not a version id (a positive integer).")
    with read_snapshot(ctx.engine) as conn:
        stored = ctx.repo(conn).vread(res_type, res_id, int(version))
        guard_read(ctx, conn, res_type, res_id, stored.rid if stored else None, stored.content if stored else None)
    if stored is None:
        raise FhirError(404, "not-found", f"{res_type}/{res_id} has no version {version}.")
    return _answer(stored)

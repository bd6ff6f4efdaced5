"""create, update, patch and delete, plain and conditional.

Each public function runs one unit of work; the ``*_in`` variants run inside a caller's unit of
work (transactions and batches) and leave reference checks to the caller when asked.
"""

from __future__ import annotations

import copy
from dataclasses import replace

import jsonpatch
import orjson
from sqlalchemy import Connection

from app.auth.permission import guard_write_target, guard_written
from app.db import unit_of_work
from app.fhir.errors import FhirError
from app.interactions.common import (
    check_references,
    find,
    validated,
    version_headers,
)
from app.interactions.context import FhirContext, Result
from app.protect.writes import refuse_withheld_target
from app.storage.repository import Repository, Stored, VersionConflict, conflict, content_hash


def _outcome(diagnostics: str) -> dict:
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "information", "code": "informational", "diagnostics": diagnostics}],
    }


def _result(ctx: FhirContext, stored: Stored, status: int, diagnostics: str) -> Result:
    headers = version_headers(ctx, stored)
    return Result(
        status,
        headers=headers,
        resource=stored.content.encode() if stored.content else None,
        outcome=_outcome(diagnostics),
    )


def _audit(ctx: FhirContext, conn: Connection, subtype: str, stored: Stored | None, status: int,
           res_type: str, res_id: str | None, note: str | None = None) -> None:
    """Record the change on its own transaction, before it commits (app/audit/recorder.py)."""
    if ctx.audit is None:
        return
    if stored is None:
        ctx.audit.changed(conn, subtype, res_type, res_id or "", None, None, status, note=note)
    else:
        ctx.audit.changed(conn, subtype, stored.res_type, stored.res_id, stored.version, stored.content, status,
                          note=note)


# ---- create ---------------------------------------------------------------------------------
def create_in(
    ctx: FhirContext,
    repo: Repository,
    res_type: str,
    body: dict,
    if_none_exist: str | None,
    res_id: str | None = None,
) -> tuple[Stored, int]:
    """Returns (stored, status): 201 created, or 200 when If-None-Exist matched one resource."""
    guard_write_target(ctx, repo.conn, res_type, res_id, None, "c")
    if if_none_exist:
        matches = find(ctx, repo.conn, res_type, if_none_exist.lstrip("?").split("?", 1)[-1], letter="c")
        if len(matches) > 1:
            raise FhirError(412, "multiple-matches", f"If-None-Exist matched more than one {res_type}; nothing was created.")
        if matches:
            return repo.read(res_type, matches[0].res_id), 200
    body = {k: v for k, v in body.items() if k != "id"}  # the server assigns ids on create
    try:
        stored = repo.create(body, res_id=res_id, method="POST")
    except VersionConflict as exc:
        raise conflict(exc, False) from None
    guard_written(ctx, repo, res_type, stored, "c")
    return stored, 201


def create(ctx: FhirContext, res_type: str, body: object, if_none_exist: str | None) -> Result:
    ctx.check_type(res_type)
    body = validated(ctx, body, res_type)
    if if_none_exist:  # a lost race on a Patient identifier: the retry matches the winner
        from app.identity.retry import retry_identity

        return retry_identity(lambda: _create(ctx, res_type, body, if_none_exist))
    return _create(ctx, res_type, body, if_none_exist)


def unreadable_match(ctx: FhirContext, conn: Connection, stored: Stored) -> bool:
    """If-None-Exist matched a resource the token may not read (a create-only sender): the
    answer names it (Location, ETag) but does not carry its content."""
    perm = ctx.permission
    return perm is not None and not perm.row_allowed(conn, stored.res_type, stored.rid, "r")


def _create(ctx: FhirContext, res_type: str, body: dict, if_none_exist: str | None) -> Result:
    with unit_of_work(ctx.engine, write=True) as conn:
        repo = ctx.repo(conn)
        stored, status = create_in(ctx, repo, res_type, body, if_none_exist)
        if status == 201:
            check_references(repo, [(f"{res_type}", body)])
            repo.flush()
        hidden = status == 200 and unreadable_match(ctx, conn, stored)
        _audit(ctx, conn, "create", stored, status, res_type, None,
               None if status == 201 else "If-None-Exist matched an existing resource; nothing was created")
    msg = "Created." if status == 201 else "A matching resource exists (If-None-Exist); nothing was created."
    return _result(ctx, replace(stored, content=None) if hidden else stored, status, msg)


# ---- update ---------------------------------------------------------------------------------
def update_in(
    ctx: FhirContext,
    repo: Repository,
    res_type: str,
    res_id: str,
    body: dict,
    if_match: int | None,
    method: str = "PUT",
    with_content: bool = True,
) -> tuple[Stored, int]:
    """Update or update-as-create. Returns (stored, 200|201). A body identical to the current
    version (ignoring meta.versionId/lastUpdated) makes no new version; its answer carries the
    stored content only if ``with_content`` (a transaction without return=representation does
    not need it, and skips the query)."""
    head = repo.head(res_type, res_id)
    letter = "u" if head is not None and not head.deleted else "c"  # update-as-create needs c
    guard_write_target(ctx, repo.conn, res_type, res_id, head, letter)
    if head is not None and not head.deleted:  # a withheld resource is not replaced unseen: 403
        refuse_withheld_target(ctx, repo.conn, res_type, res_id, head.rid)
    if if_match is not None and (head is None or head.version != if_match):
        current = "does not exist" if head is None else f"is at version {head.version}"
        raise FhirError(412, "conflict", f"If-Match asked for version {if_match} but {res_type}/{res_id} {current}.")
    if res_type == "Patient" and head is not None and not head.deleted:
        from app.identity.rules import patient_update  # identifiers kept, NHS number rail

        stored_now = repo.read(res_type, res_id)
        body = patient_update(repo.conn, stored_now.content if stored_now else None, res_id, body, method)
    try:
        if head is None:
            stored, status = repo.create(body, res_id=res_id, method=method), 201
        elif not head.deleted and head.content_hash == content_hash(body):
            return repo.current(head, res_type, res_id, with_content), 200
        else:
            stored, status = repo.update(head, body, res_id, method=method), (201 if head.deleted else 200)
    except VersionConflict as exc:
        raise conflict(exc, if_match is not None) from None
    guard_written(ctx, repo, res_type, stored, letter)
    return stored, status


def _check_body_id(body: dict, res_id: str) -> None:
    if "id" not in body:
        raise FhirError(400, "required", f"An update must carry the resource id in the body (expected '{res_id}').", ["id"])
    if body["id"] != res_id:
        raise FhirError(400, "invalid", f"The body id '{str(body['id'])[:64]}' does not match the URL id '{res_id}'.", ["id"])


def update(ctx: FhirContext, res_type: str, res_id: str, body: object, if_match: int | None) -> Result:
    ctx.check_type(res_type)
    ctx.check_id(res_id)
    body = validated(ctx, body, res_type)
    _check_body_id(body, res_id)
    with unit_of_work(ctx.engine, write=True) as conn:
        repo = ctx.repo(conn)
        stored, status = update_in(ctx, repo, res_type, res_id, body, if_match)
        check_references(repo, [(res_type, body)])
        repo.flush()
        _audit(ctx, conn, "create" if status == 201 else "update", stored, status, res_type, res_id)
    return _result(ctx, stored, status, "Created." if status == 201 else "Updated.")


def resolve_conditional(ctx: FhirContext, conn: Connection, res_type: str, query: str, body_id: str | None) -> str | None:
    """The id a conditional update targets: the single match, or None for 'create'."""
    matches = find(ctx, conn, res_type, query, letter="u")
    if len(matches) > 1:
        raise FhirError(412, "multiple-matches", f"The conditional update matched more than one {res_type}; nothing was changed.")
    if matches:
        found = matches[0].res_id
        if body_id is not None and body_id != found:
            raise FhirError(400, "invalid", f"The body id '{body_id}' differs from the matched resource {res_type}/{found}.", ["id"])
        return found
    return None


def conditional_update(ctx: FhirContext, res_type: str, query: str, body: object, if_match: int | None) -> Result:
    ctx.check_type(res_type)
    body = validated(ctx, body, res_type)
    body_id = body.get("id")
    if body_id is not None:
        ctx.check_id(str(body_id))
    from app.identity.retry import retry_identity  # a lost race on a Patient identifier

    return retry_identity(lambda: _conditional_update(ctx, res_type, query, body, body_id, if_match))


def _conditional_update(ctx: FhirContext, res_type: str, query: str, body: dict, body_id: str | None,
                        if_match: int | None) -> Result:
    with unit_of_work(ctx.engine, write=True) as conn:
        repo = ctx.repo(conn)
        target = resolve_conditional(ctx, conn, res_type, query, body_id)
        if target is None:
            if body_id is not None:
                stored, status = update_in(ctx, repo, res_type, body_id, body, if_match)
            else:
                stored, status = create_in(ctx, repo, res_type, body, None)
        else:
            stored, status = update_in(ctx, repo, res_type, target, {**body, "id": target}, if_match)
        check_references(repo, [(res_type, body)])
        repo.flush()
        _audit(ctx, conn, "create" if status == 201 else "update", stored, status, res_type, None)
    return _result(ctx, stored, status, "Created." if status == 201 else "Updated.")


# ---- patch ----------------------------------------------------------------------------------
def apply_patch(current: Stored, patch: object) -> dict:
    if not isinstance(patch, list):
        raise FhirError(400, "structure", "A JSON Patch body must be a JSON array of operations (RFC 6902).")
    doc = orjson.loads(current.content)
    try:
        patched = jsonpatch.JsonPatch(copy.deepcopy(patch)).apply(doc)
    except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException, TypeError, KeyError, ValueError) as exc:
        raise FhirError(422, "processing", f"The JSON Patch could not be applied: {exc}") from None
    if not isinstance(patched, dict) or patched.get("resourceType") != current.res_type or patched.get("id") != current.res_id:
        raise FhirError(422, "processing", "A patch may not change resourceType or id.")
    return patched


def patch_in(ctx: FhirContext, repo: Repository, res_type: str, res_id: str, patch: object, if_match: int | None) -> tuple[Stored, int, dict]:
    current = repo.read(res_type, res_id)
    if current is None:
        raise FhirError(404, "not-found", f"{res_type}/{res_id} is not known to this server.")
    if current.deleted:
        raise FhirError(410, "deleted", f"{res_type}/{res_id} was deleted; it cannot be patched.")
    # Before the patch touches the content (a failing "test" operation's error quotes the value):
    # the resource must be one the token may update, and not one withheld from it (403).
    guard_write_target(ctx, repo.conn, res_type, res_id, current, "u")
    refuse_withheld_target(ctx, repo.conn, res_type, res_id, current.rid)
    if if_match is not None and current.version != if_match:
        raise FhirError(412, "conflict", f"If-Match asked for version {if_match} but {res_type}/{res_id} is at version {current.version}.")
    body = validated(ctx, apply_patch(current, patch), res_type)
    try:
        stored, _ = update_in(ctx, repo, res_type, res_id, body, current.version, method="PATCH")
    except FhirError as exc:
        if if_match is None and exc.status == 412:
            # The version the patch was applied to moved on meanwhile. The client set no
            # precondition, so this is a conflict to retry (409), not a failed If-Match (412).
            raise FhirError(409, "conflict", f"{res_type}/{res_id} was changed while the patch was being "
                                             "applied; nothing was changed, send the patch again.") from None
        raise
    return stored, 200, body


def patch(ctx: FhirContext, res_type: str, res_id: str | None, query: str | None, patch_doc: object, if_match: int | None) -> Result:
    ctx.check_type(res_type)
    with unit_of_work(ctx.engine, write=True) as conn:
        repo = ctx.repo(conn)
        if res_id is None:
            matches = find(ctx, conn, res_type, query or "", letter="u")
            if not matches:  # R4 http.html#patch: no match is 404, several 412
                raise FhirError(404, "not-found", f"A conditional patch needs exactly one match; no {res_type} matched.")
            if len(matches) > 1:
                raise FhirError(412, "multiple-matches", f"A conditional patch needs exactly one match; {len(matches)} {res_type} matched.")
            res_id = matches[0].res_id
        ctx.check_id(res_id)
        stored, status, body = patch_in(ctx, repo, res_type, res_id, patch_doc, if_match)
        check_references(repo, [(res_type, body)])
        repo.flush()
        _audit(ctx, conn, "patch", stored, status, res_type, res_id)
    return _result(ctx, stored, status, "Patched.")


# ---- delete ---------------------------------------------------------------------------------
def check_not_referenced(repo: Repository, res_type: str, res_id: str) -> None:
    refs = repo.referrers(res_type, res_id)
    if refs:
        shown = ", ".join(f"{t}/{i}" for t, i in refs)
        raise FhirError(
            409,
            "conflict",
            f"{res_type}/{res_id} is still referenced by {shown}; delete or change those first.",
        )


def delete_in(
    ctx: FhirContext,
    repo: Repository,
    res_type: str,
    res_id: str,
    if_match: int | None = None,
    check_referrers: bool = True,
) -> Stored | None:
    """Tombstone a resource. None when it was already deleted (deleting is idempotent).
    A transaction passes ``check_referrers=False`` and checks once its other entries are written
    (they may re-point or delete the referrers)."""
    head = repo.head(res_type, res_id)
    guard_write_target(ctx, repo.conn, res_type, res_id, head, "d")
    if head is None:
        raise FhirError(404, "not-found", f"{res_type}/{res_id} is not known to this server.")
    if not head.deleted:  # a withheld resource is not deleted unseen: 403
        refuse_withheld_target(ctx, repo.conn, res_type, res_id, head.rid)
    if if_match is not None and head.version != if_match:
        raise FhirError(412, "conflict", f"If-Match asked for version {if_match} but {res_type}/{res_id} is at version {head.version}.")
    if head.deleted:
        return None
    if check_referrers:
        check_not_referenced(repo, res_type, res_id)
    try:
        return repo.delete(head, res_type, res_id)
    except VersionConflict as exc:
        raise conflict(exc, if_match is not None) from None


def delete(ctx: FhirContext, res_type: str, res_id: str | None, query: str | None, if_match: int | None = None) -> Result:
    ctx.check_type(res_type)
    with unit_of_work(ctx.engine, write=True) as conn:
        repo = ctx.repo(conn)
        if res_id is None:
            matches = find(ctx, conn, res_type, query or "", letter="d")
            if len(matches) > 1:
                raise FhirError(412, "multiple-matches", f"The conditional delete matched more than one {res_type}; nothing was deleted.")
            if not matches:
                return Result(204, outcome=_outcome("No resource matched; nothing was deleted."))
            res_id = matches[0].res_id
        ctx.check_id(res_id)
        stored = delete_in(ctx, repo, res_type, res_id, if_match)
        repo.flush()
        _audit(ctx, conn, "delete", stored, 204, res_type, res_id,
               "already deleted; nothing changed" if stored is None else None)
    if stored is None:
        return Result(204, outcome=_outcome(f"{res_type}/{res_id} was already deleted."))
    return Result(204, headers={"ETag": stored.etag}, outcome=_outcome(f"Deleted {res_type}/{res_id}."))

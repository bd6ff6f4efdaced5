"""``Patient/{id}/$correct-nhs-number``: the one way besides a merge to change an NHS number.

A mistyped NHS number is a real event (a transposition that happens to pass Modulus 11, a number
copied from the wrong letter). Ordinary updates may not change it (app.identity.rules), because
a silent change re-routes a person's record; this operation does it deliberately: it needs a
reason and an unrestricted Patient update scope, checks the new number (Modulus 11, normalised,
not held by another Patient: 409 naming that Patient, who may be the same person -> merge), and
records the correction as a Provenance (activity ``amend``) naming the old version.
The wrong number is *not* kept as ``use=old``: it may be someone else's.
"""

from __future__ import annotations

import copy

import orjson

from app.db import unit_of_work
from app.fhir import nhs_number
from app.fhir.errors import FhirError
from app.fhir.nhs_number import NHS_NUMBER_SYSTEM
from app.identity.merge import (
    _body,
    _head,
    _locked_heads,
    audit,
    note_named,
    require_merge_permission,
)
from app.identity.params import one, parameters
from app.identity.provenance import provenance
from app.identity.rules import merged_into, official_nhs_number
from app.interactions.common import version_headers
from app.interactions.context import FhirContext, Result
from app.protect.writes import refuse_withheld_rids
from app.storage.repository import VersionConflict, conflict, new_id
from app.storage.tables import resource


def corrected(patient: dict, new: str) -> dict:
    out = _body(copy.deepcopy(patient))
    idents = [i for i in out.get("identifier") or [] if isinstance(i, dict)]
    old = official_nhs_number(out)
    kept = [i for i in idents if not (i.get("system") == NHS_NUMBER_SYSTEM and i.get("value") == new and i.get("use") == "old")]
    for i in kept:
        if i.get("system") == NHS_NUMBER_SYSTEM and i.get("value") == old and i.get("use") != "old":
            i["value"] = new
            break
    else:
        kept.append({"system": NHS_NUMBER_SYSTEM, "value": new})
    out["identifier"] = kept
    return out


def correct_nhs_number(ctx: FhirContext, res_id: str, body: object) -> Result:
    ctx.check_id(res_id)
    note_named(ctx, None, res_id)
    params = parameters(body, "Patient/$correct-nhs-number", {"nhs-number", "reason"})
    new = one(params, "nhs-number", "valueString", str)
    reason = one(params, "reason", "valueString", str)
    if not new or not reason or not reason.strip():
        raise FhirError(400, "required", "Patient/$correct-nhs-number needs 'nhs-number' and a 'reason' (valueString).")
    if not nhs_number.is_valid(new) or nhs_number.normalise(new) != new:
        raise FhirError(422, "business-rule", f"{new[:20]} is not a valid NHS number (10 digits, Modulus 11 check).")
    require_merge_permission(ctx, set())
    with unit_of_work(ctx.engine, write=True) as conn:
        repo = ctx.repo(conn)
        rows = _locked_heads(conn, (resource.c.res_type == "Patient") & (resource.c.res_id == res_id))
        if not rows:
            raise FhirError(404, "not-found", f"Patient/{res_id} is not known to this server.")
        if rows[0][4]:
            raise FhirError(410, "deleted", f"Patient/{res_id} was deleted.")
        refuse_withheld_rids(ctx, conn, [rows[0][0]])  # a Patient withheld from the token: 403
        into = merged_into(conn, res_id)
        if into is not None:
            raise FhirError(409, "conflict", f"Patient/{res_id} was merged into Patient/{into}; correct that Patient.")
        head = _head(rows[0])
        current = orjson.loads(repo.read("Patient", res_id).content)
        if official_nhs_number(current) == new:
            raise FhirError(422, "business-rule", f"Patient/{res_id} already has NHS number {new}.")
        try:
            stored = repo.update_many([(head, corrected(current, new), res_id)])[0]
            repo.flush()
        except VersionConflict as exc:
            raise conflict(exc, False) from None
        prov = provenance("amend", "Amend (Update) Record Lifecycle Event", [("Patient", res_id, stored.version)],
                          [("Patient", res_id, head.version)], ctx.permission, f"NHS number correction: {reason.strip()}")
        prov_id = new_id()
        repo.create(prov, res_id=prov_id, method="POST")
        repo.flush()
        audit(ctx, conn, "correct-nhs-number", f"Patient/{res_id}/_history/{stored.version}", [stored], {res_id},
              {"description": f"NHS number of Patient/{res_id} corrected", "provenance": f"Provenance/{prov_id}"})
    return Result(200, stored.content.encode(), headers=version_headers(ctx, stored), resource=stored.content.encode())

"""``Patient/$merge`` (the R5 operation's parameters, on R4) and its inverse ``Patient/$unmerge``.

One database transaction each, all or nothing, set-based:

merge(source -> target)
  - the source's current row and every current resource that references it are locked
    (PostgreSQL ``FOR UPDATE``; SQLite writers are serialised by ``BEGIN IMMEDIATE``);
  - every such resource (Observations, DiagnosticReports, ... but not Provenance/AuditEvent, which
    record history) gets a new version with its references to the source re-pointed to the
    target, written with ``Repository.update_many`` (one executemany, COPY for the versions);
  - the source gets a new version: ``active=false``, ``link`` ``replaced-by`` the target, and
    its system|value identifiers *moved* to the target (an identifier belongs to one current
    Patient; the target lists the source's NHS number with ``use=old`` when it has its own);
  - the target gets a new version with ``link`` ``replaces`` the source and those identifiers;
  - a Provenance records all of it, and a ``patient_merge`` row remembers the versions written.
  No resource is deleted; nothing is left pointing at a record that is not current.

unmerge(source)
  - refused (409) if any version the merge wrote has been superseded since (restoring it would
    silently undo later work); otherwise every resource gets a new version whose content is
    exactly the pre-merge version's, and a Provenance records the unmerge.
"""

from __future__ import annotations

import copy
from typing import Any

import orjson
from sqlalchemy import Connection, and_, or_, select, update

from app.audit.patients import patients_in
from app.auth.invalidation import announce, settle
from app.auth.permission import forbidden
from app.db import unit_of_work
from app.fhir.errors import FhirError, info_outcome
from app.fhir.jsonutil import utcnow
from app.fhir.nhs_number import NHS_NUMBER_SYSTEM
from app.identity.params import one, parameters
from app.identity.provenance import provenance
from app.identity.rules import merged_into, official_nhs_number
from app.identity.tables import patient_merge
from app.interactions.context import FhirContext, Result
from app.protect.writes import refuse_withheld_patients, refuse_withheld_rids
from app.search import find_matches
from app.storage.references import parse_reference, rewrite_strings
from app.storage.repository import (
    Head,
    Repository,
    Stored,
    VersionConflict,
    conflict,
    content_hash,
    new_id,
)
from app.storage.tables import ref_link, resource, resource_version

NOT_REPOINTED = ("Provenance", "AuditEvent")  # records of what happened, kept as written
MERGE_PARAMS = {"source-patient", "source-patient-identifier", "target-patient", "target-patient-identifier",
                "preview", "result-patient", "delete-source"}
UNMERGE_PARAMS = {"source-patient", "target-patient", "preview", "reason"}


# ---- authorisation --------------------------------------------------------------------------
def require_merge_permission(ctx: FhirContext, types: set[str]) -> None:
    """Update on Patient and on every affected type, unrestricted: a merge rewrites records of
    one person wholesale, which a patient-scoped or filtered (granular) token cannot be trusted
    to see whole. No-op when the server runs open (no token)."""
    perm = ctx.permission
    if perm is None:
        return
    for t in sorted(types | {"Patient"}):
        perm.require(t, "u")
        if perm.restricts(t, "u"):
            raise forbidden(
                f"Merging and unmerging patient records needs update access to every {t} (a system/ scope, or a "
                "practitioner's user/ scope without filters); a patient-scoped or filtered token cannot merge."
            )


# ---- resolving the two patients -------------------------------------------------------------
def _ref_id(ctx: FhirContext, ref: dict, name: str) -> tuple[str | None, list[dict]]:
    idents = [ref["identifier"]] if isinstance(ref.get("identifier"), dict) else []
    value = ref.get("reference")
    if value is None:
        return None, idents
    parsed = parse_reference(value, ctx.base_url) if isinstance(value, str) else None
    if parsed is None or parsed[0] != "Patient":
        raise FhirError(400, "invalid", f"Parameter '{name}' must reference a Patient (Patient/id).")
    return parsed[1], idents


def _by_identifier(ctx: FhirContext, conn: Connection, ident: dict, name: str) -> str:
    system, value = ident.get("system"), ident.get("value")
    if not isinstance(system, str) or not isinstance(value, str):
        raise FhirError(400, "invalid", f"The identifier in '{name}' needs a system and a value.")
    rows = find_matches(conn, ctx.registry, "Patient", [("identifier", f"{system}|{value}")], base_url=ctx.base_url,
                        tz=ctx.tz, limit=2)
    if rows:  # a match the token may not see is refused, not used (like a conditional write)
        note_named(ctx, None, *(r[1] for r in rows))
        refuse_withheld_rids(ctx, conn, (r.rid for r in rows))
    if not rows:
        raise FhirError(404, "not-found", f"No Patient has the identifier given in '{name}'.")
    if len(rows) > 1:
        raise FhirError(422, "multiple-matches", f"The identifier given in '{name}' matches more than one Patient.")
    return rows[0][1]


def resolve(ctx: FhirContext, conn: Connection, params: dict[str, list[dict]], role: str) -> str:
    """The id of the source or target patient, from a reference and/or identifiers (which must
    all name the same Patient, as the R5 operation requires)."""
    name = f"{role}-patient"
    ref = one(params, name, "valueReference", dict)
    ids: set[str] = set()
    idents = [p.get("valueIdentifier") for p in params.get(f"{name}-identifier", [])]
    if ref is not None:
        rid, more = _ref_id(ctx, ref, name)
        if rid is not None:
            ids.add(rid)
        idents += more
    for ident in idents:
        if not isinstance(ident, dict):
            raise FhirError(400, "invalid", f"'{name}-identifier' must carry valueIdentifier.")
        ids.add(_by_identifier(ctx, conn, ident, name))
    if not ids:
        raise FhirError(400, "required", f"Patient/$merge needs '{name}' (a reference) or '{name}-identifier'.")
    refuse_withheld_patients(ctx, conn, ids)  # a Patient withheld from the token: 403, nothing changed
    if len(ids) > 1:
        raise FhirError(422, "processing", f"The reference and identifiers given for the {role} patient name "
                        f"different Patients ({', '.join('Patient/' + i for i in sorted(ids))}).")
    return ids.pop()


# ---- reading and locking --------------------------------------------------------------------
def _locked_heads(conn: Connection, where) -> list[tuple]:
    """Current rows (rid, type, id, version, deleted, hash, last_updated), locked for this
    transaction on PostgreSQL, in rid order (two merges lock in the same order: no deadlock)."""
    stmt = (
        select(resource.c.rid, resource.c.res_type, resource.c.res_id, resource.c.version, resource.c.deleted,
               resource.c.content_hash, resource.c.last_updated)
        .where(where)
        .order_by(resource.c.rid)
    )
    if conn.dialect.name == "postgresql":
        stmt = stmt.with_for_update(of=resource)
    return list(conn.execute(stmt).all())


def _head(row) -> Head:
    return Head(row[0], row[3], row[4], row[5], row[6])


def _patient(ctx: FhirContext, conn: Connection, repo: Repository, res_id: str, role: str) -> tuple[Head, dict]:
    rows = _locked_heads(conn, and_(resource.c.res_type == "Patient", resource.c.res_id == res_id))
    if not rows:
        raise FhirError(404, "not-found", f"The {role} patient Patient/{res_id} is not known to this server.")
    if rows[0][4]:
        raise FhirError(410, "deleted", f"The {role} patient Patient/{res_id} was deleted.")
    stored = repo.read("Patient", res_id)
    return _head(rows[0]), orjson.loads(stored.content)


def referrers(conn: Connection, patient_id: str, exclude: set[str]) -> list[tuple]:
    """Locked current rows of every resource that references Patient/patient_id."""
    rids = select(ref_link.c.rid).where(ref_link.c.target_type == "Patient", ref_link.c.target_id == patient_id)
    rows = _locked_heads(conn, and_(resource.c.rid.in_(rids), resource.c.deleted.is_(False),
                                    resource.c.res_type.notin_(NOT_REPOINTED)))
    return [r for r in rows if not (r[1] == "Patient" and r[2] in exclude)]


# ---- building the new versions --------------------------------------------------------------
def _body(doc: dict) -> dict:
    out = {k: v for k, v in doc.items() if k != "meta"}
    meta = {k: v for k, v in (doc.get("meta") or {}).items() if k not in ("versionId", "lastUpdated")}
    if meta:
        out["meta"] = meta
    return out


def repoint(doc: dict, source: str, target: str, base_url: str) -> dict:
    def fn(key: str, value: str) -> str | None:
        if key == "reference" and parse_reference(value, base_url) == ("Patient", source):
            return f"Patient/{target}"
        return None

    return rewrite_strings(_body(doc), fn)  # type: ignore[return-value]


def merged_bodies(source_id: str, source: dict, target_id: str, target: dict) -> tuple[dict, dict]:
    """(new source, new target)."""
    src, tgt = _body(copy.deepcopy(source)), _body(copy.deepcopy(target))
    t_nhs = official_nhs_number(tgt)
    idents = list(tgt.get("identifier") or [])
    have = {(i.get("system"), i.get("value")) for i in idents if isinstance(i, dict)}
    moved = [i for i in src.get("identifier") or () if isinstance(i, dict) and i.get("system") and i.get("value")]
    for i in moved:
        if (i["system"], i["value"]) in have:
            continue
        i = dict(i)
        if i["system"] == NHS_NUMBER_SYSTEM and t_nhs and i["value"] != t_nhs:
            i["use"] = "old"
        idents.append(i)
    if idents:
        tgt["identifier"] = idents
    tgt["link"] = [*(tgt.get("link") or []), {"other": {"reference": f"Patient/{source_id}"}, "type": "replaces"}]
    kept = [i for i in src.get("identifier") or () if not (isinstance(i, dict) and i.get("system") and i.get("value"))]
    if kept:
        src["identifier"] = kept
    else:
        src.pop("identifier", None)
    src["active"] = False
    links = [lk for lk in src.get("link") or () if (lk.get("other") or {}).get("reference") != f"Patient/{target_id}"]
    src["link"] = [*links, {"other": {"reference": f"Patient/{target_id}"}, "type": "replaced-by"}]
    return src, tgt


def _summary(rows: list[tuple]) -> str:
    by: dict[str, int] = {}
    for r in rows:
        by[r[1]] = by.get(r[1], 0) + 1
    return ", ".join(f"{n} {t}" for t, n in sorted(by.items())) or "no other resources"


def audit(ctx: FhirContext, conn: Connection, subtype: str, entity: str, written: list[Stored], patients: set[str],
          detail: dict) -> None:
    """The operation's AuditEvent (subtype merge / unmerge / correct-nhs-number), written on
    ``conn`` inside the operation's transaction after every other write: it commits with the
    change or not at all (a failed operation gets the HTTP layer's failure event instead).  The
    patients: those named, and every patient a written version references (the merged group)."""
    if ctx.audit is None:
        return
    named = set(patients)
    for s in written:
        named |= patients_in(s.content)
        if s.res_type == "Patient":
            named.add(s.res_id)
    ctx.audit.operation(conn, subtype, res_type="Patient", entity=entity, patients=named, detail=detail)


def note_named(ctx: FhirContext, body: object = None, *ids: str) -> None:
    """Tell the request's audit recorder which patients the request names (the Patient
    references in its body, and the ids resolved from identifiers), so that a refused or failed
    operation's event names them too (the body itself is not kept by the HTTP layer)."""
    if ctx.audit is None:
        return
    if isinstance(body, dict):
        ctx.audit.named |= patients_in(orjson.dumps(body))
    ctx.audit.named.update(i for i in ids if i)


def _out(body: Any, outcome: dict, result: str | None) -> Result:
    params: list[dict] = [{"name": "input", "resource": body}, {"name": "outcome", "resource": outcome}]
    out = orjson.dumps({"resourceType": "Parameters", "parameter": params})
    if result is not None:
        out = out[:-2] + b',{"name":"result","resource":' + result.encode() + b"}]}"
    return Result(200, out)


# ---- merge ----------------------------------------------------------------------------------
def merge(ctx: FhirContext, body: object) -> Result:
    note_named(ctx, body)
    params = parameters(body, "Patient/$merge", MERGE_PARAMS)
    if params.get("result-patient"):
        raise FhirError(400, "not-supported", "This server builds the merged Patient itself; 'result-patient' is not "
                        "supported. Update the target afterwards if it needs other demographics.")
    if one(params, "delete-source", "valueBoolean", bool):
        raise FhirError(400, "not-supported", "A merge never deletes the source Patient here: it stays, inactive, "
                        "with link replaced-by (so that the merge can be undone).")
    preview = bool(one(params, "preview", "valueBoolean", bool))
    require_merge_permission(ctx, set())
    with unit_of_work(ctx.engine, write=True) as conn:
        repo = ctx.repo(conn)
        source_id = resolve(ctx, conn, params, "source")
        note_named(ctx, None, source_id)
        target_id = resolve(ctx, conn, params, "target")
        note_named(ctx, None, target_id)
        if source_id == target_id:
            raise FhirError(422, "business-rule", "The source and target patient are the same Patient.")
        for pid, role in ((source_id, "source"), (target_id, "target")):
            into = merged_into(conn, pid)
            if into is not None:
                hint = "" if role == "source" else f"; merge into Patient/{into} instead"
                raise FhirError(422, "business-rule", f"The {role} Patient/{pid} was already merged into Patient/{into}{hint}.")
        s_head, source = _patient(ctx, conn, repo, source_id, "source")
        t_head, target = _patient(ctx, conn, repo, target_id, "target")
        rows = referrers(conn, source_id, {source_id, target_id})
        require_merge_permission(ctx, {r[1] for r in rows})
        new_src, new_tgt = merged_bodies(source_id, source, target_id, target)
        what = (f"Patient/{source_id} into Patient/{target_id}: {_summary(rows)} re-pointed, identifiers "
                "moved, source made inactive (link replaced-by)")
        if preview:
            conn.rollback()
            return _out(body, info_outcome(f"Preview only, nothing was changed. The merge would merge {what}."),
                        orjson.dumps(new_tgt).decode())
        contents = {s.rid: s.content for s in repo.read_many([r[0] for r in rows])}
        items: list[tuple[Head, dict, str]] = [(s_head, new_src, source_id), (t_head, new_tgt, target_id)]
        items += [(_head(r), repoint(orjson.loads(contents[r[0]]), source_id, target_id, ctx.base_url), r[2]) for r in rows]
        before = [("Patient", source_id, s_head.version), ("Patient", target_id, t_head.version)]
        before += [(r[1], r[2], r[3]) for r in rows]
        written = _write(repo, items)
        prov_id = new_id()
        prov = provenance("merge", "Merge Record Lifecycle Event", [(s.res_type, s.res_id, s.version) for s in written],
                          before, ctx.permission)
        repo.create(prov, res_id=prov_id, method="POST")
        detail = [[s.res_type, s.res_id, s.rid, s.version - 1, s.version, content_hash(orjson.loads(s.content))]
                  for s in written]
        conn.execute(patient_merge.insert().values(id=prov_id, source_id=source_id, target_id=target_id,
                                                   merged_at=utcnow(), detail=orjson.dumps(detail).decode()))
        announce(conn)  # every process's merged-id cache (app.identity.aliases), at commit
        repo.flush()
        audit(ctx, conn, "merge", f"Patient/{source_id}/_history/{written[0].version}", written,
              {source_id, target_id}, {"description": f"Merged {what}", "target": f"Patient/{target_id}",
                                       "provenance": f"Provenance/{prov_id}"})
        result = written[1].content
    settle()  # committed: return once every worker searches with the new group
    return _out(body, info_outcome(f"Merged {what}. Recorded as Provenance/{prov_id}."), result)


def _write(repo: Repository, items: list[tuple[Head, dict, str]]) -> list[Stored]:
    try:
        written = repo.update_many(items)
        repo.flush()
    except VersionConflict as exc:
        raise conflict(exc, False) from None
    return written


# ---- unmerge --------------------------------------------------------------------------------
def unmerge(ctx: FhirContext, body: object) -> Result:
    note_named(ctx, body)
    params = parameters(body, "Patient/$unmerge", UNMERGE_PARAMS)
    preview = bool(one(params, "preview", "valueBoolean", bool))
    reason = one(params, "reason", "valueString", str)
    ref = one(params, "source-patient", "valueReference", dict)
    if ref is None:
        raise FhirError(400, "required", "Patient/$unmerge needs 'source-patient': the Patient that was merged away.")
    source_id, _ = _ref_id(ctx, ref, "source-patient")
    if source_id is None:
        raise FhirError(400, "invalid", "'source-patient' must be a reference (Patient/id): a merged Patient has no identifiers.")
    require_merge_permission(ctx, set())
    with unit_of_work(ctx.engine, write=True) as conn:
        repo = ctx.repo(conn)
        refuse_withheld_patients(ctx, conn, [source_id])  # withheld from the token: 403, nothing said
        rec = conn.execute(
            select(patient_merge).where(patient_merge.c.source_id == source_id, patient_merge.c.unmerged_at.is_(None))
        ).first()
        if rec is None:
            raise FhirError(422, "business-rule", f"Patient/{source_id} is not merged into another Patient.")
        refuse_withheld_patients(ctx, conn, [rec.target_id])
        t_ref = one(params, "target-patient", "valueReference", dict)
        if t_ref is not None and _ref_id(ctx, t_ref, "target-patient")[0] != rec.target_id:
            raise FhirError(422, "business-rule", f"Patient/{source_id} was merged into Patient/{rec.target_id}, not the "
                            "target given.")
        detail = orjson.loads(rec.detail)
        rows = {r[0]: r for r in _locked_heads(conn, resource.c.rid.in_([d[2] for d in detail]))}
        require_merge_permission(ctx, {d[0] for d in detail})
        # unchanged = the content the merge wrote (a later merge undone in between leaves newer
        # versions with that same content)
        changed = [f"{t}/{i} (now version {rows[rid][3]}, the merge wrote {after})"
                   for t, i, rid, _before, after, chash in detail
                   if rid not in rows or rows[rid][4] or rows[rid][5] != chash]
        if changed:
            raise FhirError(409, "conflict", f"Cannot unmerge Patient/{source_id}: {len(changed)} resource(s) changed after "
                            f"the merge, e.g. {', '.join(changed[:5])}. Correct them by hand instead.")
        old_by = {r[0]: r[1] for r in _old_versions(conn, detail)}
        what = f"Patient/{source_id} from Patient/{rec.target_id}: {len(detail)} resources restored to their pre-merge versions"
        if preview:
            conn.rollback()
            return _out(body, info_outcome(f"Preview only, nothing was changed. The unmerge would separate {what}."), None)
        items = [(_head(rows[rid]), _body(orjson.loads(old_by[rid])), d[1]) for d in detail for rid in (d[2],)]
        written = _write(repo, items)
        prov_id = new_id()
        prov = provenance("unmerge", "Unmerge Record Lifecycle Event",
                          [(s.res_type, s.res_id, s.version) for s in written],
                          [(t, i, rows[rid][3]) for t, i, rid, *_ in detail], ctx.permission, reason,
                          [{"role": "source", "what": {"reference": f"Provenance/{rec.id}"}}])
        repo.create(prov, res_id=prov_id, method="POST")
        conn.execute(update(patient_merge).where(patient_merge.c.id == rec.id)
                     .values(unmerged_at=utcnow(), unmerge_provenance_id=prov_id))
        announce(conn)
        repo.flush()
        src = next((s for s in written if s.res_type == "Patient" and s.res_id == source_id), None)
        audit(ctx, conn, "unmerge", f"Patient/{source_id}" + (f"/_history/{src.version}" if src else ""), written,
              {source_id, rec.target_id}, {"description": f"Unmerged {what}", "target": f"Patient/{rec.target_id}",
                                           "provenance": f"Provenance/{prov_id}"})
    settle()
    return _out(body, info_outcome(f"Unmerged {what}. Recorded as Provenance/{prov_id}."), None)


def _old_versions(conn: Connection, detail: list) -> list:
    out = []
    rv = resource_version
    for i in range(0, len(detail), 500):
        chunk = detail[i : i + 500]
        out += conn.execute(
            select(rv.c.rid, rv.c.content).where(or_(*(and_(rv.c.rid == d[2], rv.c.version == d[3]) for d in chunk)))
        ).all()
    return out

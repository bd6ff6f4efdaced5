"""Job lifecycle without Flask: kick-off, status/manifest, cancel, file lookup, authorisation.

States: ``queued`` -> ``running`` -> ``completed`` | ``failed``; ``cancelled`` after DELETE.
A cancelled or expired job answers 404 everywhere; the sweeper removes its rows and files.
"""

from __future__ import annotations

import shutil
import uuid
from datetime import datetime, timedelta
from urllib.parse import urlencode

import orjson
from sqlalchemy import delete, func, insert, select, text, update

from app.bulk.params import ExportParams
from app.bulk.settings import BulkSettings
from app.bulk.tables import bulk_file, bulk_job, bulk_job_patient
from app.db import unit_of_work
from app.db.engine import is_sqlite
from app.fhir.errors import FhirError, Issue, operation_outcome
from app.fhir.jsonutil import http_date, instant, utcnow
from app.interactions.context import FhirContext, Result
from app.storage.tables import resource, resource_version

ACTIVE = ("queued", "running")
VISIBLE = ("queued", "running", "completed", "failed")


# --- authorisation ------------------------------------------------------------------------------

def client_of(ctx: FhirContext) -> str:
    """The client a job is bound to: the token's client id, or the caller on an open server."""
    perm = getattr(ctx, "permission", None)
    for attr in ("client_id", "client"):
        value = getattr(perm, attr, None) if perm is not None else None
        if isinstance(value, str) and value:
            return value
    return getattr(ctx, "caller", None) or "anonymous"


def check_export_allowed(ctx: FhirContext, params: ExportParams, level: str = "system") -> ExportParams:
    """The one place export authorisation is decided (at kick-off). Returns the params narrowed
    to what the token may read (app.auth.permission.Permission on ``ctx.permission``).

    - open server (``ctx.permission`` is None): everything is allowed;
    - only the token's ``system/`` scopes count: a token without one (patient or user token)
      gets 403, at every level;
    - ``_type`` naming a type no system scope lets the token read (``r``): 403; without ``_type``
      the export is narrowed to the readable types (none: 403); a Group-level export needs
      Group read as well (the membership is read from the Group);
    - granular scopes (``system/Observation.rs?category=laboratory``) become ``scope_filters``
      (OR-ed per type, AND-ed with ``_typeFilter``) compiled into the export query; a scope
      with no query makes the type unrestricted; a query the type cannot evaluate grants nothing;
    - ``includeAssociatedData`` adds Provenance: the token must allow reading it (else 403), and
      its granular Provenance scopes restrict that stage.
    Client binding (poll, download, delete) is enforced by :func:`load_job` via :func:`client_of`.
    """
    perm = getattr(ctx, "permission", None)
    if perm is None:
        return params
    from app.search.parse import parse

    system = [sc for sc in getattr(perm, "scopes", ()) if sc.context == "system"]
    if not system:
        raise FhirError(403, "forbidden", "Bulk export needs a system-level token (system/ scopes); "
                                          "patient and user tokens cannot start an export.")
    if level == "group" and not any(sc.allows("Group", "r") for sc in system):
        raise FhirError(403, "forbidden", "A Group export needs a scope that allows reading Group.")
    readable: list[str] = []
    filters: dict[str, list[str]] = {}
    # includeAssociatedData exports Provenance too: the token must be able to read it.
    extra = ["Provenance"] if params.include_associated and "Provenance" not in params.types else []
    for t in params.types + extra:
        scs = [sc for sc in system if sc.allows(t, "r")]
        queries: list[str] = []
        unrestricted = False
        for sc in scs:
            if not sc.query:
                unrestricted = True
                break
            try:
                if parse(t, list(sc.query), ctx.registry, strict=True).clauses:
                    queries.append(urlencode(list(sc.query)))
            except FhirError:
                pass  # a filter this type cannot evaluate grants nothing
        if unrestricted:
            readable.append(t)
        elif queries:
            readable.append(t)
            filters[t] = queries
    if params.include_associated and "Provenance" not in readable:
        raise FhirError(403, "forbidden", "includeAssociatedData adds Provenance resources, which the access "
                                          "token does not allow reading.", ["includeAssociatedData"])
    readable = [t for t in readable if t in params.types]
    denied = [t for t in params.types if t not in readable]
    if denied and params.type_explicit:
        raise FhirError(403, "forbidden", f"The access token does not allow reading {', '.join(denied)}.", ["_type"])
    if not readable:
        raise FhirError(403, "forbidden", "The access token does not allow reading any type this export covers.")
    params.types = readable
    params.type_filters = {t: q for t, q in params.type_filters.items() if t in readable}
    params.scope_filters = filters
    params.withheld = sorted([s, c] for s, c in getattr(perm, "withheld", ()))
    return params


# --- kick-off -----------------------------------------------------------------------------------

def _group_members(conn, ctx: FhirContext, group_id: str) -> list[str]:
    r, v = resource, resource_version
    row = conn.execute(
        select(v.c.content, r.c.deleted)
        .select_from(r.join(v, (v.c.rid == r.c.rid) & (v.c.version == r.c.version)))
        .where(r.c.res_type == "Group", r.c.res_id == group_id)
    ).first()
    if row is None or row.deleted:
        raise FhirError(404, "not-found", f"Group/{group_id} is not known to this server.")
    doc = orjson.loads(row.content)
    out: list[str] = []
    for m in doc.get("member") or []:
        if m.get("inactive") is True:
            continue
        ref = ((m.get("entity") or {}).get("reference") or "").rstrip("/")
        parts = ref.split("/")
        if len(parts) >= 2 and parts[-2] == "Patient" and parts[-1] and parts[-1] not in out:
            out.append(parts[-1])
    return out


def kick_off(ctx: FhirContext, s: BulkSettings, *, level: str, group_id: str | None, params: ExportParams,
             request_url: str) -> Result:
    params = check_export_allowed(ctx, params, level)
    client = client_of(ctx)
    job_id = uuid.uuid4().hex
    now = utcnow()
    with unit_of_work(ctx.engine, write=True) as conn:
        if not is_sqlite(conn):  # serialise one client's kick-offs so the limit holds
            conn.execute(text("SELECT pg_advisory_xact_lock(hashtext(:c))"), {"c": "bulk:" + client})
        active = conn.execute(
            select(func.count()).select_from(bulk_job)
            .where(bulk_job.c.client_id == client, bulk_job.c.state.in_(ACTIVE))
        ).scalar_one()
        if active >= s.max_jobs_per_client:
            err = FhirError(429, "throttled", f"This client already has {active} export(s) in progress "
                            f"(limit {s.max_jobs_per_client}); retry when one has finished.")
            err.headers = {"Retry-After": str(max(s.retry_after, 10))}  # type: ignore[attr-defined]
            raise err
        patients: list[str] | None = None
        if level == "group":
            patients = _group_members(conn, ctx, group_id or "")
            if params.patients:
                patients = [p for p in patients if p in set(params.patients)]
        elif params.patients:
            patients = list(params.patients)
        if params.patients:
            known = set(conn.execute(
                select(resource.c.res_id).where(resource.c.res_type == "Patient", resource.c.deleted.is_(False),
                                                resource.c.res_id.in_(params.patients))
            ).scalars())
            for p in params.patients:
                if p not in known:
                    params.notes.append(f"Patient/{p} is not known to this server; nothing was exported for it.")
        conn.execute(insert(bulk_job).values(
            id=job_id, client_id=client, state="queued", level=level, group_id=group_id,
            request_url=request_url, params=orjson.dumps(params.to_json()).decode(),
            transaction_time=now, created_at=now, attempts=0, exported=0,
        ))
        if patients:
            conn.execute(insert(bulk_job_patient), [{"job_id": job_id, "patient_id": p} for p in patients])
    return Result(202, None, {"Content-Location": status_url(ctx, job_id)})


def status_url(ctx: FhirContext, job_id: str) -> str:
    return f"{ctx.base_url}/$export-status/{job_id}"


def file_url(ctx: FhirContext, job_id: str, name: str) -> str:
    return f"{ctx.base_url}/$export-file/{job_id}/{name}"


# --- status, manifest, cancel, files ----------------------------------------------------------

def load_job(conn, ctx: FhirContext, job_id: str):
    """The job, if it exists, is visible (not cancelled or expired) and belongs to this client."""
    if not job_id.isalnum() or len(job_id) > 36:
        raise FhirError(404, "not-found", "No such export job.")
    row = conn.execute(select(bulk_job).where(bulk_job.c.id == job_id)).first()
    now = utcnow()
    if (row is None or row.state not in VISIBLE or row.client_id != client_of(ctx)
            or (row.expires_at is not None and row.expires_at <= now)):
        raise FhirError(404, "not-found", "No such export job (it may have expired or been deleted).")
    return row


def _expires(row) -> dict[str, str]:
    return {"Expires": http_date(row.expires_at)} if row.expires_at else {}


def status(ctx: FhirContext, s: BulkSettings, job_id: str) -> Result:
    now = utcnow()
    with unit_of_work(ctx.engine, write=True) as conn:
        row = load_job(conn, ctx, job_id)
        if row.state in ACTIVE:
            if row.last_polled_at is not None and (now - row.last_polled_at).total_seconds() < s.min_poll_interval:
                wait = s.min_poll_interval - (now - row.last_polled_at).total_seconds()
                err = FhirError(429, "throttled", f"Polled too often: wait {s.retry_after} s between status requests.")
                err.headers = {"Retry-After": str(max(1, int(wait + 0.999)))}  # type: ignore[attr-defined]
                raise err
            conn.execute(update(bulk_job).where(bulk_job.c.id == job_id).values(last_polled_at=now))
            if row.state == "queued":
                progress = "queued"
            else:
                pct = f"{min(99, int(100 * row.exported / row.total_estimate))}% " if row.total_estimate else ""
                progress = f"{pct}({row.exported} resources exported)".strip()
            return Result(202, None, {"X-Progress": progress, "Retry-After": str(s.retry_after)})
        f = bulk_file.c  # not the patient sets (``patients``), which the manifest does not need
        files = conn.execute(select(f.kind, f.res_type, f.name, f.count).where(f.job_id == job_id)
                             .order_by(f.seq)).all()
    if row.state == "failed":
        body = orjson.dumps(operation_outcome([Issue("exception", f"The export failed: {row.error or 'unknown error'}")]))
        return Result(500, body, _expires(row))
    manifest = {
        "transactionTime": instant(row.transaction_time),
        "request": row.request_url,
        "requiresAccessToken": True,
        "output": [{"type": f.res_type, "url": file_url(ctx, job_id, f.name), "count": f.count}
                   for f in files if f.kind == "output"],
        "error": [{"type": "OperationOutcome", "url": file_url(ctx, job_id, f.name), "count": f.count}
                  for f in files if f.kind == "error"],
    }
    deleted = [{"type": "Bundle", "url": file_url(ctx, job_id, f.name), "count": f.count}
               for f in files if f.kind == "deleted"]
    if deleted:  # with _since: resources deleted since then, as DELETE transaction Bundles
        manifest["deleted"] = deleted
    headers = {"Content-Type": "application/json", **_expires(row)}
    return Result(200, orjson.dumps(manifest), headers)


def cancel(ctx: FhirContext, s: BulkSettings, job_id: str) -> Result:
    now = utcnow()
    with unit_of_work(ctx.engine, write=True) as conn:
        load_job(conn, ctx, job_id)
        conn.execute(update(bulk_job).where(bulk_job.c.id == job_id)
                     .values(state="cancelled", expires_at=now, worker_id=None))
        conn.execute(delete(bulk_file).where(bulk_file.c.job_id == job_id))
    shutil.rmtree(s.export_dir / job_id, ignore_errors=True)
    body = orjson.dumps(operation_outcome([Issue("informational", "The export was cancelled and its files removed.",
                                                 "information")]))
    return Result(202, body)


def file_path(ctx: FhirContext, s: BulkSettings, job_id: str, name: str):
    with unit_of_work(ctx.engine) as conn:
        row = load_job(conn, ctx, job_id)
        f = conn.execute(select(bulk_file.c.name).where(bulk_file.c.job_id == job_id,
                                                        bulk_file.c.name == name)).first()
    if f is None:
        raise FhirError(404, "not-found", "No such file in this export.")
    path = s.export_dir / job_id / f.name
    if not path.is_file():
        raise FhirError(404, "not-found", "The file is no longer available.")
    return path, row


def pack_patients(ids: set[str] | None) -> str | None:
    """A file's patient set as stored in ``bulk_file.patients``: sorted ids separated by spaces
    (ids never contain one), '' for none, None (NULL) when the set was not computed."""
    return None if ids is None else " ".join(sorted(ids))


def file_patients(engine, job_id: str, name: str) -> set[str] | None:
    """The Patient ids the worker recorded for an export file (the download audit's), or None
    when none were recorded (a file written before migration 0007 or with the audit off)."""
    with unit_of_work(engine) as conn:
        stored = conn.execute(select(bulk_file.c.patients).where(bulk_file.c.job_id == job_id,
                                                                 bulk_file.c.name == name)).scalar()
    return None if stored is None else set(stored.split())


def expiry_time(s: BulkSettings, when: datetime) -> datetime:
    return when + timedelta(seconds=s.file_ttl)

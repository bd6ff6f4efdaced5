"""The export itself: a snapshot at ``transactionTime`` streamed to NDJSON files.

Snapshot: for each current ``resource`` row of a type (keyset on ``rid``), the version served is
the current one when it was last updated at or before the transaction time, otherwise the newest
``resource_version`` row at or before it (a correlated ``max(version)``, only for the few rows
changed since kick-off); a version that is a delete, or a resource created later, yields nothing.
Search criteria (``_typeFilter``, the Patient compartment, Group members) are evaluated on the
search index, which describes the current version (see docs/decisions/0007-bulk-export.md).

Memory: rows come in keyset batches whose row count is sized so a batch holds about
``batch_bytes`` of JSON (from the running average row size), and each line goes straight to a
file. Stored JSON is the served bytes: it is written as is (re-serialised only for ``_elements``).

Files: one type per file, at most ``file_max_bytes`` each (a single larger resource gets a file
of its own); written as ``<name>.<tag>.part``, fsync-ed, renamed, and only then recorded (with the
resume cursor) in the same transaction, so a crash never shows a half-written file and a
resumed job continues from the last recorded file without duplicates.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import orjson
from sqlalchemy import and_, case, func, or_, select

from app.bulk.params import ExportParams
from app.bulk.tables import bulk_job_patient
from app.search.parse import parse
from app.search.plan import Ctx, compile_node
from app.search.rewrite import _compartment_codes
from app.search.shape import Shape, shape_resource
from app.storage.tables import resource, resource_version, sp_reference

# Rows per batch: a small first batch measures the type's row size, later ones hold ~batch_bytes.
FIRST_BATCH, MIN_BATCH, MAX_BATCH = 100, 10, 20_000


class JobLost(Exception):
    """The job was cancelled or taken over by another worker: stop without recording anything."""


@dataclass
class Cursor:
    """Where a job resumes: the type index, the last ``rid`` in a recorded file, the next part
    number for that type, the next file sequence number and the count so far."""

    type_idx: int = 0
    after: int = 0
    part: int = 1
    seq: int = 0
    exported: int = 0
    phase: int = 0  # OUTPUT or DELETED pass of the type

    def to_json(self) -> dict:
        return self.__dict__.copy()


@dataclass
class FinishedFile:
    kind: str
    res_type: str
    name: str
    count: int
    size: int


def type_condition(t: str, params: ExportParams, job_id: str, level: str, registry: Any, tz: Any,
                   base_url: str, after: int = 0) -> Any:
    """Which current rows of type ``t`` belong to the export (None: all of them).

    ``after``: the batch's keyset bound, repeated inside every index subquery (as search paging
    does, app.search.plan) so each batch's semi-joins start at the bound instead of rid 0 (without
    it a Patient-level batch at rid 200,000 cost 310 ms instead of ~50, growing with the export)."""
    r = resource
    bound = (">", after) if after else None
    conds = []
    queries = params.type_filters.get(t, [])
    if queries:
        alts = [compile_node(parse(t, parse_qsl(q, keep_blank_values=True), registry, strict=True,
                                   base_url=base_url, tz=tz).tree(), Ctx(t, r, bound)) for q in queries]
        conds.append(or_(*alts))
    scoped = params.scope_filters.get(t, [])
    if scoped:  # the token's granular scopes: OR-ed among themselves, AND-ed with the rest
        conds.append(or_(*(compile_node(parse(t, parse_qsl(q, keep_blank_values=True), registry, strict=True,
                                                  base_url=base_url, tz=tz).tree(), Ctx(t, r, bound)) for q in scoped)))
    if level in ("patient", "group"):
        restricted = level == "group" or bool(params.patients)
        members = select(bulk_job_patient.c.patient_id).where(bulk_job_patient.c.job_id == job_id)
        if t == "Patient":
            if restricted:
                conds.append(r.c.res_id.in_(members))
        else:
            codes = [c for c in _compartment_codes(registry, t) if c != "{def}"]
            ref = sp_reference.alias("cref")
            sub = select(ref.c.rid).where(ref.c.res_type == t, ref.c.param.in_(codes),
                                          ref.c.target_type == "Patient")
            if restricted:
                sub = sub.where(ref.c.target_id.in_(members))
            if after:
                sub = sub.where(ref.c.rid > after)
            conds.append(r.c.rid.in_(sub))
    return and_(*conds) if conds else None


def snapshot_select(t: str, at: datetime, since: datetime | None, cond: Any, after: int, n: int):
    """One keyset batch: ``(rid, content)`` for the next ``n`` current rows of type ``t`` after
    ``rid`` ``after``, with the content of the version current at ``at``; ``content`` is NULL
    when that version is excluded (a delete, created later, older than ``since``), so the batch
    always advances by the rows it looked at.

    The batch of ``resource`` rows is chosen first (primary-key order, LIMIT n) and only then
    joined to ``resource_version`` by primary key: a nested loop of n index probes, which plans
    the same on PostgreSQL and SQLite whatever the table sizes (a plain join let PostgreSQL hash
    both whole tables for every batch)."""
    r, v = resource, resource_version
    inner = select(r.c.rid, r.c.version, r.c.last_updated).where(r.c.res_type == t, r.c.rid > after)
    if since is not None:
        inner = inner.where(r.c.last_updated >= since)  # necessary: versions only get newer
    if cond is not None:
        inner = inner.where(cond)
    b = inner.order_by(r.c.rid).limit(n).subquery("b")
    v2 = resource_version.alias("v2")
    older = (select(func.max(v2.c.version)).where(v2.c.rid == b.c.rid, v2.c.last_updated <= at)
             .scalar_subquery())
    version_at = case((b.c.last_updated <= at, b.c.version), else_=older)
    on = and_(v.c.rid == b.c.rid, v.c.version == version_at, v.c.deleted.is_(False))
    if since is not None:
        on = and_(on, v.c.last_updated >= since)
    return select(b.c.rid, v.c.content).select_from(b.outerjoin(v, on)).order_by(b.c.rid)


def shape_for(t: str, elements: list[str] | None) -> Shape | None:
    if not elements:
        return None
    names = [n.split(".", 1)[1] for n in elements if "." in n and n.split(".", 1)[0] == t]
    names += [n for n in elements if "." not in n]
    return Shape("false", tuple(dict.fromkeys(names))) if names else None


class PartWriter:
    """Writes one type's lines into ``<type>-<part>.ndjson`` files of at most ``max_bytes``."""

    def __init__(self, outdir: Path, res_type: str, part: int, max_bytes: int,
                 on_finish: Callable[[FinishedFile, int, int], None], kind: str = "output") -> None:
        self.outdir, self.res_type, self.part, self.max_bytes = outdir, res_type, part, max_bytes
        self.kind = kind
        self.tag = uuid.uuid4().hex[:8]
        self.on_finish = on_finish
        self.fh = None
        self.size = 0
        self.count = 0
        self.last_rid = 0

    @property
    def name(self) -> str:
        stem = self.res_type if self.kind == "output" else f"{self.res_type}-{self.kind}"
        return f"{stem}-{self.part}.ndjson"

    @property
    def tmp(self) -> Path:
        # Unique per writer: a worker that stalled past BULK_STALE_AFTER and is being replaced can
        # never write into (or delete) its successor's temporary file.
        return self.outdir / f"{self.name}.{self.tag}.part"

    def _open(self) -> None:
        self.fh = open(self.tmp, "wb", buffering=1024 * 1024)  # noqa: SIM115
        self.size = self.count = 0

    def write(self, rid: int, line: bytes) -> None:
        n = len(line) + 1
        if self.fh is not None and self.count and self.size + n > self.max_bytes:
            self.finish()
        if self.fh is None:
            self._open()
        self.fh.write(line)
        self.fh.write(b"\n")
        self.size += n
        self.count += 1
        self.last_rid = rid

    def finish(self) -> None:
        if self.fh is None:
            return
        self.fh.flush()
        os.fsync(self.fh.fileno())
        self.fh.close()
        self.fh = None
        os.replace(self.tmp, self.outdir / self.name)
        done = FinishedFile(self.kind, self.res_type if self.kind == "output" else "Bundle", self.name,
                            self.count, self.size)
        self.part += 1
        self.on_finish(done, self.last_rid, self.part)

    def abandon(self) -> None:
        if self.fh is not None:
            self.fh.close()
            self.fh = None
            self.tmp.unlink(missing_ok=True)


def deleted_select(t: str, at: datetime, since: datetime, after: int, n: int):
    """One keyset batch for the manifest's ``deleted`` files: ``(rid, res_id, hit)`` where ``hit``
    is not NULL when the version current at ``at`` is a delete made at or after ``since``."""
    r, v = resource, resource_version
    b = (select(r.c.rid, r.c.res_id, r.c.version, r.c.last_updated)
         .where(r.c.res_type == t, r.c.rid > after, r.c.last_updated >= since)
         .order_by(r.c.rid).limit(n).subquery("b"))
    v2 = resource_version.alias("v2")
    older = (select(func.max(v2.c.version)).where(v2.c.rid == b.c.rid, v2.c.last_updated <= at)
             .scalar_subquery())
    version_at = case((b.c.last_updated <= at, b.c.version), else_=older)
    on = and_(v.c.rid == b.c.rid, v.c.version == version_at, v.c.deleted.is_(True), v.c.last_updated >= since)
    return select(b.c.rid, b.c.res_id, v.c.rid.label("hit")).select_from(b.outerjoin(v, on)).order_by(b.c.rid)


def _delete_bundle(t: str, res_id: str) -> bytes:
    return orjson.dumps({"resourceType": "Bundle", "type": "transaction",
                         "entry": [{"request": {"method": "DELETE", "url": f"{t}/{res_id}"}}]})


OUTPUT, DELETED = 0, 1  # the two passes over a type (Cursor.phase)


def run_export(engine, *, job_id: str, level: str, params: ExportParams, at: datetime, registry: Any,
               tz: Any, base_url: str, outdir: Path, cursor: Cursor, file_max_bytes: int, batch_bytes: int,
               record: Callable[[FinishedFile | None, Cursor], None],
               heartbeat: Callable[[int], None]) -> Cursor:
    """Export every type from ``cursor`` on. ``record(file, cursor)`` commits a finished file with
    the cursor to resume after it (raises JobLost when the job is no longer ours);
    ``heartbeat(exported)`` is called after each batch.

    Per type: the output pass, then (with ``_since``, for a type exported without row filters)
    the deleted pass, which lists resources deleted since ``_since`` as NDJSON transaction
    Bundles with a DELETE entry (the manifest's ``deleted`` array). For a filtered type the
    deleted pass is skipped: a deleted resource has no index rows left to test the filter on, and
    listing every deleted id would disclose resources outside the filter or the token's scopes."""
    since = params.since_dt()
    pg = engine.dialect.name == "postgresql"
    for ti in range(cursor.type_idx, len(params.types)):
        t = params.types[ti]
        shape = shape_for(t, params.elements)
        cond = type_condition(t, params, job_id, level, registry, tz, base_url)
        resume = ti == cursor.type_idx
        phases = [OUTPUT] + ([DELETED] if since is not None and cond is None else [])
        for phase in phases:
            if resume and phase < cursor.phase:
                continue
            here = resume and phase == cursor.phase
            after = cursor.after if here else 0
            part = cursor.part if here else 1
            state = {"exported": cursor.exported, "seq": cursor.seq}

            def on_finish(f: FinishedFile, last_rid: int, next_part: int, _ti: int = ti, _ph: int = phase,
                          state: dict = state) -> None:
                state["seq"] += 1
                record(f, Cursor(_ti, last_rid, next_part, state["seq"], state["exported"], _ph))

            if phase == OUTPUT:
                writer = PartWriter(outdir, t, part, file_max_bytes, on_finish)
            else:
                writer = PartWriter(outdir, t, part, file_max_bytes, on_finish, kind="deleted")
            avg: float | None = None  # bytes per row of this type, learnt from the first batch
            try:
                while True:
                    n = FIRST_BATCH if avg is None else max(MIN_BATCH, min(MAX_BATCH, int(batch_bytes / avg)))
                    if phase == OUTPUT:
                        bounded = type_condition(t, params, job_id, level, registry, tz, base_url, after)
                        stmt = snapshot_select(t, at, since, bounded, after, n)
                    else:
                        stmt = deleted_select(t, at, since, after, n)
                    with engine.connect() as conn:
                        if pg:  # JIT compiles each batch's plan anew: ~10-20 ms a batch, never repaid
                            conn.exec_driver_sql("SET LOCAL jit = off")
                        rows = conn.execute(stmt).all()
                    if not rows:
                        break
                    total = 0
                    for row in rows:
                        if phase == OUTPUT:
                            rid, content = row
                            if content is None:
                                continue
                            raw = content.encode() if isinstance(content, str) else content
                            total += len(raw)
                            if shape is not None:
                                raw = shape_resource(t, raw, shape)
                            writer.write(rid, raw)
                            state["exported"] += 1
                        elif row.hit is not None:
                            writer.write(row.rid, _delete_bundle(t, row.res_id))
                    got = len(rows)
                    after = rows[-1][0]
                    avg = max(64.0, total / got) if phase == OUTPUT else 64.0  # rows left out count as small
                    del rows
                    heartbeat(state["exported"])
                    if got < n:
                        break
                writer.finish()
            except BaseException:
                writer.abandon()
                raise
            nxt = (ti, phase + 1) if phase + 1 in phases else (ti + 1, OUTPUT)
            cursor = Cursor(nxt[0], 0, 1, state["seq"], state["exported"], nxt[1])
            record(None, cursor)
            resume = False
    return cursor

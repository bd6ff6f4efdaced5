"""The export itself: a snapshot at ``transactionTime`` streamed to NDJSON files.

Snapshot: for each current ``resource`` row of a type (keyset on ``rid``), the version served is
the current one when it was last updated at or before the transaction time, otherwise the newest
``resource_version`` row at or before it (a correlated ``max(version)``, only for the few rows
changed since kick-off); a version that is a delete, or a resource created later, yields nothing.
Search criteria (``_typeFilter``, granular scopes, the Patient compartment, Group members) are
decided on the snapshot too: on the search index for rows unchanged since transactionTime, and on
the exported version's own index rows, built in a scratch database, for rows changed since
(app.bulk.snapshot; docs/decisions/0014-bulk-export-snapshot.md).

Memory: rows come in keyset batches whose row count is sized so a batch holds about
``batch_bytes`` of JSON (from the running average row size), and each line goes straight to a
file. Stored JSON is the served bytes: it is written as is (re-serialised only for ``_elements``).

Files: one type per file, at most ``file_max_bytes`` each (a single larger resource gets a file
of its own); written as ``<name>.<tag>.part``, fsync-ed, renamed, and only then recorded (with the
resume cursor) in the same transaction, so a crash never shows a half-written file and a
resumed job continues from the last recorded file without duplicates.

Patients: each file's writer also records the set of Patient ids whose data the file holds (the
download audit's scan, app.audit.patients.PatientScan, run over the lines as they are written, in
blocks of ``SCAN_BLOCK``), stored with the file's row, so a download is audited without reading
the file again (docs/decisions/0014-bulk-export-snapshot.md, section 4).
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

from app.audit.patients import PatientScan
from app.bulk import associated
from app.bulk.params import ExportParams
from app.bulk.snapshot import SnapshotFilter, changed_select, needs_live_index
from app.bulk.tables import bulk_job_patient
from app.fhir.errors import FhirError
from app.protect.labels import labelled
from app.search.parse import parse
from app.search.plan import Ctx, compile_node
from app.search.rewrite import _compartment_codes
from app.search.shape import Shape, shape_resource
from app.storage.tables import resource, resource_version, sp_reference

# Rows per batch: a small first batch measures the type's row size, later ones hold ~batch_bytes.
FIRST_BATCH, MIN_BATCH, MAX_BATCH = 100, 10, 20_000
# Lines are written (and scanned for patients) in blocks of about this many bytes.
SCAN_BLOCK = 1024 * 1024


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
    phase: int = 0  # OUTPUT or DELETED pass of the type (SCAN or WRITE of the Provenance stage)
    notes_done: bool = False  # the error file of kick-off notes has been written

    def to_json(self) -> dict:
        return self.__dict__.copy()


@dataclass
class FinishedFile:
    kind: str
    res_type: str
    name: str
    count: int
    size: int
    # the Patient ids whose data the file holds (app.audit.patients); None: not computed
    patients: set[str] | None = None


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
    if params.withheld:  # sensitive labels the token may not see: NOT EXISTS a _security row
        conds.append(~labelled(r.c.rid, frozenset((s, c) for s, c in params.withheld)))
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
    """One keyset batch: ``(rid, content, res_id)`` for the next ``n`` current rows of type ``t`` after
    ``rid`` ``after``, with the content of the version current at ``at``; ``content`` is NULL
    when that version is excluded (a delete, created later, older than ``since``), so the batch
    always advances by the rows it looked at.

    The batch of ``resource`` rows is chosen first (primary-key order, LIMIT n) and only then
    joined to ``resource_version`` by primary key: a nested loop of n index probes, which plans
    the same on PostgreSQL and SQLite whatever the table sizes (a plain join let PostgreSQL hash
    both whole tables for every batch)."""
    r, v = resource, resource_version
    inner = select(r.c.rid, r.c.version, r.c.last_updated, r.c.res_id).where(r.c.res_type == t, r.c.rid > after)
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
    return select(b.c.rid, v.c.content, b.c.res_id).select_from(b.outerjoin(v, on)).order_by(b.c.rid)


def shape_for(t: str, elements: list[str] | None) -> Shape | None:
    if not elements:
        return None
    names = [n.split(".", 1)[1] for n in elements if "." in n and n.split(".", 1)[0] == t]
    names += [n for n in elements if "." not in n]
    return Shape("false", tuple(dict.fromkeys(names))) if names else None


class PartWriter:
    """Writes one type's lines into ``<type>-<part>.ndjson`` files of at most ``max_bytes``.

    Lines are collected into blocks of about ``SCAN_BLOCK`` bytes; each block is scanned for the
    patients it concerns (``scan_patients``) and written with one call. The finished file carries
    its patient set (``FinishedFile.patients``), computed from exactly the bytes in the file."""

    def __init__(self, outdir: Path, res_type: str, part: int, max_bytes: int,
                 on_finish: Callable[[FinishedFile, int, int], None], kind: str = "output",
                 stem: str | None = None, scan_patients: bool = True) -> None:
        self.outdir, self.res_type, self.part, self.max_bytes = outdir, res_type, part, max_bytes
        self.kind = kind
        self.stem = stem
        self.tag = uuid.uuid4().hex[:8]
        self.on_finish = on_finish
        self.scan_patients = scan_patients
        self.fh = None
        self.size = 0
        self.count = 0
        self.last_rid = 0
        self.pending: list[bytes] = []
        self.pending_bytes = 0
        self.patients: PatientScan | None = None

    @property
    def name(self) -> str:
        stem = self.stem or (self.res_type if self.kind == "output" else f"{self.res_type}-{self.kind}")
        return f"{stem}-{self.part}.ndjson"

    @property
    def tmp(self) -> Path:
        # Unique per writer: a worker that stalled past BULK_STALE_AFTER and is being replaced can
        # never write into (or delete) its successor's temporary file.
        return self.outdir / f"{self.name}.{self.tag}.part"

    def _open(self) -> None:
        self.fh = open(self.tmp, "wb")  # noqa: SIM115 - blocks of SCAN_BLOCK bytes go out in one write
        self.size = self.count = 0
        self.patients = PatientScan(ndjson=True) if self.scan_patients else None

    def write(self, rid: int, line: bytes) -> None:
        n = len(line) + 1
        if self.fh is not None and self.count and self.size + n > self.max_bytes:
            self.finish()
        if self.fh is None:
            self._open()
        self.pending.append(line)
        self.pending_bytes += n
        self.size += n
        self.count += 1
        self.last_rid = rid
        if self.pending_bytes >= SCAN_BLOCK:
            self._flush()

    def _flush(self) -> None:
        """Scan and write the pending lines (whole lines: the scan never sees half a line)."""
        if not self.pending:
            return
        block = b"\n".join(self.pending)
        self.pending.clear()
        self.pending_bytes = 0
        if self.patients is not None:
            self.patients.feed(block)
        self.fh.write(block)
        self.fh.write(b"\n")

    def finish(self) -> None:
        if self.fh is None:
            return
        self._flush()
        self.fh.flush()
        os.fsync(self.fh.fileno())
        self.fh.close()
        self.fh = None
        os.replace(self.tmp, self.outdir / self.name)
        done = FinishedFile(self.kind, self.res_type if self.kind == "output" else "Bundle", self.name,
                            self.count, self.size, self.patients.ids if self.patients is not None else None)
        self.patients = None
        self.part += 1
        self.on_finish(done, self.last_rid, self.part)

    def abandon(self) -> None:
        self.pending.clear()
        self.pending_bytes = 0
        self.patients = None
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
SCAN, WRITE = 0, 1  # the two passes of the LatestProvenanceResources stage


def associated_mode(params: ExportParams, job_id: str, level: str, registry: Any, tz: Any,
                    base_url: str) -> str | None:
    """The Provenance inclusion this job needs as an extra stage after its types, or None (not
    asked for, or every Provenance is exported anyway because Provenance is an unfiltered type)."""
    mode = associated.wanted(params.include_associated)
    if mode is None:
        return None
    if "Provenance" in params.types and type_condition("Provenance", params, job_id, level, registry, tz,
                                                       base_url) is None:
        return None
    return mode


def version_at_select(rids: list[int], at: datetime):
    """``(rid, content)`` of the version current at ``at`` of the given resources (not deletes)."""
    r, v = resource, resource_version
    b = select(r.c.rid, r.c.version, r.c.last_updated).where(r.c.rid.in_(rids)).subquery("b")
    v2 = resource_version.alias("v2")
    older = (select(func.max(v2.c.version)).where(v2.c.rid == b.c.rid, v2.c.last_updated <= at)
             .scalar_subquery())
    version_at = case((b.c.last_updated <= at, b.c.version), else_=older)
    on = and_(v.c.rid == b.c.rid, v.c.version == version_at, v.c.deleted.is_(False))
    return select(b.c.rid, v.c.content, v.c.res_id).select_from(b.join(v, on)).order_by(b.c.rid)


class _Reader:
    """Fetches one keyset batch of a type's exportable rows as ``(rid, content, res_id)``
    (``content`` None: the row is not exported), with row filters decided on the snapshot.

    Without a row filter, :func:`snapshot_select` alone is exact. With one, the batch is the
    rows unchanged since ``at`` that satisfy the filter on the live index (which describes them
    exactly), merged in ``rid`` order with the rows of the same ``rid`` range changed after ``at``
    whose version at ``at`` satisfies the filter in a scratch index
    (:class:`app.bulk.snapshot.SnapshotFilter`). A filter with chains or ``_has`` stays on the
    live index for every row (see the decision record 0014)."""

    def __init__(self, engine: Any, snap: SnapshotFilter, *, t: str, params: ExportParams, job_id: str,
                 level: str, registry: Any, tz: Any, base_url: str, at: datetime, since: datetime | None) -> None:
        self.engine, self.snap, self.t, self.at, self.since = engine, snap, t, at, since
        self.pg = engine.dialect.name == "postgresql"

        def cond(after: int = 0) -> Any:
            return type_condition(t, params, job_id, level, registry, tz, base_url, after)

        self.cond = cond
        self.filtered = cond() is not None
        queries = params.type_filters.get(t, []) + params.scope_filters.get(t, [])
        self.live = self.filtered and needs_live_index(t, queries, registry, tz, base_url)

    def batch(self, after: int, n: int) -> tuple[list, int, bool]:
        """``(rows, next_after, more)``: ``more`` False when the type is exhausted."""
        r = resource
        with self.engine.connect() as conn:
            if self.pg:  # JIT compiles each batch's plan anew: ~10-20 ms a batch, never repaid
                conn.exec_driver_sql("SET LOCAL jit = off")
            if not self.filtered or self.live:
                rows = [tuple(x) for x in conn.execute(
                    snapshot_select(self.t, self.at, self.since, self.cond(after), after, n)).all()]
                more = len(rows) == n
                return rows, (rows[-1][0] if rows else after), more
            unchanged = and_(self.cond(after), r.c.last_updated <= self.at)
            rows = [tuple(x) for x in conn.execute(
                snapshot_select(self.t, self.at, self.since, unchanged, after, n)).all()]
            more = len(rows) == n
            upto = rows[-1][0] if more else None
            changed = conn.execute(changed_select(self.t, self.at, self.since, after, upto)).all()
        if changed:
            ok = self.snap.matching(self.t, self.cond(), changed)
            rows += [(c.rid, c.content, c.res_id) for c in changed if c.rid in ok]
            rows.sort(key=lambda x: x[0])
        nxt = upto if more else (rows[-1][0] if rows else after)
        return rows, nxt, more


def _batch_size(avg: float | None, batch_bytes: int) -> int:
    return FIRST_BATCH if avg is None else max(MIN_BATCH, min(MAX_BATCH, int(batch_bytes / avg)))


def run_export(engine, *, job_id: str, level: str, params: ExportParams, at: datetime, registry: Any,
               tz: Any, base_url: str, outdir: Path, cursor: Cursor, file_max_bytes: int, batch_bytes: int,
               record: Callable[[FinishedFile | None, Cursor], None],
               heartbeat: Callable[[int], None], scan_patients: bool = True) -> Cursor:
    """Export every type from ``cursor`` on. ``record(file, cursor)`` commits a finished file with
    the cursor to resume after it (raises JobLost when the job is no longer ours);
    ``heartbeat(exported)`` is called after each batch. With ``scan_patients`` each finished file
    carries the Patient ids whose data it holds (``FinishedFile.patients``, for the download audit).

    Per type: the output pass, then (with ``_since``, for a type exported without row filters)
    the deleted pass, which lists resources deleted since ``_since`` as NDJSON transaction
    Bundles with a DELETE entry (the manifest's ``deleted`` array). For a filtered type the
    deleted pass is skipped: a deleted resource has no index rows left to test the filter on, and
    listing every deleted id would disclose resources outside the filter or the token's scopes.
    After the types, ``includeAssociatedData`` adds the Provenance stage (app.bulk.associated)."""
    since = params.since_dt()
    pg = engine.dialect.name == "postgresql"
    mode = associated_mode(params, job_id, level, registry, tz, base_url)
    tracker = None
    if mode is not None and cursor.type_idx <= len(params.types):
        fresh = (cursor.type_idx, cursor.phase, cursor.after, cursor.seq) == (0, 0, 0, 0)
        if not fresh and not (outdir / associated.TRACKER_NAME).exists():
            raise FhirError(500, "exception", "the list of exported resources kept for includeAssociatedData "
                                              "was lost while the export was interrupted; start the export again")
        tracker = associated.Tracker(outdir)
    snap = SnapshotFilter(engine, registry, tz, job_id, base_url)
    try:
        cursor = _run_types(engine, pg, snap, tracker, job_id=job_id, level=level, params=params, at=at,
                            since=since, registry=registry, tz=tz, base_url=base_url, outdir=outdir,
                            cursor=cursor, file_max_bytes=file_max_bytes, batch_bytes=batch_bytes,
                            record=record, heartbeat=heartbeat, scan_patients=scan_patients)
        if tracker is not None and cursor.type_idx <= len(params.types):
            cursor = _run_provenance(engine, snap, tracker, mode, job_id=job_id, params=params, at=at,
                                     registry=registry, tz=tz, base_url=base_url, outdir=outdir, cursor=cursor,
                                     file_max_bytes=file_max_bytes, batch_bytes=batch_bytes, record=record,
                                     heartbeat=heartbeat, scan_patients=scan_patients)
            tracker.remove()
            tracker = None
    finally:
        snap.close()
        if tracker is not None:
            tracker.close()
    return cursor


def _run_types(engine, pg: bool, snap: SnapshotFilter, tracker: associated.Tracker | None, *, job_id: str,
               level: str, params: ExportParams, at: datetime, since: datetime | None, registry: Any, tz: Any,
               base_url: str, outdir: Path, cursor: Cursor, file_max_bytes: int, batch_bytes: int,
               record: Callable[[FinishedFile | None, Cursor], None], heartbeat: Callable[[int], None],
               scan_patients: bool = True) -> Cursor:
    for ti in range(cursor.type_idx, len(params.types)):
        t = params.types[ti]
        shape = shape_for(t, params.elements)
        reader = _Reader(engine, snap, t=t, params=params, job_id=job_id, level=level, registry=registry, tz=tz,
                         base_url=base_url, at=at, since=since)
        resume = ti == cursor.type_idx
        phases = [OUTPUT] + ([DELETED] if since is not None and not reader.filtered else [])
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
                writer = PartWriter(outdir, t, part, file_max_bytes, on_finish, scan_patients=scan_patients)
            else:
                writer = PartWriter(outdir, t, part, file_max_bytes, on_finish, kind="deleted",
                                    scan_patients=scan_patients)
            avg: float | None = None  # bytes per row of this type, learnt from the first batch
            try:
                while True:
                    n = _batch_size(avg, batch_bytes)
                    if phase == OUTPUT:
                        rows, after, more = reader.batch(after, n)
                    else:
                        with engine.connect() as conn:
                            if pg:
                                conn.exec_driver_sql("SET LOCAL jit = off")
                            rows = conn.execute(deleted_select(t, at, since, after, n)).all()
                        more = len(rows) == n
                        after = rows[-1][0] if rows else after
                    if not rows:
                        break
                    total = 0
                    if phase == OUTPUT:
                        if tracker is not None:  # before the lines: a recorded file implies its ids are kept
                            tracker.add(t, [res_id for _rid, content, res_id in rows if content is not None])
                        for rid, content, _res_id in rows:
                            if content is None:
                                continue
                            raw = content.encode() if isinstance(content, str) else content
                            total += len(raw)
                            if shape is not None:
                                raw = shape_resource(t, raw, shape)
                            writer.write(rid, raw)
                            state["exported"] += 1
                    else:
                        for row in rows:
                            if row.hit is not None:
                                writer.write(row.rid, _delete_bundle(t, row.res_id))
                    got = len(rows)
                    avg = max(64.0, total / got) if phase == OUTPUT else 64.0  # rows left out count as small
                    del rows
                    heartbeat(state["exported"])
                    if not more:
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


def _run_provenance(engine, snap: SnapshotFilter, tracker: associated.Tracker, mode: str, *, job_id: str,
                    params: ExportParams, at: datetime, registry: Any, tz: Any, base_url: str, outdir: Path,
                    cursor: Cursor, file_max_bytes: int, batch_bytes: int,
                    record: Callable[[FinishedFile | None, Cursor], None],
                    heartbeat: Callable[[int], None], scan_patients: bool = True) -> Cursor:
    """The includeAssociatedData stage (cursor ``type_idx == len(types)``): Provenance at
    transactionTime whose targets were exported, as ``Provenance-associated-<n>.ndjson``.

    Only the token's granular scopes on Provenance restrict it (``_typeFilter`` and ``_since``
    are about the Provenance *type* output; the Provenance of an exported resource comes with it).
    Relevant: one pass that writes as it reads. Latest: a SCAN pass that keeps the best
    Provenance per target in the tracker, then a WRITE pass over the chosen ones in rid order."""
    ti = len(params.types)
    resume = cursor.type_idx == ti
    phase = cursor.phase if resume else SCAN
    after = cursor.after if resume else 0
    state = {"exported": cursor.exported, "seq": cursor.seq}
    scoped = ExportParams(types=["Provenance"], scope_filters={
        k: v for k, v in params.scope_filters.items() if k == "Provenance"})
    reader = _Reader(engine, snap, t="Provenance", params=scoped, job_id=job_id, level="system", registry=registry,
                     tz=tz, base_url=base_url, at=at, since=None)
    shape = shape_for("Provenance", params.elements)

    def on_finish(f: FinishedFile, last_rid: int, next_part: int) -> None:
        state["seq"] += 1
        record(f, Cursor(ti, last_rid, next_part, state["seq"], state["exported"], phase))

    writer = PartWriter(outdir, "Provenance", cursor.part if resume else 1, file_max_bytes, on_finish,
                        stem="Provenance-associated", scan_patients=scan_patients)

    def emit(rid: int, content: Any) -> None:
        raw = content.encode() if isinstance(content, str) else content
        writer.write(rid, shape_resource("Provenance", raw, shape) if shape is not None else raw)
        state["exported"] += 1

    try:
        avg: float | None = None
        if phase == SCAN:
            if mode == associated.LATEST:
                tracker.reset_latest()  # a SCAN is redone whole after a restart
                after = 0
            while True:
                n = _batch_size(avg, batch_bytes)
                rows, after, more = reader.batch(after, n)
                total = 0
                for rid, content, res_id in rows:
                    if content is None:
                        continue
                    total += len(content)
                    if tracker.exported([("Provenance", res_id)]):
                        continue  # already in the Provenance output
                    doc = orjson.loads(content)
                    hit = tracker.exported(associated.targets(doc, base_url))
                    if not hit:
                        continue
                    if mode == associated.RELEVANT:
                        emit(rid, content)
                    else:
                        tracker.offer(hit, associated.recorded_key(doc), rid)
                tracker.commit()
                avg = max(64.0, total / len(rows)) if rows else avg
                heartbeat(state["exported"])
                if not more:
                    break
            if mode == associated.LATEST:
                phase, after = WRITE, 0
                record(None, Cursor(ti, 0, writer.part, state["seq"], state["exported"], WRITE))
        if phase == WRITE:
            while True:
                rids = tracker.latest_rids(after, 1000)
                if not rids:
                    break
                with engine.connect() as conn:
                    rows = conn.execute(version_at_select(rids, at)).all()
                for rid, content, _res_id in rows:
                    emit(rid, content)
                after = rids[-1]
                heartbeat(state["exported"])
        writer.finish()
    except BaseException:
        writer.abandon()
        raise
    cursor = Cursor(ti + 1, 0, 1, state["seq"], state["exported"], OUTPUT)
    record(None, cursor)
    return cursor

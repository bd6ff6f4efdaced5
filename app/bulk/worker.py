"""The export worker: claims queued (or abandoned) jobs, runs them, expires old ones.

Runs as a thread inside the web process (``BULK_INPROCESS_WORKER``, the embedded default) and as
``results-repo worker`` (production; run as many as you like). Claiming is exclusive:
``SELECT ... FOR UPDATE SKIP LOCKED`` then ``UPDATE`` on PostgreSQL, the same inside ``BEGIN
IMMEDIATE`` on SQLite. A running job carries ``worker_id`` and a ``heartbeat_at`` refreshed after
every batch; a job whose heartbeat is older than ``BULK_STALE_AFTER`` is taken over and resumes
from its last recorded file (after ``BULK_MAX_ATTEMPTS`` starts it fails instead). Every write a
worker makes is conditional on still owning the job, so a cancelled or taken-over job stops.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import threading
import time
import uuid
from datetime import timedelta

import orjson
from sqlalchemy import delete, func, insert, or_, select, update

from app.audit.patients import PatientScan
from app.bulk.export import Cursor, FinishedFile, JobLost, run_export
from app.bulk.jobs import expiry_time, pack_patients
from app.bulk.params import ExportParams
from app.bulk.settings import BulkSettings, settings_of
from app.bulk.tables import bulk_file, bulk_job, bulk_job_patient
from app.db import unit_of_work
from app.fhir.errors import FhirError
from app.fhir.jsonutil import utcnow
from app.storage.tables import resource

log = logging.getLogger("results_repo.bulk")


def new_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Worker:
    def __init__(self, app, worker_id: str | None = None) -> None:
        state = app.extensions["results_repo"]
        self.engine = state.engine
        self.registry = state.registry
        self.tz = state.tz
        self.base_url = (app.config.get("PUBLIC_BASE_URL") or "http://localhost/fhir").rstrip("/")
        self.s: BulkSettings = settings_of(app)
        self.id = worker_id or new_worker_id()
        # Each file's patient set is for the download audit: not computed with the audit off
        # (such files, like those written before migration 0007, are scanned if downloaded audited).
        self.scan_patients = bool(app.config.get("AUDIT_ENABLED", True))
        self.stop_event = threading.Event()
        self.wake = threading.Event()
        self._last_sweep = 0.0

    # --- claiming ---------------------------------------------------------------------------
    def claim(self) -> str | None:
        now = utcnow()
        stale = now - timedelta(seconds=self.s.stale_after)
        j = bulk_job
        claimable = or_(j.c.state == "queued", (j.c.state == "running") & (j.c.heartbeat_at < stale))
        with unit_of_work(self.engine) as conn:  # a plain read first: idle polls take no write lock
            if conn.execute(select(j.c.id).where(claimable).limit(1)).first() is None:
                return None
        with unit_of_work(self.engine, write=True) as conn:
            row = conn.execute(
                select(j.c.id, j.c.state, j.c.attempts)
                .where(claimable)
                .order_by(j.c.created_at).limit(1).with_for_update(skip_locked=True)
            ).first()
            if row is None:
                return None
            if row.attempts >= self.s.max_attempts:
                conn.execute(update(j).where(j.c.id == row.id).values(
                    state="failed", completed_at=now, expires_at=expiry_time(self.s, now), worker_id=None,
                    error=f"the export was interrupted {row.attempts} times (worker restarts); giving up"))
                return None
            done = conn.execute(update(j).where(j.c.id == row.id, j.c.state == row.state).values(
                state="running", worker_id=self.id, heartbeat_at=now, attempts=row.attempts + 1,
                started_at=func.coalesce(j.c.started_at, now)))
            if done.rowcount != 1:
                return None
            if row.state == "running":
                log.warning("bulk export %s: taking over from a worker that stopped", row.id)
            return row.id

    # --- running ------------------------------------------------------------------------------
    def _owned(self, conn, job_id: str, **values) -> None:
        res = conn.execute(update(bulk_job).where(
            bulk_job.c.id == job_id, bulk_job.c.worker_id == self.id, bulk_job.c.state == "running"
        ).values(heartbeat_at=utcnow(), **values))
        if res.rowcount != 1:
            raise JobLost(job_id)

    def run_job(self, job_id: str) -> None:
        with unit_of_work(self.engine) as conn:
            job = conn.execute(select(bulk_job).where(bulk_job.c.id == job_id)).first()
        params = ExportParams.from_json(orjson.loads(job.params))
        outdir = self.s.export_dir / job_id
        outdir.mkdir(parents=True, exist_ok=True)
        for tmp in outdir.glob("*.part"):  # a previous attempt's unfinished file
            tmp.unlink(missing_ok=True)
        cursor = Cursor(**orjson.loads(job.cursor)) if job.cursor else Cursor()
        try:
            if job.total_estimate is None:
                with unit_of_work(self.engine, write=True) as conn:
                    total = conn.execute(select(func.count()).select_from(resource).where(
                        resource.c.res_type.in_(params.types), resource.c.deleted.is_(False))).scalar_one()
                    self._owned(conn, job_id, total_estimate=total)
            last_beat = [0.0]

            def record(f: FinishedFile | None, cur: Cursor) -> None:
                with unit_of_work(self.engine, write=True) as conn:
                    if f is not None:
                        conn.execute(insert(bulk_file).values(job_id=job_id, seq=cur.seq, kind=f.kind,
                                                              res_type=f.res_type, name=f.name, count=f.count,
                                                              size=f.size, patients=pack_patients(f.patients)))
                    self._owned(conn, job_id, cursor=orjson.dumps(cur.to_json()).decode(), exported=cur.exported)

            def heartbeat(exported: int) -> None:
                if self.stop_event.is_set():
                    raise JobLost(job_id)  # shutting down: another worker resumes it
                if time.monotonic() - last_beat[0] < 1.0:
                    return
                last_beat[0] = time.monotonic()
                with unit_of_work(self.engine, write=True) as conn:
                    self._owned(conn, job_id, exported=exported)

            cursor = run_export(
                self.engine, job_id=job_id, level=job.level, params=params, at=job.transaction_time,
                registry=self.registry, tz=self.tz, base_url=self.base_url, outdir=outdir, cursor=cursor,
                file_max_bytes=self.s.file_max_bytes, batch_bytes=self.s.batch_bytes, record=record,
                heartbeat=heartbeat, scan_patients=self.scan_patients)
            if params.notes and not cursor.notes_done:
                self._write_errors(job_id, outdir, params.notes, cursor, record)
            now = utcnow()
            with unit_of_work(self.engine, write=True) as conn:
                self._owned(conn, job_id, state="completed", completed_at=now, expires_at=expiry_time(self.s, now))
            log.info("bulk export %s completed: %d resources", job_id, cursor.exported)
        except JobLost:
            log.info("bulk export %s: no longer ours (cancelled, taken over or shutting down)", job_id)
            with unit_of_work(self.engine) as conn:
                state = conn.execute(select(bulk_job.c.state).where(bulk_job.c.id == job_id)).scalar()
            if state in (None, "cancelled"):
                shutil.rmtree(outdir, ignore_errors=True)
        except Exception as e:  # noqa: BLE001 - the job fails cleanly, the worker lives on
            with unit_of_work(self.engine) as conn:
                state = conn.execute(select(bulk_job.c.state).where(bulk_job.c.id == job_id)).scalar()
            if state in (None, "cancelled"):  # DELETE removed the directory under our feet
                shutil.rmtree(outdir, ignore_errors=True)
                return
            log.exception("bulk export %s failed", job_id)
            # The client sees a FhirError's own text, or a generic one: an exception's text may
            # hold SQL and its parameters, which are not for the caller.
            reason = e.diagnostics if isinstance(e, FhirError) else (
                f"an internal error ({type(e).__name__}) stopped the export; the server log has the "
                f"details under job {job_id}")
            now = utcnow()
            with unit_of_work(self.engine, write=True) as conn:
                conn.execute(update(bulk_job).where(bulk_job.c.id == job_id, bulk_job.c.worker_id == self.id)
                             .values(state="failed", completed_at=now, expires_at=expiry_time(self.s, now),
                                     error=reason[:1000]))

    def _write_errors(self, job_id, outdir, notes, cursor: Cursor, record) -> None:
        name = "OperationOutcome-1.ndjson"
        tmp = outdir / (name + ".part")
        # An ignored (unsupported) parameter value is "not-supported"; an unknown patient "not-found".
        lines = [orjson.dumps({"resourceType": "OperationOutcome", "issue": [
            {"severity": "warning", "code": "not-supported" if "not supported" in n else "not-found",
             "diagnostics": n}]})
            for n in notes]
        body = b"".join(line + b"\n" for line in lines)
        with open(tmp, "wb") as fh:
            fh.write(body)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, outdir / name)
        patients = None
        if self.scan_patients:  # the same scan as every other file (none expected: no references here)
            scan = PatientScan(ndjson=True)
            scan.feed(body)
            patients = scan.ids
        cur = Cursor(cursor.type_idx, 0, 1, cursor.seq + 1, cursor.exported, cursor.phase, notes_done=True)
        record(FinishedFile("error", "OperationOutcome", name, len(lines), len(body), patients), cur)

    # --- expiry -------------------------------------------------------------------------------
    def sweep(self) -> int:
        """Delete expired and cancelled jobs with their files; returns how many."""
        now = utcnow()
        with unit_of_work(self.engine) as conn:
            ids = list(conn.execute(select(bulk_job.c.id).where(
                bulk_job.c.state.in_(("completed", "failed", "cancelled")), bulk_job.c.expires_at <= now)).scalars())
        for job_id in ids:
            shutil.rmtree(self.s.export_dir / job_id, ignore_errors=True)
            with unit_of_work(self.engine, write=True) as conn:
                conn.execute(delete(bulk_file).where(bulk_file.c.job_id == job_id))
                conn.execute(delete(bulk_job_patient).where(bulk_job_patient.c.job_id == job_id))
                conn.execute(delete(bulk_job).where(bulk_job.c.id == job_id))
        self._last_sweep = time.monotonic()
        return len(ids)

    # --- loop ---------------------------------------------------------------------------------
    def run_pending(self) -> int:
        """Run jobs until none is claimable; returns how many were run (tests, ``--once``)."""
        n = 0
        while not self.stop_event.is_set():
            job_id = self.claim()
            if job_id is None:
                break
            self.run_job(job_id)
            n += 1
        return n

    def loop(self) -> None:
        log.info("bulk export worker %s started", self.id)
        while not self.stop_event.is_set():
            try:
                if time.monotonic() - self._last_sweep >= self.s.sweep_interval:
                    self.sweep()
                self.run_pending()
            except Exception:  # noqa: BLE001 - keep the worker alive (database restarts etc.)
                log.exception("bulk export worker: error; retrying")
            self.wake.wait(self.s.worker_poll)
            self.wake.clear()
        log.info("bulk export worker %s stopped", self.id)

    def stop(self) -> None:
        self.stop_event.set()
        self.wake.set()


_lock = threading.Lock()


def ensure_inprocess_worker(app) -> Worker | None:
    """Start this app's worker thread once (when configured); wake it to look for work now."""
    if not settings_of(app).inprocess_worker:
        return None
    with _lock:
        w = app.extensions.get("bulk_worker")
        if w is None:
            w = Worker(app)
            t = threading.Thread(target=w.loop, name="bulk-export-worker", daemon=True)
            w.thread = t  # type: ignore[attr-defined]
            app.extensions["bulk_worker"] = w
            t.start()
    w.wake.set()
    return w


def stop_inprocess_worker(app, timeout: float = 10.0) -> None:
    w = app.extensions.pop("bulk_worker", None)
    if w is not None:
        w.stop()
        w.thread.join(timeout)

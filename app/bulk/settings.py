"""Bulk export settings: defaults here, overridable in the Flask config (or the environment
through config.py)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

DEFAULTS = {
    "BULK_EXPORT_DIR": None,  # None: <instance folder>/bulk
    "BULK_FILE_MAX_BYTES": 128 * 1024 * 1024,  # split output files at this size
    "BULK_BATCH_BYTES": 8 * 1024 * 1024,  # rows per database batch are sized to about this many bytes
    "BULK_RETRY_AFTER": 5,  # seconds, Retry-After on 202 status answers
    "BULK_MIN_POLL_INTERVAL": None,  # seconds between status polls before 429; None: BULK_RETRY_AFTER
    "BULK_MAX_JOBS_PER_CLIENT": 2,  # queued + running jobs per client; more -> 429
    "BULK_FILE_TTL": 24 * 3600,  # seconds a finished job's files are kept
    "BULK_STALE_AFTER": 60,  # seconds without heartbeat before a running job is taken over
    "BULK_MAX_ATTEMPTS": 3,  # a job that has been started this often and dies again fails
    "BULK_INPROCESS_WORKER": True,  # run a worker thread inside the web process
    "BULK_WORKER_POLL": 1.0,  # seconds between looks for queued jobs
    "BULK_SWEEP_INTERVAL": 60,  # seconds between expiry sweeps
}


@dataclass(frozen=True)
class BulkSettings:
    export_dir: Path
    file_max_bytes: int
    batch_bytes: int
    retry_after: int
    min_poll_interval: float
    max_jobs_per_client: int
    file_ttl: int
    stale_after: float
    max_attempts: int
    inprocess_worker: bool
    worker_poll: float
    sweep_interval: float


def settings_of(app) -> BulkSettings:
    cfg = {k: app.config.get(k, v) for k, v in DEFAULTS.items()}
    for k, v in DEFAULTS.items():
        if cfg[k] is None:
            cfg[k] = v
    export_dir = Path(cfg["BULK_EXPORT_DIR"] or (Path(app.instance_path) / "bulk"))
    retry = int(cfg["BULK_RETRY_AFTER"])
    min_poll = cfg["BULK_MIN_POLL_INTERVAL"]
    return BulkSettings(
        export_dir=export_dir,
        file_max_bytes=int(cfg["BULK_FILE_MAX_BYTES"]),
        batch_bytes=int(cfg["BULK_BATCH_BYTES"]),
        retry_after=retry,
        min_poll_interval=float(retry if min_poll is None else min_poll),
        max_jobs_per_client=int(cfg["BULK_MAX_JOBS_PER_CLIENT"]),
        file_ttl=int(cfg["BULK_FILE_TTL"]),
        stale_after=float(cfg["BULK_STALE_AFTER"]),
        max_attempts=int(cfg["BULK_MAX_ATTEMPTS"]),
        inprocess_worker=bool(cfg["BULK_INPROCESS_WORKER"]),
        worker_poll=float(cfg["BULK_WORKER_POLL"]),
        sweep_interval=float(cfg["BULK_SWEEP_INTERVAL"]),
    )

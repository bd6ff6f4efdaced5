"""Bulk export jobs, their files and their patient lists (on the shared ``metadata``).

- ``bulk_job``: one row per kick-off; the worker's claim (``worker_id``, ``heartbeat_at``) and its
  resume point (``cursor``, JSON) live here, so a job survives a restart of the server or worker.
- ``bulk_file``: one row per *finished* file (output or error); a file is only listed after it has
  been written under a temporary name, fsync-ed and renamed, so the manifest never shows a
  half-written file. ``patients``: the Patient ids whose data the file holds, recorded by the
  worker as it writes the file, for the download audit (sorted, space-separated; '' = none; NULL =
  not recorded: a file written before migration 0007 or with the audit off, which the audit scans).
- ``bulk_job_patient``: the patients a Patient/Group export is restricted to (the ``patient``
  parameter and/or the Group's members at kick-off), joined in SQL instead of long IN lists.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
)

from app.storage.tables import metadata

bulk_job = Table(
    "bulk_job",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("client_id", String(255), nullable=False),
    Column("state", String(16), nullable=False),  # queued running completed failed cancelled
    Column("level", String(16), nullable=False),  # system patient group
    Column("group_id", String(64), nullable=True),
    Column("request_url", Text, nullable=False),
    Column("params", Text, nullable=False),  # JSON: the validated kick-off parameters
    Column("transaction_time", DateTime(timezone=False), nullable=False),  # naive UTC
    Column("created_at", DateTime(timezone=False), nullable=False),
    Column("started_at", DateTime(timezone=False), nullable=True),
    Column("completed_at", DateTime(timezone=False), nullable=True),
    Column("expires_at", DateTime(timezone=False), nullable=True),
    Column("last_polled_at", DateTime(timezone=False), nullable=True),
    Column("worker_id", String(128), nullable=True),
    Column("heartbeat_at", DateTime(timezone=False), nullable=True),
    Column("attempts", Integer, nullable=False, default=0),
    Column("cursor", Text, nullable=True),  # JSON resume point, committed with each file
    Column("exported", BigInteger, nullable=False, default=0),
    Column("total_estimate", BigInteger, nullable=True),
    Column("error", Text, nullable=True),
    Index("ix_bulk_job_state_created", "state", "created_at"),
    Index("ix_bulk_job_client_state", "client_id", "state"),
)

bulk_file = Table(
    "bulk_file",
    metadata,
    Column("job_id", String(36), ForeignKey("bulk_job.id", ondelete="CASCADE"), primary_key=True),
    Column("seq", Integer, primary_key=True, autoincrement=False),
    Column("kind", String(8), nullable=False),  # output | error
    Column("res_type", String(64), nullable=False),
    Column("name", String(128), nullable=False),
    Column("count", BigInteger, nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("patients", Text, nullable=True),  # migration 0007_bulk_file_patients
)

bulk_job_patient = Table(
    "bulk_job_patient",
    metadata,
    Column("job_id", String(36), ForeignKey("bulk_job.id", ondelete="CASCADE"), primary_key=True),
    Column("patient_id", String(64), primary_key=True),
)

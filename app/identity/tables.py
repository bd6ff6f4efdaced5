"""The identity schema.

``uq_sp_token_patient_identifier`` is the referee for "one Patient per identifier": a partial
unique index over the ``identifier`` token rows of Patients. Token rows exist only for the current,
non-deleted version of a resource (the repository drops them on delete and replaces them on
update), and NHS numbers are stored normalised (validation refuses any other spelling), so the
index says exactly "no two current Patients share an NHS number (or any other system|value
identifier)". Identifiers without a system have a NULL ``system`` and NULLs never collide, so
they stay unconstrained. The database enforces it under concurrent writers on both back ends;
app.identity.keys turns a violation into a 409 that names the Patient holding the identifier.

``patient_merge`` remembers each merge: who replaced whom, the Provenance that records it, and
the exact versions it wrote, so that an unmerge can restore the state before and searches by
the merged-away id can find the survivor's results.
"""

from __future__ import annotations

from sqlalchemy import Column, DateTime, Index, String, Table, Text, and_, literal_column

from app.storage.tables import metadata, sp_token

PATIENT_IDENTIFIER_WHERE = and_(
    sp_token.c.res_type == literal_column("'Patient'"), sp_token.c.param == literal_column("'identifier'")
)

uq_patient_identifier = Index(
    "uq_sp_token_patient_identifier",
    sp_token.c.system,
    sp_token.c.code,
    unique=True,
    sqlite_where=PATIENT_IDENTIFIER_WHERE,
    postgresql_where=PATIENT_IDENTIFIER_WHERE,
)

patient_merge = Table(
    "patient_merge",
    metadata,
    Column("id", String(36), primary_key=True),  # = the merge Provenance's id
    Column("source_id", String(64), nullable=False),
    Column("target_id", String(64), nullable=False),
    Column("merged_at", DateTime(timezone=False), nullable=False),  # naive UTC
    # JSON list of [type, id, rid, version before, version after, content hash after] for every
    # resource the merge wrote
    Column("detail", Text, nullable=False),
    Column("unmerged_at", DateTime(timezone=False), nullable=True),
    Column("unmerge_provenance_id", String(36), nullable=True),
    Index("ix_patient_merge_source", "source_id", "unmerged_at"),
    Index("ix_patient_merge_target", "target_id", "unmerged_at"),
)

"""The audit trail's own narrow tables (not the resource/index write path).

``audit_event`` holds one row per recorded event in plain columns; the AuditEvent JSON is rendered
from them when an auditor reads it (app/audit/render.py), so recording costs one narrow insert.
``audit_patient`` links an event to every patient whose data it touched, with the event's time
copied in so that "this patient's events in this period" is one index range seek.

Indexes are only those the AuditEvent search needs: date; patient (+date); agent (user and
client, +date); entity.  ``type``, ``subtype``, ``action`` and ``outcome`` have a handful of values
each: they are filters on rows already narrowed by date, patient or agent, not worth an index
(each index is paid for on every insert, i.e. on every request).
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Index,
    Integer,
    SmallInteger,
    String,
    Table,
    Text,
)

from app.storage.tables import metadata

EVENT_ID = BigInteger().with_variant(Integer(), "sqlite")

audit_event = Table(
    "audit_event",
    metadata,
    Column("id", EVENT_ID, primary_key=True, autoincrement=True),
    Column("recorded", DateTime(timezone=False), nullable=False),  # naive UTC
    Column("type", String(16), nullable=False),  # rest | 110114 | 110106 | 110113 (app/audit/codes.py)
    Column("subtype", String(32), nullable=False),  # read, search-type, create, ITI-71, login ...
    Column("action", String(1), nullable=False),  # C R U D E
    Column("outcome", SmallInteger, nullable=False),  # 0 4 8 12
    Column("status", SmallInteger, nullable=True),  # HTTP status of the request (or entry)
    Column("request_id", String(64), nullable=False),
    Column("client_id", String(255), nullable=True),
    Column("username", String(128), nullable=True),
    Column("fhir_user", String(140), nullable=True),  # Practitioner/ID | Patient/ID
    Column("token_id", String(32), nullable=True),  # non-secret token id (hash prefix), never the token
    Column("scope", Text, nullable=True),
    Column("source_ip", String(64), nullable=True),
    Column("res_type", String(64), nullable=True),  # the type acted on (AuditEvent: audit reads)
    Column("entity", String(200), nullable=True),  # Type/id[/_history/v], or Bundle/<entry>
    Column("query", Text, nullable=True),  # search / operation query as received
    Column("purpose", String(16), nullable=True),  # purpose of use (BTG)
    Column("detail", Text, nullable=True),  # compact JSON: description, entry index, file ...
    Index("ix_audit_event_recorded", "recorded", "id"),
    Index("ix_audit_event_user", "fhir_user", "recorded"),
    Index("ix_audit_event_client", "client_id", "recorded"),
    Index("ix_audit_event_entity", "entity"),
)

audit_patient = Table(
    "audit_patient",
    metadata,
    Column("event_id", EVENT_ID, primary_key=True, autoincrement=False),
    Column("patient_id", String(64), primary_key=True),
    Column("recorded", DateTime(timezone=False), nullable=False),
    Index("ix_audit_patient_patient", "patient_id", "recorded", "event_id"),
)

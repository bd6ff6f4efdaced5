"""Tables of the protective controls (on the shared ``metadata``; migration 0006_protect).

- ``protect_clearance``: per registered client or user, the security labels it may see
  (``labels``: space-separated ``system|code``, or ``*`` for every label) and whether it may
  break the glass.  No row means no clearance.
- ``protect_alert``: one row per break-glass request, for the privacy officer; ``acknowledged_*``
  are the only columns ever updated.
"""

from __future__ import annotations

from sqlalchemy import Boolean, Column, DateTime, Index, String, Table, Text, literal_column

from app.storage.tables import RID, metadata, sp_token

protect_clearance = Table(
    "protect_clearance",
    metadata,
    Column("kind", String(8), primary_key=True),  # client | user
    Column("subject", String(255), primary_key=True),  # client_id | username
    Column("labels", Text, nullable=False),
    Column("break_glass", Boolean, nullable=False),
    Column("updated_at", DateTime(timezone=False), nullable=False),  # naive UTC
)

protect_alert = Table(
    "protect_alert",
    metadata,
    Column("id", RID, primary_key=True, autoincrement=True),
    Column("created_at", DateTime(timezone=False), nullable=False),  # naive UTC
    Column("client_id", String(255), nullable=False),
    Column("username", String(128), nullable=True),
    Column("fhir_user", String(140), nullable=True),
    Column("token_id", String(32), nullable=True),  # non-secret token id, never the token
    Column("reason", Text, nullable=False),
    Column("method", String(8), nullable=False),
    Column("path", Text, nullable=False),  # path and query as requested
    Column("request_id", String(64), nullable=True),  # joins the audit trail
    Column("acknowledged_at", DateTime(timezone=False), nullable=True),
    Column("acknowledged_by", String(128), nullable=True),
    Index("ix_protect_alert_created", "created_at"),
)

# The labelled rows of sp_token alone (most resources have none): withholding probes it once per
# candidate row, index-only and almost always empty.  Queries must write ``param = '_security'``
# inline (app.search.plan._param_is, app.protect.labels.SECURITY_PARAM) for it to be usable.
Index("ix_sp_token_security", sp_token.c.rid, sp_token.c.res_type, sp_token.c.system, sp_token.c.code,
      postgresql_where=sp_token.c.param == literal_column("'_security'"),
      sqlite_where=sp_token.c.param == literal_column("'_security'"))

PROTECT_TABLES = (protect_clearance, protect_alert)

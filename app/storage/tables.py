"""The schema, as SQLAlchemy Core tables (Alembic owns the migrations).

- ``resource`` is the *current* row of each logical resource (type, id, version, deleted flag);
  searches join only this table, never history.
- ``resource_version`` holds every version's JSON exactly as served; its primary key
  ``(rid, version)`` is the referee for concurrent writers.
- ``ref_link`` holds every reference a current resource makes to a resource of an enabled type,
  for referential integrity (write and delete) and merges.
- ``sp_*`` are the search index tables, one per search-parameter type. ``grp`` ties together the
  components of one composite value (so a systolic code never pairs with a diastolic value).
- ``sp_token`` and ``sp_reference`` rows also carry their resource's *date envelope*
  (``date_low``/``date_high``: the earliest start and latest end of its ``date`` parameter), in
  their lookup indexes, so a code or patient + date range skips the rows outside the range
  without probing ``sp_date``, and a patient's results sort by date on the reference index
  (docs/decisions/0016-date-envelope.md).
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    SmallInteger,
    String,
    Table,
    Text,
    UniqueConstraint,
)

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING)

# SQLite only autoincrements INTEGER PRIMARY KEY.
RID = BigInteger().with_variant(Integer(), "sqlite")


def _c_string(length: int) -> String:
    """Code-point ordered on PostgreSQL whatever the database collation, so a prefix search's
    range predicate is exact and index-usable (SQLite compares code points already)."""
    return String(length).with_variant(String(length, collation="C"), "postgresql")

resource = Table(
    "resource",
    metadata,
    Column("rid", RID, primary_key=True, autoincrement=True),
    Column("res_type", String(64), nullable=False),
    Column("res_id", String(64), nullable=False),
    Column("version", Integer, nullable=False),
    Column("last_updated", DateTime(timezone=False), nullable=False),  # naive UTC
    Column("deleted", Boolean, nullable=False, default=False),
    Column("content_hash", String(64), nullable=True),
    UniqueConstraint("res_type", "res_id", name="uq_resource_type_id"),
    Index("ix_resource_type_updated", "res_type", "last_updated", "rid"),
)

resource_version = Table(
    "resource_version",
    metadata,
    Column("rid", RID, ForeignKey("resource.rid"), primary_key=True),
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("res_type", String(64), nullable=False),
    Column("res_id", String(64), nullable=False),
    Column("last_updated", DateTime(timezone=False), nullable=False),
    Column("method", String(8), nullable=False),  # POST PUT PATCH DELETE
    Column("deleted", Boolean, nullable=False, default=False),
    Column("content", Text, nullable=True),  # the JSON as served; NULL for a delete
    Index("ix_resource_version_updated", "last_updated", "rid", "version"),
    Index("ix_resource_version_type_updated", "res_type", "last_updated", "rid", "version"),
)

ref_link = Table(
    "ref_link",
    metadata,
    Column("rid", RID, ForeignKey("resource.rid"), nullable=False),
    Column("target_type", String(64), nullable=False),
    Column("target_id", String(64), nullable=False),
    Index("ix_ref_link_rid", "rid"),
    Index("ix_ref_link_target", "target_type", "target_id"),
)


def _sp(name: str, *cols: Column, indexes: tuple[tuple[str, ...], ...],
        rid_index: tuple[str, ...] = ("rid",)) -> Table:
    t = Table(
        name,
        metadata,
        Column("rid", RID, ForeignKey("resource.rid"), nullable=False),
        Column("res_type", String(64), nullable=False),
        Column("param", String(100), nullable=False),
        *cols,
        Column("grp", SmallInteger, nullable=True),
    )
    Index(f"ix_{name}_rid", *(t.c[c] for c in rid_index))
    for i, cols_ in enumerate(indexes):
        Index(f"ix_{name}_{i}", *(t.c[c] for c in cols_))
    return t


sp_token = _sp(
    "sp_token",
    Column("system", String(255), nullable=True),
    Column("code", String(255), nullable=True),
    # The resource's ``date`` envelope (min low, max high of its ``date`` rows; NULL without):
    # a necessary condition for a date clause, checked inside the token index (app.search.plan).
    Column("date_low", DateTime(timezone=False), nullable=True),
    Column("date_high", DateTime(timezone=False), nullable=True),
    indexes=(("res_type", "param", "code", "system", "rid", "date_low", "date_high"),
             ("res_type", "param", "system", "code", "rid", "date_low", "date_high")),
)

sp_string = _sp(
    "sp_string",
    Column("value_norm", _c_string(255), nullable=False),  # lower-case, accents stripped
    Column("value", Text, nullable=False),  # as written, for :exact
    indexes=(("res_type", "param", "value_norm", "rid"),),
)

sp_date = _sp(
    "sp_date",
    Column("low", DateTime(timezone=False), nullable=False),  # naive UTC, inclusive
    Column("high", DateTime(timezone=False), nullable=False),  # naive UTC, inclusive
    indexes=(("res_type", "param", "low", "high", "rid"), ("res_type", "param", "high", "low", "rid")),
    # Covering: date clauses probed per candidate row and date sort keys (min(low)/max(high) of
    # one resource) are index-only lookups.
    rid_index=("rid", "res_type", "param", "low", "high"),
)

sp_quantity = _sp(
    "sp_quantity",
    Column("value", Float, nullable=True),
    Column("system", String(255), nullable=True),
    Column("code", String(64), nullable=True),
    Column("unit", String(64), nullable=True),
    Column("canon_value", Float, nullable=True),  # value in canonical UCUM units
    Column("canon_code", String(64), nullable=True),
    indexes=(("res_type", "param", "code", "value", "rid"), ("res_type", "param", "canon_code", "canon_value", "rid")),
)

sp_number = _sp(
    "sp_number",
    Column("value", Float, nullable=False),
    indexes=(("res_type", "param", "value", "rid"),),
)

sp_reference = _sp(
    "sp_reference",
    Column("target_type", String(64), nullable=True),
    Column("target_id", String(64), nullable=True),
    Column("url", String(1024), nullable=True),  # absolute/external/canonical references
    # The resource's ``date`` envelope, as on sp_token: a patient's results sorted by date are
    # sorted on this index, and a patient + date range skips the rows outside the range.
    Column("date_low", DateTime(timezone=False), nullable=True),
    Column("date_high", DateTime(timezone=False), nullable=True),
    indexes=(("res_type", "param", "target_id", "target_type", "rid", "date_low", "date_high"),
             ("target_type", "target_id")),
)

sp_uri = _sp(
    "sp_uri",
    Column("value", _c_string(1024), nullable=False),
    indexes=(("res_type", "param", "value", "rid"),),
)

INDEX_TABLES: dict[str, Table] = {
    "token": sp_token,
    "string": sp_string,
    "date": sp_date,
    "quantity": sp_quantity,
    "number": sp_number,
    "reference": sp_reference,
    "uri": sp_uri,
}

# Tables other packages declare on this metadata (so Alembic and the schema tests see them all).
from app.auth import tables as _auth_tables  # noqa: E402,F401,I001
from app.bulk import tables as _bulk_tables  # noqa: E402,F401
from app.identity import tables as _identity_tables  # noqa: E402,F401
from app.audit import tables as _audit_tables  # noqa: E402,F401
from app.protect import tables as _protect_tables  # noqa: E402,F401

"""Row filters evaluated on the snapshot, not on the current index.

The search index describes each resource's *current* version. For an export at transactionTime
that is right for every resource not changed since (``last_updated <= transactionTime``), which
is almost all of them; a resource changed after kick-off must be tested in the version that is
exported. For those few rows (per batch) the snapshot version's JSON is indexed with the server's
own extractor (:func:`app.indexing.extract.extract`, what a write stores) into a private
in-memory SQLite database with the same tables, and the *same compiled condition* is run there,
so ``_typeFilter``, granular scopes and the Patient compartment / Group membership are decided
by the SQL the export uses for every other row (never a second, hand-written matcher).

Limit: chained criteria and ``_has`` look at *other* resources; the scratch database does not
hold them, so a filter containing either is evaluated on the live index for changed rows too
(:func:`needs_live_index`), as documented in docs/decisions/0014-bulk-export-snapshot.md.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl

import orjson
from sqlalchemy import and_, create_engine, delete, func, insert, select
from sqlalchemy.pool import StaticPool

from app.bulk.tables import bulk_job_patient
from app.indexing.extract import extract
from app.search.expr import And, Chain, Has, Node, Not, Or
from app.search.parse import parse
from app.storage.tables import INDEX_TABLES, metadata, resource, resource_version


def _joins_other_resources(node: Node) -> bool:
    if isinstance(node, (Chain, Has)):
        return True
    if isinstance(node, (And, Or)):
        return any(_joins_other_resources(c) for c in node.children)
    if isinstance(node, Not):
        return _joins_other_resources(node.child)
    return False


def needs_live_index(t: str, queries: list[str], registry: Any, tz: Any, base_url: str) -> bool:
    """True when a filter of type ``t`` uses a chain or ``_has`` (see the module docstring)."""
    for q in queries:
        req = parse(t, parse_qsl(q, keep_blank_values=True), registry, strict=True, base_url=base_url, tz=tz)
        if _joins_other_resources(req.tree()):
            return True
    return False


def changed_select(t: str, at: datetime, since: datetime | None, after: int, upto: int | None):
    """Rows of type ``t`` in ``(after, upto]`` changed after ``at`` whose version at ``at`` is
    exportable: ``(rid, res_id, version, last_updated, content)`` of that version, rid order.

    Uses ``ix_resource_type_updated`` (res_type, last_updated, rid): the scan covers only the rows
    changed since kick-off."""
    r, v = resource, resource_version
    c = select(r.c.rid, r.c.res_id).where(r.c.res_type == t, r.c.last_updated > at, r.c.rid > after)
    if upto is not None:
        c = c.where(r.c.rid <= upto)
    c = c.subquery("c")
    v2 = resource_version.alias("v2")
    older = (select(func.max(v2.c.version)).where(v2.c.rid == c.c.rid, v2.c.last_updated <= at)
             .scalar_subquery())
    on = and_(v.c.rid == c.c.rid, v.c.version == older, v.c.deleted.is_(False))
    if since is not None:
        on = and_(on, v.c.last_updated >= since)
    return (select(c.c.rid, c.c.res_id, v.c.version, v.c.last_updated, v.c.content)
            .select_from(c.join(v, on)).order_by(c.c.rid))


class SnapshotFilter:
    """Evaluates an export condition on snapshot versions in a scratch SQLite database.

    Created lazily (most batches have no changed rows); holds only the rows of the batch being
    tested (emptied after each call) plus, for Patient/Group exports, the job's patient list."""

    TABLES = (resource, *INDEX_TABLES.values(), bulk_job_patient)

    def __init__(self, engine: Any, registry: Any, tz: Any, job_id: str, base_url: str | None = None) -> None:
        self.main, self.registry, self.tz, self.job_id = engine, registry, tz, job_id
        self.base_url = base_url  # as the index was written (app.indexing.extract: only our own base)
        self._db = None

    def _scratch(self):
        if self._db is None:
            db = create_engine("sqlite://", poolclass=StaticPool, connect_args={"check_same_thread": False})
            metadata.create_all(db, tables=list(self.TABLES))
            with self.main.connect() as conn:
                members = list(conn.execute(select(bulk_job_patient.c.patient_id)
                                            .where(bulk_job_patient.c.job_id == self.job_id)).scalars())
            if members:
                with db.begin() as conn:
                    conn.execute(insert(bulk_job_patient),
                                 [{"job_id": self.job_id, "patient_id": p} for p in members])
            self._db = db
        return self._db

    def matching(self, t: str, cond: Any, rows: list) -> set[int]:
        """The rids of ``rows`` (from :func:`changed_select`) whose snapshot version satisfies
        ``cond`` (a condition on ``resource`` built without a keyset bound)."""
        if not rows:
            return set()
        db = self._scratch()
        index: dict[str, list[dict]] = {k: [] for k in INDEX_TABLES}
        res_rows = []
        for row in rows:
            content = row.content.encode() if isinstance(row.content, str) else row.content
            res_rows.append({"rid": row.rid, "res_type": t, "res_id": row.res_id, "version": row.version,
                             "last_updated": row.last_updated, "deleted": False})
            for kind, items in extract(self.registry, orjson.loads(content), tz=self.tz, base_url=self.base_url).items():
                index[kind].extend({**item, "rid": row.rid, "res_type": t} for item in items)
        with db.begin() as conn:
            conn.execute(insert(resource), res_rows)
            for kind, items in index.items():
                if items:
                    conn.execute(insert(INDEX_TABLES[kind]), items)
            got = set(conn.execute(select(resource.c.rid).where(cond)).scalars())
            for table in INDEX_TABLES.values():
                conn.execute(delete(table))
            conn.execute(delete(resource))
        return got

    def close(self) -> None:
        if self._db is not None:
            self._db.dispose()
            self._db = None

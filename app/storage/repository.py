"""The versioned repository: create, read, vread, update, delete and history on one connection.

Every write inserts a ``resource_version`` row whose primary key ``(rid, version)`` decides between
concurrent writers: the loser's INSERT (or its guarded UPDATE of the current row) fails, and the
caller maps that to 409/412. Index and ref_link rows are buffered and written with executemany in
``flush()``, which callers run before any search in the same unit of work and before commit.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

import orjson
from sqlalchemy import Connection, and_, delete, func, insert, select, tuple_, update
from sqlalchemy.exc import IntegrityError

from app.fhir.errors import FhirError
from app.fhir.jsonutil import instant, utcnow
from app.storage.references import iter_references, parse_reference
from app.storage.tables import INDEX_TABLES, ref_link, resource, resource_version

IndexFn = Callable[[dict], dict[str, list[dict]]]

_INDEX_COLUMNS = {kind: [c.name for c in t.columns if c.name not in ("rid", "res_type")] for kind, t in INDEX_TABLES.items()}


@dataclass(frozen=True)
class Stored:
    rid: int
    res_type: str
    res_id: str
    version: int
    last_updated: datetime
    deleted: bool
    content: str | None
    method: str = "GET"

    @property
    def etag(self) -> str:
        return f'W/"{self.version}"'

    @property
    def location(self) -> str:
        return f"{self.res_type}/{self.res_id}/_history/{self.version}"


class VersionConflict(Exception):
    """Another writer got there first."""


def new_id() -> str:
    return str(uuid.uuid4())


def content_hash(resource: dict) -> str:
    """Hash of the resource without server-owned meta and id, to detect no-op updates.

    The id is left out because create hashes the body before the id is assigned while update
    hashes a body carrying it; the id never differs between versions of one resource anyway.
    """
    body = {k: v for k, v in resource.items() if k != "id"}
    meta = body.get("meta")
    if isinstance(meta, dict):
        meta = {k: v for k, v in meta.items() if k not in ("versionId", "lastUpdated")}
        if meta:
            body["meta"] = meta
        else:
            del body["meta"]
    return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()


def stamp(resource: dict, res_id: str, version: int, when: datetime) -> dict:
    """Set id and the server-owned meta fields, keeping the client's key order elsewhere."""
    meta = dict(resource.get("meta") or {})
    meta["versionId"] = str(version)
    meta["lastUpdated"] = instant(when)
    out: dict = {"resourceType": resource["resourceType"], "id": res_id, "meta": meta}
    for k, v in resource.items():
        if k not in ("resourceType", "id", "meta"):
            out[k] = v
    return out


class Repository:
    def __init__(
        self,
        conn: Connection,
        index_fn: IndexFn | None,
        enabled_types: Iterable[str],
        base_url: str | None = None,
    ) -> None:
        self.conn = conn
        self.index_fn = index_fn
        self.enabled = frozenset(enabled_types)
        self.base_url = base_url
        self._rows: dict[str, list[dict]] = {}
        self._versions: list[dict] = []
        self._links: list[dict] = []

    # ---- reads -------------------------------------------------------------------------------
    def _current_select(self):
        return select(
            resource.c.rid,
            resource.c.res_type,
            resource.c.res_id,
            resource.c.version,
            resource.c.last_updated,
            resource.c.deleted,
            resource_version.c.content,
            resource_version.c.method,
        ).join(
            resource_version,
            and_(resource_version.c.rid == resource.c.rid, resource_version.c.version == resource.c.version),
        )

    def read(self, res_type: str, res_id: str) -> Stored | None:
        self.flush()
        row = self.conn.execute(
            self._current_select().where(resource.c.res_type == res_type, resource.c.res_id == res_id)
        ).first()
        return Stored(*row) if row else None

    def read_many(self, rids: list[int]) -> list[Stored]:
        if not rids:
            return []
        self.flush()
        rows = self.conn.execute(self._current_select().where(resource.c.rid.in_(rids))).all()
        by_rid = {r.rid: Stored(*r) for r in rows}
        return [by_rid[r] for r in rids if r in by_rid]

    def head(self, res_type: str, res_id: str):
        """The current row without content (for write paths)."""
        return self.conn.execute(
            select(resource.c.rid, resource.c.version, resource.c.deleted, resource.c.content_hash, resource.c.last_updated).where(
                resource.c.res_type == res_type, resource.c.res_id == res_id
            )
        ).first()

    def vread(self, res_type: str, res_id: str, version: int) -> Stored | None:
        self.flush()
        row = self.conn.execute(
            select(
                resource_version.c.rid,
                resource_version.c.res_type,
                resource_version.c.res_id,
                resource_version.c.version,
                resource_version.c.last_updated,
                resource_version.c.deleted,
                resource_version.c.content,
                resource_version.c.method,
            )
            .join(resource, resource.c.rid == resource_version.c.rid)
            .where(
                resource.c.res_type == res_type,
                resource.c.res_id == res_id,
                resource_version.c.version == version,
            )
        ).first()
        return Stored(*row) if row else None

    def existing(self, keys: set[tuple[str, str]]) -> set[tuple[str, str]]:
        """Which of these (type, id) pairs are held and not deleted."""
        if not keys:
            return set()
        self.flush()
        found: set[tuple[str, str]] = set()
        keys_l = sorted(keys)
        for i in range(0, len(keys_l), 500):
            chunk = keys_l[i : i + 500]
            rows = self.conn.execute(
                select(resource.c.res_type, resource.c.res_id).where(
                    tuple_(resource.c.res_type, resource.c.res_id).in_(chunk), resource.c.deleted.is_(False)
                )
            ).all()
            found.update((r[0], r[1]) for r in rows)
        return found

    # ---- writes ------------------------------------------------------------------------------
    def links_of(self, body: dict) -> set[tuple[str, str]]:
        """References from this resource to resources of enabled types (for integrity)."""
        out: set[tuple[str, str]] = set()
        for _path, ref in iter_references(body):
            parsed = parse_reference(ref, self.base_url)
            if parsed and parsed[0] in self.enabled:
                out.add(parsed)
        return out

    def create(self, body: dict, res_id: str | None = None, method: str = "POST") -> Stored:
        res_type = body["resourceType"]
        res_id = res_id or new_id()
        when = utcnow()
        stamped = stamp(body, res_id, 1, when)
        content = orjson.dumps(stamped).decode()
        try:
            rid = self.conn.execute(
                insert(resource)
                .values(
                    res_type=res_type,
                    res_id=res_id,
                    version=1,
                    last_updated=when,
                    deleted=False,
                    content_hash=content_hash(body),
                )
                .returning(resource.c.rid)
            ).scalar_one()
        except IntegrityError:
            raise VersionConflict(f"{res_type}/{res_id} was created concurrently") from None
        self._versions.append(
            dict(rid=rid, version=1, res_type=res_type, res_id=res_id, last_updated=when, method=method, deleted=False, content=content)
        )
        self._buffer_index(rid, res_type, stamped, replace=False)
        return Stored(rid, res_type, res_id, 1, when, False, content, method)

    def update(self, head, body: dict, res_id: str, method: str = "PUT") -> Stored:
        """Write version head.version+1 over the current row ``head`` (from ``head()``)."""
        res_type = body["resourceType"]
        version = head.version + 1
        when = utcnow()
        if when <= head.last_updated:
            # Keep lastUpdated strictly increasing per resource even on a fast double write.
            when = head.last_updated + timedelta(milliseconds=1)
        stamped = stamp(body, res_id, version, when)
        content = orjson.dumps(stamped).decode()
        self._write_version(head.rid, version, res_type, res_id, when, method, False, content)
        res = self.conn.execute(
            update(resource)
            .where(resource.c.rid == head.rid, resource.c.version == head.version)
            .values(version=version, last_updated=when, deleted=False, content_hash=content_hash(body))
        )
        if res.rowcount != 1:
            raise VersionConflict(f"{res_type}/{res_id} was changed concurrently")
        self._buffer_index(head.rid, res_type, stamped, replace=True)
        return Stored(head.rid, res_type, res_id, version, when, False, content, method)

    def delete(self, head, res_type: str, res_id: str) -> Stored:
        version = head.version + 1
        when = utcnow()
        if when <= head.last_updated:
            when = head.last_updated + timedelta(milliseconds=1)
        self._write_version(head.rid, version, res_type, res_id, when, "DELETE", True, None)
        res = self.conn.execute(
            update(resource)
            .where(resource.c.rid == head.rid, resource.c.version == head.version)
            .values(version=version, last_updated=when, deleted=True, content_hash=None)
        )
        if res.rowcount != 1:
            raise VersionConflict(f"{res_type}/{res_id} was changed concurrently")
        self._drop_index(head.rid)
        return Stored(head.rid, res_type, res_id, version, when, True, None, "DELETE")

    def referrers(self, res_type: str, res_id: str, limit: int = 5) -> list[tuple[str, str]]:
        """Current resources that reference (type, id): they block its deletion."""
        self.flush()
        rows = self.conn.execute(
            select(resource.c.res_type, resource.c.res_id)
            .join(ref_link, ref_link.c.rid == resource.c.rid)
            .where(ref_link.c.target_type == res_type, ref_link.c.target_id == res_id, resource.c.deleted.is_(False))
            .where(~and_(resource.c.res_type == res_type, resource.c.res_id == res_id))
            .limit(limit)
        ).all()
        return [(r[0], r[1]) for r in rows]

    def _write_version(self, rid, version, res_type, res_id, when, method, deleted, content) -> None:
        try:
            self.conn.execute(
                insert(resource_version).values(
                    rid=rid,
                    version=version,
                    res_type=res_type,
                    res_id=res_id,
                    last_updated=when,
                    method=method,
                    deleted=deleted,
                    content=content,
                )
            )
        except IntegrityError:
            raise VersionConflict(f"{res_type}/{res_id} version {version} was written concurrently") from None

    # ---- index rows --------------------------------------------------------------------------
    def _buffer_index(self, rid: int, res_type: str, body: dict, replace: bool) -> None:
        links = self.links_of(body)
        rows = self.index_fn(body) if self.index_fn else {}
        if replace:
            self._replace_index(rid, res_type, rows, links)
            return
        for kind, lst in rows.items():
            buf = self._rows.setdefault(kind, [])
            for r in lst:
                buf.append({"rid": rid, "res_type": res_type, **r})
        self._links.extend({"rid": rid, "target_type": t, "target_id": i} for t, i in links)

    def _replace_index(self, rid: int, res_type: str, rows: dict[str, list[dict]], links: set[tuple[str, str]]) -> None:
        """Change only the rows of parameters whose values changed."""
        self.flush()
        for kind, table in INDEX_TABLES.items():
            cols = _INDEX_COLUMNS[kind]
            old = self.conn.execute(select(*(table.c[c] for c in cols)).where(table.c.rid == rid)).all()
            old_by_param: dict[str, set[tuple]] = {}
            for r in old:
                old_by_param.setdefault(r.param, set()).add(tuple(r))
            new_by_param: dict[str, set[tuple]] = {}
            for r in rows.get(kind, []):
                new_by_param.setdefault(r["param"], set()).add(tuple(r.get(c) for c in cols))
            changed = [p for p in set(old_by_param) | set(new_by_param) if old_by_param.get(p) != new_by_param.get(p)]
            if not changed:
                continue
            gone = [p for p in changed if p in old_by_param]
            if gone:
                self.conn.execute(delete(table).where(table.c.rid == rid, table.c.param.in_(gone)))
            fresh = [
                {"rid": rid, "res_type": res_type, **dict(zip(cols, t, strict=True))}
                for p in changed
                for t in new_by_param.get(p, ())
            ]
            if fresh:
                self.conn.execute(insert(table), fresh)
        old_links = {(r[0], r[1]) for r in self.conn.execute(select(ref_link.c.target_type, ref_link.c.target_id).where(ref_link.c.rid == rid))}
        if old_links != links:
            self.conn.execute(delete(ref_link).where(ref_link.c.rid == rid))
            if links:
                self.conn.execute(insert(ref_link), [{"rid": rid, "target_type": t, "target_id": i} for t, i in links])

    def _drop_index(self, rid: int) -> None:
        self.flush()
        for table in INDEX_TABLES.values():
            self.conn.execute(delete(table).where(table.c.rid == rid))
        self.conn.execute(delete(ref_link).where(ref_link.c.rid == rid))

    def flush(self) -> None:
        """Write buffered version, index and link rows (executemany, one statement per table)."""
        if self._versions:
            versions, self._versions = self._versions, []
            self.conn.execute(insert(resource_version), versions)
        for kind, rows in list(self._rows.items()):
            if rows:
                self.conn.execute(insert(INDEX_TABLES[kind]), rows)
        self._rows = {}
        if self._links:
            links, self._links = self._links, []
            self.conn.execute(insert(ref_link), links)

    # ---- history -----------------------------------------------------------------------------
    def history(
        self,
        res_type: str | None,
        res_id: str | None,
        since: datetime | None,
        before: tuple[datetime, int, int] | None,
        count: int,
    ) -> list[Stored]:
        """Versions newest first; ``before`` is the keyset cursor (last_updated, rid, version)."""
        self.flush()
        rv = resource_version
        q = select(rv.c.rid, rv.c.res_type, rv.c.res_id, rv.c.version, rv.c.last_updated, rv.c.deleted, rv.c.content, rv.c.method)
        if res_id is not None:
            rid = self.conn.execute(
                select(resource.c.rid).where(resource.c.res_type == res_type, resource.c.res_id == res_id)
            ).scalar()
            if rid is None:
                return []
            q = q.where(rv.c.rid == rid)
        elif res_type is not None:
            q = q.where(rv.c.res_type == res_type)
        if since is not None:
            q = q.where(rv.c.last_updated >= since)
        if before is not None:
            q = q.where(tuple_(rv.c.last_updated, rv.c.rid, rv.c.version) < tuple_(*before))
        q = q.order_by(rv.c.last_updated.desc(), rv.c.rid.desc(), rv.c.version.desc()).limit(count)
        return [Stored(*r) for r in self.conn.execute(q).all()]

    def count_history(self, res_type: str | None, res_id: str | None, since: datetime | None) -> int:
        rv = resource_version
        q = select(func.count()).select_from(rv)
        if res_id is not None:
            q = q.join(resource, resource.c.rid == rv.c.rid).where(resource.c.res_type == res_type, resource.c.res_id == res_id)
        elif res_type is not None:
            q = q.where(rv.c.res_type == res_type)
        if since is not None:
            q = q.where(rv.c.last_updated >= since)
        return int(self.conn.execute(q).scalar_one())


def conflict(exc: VersionConflict, precondition: bool) -> FhirError:
    if precondition:
        return FhirError(412, "conflict", f"{exc} (the version given in If-Match is no longer current)")
    return FhirError(409, "conflict", f"{exc}; read the resource again and retry")

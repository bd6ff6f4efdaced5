"""The versioned repository: create, read, vread, update, delete and history on one connection.

Every write inserts a ``resource_version`` row whose primary key ``(rid, version)`` decides between
concurrent writers: the loser's INSERT (or its guarded UPDATE of the current row) fails, and the
caller maps that to 409/412. The unique ``(res_type, res_id)`` constraint does the same for two
creates of one id.

Writes are buffered and written set-based in ``flush()``, which every read of this repository runs
first and callers run before any search of their own in the same unit of work and before commit:

- version, index and ``ref_link`` rows of every write (PostgreSQL: ``COPY`` from 16 rows a table,
  executemany below; SQLite: the driver's executemany);
- on PostgreSQL also the ``resource`` rows of a transaction's creates: their ``rid`` values are
  taken from the table's sequence up front (``reserve_rids``, one round trip), so each returned
  ``Stored`` is complete at once. A lone create, and SQLite, insert that row at once.

``prefetch_heads`` reads the current rows of many resources in one query (a transaction's
targets); ``head`` answers from it until this repository writes that resource.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, NamedTuple

import orjson
from sqlalchemy import (
    Connection,
    and_,
    bindparam,
    delete,
    func,
    insert,
    or_,
    select,
    text,
    tuple_,
    update,
)
from sqlalchemy.exc import DBAPIError, IntegrityError

from app.fhir.errors import FhirError
from app.fhir.jsonutil import instant, utcnow
from app.storage.references import iter_references, malformed_local, parse_reference
from app.storage.tables import INDEX_TABLES, ref_link, resource, resource_version

IndexFn = Callable[[dict], dict[str, list[dict]]]

_INDEX_COLUMNS = {kind: [c.name for c in t.columns if c.name not in ("rid", "res_type")] for kind, t in INDEX_TABLES.items()}
_VERSION_COLUMNS = ("rid", "version", "res_type", "res_id", "last_updated", "method", "deleted", "content")
_RESOURCE_COLUMNS = ("rid", "res_type", "res_id", "version", "last_updated", "deleted", "content_hash")
_LINK_COLUMNS = ("rid", "target_type", "target_id")
_IN_CHUNK = 500  # keys per IN list
assert all(
    [c.name for c in t.columns][:2] == ["rid", "res_type"] for t in INDEX_TABLES.values()
), "index tables must start with rid, res_type (the buffered rows are tuples in column order)"
assert tuple(c.name for c in resource_version.columns) == _VERSION_COLUMNS
assert tuple(c.name for c in resource.columns) == _RESOURCE_COLUMNS
assert tuple(c.name for c in ref_link.columns) == _LINK_COLUMNS


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


class Head(NamedTuple):
    """The current row of a resource, without content (what the write paths decide on)."""

    rid: int
    version: int
    deleted: bool
    content_hash: str | None
    last_updated: datetime


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


_PLAIN_INSERTS: dict[tuple[str, tuple[str, ...]], tuple[str, list]] = {}


def _processed(row: tuple, procs: list) -> tuple:
    if not procs:
        return row
    out = list(row)
    for i, proc in procs:
        out[i] = proc(out[i])
    return tuple(out)


def _chunks(items: list, n: int = _IN_CHUNK):
    for i in range(0, len(items), n):
        yield items[i : i + n]


def _by_type(keys: Iterable[tuple[str, str]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for t, i in keys:
        out.setdefault(t, []).append(i)
    for ids in out.values():
        ids.sort()
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
        self._pg = conn.dialect.name == "postgresql"
        self._sqlite = conn.dialect.name == "sqlite"
        self.copy_min_rows = 16  # PostgreSQL: fewer rows for a table go in with executemany
        # Buffered rows, as tuples in table column order.
        self._resources: list[tuple] = []  # PostgreSQL creates (rid already taken from the sequence)
        self._versions: list[tuple] = []
        self._rows: dict[str, list[tuple]] = {}
        self._links: list[tuple] = []
        self._unflushed: set[tuple[str, str]] = set()  # created here, resource row not written yet
        self._heads: dict[tuple[str, str], Head | None] = {}  # prefetched, until written here
        self._rids: list[int] = []  # reserved from the sequence, not used yet
        self._links_memo: dict[int, tuple[dict, set[tuple[str, str]]]] = {}
        # updated resources: rid -> (type, new index rows, new links), applied in flush()
        self._replacements: dict[int, tuple[str, dict[str, list[dict]], set[tuple[str, str]]]] = {}

    # ---- reads -------------------------------------------------------------------------------
    @staticmethod
    def _current_select():
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
        row = self.conn.execute(_READ_BY_ID, {"rt": res_type, "rid": res_id}).first()
        return Stored(*row) if row else None

    def read_many(self, rids: list[int]) -> list[Stored]:
        if not rids:
            return []
        self.flush()
        rows = self.conn.execute(self._current_select().where(resource.c.rid.in_(rids))).all()
        by_rid = {r.rid: Stored(*r) for r in rows}
        return [by_rid[r] for r in rids if r in by_rid]

    @staticmethod
    def _head_select():
        return select(
            resource.c.rid, resource.c.version, resource.c.deleted, resource.c.content_hash, resource.c.last_updated
        )

    def head(self, res_type: str, res_id: str) -> Head | None:
        """The current row without content (for write paths)."""
        key = (res_type, res_id)
        if key in self._unflushed:
            self.flush()
        elif key in self._heads:
            return self._heads[key]
        row = self.conn.execute(_HEAD_BY_ID, {"rt": res_type, "rid": res_id}).first()
        return Head(*row) if row else None

    def prefetch_heads(self, keys: Iterable[tuple[str, str]]) -> None:
        """Read the current rows of these resources in one query (per 500), for ``head`` to
        answer from (a transaction's targets). A resource this repository writes afterwards is
        read again when asked."""
        want = {k for k in keys if k not in self._heads and k not in self._unflushed}
        if not want:
            return
        for k in want:
            self._heads[k] = None
        for r in self._rows_for(want, "r.rid, r.version, r.deleted, r.content_hash, r.last_updated, r.res_type, r.res_id"):
            self._heads[(r[5], r[6])] = Head(*r[:5])

    _PG_KEYS_SQL = (
        "SELECT {cols} FROM unnest(CAST(:types AS varchar[]), CAST(:ids AS varchar[])) AS k(t, i) "
        "JOIN resource r ON r.res_type = k.t AND r.res_id = k.i{extra}"
    )

    def _rows_for(self, keys: set[tuple[str, str]], cols: str, live_only: bool = False) -> list:
        """Columns ``cols`` (of ``resource r``) of the rows with these (type, id) keys, 500 keys
        a statement. PostgreSQL: a join with two array parameters, one fixed statement text
        (SQLAlchemy's expanding IN costs more to render than the query takes); SQLite: an OR of
        ``res_type = T AND res_id IN (...)``, one index range per type."""
        out: list = []
        for chunk in _chunks(sorted(keys)):
            if self._pg:
                sql = self._PG_KEYS_SQL.format(cols=cols, extra=" WHERE NOT r.deleted" if live_only else "")
                params = {"types": [t for t, _ in chunk], "ids": [i for _, i in chunk]}
                out.extend(self.conn.execute(text(sql), params).all())
                continue
            cond = or_(
                *(and_(resource.c.res_type == t, resource.c.res_id.in_(ids)) for t, ids in _by_type(chunk).items())
            )
            names = [c.strip().removeprefix("r.") for c in cols.split(",")]
            query = select(*(resource.c[n] for n in names)).where(cond)
            if live_only:
                query = query.where(resource.c.deleted.is_(False))
            out.extend(self.conn.execute(query).all())
        return out

    def current(self, head: Head, res_type: str, res_id: str, with_content: bool = True) -> Stored:
        """The current version a ``head`` describes (an unchanged update answers with it):
        without its content when the caller has no use for it, so without a query."""
        content, method = None, "GET"
        if with_content:
            # The version row of a head is in the database: a head of a resource created in this
            # unit of work is read only after a flush.
            row = self.conn.execute(
                select(resource_version.c.content, resource_version.c.method).where(
                    resource_version.c.rid == head.rid, resource_version.c.version == head.version
                )
            ).first()
            if row is not None:
                content, method = row
        return Stored(head.rid, res_type, res_id, head.version, head.last_updated, head.deleted, content, method)

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
        """Which of these (type, id) pairs are held and not deleted, including what this unit of
        work created and has not flushed yet (so no flush is needed; one query per 500 keys)."""
        if not keys:
            return set()
        found = keys & self._unflushed
        rest = keys - found
        if rest:
            rows = self._rows_for(rest, "r.res_type, r.res_id", live_only=True)
            found.update((r[0], r[1]) for r in rows)
        return found

    # ---- writes ------------------------------------------------------------------------------
    def links_of(self, body: dict) -> set[tuple[str, str]]:
        """References from this resource to resources of enabled types (for integrity).
        Remembered for the bodies this repository wrote, so the integrity check that follows a
        write does not walk them again."""
        memo = self._links_memo.get(id(body))
        if memo is not None and memo[0] is body:
            return memo[1]
        out: set[tuple[str, str]] = set()
        for path, ref in iter_references(body):
            parsed = parse_reference(ref, self.base_url)
            if parsed and parsed[0] in self.enabled:
                out.add(parsed)
            elif parsed is None and malformed_local(ref, self.base_url, self.enabled):
                raise FhirError(400, "invalid", f"{path}: reference '{ref[:100]}' names this server's "
                                f"{ref.split('/', 1)[0][:40] or 'base'} but is not Type/id "
                                "(id: 1-64 of A-Z a-z 0-9 - .)", [path])
        return out

    def _remember_links(self, body: dict) -> set[tuple[str, str]]:
        links = self.links_of(body)
        self._links_memo[id(body)] = (body, links)  # keeps body alive, so its id is not reused
        return links

    def reserve_rids(self, n: int) -> None:
        """Take ``n`` row ids from the sequence in one round trip for the creates to come, whose
        resource rows then wait for flush() with the rest (PostgreSQL, and only for two or more:
        one create is cheaper as an INSERT ... RETURNING at once; SQLite assigns ids on insert).
        Unused ids are gaps in the sequence, as after a rollback."""
        if not self._pg or n < 2 or n <= len(self._rids):
            return
        n -= len(self._rids)
        rows = self.conn.execute(
            text("SELECT nextval(pg_get_serial_sequence('resource', 'rid')) FROM generate_series(1, :n)"),
            {"n": n},
        ).all()
        self._rids.extend(sorted(r[0] for r in rows))

    def create(self, body: dict, res_id: str | None = None, method: str = "POST") -> Stored:
        res_type = body["resourceType"]
        res_id = res_id or new_id()
        key = (res_type, res_id)
        when = utcnow()
        stamped = stamp(body, res_id, 1, when)
        content = orjson.dumps(stamped).decode()
        chash = content_hash(body)
        links = self._remember_links(body)  # the same as the stamped body's: stamp adds no reference
        if self._rids:
            # A row id taken for this batch (PostgreSQL): the resource row is written in flush();
            # a concurrent create of the same id then fails there, on the unique constraint (409).
            rid = self._rids.pop(0)
            self._resources.append((rid, res_type, res_id, 1, when, False, chash))
            self._unflushed.add(key)
        elif self._sqlite:
            sql, procs = self._plain_insert(resource, _RESOURCE_COLUMNS[1:])
            try:
                rid = self.conn.exec_driver_sql(
                    sql, _processed((res_type, res_id, 1, when, False, chash), procs)
                ).lastrowid
            except IntegrityError:
                raise VersionConflict(f"{res_type}/{res_id} was created concurrently") from None
        else:
            try:
                rid = self.conn.execute(
                    insert(resource)
                    .values(
                        res_type=res_type,
                        res_id=res_id,
                        version=1,
                        last_updated=when,
                        deleted=False,
                        content_hash=chash,
                    )
                    .returning(resource.c.rid)
                ).scalar_one()
            except IntegrityError:
                raise VersionConflict(f"{res_type}/{res_id} was created concurrently") from None
        self._heads.pop(key, None)
        self._versions.append((rid, 1, res_type, res_id, when, method, False, content))
        self._buffer_index(rid, res_type, stamped, links, replace=False)
        return Stored(rid, res_type, res_id, 1, when, False, content, method)

    def update(self, head: Head, body: dict, res_id: str, method: str = "PUT") -> Stored:
        """Write version head.version+1 over the current row ``head`` (from ``head()``)."""
        res_type = body["resourceType"]
        self._heads.pop((res_type, res_id), None)
        version = head.version + 1
        when = utcnow()
        if when <= head.last_updated:
            # Keep lastUpdated strictly increasing per resource even on a fast double write.
            when = head.last_updated + timedelta(milliseconds=1)
        stamped = stamp(body, res_id, version, when)
        content = orjson.dumps(stamped).decode()
        links = self._remember_links(body)
        self._write_version(head.rid, version, res_type, res_id, when, method, False, content)
        res = self.conn.execute(
            update(resource)
            .where(resource.c.rid == head.rid, resource.c.version == head.version)
            .values(version=version, last_updated=when, deleted=False, content_hash=content_hash(body))
        )
        if res.rowcount != 1:
            raise VersionConflict(f"{res_type}/{res_id} was changed concurrently")
        self._buffer_index(head.rid, res_type, stamped, links, replace=True)
        return Stored(head.rid, res_type, res_id, version, when, False, content, method)

    def update_many(self, items: list[tuple[Head, dict, str]], method: str = "PUT") -> list[Stored]:
        """A new version of each (head, body, id), set-based: a merge re-points every result of
        a patient at once. Version rows wait for ``flush()`` (COPY on PostgreSQL), the current rows
        move on in one executemany guarded by the expected versions, and the index changes are
        applied in ``flush()`` as for ``update``."""
        out: list[Stored] = []
        params: list[dict] = []
        for head, body, res_id in items:
            res_type = body["resourceType"]
            self._heads.pop((res_type, res_id), None)
            version = head.version + 1
            when = utcnow()
            if when <= head.last_updated:
                when = head.last_updated + timedelta(milliseconds=1)
            stamped = stamp(body, res_id, version, when)
            content = orjson.dumps(stamped).decode()
            links = self._remember_links(body)
            self._versions.append((head.rid, version, res_type, res_id, when, method, False, content))
            params.append({"b_rid": head.rid, "b_old": head.version, "b_version": version, "b_when": when,
                           "b_hash": content_hash(body)})
            self._buffer_index(head.rid, res_type, stamped, links, replace=True)
            out.append(Stored(head.rid, res_type, res_id, version, when, False, content, method))
        if params:
            res = self.conn.execute(
                update(resource)
                .where(resource.c.rid == bindparam("b_rid"), resource.c.version == bindparam("b_old"))
                .values(version=bindparam("b_version"), last_updated=bindparam("b_when"), deleted=False,
                        content_hash=bindparam("b_hash")),
                params,
            )
            if self.conn.dialect.supports_sane_multi_rowcount and res.rowcount != len(params):
                raise VersionConflict(f"{len(params) - res.rowcount} of {len(params)} resources were changed concurrently")
        return out

    def delete(self, head: Head, res_type: str, res_id: str) -> Stored:
        self._heads.pop((res_type, res_id), None)
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
    def _buffer_index(self, rid: int, res_type: str, body: dict, links: set[tuple[str, str]], replace: bool) -> None:
        rows = self.index_fn(body) if self.index_fn else {}
        if replace:
            self._replace_index(rid, res_type, rows, links)
            return
        for kind, lst in rows.items():
            if not lst:
                continue
            cols = _INDEX_COLUMNS[kind]
            buf = self._rows.setdefault(kind, [])
            for r in lst:
                buf.append((rid, res_type, *[r.get(c) for c in cols]))
        self._links.extend((rid, t, i) for t, i in links)

    def _replace_index(self, rid: int, res_type: str, rows: dict[str, list[dict]], links: set[tuple[str, str]]) -> None:
        """Remember an updated resource's new index rows; ``flush()`` changes only the rows of
        parameters whose values changed, for all updated resources at once. A later update of
        the same resource in this unit of work supersedes this one."""
        self._replacements[rid] = (res_type, rows, links)

    def _apply_replacements(self) -> None:
        """For every updated resource: read its stored index and link rows (one query per table
        for all of them), delete the rows of parameters whose values changed and buffer the new
        ones (then written like any others)."""
        pending, self._replacements = self._replacements, {}
        rids = sorted(pending)
        for kind, table in INDEX_TABLES.items():
            cols = _INDEX_COLUMNS[kind]
            old_by_rid: dict[int, dict[str, set[tuple]]] = {}
            for chunk in _chunks(rids):
                for r in self.conn.execute(select(table.c.rid, *(table.c[c] for c in cols)).where(table.c.rid.in_(chunk))):
                    old_by_rid.setdefault(r[0], {}).setdefault(r[1], set()).add(tuple(r[1:]))
            gone: list[dict] = []
            buf = self._rows.setdefault(kind, [])
            for rid in rids:
                res_type, rows, _links = pending[rid]
                old_by_param = old_by_rid.get(rid, {})
                new_by_param: dict[str, set[tuple]] = {}
                for r in rows.get(kind, []):
                    new_by_param.setdefault(r["param"], set()).add(tuple(r.get(c) for c in cols))
                for p in set(old_by_param) | set(new_by_param):
                    if old_by_param.get(p) == new_by_param.get(p):
                        continue
                    if p in old_by_param:
                        gone.append({"d_rid": rid, "d_param": p})
                    buf.extend((rid, res_type, *t) for t in new_by_param.get(p, ()))
            if gone:
                self.conn.execute(
                    delete(table).where(table.c.rid == bindparam("d_rid"), table.c.param == bindparam("d_param")),
                    gone,
                )
        old_links: dict[int, set[tuple[str, str]]] = {}
        for chunk in _chunks(rids):
            for r in self.conn.execute(
                select(ref_link.c.rid, ref_link.c.target_type, ref_link.c.target_id).where(ref_link.c.rid.in_(chunk))
            ):
                old_links.setdefault(r[0], set()).add((r[1], r[2]))
        changed = [rid for rid in rids if old_links.get(rid, set()) != pending[rid][2]]
        if changed:
            self.conn.execute(delete(ref_link).where(ref_link.c.rid == bindparam("d_rid")), [{"d_rid": r} for r in changed])
            for rid in changed:
                self._links.extend((rid, t, i) for t, i in pending[rid][2])

    def _drop_index(self, rid: int) -> None:
        self.flush()
        for table in INDEX_TABLES.values():
            self.conn.execute(delete(table).where(table.c.rid == rid))
        self.conn.execute(delete(ref_link).where(ref_link.c.rid == rid))

    def flush(self) -> None:
        """Write the buffered rows: resource rows of creates first (the others reference them),
        then versions, index rows and links; ``COPY`` on PostgreSQL, executemany on SQLite. Then
        the index changes of updated resources, against what is now stored."""
        self._write_buffers()
        if self._replacements:
            self._apply_replacements()
            self._write_buffers()

    def _write_buffers(self) -> None:
        if self._resources:
            resources, self._resources = self._resources, []
            keys, self._unflushed = self._unflushed, set()
            try:
                self._write(resource, _RESOURCE_COLUMNS, resources)
            except IntegrityError as exc:
                shown = ", ".join(sorted(f"{t}/{i}" for t, i in keys)[:5])
                raise conflict(
                    VersionConflict(f"A resource this request creates ({shown}) was created concurrently"), False
                ) from exc
        if self._versions:
            versions, self._versions = self._versions, []
            self._write(resource_version, _VERSION_COLUMNS, versions)
        if self._rows:
            rows_by_kind, self._rows = self._rows, {}
            for kind, rows in rows_by_kind.items():
                table = INDEX_TABLES[kind]
                if kind != "token":
                    self._write(table, ("rid", "res_type", *_INDEX_COLUMNS[kind]), rows)
                    continue
                # Patient identifiers are unique (app.identity): a clear 409 before the write,
                # the unique index as referee between concurrent writers.
                from app.identity import keys as identity_keys

                identity_keys.check_rows(self.conn, rows)
                try:
                    self._write(table, ("rid", "res_type", *_INDEX_COLUMNS[kind]), rows)
                except IntegrityError as exc:
                    raise identity_keys.after_violation(self.conn, rows) from exc
        if self._links:
            links, self._links = self._links, []
            self._write(ref_link, _LINK_COLUMNS, links)

    def _plain_insert(self, table, cols: tuple[str, ...]) -> tuple[str, list]:
        """SQLite: a positional INSERT for the driver's executemany, with the bind processors
        SQLAlchemy itself would apply (DateTime to its text form, ...): the same stored values
        without SQLAlchemy's per-row statement processing."""
        key = (table.name, cols)
        hit = _PLAIN_INSERTS.get(key)
        if hit is None:
            dialect = self.conn.dialect
            prep = dialect.identifier_preparer
            sql = (
                f"INSERT INTO {prep.format_table(table)} ({', '.join(prep.quote(c) for c in cols)}) "
                f"VALUES ({', '.join('?' * len(cols))})"
            )
            procs = [(i, table.c[c].type.dialect_impl(dialect).bind_processor(dialect)) for i, c in enumerate(cols)]
            hit = _PLAIN_INSERTS[key] = (sql, [(i, p) for i, p in procs if p is not None])
        return hit

    def _write(self, table, cols: tuple[str, ...], rows: list[tuple]) -> None:
        if not rows:
            return
        if self._sqlite:
            sql, procs = self._plain_insert(table, cols)
            self.conn.exec_driver_sql(sql, [_processed(r, procs) for r in rows] if procs else rows)
            return
        if not self._pg or len(rows) < self.copy_min_rows:
            # COPY's set-up costs more than a short executemany (a single-resource write)
            self.conn.execute(insert(table), [dict(zip(cols, r, strict=True)) for r in rows])
            return
        prep = self.conn.dialect.identifier_preparer
        stmt = f"COPY {prep.format_table(table)} ({', '.join(prep.quote(c) for c in cols)}) FROM STDIN"
        raw = self.conn.connection.driver_connection
        import psycopg

        try:
            with raw.cursor() as cur, cur.copy(stmt) as copy:
                for r in rows:
                    copy.write_row(r)
        except psycopg.Error as exc:  # as SQLAlchemy would raise it (IntegrityError, ...)
            raise DBAPIError.instance(stmt, None, exc, psycopg.Error, ismulti=True) from exc

    # ---- history -----------------------------------------------------------------------------
    def history(
        self,
        res_type: str | None,
        res_id: str | None,
        since: datetime | None,
        before: tuple[datetime, int, int] | None,
        count: int,
        extra: Any = None,
    ) -> list[Stored]:
        """Versions newest first; ``before`` is the keyset cursor (last_updated, rid, version).
        ``extra``: ``(resource_version) -> condition`` hiding versions (sensitive labels)."""
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
        if extra is not None:
            q = q.where(extra(rv))
        q = q.order_by(rv.c.last_updated.desc(), rv.c.rid.desc(), rv.c.version.desc()).limit(count)
        return [Stored(*r) for r in self.conn.execute(q).all()]

    def count_history(self, res_type: str | None, res_id: str | None, since: datetime | None) -> int:
        self.flush()
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


# Built once, not per call: reads run on every GET, and building a select with its joins costs
# more application CPU than running it (docs/performance.md).
_READ_BY_ID = Repository._current_select().where(
    resource.c.res_type == bindparam("rt"), resource.c.res_id == bindparam("rid"))
_HEAD_BY_ID = Repository._head_select().where(
    resource.c.res_type == bindparam("rt"), resource.c.res_id == bindparam("rid"))

"""The per-request audit recorder the interactions talk to (``FhirContext.audit``).

Framework-free: the HTTP layer (app/audit/web.py) creates one per request with the request id
and a function that tells who is calling; the interactions call it at the two moments only they
know about:

- a change (create, update, patch, delete; each entry of a transaction or batch) is recorded by
  :meth:`Recorder.changed` on the change's own connection, *before* its transaction commits: the
  audit row commits with the change or not at all; the patient identity operations
  (``$merge``, ``$unmerge``, ``$correct-nhs-number``) likewise, one event each, by
  :meth:`Recorder.operation`;
- a batch or transaction ``GET`` entry, or a failed batch entry, is noted with
  :meth:`Recorder.accessed` / :meth:`Recorder.entry_failed` and written with the request's
  other read events before the response is sent.

A search that follows a paging link (``?_cursor=<sealed search>``, docs/decisions/0015) is
recorded with the search the link carries, unsealed, never with the token:
:meth:`Recorder.followed`.

Everything else (the request's own read, search, history, refusal) the HTTP layer records from
the request and the response.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode

import orjson
from sqlalchemy import Connection, select

from app.audit.events import ACTIONS, AuditRecord, Who, outcome_for
from app.audit.patients import patients_in
from app.audit.store import store_in
from app.fhir.errors import FhirError
from app.search.paging import CURSOR_PARAM
from app.storage.tables import resource, resource_version


@dataclass
class Change:
    subtype: str  # create | update | patch | delete
    res_type: str
    res_id: str
    version: int | None  # the version written (the tombstone for a delete); None: nothing written
    content: str | bytes | dict | None
    status: int
    note: str | None = None
    entry: int | None = None  # Bundle entry index


_PAGES = {"next": "next", "prev": "previous"}


@dataclass(frozen=True)
class Followed:
    """A request that came with a search link's ``_cursor``, as the trail records it."""

    params: list[tuple[str, str]]  # the link's search (unsealed), then what came with it; never the token
    page: str | None  # first | next | previous; None when the link did not open (tampered, another caller ...)

    @property
    def query(self) -> str | None:
        """The same form as a first page's query: ``name=value&...`` (form-encoded)."""
        return urlencode(self.params) or None


def _previous_content(conn: Connection, res_type: str, res_id: str, version: int) -> str | None:
    return conn.execute(
        select(resource_version.c.content)
        .join(resource, resource.c.rid == resource_version.c.rid)
        .where(resource.c.res_type == res_type, resource.c.res_id == res_id, resource_version.c.version == version - 1)
    ).scalar()


class Recorder:
    def __init__(self, request_id: str, who: Callable[[], Who]) -> None:
        self.request_id = request_id
        self._who_fn = who
        self._who: Who | None = None
        self.entry: int | None = None  # the batch/transaction entry being processed
        self.changes_written = 0  # change events written inside their transactions
        self.pending: list[AuditRecord] = []  # entry-level events to write with the request's
        self.custom: list[AuditRecord] = []  # events other code added (app.audit.record)
        self.bundle_type: str | None = None  # batch | transaction, for a Bundle at the base URL
        self.named: set[str] = set()  # patients an operation's request names (for its failure event)
        # Opens a search link's token as the request's caller: ``(path, token) -> Resumed``, the
        # server's app.search.paging.open_search bound to its key and the caller (set by the
        # HTTP layer when the request's FhirContext is made); None: nothing to open links with.
        self.open_link: Callable[[str, str], Any] | None = None

    @property
    def who(self) -> Who:
        if self._who is None:
            self._who = self._who_fn()
        return self._who

    def _detail(self, extra: dict | None = None) -> dict | None:
        d = dict(extra or {})
        if self.entry is not None:
            d["entry"] = self.entry
        return d or None

    # ---- changes: inside the change's transaction ------------------------------------------
    def changed(self, conn: Connection, subtype: str, res_type: str, res_id: str, version: int | None,
                content: str | bytes | dict | None, status: int, *, note: str | None = None,
                entry: int | None = None) -> None:
        """Record one change on ``conn`` (the change's own transaction, before it commits).
        ``content``: the resource as written; for a delete None, and the patients are those of
        the version before the tombstone."""
        self.changed_many(conn, [Change(subtype, res_type, res_id, version, content, status, note,
                                        self.entry if entry is None else entry)])

    def changed_many(self, conn: Connection, items: list[Change]) -> None:
        recs = []
        for c in items:
            content = orjson.dumps(c.content) if isinstance(c.content, dict) else c.content
            if content is None and c.subtype == "delete" and c.version:
                content = _previous_content(conn, c.res_type, c.res_id, c.version)
            patients = patients_in(content)
            if c.res_type == "Patient":
                patients.add(c.res_id)
            entity = f"{c.res_type}/{c.res_id}" + (f"/_history/{c.version}" if c.version else "")
            detail: dict = {}
            if c.note:
                detail["description"] = c.note
            if c.entry is not None:
                detail["entry"] = c.entry
            recs.append(AuditRecord(
                "rest", c.subtype, ACTIONS.get(c.subtype, "E"), 0, self.request_id, self.who, status=c.status,
                res_type=c.res_type, entity=entity, detail=detail or None, patients=patients,
            ))
        store_in(conn, recs)
        self.changes_written += len(recs)

    def operation(self, conn: Connection, subtype: str, *, res_type: str | None, entity: str | None,
                  patients: set[str], status: int = 200, detail: dict | None = None) -> None:
        """Record one successful operation that changed data (Patient ``$merge``, ``$unmerge``,
        ``$correct-nhs-number``) on ``conn``, inside the operation's own transaction, before it
        commits: the record commits with the change or not at all.  The HTTP layer then adds no
        second event for the request; if the transaction fails, it records the failure instead."""
        store_in(conn, [AuditRecord(
            "rest", subtype, ACTIONS.get(subtype, "E"), 0, self.request_id, self.who, status=status,
            res_type=res_type, entity=entity, detail=self._detail(detail), patients=set(patients),
        )])
        self.changes_written += 1

    # ---- searches that follow a paging link ------------------------------------------------
    def followed(self, path: str | None, params: list[tuple[str, str]]) -> Followed | None:
        """``params`` of a search request at ``path`` (relative to the base: ``Observation``,
        ``Patient/1/*``, ``""``, ``AuditEvent``) that carry a ``_cursor``: the search its link
        holds, as the server understood it (the parameters it used, the same form a first page
        records), followed by any other parameter sent with it, and which page it is.  A link
        that does not open for this caller and path (tampered, another caller's, another
        search's) gives only the other parameters.  None: no ``_cursor`` (record as received)."""
        tokens = [v for k, v in params if k == CURSOR_PARAM]
        if not tokens:
            return None
        rest = [(k, v) for k, v in params if k != CURSOR_PARAM]
        if self.open_link is None or path is None or len(set(tokens)) != 1:
            return Followed(rest, None)
        try:
            resumed = self.open_link(path, tokens[0])
        except FhirError:
            return Followed(rest, None)
        page = _PAGES.get(resumed.position[0], "next") if resumed.position is not None else "first"
        return Followed([*resumed.params, *rest], page)

    def _entry_search(self, path: str | None, query: str) -> tuple[str | None, dict | None]:
        """A Bundle entry's query, with a followed link's search in place of its token."""
        if CURSOR_PARAM not in query:
            return query, None
        f = self.followed(path, parse_qsl(query, keep_blank_values=True))
        if f is None:
            return query, None
        return f.query, {"page": f.page} if f.page else None

    # ---- entry-level reads and failures: written with the request's events -------------------
    def accessed(self, subtype: str, res_type: str | None, entity: str | None, query: str | None,
                 body: bytes | None, status: int = 200) -> None:
        patients = patients_in(body) if res_type != "AuditEvent" else set()
        if res_type == "Patient" and entity and entity.startswith("Patient/"):
            patients.add(entity.split("/")[1])
        extra = None
        if query and subtype.startswith("search"):
            query, extra = self._entry_search(res_type, query)
        self.pending.append(AuditRecord(
            "rest", subtype, ACTIONS.get(subtype, "E"), outcome_for(status), self.request_id, self.who,
            status=status, res_type=res_type, entity=entity, query=query, detail=self._detail(extra),
            patients=patients,
        ))

    def entry_failed(self, method: str, url: str, status: int, code: str | None = None) -> None:
        subtype = {"GET": "read", "HEAD": "read", "POST": "create", "PUT": "update", "PATCH": "patch",
                   "DELETE": "delete"}.get(method, "batch")
        res_type = url.split("?")[0].split("/")[0] or None if url else None
        extra: dict = {"description": f"{method} {status}" + (f" {code}" if code else "")}
        if url and method == "GET" and "?" in url and "_history" not in url.split("?")[0]:
            path, query = url.split("?", 1)
            query, page = self._entry_search(path.strip("/"), query)
            url = f"{path}?{query}" if query else path
            extra.update(page or {})
        self.pending.append(AuditRecord(
            "rest", subtype, ACTIONS.get(subtype, "E"), outcome_for(status), self.request_id, self.who,
            status=status, res_type=res_type, query=url[:2000] if url else None, detail=self._detail(extra),
        ))

    def add(self, rec: AuditRecord) -> None:
        """A custom event: written with the request's events whatever its outcome."""
        self.custom.append(rec)

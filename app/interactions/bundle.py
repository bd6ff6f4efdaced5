"""batch and transaction Bundles at the base URL.

A transaction is one unit of work processed in the spec's order (DELETE, POST, PUT/PATCH, GET),
with every ``fullUrl`` (urn:uuid:, urn:oid:, absolute) and every conditional reference
(``Patient?identifier=...``) resolved before anything is written, and referential integrity
checked once, set-based, at the end. Any failure rolls the whole transaction back. A batch runs
each entry in its own unit of work, so entries succeed or fail alone.
"""

from __future__ import annotations

import re
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from urllib.parse import urlsplit

from app.db import unit_of_work
from app.fhir.bundle import bundle_bytes, entry_bytes
from app.fhir.errors import FhirError, Issue, operation_outcome
from app.fhir.jsonutil import instant
from app.interactions import read as read_ix
from app.interactions import write as write_ix
from app.interactions.common import check_references, find, parse_if_match, validated
from app.interactions.context import ID_RE, TYPE_RE, FhirContext, Result
from app.protect.labels import bundle_label
from app.storage.references import rewrite_strings
from app.storage.repository import Repository, Stored, new_id

ORDER = {"DELETE": 0, "POST": 1, "PUT": 2, "PATCH": 2, "GET": 3, "HEAD": 3}
_COND_REF = re.compile(r"^([A-Z][A-Za-z]+)\?(.+)$")
_DIV_LINK = re.compile(r'((?:href|src)\s*=\s*")([^"]+)(")')


@dataclass
class Entry:
    index: int
    method: str
    url: str
    res_type: str | None = None
    res_id: str | None = None
    version: str | None = None
    query: str | None = None
    full_url: str | None = None
    resource: dict | None = None
    if_match: int | None = None
    if_none_exist: str | None = None
    target_id: str | None = None  # resolved identity for POST/PUT
    existing: bool = False  # POST with ifNoneExist that matched
    result: dict = field(default_factory=dict)
    body: bytes | None = None
    history: bool = False


def _fail(index: int, err: FhirError) -> FhirError:
    prefix = f"Bundle.entry[{index}]"
    expr = [f"{prefix}.resource.{e}" if not e.startswith("Bundle") else e for e in (err.expression or [])] or [prefix]
    out = FhirError(err.status, err.code, f"{prefix}: {err.diagnostics}", expr, err.extra_issues)
    if hasattr(err, "headers"):
        out.headers = err.headers  # type: ignore[attr-defined]
    return out


def _parse_url(e: Entry, ctx: FhirContext) -> None:
    url = e.url
    if url.startswith(ctx.base_url + "/"):
        url = url[len(ctx.base_url) + 1 :]
    parts = urlsplit(url)
    if parts.scheme or parts.netloc:  # an absolute URL not on our base names another server
        raise FhirError(400, "invalid", f"request.url '{e.url[:200]}' is not on this server "
                        f"({ctx.base_url}); use a URL relative to the base.", ["request.url"])
    path = parts.path.strip("/")
    segs = path.split("/") if path else []
    if not segs or not TYPE_RE.match(segs[0]):
        raise FhirError(400, "invalid", f"request.url '{e.url[:200]}' does not name a resource type.", ["request.url"])
    e.res_type = segs[0]
    ctx.check_type(e.res_type)
    if parts.query:
        e.query = parts.query
    if len(segs) >= 2:
        if segs[1] == "_history":
            e.history = True
        else:
            e.res_id = segs[1]
            if not ID_RE.match(e.res_id):
                raise FhirError(400, "invalid", f"'{e.res_id[:80]}' in request.url is not a valid id.", ["request.url"])
    if len(segs) >= 3:
        if segs[2] != "_history" or len(segs) > 4:
            raise FhirError(400, "not-supported", f"request.url '{e.url[:200]}' is not an interaction this server supports in a Bundle.", ["request.url"])
        if len(segs) == 4:
            e.version = segs[3]
        else:
            e.history = True


def _parse_entries(ctx: FhirContext, bundle: dict) -> list[Entry]:
    raw = bundle.get("entry", [])
    if not isinstance(raw, list):
        raise FhirError(400, "structure", "Bundle.entry must be an array.", ["Bundle.entry"])
    if len(raw) > ctx.max_bundle_entries:
        raise FhirError(413, "too-costly", f"The Bundle has {len(raw)} entries; this server accepts at most {ctx.max_bundle_entries}. Split it.")
    entries: list[Entry] = []
    for i, item in enumerate(raw):
        try:
            if not isinstance(item, dict) or not isinstance(item.get("request"), dict):
                raise FhirError(400, "required", "Every entry of a batch or transaction needs a request.", ["request"])
            req = item["request"]
            method = req.get("method")
            url = req.get("url")
            if method not in ORDER or not isinstance(url, str) or not url:
                raise FhirError(400, "invalid", f"request.method must be one of {', '.join(ORDER)} and request.url is required.", ["request"])
            e = Entry(i, method, url, full_url=item.get("fullUrl") if isinstance(item.get("fullUrl"), str) else None)
            _parse_url(e, ctx)
            e.if_match = parse_if_match(req.get("ifMatch"))
            e.if_none_exist = req.get("ifNoneExist")
            if e.if_none_exist is not None and not isinstance(e.if_none_exist, str):
                raise FhirError(400, "invalid", "request.ifNoneExist must be a search query string.",
                                ["request.ifNoneExist"])
            if method in ("POST", "PUT"):
                res = item.get("resource")
                if e.history or e.version:
                    raise FhirError(400, "invalid", f"{method} cannot target a history URL.", ["request.url"])
                if method == "POST" and (e.res_id or e.query):
                    raise FhirError(400, "invalid", "A POST entry's request.url must be just the resource type.", ["request.url"])
                if method == "PUT" and not (e.res_id or e.query):
                    raise FhirError(400, "invalid", "A PUT entry's request.url needs an id or search criteria.", ["request.url"])
                e.resource = validated(ctx, res, e.res_type)
                if method == "PUT" and e.res_id:
                    if "id" not in e.resource or e.resource["id"] != e.res_id:
                        raise FhirError(400, "invalid", f"The resource id must equal the id in request.url ('{e.res_id}').", ["id"])
            elif method == "PATCH":
                res = item.get("resource")
                e.resource = _patch_body(res)
            elif method == "DELETE" and not (e.res_id or e.query):
                raise FhirError(400, "invalid", "A DELETE entry needs an id or search criteria.", ["request.url"])
            entries.append(e)
        except FhirError as err:
            if bundle.get("type") == "batch":
                entries.append(_failed_entry(i, item, err))
            else:
                raise _fail(i, err) from None
    return entries


def _failed_entry(i: int, item: object, err: FhirError) -> Entry:
    e = Entry(i, "INVALID", "")
    e.result = {"status": f"{err.status}", "outcome": err.outcome()}
    return e


def _patch_body(res: object) -> object:
    """PATCH entries carry a Binary with base64 JSON Patch, or (commonly) a Parameters resource;
    we accept Binary(application/json-patch+json)."""
    import base64

    import orjson

    if isinstance(res, dict) and res.get("resourceType") == "Binary" and isinstance(res.get("data"), str):
        try:
            return orjson.loads(base64.b64decode(res["data"]))
        except ValueError:
            raise FhirError(400, "structure", "The Binary of a PATCH entry must hold a base64 JSON Patch document.") from None
    raise FhirError(400, "not-supported", "PATCH entries must carry a Binary with contentType application/json-patch+json.")


# ---- transaction ------------------------------------------------------------------------
def _resolve_identities(ctx: FhirContext, repo: Repository, entries: list[Entry]) -> dict[str, str]:
    """Give each POST/PUT its final id and map fullUrls to Type/id, before any write."""
    mapping: dict[str, str] = {}
    seen: dict[tuple[str, str], int] = {}
    full_urls: dict[str, int] = {}
    conds: dict[str, int] = {}
    for e in entries:
        if e.full_url:  # bdl-7: a fullUrl names one entry (the last would silently win)
            if e.full_url in full_urls:
                raise _fail(e.index, FhirError(400, "duplicate", f"fullUrl '{e.full_url[:200]}' is also the "
                                               f"fullUrl of entry {full_urls[e.full_url]}; each entry needs its own."))
            full_urls[e.full_url] = e.index
        if e.method == "POST":
            if e.if_none_exist:
                matches = find(ctx, repo.conn, e.res_type, e.if_none_exist.lstrip("?").split("?", 1)[-1], letter="c")
                if len(matches) > 1:
                    raise _fail(e.index, FhirError(412, "multiple-matches", f"ifNoneExist matched more than one {e.res_type}."))
                if matches:
                    e.target_id, e.existing = matches[0].res_id, True
            if e.target_id is None:
                e.target_id = new_id()
        elif e.method == "PUT":
            if e.res_id:
                e.target_id = e.res_id
            else:
                body_id = e.resource.get("id")
                try:
                    e.target_id = write_ix.resolve_conditional(ctx, repo.conn, e.res_type, e.query, body_id) or body_id or new_id()
                except FhirError as err:
                    raise _fail(e.index, err) from None
        elif e.method in ("DELETE", "PATCH") and e.res_id:
            e.target_id = e.res_id
        if e.target_id and e.method in ("POST", "PUT", "PATCH", "DELETE"):
            key = (e.res_type, e.target_id)
            if key in seen and not e.existing:
                raise _fail(e.index, FhirError(400, "duplicate", f"{e.res_type}/{e.target_id} is the target of entries {seen[key]} and {e.index}; a transaction may touch a resource once."))
            seen[key] = e.index
        if e.full_url and e.target_id and e.method in ("POST", "PUT"):
            mapping[e.full_url] = f"{e.res_type}/{e.target_id}"
        # A conditional reference with the same criteria as a conditional create/update of this
        # transaction means that entry's resource (as HAPI does): a new patient and its results
        # can be sent together, the results referring to it by NHS number.
        cond = e.if_none_exist if e.method == "POST" else e.query if e.method == "PUT" and not e.res_id else None
        if cond and e.target_id:
            ckey = _cond_key(e.res_type, cond.lstrip("?").split("?", 1)[-1])
            if ckey in conds and not e.existing:
                # Both would find nothing now and create one each: two resources for criteria
                # meant to name one (and every later conditional write on them a 412).
                raise _fail(e.index, FhirError(400, "duplicate", f"entries {conds[ckey]} and {e.index} are "
                                               f"conditional writes of {e.res_type} with the same criteria; "
                                               "a transaction may touch a resource once."))
            conds[ckey] = e.index
            mapping.setdefault(ckey, f"{e.res_type}/{e.target_id}")
    return mapping


def _cond_key(res_type: str, query: str) -> str:
    from urllib.parse import parse_qsl

    return "\x00cond:" + res_type + "?" + repr(sorted(parse_qsl(query, keep_blank_values=True)))


def _rewrite(ctx: FhirContext, repo: Repository, e: Entry, mapping: dict[str, str], cond_cache: dict[str, str]) -> dict:
    def fn(key: str, value: str) -> str | None:
        if key == "reference":
            if value in mapping:
                return mapping[value]
            m = _COND_REF.match(value)
            if m:
                own = mapping.get(_cond_key(m.group(1), m.group(2)))
                if own is not None:
                    return own
                if value not in cond_cache:
                    ctx.check_type(m.group(1))
                    matches = find(ctx, repo.conn, m.group(1), m.group(2), letter="rs")
                    if len(matches) != 1:
                        raise FhirError(
                            412,
                            "multiple-matches" if matches else "not-found",
                            f"The conditional reference '{value[:200]}' matched {len(matches)} resources; it must match exactly one.",
                        )
                    cond_cache[value] = f"{m.group(1)}/{matches[0].res_id}"
                return cond_cache[value]
            if value.startswith(("urn:uuid:", "urn:oid:")):
                # A placeholder that no entry's fullUrl defines would be stored dangling.
                raise FhirError(
                    400,
                    "invalid",
                    f"The reference '{value[:200]}' matches no fullUrl in this transaction.",
                )
            return None
        if key == "div" and mapping and ("urn:" in value or "http" in value):
            return _DIV_LINK.sub(lambda mm: mm.group(1) + mapping.get(mm.group(2), mm.group(2)) + mm.group(3), value)
        return mapping.get(value)

    try:
        return rewrite_strings(e.resource, fn)  # type: ignore[return-value]
    except FhirError as err:
        raise _fail(e.index, err) from None


def _prefetch(repo: Repository, entries: list[Entry]) -> None:
    """Set-based reads before the per-entry writes: the current rows of every PUT, PATCH and
    DELETE target in one query, and (PostgreSQL) the row ids of every resource this transaction
    creates in one more, instead of a round trip or two per entry."""
    repo.prefetch_heads(
        (e.res_type, e.target_id) for e in entries if e.method in ("PUT", "PATCH", "DELETE") and e.target_id
    )
    creates = sum(1 for e in entries if e.method == "POST" and not e.existing)
    creates += sum(1 for e in entries if e.method == "PUT" and repo.head(e.res_type, e.target_id) is None)
    repo.reserve_rids(creates)


def _response(stored: Stored | None, status: int, ctx: FhirContext, with_location: bool) -> dict:
    resp: dict = {"status": {200: "200 OK", 201: "201 Created", 204: "204 No Content"}.get(status, str(status))}
    if stored is not None:
        if with_location:
            resp["location"] = f"{stored.location}"
        resp["etag"] = stored.etag
        resp["lastModified"] = instant(stored.last_updated)
    return resp


def transaction(ctx: FhirContext, bundle: dict, representation: bool) -> Result:
    if ctx.audit is not None:
        ctx.audit.pending.clear()  # GET-entry reads noted by an attempt that was rolled back and retried
    with unit_of_work(ctx.engine, write=True) as conn:
        repo = ctx.repo(conn)
        entries = _parse_entries(ctx, bundle)
        mapping = _resolve_identities(ctx, repo, entries)
        cond_cache: dict[str, str] = {}
        for e in entries:
            if e.method in ("POST", "PUT") and e.resource is not None:
                e.resource = _rewrite(ctx, repo, e, mapping, cond_cache)
        _prefetch(repo, entries)
        written: list[tuple[str, dict]] = []
        stored_by: dict[int, Stored] = {}
        unreadable: set[int] = set()
        deleted: list[Entry] = []
        for e in sorted(entries, key=lambda x: (ORDER[x.method], x.index)):
            try:
                if e.method == "DELETE":
                    if e.res_id is None:
                        repo.flush()  # the search must see this transaction's writes so far
                        matches = find(ctx, conn, e.res_type, e.query or "", letter="d")
                        if len(matches) > 1:
                            raise FhirError(412, "multiple-matches", f"The conditional delete matched more than one {e.res_type}.")
                        e.target_id = matches[0].res_id if matches else None
                    stored = write_ix.delete_in(ctx, repo, e.res_type, e.target_id, e.if_match, check_referrers=False) if e.target_id else None
                    if stored is not None:
                        deleted.append(e)
                    e.result = {"status": "204 No Content"} if stored is None else {"status": "204 No Content", "etag": stored.etag}
                elif e.method == "POST":
                    if e.existing:
                        stored, status = repo.read(e.res_type, e.target_id), 200
                        if write_ix.unreadable_match(ctx, conn, stored):
                            unreadable.add(e.index)  # named in the response, not shown
                    else:
                        stored, status = write_ix.create_in(ctx, repo, e.res_type, e.resource, None, res_id=e.target_id)
                        written.append((f"Bundle.entry[{e.index}]", e.resource))
                    e.result = _response(stored, status, ctx, True)
                    stored_by[e.index] = stored
                elif e.method == "PUT":
                    body = {**e.resource, "id": e.target_id}
                    stored, status = write_ix.update_in(
                        ctx, repo, e.res_type, e.target_id, body, e.if_match, with_content=representation
                    )
                    written.append((f"Bundle.entry[{e.index}]", body))
                    e.result = _response(stored, status, ctx, True)
                    stored_by[e.index] = stored
                elif e.method == "PATCH":
                    if e.res_id is None:
                        repo.flush()  # the search must see this transaction's writes so far
                        matches = find(ctx, conn, e.res_type, e.query or "", letter="u")
                        if len(matches) != 1:
                            raise FhirError(412, "multiple-matches", f"A conditional patch needs exactly one match; {len(matches)} matched.")
                        e.target_id = matches[0].res_id
                    stored, status, body = write_ix.patch_in(ctx, repo, e.res_type, e.target_id, e.resource, e.if_match)
                    written.append((f"Bundle.entry[{e.index}]", body))
                    e.result = _response(stored, status, ctx, True)
                    stored_by[e.index] = stored
                else:
                    repo.flush()
                    e.body, e.result = _get(replace(ctx, engine=_Joined(conn), read_engine=None), e)
                    if ctx.search_timeout_ms > 0 and conn.dialect.name == "postgresql":
                        # the read's SET LOCAL statement_timeout must not bound what follows
                        conn.exec_driver_sql("SET LOCAL statement_timeout TO DEFAULT")
            except FhirError as err:
                raise _fail(e.index, err) from None
        check_references(repo, written)
        for e in deleted:  # after every write: the transaction may have re-pointed the referrers
            try:
                write_ix.check_not_referenced(repo, e.res_type, e.target_id)
            except FhirError as err:
                raise _fail(e.index, err) from None
        repo.flush()
        if ctx.audit is not None:  # one record per entry, committed with the transaction or not at all
            ctx.audit.changed_many(conn, _audit_changes(entries, stored_by))
    out: list[bytes] = []
    contents: list[bytes] = []
    for e in entries:
        content = None
        if e.body is not None:
            content = e.body
        elif representation and e.index in stored_by and stored_by[e.index].content and e.index not in unreadable:
            content = stored_by[e.index].content.encode()
        entry = {"fullUrl": f"{ctx.base_url}/{stored_by[e.index].res_type}/{stored_by[e.index].res_id}"} if e.index in stored_by else {}
        entry["response"] = e.result
        out.append(entry_bytes(entry, content))
        if content is not None:
            contents.append(content)
    return Result(200, bundle_bytes(_envelope("transaction-response", contents), out))


def _envelope(kind: str, contents: list[bytes]) -> dict:
    """A batch/transaction response's envelope: like a search Bundle, it carries the highest
    confidentiality of the resources it returns as its own label (a returned search or history
    Bundle counts by its own label); none when nothing it returns is labelled."""
    envelope: dict = {"resourceType": "Bundle"}
    label = bundle_label(contents)
    if label is not None:
        envelope["meta"] = {"security": [label]}
    envelope["type"] = kind
    return envelope


def _audit_changes(entries: list[Entry], stored_by: dict[int, Stored]) -> list:
    from app.audit.recorder import Change

    out = []
    for e in entries:
        status = int(str(e.result.get("status", "200")).split()[0])
        if e.method == "DELETE":
            etag = e.result.get("etag", "")
            version = int(etag[3:-1]) if etag.startswith('W/"') else None
            out.append(Change("delete", e.res_type, e.target_id or "", version, None, status,
                              None if version else "nothing to delete", e.index))
        elif e.index in stored_by:
            s = stored_by[e.index]
            subtype = {"POST": "create", "PATCH": "patch"}.get(e.method) or ("create" if status == 201 else "update")
            note = "ifNoneExist matched an existing resource; nothing was created" if e.existing else None
            content = s.content or ({**e.resource, "id": s.res_id} if isinstance(e.resource, dict) else None)
            out.append(Change(subtype, s.res_type, s.res_id, s.version, content, status, note, e.index))
    return out


class _Joined:
    """Stands in for the Engine so that a transaction's GET entries (read, vread, search,
    history: each opens its own unit of work) run on the transaction's connection and see its
    uncommitted writes, as the spec's processing order requires."""

    def __init__(self, conn) -> None:
        self._conn = conn
        self.dialect = conn.dialect

    def connect(self) -> _Joined:
        return self

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> bool:
        return False

    def execution_options(self, **_kw) -> _Joined:
        return self

    def begin(self):
        return nullcontext()

    def __getattr__(self, name: str):
        return getattr(self._conn, name)


def _get(ctx: FhirContext, e: Entry) -> tuple[bytes | None, dict]:
    if e.res_id and e.version:
        r = read_ix.vread(ctx, e.res_type, e.res_id, e.version)
    elif e.res_id and not e.history:
        r = read_ix.read(ctx, e.res_type, e.res_id)
    elif e.history:
        from app.interactions.history import history

        r = history(ctx, e.res_type, e.res_id, dict(_qs(e.query)))
    else:
        from app.interactions.search import search_type

        r = search_type(ctx, e.res_type, _qs(e.query), strict=False)
    if ctx.audit is not None:
        subtype = ("vread" if e.version else "read") if e.res_id and not e.history else (
            ("history-instance" if e.res_id else "history-type") if e.history else "search-type")
        entity = f"{e.res_type}/{e.res_id}" + (f"/_history/{e.version}" if e.version else "") if e.res_id else None
        ctx.audit.entry = e.index
        ctx.audit.accessed(subtype, e.res_type, entity, e.query, r.body)
        ctx.audit.entry = None
    resp = {"status": "200 OK"}
    if "ETag" in r.headers:
        resp["etag"] = r.headers["ETag"]
    return r.body, resp


def _qs(query: str | None) -> list[tuple[str, str]]:
    from app.interactions.common import parse_query

    return parse_query(query or "")


# ---- batch ------------------------------------------------------------------------------
def batch(ctx: FhirContext, bundle: dict, representation: bool) -> Result:
    entries = _parse_entries(ctx, bundle)
    out: list[bytes] = []
    contents: list[bytes] = []
    for e in entries:
        content = None
        entry: dict = {}
        if e.method == "INVALID":
            entry["response"] = e.result
            out.append(entry_bytes(entry, None))
            if ctx.audit is not None:
                ctx.audit.entry = e.index
                ctx.audit.entry_failed("INVALID", "", int(e.result.get("status", 400)))
            continue
        if ctx.audit is not None:
            ctx.audit.entry = e.index
        try:
            r = _run_single(ctx, e)
            entry["response"] = {"status": {200: "200 OK", 201: "201 Created", 204: "204 No Content"}.get(r.status, str(r.status))}
            if "Location" in r.headers:
                loc = r.headers["Location"]
                entry["response"]["location"] = loc[len(ctx.base_url) + 1 :] if loc.startswith(ctx.base_url + "/") else loc
                entry["fullUrl"] = ctx.base_url + "/" + "/".join(entry["response"]["location"].split("/")[:2])
            if "ETag" in r.headers:
                entry["response"]["etag"] = r.headers["ETag"]
            if e.method == "GET":
                content = r.body
            elif representation and r.resource:
                content = r.resource
        except FhirError as err:
            entry["response"] = {"status": str(err.status), "outcome": err.outcome()}
            if ctx.audit is not None:
                ctx.audit.entry_failed(e.method, e.url, err.status, err.code)
        except Exception:  # noqa: BLE001 - one entry's failure must not sink the batch
            entry["response"] = {
                "status": "500",
                "outcome": operation_outcome([Issue("exception", "This entry failed with an internal error.")]),
            }
            if ctx.audit is not None:
                ctx.audit.entry_failed(e.method, e.url, 500)
        out.append(entry_bytes(entry, content))
        if content is not None:
            contents.append(content)
    if ctx.audit is not None:
        ctx.audit.entry = None
    return Result(200, bundle_bytes(_envelope("batch-response", contents), out))


def _run_single(ctx: FhirContext, e: Entry) -> Result:
    if e.method == "GET" or e.method == "HEAD":
        body, resp = _get(ctx, e)
        return Result(200, body, {"ETag": resp["etag"]} if "etag" in resp else {})
    if e.method == "POST":
        return write_ix.create(ctx, e.res_type, e.resource, e.if_none_exist)
    if e.method == "PUT":
        if e.res_id:
            return write_ix.update(ctx, e.res_type, e.res_id, e.resource, e.if_match)
        return write_ix.conditional_update(ctx, e.res_type, e.query or "", e.resource, e.if_match)
    if e.method == "PATCH":
        return write_ix.patch(ctx, e.res_type, e.res_id, e.query, e.resource, e.if_match)
    return write_ix.delete(ctx, e.res_type, e.res_id, e.query, e.if_match)


def process(ctx: FhirContext, body: object, representation: bool = False) -> Result:
    if not isinstance(body, dict) or body.get("resourceType") != "Bundle":
        raise FhirError(400, "invalid", "POST to the base URL takes a Bundle of type batch or transaction.")
    kind = body.get("type")
    if ctx.audit is not None and kind in ("batch", "transaction"):
        ctx.audit.bundle_type = kind
    if kind == "transaction":
        from app.identity.retry import retry_identity  # conditional entries that lost a race

        return retry_identity(lambda: transaction(ctx, body, representation))
    if kind == "batch":
        return batch(ctx, body, representation)
    raise FhirError(400, "invalid", f"Bundle.type must be 'batch' or 'transaction' here, not {str(kind)[:40]!r}.", ["Bundle.type"])

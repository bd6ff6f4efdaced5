"""history at instance, type and system level, newest first, with signed keyset cursors.

Its statements run under the same per-statement deadline as searches (``SEARCH_TIMEOUT_MS``,
app/db/deadline.py): a system history's count or a withholding filter can read every version,
and a cancelled statement is a 400 OperationOutcome ``too-costly``, as for a search.
"""

from __future__ import annotations

from datetime import datetime
from urllib.parse import urlencode

from itsdangerous import BadSignature, URLSafeSerializer

from app.auth.permission import (
    guard_history_list,
    guard_read,
    guard_versions,
    history_version_filter,
)
from app.db.deadline import QueryTimeout, statement_deadline
from app.db.engine import read_snapshot
from app.fhir.bundle import bundle_bytes, entry_bytes
from app.fhir.errors import FhirError
from app.fhir.jsonutil import instant, parse_instant
from app.interactions.context import FhirContext, Result
from app.protect.labels import bundle_label


def _serializer(ctx: FhirContext) -> URLSafeSerializer:
    return URLSafeSerializer(ctx.secret_key, salt="history-cursor")


def _page_size(ctx: FhirContext, raw: str | None) -> int:
    if raw is None or raw == "":
        return ctx.default_page_size
    if not raw.isdigit():
        raise FhirError(400, "invalid", f"_count must be a non-negative integer, got {raw[:40]!r}.", ["_count"])
    return min(int(raw), ctx.max_page_size)


def history(ctx: FhirContext, res_type: str | None, res_id: str | None, args: dict[str, str]) -> Result:
    if res_type is not None:
        ctx.check_type(res_type)
    if res_id is not None:
        ctx.check_id(res_id)
    if res_id is None:
        guard_history_list(ctx, res_type)
    count = _page_size(ctx, args.get("_count"))
    since: datetime | None = None
    if args.get("_since"):
        try:
            since = parse_instant(args["_since"])
        except ValueError:
            raise FhirError(400, "invalid", f"_since must be an instant like 2024-01-31T10:00:00Z, got {args['_since'][:40]!r}.", ["_since"]) from None
    before = None
    if args.get("_cursor"):
        try:
            lu, rid, ver = _serializer(ctx).loads(args["_cursor"])
            before = (datetime.fromisoformat(lu), int(rid), int(ver))
        except (BadSignature, ValueError, TypeError):
            raise FhirError(400, "invalid", "The paging cursor is not valid; start again from the first page.", ["_cursor"]) from None
    try:
        with read_snapshot(ctx.read_engine or ctx.engine) as conn, statement_deadline(conn, ctx.search_timeout_ms):
            repo = ctx.repo(conn)
            head = repo.head(res_type, res_id) if res_id is not None else None
            if res_id is not None:
                guard_read(ctx, conn, res_type, res_id, head.rid if head is not None else None)
            if res_id is not None and head is None:
                raise FhirError(404, "not-found", f"{res_type}/{res_id} is not known to this server.")
            hide = history_version_filter(ctx) if res_id is None else None
            rows = repo.history(res_type, res_id, since, before, count + 1, hide)
            if res_id is not None:
                guard_versions(ctx, res_type, res_id, [r.content for r in rows[:count]])
            # No total under withholding: counting would read every version's JSON (the text test).
            total = repo.count_history(res_type, res_id, since) if before is None and count > 0 and hide is None else None
    except QueryTimeout:
        raise FhirError(400, "too-costly", f"The history ran longer than this server allows ({ctx.search_timeout_ms} ms) "
                        "and was stopped; narrow it (_since, a smaller _count, the history of one resource "
                        "type or one resource).") from None
    more = len(rows) > count
    rows = rows[:count]
    path = "/".join(p for p in (res_type, res_id) if p) + ("/_history" if res_type else "_history")
    base_link = f"{ctx.base_url}/{path}"
    keep = {k: v for k, v in (("_since", args.get("_since")), ("_count", str(count))) if v}
    links = [{"relation": "self", "url": _url(base_link, {**keep, **({"_cursor": args["_cursor"]} if args.get("_cursor") else {})})}]
    if more and rows:
        last = rows[-1]
        cursor = _serializer(ctx).dumps([last.last_updated.isoformat(), last.rid, last.version])
        links.append({"relation": "next", "url": _url(base_link, {**keep, "_cursor": cursor})})
    entries = []
    for r in rows:
        full = f"{ctx.base_url}/{r.res_type}/{r.res_id}"
        entry: dict = {"fullUrl": full}
        if r.deleted:
            entry["request"] = {"method": "DELETE", "url": f"{r.res_type}/{r.res_id}"}
            entry["response"] = {"status": "410 Gone", "etag": f'W/"{r.version}"', "lastModified": instant(r.last_updated)}
            entries.append(entry_bytes(entry, None))
            continue
        method = r.method if r.method in ("POST", "PUT", "PATCH") else "PUT"
        url = r.res_type if method == "POST" else f"{r.res_type}/{r.res_id}"
        entry["request"] = {"method": method, "url": url}
        entry["response"] = {
            "status": "201 Created" if r.version == 1 else "200 OK",
            "etag": f'W/"{r.version}"',
            "lastModified": instant(r.last_updated),
        }
        entries.append(entry_bytes(entry, r.content))
    envelope: dict = {"resourceType": "Bundle"}
    label = bundle_label(r.content for r in rows)
    if label is not None:
        envelope["meta"] = {"security": [label]}
    envelope["type"] = "history"
    if total is not None:
        envelope["total"] = total
    envelope["link"] = links
    return Result(200, bundle_bytes(envelope, entries))


def _url(base: str, params: dict[str, str]) -> str:
    return f"{base}?{urlencode(params)}" if params else base

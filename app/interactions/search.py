"""Type-level search: parse -> compile -> keyset page -> searchset Bundle of stored bytes.

Paging is by a signed cursor holding the last ``rid`` of the page, never OFFSET, so page 500 costs
what page 1 costs and results that arrive meanwhile do not shift pages. (Sorting other than by
insertion order, includes and ``_summary``/``_elements`` shaping arrive with the search issue.)
"""

from __future__ import annotations

from urllib.parse import urlencode

from itsdangerous import BadSignature, URLSafeSerializer
from sqlalchemy import and_, func, select

from app.db import unit_of_work
from app.fhir.bundle import bundle_bytes, entry_bytes
from app.fhir.errors import FhirError
from app.interactions.context import FhirContext, Result
from app.search import compile_search, parse
from app.storage.tables import resource_version


def _serializer(ctx: FhirContext) -> URLSafeSerializer:
    return URLSafeSerializer(ctx.secret_key, salt="search-cursor")


def _count(ctx: FhirContext, values: list[str]) -> tuple[int, str | None]:
    if not values:
        return ctx.default_page_size, None
    raw = values[-1]
    if not raw.isdigit():
        raise FhirError(400, "invalid", f"_count must be a non-negative integer, got {raw[:40]!r}.", ["_count"])
    n = int(raw)
    if n > ctx.max_page_size:
        return ctx.max_page_size, f"_count={n} is over this server's maximum; {ctx.max_page_size} used."
    return n, None


def search_type(ctx: FhirContext, res_type: str, params: list[tuple[str, str]], strict: bool = False) -> Result:
    ctx.check_type(res_type)
    cursor = [v for k, v in params if k == "_cursor"]
    params = [(k, v) for k, v in params if k not in ("_cursor", "_format", "_pretty")]
    req = parse(res_type, params, ctx.registry, strict=strict, base_url=ctx.base_url, tz=ctx.tz)
    count, warning = _count(ctx, req.control_values("_count"))
    after = 0
    if cursor:
        try:
            query_key, after = _serializer(ctx).loads(cursor[-1])
        except (BadSignature, ValueError, TypeError):
            raise FhirError(400, "invalid", "The paging cursor is not valid; start again from the first page.", ["_cursor"]) from None
        if query_key != _query_key(res_type, req.params):
            raise FhirError(400, "invalid", "The paging cursor belongs to another search.", ["_cursor"])
    total_mode = (req.control_values("_total") or ["none"])[-1]
    summary = (req.control_values("_summary") or [""])[-1]
    matches = compile_search(req, ctx.registry).subquery()
    with unit_of_work(ctx.engine) as conn:
        total = None
        if total_mode == "accurate" or summary == "count":
            total = conn.execute(select(func.count()).select_from(matches)).scalar_one()
        rows = []
        if summary != "count" and count > 0:
            q = (
                select(matches.c.rid, matches.c.res_id, resource_version.c.content)
                .join(resource_version, and_(resource_version.c.rid == matches.c.rid, resource_version.c.version == matches.c.version))
                .where(matches.c.rid > int(after))
                .order_by(matches.c.rid)
                .limit(count + 1)
            )
            rows = conn.execute(q).all()
    more = len(rows) > count
    rows = rows[:count]
    kept = [*req.params, ("_count", str(count))] + [(k, v) for k, v in req.control if k in ("_total", "_summary")]
    base = f"{ctx.base_url}/{res_type}"
    links = [{"relation": "self", "url": f"{base}?{urlencode(kept + ([('_cursor', cursor[-1])] if cursor else []))}"}]
    if more:
        token = _serializer(ctx).dumps([_query_key(res_type, req.params), rows[-1].rid])
        links.append({"relation": "next", "url": f"{base}?{urlencode([*kept, ('_cursor', token)])}"})
    entries = [
        entry_bytes({"fullUrl": f"{base}/{r.res_id}", "search": {"mode": "match"}}, r.content) for r in rows
    ]
    if warning:
        oo = {"resourceType": "OperationOutcome", "issue": [{"severity": "warning", "code": "processing", "diagnostics": warning}]}
        entries.append(entry_bytes({"search": {"mode": "outcome"}}, _dumps(oo)))
    envelope: dict = {"resourceType": "Bundle", "type": "searchset"}
    if total is not None:
        envelope["total"] = total
    envelope["link"] = links
    return Result(200, bundle_bytes(envelope, entries))


def _query_key(res_type: str, params: list[tuple[str, str]]) -> str:
    return res_type + "?" + urlencode(sorted(params))


def _dumps(obj: dict) -> bytes:
    import orjson

    return orjson.dumps(obj)

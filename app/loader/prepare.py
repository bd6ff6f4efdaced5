"""Turning what is in a file into a transaction Bundle this server will take.

Why each rule exists:

- Entries of types the server does not enable (Synthea's Claim, ExplanationOfBenefit, ...) are
  dropped and counted, because the server would refuse the whole transaction for them.
- ``POST`` entries whose resource carries an ``id`` become ``PUT Type/id``: the ids from the
  source are kept (so references from other files resolve), and loading the same file twice is a
  no-op instead of a second copy (a PUT with identical content makes no new version).
- ``fullUrl`` values are kept, so the core resolves ``urn:uuid:`` references; references to a
  dropped entry's ``urn:uuid:`` are rewritten to ``Type/id`` so they still say what they meant.
- PUT entries are sorted by (type, id): parallel loaders that share Organizations and
  Practitioners then take row locks in the same order and cannot deadlock one another.
- batch, collection, searchset and history Bundles, single resources and NDJSON lines all
  become transactions, so every unit is all-or-nothing and can be retried as a whole. GET/HEAD
  entries are dropped (counted): a load writes, and their answers would go nowhere.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

import orjson

from app.loader.files import RawUnit
from app.storage.references import rewrite_strings

_CONTENT_BUNDLES = ("collection", "searchset", "history")
_REQUEST_BUNDLES = ("transaction", "batch")
_WRITE_METHODS = ("POST", "PUT")
# A "urn:..." JSON string; the second group is the character that ended the match (a backslash
# means an escape sequence, which the quick test does not decode: such an entry is rewritten).
_URN_STRING = re.compile(rb'"(urn:[^"\\]*)(["\\])')


@dataclass
class Prepared:
    """A unit ready for ``transaction()``; ``bundle`` is None when nothing is left to load."""

    source: str
    label: str
    bundle: dict | None
    resources: int = 0  # resources this unit writes
    by_type: Counter = field(default_factory=Counter)
    skipped: Counter = field(default_factory=Counter)  # resource type -> entries dropped
    error: str | None = None  # the unit cannot be loaded at all (bad JSON, not FHIR, ...)


def prepare(unit: RawUnit, enabled: frozenset[str] | set[str]) -> Prepared:
    """Build the transaction for one unit (see the module docstring for the rules)."""
    if unit.kind == "error":
        return Prepared(unit.source, unit.label, None, error=unit.error)
    if unit.kind == "ndjson":
        return _from_resources(unit, list(unit.body), enabled)  # type: ignore[arg-type]
    body = unit.body
    if not isinstance(body, dict) or not isinstance(body.get("resourceType"), str):
        return Prepared(
            unit.source, unit.label, None, error="not a FHIR resource (no resourceType)"
        )
    if body["resourceType"] != "Bundle":
        return _from_resources(unit, [body], enabled)
    kind = body.get("type")
    if kind in _REQUEST_BUNDLES:
        return _from_request_bundle(unit, body, enabled)
    if kind in _CONTENT_BUNDLES:
        entries = body.get("entry") or []
        if not isinstance(entries, list):
            return Prepared(unit.source, unit.label, None, error="Bundle.entry is not an array")
        resources = [e.get("resource") for e in entries if isinstance(e, dict)]
        full_urls = [e.get("fullUrl") for e in entries if isinstance(e, dict)]
        return _from_resources(unit, resources, enabled, full_urls)
    # document, message, *-response: the Bundle is the resource; only enabled if Bundle is.
    if "Bundle" in enabled:
        return _from_resources(unit, [body], enabled)
    return Prepared(unit.source, unit.label, None, skipped=Counter({f"Bundle ({kind})": 1}))


def _entry_for(resource: dict, full_url: str | None) -> dict:
    rtype = resource["resourceType"]
    rid = resource.get("id")
    if isinstance(rid, str) and rid:
        request = {"method": "PUT", "url": f"{rtype}/{rid}"}
    else:
        request = {"method": "POST", "url": rtype}
    entry: dict = {"resource": resource, "request": request}
    if isinstance(full_url, str) and full_url:
        entry["fullUrl"] = full_url
    return entry


def _from_resources(
    unit: RawUnit,
    resources: list,
    enabled: frozenset[str] | set[str],
    full_urls: list | None = None,
) -> Prepared:
    out = Prepared(unit.source, unit.label, None)
    entries: list[dict] = []
    dropped: dict[str, str] = {}
    for i, res in enumerate(resources):
        full_url = full_urls[i] if full_urls else None
        if not isinstance(res, dict) or not isinstance(res.get("resourceType"), str):
            where = f"line {unit.first_line + i}" if unit.first_line else f"entry {i}"
            out.error = f"{where} is not a FHIR resource (no resourceType)"
            return out
        rtype = res["resourceType"]
        if rtype not in enabled:
            out.skipped[rtype] += 1
            _remember_dropped(dropped, res, full_url)
            continue
        entries.append(_entry_for(res, full_url))
    return _finish(out, entries, dropped)


def _from_request_bundle(
    unit: RawUnit, bundle: dict, enabled: frozenset[str] | set[str]
) -> Prepared:
    out = Prepared(unit.source, unit.label, None)
    raw = bundle.get("entry") or []
    if not isinstance(raw, list):
        out.error = "Bundle.entry is not an array"
        return out
    entries: list[dict] = []
    dropped: dict[str, str] = {}
    for item in raw:
        if not isinstance(item, dict):
            entries.append(item)  # let the core explain what is wrong with it
            continue
        res = item.get("resource")
        req = item.get("request") if isinstance(item.get("request"), dict) else {}
        if req.get("method") in ("GET", "HEAD"):
            out.skipped["(read requests: GET/HEAD entries)"] += 1  # a load only writes
            continue
        rtype = res.get("resourceType") if isinstance(res, dict) else None
        if not isinstance(rtype, str):
            url = req.get("url")
            rtype = (
                url.lstrip("/").split("?", 1)[0].split("/", 1)[0] if isinstance(url, str) else None
            )
        if isinstance(rtype, str) and rtype and rtype not in enabled:
            out.skipped[rtype] += 1
            if isinstance(res, dict):
                _remember_dropped(dropped, res, item.get("fullUrl"))
            continue
        method = req.get("method")
        if (
            method == "POST"
            and isinstance(res, dict)
            and res.get("id")
            and not req.get("ifNoneExist")
        ):
            item = {**item, "request": {**req, "method": "PUT", "url": f"{rtype}/{res['id']}"}}
        entries.append(item)
    return _finish(out, entries, dropped)


def _remember_dropped(dropped: dict[str, str], res: dict, full_url: object) -> None:
    rid = res.get("id")
    if isinstance(full_url, str) and full_url.startswith("urn:") and isinstance(rid, str) and rid:
        dropped[full_url] = f"{res['resourceType']}/{rid}"


def _finish(out: Prepared, entries: list[dict], dropped: dict[str, str]) -> Prepared:
    if not entries:
        return out
    if dropped:

        def fn(key: str, value: str) -> str | None:
            return dropped.get(value) if key == "reference" else None

        entries = [
            {**e, "resource": rewrite_strings(e["resource"], fn)}
            if isinstance(e, dict) and isinstance(e.get("resource"), dict) and _mentions(e["resource"], dropped)
            else e
            for e in entries
        ]
    entries = _lock_order(entries)
    for e in entries:
        req = e.get("request") if isinstance(e, dict) else None
        res = e.get("resource") if isinstance(e, dict) else None
        if isinstance(req, dict) and req.get("method") in _WRITE_METHODS and isinstance(res, dict):
            out.resources += 1
            out.by_type[str(res.get("resourceType"))] += 1
    out.bundle = {"resourceType": "Bundle", "type": "transaction", "entry": entries}
    return out


def _mentions(resource: dict, urns: dict[str, str]) -> bool:
    """Whether any of these urn: strings may occur in the resource: a quick scan of its JSON
    (C speed), so that the copying rewrite runs only on the entries that need it (in Synthea
    Bundles none do: the dropped Claims reference the kept resources, never the other way)."""
    try:
        raw = orjson.dumps(resource)
    except (TypeError, orjson.JSONEncodeError):
        return True
    for value, end in _URN_STRING.findall(raw):
        if end != b'"' or value.decode("utf-8", "replace") in urns:
            return True
    return False


def _lock_order(entries: list[dict]) -> list[dict]:
    """PUTs in (type, id) order; everything else keeps its place before them."""

    def key(e: object) -> tuple[int, str]:
        if isinstance(e, dict):
            req = e.get("request")
            if (
                isinstance(req, dict)
                and req.get("method") == "PUT"
                and isinstance(req.get("url"), str)
            ):
                return (1, req["url"])
        return (0, "")

    return sorted(entries, key=key)

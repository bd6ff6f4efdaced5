"""JSON in and out: orjson for speed, FHIR instant formatting, strict body parsing."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson

from app.fhir.errors import FhirError


def loads_body(raw: bytes | str) -> object:
    """Parse a request body; anything but valid JSON is a 400 with a readable reason."""
    if not raw:
        raise FhirError(400, "structure", "The request body is empty; a FHIR JSON resource was expected.")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise FhirError(400, "structure", f"The request body is not valid JSON: {exc}") from None


# Containers (objects and arrays) nested deeper than this are refused before anything recursive
# (validation, indexing, reference rewriting) sees them: deep input must give 400, not a
# RecursionError and a 500. Real resources stay far below (a transaction Bundle adds four).
MAX_JSON_DEPTH = 100


def too_deep(doc: object, limit: int = MAX_JSON_DEPTH) -> bool:
    """True when ``doc`` nests containers deeper than ``limit`` (checked without recursion)."""
    stack = [(doc, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        if isinstance(node, dict):
            children = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        stack.extend((c, depth + 1) for c in children if isinstance(c, (dict, list)))
    return False


def dumps(obj: object) -> bytes:
    return orjson.dumps(obj)


def utcnow() -> datetime:
    """Naive UTC now, truncated to milliseconds so the DB, ETag and JSON agree exactly."""
    now = datetime.now(UTC).replace(tzinfo=None)
    return now.replace(microsecond=(now.microsecond // 1000) * 1000)


def instant(dt: datetime) -> str:
    """A naive-UTC datetime as a FHIR instant: 2024-05-01T10:00:00.123+00:00."""
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}+00:00"


def http_date(dt: datetime) -> str:
    return dt.replace(tzinfo=UTC).strftime("%a, %d %b %Y %H:%M:%S GMT")


def parse_instant(value: str) -> datetime:
    """An instant or dateTime with zone (or a bare date) as naive UTC; ValueError when malformed."""
    v = value.strip().replace(" ", "+")
    if v.endswith("Z"):
        v = v[:-1] + "+00:00"
    if len(v) == 4:
        v += "-01-01"
    elif len(v) == 7:
        v += "-01"
    dt = datetime.fromisoformat(v)
    if dt.tzinfo is not None:
        dt = dt.astimezone(UTC).replace(tzinfo=None)
    return dt

"""Keyset paging: opaque sealed cursors and the "rows after/before this one" predicate.

A cursor holds the sort-key values and ``rid`` of the last (``next``) or first (``previous``)
row of a page, the paging direction, a digest of the query and the caller it was issued to; it
is sealed with the server's secret (AES-GCM, app/fhir/sealed.py: unreadable, since sort keys
can be patient data, and authenticated), so a tampered cursor, one from another query or
another caller is a 400.  No OFFSET anywhere: page 500 is the same index probe plus top-N
as page 1, and rows inserted meanwhile never shift the pages already served.

Order: each key ascending or descending with NULLs (no value) last in both directions, then
``rid`` ascending.  ``previous`` pages run the reversed order and are flipped back.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, false, or_

from app.fhir.errors import FhirError
from app.fhir.sealed import seal, unseal
from app.search.sort import SortKey


@dataclass(frozen=True)
class Cursor:
    direction: str  # "next" | "prev"
    values: tuple[Any, ...]  # one per sort key
    rid: int


def query_digest(path: str, params: list[tuple[str, str]]) -> str:
    """What a cursor is bound to: the search path and its effective (sorted) parameters."""
    text = path + "?" + "&".join(f"{k}={v}" for k, v in sorted(params))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _enc(v: Any) -> Any:
    return v.isoformat() if isinstance(v, datetime) else v


def _dec(v: Any, kind: str) -> Any:
    if v is None:
        return None
    if kind == "datetime":
        return datetime.fromisoformat(v)
    if kind == "float":
        return float(v)
    if not isinstance(v, str):
        raise ValueError("bad key")
    return v


def encode_cursor(secret: str, caller: str, digest: str, cur: Cursor) -> str:
    # Sealed (encrypted), not just signed: the sort-key values may be patient data (app/fhir/sealed.py).
    return seal(secret, "search-cursor-v3",
                {"q": digest, "c": caller, "d": cur.direction, "k": [_enc(v) for v in cur.values], "r": int(cur.rid)})


def decode_cursor(secret: str, caller: str, digest: str, token: str, keys: list[SortKey]) -> Cursor:
    bad = FhirError(400, "invalid", "The paging cursor is not valid; start again from the first page.", ["_cursor"])
    try:
        data = unseal(secret, "search-cursor-v3", token)
    except ValueError:
        raise bad from None
    if not isinstance(data, dict):
        raise bad
    if data.get("q") != digest:
        raise FhirError(400, "invalid", "The paging cursor belongs to another search.", ["_cursor"])
    if data.get("c") != caller:
        raise FhirError(400, "invalid", "The paging cursor was issued to another caller.", ["_cursor"])
    vals = data.get("k")
    if data.get("d") not in ("next", "prev") or not isinstance(vals, list) or len(vals) != len(keys):
        raise bad
    try:
        values = tuple(_dec(v, k.kind) for v, k in zip(vals, keys, strict=True))
        rid = int(data["r"])
    except (ValueError, TypeError, KeyError):
        raise bad from None
    return Cursor(data["d"], values, rid)


def order_by(cols: list[Any], keys: list[SortKey], rid: Any, reverse: bool) -> list[Any]:
    """ORDER BY terms: keys with NULLs last (first when reversed), then rid."""
    out = []
    for col, k in zip(cols, keys, strict=True):
        desc = k.desc != reverse
        term = col.desc() if desc else col.asc()
        out.append(term.nulls_first() if reverse else term.nulls_last())
    out.append(rid.desc() if reverse else rid.asc())
    return out


def after(cols: list[Any], keys: list[SortKey], rid: Any, cur: Cursor) -> ColumnElement[bool]:
    """Rows strictly after ``cur`` in the order (``prev`` cursors: strictly before it).

    Expanded form ``k1 > c1 OR (k1 = c1 AND (k2 > c2 OR ...)) ... OR (all equal AND rid > r)``,
    where "=" on a NULL key is ``IS NULL`` and "after a value" includes NULLs (NULLs sort last);
    nothing non-NULL comes after a NULL.  Built innermost-first.
    """
    reverse = cur.direction == "prev"
    cond: ColumnElement[bool] = rid < cur.rid if reverse else rid > cur.rid
    for col, k, v in reversed(list(zip(cols, keys, cur.values, strict=True))):
        desc = k.desc != reverse
        if v is None:
            # NULLs are last: after a NULL key (forward) come only NULLs; before it (reverse) come
            # all non-NULLs.
            equal = col.is_(None)
            beyond = col.is_not(None) if reverse else false()
        else:
            equal = col == v
            strictly = (col < v) if desc else (col > v)
            beyond = strictly if reverse else or_(strictly, col.is_(None))
        cond = or_(beyond, and_(equal, cond))
    return cond

"""Keyset paging and opaque search links: the whole search and the page position, sealed.

Every link a search Bundle carries (``self``, ``next``, ``previous``) is ``<path>?_cursor=<token>``
and nothing else (docs/decisions/0015-opaque-search-links.md).  The token holds the search as
the server understood it (the parameters it used, in the order it used them, with ``_count``,
``_sort``, includes, ``_total``, ``_summary``, ``_elements``; unknown parameters dropped in
lenient mode are not there), the caller it was issued to, the search path relative to the base
(``Observation``, ``Patient/123/*``, ``""`` for a system search) and, for ``next``/``previous``,
the page position: the sort-key values and ``rid`` of the last (``next``) or first
(``previous``) row of a page and the paging direction.  A ``self`` token has no position (first
page) or is the one that fetched the page.  It is compressed (raw deflate, from 512 bytes and
when that is shorter) and sealed with the server's secret (AES-GCM, app/fhir/sealed.py): unreadable, since
search values and sort keys are patient data, and authenticated, so a tampered token, one from
another path or another caller is a 400.  No OFFSET anywhere: page 500 is the same index probe
plus top-N as page 1, and rows inserted meanwhile never shift the pages already served.

Order: each key ascending or descending with NULLs (no value) last in both directions, then
``rid`` ascending.  ``previous`` pages run the reversed order and are flipped back.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import ColumnElement, and_, false, or_

from app.fhir.errors import FhirError
from app.fhir.sealed import seal_bytes, unseal_bytes
from app.search.sort import SortKey

# The parameter of every generated search link: its only one.
CURSOR_PARAM = "_cursor"
_PURPOSE = "search-link-v4"
# Longest link URL generated (scheme, host and path included). Common request-line limits are
# 8 KB (nginx large_client_header_buffers 8k, Apache LimitRequestLine 8190, gunicorn
# --limit-request-line at most 8190); the margin leaves room for "GET " and " HTTP/1.1".
MAX_LINK_CHARS = 8000
_PLAIN, _DEFLATED = b"\x00", b"\x01"
_MAX_STATE_BYTES = 1 << 20  # decompression cap (tokens are authenticated; this is belt and braces)
# Smaller states are sealed as they are: deflate saves a few dozen characters of a short link
# and its set-up (~17 us) was most of the cost of sealing one.
_DEFLATE_FROM = 512


@dataclass(frozen=True)
class Cursor:
    direction: str  # "next" | "prev"
    values: tuple[Any, ...]  # one per sort key
    rid: int


@dataclass(frozen=True)
class Resumed:
    """A search link followed: the search it carries and, for next/previous, its page position."""

    token: str
    params: list[tuple[str, str]]
    position: tuple[str, list[Any], int] | None  # (direction, raw key values, rid); decoded by keys


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


def seal_search(secret: str, caller: str, path: str, params: list[tuple[str, str]], cur: Cursor | None) -> str:
    """The opaque token of a search link: ``params`` (what the search used) at ``path`` for
    ``caller``, at page position ``cur`` (None: the first page)."""
    data: dict[str, Any] = {"c": caller, "p": path, "q": [[k, v] for k, v in params]}
    if cur is not None:
        data.update(d=cur.direction, k=[_enc(v) for v in cur.values], r=int(cur.rid))
    raw = orjson.dumps(data)
    if len(raw) < _DEFLATE_FROM:
        return seal_bytes(secret, _PURPOSE, _PLAIN + raw)
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    packed = comp.compress(raw) + comp.flush()
    plain = _DEFLATED + packed if len(packed) < len(raw) else _PLAIN + raw
    return seal_bytes(secret, _PURPOSE, plain)


def open_search(secret: str, caller: str, path: str, token: str) -> Resumed:
    """The search sealed in ``token``; 400 when it was tampered with or made for another caller
    or another search path."""
    bad = FhirError(400, "invalid", "The paging link is not valid; start again from the first page.", [CURSOR_PARAM])
    try:
        plain = unseal_bytes(secret, _PURPOSE, token)
        if plain[:1] == _DEFLATED:
            dec = zlib.decompressobj(-15)
            raw = dec.decompress(plain[1:], _MAX_STATE_BYTES)
            if dec.unconsumed_tail or not dec.eof:
                raise ValueError("state too large or truncated")
        elif plain[:1] == _PLAIN:
            raw = plain[1:]
        else:
            raise ValueError("unknown packing")
        data = orjson.loads(raw)
    except (ValueError, zlib.error):
        raise bad from None
    if not isinstance(data, dict):
        raise bad
    if data.get("c") != caller:
        raise FhirError(400, "invalid", "The paging link was issued to another caller.", [CURSOR_PARAM])
    if data.get("p") != path:
        raise FhirError(400, "invalid", "The paging link belongs to another search.", [CURSOR_PARAM])
    q = data.get("q")
    if not isinstance(q, list) or not all(
            isinstance(kv, list) and len(kv) == 2 and all(isinstance(x, str) for x in kv) for kv in q):
        raise bad
    position = None
    if "d" in data:
        vals, rid = data.get("k"), data.get("r")
        if data["d"] not in ("next", "prev") or not isinstance(vals, list) or not isinstance(rid, int):
            raise bad
        position = (data["d"], vals, rid)
    return Resumed(token, [(k, v) for k, v in q], position)


def position(resumed: Resumed | None, keys: list[SortKey]) -> Cursor | None:
    """The page position of a followed link, its key values decoded for ``keys`` (the search's
    sort keys, which the link's own parameters determine)."""
    if resumed is None or resumed.position is None:
        return None
    direction, vals, rid = resumed.position
    bad = FhirError(400, "invalid", "The paging link is not valid; start again from the first page.", [CURSOR_PARAM])
    if len(vals) != len(keys):
        raise bad
    try:
        values = tuple(_dec(v, k.kind) for v, k in zip(vals, keys, strict=True))
    except (ValueError, TypeError):
        raise bad from None
    return Cursor(direction, values, rid)


def link_url(path: str, token: str) -> str:
    """``<path>?_cursor=<token>``; a 400 ``too-long`` rather than a link that proxies and servers
    would refuse (MAX_LINK_CHARS)."""
    url = f"{path}?{CURSOR_PARAM}={token}"
    if len(url) > MAX_LINK_CHARS:
        raise FhirError(400, "too-long", f"This search is too long to be carried by a paging link ({len(url)} "
                        f"characters once sealed; at most {MAX_LINK_CHARS}). Shorten it: fewer or "
                        "shorter parameter values, fewer _include/_revinclude.")
    return url


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

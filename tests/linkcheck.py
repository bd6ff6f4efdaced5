"""The check that a search Bundle's link is opaque (decision 0015), shared by the search and the
AuditEvent link tests so that both hold links to the same rule."""

from __future__ import annotations

import base64
from urllib.parse import parse_qs, unquote, urlsplit

from app.search.paging import MAX_LINK_CHARS


def assert_opaque_link(url: str, prefix: str, secrets: tuple[str, ...] | list[str]) -> None:
    """``url`` starts with ``prefix``, carries only ``_cursor``, and shows none of ``secrets``
    either in clear or inside the (sealed) cursor."""
    query = parse_qs(urlsplit(url).query)
    assert set(query) == {"_cursor"} and len(query["_cursor"]) == 1, url
    assert url.startswith(prefix), url
    token = query["_cursor"][0]
    clear = unquote(url.replace(token, "")).lower()
    sealed = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    for secret in secrets:
        assert secret.lower() not in clear and secret.encode() not in sealed, (secret, url)
    assert len(url) <= MAX_LINK_CHARS

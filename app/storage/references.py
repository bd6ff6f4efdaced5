"""Finding and rewriting references inside resource JSON.

A reference is any object with a string ``reference`` member (Reference.reference); the walk is
generic so it covers every place a Reference can appear, extensions included.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator

_REL = re.compile(r"^([A-Z][A-Za-z]+)/([A-Za-z0-9\-\.]{1,64})(?:/_history/[A-Za-z0-9\-\.]{1,64})?$")


def iter_references(node: object, path: str = "") -> Iterator[tuple[str, str]]:
    """Yield (path, reference string) for every Reference.reference in the resource."""
    if isinstance(node, dict):
        ref = node.get("reference")
        if isinstance(ref, str):
            yield path, ref
        for key, value in node.items():
            if key == "contained" or key == "reference":
                continue
            if isinstance(value, (dict, list)):
                yield from iter_references(value, f"{path}.{key}" if path else key)
    elif isinstance(node, list):
        for i, item in enumerate(node):
            yield from iter_references(item, f"{path}[{i}]")


def under_base(url: str, base_url: str | None) -> bool:
    """``url`` lies under our FHIR base (as a path: ``.../fhir/`` is not under ``.../fh``)."""
    return bool(base_url) and url.startswith(base_url.rstrip("/") + "/")


def _local(ref: str, base_url: str | None) -> str:
    """``ref`` relative to our base when it is an absolute URL on it; else as it is."""
    return ref[len(base_url.rstrip("/")) + 1 :] if under_base(ref, base_url) else ref


def parse_reference(ref: str, base_url: str | None) -> tuple[str, str] | None:
    """``Type/id`` (relative, or absolute on our own base) as (type, id); None for anything else."""
    m = _REL.match(_local(ref, base_url))
    if not m:
        return None
    return m.group(1), m.group(2)


def malformed_local(ref: str, base_url: str | None, enabled: frozenset[str] | set[str]) -> bool:
    """A reference that :func:`parse_reference` refused yet points into this server: relative
    (or on our base) and starting with an enabled type or a dot segment (``Patient/``,
    ``Patient/x' OR 1=1``, ``../Patient/1``).  It can never resolve, so integrity (decision 0003)
    would silently skip it; the write is refused instead.  Other servers' URLs, ``urn:``,
    ``#contained`` and conditional references (``Patient?identifier=...``) are not this."""
    if not ref or ref.startswith(("#", "urn:")):
        return False
    if under_base(ref, base_url):
        ref = _local(ref, base_url)
    elif "://" in ref:  # another server's URL
        return False
    head = ref.split("/", 1)[0]
    return "/" in ref and (head in enabled or head in ("", ".", ".."))


def rewrite_strings(node: object, fn: Callable[[str, str], str | None], key: str = "") -> object:
    """Return ``node`` with each string value ``s`` under member ``key`` replaced by fn(key, s)
    when that is not None. Used for urn:uuid and conditional-reference resolution."""
    if isinstance(node, dict):
        return {k: rewrite_strings(v, fn, k) for k, v in node.items()}
    if isinstance(node, list):
        return [rewrite_strings(v, fn, key) for v in node]
    if isinstance(node, str):
        new = fn(key, node)
        return node if new is None else new
    return node

"""Bundle builders that splice stored resource bytes instead of re-serialising them."""

from __future__ import annotations

import orjson


def entry_bytes(entry: dict, resource_json: bytes | str | None) -> bytes:
    """An entry object with the stored resource bytes spliced in as ``resource``."""
    head = orjson.dumps(entry)
    if resource_json is None:
        return head
    if isinstance(resource_json, str):
        resource_json = resource_json.encode()
    if head == b"{}":
        return b'{"resource":' + resource_json + b"}"
    return head[:-1] + b',"resource":' + resource_json + b"}"


def bundle_bytes(envelope: dict, entries: list[bytes]) -> bytes:
    """The Bundle: ``envelope`` (without ``entry``) plus pre-serialised entries."""
    head = orjson.dumps(envelope)
    if not entries:
        return head
    return head[:-1] + b',"entry":[' + b",".join(entries) + b"]}"

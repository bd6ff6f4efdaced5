"""Sealed tokens: small JSON values the server hands out and takes back, encrypted and authenticated.

Paging cursors carry the sort-key values of a row (a family name, a birth date, an identifier
when sorting by one), and links travel in URLs, proxy logs and browser histories. A signed token
(itsdangerous) only stops tampering; its payload is base64 anyone can read. AES-GCM with a key
derived from ``SECRET_KEY`` (HKDF-SHA256, one key per purpose) both hides and authenticates it:
the URL the server generates holds nothing but an opaque string.
"""

from __future__ import annotations

import base64
import os
from functools import lru_cache

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

_NONCE = 12


@lru_cache(maxsize=16)
def _aead(secret: str, purpose: str) -> AESGCM:
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=f"results-repo/{purpose}".encode()).derive(
        secret.encode()
    )
    return AESGCM(key)


def seal(secret: str, purpose: str, value: object) -> str:
    """``value`` (JSON-serialisable) as an opaque URL-safe string."""
    return seal_bytes(secret, purpose, orjson.dumps(value))


def unseal(secret: str, purpose: str, token: str) -> object:
    """The value sealed in ``token``; ValueError when it was not made here for ``purpose``."""
    return orjson.loads(unseal_bytes(secret, purpose, token))


def seal_bytes(secret: str, purpose: str, plain: bytes) -> str:
    """``plain`` as an opaque URL-safe string (callers that compress first use this one)."""
    nonce = os.urandom(_NONCE)
    blob = nonce + _aead(secret, purpose).encrypt(nonce, plain, purpose.encode())
    return base64.urlsafe_b64encode(blob).rstrip(b"=").decode()


def unseal_bytes(secret: str, purpose: str, token: str) -> bytes:
    """The bytes sealed in ``token``; ValueError when it was not made here for ``purpose``."""
    try:
        blob = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (ValueError, TypeError):
        raise ValueError("not a sealed token") from None
    if len(blob) <= _NONCE:
        raise ValueError("not a sealed token")
    try:
        return _aead(secret, purpose).decrypt(blob[:_NONCE], blob[_NONCE:], purpose.encode())
    except InvalidTag:
        raise ValueError("not a sealed token") from None

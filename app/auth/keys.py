"""The server's signing key (for ``id_token``) and its public JWKS.

Production takes the key from the environment: ``SIGNING_KEY_PEM`` (the PEM text) or
``SIGNING_KEY_FILE`` (a path to a PEM file), an RSA private key; without one the app refuses to
start. Development generates a key once into the instance folder (``signing-key.pem``, mode 0600).
"""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path

from joserfc.jwk import RSAKey

log = logging.getLogger("results_repo.auth")

ID_TOKEN_ALG = "RS256"


class SigningKeyMissing(RuntimeError):
    pass


def load_signing_key(config: dict, instance_path: str, production: bool) -> RSAKey:
    pem = config.get("SIGNING_KEY_PEM")
    path = config.get("SIGNING_KEY_FILE")
    if pem:
        return _import(pem.encode() if isinstance(pem, str) else pem)
    if path:
        return _import(Path(path).read_bytes())
    if production:
        raise SigningKeyMissing(
            "SIGNING_KEY_PEM or SIGNING_KEY_FILE (an RSA private key in PEM) must be set for production."
        )
    dev = Path(instance_path) / "signing-key.pem"
    if not dev.exists():
        dev.parent.mkdir(parents=True, exist_ok=True)
        key = RSAKey.generate_key(2048, private=True)
        tmp = dev.with_name(f".signing-key.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(key.as_pem(private=True))
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, dev)  # atomic: two processes starting at once keep the same key
            log.warning("Generated a development signing key at %s (set SIGNING_KEY_FILE in production).", dev)
        except FileExistsError:
            pass
        finally:
            tmp.unlink(missing_ok=True)
    return _import(dev.read_bytes())


def _import(pem: bytes) -> RSAKey:
    key = RSAKey.import_key(pem)
    if not key.is_private:
        raise SigningKeyMissing("The signing key must be an RSA *private* key.")
    key.ensure_kid()
    return key


def public_jwks(key: RSAKey) -> dict:
    jwk = key.as_dict(private=False)
    jwk.update({"use": "sig", "alg": ID_TOKEN_ALG, "kid": key.kid})
    return {"keys": [jwk]}

"""Configuration checks at start-up: limits that make sense everywhere, keys that are real in production.

Production is ``RESULTS_REPO_ENV=production`` (the README's gunicorn recipe sets it). There the
server refuses to start with a missing, known-default or short ``SECRET_KEY`` (it signs paging
cursors and login sessions: a guessable one lets anyone forge them) and with a weak or
development signing key (``SIGNING_KEY_PEM``/``SIGNING_KEY_FILE``; a missing one is already
refused by app.auth.keys). Development, the demo (``results-repo run --demo``) and the tests keep
working without any of it: a random per-process ``SECRET_KEY`` and a generated signing key in
the instance folder.
"""

from __future__ import annotations

from pathlib import Path

from flask import Flask

from app.db.engine import PLAN_CACHE_MODES
from app.fhir.jsonutil import MAX_JSON_DEPTH

MIN_SECRET_KEY_LENGTH = 32
MIN_RSA_BITS = 2048
# Values that have appeared in this project's code, docs and tests, and the usual placeholders.
KNOWN_DEFAULT_SECRETS = frozenset({
    "test-secret-key-not-for-production", "test-secret", "secret", "secret-key", "dev", "development",
    "changeme", "change-me", "change_me", "please-change-me", "replace-me", "your-secret-key", "k",
})


class ConfigurationRefused(RuntimeError):
    """The configuration is unsafe for where it runs; the message says what to set."""


def check_limits(app: Flask) -> None:
    cfg = app.config
    depth = int(cfg.get("MAX_JSON_DEPTH", MAX_JSON_DEPTH))
    if not 1 <= depth <= MAX_JSON_DEPTH:
        raise ConfigurationRefused(f"MAX_JSON_DEPTH must be between 1 and {MAX_JSON_DEPTH} (the validator's own cap).")
    for key in ("MAX_CONTENT_LENGTH", "MAX_BUNDLE_ENTRIES"):
        if cfg.get(key) is not None and int(cfg[key]) < 1:
            raise ConfigurationRefused(f"{key} must be a positive number.")
    for key in ("API_RATE_LIMIT_PER_MINUTE", "API_RATE_LIMIT_BURST", "TOKEN_RATE_LIMIT_PER_MINUTE",
                "TOKEN_RATE_LIMIT_BURST", "SEARCH_TIMEOUT_MS", "HSTS_MAX_AGE"):
        if int(cfg.get(key, 0) or 0) < 0:
            raise ConfigurationRefused(f"{key} must be 0 (off) or a positive number.")
    if cfg.get("SEARCH_PLAN_CACHE_MODE", "auto") not in PLAN_CACHE_MODES:
        raise ConfigurationRefused(f"SEARCH_PLAN_CACHE_MODE must be one of {', '.join(PLAN_CACHE_MODES)}.")


def secret_key_problem(value: object) -> str | None:
    if not value or not isinstance(value, str):
        return "SECRET_KEY is not set"
    if value.strip().lower() in KNOWN_DEFAULT_SECRETS:
        return "SECRET_KEY is a well-known default value"
    if len(value) < MIN_SECRET_KEY_LENGTH:
        return f"SECRET_KEY is shorter than {MIN_SECRET_KEY_LENGTH} characters"
    if len(set(value)) < 8:
        return "SECRET_KEY has fewer than 8 distinct characters"
    return None


def check_production(app: Flask, secret_from_config: object) -> None:
    """Refuse unsafe keys; ``secret_from_config`` is the SECRET_KEY as configured (before any
    development fallback filled it in)."""
    problem = secret_key_problem(secret_from_config)
    if problem:
        raise ConfigurationRefused(
            f"{problem}: refused with RESULTS_REPO_ENV=production. Set SECRET_KEY to a random value of at "
            f"least {MIN_SECRET_KEY_LENGTH} characters (e.g. python -c 'import secrets; print(secrets.token_hex(32))')."
        )
    smart = app.extensions.get("smart_auth")
    key = getattr(smart, "signing_key", None)
    if key is not None:
        n = key.as_dict(private=False).get("n", "")
        bits = (len(n) * 6) // 8 * 8  # base64url without padding: 6 bits a character
        if bits < MIN_RSA_BITS - 8:
            raise ConfigurationRefused(f"The signing key has about {bits} bits; production needs RSA {MIN_RSA_BITS} or more.")
    key_file = app.config.get("SIGNING_KEY_FILE")
    if key_file and not app.config.get("SIGNING_KEY_PEM"):
        if Path(key_file).resolve() == (Path(app.instance_path) / "signing-key.pem").resolve():
            raise ConfigurationRefused(
                "SIGNING_KEY_FILE points at the development key the server generated in its instance folder; "
                "production needs a key made and kept for it (see docs/security.md)."
            )

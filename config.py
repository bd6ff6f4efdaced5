"""Configuration layers: these classes, then the environment, then a test dict.

Nothing here reads a secret from source: ``SECRET_KEY`` and ``DATABASE_URL`` come from the
environment (or the test dict).
"""

from __future__ import annotations

import os

RESULTS_RESOURCE_TYPES = [
    "Patient",
    "Observation",
    "DiagnosticReport",
    "ImagingStudy",
    "Specimen",
    "ServiceRequest",
    "Encounter",
    "Practitioner",
    "PractitionerRole",
    "Organization",
    "Endpoint",
    "Media",
    "DocumentReference",
    "Group",
    "Provenance",
]


class Config:
    # Flask / signing
    SECRET_KEY: str | None = None
    # SQLAlchemy URL; None means "SQLite file in the instance folder".
    DATABASE_URL: str | None = None
    # The FHIR base URL as callers see it (e.g. https://results.example.nhs.uk/fhir).
    # None means "derive from the request": fine for a laptop, wrong behind a proxy.
    PUBLIC_BASE_URL: str | None = None
    # Resource types the server accepts; others get 404 not-supported.
    ENABLED_RESOURCE_TYPES: list[str] = RESULTS_RESOURCE_TYPES
    # Request body cap (bytes) -> 413.
    MAX_CONTENT_LENGTH: int = 32 * 1024 * 1024
    # Largest batch/transaction Bundle accepted (entries) -> 413.
    MAX_BUNDLE_ENTRIES: int = 1000
    # JSON bodies nested deeper than this (objects/arrays) -> 400; at most 100, the validator's own cap.
    MAX_JSON_DEPTH: int = 100
    # Rate limits per client, per worker process (0 = off); see docs/security.md.
    API_RATE_LIMIT_PER_MINUTE: int = 6000
    API_RATE_LIMIT_BURST: int = 600
    TOKEN_RATE_LIMIT_PER_MINUTE: int = 120
    TOKEN_RATE_LIMIT_BURST: int = 30
    # Each search statement may run this long (ms) before it is cancelled -> 400 too-costly (0 = off).
    SEARCH_TIMEOUT_MS: int = 15000
    # PostgreSQL plan_cache_mode of the search sessions: auto (PostgreSQL's choice between a plan
    # per execution and one generic plan), force_custom_plan, force_generic_plan (decision 0008).
    SEARCH_PLAN_CACHE_MODE: str = "auto"
    # Strict-Transport-Security max-age when served over https (0 = no HSTS header).
    HSTS_MAX_AGE: int = 31536000
    # Zone used for zone-less dateTimes.
    SERVER_TIMEZONE: str = "Europe/London"
    # History and search paging.
    DEFAULT_PAGE_SIZE: int = 50
    MAX_PAGE_SIZE: int = 1000
    # Emit SQL to the log (operators' debug switch).
    SQL_ECHO: bool = False
    # Let searches show their SQL (``_explain=true``: an OperationOutcome entry); never on in production.
    SEARCH_DEBUG_SQL: bool = False
    # Every FHIR request needs a SMART access token (metadata and .well-known stay open).
    # False is an explicit open demo (``results-repo run --open``), refused in production.
    AUTH_REQUIRED: bool = True
    # Seconds a worker process may reuse a validated access token before looking it up again
    # (0 = look up every request). Revocation is immediate regardless: on PostgreSQL every
    # process is notified (app/auth/invalidation.py); on SQLite tokens are not cached.
    TOKEN_CACHE_SECONDS: float = 60.0
    # Record an AuditEvent for every FHIR and token request (app/audit); off only to measure
    # what auditing costs (AUDIT_ENABLED=false in bench/search_bench.py's environment).
    AUDIT_ENABLED: bool = True
    # PostgreSQL: commit each read's audit record synchronously (wait for its WAL flush, ~3 ms
    # here) instead of asynchronously (docs/decisions/0010-audit-trail.md).
    AUDIT_SYNC_READS: bool = False
    # Sensitive results (docs/security.md): labels withheld from tokens without
    # clearance (R, V = v3-Confidentiality; other bare codes = v3-ActCode; or system|code);
    # an empty list switches withholding off.
    SENSITIVE_LABELS: list[str] = ["R", "V", "HIV", "STD", "ETH", "PSY", "SDV", "SEX"]
    # Labels added on arrival: {"system|code": ["HIV", "R"]}, and/or a JSON file of that mapping.
    SENSITIVE_CODES: dict | None = None
    SENSITIVE_CODES_FILE: str | None = None
    # Seconds a client's/user's clearance may be cached per worker (0 = read it on every
    # request); a change is seen at once in every process, as for tokens.
    CLEARANCE_CACHE_SECONDS: float = 60


class DevelopmentConfig(Config):
    pass


class TestingConfig(Config):
    TESTING = True
    SECRET_KEY = "test-secret-key-not-for-production"


class ProductionConfig(Config):
    # Production runs `results-repo worker` processes for bulk export (app/bulk/worker.py).
    BULK_INPROCESS_WORKER = False


_ENV_KEYS = {
    "SECRET_KEY": str,
    "SIGNING_KEY_PEM": str,  # SMART: RSA private key (PEM) signing id_tokens; or
    "SIGNING_KEY_FILE": str,  # ... a path to it (required in production)
    "DATABASE_URL": str,
    "PUBLIC_BASE_URL": str,
    "MAX_CONTENT_LENGTH": int,
    "MAX_BUNDLE_ENTRIES": int,
    "MAX_JSON_DEPTH": int,
    "API_RATE_LIMIT_PER_MINUTE": int,
    "API_RATE_LIMIT_BURST": int,
    "TOKEN_RATE_LIMIT_PER_MINUTE": int,
    "TOKEN_RATE_LIMIT_BURST": int,
    "SEARCH_TIMEOUT_MS": int,
    "SEARCH_PLAN_CACHE_MODE": str,
    "HSTS_MAX_AGE": int,
    "SERVER_TIMEZONE": str,
    "DEFAULT_PAGE_SIZE": int,
    "MAX_PAGE_SIZE": int,
    "SQL_ECHO": lambda v: v.lower() in ("1", "true", "yes", "on"),
    "SEARCH_DEBUG_SQL": lambda v: v.lower() in ("1", "true", "yes", "on"),
    "AUTH_REQUIRED": lambda v: v.lower() not in ("0", "false", "no", "off"),
    "TOKEN_CACHE_SECONDS": float,
    "AUDIT_ENABLED": lambda v: v.lower() not in ("0", "false", "no", "off"),
    "AUDIT_SYNC_READS": lambda v: v.lower() in ("1", "true", "yes", "on"),
    "SENSITIVE_LABELS": lambda v: [t for t in v.replace(",", " ").split() if t and t != "-"],
    "SENSITIVE_CODES_FILE": str,
    "CLEARANCE_CACHE_SECONDS": float,
    "ENABLED_RESOURCE_TYPES": lambda v: [t.strip() for t in v.split(",") if t.strip()],
    # Bulk export (defaults in app/bulk/settings.py)
    "BULK_EXPORT_DIR": str,
    "BULK_FILE_MAX_BYTES": int,
    "BULK_RETRY_AFTER": int,
    "BULK_MAX_JOBS_PER_CLIENT": int,
    "BULK_FILE_TTL": int,
    "BULK_INPROCESS_WORKER": lambda v: v.lower() in ("1", "true", "yes", "on"),
    "BULK_WORKER_POLL": float,
    "BULK_MIN_POLL_INTERVAL": float,
}


def from_environment(environ: os._Environ[str] | dict[str, str] | None = None) -> dict:
    """Settings given in the environment (``RESULTS_REPO_`` prefix optional), typed."""
    environ = os.environ if environ is None else environ
    out: dict = {}
    for key, conv in _ENV_KEYS.items():
        for name in (f"RESULTS_REPO_{key}", key):
            if name in environ and environ[name] != "":
                out[key] = conv(environ[name])
                break
    return out

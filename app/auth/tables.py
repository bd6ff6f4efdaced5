"""The authorization server's tables (on the shared ``metadata``; migration 0002_auth).

- ``auth_client``: registered apps and backend services (redirect URIs, allowed scope, how the
  client authenticates: ``none`` + PKCE, a client secret (stored as a scrypt hash), or
  ``private_key_jwt`` with a JWKS held by value or fetched from a URL).
- ``auth_user``: people who log in (practitioners and patients), each linked to a ``fhirUser``
  reference; passwords are stored as scrypt hashes. ``auth_login_failure`` holds recent failed
  attempts, which drive the lockout.
- ``auth_code``: authorization codes (single use, 60 s), ``auth_launch``: EHR launch contexts
  (single use, short-lived), ``auth_token``: access and refresh tokens. Codes, launch values and
  tokens are stored as the SHA-256 hash of the value only, never the value itself.
- ``auth_jti``: client-assertion ``jti`` values seen, kept until the assertion expires, so a
  replayed assertion is refused.

Datetimes are naive UTC, like the rest of the schema.
"""

from __future__ import annotations

from sqlalchemy import Boolean, Column, DateTime, Index, String, Table, Text

from app.storage.tables import RID, metadata

auth_client = Table(
    "auth_client",
    metadata,
    Column("client_id", String(255), primary_key=True),
    Column("kind", String(16), nullable=False),  # app | backend
    Column("auth_method", String(32), nullable=False),  # none | client_secret_basic | private_key_jwt
    Column("redirect_uris", Text, nullable=False),  # JSON list
    Column("scope", Text, nullable=False),
    Column("secret_hash", Text, nullable=True),
    Column("jwks", Text, nullable=True),  # JSON Web Key Set, by value
    Column("jwks_uri", String(1024), nullable=True),  # ... or by URL
    Column("name", String(255), nullable=True),
    Column("created_at", DateTime(timezone=False), nullable=False),
)

auth_user = Table(
    "auth_user",
    metadata,
    Column("username", String(128), primary_key=True),
    Column("fhir_user", String(140), nullable=False),  # Practitioner/ID | Patient/ID
    Column("password_hash", Text, nullable=False),
    Column("created_at", DateTime(timezone=False), nullable=False),
)

auth_login_failure = Table(
    "auth_login_failure",
    metadata,
    Column("id", RID, primary_key=True, autoincrement=True),
    Column("username", String(128), nullable=False),
    Column("failed_at", DateTime(timezone=False), nullable=False),
    Index("ix_auth_login_failure_user", "username", "failed_at"),
)

auth_code = Table(
    "auth_code",
    metadata,
    Column("code_hash", String(64), primary_key=True),
    Column("client_id", String(255), nullable=False),
    Column("redirect_uri", String(1024), nullable=False),
    Column("scope", Text, nullable=False),
    Column("username", String(128), nullable=True),
    Column("fhir_user", String(140), nullable=True),
    Column("patient", String(64), nullable=True),
    Column("encounter", String(64), nullable=True),
    Column("need_patient_banner", Boolean, nullable=False),
    Column("code_challenge", String(128), nullable=False),
    Column("nonce", String(255), nullable=True),
    Column("expires_at", DateTime(timezone=False), nullable=False),
    Column("used", Boolean, nullable=False),
)

auth_launch = Table(
    "auth_launch",
    metadata,
    Column("launch_hash", String(64), primary_key=True),
    Column("created_by", String(255), nullable=False),  # the client that registered it
    Column("patient", String(64), nullable=True),
    Column("encounter", String(64), nullable=True),
    Column("fhir_user", String(140), nullable=True),
    Column("need_patient_banner", Boolean, nullable=False),
    Column("expires_at", DateTime(timezone=False), nullable=False),
    Column("used", Boolean, nullable=False),
)

auth_token = Table(
    "auth_token",
    metadata,
    Column("token_hash", String(64), primary_key=True),
    Column("kind", String(8), nullable=False),  # access | refresh
    Column("grant_id", String(32), nullable=False),  # tokens from one authorization share it
    Column("client_id", String(255), nullable=False),
    Column("scope", Text, nullable=False),
    Column("username", String(128), nullable=True),
    Column("fhir_user", String(140), nullable=True),
    Column("patient", String(64), nullable=True),
    Column("encounter", String(64), nullable=True),
    Column("issued_at", DateTime(timezone=False), nullable=False),
    Column("expires_at", DateTime(timezone=False), nullable=False),
    Column("revoked", Boolean, nullable=False),
    Index("ix_auth_token_grant", "grant_id"),
)

auth_jti = Table(
    "auth_jti",
    metadata,
    Column("client_id", String(255), primary_key=True),
    Column("jti", String(255), primary_key=True),
    Column("expires_at", DateTime(timezone=False), nullable=False),
    Index("ix_auth_jti_expires", "expires_at"),
)

AUTH_TABLES = (auth_client, auth_user, auth_login_failure, auth_code, auth_launch, auth_token, auth_jti)

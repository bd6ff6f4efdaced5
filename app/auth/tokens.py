"""Access and refresh tokens: opaque random values, stored only as their SHA-256 hash.

This is the interface the FHIR API's enforcement uses: ``lookup_access_token`` turns the raw
Bearer value into an :class:`AccessGrant` with one primary-key lookup, or ``None`` when the token
is unknown, expired or revoked. Revocation is a row update, so it takes effect at once.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import Connection, Engine, select, update

from app.auth.tables import auth_token
from app.db.engine import unit_of_work


@dataclass(frozen=True)
class AccessGrant:
    token_id: str  # stable non-secret id (first 16 hex of the hash), for cursor binding/audit
    client_id: str
    scope: str  # space-separated scopes as granted
    fhir_user: str | None  # "Practitioner/ID" | "Patient/ID" | None
    patient: str | None  # launch context patient id
    encounter: str | None
    expires_at: datetime  # aware UTC


def token_hash(raw: str) -> str:
    return hashlib.sha256(raw.encode("utf-8")).hexdigest()


def utcnow() -> datetime:
    """Naive UTC, as stored."""
    return datetime.now(UTC).replace(tzinfo=None)


def new_token() -> str:
    return secrets.token_urlsafe(32)


def _grant(row) -> AccessGrant:  # noqa: ANN001
    return AccessGrant(
        token_id=row.token_hash[:16],
        client_id=row.client_id,
        scope=row.scope,
        fhir_user=row.fhir_user,
        patient=row.patient,
        encounter=row.encounter,
        expires_at=row.expires_at.replace(tzinfo=UTC),
    )


def store_token(
    conn: Connection,
    *,
    kind: str,
    client_id: str,
    scope: str,
    grant_id: str | None = None,
    username: str | None = None,
    fhir_user: str | None = None,
    patient: str | None = None,
    encounter: str | None = None,
    lifetime_s: int = 3600,
) -> tuple[str, dict]:
    """Insert a new token of ``kind`` (access | refresh); returns the raw value and the row."""
    raw = new_token()
    now = utcnow().replace(microsecond=0)
    row = {
        "token_hash": token_hash(raw),
        "kind": kind,
        "grant_id": grant_id or secrets.token_hex(16),
        "client_id": client_id,
        "scope": scope,
        "username": username,
        "fhir_user": fhir_user,
        "patient": patient,
        "encounter": encounter,
        "issued_at": now,
        "expires_at": now + timedelta(seconds=lifetime_s),
        "revoked": False,
    }
    conn.execute(auth_token.insert().values(**row))
    return raw, row


def issue_access_token(
    engine: Engine,
    *,
    client_id: str,
    scope: str,
    fhir_user: str | None = None,
    patient: str | None = None,
    encounter: str | None = None,
    lifetime_s: int = 3600,
) -> tuple[str, AccessGrant]:
    with unit_of_work(engine, write=True) as conn:
        raw, row = store_token(
            conn,
            kind="access",
            client_id=client_id,
            scope=scope,
            fhir_user=fhir_user,
            patient=patient,
            encounter=encounter,
            lifetime_s=lifetime_s,
        )
    return raw, AccessGrant(
        token_id=row["token_hash"][:16],
        client_id=client_id,
        scope=scope,
        fhir_user=fhir_user,
        patient=patient,
        encounter=encounter,
        expires_at=row["expires_at"].replace(tzinfo=UTC),
    )


def find_token(conn: Connection, raw: str, kind: str | None = None):  # noqa: ANN201
    """The live row for ``raw`` (any kind, or ``kind``), or None if unknown/expired/revoked."""
    if not raw or len(raw) > 512:
        return None
    row = conn.execute(select(auth_token).where(auth_token.c.token_hash == token_hash(raw))).first()
    if row is None or row.revoked or row.expires_at <= utcnow():
        return None
    if kind is not None and row.kind != kind:
        return None
    return row


def lookup_access_token(engine: Engine, raw: str) -> AccessGrant | None:
    """None: unknown, expired or revoked (or a refresh token)."""
    with engine.connect() as conn:
        row = find_token(conn, raw, "access")
    return None if row is None else _grant(row)


def lookup_access_token_in(conn: Connection, raw: str) -> AccessGrant | None:
    """The same check on a connection the caller already holds (saves a pool checkout)."""
    row = find_token(conn, raw, "access")
    return None if row is None else _grant(row)


def revoke_token(engine: Engine, raw: str) -> None:
    """Revoke a token; revoking a refresh token also revokes the access tokens of its grant."""
    with unit_of_work(engine, write=True) as conn:
        revoke_in(conn, raw)


def revoke_in(conn: Connection, raw: str) -> bool:
    h = token_hash(raw)
    row = conn.execute(select(auth_token.c.kind, auth_token.c.grant_id).where(auth_token.c.token_hash == h)).first()
    if row is None:
        return False
    if row.kind == "refresh":
        conn.execute(update(auth_token).where(auth_token.c.grant_id == row.grant_id).values(revoked=True))
    else:
        conn.execute(update(auth_token).where(auth_token.c.token_hash == h).values(revoked=True))
    return True

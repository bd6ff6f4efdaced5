"""Access and refresh tokens: opaque random values, stored only as their SHA-256 hash.

This is the interface the FHIR API's enforcement uses: ``lookup_access_token`` turns the raw
Bearer value into an :class:`AccessGrant` with one primary-key lookup, or ``None`` when the token
is unknown, expired or revoked. Revocation is a row update plus a notification to every
process's cache (app.auth.invalidation), so it takes effect at once.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import Connection, Engine, select, update

from app.auth import invalidation
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
    username: str | None = None  # the user it was issued to (app.protect reads their clearance)


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
        username=row.username,
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


# Validated access tokens, per process, keyed by (engine, token hash): a token in use is looked
# up in the database at most once per TOKEN_CACHE_S (config TOKEN_CACHE_SECONDS; 0 = every
# time). An entry is used only while app.auth.invalidation says nothing has been revoked since
# it was read, in any process (PostgreSQL NOTIFY; SQLite: never cached), so a revocation
# anywhere takes effect at once (docs/decisions/0013-smart-gaps.md). Expiry is checked on
# every hit.
TOKEN_CACHE_S = 60.0
_CACHE_MAX = 10_000
_cache: dict[tuple[int, str], tuple[float, AccessGrant, int]] = {}


def forget_cached_tokens() -> None:
    """After a revocation has committed: empty this process's token cache and wait until the
    other processes have been told (app.auth.invalidation.settle)."""
    _cache.clear()
    invalidation.settle()


def lookup_access_token(engine: Engine, raw: str, cache_s: float = TOKEN_CACHE_S) -> AccessGrant | None:
    """None: unknown, expired or revoked (or a refresh token).

    Runs on every FHIR request: a trusted cache hit costs a dict lookup and a zero-timeout
    poll; a miss is one primary-key SELECT, on PostgreSQL in autocommit (psycopg switches it
    client-side), which saves the BEGIN and ROLLBACK round trips a transaction would add."""
    if not raw or len(raw) > 512:
        return None
    key = (id(engine), token_hash(raw))
    now = time.monotonic()
    listener, generation = invalidation.generation_of(engine) if cache_s > 0 else (None, -1)
    hit = _cache.get(key)
    if hit is not None and listener is not None and now - hit[0] < cache_s and listener.trusted(hit[2]):
        return hit[1] if hit[1].expires_at > datetime.now(UTC) else None
    with engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            conn = conn.execution_options(isolation_level="AUTOCOMMIT")
        row = find_token(conn, raw, "access")
    if row is None:
        _cache.pop(key, None)
        return None
    grant = _grant(row)
    if listener is None:
        return grant
    if len(_cache) >= _CACHE_MAX:
        _cache.clear()
    _cache[key] = (now, grant, generation)  # the generation from *before* the lookup
    return grant


def mark_revoked(conn: Connection, where) -> int:  # noqa: ANN001
    """``UPDATE auth_token SET revoked = true WHERE <where>``, and forget cached tokens (the
    callers forget again once their transaction has committed)."""
    n = conn.execute(update(auth_token).where(where).values(revoked=True)).rowcount
    invalidation.announce(conn)  # other processes drop their caches when this commits
    _cache.clear()
    return n


def lookup_access_token_in(conn: Connection, raw: str) -> AccessGrant | None:
    """The same check on a connection the caller already holds (saves a pool checkout)."""
    row = find_token(conn, raw, "access")
    return None if row is None else _grant(row)


def revoke_token(engine: Engine, raw: str) -> None:
    """Revoke a token; revoking a refresh token also revokes the access tokens of its grant."""
    with unit_of_work(engine, write=True) as conn:
        revoke_in(conn, raw)
    forget_cached_tokens()


def revoke_in(conn: Connection, raw: str) -> bool:
    h = token_hash(raw)
    row = conn.execute(select(auth_token.c.kind, auth_token.c.grant_id).where(auth_token.c.token_hash == h)).first()
    if row is None:
        return False
    if row.kind == "refresh":
        mark_revoked(conn, auth_token.c.grant_id == row.grant_id)
    else:
        mark_revoked(conn, auth_token.c.token_hash == h)
    return True

"""People who log in to the authorize pages: practitioners and patients, each linked to a
``fhirUser`` (``Practitioner/ID`` or ``Patient/ID``).

Passwords are hashed with scrypt (``hashlib.scrypt``, N=2**14, r=8, p=1, 16-byte salt). After
``MAX_FAILURES`` failed logins within ``LOCKOUT`` the account is locked until ``LOCKOUT`` has
passed since the last failure; unknown user names are counted the same way, so the answer never
tells whether a user exists.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import Engine, delete, func, select

from app.auth.tables import auth_login_failure, auth_user
from app.auth.tokens import utcnow
from app.db.engine import unit_of_work

MAX_FAILURES = 5
LOCKOUT = timedelta(minutes=15)
FHIR_USER = re.compile(r"^(Patient|Practitioner)/[A-Za-z0-9\-.]{1,64}$")
USERNAME = re.compile(r"^[A-Za-z0-9_.@\-]{1,128}$")
_N, _R, _P = 2**14, 8, 1


def hash_secret(secret: str) -> str:
    salt = secrets.token_bytes(16)
    dk = hashlib.scrypt(secret.encode("utf-8"), salt=salt, n=_N, r=_R, p=_P, dklen=32)
    b64 = base64.b64encode
    return f"scrypt${_N}${_R}${_P}${b64(salt).decode()}${b64(dk).decode()}"


def verify_secret(secret: str, stored: str | None) -> bool:
    if not stored:
        return False
    try:
        kind, n, r, p, salt, dk = stored.split("$")
        if kind != "scrypt":
            return False
        got = hashlib.scrypt(
            secret.encode("utf-8"), salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p), dklen=32
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, base64.b64decode(dk))


@functools.cache
def _dummy_hash() -> str:
    """Checked against when the user does not exist, so both answers take as long."""
    return hash_secret("not-a-password")


@dataclass(frozen=True)
class User:
    username: str
    fhir_user: str

    @property
    def is_practitioner(self) -> bool:
        return self.fhir_user.startswith("Practitioner/")

    def get_user_id(self) -> str:  # authlib's user protocol
        return self.username


def add_user(engine: Engine, username: str, fhir_user: str, password: str) -> None:
    if not USERNAME.match(username):
        raise ValueError("username: letters, digits and _ . @ - (1 to 128)")
    if not FHIR_USER.match(fhir_user):
        raise ValueError("--fhir-user must be Patient/ID or Practitioner/ID")
    if len(password) < 8:
        raise ValueError("the password must have at least 8 characters")
    with unit_of_work(engine, write=True) as conn:
        if conn.execute(select(auth_user.c.username).where(auth_user.c.username == username)).first():
            raise ValueError(f"user {username!r} already exists")
        conn.execute(
            auth_user.insert().values(
                username=username, fhir_user=fhir_user, password_hash=hash_secret(password), created_at=utcnow()
            )
        )


def remove_user(engine: Engine, username: str) -> bool:
    """Remove a user; every token issued on their behalf stops working at once."""
    from app.auth.tables import auth_token
    from app.auth.tokens import forget_cached_tokens, mark_revoked

    with unit_of_work(engine, write=True) as conn:
        mark_revoked(conn, auth_token.c.username == username)
        conn.execute(delete(auth_login_failure).where(auth_login_failure.c.username == username))
        removed = conn.execute(delete(auth_user).where(auth_user.c.username == username)).rowcount > 0
        from app.protect.clearance import forget_clearance  # a re-added name starts with none

        forget_clearance(conn, "user", username)
    forget_cached_tokens()
    return removed


def list_users(engine: Engine) -> list[User]:
    with engine.connect() as conn:
        rows = conn.execute(select(auth_user.c.username, auth_user.c.fhir_user).order_by(auth_user.c.username))
        return [User(r.username, r.fhir_user) for r in rows]


def get_user(engine: Engine, username: str) -> User | None:
    with engine.connect() as conn:
        r = conn.execute(
            select(auth_user.c.username, auth_user.c.fhir_user).where(auth_user.c.username == username)
        ).first()
    return None if r is None else User(r.username, r.fhir_user)


class LockedOut(Exception):
    pass


def authenticate(engine: Engine, username: str, password: str) -> User | None:
    """The user if the password is right; None if not; raises LockedOut while locked."""
    username = (username or "")[:128]
    now = utcnow()
    with unit_of_work(engine, write=True) as conn:
        recent = conn.execute(
            select(func.count(), func.max(auth_login_failure.c.failed_at)).where(
                auth_login_failure.c.username == username, auth_login_failure.c.failed_at > now - LOCKOUT
            )
        ).one()
        if recent[0] >= MAX_FAILURES:
            raise LockedOut(username)
        row = conn.execute(select(auth_user).where(auth_user.c.username == username)).first()
        ok = verify_secret(password or "", row.password_hash if row else _dummy_hash()) and row is not None
        if not ok:
            conn.execute(auth_login_failure.insert().values(username=username, failed_at=now))
            # keep the table small: forget failures older than the window
            conn.execute(delete(auth_login_failure).where(auth_login_failure.c.failed_at < now - LOCKOUT))
            return None
        conn.execute(delete(auth_login_failure).where(auth_login_failure.c.username == username))
        return User(row.username, row.fhir_user)

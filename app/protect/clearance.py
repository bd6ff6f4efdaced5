"""Clearances: which security labels a registered client or user may see, and who may break the glass.

Rules (docs/decisions/0011-sensitive-results.md):

- a token without a user (Backend Services, ``client_credentials``) sees what its client is
  cleared for;
- a token issued to a user through an app sees what **both** the app and the user are cleared
  for (the intersection, as SMART's ``user/`` scopes are the app's scopes within the user's
  access): a practitioner cleared for HIV results does not carry that into an app that is not;
- break-glass needs the right on both the app and the user, and only practitioner users have it.

Clearances are read per request through a small in-process cache (``CLEARANCE_CACHE_SECONDS``,
default 10 s, 0 = read every time): a change made with the CLI applies at once in the process
that made it and within that many seconds in every other worker, to tokens already issued too.
Why a cache: the lookup was a second database round trip on every request (measured 1-3 ms on a
loaded machine, as much as a whole read); revoking a token still takes effect at once.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from sqlalchemy import Connection, Engine, and_, delete, or_, select

from app.auth.invalidation import announce, generation_of, settle
from app.auth.tokens import utcnow
from app.db.engine import unit_of_work
from app.protect.labels import Label, label_text, parse_label
from app.protect.tables import protect_clearance

ALL = "*"
KINDS = ("client", "user")


@dataclass(frozen=True)
class Clearance:
    kind: str
    subject: str
    labels: frozenset[Label] | None  # None: every label
    break_glass: bool

    @property
    def labels_text(self) -> str:
        if self.labels is None:
            return ALL
        return " ".join(sorted(label_text(x) for x in self.labels)) or "-"


def _encode(labels: frozenset[Label] | None) -> str:
    if labels is None:
        return ALL
    return " ".join(sorted(f"{s}|{c}" for s, c in labels))


def _decode(text: str) -> frozenset[Label] | None:
    if text.strip() == ALL:
        return None
    return frozenset(parse_label(p) for p in text.split())


def _row(r) -> Clearance:  # noqa: ANN001
    return Clearance(r.kind, r.subject, _decode(r.labels), bool(r.break_glass))


def parse_clearance(values: list[str] | tuple[str, ...]) -> frozenset[Label] | None:
    """CLI values (``R``, ``HIV``, ``system|code``, ``*``, comma or space separated)."""
    parts = [p for v in values for p in v.replace(",", " ").split() if p]
    if ALL in parts:
        return None
    return frozenset(parse_label(p) for p in parts)


def set_clearance(engine: Engine, kind: str, subject: str, labels: frozenset[Label] | None,
                  break_glass: bool) -> Clearance:
    """Create or replace the clearance of a client or user (it must be registered)."""
    from app.auth.tables import auth_client, auth_user

    if kind not in KINDS:
        raise ValueError("kind must be client or user")
    with unit_of_work(engine, write=True) as conn:
        if kind == "client":
            known = conn.execute(select(auth_client.c.client_id).where(auth_client.c.client_id == subject)).first()
        else:
            known = conn.execute(select(auth_user.c.username, auth_user.c.fhir_user)
                                 .where(auth_user.c.username == subject)).first()
            if known is not None and break_glass and not known.fhir_user.startswith("Practitioner/"):
                raise ValueError("only practitioner users may break the glass")
        if known is None:
            raise ValueError(f"no {kind} {subject!r} is registered")
        conn.execute(delete(protect_clearance).where(protect_clearance.c.kind == kind,
                                                     protect_clearance.c.subject == subject))
        conn.execute(protect_clearance.insert().values(kind=kind, subject=subject, labels=_encode(labels),
                                                       break_glass=break_glass, updated_at=utcnow()))
        announce(conn)
    forget_cached()
    return Clearance(kind, subject, labels, break_glass)


def remove_clearance(engine: Engine, kind: str, subject: str) -> bool:
    with unit_of_work(engine, write=True) as conn:
        done = conn.execute(delete(protect_clearance).where(protect_clearance.c.kind == kind,
                                                            protect_clearance.c.subject == subject)).rowcount > 0
        announce(conn)
    forget_cached()
    return done


def forget_clearance(conn: Connection, kind: str, subject: str) -> None:
    """Inside the caller's unit of work: drop a removed client's or user's clearance."""
    conn.execute(delete(protect_clearance).where(protect_clearance.c.kind == kind,
                                                 protect_clearance.c.subject == subject))
    announce(conn)
    forget_cached(committed=False)  # the caller settles after its commit


def list_clearances(engine: Engine) -> list[Clearance]:
    with engine.connect() as conn:
        rows = conn.execute(select(protect_clearance).order_by(protect_clearance.c.kind, protect_clearance.c.subject))
        return [_row(r) for r in rows]


@dataclass(frozen=True)
class Effective:
    """What one token's caller is cleared for."""

    labels: frozenset[Label] | None  # None: every label
    break_glass: bool


NOTHING = Effective(frozenset(), False)


_cache: dict[tuple, tuple[float, Effective, int]] = {}
_cache_lock = threading.Lock()
_CACHE_MAX = 10_000


def forget_cached(committed: bool = True) -> None:
    """Drop every cached clearance; after a committed change also wait until the other
    processes have been told (app.auth.invalidation.settle)."""
    with _cache_lock:
        _cache.clear()
    if committed:
        settle()


def cached_effective(engine: Engine, ttl: float, client_id: str, username: str | None,
                     fhir_user: str | None) -> Effective:
    """:func:`effective`, remembered for up to ``ttl`` seconds per (database, client, user)
    while no process has changed a clearance or revoked a token since (app.auth.invalidation;
    SQLite: not remembered)."""
    key = (id(engine), client_id, username, fhir_user)
    now = time.monotonic()
    listener, generation = generation_of(engine) if ttl > 0 else (None, -1)
    hit = _cache.get(key) if listener is not None else None
    if hit is not None and hit[0] > now and listener.trusted(hit[2]):
        return hit[1]
    with engine.connect() as conn:
        if conn.dialect.name == "postgresql":  # one SELECT: no BEGIN/ROLLBACK round trips
            conn = conn.execution_options(isolation_level="AUTOCOMMIT")
        eff = effective(conn, client_id, username, fhir_user)
    if listener is not None:
        with _cache_lock:
            if len(_cache) >= _CACHE_MAX:
                _cache.clear()
            _cache[key] = (now + ttl, eff, generation)  # the generation from before the read
    return eff


def effective(conn: Connection, client_id: str, username: str | None, fhir_user: str | None) -> Effective:
    """The clearance of a token: its client's, intersected with its user's when it has one."""
    c = protect_clearance.c
    conds = [and_(c.kind == "client", c.subject == client_id)]
    if username:
        conds.append(and_(c.kind == "user", c.subject == username))
    rows = {r.kind: _row(r) for r in conn.execute(select(protect_clearance).where(or_(*conds)))}
    client = rows.get("client")
    if client is None:
        return NOTHING
    if not username:
        return Effective(client.labels, False)  # break-glass is for people, not services
    user = rows.get("user")
    if user is None:
        return NOTHING
    if client.labels is None:
        labels = user.labels
    elif user.labels is None:
        labels = client.labels
    else:
        labels = client.labels & user.labels
    may_break = client.break_glass and user.break_glass and bool(fhir_user and fhir_user.startswith("Practitioner/"))
    return Effective(labels, may_break)

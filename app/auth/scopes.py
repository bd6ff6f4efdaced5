"""SMART scopes, v1 and v2, parsed into one meaning.

Grammar (SMART App Launch 2.x, section "Scopes for requesting clinical data"):

    scope      = context "/" type "." permission [ "?" query ]
    context    = "patient" | "user" | "system"
    type       = a FHIR resource type | "*"
    permission = v1: "read" | "write" | "*"        (no query allowed)
                 v2: one or more of "c" "r" "u" "d" "s", each at most once, in that order

v1 maps onto v2 letters exactly as the SMART 2.0 specification says: ``read`` = ``rs``,
``write`` = ``cud``, ``*`` = ``cruds``.  So ``patient/Observation.read`` and
``patient/Observation.rs`` mean the same thing everywhere (permission checks, the token
endpoint's narrowing of scopes, introspection).

A v2 scope may carry search parameters (``patient/Observation.rs?category=laboratory``, several
joined with ``&``): the resources it grants are those that also match that search.

Scopes that are not about resources (``openid``, ``fhirUser``, ``launch``, ``launch/patient``,
``offline_access``, ``online_access``, ``profile``...) are not resource scopes: ``parse_scope``
returns None for them.  A string that looks like a resource scope but is malformed
(``patient/Observation.sr``, ``nurse/Observation.rs``) raises :class:`ScopeError`;
``parse_scopes`` drops those (a malformed scope grants nothing: fail closed).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import parse_qsl

CONTEXTS = ("patient", "user", "system")
LETTERS = "cruds"
V1 = {"read": "rs", "write": "cud", "*": "cruds"}
_TYPE = re.compile(r"^(\*|[A-Z][A-Za-z]{1,63})$")
_V2 = re.compile(r"^c?r?u?d?s?$")
_RESOURCE_SHAPE = re.compile(r"^[A-Za-z]+/[^/\s]*\.")
# The scopes that are not about resources, as SMART App Launch 2.x and OpenID Connect define them.
OTHER_SCOPES = ("openid", "fhirUser", "profile", "launch", "launch/patient", "launch/encounter",
                "offline_access", "online_access")


class ScopeError(ValueError):
    """A malformed resource scope."""


@dataclass(frozen=True)
class ResourceScope:
    context: str  # patient | user | system
    res_type: str  # a resource type or "*"
    letters: frozenset[str]  # subset of c r u d s
    query: tuple[tuple[str, str], ...] = ()  # granular v2 search parameters
    version: str = "v2"  # the syntax it was written in: "v1" | "v2"
    raw: str = ""

    def applies_to(self, res_type: str) -> bool:
        return self.res_type in ("*", res_type)

    def allows(self, res_type: str, letter: str) -> bool:
        return self.applies_to(res_type) and letter in self.letters

    @property
    def canonical(self) -> str:
        """The v2 spelling (``patient/Observation.rs?category=laboratory``)."""
        s = f"{self.context}/{self.res_type}.{''.join(c for c in LETTERS if c in self.letters)}"
        if self.query:
            s += "?" + "&".join(f"{k}={v}" for k, v in self.query)
        return s

    def covers(self, other: ResourceScope) -> bool:
        """Everything ``other`` grants, this scope grants too (for narrowing refresh scopes)."""
        if self.context != other.context or not other.letters <= self.letters:
            return False
        if self.res_type != "*" and self.res_type != other.res_type:
            return False
        # A filter only narrows: ours must be a subset of theirs (no filter covers any filter).
        return set(self.query) <= set(other.query)


def parse_scope(text: str) -> ResourceScope | None:
    """One scope string -> ResourceScope; None when it is not a resource scope."""
    s = text.strip()
    if not _RESOURCE_SHAPE.match(s):
        return None
    context, _, rest = s.partition("/")
    if context not in CONTEXTS:
        if context in ("launch",):  # launch/patient, launch/encounter: launch context requests
            return None
        raise ScopeError(f"'{s[:100]}': the context must be patient, user or system")
    body, qmark, query = rest.partition("?")
    res_type, dot, perm = body.rpartition(".")
    if not dot or not _TYPE.match(res_type):
        raise ScopeError(f"'{s[:100]}': '{res_type[:64]}' is not a resource type or *")
    if perm in V1:
        if qmark:
            raise ScopeError(f"'{s[:100]}': search parameters need v2 permissions (.rs, .cruds ...)")
        letters, version = frozenset(V1[perm]), "v1"
    elif perm and _V2.match(perm):
        letters, version = frozenset(perm), "v2"
    else:
        raise ScopeError(f"'{s[:100]}': '{perm[:20]}' is neither read/write/* nor letters of cruds in that order")
    params: tuple[tuple[str, str], ...] = ()
    if qmark:
        try:
            params = tuple(parse_qsl(query, keep_blank_values=True, strict_parsing=True))
        except ValueError:
            raise ScopeError(f"'{s[:100]}': the search parameters are malformed") from None
        if not params or any(not k or not v for k, v in params):
            raise ScopeError(f"'{s[:100]}': the search parameters are malformed")
    return ResourceScope(context, res_type, letters, params, version, s)


def parse_scopes(text: str | None, *, strict: bool = False) -> list[ResourceScope]:
    """A space-separated scope string -> its resource scopes (others skipped).

    ``strict``: a malformed resource scope raises ScopeError; otherwise it is dropped.
    """
    out: list[ResourceScope] = []
    for part in (text or "").split():
        try:
            sc = parse_scope(part)
        except ScopeError:
            if strict:
                raise
            continue
        if sc is not None:
            out.append(sc)
    return out


def is_narrower(requested: str, granted: str) -> bool:
    """Every resource scope of ``requested`` is covered by some scope of ``granted``, and every
    other scope of ``requested`` (openid, launch/patient, offline_access...) was granted as is."""
    got = parse_scopes(granted)
    got_other = {p for p in granted.split() if _plain(p)}
    for part in requested.split():
        try:
            sc = parse_scope(part)
        except ScopeError:
            return False
        if sc is None:
            if part not in got_other:
                return False
        elif not any(g.covers(sc) for g in got):
            return False
    return True


def _plain(part: str) -> bool:
    try:
        return parse_scope(part) is None
    except ScopeError:
        return False

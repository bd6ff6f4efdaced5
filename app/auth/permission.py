"""What a token may do, as search-expression predicates (DESIGN principle 5).

A :class:`Permission` is built once per request from the token's grant.  It answers two kinds of
question, both framework-free:

- *may this token do interaction X on type T at all?* (``allows``/``require``): the scope letters
  c r u d s (v1 scopes are mapped onto them by app.auth.scopes);
- *which rows?* (``condition``): an expression-tree node (app.search.expr) that the search
  compiler ANDs into every query the request runs: the main search, each ``_include`` and
  ``_revinclude`` query, conditional matches, and the single-row checks of read, vread, history
  and writes (``row_allowed``).  ``None`` means "every row"; ``Const(False)`` means "no row".

Meaning of the contexts (docs/decisions/0006-authorisation-enforcement.md):

- ``patient/`` scopes reach the Patient compartment of the token's patient (the ``patient``
  launch context, or the ``fhirUser`` when it is ``Patient/ID``) using the R4 Patient
  CompartmentDefinition; types outside that compartment (Practitioner, Organization, Endpoint,
  PractitionerRole: directory data, no patient's record) may be read and searched, never written.
  Without a patient the scope grants nothing.
- ``user/`` scopes act with the user's own access: a Practitioner (or any non-Patient user)
  reaches all patients, as the scope letters allow; a ``Patient/ID`` user reaches that patient's
  compartment, like ``patient/``; a token without a ``fhirUser`` (a backend service's) gets
  nothing from a ``user/`` scope (docs/decisions/0013-smart-gaps.md).
- ``system/`` scopes reach all patients.
- a granular scope (``?category=laboratory``) adds its search as a further AND; several scopes for
  the same type and letter are OR-ed (each with its own compartment and filter).

Sensitive results (docs/decisions/0011-sensitive-results.md): ``withheld`` holds the security
labels (``meta.security`` system/code pairs) this token is not cleared for (app.protect works it
out from the client's and user's clearance, or empties it for a break-glass request).  For the
disclosing letters ``r`` and ``s`` the condition gains ``NOT EXISTS`` a ``_security`` index row
with one of them, so the same compiled predicate withholds them from reads, searches, includes,
chains and ``_has`` alike.  Writes (``c u d``) are governed by the scopes alone.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field, replace
from typing import Any

from sqlalchemy import Connection, and_, bindparam, exists, or_, select

from app.auth.scopes import ResourceScope, parse_scopes
from app.fhir.errors import FhirError
from app.search.expr import And, Chain, Const, Has, Match, Node, Not, Or, TokenValue
from app.search.expr import and_ as node_and
from app.search.expr import or_ as node_or
from app.search.rewrite import compartment_condition
from app.storage.tables import resource

INTERACTION_NAMES = {"c": "create", "r": "read", "u": "update", "d": "delete", "s": "search"}
_UNRESTRICTED = object()


def _patient_of(ref: str | None) -> str | None:
    if ref and ref.startswith("Patient/") and "/" not in ref[len("Patient/"):]:
        return ref[len("Patient/"):]
    return None


@dataclass
class Permission:
    scopes: tuple[ResourceScope, ...]
    registry: Any
    patient: str | None = None  # compartment of patient/ scopes
    user_patient: str | None = None  # compartment of user/ scopes when the user is a Patient
    fhir_user: str | None = None
    client_id: str | None = None
    token_id: str | None = None
    # Security labels (system, code) this token may not see (app.protect.enforce sets it).
    withheld: frozenset[tuple[str, str]] = frozenset()
    _cond: dict = field(default_factory=dict, repr=False)

    # ---- construction --------------------------------------------------------------------
    @classmethod
    def from_grant(cls, grant: Any, registry: Any) -> Permission:
        """From an AccessGrant (app.auth.tokens): scope, patient, fhir_user, client and token id."""
        fhir_user = getattr(grant, "fhir_user", None)
        return cls(
            scopes=_parsed(getattr(grant, "scope", "") or ""),
            registry=registry,
            patient=getattr(grant, "patient", None) or _patient_of(fhir_user),
            user_patient=_patient_of(fhir_user),
            fhir_user=fhir_user,
            client_id=getattr(grant, "client_id", None),
            token_id=getattr(grant, "token_id", None),
        )

    @classmethod
    def from_scope(cls, scope: str, registry: Any, *, patient: str | None = None,
                   fhir_user: str | None = None) -> Permission:
        return cls(_parsed(scope), registry, patient or _patient_of(fhir_user),
                   _patient_of(fhir_user), fhir_user)

    # ---- interaction level ---------------------------------------------------------------
    def _in_compartment_type(self, res_type: str) -> bool:
        return res_type == "Patient" or bool(self.registry.compartment_params(res_type))

    def _scope_usable(self, sc: ResourceScope, res_type: str, letter: str) -> bool:
        if not sc.allows(res_type, letter):
            return False
        if self._compartment_of(sc) is _NO_PATIENT:
            return False
        if self._compartment_of(sc) is not None and not self._in_compartment_type(res_type):
            # Directory data outside the Patient compartment: readable, never writable.
            return letter in ("r", "s")
        return True

    def allows(self, res_type: str, letter: str) -> bool:
        """``letter``: one of c r u d s, or several (any of them)."""
        return any(self._scope_usable(sc, res_type, x) for sc in self.scopes for x in letter)

    def require(self, res_type: str, letter: str) -> None:
        if not self.allows(res_type, letter):
            raise forbidden(f"The access token does not allow {INTERACTION_NAMES[letter]} on {res_type} "
                            f"(it needs a scope such as system/{res_type}.{letter}, "
                            f"user/{res_type}.{letter} or patient/{res_type}.{letter}).")

    # ---- row level -----------------------------------------------------------------------
    def _compartment_of(self, sc: ResourceScope):
        """None: all patients; a patient id; _NO_PATIENT: grants nothing (no patient, or no user)."""
        if sc.context == "patient":
            return self.patient or _NO_PATIENT
        if sc.context == "user":
            # A user/ scope acts with a user's access: without a user (a backend token) it grants
            # nothing; a Patient user reaches only their own compartment.
            if not self.fhir_user:
                return _NO_PATIENT
            return self.user_patient
        return None

    def set_withheld(self, labels: frozenset[tuple[str, str]]) -> None:
        """Set the labels this token may not see (conditions are rebuilt)."""
        self.withheld = frozenset(labels)
        self._cond.clear()

    def withhold_node(self, res_type: str) -> Node | None:
        """``NOT (_security = any withheld label)``, or None when nothing is withheld."""
        if not self.withheld:
            return None
        param = self.registry.get(res_type, "_security")
        if param is None:
            return None
        values = tuple(TokenValue(code, system, "eq") for system, code in sorted(self.withheld))
        return Not(Match(param, None, values))

    def condition(self, res_type: str, letter: str) -> Node | None:
        """Rows of ``res_type`` this token may reach with ``letter``; None = all rows.
        Several letters (``"rs"``): the rows reachable with any of them.  For ``r`` and ``s``
        this includes withholding the labels the token is not cleared for."""
        key = (res_type, letter)
        if key in self._cond:
            return self._cond[key]
        shared = (self._shape(), res_type, letter)
        if shared in _CONDITIONS:
            self._cond[key] = out = _CONDITIONS[shared]
            return out
        out = self._condition(res_type, letter)
        if len(_CONDITIONS) >= _CACHE_MAX:
            _CONDITIONS.clear()
        _CONDITIONS[shared] = out
        return out

    def _shape(self) -> tuple:
        """Every field but the token's id and the per-request cache: two requests whose
        permissions have the same shape share their conditions (and the statements compiled
        from them). A field added later is part of the shape unless excluded here, so a cached
        condition can never outlive what it was built from."""
        return tuple(id(v) if f == "registry" else v for f, v in self.__dict__.items() if f not in _NOT_SHAPE)

    def _condition(self, res_type: str, letter: str) -> Node | None:
        key = (res_type, letter)
        if len(letter) > 1:
            conds = [self.condition(res_type, x) for x in letter]
            self._cond[key] = None if any(c is None for c in conds) else node_or(*conds)
            return self._cond[key]
        out = self.scope_condition(res_type, letter)
        if letter in "rs":
            hide = self.withhold_node(res_type)
            if hide is not None:
                out = hide if out is None else node_and(out, hide)
        self._cond[key] = out
        return out

    def scope_condition(self, res_type: str, letter: str) -> Node | None:
        """The rows the scopes (compartment and granular filters) reach, without withholding."""
        key = ("scope", res_type, letter)
        if key in self._cond:
            return self._cond[key]
        alts: list[Node] = []
        unrestricted = False
        for sc in self.scopes:
            if not self._scope_usable(sc, res_type, letter):
                continue
            parts: list[Node] = []
            comp = self._compartment_of(sc)
            if comp is not None and self._in_compartment_type(res_type):
                parts.append(compartment_condition(comp, self.registry, res_type))
            if sc.query:
                parts.append(self._filter(res_type, sc.query))
            if not parts:
                unrestricted = True
                break
            alts.append(node_and(*parts))
        out = None if unrestricted else node_or(*alts)
        self._cond[key] = out
        return out

    def _filter(self, res_type: str, query: tuple[tuple[str, str], ...]) -> Node:
        """A granular scope's search as a node; a filter this type cannot evaluate grants nothing."""
        from app.search.parse import parse

        try:
            req = parse(res_type, list(query), self.registry, strict=True)
        except FhirError:
            return Const(False)
        if req.control or not req.clauses:
            return Const(False)
        return req.tree()

    def restricts(self, res_type: str, letter: str) -> bool:
        return self.condition(res_type, letter) is not None

    def bounded(self, res_type: str, letter: str) -> bool:
        """Whether the scopes themselves (not withholding) bound the rows of this type."""
        return self.scope_condition(res_type, letter) is not None

    def restrict(self, tree: Node, res_type: str, letter: str = "s") -> Node:
        """``tree AND <what this token may reach>``."""
        cond = self.condition(res_type, letter)
        return tree if cond is None else node_and(tree, cond)

    def restrict_tree(self, tree: Node, res_type: str, letter: str = "s") -> Node:
        """``restrict`` applied to the tree and inside it: every chain target and every ``_has``
        source is held to this token's search condition of its own type, so neither a chain
        nor ``_has`` can test other patients' (or filtered-out) data.  Returns ``tree`` itself
        when nothing changes."""
        inner = self._rewrite_nested(tree)
        out = self.restrict(inner, res_type, letter)
        return tree if out is inner and inner is tree else out

    def _rewrite_nested(self, node: Node) -> Node:
        if isinstance(node, (And, Or)):
            kids = tuple(self._rewrite_nested(c) for c in node.children)
            if all(a is b for a, b in zip(kids, node.children, strict=True)):
                return node
            return replace(node, children=kids)
        if isinstance(node, Not):
            kid = self._rewrite_nested(node.child)
            return node if kid is node.child else Not(kid)
        if isinstance(node, Chain):
            branches = tuple((t, self.restrict(self._rewrite_nested(n), t, "s")) for t, n in node.branches)
            if all(a[1] is b[1] for a, b in zip(branches, node.branches, strict=True)):
                return node
            return replace(node, branches=branches)
        if isinstance(node, Has):
            kid = self.restrict(self._rewrite_nested(node.node), node.res_type, "s")
            return node if kid is node.node else replace(node, node=kid)
        return node

    def changes(self, tree: Node, res_type: str, letter: str = "s") -> bool:
        """Whether ``restrict_tree`` adds anything to ``tree``."""
        return self.restrict_tree(tree, res_type, letter) is not tree

    def search_types(self, types: list[str], explicit: bool) -> list[str]:
        """The types a search may cover: an explicitly named type without the ``s`` letter is a
        403; from an implicit list (system search without ``_type``, ``Patient/X/*``) the types
        this token cannot search are left out (403 when none is left)."""
        allowed = [t for t in types if self.allows(t, "s")]
        if explicit and len(allowed) != len(types):
            for t in types:
                self.require(t, "s")
        if not allowed:
            raise forbidden("The access token allows searching none of these resource types.")
        return allowed

    def include_filter(self, enabled_types: Any, letter: str = "s"):
        """The ``extra`` hook of app.search.include.resolve_includes."""
        types = sorted(enabled_types)
        return lambda res: self.any_type_condition(res, types, letter)

    def sql_condition(self, res_type: str, letter: str, res: Any = resource):
        """The condition compiled on a ``resource`` table or alias; None = no restriction."""
        from app.search.plan import Ctx, compile_node

        cond = self.condition(res_type, letter)
        if cond is None:
            return None
        return compile_node(cond, Ctx(res_type, res))

    def any_type_condition(self, res: Any, types: Any, letter: str = "r"):
        """For include queries, whose rows may be of any type: ``OR(res_type = T AND cond_T)``
        over the types this token may reach; None when it reaches every row of every type."""
        if self.withheld and set(letter) <= set("rs"):
            return self._any_type_withheld(res, types, letter)
        alts = []
        open_types = []
        for t in sorted(types):
            if not self.allows(t, letter):
                continue
            cond = self.sql_condition(t, letter, res)
            if cond is None:
                open_types.append(t)
            else:
                alts.append(and_(res.c.res_type == t, cond))
        if len(open_types) == len(list(types)) and not alts:
            return None
        if open_types:
            alts.append(res.c.res_type.in_(open_types))
        return or_(*alts) if alts else res.c.rid.is_(None)

    def withhold_sql(self, res: Any):
        """``NOT EXISTS`` a ``_security`` index row of ``res`` with a withheld label, for rows of
        any type (index rows carry their resource's type, so no type test is needed)."""
        from app.protect.labels import labelled

        return ~labelled(res.c.rid, self.withheld)

    def _any_type_withheld(self, res: Any, types: Any, letter: str):
        """``any_type_condition`` when labels are withheld: the types the scopes leave open share
        one type-independent ``NOT EXISTS`` instead of one OR-branch per type (an include over
        fifteen types otherwise became fifteen anti-joins: 4x slower in bench/sensitive_overhead.py)."""
        types = sorted(types)
        hide = self.withhold_sql(res)
        if all(self.scope_condition(t, x) is None for t in types for x in letter):
            return hide  # the usual case for system and practitioner tokens
        alts = []
        open_types = []
        for t in types:
            if not self.allows(t, letter):
                continue
            if any(self.scope_condition(t, x) is None for x in letter):
                open_types.append(t)
            else:
                alts.append(and_(res.c.res_type == t, self.sql_condition(t, letter, res)))
        if len(open_types) == len(types):
            return hide
        if open_types:
            alts.append(and_(res.c.res_type.in_(open_types), hide))
        return or_(*alts) if alts else res.c.rid.is_(None)

    def row_allowed(self, conn: Connection, res_type: str, rid: int, letter: str) -> bool:
        """Whether the current row ``rid`` (its current index rows) satisfies the condition."""
        if not self.allows(res_type, letter):
            return False
        cond = self.condition(res_type, letter)
        if cond is None:
            return True
        return bool(conn.execute(_row_check(cond, res_type), {"perm_rid": rid}).scalar())

    def patient_compartments(self, res_type: str, letter: str) -> set[str] | None:
        """The patient ids whose compartment bounds this type/letter; None = not bounded."""
        out: set[str] = set()
        for sc in self.scopes:
            if not self._scope_usable(sc, res_type, letter):
                continue
            comp = self._compartment_of(sc)
            if comp is None or not self._in_compartment_type(res_type):
                return None
            out.add(comp)
        return out

    def content_in_compartment(self, res_type: str, content: dict | None, letter: str, index_fn) -> bool:
        """For one stored version (vread, instance history): are its own references inside the
        token's compartment?  The row-level SQL check covers the *current* version; an older
        version may have pointed at another patient."""
        comps = self.patient_compartments(res_type, letter)
        if comps is None or content is None:
            return True
        if res_type == "Patient" and content.get("id") in comps:
            return True
        codes = set(self.registry.compartment_params(res_type))
        rows = index_fn(content).get("reference", [])
        for row in rows:
            if row.get("param") in codes and row.get("target_type") == "Patient" and row.get("target_id") in comps:
                return True
        return False


_CACHE_MAX = 4096
_NOT_SHAPE = frozenset({"_cond", "token_id"})
_CONDITIONS: dict[tuple, Node | None] = {}  # shape, type, letter -> condition (nodes are immutable)
_ROW_CHECKS: dict[tuple, Any] = {}  # condition, type -> the compiled single-row check
_PERM_RES = resource.alias("perm_res")


@functools.lru_cache(maxsize=1024)
def _parsed(scope: str) -> tuple[ResourceScope, ...]:
    """A token's scope string, parsed once per process rather than on every request."""
    return tuple(parse_scopes(scope))


def _row_check(cond: Node, res_type: str):  # noqa: ANN202
    """``SELECT EXISTS (current row :perm_rid satisfies cond)``, built once per condition: a
    read's row check then costs one execution of a statement SQLAlchemy has compiled before."""
    key = (cond, res_type)
    stmt = _ROW_CHECKS.get(key)
    if stmt is None:
        from app.search.plan import Ctx, compile_node

        r = _PERM_RES
        stmt = select(exists(select(r.c.rid).where(r.c.rid == bindparam("perm_rid"),
                                                    compile_node(cond, Ctx(res_type, r)))))
        if len(_ROW_CHECKS) >= _CACHE_MAX:
            _ROW_CHECKS.clear()
        _ROW_CHECKS[key] = stmt
    return stmt


class _NoPatient:
    def __repr__(self) -> str:
        return "<no patient>"


_NO_PATIENT = _NoPatient()


def forbidden(text: str) -> FhirError:
    return FhirError(403, "forbidden", text)


def not_found(res_type: str, res_id: str) -> FhirError:
    """The answer for a resource the token may not see (policy: docs/decisions/0006)."""
    return FhirError(404, "not-found", f"{res_type}/{res_id} is not known to this server.")


# ---- guards the interactions call (no-ops when ``ctx.permission`` is None) -------------------


def guard_read(ctx: Any, conn: Connection, res_type: str, res_id: str, rid: int | None,
               content: str | None = None, current: str | None = None) -> None:
    """read / vread / instance history: the ``r`` letter (403), then the row (404 when outside).

    ``current``: the current version's JSON when the caller has it (read).  For a token whose
    scopes reach every row of the type, withholding is then decided on that JSON's labels, which
    are exactly what the ``_security`` index rows hold, saving the SQL round trip."""
    perm = ctx.permission
    if perm is None:
        return
    perm.require(res_type, "r")
    if rid is None:
        return  # unknown anyway: the interaction answers 404
    if current is not None and perm.withheld and not perm.bounded(res_type, "r"):
        if version_withheld(perm, current):
            raise not_found(res_type, res_id)
    elif not perm.row_allowed(conn, res_type, rid, "r"):
        raise not_found(res_type, res_id)
    if content is not None and perm.patient_compartments(res_type, "r") is not None:
        import orjson

        if not perm.content_in_compartment(res_type, orjson.loads(content), "r", ctx.index_fn()):
            raise not_found(res_type, res_id)
    if content is not None and perm.withheld and version_withheld(perm, content):
        raise not_found(res_type, res_id)  # vread of a version that carried a withheld label


def guard_history_list(ctx: Any, res_type: str | None) -> None:
    """Type and system history: only for a token that reaches every row of the type(s) with
    ``s`` (history lists old versions, which no compartment predicate on current rows bounds)."""
    perm = ctx.permission
    if perm is None:
        return
    types = [res_type] if res_type else sorted(ctx.enabled_types)
    for t in types:
        perm.require(t, "s")
        if perm.bounded(t, "s"):
            raise forbidden(f"{'Type' if res_type else 'System'}-level history is not available to a token limited to "
                            "a patient's compartment or to filtered (granular) scopes; use instance history "
                            "or search instead.")


def version_withheld(perm: Permission, content: str | bytes | None) -> bool:
    """Whether one stored version carries a label this token may not see (the current row's
    labels are checked in SQL; an older version may have carried labels since removed)."""
    if not perm.withheld or content is None:
        return False
    from app.protect.labels import labels_in_content

    return bool(labels_in_content(content) & perm.withheld)


def history_version_filter(ctx: Any):
    """Type/system history: a ``(rv) -> condition`` hiding the versions this token may not see,
    or None.  A version is hidden when its resource's current row carries a withheld label
    (``NOT EXISTS`` on the ``_security`` index rows) or when its own JSON does (a conservative
    text test: see app.protect.labels.content_may_carry)."""
    perm = ctx.permission
    if perm is None or not perm.withheld:
        return None
    from app.protect.labels import history_condition

    return lambda rv: history_condition(rv, perm.withheld, ctx.engine.dialect.name)


def guard_versions(ctx: Any, res_type: str, res_id: str, contents: list[str | None]) -> None:
    """Instance history: every version shown must be inside the token's compartment, and none
    may carry a label the token may not see (then the whole history is not found, like a read:
    hiding single versions would show gaps in the version numbers)."""
    perm = ctx.permission
    if perm is None:
        return
    if perm.withheld and any(version_withheld(perm, c) for c in contents):
        raise not_found(res_type, res_id)
    if perm.patient_compartments(res_type, "r") is None:
        return
    import orjson

    fn = ctx.index_fn()
    for c in contents:
        if c is not None and not perm.content_in_compartment(res_type, orjson.loads(c), "r", fn):
            raise forbidden(f"An earlier version of {res_type}/{res_id} belongs to another patient's record; "
                            "its history is not available to this token.")


def _write_letter_check(perm: Permission, res_type: str, res_id: str | None, letter: str) -> None:
    perm.require(res_type, letter)
    comps = perm.patient_compartments(res_type, letter)
    if res_type == "Patient" and comps is not None and (res_id is None or res_id not in comps):
        raise forbidden("A patient-scoped token may write only its own Patient resource.")


def guard_write_target(ctx: Any, conn: Connection, res_type: str, res_id: str | None,
                       head: Any, letter: str) -> None:
    """Before update/patch/delete (and create): the letter, and an existing current row must be
    one the token may change with that letter (403 otherwise)."""
    perm = ctx.permission
    if perm is None:
        return
    _write_letter_check(perm, res_type, res_id, letter)
    if head is not None and not head.deleted and not perm.row_allowed(conn, res_type, head.rid, letter):
        raise forbidden(f"The access token does not allow {INTERACTION_NAMES[letter]} of {res_type}/{res_id}.")


def guard_written(ctx: Any, repo: Any, res_type: str, stored: Any, letter: str) -> None:
    """After a create/update/patch, inside the unit of work: the written resource (its new index
    rows) must satisfy the token's condition, or the whole unit of work rolls back (403)."""
    perm = ctx.permission
    if perm is None or stored is None:
        return
    _write_letter_check(perm, res_type, stored.res_id, letter)
    if perm.condition(res_type, letter) is None:
        return
    repo.flush()
    if not perm.row_allowed(repo.conn, res_type, stored.rid, letter):
        raise forbidden(f"The access token does not allow writing this {res_type}: it must lie inside what the "
                        "token's scopes reach (for a patient token: that patient's compartment).")


def conditional_rewrite(ctx: Any, res_type: str, letter: str):
    """For conditional matches (If-None-Exist, conditional update/patch/delete, conditional
    references): only rows the token reaches with ``letter`` (or any of several) can match; a
    token with none of the letters on the type gets 403 rather than a misleading "no match"."""
    perm = ctx.permission
    if perm is None:
        return None
    if not perm.allows(res_type, letter):
        raise forbidden(f"Matching {res_type} resources (a conditional operation or reference) needs a scope "
                        f"allowing {' or '.join(INTERACTION_NAMES[x] for x in letter)} on {res_type}.")
    return lambda tree: perm.restrict_tree(tree, res_type, letter)

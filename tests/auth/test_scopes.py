"""SMART scopes v1/v2 and the Permission built from them (no database: the registry and the
expression tree only; the SQL they compile to is exercised in test_enforcement*.py)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import pytest

import config
from app.auth.permission import Permission
from app.auth.scopes import ResourceScope, ScopeError, is_narrower, parse_scope, parse_scopes
from app.fhir.errors import FhirError
from app.indexing.registry import load_registry
from app.search.expr import And, Chain, Const, Has, Match, Or

REGISTRY = load_registry(config.RESULTS_RESOURCE_TYPES)

# ---- parsing -------------------------------------------------------------------------------

PARSED = [
    # scope, context, type, letters, query, version
    ("patient/Observation.read", "patient", "Observation", "rs", (), "v1"),
    ("user/*.write", "user", "*", "cud", (), "v1"),
    ("system/*.*", "system", "*", "cruds", (), "v1"),
    ("patient/*.*", "patient", "*", "cruds", (), "v1"),
    ("patient/Observation.rs", "patient", "Observation", "rs", (), "v2"),
    ("patient/Observation.r", "patient", "Observation", "r", (), "v2"),
    ("user/Patient.cruds", "user", "Patient", "cruds", (), "v2"),
    ("system/*.rs", "system", "*", "rs", (), "v2"),
    ("system/Observation.cud", "system", "Observation", "cud", (), "v2"),
    ("patient/Observation.s", "patient", "Observation", "s", (), "v2"),
    ("patient/Observation.rs?category=laboratory", "patient", "Observation", "rs",
     (("category", "laboratory"),), "v2"),
    ("patient/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|vital-signs",
     "patient", "Observation", "rs",
     (("category", "http://terminology.hl7.org/CodeSystem/observation-category|vital-signs"),), "v2"),
    ("user/Observation.rs?category=laboratory&status=final", "user", "Observation", "rs",
     (("category", "laboratory"), ("status", "final")), "v2"),
    ("system/*.rs?_lastUpdated=gt2024-01-01", "system", "*", "rs", (("_lastUpdated", "gt2024-01-01"),), "v2"),
]


@pytest.mark.parametrize(("text", "context", "res_type", "letters", "query", "version"), PARSED)
def test_parse_scope(text, context, res_type, letters, query, version) -> None:
    sc = parse_scope(text)
    assert sc is not None
    assert (sc.context, sc.res_type, sc.letters, sc.query, sc.version) == (
        context, res_type, frozenset(letters), query, version)
    assert sc.raw == text


@pytest.mark.parametrize("text", ["openid", "fhirUser", "profile", "launch", "launch/patient", "launch/encounter",
                                  "offline_access", "online_access", "smart/orchestrate_launch"])
def test_non_resource_scopes_are_not_resource_scopes(text) -> None:
    assert parse_scope(text) is None


@pytest.mark.parametrize("text", [
    "patient/Observation.sr",  # letters out of order
    "patient/Observation.rr",  # repeated letter
    "patient/Observation.x",
    "patient/Observation.",
    "patient/observation.rs",  # not a type
    "nurse/Observation.rs",  # unknown context
    "patient/Observation.read?category=laboratory",  # v1 has no query
    "patient/Observation.rs?",  # empty query
    "patient/Observation.rs?category",  # no value
    "patient/Observation.rs?=x",
])
def test_malformed_resource_scopes(text) -> None:
    with pytest.raises(ScopeError):
        parse_scope(text)


def test_parse_scopes_skips_other_and_malformed_scopes() -> None:
    got = parse_scopes("openid fhirUser launch/patient patient/Observation.rs patient/Observation.sr offline_access "
                       "user/*.read")
    assert [s.raw for s in got] == ["patient/Observation.rs", "user/*.read"]
    with pytest.raises(ScopeError):
        parse_scopes("patient/Observation.sr", strict=True)


@pytest.mark.parametrize(("v1", "v2"), [
    ("patient/Observation.read", "patient/Observation.rs"),
    ("user/*.write", "user/*.cud"),
    ("system/*.*", "system/*.cruds"),
])
def test_v1_and_v2_mean_the_same(v1, v2) -> None:
    a, b = parse_scope(v1), parse_scope(v2)
    assert (a.context, a.res_type, a.letters) == (b.context, b.res_type, b.letters)
    assert a.canonical == b.canonical == v2


NARROWER = [
    # requested, granted, ok
    ("patient/Observation.rs", "patient/Observation.rs", True),
    ("patient/Observation.r", "patient/Observation.read", True),
    ("patient/Observation.rs", "patient/*.read", True),
    ("patient/Observation.rs?category=laboratory", "patient/Observation.rs", True),
    ("patient/Observation.rs?category=laboratory&status=final", "patient/Observation.rs?category=laboratory", True),
    ("openid patient/Observation.rs", "openid fhirUser patient/Observation.rs", True),
    ("patient/Observation.rs", "patient/Observation.rs?category=laboratory", False),
    ("patient/Observation.cruds", "patient/Observation.rs", False),
    ("patient/*.rs", "patient/Observation.rs", False),
    ("user/Observation.rs", "patient/Observation.rs", False),
    ("offline_access patient/Observation.rs", "patient/Observation.rs", False),
    ("patient/Observation.sr", "patient/*.*", False),
]


@pytest.mark.parametrize(("requested", "granted", "ok"), NARROWER)
def test_is_narrower(requested, granted, ok) -> None:
    assert is_narrower(requested, granted) is ok


# ---- permission ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Grant:
    scope: str
    patient: str | None = None
    fhir_user: str | None = None
    client_id: str = "app"
    token_id: str = "t1"
    encounter: str | None = None
    expires_at: datetime = datetime(2100, 1, 1, tzinfo=UTC)


def perm(scope: str, **kw) -> Permission:
    return Permission.from_grant(Grant(scope, **kw), REGISTRY)


ALLOWS = [
    # scope, grant kw, type, letter, allowed
    ("patient/Observation.read", {"patient": "p1"}, "Observation", "r", True),
    ("patient/Observation.read", {"patient": "p1"}, "Observation", "s", True),
    ("patient/Observation.read", {"patient": "p1"}, "Observation", "c", False),
    ("patient/Observation.read", {"patient": "p1"}, "DiagnosticReport", "r", False),
    ("patient/Observation.rs", {}, "Observation", "r", False),  # no patient: grants nothing
    ("patient/Observation.rs", {"fhir_user": "Patient/p9"}, "Observation", "r", True),
    ("patient/*.cruds", {"patient": "p1"}, "Observation", "d", True),
    ("patient/*.cruds", {"patient": "p1"}, "Practitioner", "r", True),  # directory data: readable
    ("patient/*.cruds", {"patient": "p1"}, "Practitioner", "c", False),  # ... never writable
    ("patient/*.cruds", {"patient": "p1"}, "Organization", "u", False),
    ("user/*.read", {"fhir_user": "Practitioner/d1"}, "Patient", "s", True),
    ("user/*.read", {"fhir_user": "Practitioner/d1"}, "Patient", "u", False),
    ("user/Observation.cud", {"fhir_user": "Practitioner/d1"}, "Observation", "u", True),
    ("user/Observation.cud", {"fhir_user": "Practitioner/d1"}, "Observation", "r", False),
    ("system/*.rs", {}, "ImagingStudy", "s", True),
    ("system/*.rs", {}, "ImagingStudy", "c", False),
    ("system/Observation.c system/Observation.s", {}, "Observation", "s", True),
    ("openid fhirUser", {"fhir_user": "Practitioner/d1"}, "Observation", "r", False),
]


@pytest.mark.parametrize(("scope", "kw", "res_type", "letter", "allowed"), ALLOWS)
def test_allows(scope, kw, res_type, letter, allowed) -> None:
    p = perm(scope, **kw)
    assert p.allows(res_type, letter) is allowed
    if not allowed:
        with pytest.raises(FhirError) as e:
            p.require(res_type, letter)
        assert e.value.status == 403 and e.value.code == "forbidden"


def _refs(node) -> set[tuple[str, str]]:
    """(param code, patient id) of the reference matches in a condition."""
    out = set()
    if isinstance(node, (And, Or)):
        for c in node.children:
            out |= _refs(c)
    elif isinstance(node, Match) and node.param.type == "reference":
        out |= {(node.param.code, v.res_id) for v in node.values}
    elif isinstance(node, Match) and node.param.code == "_id":
        out |= {("_id", v.code) for v in node.values}
    return out


def test_condition_patient_context_is_the_compartment() -> None:
    p = perm("patient/*.read", patient="p1")
    assert _refs(p.condition("Observation", "s")) == {("subject", "p1"), ("performer", "p1")}
    assert _refs(p.condition("Patient", "r")) == {("_id", "p1"), ("link", "p1")}
    assert p.condition("Practitioner", "s") is None  # outside the compartment: not bounded
    assert p.patient_compartments("Observation", "r") == {"p1"}


def test_fhir_user_patient_is_the_compartment_for_patient_and_user_scopes() -> None:
    p = perm("patient/Observation.rs user/DiagnosticReport.rs", fhir_user="Patient/p7")
    assert _refs(p.condition("Observation", "s")) == {("subject", "p7"), ("performer", "p7")}
    assert _refs(p.condition("DiagnosticReport", "s")) == {("subject", "p7")}


def test_launch_patient_wins_over_fhir_user_for_patient_scopes() -> None:
    p = perm("patient/Observation.rs", patient="p2", fhir_user="Patient/p7")
    assert _refs(p.condition("Observation", "s")) == {("subject", "p2"), ("performer", "p2")}


@pytest.mark.parametrize(("scope", "kw"), [
    ("user/*.read", {"fhir_user": "Practitioner/d1"}),
    ("user/Observation.rs", {"fhir_user": "PractitionerRole/r1"}),
    ("system/*.rs", {}),
    ("patient/Observation.rs user/Observation.rs", {"patient": "p1", "fhir_user": "Practitioner/d1"}),
])
def test_practitioner_user_and_system_reach_every_row(scope, kw) -> None:
    p = perm(scope, **kw)
    assert p.condition("Observation", "s") is None
    assert p.patient_compartments("Observation", "s") is None
    assert not p.changes(Const(True), "Observation")


def test_no_usable_scope_is_no_row() -> None:
    p = perm("patient/Observation.rs", patient="p1")
    assert p.condition("DiagnosticReport", "s") == Const(False)


def test_granular_scope_adds_its_search() -> None:
    p = perm("patient/Observation.rs?category=laboratory", patient="p1")
    cond = p.condition("Observation", "s")
    assert isinstance(cond, And)
    codes = {c.param.code for c in cond.children if isinstance(c, Match)}
    assert "category" in codes
    assert _refs(cond) == {("subject", "p1"), ("performer", "p1")}


def test_granular_scopes_or_together_and_unfiltered_wins() -> None:
    two = perm("user/Observation.rs?category=laboratory user/Observation.rs?category=imaging",
               fhir_user="Practitioner/d1")
    assert isinstance(two.condition("Observation", "s"), Or)
    wide = perm("user/Observation.rs?category=laboratory user/Observation.rs", fhir_user="Practitioner/d1")
    assert wide.condition("Observation", "s") is None


def test_granular_filter_unknown_for_the_type_grants_nothing() -> None:
    p = perm("system/*.rs?category=laboratory")
    assert p.condition("Patient", "s") == Const(False)  # Patient has no category
    assert p.condition("Observation", "s") is not None


def test_restrict_tree_reaches_into_chains_and_has() -> None:
    from app.search import parse

    p = perm("patient/*.read", patient="p1")
    req = parse("Observation", [("subject.name", "Smith")], REGISTRY, strict=True)
    out = p.restrict_tree(req.tree(), "Observation")
    chain = next(c for c in out.children if isinstance(c, Chain))
    (_t, inner), = [b for b in chain.branches if b[0] == "Patient"]
    assert ("_id", "p1") in _refs(inner)
    req = parse("Patient", [("_has:Observation:subject:code", "1234-5")], REGISTRY, strict=True)
    out = p.restrict_tree(req.tree(), "Patient")
    has = next(c for c in out.children if isinstance(c, Has))
    assert ("subject", "p1") in _refs(has.node)


def test_search_types_explicit_is_403_implicit_is_narrowed() -> None:
    p = perm("patient/Observation.rs patient/Patient.rs", patient="p1")
    assert p.search_types(["DiagnosticReport", "Observation", "Patient"], explicit=False) == ["Observation", "Patient"]
    with pytest.raises(FhirError) as e:
        p.search_types(["DiagnosticReport", "Observation"], explicit=True)
    assert e.value.status == 403
    with pytest.raises(FhirError):
        p.search_types(["Encounter"], explicit=False)


def test_content_in_compartment_uses_the_version_itself() -> None:
    from app.indexing.extract import extract

    p = perm("patient/*.read", patient="p1")
    fn = lambda body: extract(REGISTRY, body)  # noqa: E731
    mine = {"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "subject": {"reference": "Patient/p1"}}
    other = {**mine, "subject": {"reference": "Patient/p2"}}
    assert p.content_in_compartment("Observation", mine, "r", fn)
    assert not p.content_in_compartment("Observation", other, "r", fn)
    assert p.content_in_compartment("Patient", {"resourceType": "Patient", "id": "p1"}, "r", fn)
    assert not p.content_in_compartment("Patient", {"resourceType": "Patient", "id": "p2"}, "r", fn)


def test_resource_scope_covers() -> None:
    wide = ResourceScope("patient", "*", frozenset("rs"))
    assert wide.covers(ResourceScope("patient", "Observation", frozenset("r"), (("category", "laboratory"),)))
    assert not wide.covers(ResourceScope("user", "Observation", frozenset("r")))


def test_several_letters_mean_any_of_them() -> None:
    p = perm("system/Observation.c user/Observation.rs", fhir_user="Patient/p1")
    assert p.allows("Observation", "rs") and p.allows("Observation", "cd")
    assert not p.allows("Observation", "ud")
    assert p.condition("Observation", "rs") is not None  # user scopes of a Patient user: bounded
    assert p.condition("Observation", "cs") is None  # the system scope reaches every row

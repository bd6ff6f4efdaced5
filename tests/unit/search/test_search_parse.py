"""Table-driven tests of stage 1 (query parameters -> typed clauses)."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from search_fakes import REGISTRY

from app.fhir.errors import FhirError
from app.search import parse
from app.search.expr import (
    Chain,
    CompositeValue,
    DateValue,
    Has,
    Match,
    Missing,
    Not,
    NumberValue,
    QuantityValue,
    ReferenceValue,
    StringValue,
    TokenValue,
    UriValue,
)
from app.search.parse import split_unescaped, unescape
from app.search.values import normalize_string, parse_date_range, parse_decimal

BASE = "http://example.org/fhir"


def one(res_type: str, key: str, value: str, **kw):
    req = parse(res_type, [(key, value)], REGISTRY, strict=True, base_url=BASE, **kw)
    assert len(req.clauses) == 1
    return req.clauses[0]


def values(node):
    return [v for v in node.values]


TOKEN_CASES = [
    ("1234", TokenValue("1234")),
    ("http://loinc.org|1234", TokenValue("1234", "http://loinc.org", "eq")),
    ("|1234", TokenValue("1234", None, "none")),
    ("http://loinc.org|", TokenValue(None, "http://loinc.org", "eq")),
    (r"a\|b", TokenValue("a|b")),
    (r"s|a\,b", TokenValue("a,b", "s", "eq")),
]


@pytest.mark.parametrize("raw,expected", TOKEN_CASES)
def test_token_values(raw, expected):
    node = one("Observation", "code", raw)
    assert isinstance(node, Match) and node.param.code == "code"
    assert values(node) == [expected]


def test_or_values_with_escaped_comma():
    node = one("Patient", "name", r"smith,o\,brien,jones")
    assert [v.raw for v in node.values] == ["smith", "o,brien", "jones"]


def test_repeated_params_are_and():
    req = parse("Patient", [("name", "a"), ("name", "b")], REGISTRY, strict=True)
    assert len(req.clauses) == 2
    tree = req.tree()
    assert type(tree).__name__ == "And" and len(tree.children) == 2


@pytest.mark.parametrize("key,mod", [
    ("name:exact", "exact"), ("name:contains", "contains"), ("name", None),
])
def test_string_modifiers(key, mod):
    node = one("Patient", key, "Zoë  Smith")
    assert node.modifier == mod
    assert node.values == (StringValue("Zoë  Smith", "zoe smith"),)


def test_token_not_text_oftype():
    n = one("Observation", "status:not", "final")
    assert isinstance(n, Not) and n.child.values == (TokenValue("final"),)
    n = one("Observation", "code:text", "Hæmoglobin")
    assert n.modifier == "text" and n.values[0].norm == normalize_string("Hæmoglobin")
    n = one("Patient", "identifier:of-type", "http://terminology.hl7.org/CodeSystem/v2-0203|MR|123")
    assert n.values == (TokenValue("MR|123", "http://terminology.hl7.org/CodeSystem/v2-0203", "eq"),)


@pytest.mark.parametrize("key,value,missing", [
    ("birthdate:missing", "true", True), ("name:missing", "false", False),
    ("code-value-quantity:missing", "true", True),
])
def test_missing(key, value, missing):
    n = one("Patient" if "code" not in key else "Observation", key, value)
    assert isinstance(n, Missing) and n.missing is missing


REF_CASES = [
    ("subject", "123", ReferenceValue("123")),
    ("subject", "Patient/123", ReferenceValue("123", "Patient")),
    ("subject", "Patient/123/_history/4", ReferenceValue("123", "Patient")),
    ("subject", f"{BASE}/Patient/123", ReferenceValue("123", "Patient")),
    ("subject", "http://other.org/fhir/Patient/9", ReferenceValue(url="http://other.org/fhir/Patient/9")),
    ("subject", "urn:uuid:0c3151bd-1cbf-4d64-b04d-cd9187a4c6e0",
     ReferenceValue(url="urn:uuid:0c3151bd-1cbf-4d64-b04d-cd9187a4c6e0")),
    ("subject:Patient", "123", ReferenceValue("123", "Patient")),
    ("subject:identifier", "https://fhir.nhs.uk/Id/nhs-number|9434765919",
     TokenValue("9434765919", "https://fhir.nhs.uk/Id/nhs-number", "eq")),
]


@pytest.mark.parametrize("key,raw,expected", REF_CASES)
def test_reference_values(key, raw, expected):
    assert one("Observation", key, raw).values == (expected,)


def test_chain_single_and_multi_level():
    n = one("Observation", "subject:Patient.name", "smith")
    assert isinstance(n, Chain) and [t for t, _ in n.branches] == ["Patient"]
    assert n.branches[0][1].param.code == "name"
    # untyped chain: only target types that define the parameter
    n = one("Observation", "subject.identifier", "x|1")
    assert [t for t, _ in n.branches] == ["Patient"]
    n = one("Observation", "patient.general-practitioner.name", "Leeds")
    inner = n.branches[0][1]
    assert isinstance(inner, Chain)
    assert [t for t, _ in inner.branches] == ["Organization", "Practitioner"]


def test_has_nested():
    n = one("Patient", "_has:Observation:patient:code", "1234")
    assert isinstance(n, Has) and n.res_type == "Observation" and n.ref_param.code == "patient"
    n = one("Patient", "_has:Observation:subject:_has:DiagnosticReport:result:code", "x")
    assert isinstance(n.node, Has) and n.node.res_type == "DiagnosticReport"


def test_dates_and_prefixes():
    n = one("Patient", "birthdate", "ge2020-01", tz=ZoneInfo("UTC"))
    v = n.values[0]
    assert isinstance(v, DateValue) and v.prefix == "ge"
    assert (v.low, v.high) == (datetime(2020, 1, 1), datetime(2020, 1, 31, 23, 59, 59, 999999))


DATE_CASES = [
    # (text, expected low, expected high) with server zone Europe/London
    ("2020", datetime(2020, 1, 1), datetime(2020, 12, 31, 23, 59, 59, 999999)),
    ("2020-07-01", datetime(2020, 6, 30, 23), datetime(2020, 7, 1, 22, 59, 59, 999999)),  # BST
    ("2021-03-28", datetime(2021, 3, 28), datetime(2021, 3, 28, 22, 59, 59, 999999)),  # 23h day
    ("2021-10-31", datetime(2021, 10, 30, 23), datetime(2021, 10, 31, 23, 59, 59, 999999)),  # 25h
    ("2020-07-01T10:00", datetime(2020, 7, 1, 9), datetime(2020, 7, 1, 9, 0, 59, 999999)),
    ("2020-07-01T10:00:00Z", datetime(2020, 7, 1, 10), datetime(2020, 7, 1, 10, 0, 0, 999999)),
    ("2020-07-01T10:00:00+02:00", datetime(2020, 7, 1, 8), datetime(2020, 7, 1, 8, 0, 0, 999999)),
    ("2020-07-01T10:00:00.5Z", datetime(2020, 7, 1, 10, 0, 0, 500000),
     datetime(2020, 7, 1, 10, 0, 0, 599999)),
]


@pytest.mark.parametrize("text,low,high", DATE_CASES)
def test_date_ranges(text, low, high):
    assert parse_date_range("d", text, ZoneInfo("Europe/London")) == (low, high)


@pytest.mark.parametrize("text,value,low,high", [
    ("5.4", "5.4", "5.35", "5.45"),
    ("100", "100", "99.5", "100.5"),
    ("1e2", "1E+2", "50", "150"),
    ("-0.05", "-0.05", "-0.055", "-0.045"),
])
def test_decimal_precision(text, value, low, high):
    assert parse_decimal("p", text) == (Decimal(value), Decimal(low), Decimal(high))


def test_number_and_quantity():
    n = one("RiskAssessment", "probability", "gt0.8")
    assert isinstance(n.values[0], NumberValue) and n.values[0].prefix == "gt"
    n = one("Observation", "value-quantity", "le5.4|http://unitsofmeasure.org|mg")
    q = n.values[0]
    assert isinstance(q, QuantityValue) and (q.system, q.code, q.number.prefix) == (
        "http://unitsofmeasure.org", "mg", "le")
    q = one("Observation", "value-quantity", "5.4||mg").values[0]
    assert (q.system, q.code) == (None, "mg")


def test_composite_and_uri():
    n = one("Observation", "code-value-quantity", "http://loinc.org|8480-6$gt140")
    v = n.values[0]
    assert isinstance(v, CompositeValue)
    assert v.parts[0] == TokenValue("8480-6", "http://loinc.org", "eq")
    assert v.parts[1].number.prefix == "gt"
    n = one("Observation", "_profile:below", "http://x.org/StructureDefinition")
    assert n.modifier == "below" and n.values == (UriValue("http://x.org/StructureDefinition"),)


def test_control_params_collected_raw():
    req = parse("Patient", [("_count", "10"), ("_sort", "-birthdate"), ("_include:iterate", "x"),
                            ("name", "a")], REGISTRY, strict=True)
    assert req.control == [("_count", "10"), ("_sort", "-birthdate"), ("_include:iterate", "x")]
    assert req.control_values("_sort") == ["-birthdate"]
    assert req.params == [("name", "a")]


def test_empty_value_is_ignored():
    req = parse("Patient", [("name", "")], REGISTRY, strict=True)
    assert req.clauses == [] and req.params == []


UNSUPPORTED = [
    ("Patient", "nonsense", "x"),
    ("Patient", "name:below", "x"),
    ("Patient", "birthdate:exact", "2020"),
    ("Observation", "subject:Organization", "1"),
    ("Observation", "subject.nonsense", "1"),
    ("Observation", "status.name", "1"),  # chain on a non-reference
    ("Patient", "_has:Observation:code:code", "1"),  # _has via a non-reference
    ("Patient", "_has:Observation", "1"),
    ("Patient", "_has:Nonsense:subject:code", "1"),
    ("Observation", "_text", "x"),
    ("Patient", "_id:exact", "1"),
    ("Patient", "name:", "x"),  # an empty modifier is no modifier the grammar has
    ("Observation", "subject:.name", "x"),
    ("Patient", ":", "x"),  # no name at all
    ("Patient", ".name", "x"),
]


@pytest.mark.parametrize("res_type,key,value", UNSUPPORTED)
def test_unsupported_strict_and_lenient(res_type, key, value):
    with pytest.raises(FhirError) as ei:
        parse(res_type, [(key, value)], REGISTRY, strict=True)
    assert ei.value.status == 400 and ei.value.expression == [key]
    assert ei.value.code in ("not-supported", "invalid")
    req = parse(res_type, [(key, value), ("_id", "a")], REGISTRY, strict=False)
    assert req.ignored == [(key, value)] and req.params == [("_id", "a")]


MALFORMED = [
    ("Patient", "birthdate", "2020-13-01"),
    ("Patient", "birthdate", "yesterday"),
    ("Patient", "birthdate", "xx2020"),
    ("Patient", "birthdate", "2020-02-30"),
    ("RiskAssessment", "probability", "abc"),
    ("RiskAssessment", "probability", "gtx"),
    ("Observation", "value-quantity", "5|mg"),
    ("Observation", "value-quantity", "five||mg"),
    ("Observation", "code", "a|b|c"),
    ("Observation", "code", "|"),
    ("Patient", "name:missing", "yes"),
    ("Observation", "code-value-quantity", "a|b"),
    ("Observation", "subject", "Patient/1/2"),
    ("Observation", "subject:Patient", "Group/1"),
    ("Patient", "identifier:of-type", "a|b"),
    # R4's grammar, exactly (decision 0019): ASCII digits, the whole text, offsets up to 14:00
    ("Patient", "birthdate", "\uff12\uff10\uff12\uff10"),  # fullwidth 2020
    ("Patient", "birthdate", "2020-01-01\n"),
    ("Observation", "date", "2020-01-01T10:00:00+14:30"),
    ("Observation", "date", "2020-01-01T10:00:00+15:00"),
    ("RiskAssessment", "probability", ".5"),
    ("RiskAssessment", "probability", "1."),
    ("RiskAssessment", "probability", "+5"),
    ("RiskAssessment", "probability", "007"),
    ("RiskAssessment", "probability", "\u0663"),  # Arabic-Indic 3
]


@pytest.mark.parametrize("res_type,key,value", MALFORMED)
def test_malformed_values_always_400(res_type, key, value):
    for strict in (True, False):
        with pytest.raises(FhirError) as ei:
            parse(res_type, [(key, value)], REGISTRY, strict=strict)
        assert ei.value.status == 400 and ei.value.code == "value"
        assert key.split(":")[0] in ei.value.diagnostics


def test_escape_helpers():
    assert split_unescaped(r"a\,b,c", ",") == [r"a\,b", "c"]
    assert unescape(r"a\,b\$c\|d\\e") == "a,b$c|d\\e"
    assert split_unescaped(r"a\$b$c", "$") == [r"a\$b", "c"]


@pytest.mark.parametrize("text,low,high", [
    ("9999", datetime(9999, 1, 1), datetime.max),
    ("9999-12-31", datetime(9999, 12, 31), datetime.max),
    ("0001-01-01T00:00:00Z", datetime(1, 1, 1), datetime(1, 1, 1, 0, 0, 0, 999999)),
    ("0001-01-01T00:00:00+01:00", datetime.min, datetime.min),
])
def test_date_extremes_clamp(text, low, high):
    assert parse_date_range("d", text, ZoneInfo("UTC")) == (low, high)


@pytest.mark.parametrize("key,value", [
    ("name", "a\x00b"), ("name", "\ud800"), ("probability", "1e999"), ("probability", "1" * 80),
    ("birthdate", "0000"),
])
def test_hostile_values_are_400(key, value):
    res_type = "RiskAssessment" if key == "probability" else "Patient"
    with pytest.raises(FhirError) as ei:
        parse(res_type, [(key, value)], REGISTRY, strict=False)
    assert ei.value.status == 400


@pytest.mark.parametrize(("value", "ok"), [
    ("2020-01-01T10:00:00+14:00", True), ("2020-01-01T10:00:00-14:00", True),
    ("2020-01-01T10:00:00+13:59", True), ("2020-01-01T10:00:00+05:60", False),
    ("0.5", True), ("-0.5", True), ("0", True), ("1e2", True), ("1.50E-3", True), ("-0", True),
])
def test_grammar_edges(value, ok):
    key = "date" if "T" in value else "probability"
    res_type = "Observation" if key == "date" else "RiskAssessment"
    if ok:
        assert one(res_type, key, value) is not None
    else:
        with pytest.raises(FhirError):
            one(res_type, key, value)


def _chain(links: int) -> str:
    """``subject:Patient.organization.partof...name`` with ``links`` reference links."""
    return ".".join(["subject:Patient", "organization", *["partof"] * (links - 2), "name"])


@pytest.mark.parametrize(("res_type", "key", "value", "ok"), [
    ("Observation", _chain(4), "x", True),
    ("Observation", _chain(5), "x", False),
    ("Patient", "_has:Patient:link:" * 4 + "name", "x", True),
    ("Patient", "_has:Patient:link:" * 5 + "name", "x", False),
    ("Patient", "_has:Patient:link:" * 2 + "organization.partof.name", "x", True),
    ("Patient", "_has:Patient:link:" * 2 + "organization.partof.partof.name", "x", False),
    ("Observation", "code", ",".join(f"c{i}" for i in range(100)), True),
    ("Observation", "code", ",".join(f"c{i}" for i in range(101)), False),
])
def test_shape_bounds_are_too_costly_in_both_modes(res_type, key, value, ok):
    """Decision 0019: 4 chain links plus _has levels, 100 OR-values; a 400 ``too-costly`` naming
    the parameter when lenient too (ignoring part of a search would broaden it)."""
    for strict in (True, False):
        if ok:
            assert len(parse(res_type, [(key, value)], REGISTRY, strict=strict).clauses) == 1
            continue
        with pytest.raises(FhirError) as ei:
            parse(res_type, [(key, value)], REGISTRY, strict=strict)
        assert (ei.value.status, ei.value.code) == (400, "too-costly")
        assert ei.value.expression in ([key], [key.split(":")[0]])


def test_at_most_32_parameters_in_one_search():
    params = [("code", f"c{i}") for i in range(32)]
    assert len(parse("Observation", params, REGISTRY, strict=True).clauses) == 32
    with pytest.raises(FhirError) as ei:
        parse("Observation", [*params, ("status", "final")], REGISTRY, strict=False)
    assert (ei.value.status, ei.value.code, ei.value.expression) == (400, "too-costly", ["status"])

"""Search end to end on SQLite and PostgreSQL: index rows in, matching ids out.

Each case is (resource type, query, expected ids). Rows are inserted directly, following the
indexer's row conventions, so these tests pin the search semantics independently of extraction.
"""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest
from search_fakes import REGISTRY
from sqlalchemy import insert, inspect, select

from app.fhir.errors import FhirError
from app.search import compile_search, compile_tree, find_matches, parse
from app.search.rewrite import restrict_to_compartment
from app.search.values import normalize_string, parse_date_range
from app.storage.tables import INDEX_TABLES, resource

BASE = "http://example.org/fhir"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
NHS = "https://fhir.nhs.uk/Id/nhs-number"
V2 = "http://terminology.hl7.org/CodeSystem/v2-0203"
LONDON = ZoneInfo("Europe/London")


def s(param, value):
    return ("string", {"param": param, "value_norm": normalize_string(value), "value": value})


def tok(param, system, code, grp=None):
    return ("token", {"param": param, "system": system, "code": code, "grp": grp})


def d(param, text):
    low, high = parse_date_range(param, text, LONDON)
    return ("date", {"param": param, "low": low, "high": high})


def dr(param, a, b):
    return ("date", {"param": param, "low": parse_date_range(param, a, LONDON)[0],
                     "high": parse_date_range(param, b, LONDON)[1]})


def q(param, value, system, code, unit=None, canon=None, grp=None):
    cv, cc = canon if canon else (None, None)
    return ("quantity", {"param": param, "value": value, "system": system, "code": code,
                         "unit": unit or code, "canon_value": cv, "canon_code": cc, "grp": grp})


def ref(param, ttype=None, tid=None, url=None):
    return ("reference", {"param": param, "target_type": ttype, "target_id": tid, "url": url})


def num(param, value):
    return ("number", {"param": param, "value": value})


def uri(param, value):
    return ("uri", {"param": param, "value": value})


# (type, id, last_updated, deleted, rows)
DATA = [
    ("Patient", "p1", datetime(2024, 1, 1, 12), False, [
        s("name", "Zoë"), s("name", "Smith"), s("family", "Smith"),
        tok("identifier", NHS, "9434765919"), tok("identifier:of-type", V2, "MR|m1"),
        d("birthdate", "1980-05-17"), tok("gender", "http://hl7.org/fhir/administrative-gender", "female"),
        ref("general-practitioner", "Organization", "org1"),
    ]),
    ("Patient", "p2", datetime(2024, 6, 1), False, [
        s("name", "Seán"), s("name", "O'Brien"), s("family", "O'Brien"),
        tok("identifier", NHS, "1111111111"), d("birthdate", "1980"),
        tok("gender", "http://hl7.org/fhir/administrative-gender", "male"),
        ref("general-practitioner", "Practitioner", "pr1"),
    ]),
    ("Patient", "p3", datetime(2025, 1, 1), False, [
        s("name", "100%_test"), tok("identifier", None, "abc"),
    ]),
    ("Patient", "p4", datetime(2024, 1, 1), True, [s("name", "Smith")]),  # deleted
    ("Organization", "org1", datetime(2024, 1, 1), False, [s("name", "Leeds General")]),
    ("Practitioner", "pr1", datetime(2024, 1, 1), False, [s("name", "Jones")]),
    ("Observation", "o1", datetime(2024, 1, 1), False, [
        ref("subject", "Patient", "p1"), ref("patient", "Patient", "p1"),
        tok("code", LOINC, "8480-6"), s("code:text", "Systolic blood pressure"),
        tok("status", None, "final"), q("value-quantity", 120.0, UCUM, "mm[Hg]"),
        d("date", "2020-07-01T10:00:00Z"),
        tok("code-value-quantity$0", LOINC, "8480-6", grp=1),
        q("code-value-quantity$1", 120.0, UCUM, "mm[Hg]", grp=1),
        uri("_profile", "http://x.org/fhir/StructureDefinition/bp"),
    ]),
    ("Observation", "o2", datetime(2024, 1, 1), False, [
        ref("subject", "Patient", "p2"), tok("code", LOINC, "2345-7"), tok("status", None, "amended"),
        q("value-quantity", 5.4, UCUM, "mmol/L", canon=(0.0054, "mol/L")),
        dr("date", "2020-01-01", "2020-12-31"),
        tok("code-value-quantity$0", LOINC, "2345-7", grp=1),
        q("code-value-quantity$1", 5.4, UCUM, "mmol/L", canon=(0.0054, "mol/L"), grp=1),
        uri("_profile", "http://x.org/fhir/StructureDefinition/bp/child"),
    ]),
    ("Observation", "o3", datetime(2024, 1, 1), False, [
        ref("subject", "Group", "g1"), tok("code", "http://snomed.info/sct", "123"),
        tok("status", None, "final"), q("value-quantity", 5000.0, UCUM, "mg", canon=(5.0, "g")),
        d("date", "2023-06-01"),
        tok("component-code-value-quantity$0", LOINC, "8480-6", grp=1),
        q("component-code-value-quantity$1", 120.0, UCUM, "mm[Hg]", grp=1),
        tok("component-code-value-quantity$0", LOINC, "8462-4", grp=2),
        q("component-code-value-quantity$1", 80.0, UCUM, "mm[Hg]", grp=2),
        uri("_profile", "http://x.org/fhir/StructureDefinitionX"),
    ]),
    ("Observation", "o4", datetime(2024, 1, 1), False, [
        # another server's Patient/p1: indexed by URL only (app.indexing.extract._only_ours)
        ref("subject", url="http://other.org/fhir/Patient/p1"),
        tok("code", None, "xyz"), q("value-quantity", 5.0, UCUM, "g", unit="gram", canon=(5.0, "g")),
    ]),
    ("Observation", "o5", datetime(2024, 1, 1), False, [
        ref("subject", url="urn:uuid:abc"), tok("subject:identifier", NHS, "9434765919"),
    ]),
    ("Observation", "o7", datetime(2024, 1, 1), False, [ref("subject", "Patient", "p4")]),
    ("DiagnosticReport", "dr1", datetime(2024, 1, 1), False, [
        ref("subject", "Patient", "p1"), ref("result", "Observation", "o1"), tok("code", None, "dr-x"),
    ]),
    ("DiagnosticReport", "dr2", datetime(2024, 1, 1), False, [ref("result", "Observation", "o2")]),
    ("RiskAssessment", "ra1", datetime(2024, 1, 1), False, [num("probability", 0.85)]),
    ("RiskAssessment", "ra2", datetime(2024, 1, 1), False, [num("probability", 0.5)]),
    ("RiskAssessment", "ra3", datetime(2024, 1, 1), False, [num("probability", 5.4)]),
    ("RiskAssessment", "ra4", datetime(2024, 1, 1), False, [num("probability", 100.0)]),
    # as many digits as a double holds (Synthea writes values so): its own literal must find it
    ("RiskAssessment", "ra5", datetime(2024, 1, 1), False, [num("probability", 185.24786084320948)]),
]


@pytest.fixture(scope="module")
def db(engine):
    with engine.begin() as conn:
        for rid, (rtype, rid_, lu, deleted, rows) in enumerate(DATA, start=1):
            conn.execute(insert(resource).values(rid=rid, res_type=rtype, res_id=rid_, version=1,
                                                 last_updated=lu, deleted=deleted))
            for kind, row in rows:
                conn.execute(insert(INDEX_TABLES[kind]).values(
                    rid=rid, res_type=rtype, **{"grp": None, **row}))
    return engine


def ids(engine, res_type, params):
    req = parse(res_type, params, REGISTRY, strict=True, base_url=BASE, tz=LONDON)
    with engine.connect() as conn:
        return {r.res_id for r in conn.execute(compile_search(req, REGISTRY))}


P, OBS = "Patient", "Observation"
CASES = [
    # string
    (P, [("name", "smi")], {"p1"}),
    (P, [("name", "ZOE")], {"p1"}),
    (P, [("name", "zoë")], {"p1"}),
    (P, [("name", "sean")], {"p2"}),
    (P, [("name:exact", "Smith")], {"p1"}),
    (P, [("name:exact", "smith")], set()),
    (P, [("name:contains", "brie")], {"p2"}),
    (P, [("name", "100%_")], {"p3"}),
    (P, [("name", "100%x")], set()),
    (P, [("name", "1_0")], set()),
    (P, [("name:contains", "%")], {"p3"}),
    (P, [("name", "smith,jones,sean")], {"p1", "p2"}),
    (P, [("name", "smith"), ("name", "zoe")], {"p1"}),
    (P, [("name", "smith"), ("name", "sean")], set()),
    (P, [("name", "'; DROP TABLE resource; --")], set()),
    # token
    (P, [("identifier", f"{NHS}|9434765919")], {"p1"}),
    (P, [("identifier", "9434765919")], {"p1"}),
    (P, [("identifier", "|abc")], {"p3"}),
    (P, [("identifier", "|9434765919")], set()),
    (P, [("identifier", f"{NHS}|")], {"p1", "p2"}),
    (P, [("identifier", f"{NHS}|1111111111,|abc")], {"p2", "p3"}),
    (P, [("gender:not", "male")], {"p1", "p3"}),
    (P, [("gender:missing", "true")], {"p3"}),
    (P, [("gender:missing", "false")], {"p1", "p2"}),
    (P, [("identifier:of-type", f"{V2}|MR|m1")], {"p1"}),
    (P, [("identifier:of-type", f"{V2}|MR|m2")], set()),
    (OBS, [("code:text", "systolic")], {"o1"}),
    (OBS, [("code:text", "blood")], set()),
    (P, [("_id", "p1,p2,p4")], {"p1", "p2"}),
    (P, [("_id", "p1"), ("name", "sean")], set()),
    # date (birthdate: p1 1980-05-17, p2 1980, p3 none)
    (P, [("birthdate", "1980-05-17")], {"p1"}),
    (P, [("birthdate", "1980")], {"p1", "p2"}),
    (P, [("birthdate", "1980-05")], {"p1"}),
    (P, [("birthdate", "ne1980-05")], {"p2"}),
    (P, [("birthdate", "gt1980-05")], {"p2"}),
    (P, [("birthdate", "lt1980-05")], {"p2"}),
    (P, [("birthdate", "ge1980-05-17")], {"p1", "p2"}),
    (P, [("birthdate", "le1980-05-17")], {"p1", "p2"}),
    (P, [("birthdate", "gt1980-05-17")], {"p2"}),
    (P, [("birthdate", "sa1979")], {"p1", "p2"}),
    (P, [("birthdate", "sa1980-01")], {"p1"}),
    (P, [("birthdate", "eb1981")], {"p1", "p2"}),
    (P, [("birthdate", "eb1980-06")], {"p1"}),
    (P, [("birthdate", "gt1981")], set()),
    (P, [("birthdate", "ap1980-05-17")], {"p1", "p2"}),
    (P, [("birthdate", "1980-05-17T00:30:00+01:00")], set()),  # a point inside the day: not eq
    (OBS, [("date", "2020")], {"o1", "o2"}),
    (OBS, [("date", "2020-07-01")], {"o1"}),
    (OBS, [("date", "2020-07-01T11:00:00+01:00")], {"o1"}),
    (OBS, [("date", "gt2020-07-01")], {"o2", "o3"}),
    (OBS, [("date", "sa2020-07-01")], {"o3"}),
    (OBS, [("date", "ap2020-07-01T10:00:00Z")], {"o1", "o2"}),
    (OBS, [("date", "ge2020"), ("date", "lt2024")], {"o1", "o2", "o3"}),
    # ge/le carry an implied, index-usable bound (ge: high >= start, le: low <= end); edges:
    (OBS, [("date", "ge2020-12-31")], {"o3"}),  # o2 ends exactly at the query's end: neither gt nor eq
    (OBS, [("date", "ge2020-07-01")], {"o1", "o2", "o3"}),
    (OBS, [("date", "ge2021")], {"o3"}),
    (OBS, [("date", "le2020-01-01")], set()),  # o2 starts exactly at the query's start
    (OBS, [("date", "le2020-07-01")], {"o1", "o2"}),
    (OBS, [("date", "le2019")], set()),
    (OBS, [("date", "ge2020-07-01T10:00:00Z")], {"o1", "o2", "o3"}),  # a point on the bound
    (OBS, [("date", "le2020-07-01T10:00:00Z")], {"o1", "o2"}),
    (P, [("birthdate", "ge1980-12-31")], set()),  # p2's year ends on the bound
    (P, [("birthdate", "le1980-01-01")], set()),
    (P, [("_lastUpdated", "ge2024-06-01T00:00:00Z")], {"p2", "p3"}),
    (P, [("_lastUpdated", "le2024-01-01T12:00:00Z"), ("_lastUpdated", "ge2024-01-01T12:00:00Z")], {"p1"}),
    (P, [("_lastUpdated", "gt2024-03-01")], {"p2", "p3"}),
    (P, [("_lastUpdated", "2024-01-01")], {"p1"}),
    (P, [("_lastUpdated", "lt2024-01-01T12:00:00Z")], set()),
    (P, [("_lastUpdated", "le2024-01-01T12:00:00Z")], {"p1"}),
    (P, [("_lastUpdated", "2024-01-01T12:00:00Z")], {"p1"}),
    (P, [("_lastUpdated", "ne2024-01-01T12:00:00Z")], {"p2", "p3"}),
    # number (0.85, 0.5, 5.4, 100)
    ("RiskAssessment", [("probability", "5.4")], {"ra3"}),
    ("RiskAssessment", [("probability", "5.40")], {"ra3"}),
    ("RiskAssessment", [("probability", "5")], {"ra3"}),
    ("RiskAssessment", [("probability", "0.8")], set()),
    ("RiskAssessment", [("probability", "0.9")], {"ra1"}),
    ("RiskAssessment", [("probability", "1e2")], {"ra4"}),
    ("RiskAssessment", [("probability", "gt0.5")], {"ra1", "ra3", "ra4", "ra5"}),
    ("RiskAssessment", [("probability", "ge0.5")], {"ra1", "ra2", "ra3", "ra4", "ra5"}),
    ("RiskAssessment", [("probability", "lt1")], {"ra1", "ra2"}),
    ("RiskAssessment", [("probability", "le0.5")], {"ra2"}),
    ("RiskAssessment", [("probability", "ne5.4")], {"ra1", "ra2", "ra4", "ra5"}),
    ("RiskAssessment", [("probability", "ap100")], {"ra4"}),
    ("RiskAssessment", [("probability", "ap0.5")], {"ra2"}),
    ("RiskAssessment", [("probability", "sa5.4")], {"ra4", "ra5"}),
    ("RiskAssessment", [("probability", "185.24786084320948")], {"ra5"}),
    ("RiskAssessment", [("probability", "eq185.24786084320948")], {"ra5"}),
    ("RiskAssessment", [("probability", "ne185.24786084320948")], {"ra1", "ra2", "ra3", "ra4"}),
    ("RiskAssessment", [("probability", "185.2478608432095")], {"ra5"}),
    ("RiskAssessment", [("probability", "185.2478608432")], {"ra5"}),
    ("RiskAssessment", [("probability", "185.24786084322")], set()),
    ("RiskAssessment", [("probability", "le185.24786084320948")], {"ra1", "ra2", "ra3", "ra4", "ra5"}),
    ("RiskAssessment", [("probability", "eb0.85")], {"ra2"}),
    # quantity
    (OBS, [("value-quantity", "120")], {"o1"}),
    (OBS, [("value-quantity", f"5.4|{UCUM}|mmol/L")], {"o2"}),
    (OBS, [("value-quantity", "5.4||mmol/L")], {"o2"}),
    (OBS, [("value-quantity", "5||gram")], {"o4"}),
    (OBS, [("value-quantity", f"5|{UCUM}|g")], {"o3", "o4"}),
    (OBS, [("value-quantity", f"5000|{UCUM}|mg")], {"o3", "o4"}),
    (OBS, [("value-quantity", f"gt4|{UCUM}|g")], {"o3", "o4"}),
    (OBS, [("value-quantity", f"lt4|{UCUM}|g")], set()),
    (OBS, [("value-quantity", f"0.0054|{UCUM}|mol/L")], {"o2"}),
    (OBS, [("value-quantity", f"540|{UCUM}|umol/dL")], {"o2"}),
    (OBS, [("value-quantity", "120|http://other|mm[Hg]")], set()),
    (OBS, [("value-quantity", "gt100")], {"o1", "o3"}),
    # reference
    (OBS, [("subject", "Patient/p1")], {"o1"}),
    (OBS, [("subject", "p1")], {"o1"}),
    (OBS, [("subject", f"{BASE}/Patient/p1")], {"o1"}),
    (OBS, [("subject", "http://other.org/fhir/Patient/p1")], {"o4"}),
    (OBS, [("subject", "urn:uuid:abc")], {"o5"}),
    (OBS, [("subject:Group", "g1")], {"o3"}),
    (OBS, [("subject:Patient", "g1")], set()),
    (OBS, [("subject", "Patient/p1,Group/g1")], {"o1", "o3"}),
    (OBS, [("patient:missing", "true")], {"o2", "o3", "o4", "o5", "o7"}),
    (OBS, [("patient:missing", "false")], {"o1"}),
    (OBS, [("subject:identifier", f"{NHS}|9434765919")], {"o5"}),
    # chains
    (OBS, [("subject:Patient.name", "zoe")], {"o1"}),
    (OBS, [("subject:Patient.name", "smith")], {"o1"}),  # o7's target p4 is deleted
    (OBS, [("subject.identifier", f"{NHS}|1111111111")], {"o2"}),
    (OBS, [("patient.general-practitioner.name", "leeds")], {"o1"}),
    (OBS, [("patient.general-practitioner:Practitioner.name", "leeds")], set()),
    (OBS, [("subject:Patient.gender:not", "male")], {"o1"}),
    ("DiagnosticReport", [("result.code", f"{LOINC}|8480-6")], {"dr1"}),
    ("DiagnosticReport", [("result.subject:Patient.name", "sean")], {"dr2"}),
    # reverse chains
    (P, [("_has:Observation:subject:code", f"{LOINC}|8480-6")], {"p1"}),
    (P, [("_has:Observation:patient:status", "final")], {"p1"}),
    (P, [("_has:Observation:subject:status", "amended,final")], {"p1", "p2"}),
    (P, [("_has:Observation:subject:_has:DiagnosticReport:result:code", "dr-x")], {"p1"}),
    (P, [("_has:Observation:subject:status:not", "final")], {"p2"}),  # p1: o1 is final (o4 is not about p1)
    (P, [("_has:Observation:subject:code:missing", "true")], set()),
    (P, [("_has:Observation:subject:patient:missing", "true")], {"p2"}),
    # uri
    (OBS, [("_profile", "http://x.org/fhir/StructureDefinition/bp")], {"o1"}),
    (OBS, [("_profile:below", "http://x.org/fhir/StructureDefinition/bp")], {"o1", "o2"}),
    (OBS, [("_profile:below", "http://x.org/fhir/StructureDefinition")], {"o1", "o2"}),
    (OBS, [("_profile:above", "http://x.org/fhir/StructureDefinition/bp/child/_history/2")], {"o1", "o2"}),
    (OBS, [("_profile:above", "http://x.org/fhir/StructureDefinition/bp")], {"o1"}),
    # composite
    (OBS, [("code-value-quantity", f"{LOINC}|8480-6$120")], {"o1"}),
    (OBS, [("code-value-quantity", f"{LOINC}|8480-6$gt100")], {"o1"}),
    (OBS, [("code-value-quantity", f"{LOINC}|2345-7$120")], set()),
    (OBS, [("code-value-quantity", f"{LOINC}|2345-7$5.4|{UCUM}|mmol/L")], {"o2"}),
    (OBS, [("component-code-value-quantity", "8480-6$80")], set()),
    (OBS, [("component-code-value-quantity", "8462-4$80")], {"o3"}),
    (OBS, [("component-code-value-quantity", "8480-6$80,8462-4$80")], {"o3"}),
    (OBS, [("code-value-quantity:missing", "true")], {"o3", "o4", "o5", "o7"}),
]


@pytest.mark.parametrize("res_type,params,expected", CASES,
                         ids=[f"{c[0]}?{'&'.join(k + '=' + v for k, v in c[1])}" for c in CASES])
def test_search(db, res_type, params, expected):
    assert ids(db, res_type, params) == expected


def test_hostile_value_left_tables_alone(db):
    ids(db, P, [("name", "x'); DELETE FROM resource; --")])
    assert "resource" in inspect(db).get_table_names()
    with db.connect() as conn:
        assert len(conn.execute(select(resource.c.rid)).all()) == len(DATA)


def test_compartment_rewrite(db):
    for res_type, params, expected in [
        (OBS, [], {"o1"}),  # not o4: it is about another server's Patient/p1
        (OBS, [("code", f"{LOINC}|8480-6")], {"o1"}),
        (P, [], {"p1"}),
        ("Organization", [], set()),
    ]:
        req = parse(res_type, params, REGISTRY, strict=True)
        tree = restrict_to_compartment(req.tree(), "p1", REGISTRY, res_type)
        with db.connect() as conn:
            got = {r.res_id for r in conn.execute(compile_tree(res_type, tree))}
        assert got == expected, (res_type, params)


def test_find_matches(db):
    with db.connect() as conn:
        rows = find_matches(conn, REGISTRY, P, [("identifier", f"{NHS}|9434765919")])
        assert [(r.res_id, r.version) for r in rows] == [("p1", 1)]
        rows = find_matches(conn, REGISTRY, P, [("identifier", f"{NHS}|")])
        assert len(rows) == 2
        rows = find_matches(conn, REGISTRY, P, [("name", "smith,sean,100")], limit=5)
        assert [r.res_id for r in rows] == ["p1", "p2", "p3"]
        assert find_matches(conn, REGISTRY, P, [("name", "nobody")]) == []
        with pytest.raises(FhirError) as ei:
            find_matches(conn, REGISTRY, P, [("nonsense", "1")])
        assert ei.value.status == 400
        with pytest.raises(FhirError):
            find_matches(conn, REGISTRY, P, [("_count", "1")])
        with pytest.raises(FhirError):
            find_matches(conn, REGISTRY, P, [("birthdate", "notadate")])

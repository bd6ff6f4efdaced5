"""Search over rows produced by the real registry and indexer (app.indexing), on both databases.

Why: the direct-row tests pin the semantics; these check that the indexer's row conventions and
the search compilers agree (param names, composite numbering, normalisation, UCUM).
"""

from __future__ import annotations

from datetime import datetime

import pytest
from sqlalchemy import insert

from app.search import find_matches
from app.storage.tables import INDEX_TABLES, resource

NHS = "https://fhir.nhs.uk/Id/nhs-number"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"

RESOURCES = [
    {"resourceType": "Patient", "id": "pa", "birthDate": "1980-05-17",
     "identifier": [{"system": NHS, "value": "9434765919"}],
     "name": [{"family": "Smith", "given": ["Zoë"]}]},
    {"resourceType": "Patient", "id": "pb", "identifier": [{"system": NHS, "value": "4010232137"}],
     "name": [{"family": "Jones"}]},
    {"resourceType": "Observation", "id": "oa", "status": "final",
     "code": {"coding": [{"system": LOINC, "code": "2345-7"}], "text": "Glucose"},
     "subject": {"reference": "Patient/pa"}, "effectiveDateTime": "2020-07-01T10:00:00Z",
     "valueQuantity": {"value": 90, "unit": "mg/dL", "system": UCUM, "code": "mg/dL"}},
    {"resourceType": "Observation", "id": "ob", "status": "final",
     "code": {"coding": [{"system": LOINC, "code": "85354-9"}]},
     "subject": {"reference": "Patient/pb"},
     "component": [
         {"code": {"coding": [{"system": LOINC, "code": "8480-6"}]},
          "valueQuantity": {"value": 120, "system": UCUM, "code": "mm[Hg]"}},
         {"code": {"coding": [{"system": LOINC, "code": "8462-4"}]},
          "valueQuantity": {"value": 80, "system": UCUM, "code": "mm[Hg]"}}]},
]


@pytest.fixture(scope="module")
def registry():
    from app.indexing import load_registry
    from config import RESULTS_RESOURCE_TYPES

    return load_registry(RESULTS_RESOURCE_TYPES)


@pytest.fixture(scope="module")
def db(engine, registry):
    from app.indexing import extract

    with engine.begin() as conn:
        for rid, res in enumerate(RESOURCES, start=1):
            conn.execute(insert(resource).values(
                rid=rid, res_type=res["resourceType"], res_id=res["id"], version=1,
                last_updated=datetime(2024, 1, 1), deleted=False))
            for kind, rows in extract(registry, res).items():
                for row in rows:
                    conn.execute(insert(INDEX_TABLES[kind]).values(
                        rid=rid, res_type=res["resourceType"], **row))
    return engine


CASES = [
    ("Patient", [("identifier", f"{NHS}|9434765919")], ["pa"]),
    ("Patient", [("identifier", f"{NHS}|")], ["pa", "pb"]),
    ("Patient", [("name", "zoe")], ["pa"]),
    ("Patient", [("family:exact", "Smith"), ("birthdate", "1980-05-17")], ["pa"]),
    ("Patient", [("_has:Observation:subject:code", f"{LOINC}|2345-7")], ["pa"]),
    ("Observation", [("subject:Patient.identifier", f"{NHS}|9434765919")], ["oa"]),
    ("Observation", [("patient", "Patient/pb")], ["ob"]),
    ("Observation", [("code:text", "gluc")], ["oa"]),
    ("Observation", [("date", "2020-07-01")], ["oa"]),
    ("Observation", [("value-quantity", f"0.9|{UCUM}|g/L")], ["oa"]),
    ("Observation", [("value-quantity", f"90|{UCUM}|mg/dL")], ["oa"]),
    ("Observation", [("code-value-quantity", f"{LOINC}|2345-7$gt80")], ["oa"]),
    ("Observation", [("component-code-value-quantity", f"{LOINC}|8480-6$120")], ["ob"]),
    ("Observation", [("component-code-value-quantity", f"{LOINC}|8480-6$80")], []),
]


@pytest.mark.parametrize("res_type,params,expected", CASES)
def test_find_matches_over_indexer_rows(db, registry, res_type, params, expected):
    with db.connect() as conn:
        rows = find_matches(conn, registry, res_type, params, limit=10)
    assert [r.res_id for r in rows] == expected

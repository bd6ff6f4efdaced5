"""The framework-free core on a real database (SQLite and PostgreSQL): a change's audit rows
share the change's transaction; read records commit on their own; rows render as BALP
AuditEvents; patients are found in bodies without parsing them."""

from __future__ import annotations

import pytest
from sqlalchemy import create_engine, func, select

from app.audit.events import AuditRecord, Who, outcome_for
from app.audit.patients import patients_in
from app.audit.query import Access, read, search
from app.audit.recorder import Recorder
from app.audit.store import store
from app.audit.tables import audit_event, audit_patient
from app.db import unit_of_work


@pytest.fixture(scope="module")
def engine(database_url):
    from app.db.engine import make_engine

    e = make_engine(database_url)
    yield e
    e.dispose()


def _count(engine, request_id: str) -> int:
    with engine.connect() as c:
        return c.execute(select(func.count()).select_from(audit_event)
                         .where(audit_event.c.request_id == request_id)).scalar_one()


def test_a_change_record_rolls_back_with_its_change(engine):
    rec = Recorder("rb-1", lambda: Who(client_id="c1"))
    with pytest.raises(RuntimeError):
        with unit_of_work(engine, write=True) as conn:
            rec.changed(conn, "create", "Observation", "o1", 1, {"subject": {"reference": "Patient/p1"}}, 201)
            raise RuntimeError("the change fails after its record was written")
    assert _count(engine, "rb-1") == 0
    with unit_of_work(engine, write=True) as conn:
        rec.changed(conn, "create", "Observation", "o1", 1, {"subject": {"reference": "Patient/p1"}}, 201)
    assert _count(engine, "rb-1") == 1
    with engine.connect() as c:
        eid = c.execute(select(audit_event.c.id).where(audit_event.c.request_id == "rb-1")).scalar_one()
        assert c.execute(select(audit_patient.c.patient_id).where(audit_patient.c.event_id == eid)).scalars().all() == ["p1"]


@pytest.mark.parametrize("synchronous", [False, True])
def test_read_records_commit_on_their_own(engine, database_url, synchronous):
    rid = f"rd-{synchronous}"
    recs = [AuditRecord("rest", "read", "R", 0, rid, Who(client_id="c2"), status=200, entity="Patient/p2",
                        patients={"p2", "p3"})]
    store(engine, recs, synchronous=synchronous)
    other = create_engine(database_url)  # another connection sees it at once
    try:
        with other.connect() as c:
            assert c.execute(select(func.count()).select_from(audit_patient)
                             .join(audit_event, audit_event.c.id == audit_patient.c.event_id)
                             .where(audit_event.c.request_id == rid)).scalar_one() == 2
    finally:
        other.dispose()
    store(engine, [AuditRecord("rest", "read", "R", 0, rid + "b"), AuditRecord("rest", "read", "R", 4, rid + "b")])
    assert _count(engine, rid + "b") == 2


@pytest.mark.parametrize("together", [1, 2])
def test_patient_ids_are_data_whatever_their_characters(engine, together):
    """Ids a refused request named are written as they came (up to 64 characters), one record
    alone (one statement) or two at once (a transaction)."""
    odd = {'a"b', "c\\d", "e,f", "{g}", "NULL", "h i", "x" * 70}
    rid = f"odd-{together}"
    store(engine, [AuditRecord("rest", "search-type", "E", 4, rid, Who(client_id="c3"), status=400, patients=odd)
                   for _ in range(together)])
    with engine.connect() as c:
        got = c.execute(select(audit_patient.c.patient_id)
                        .join(audit_event, audit_event.c.id == audit_patient.c.event_id)
                        .where(audit_event.c.request_id == rid)).scalars().all()
    assert sorted(got) == sorted(sorted(p[:64] for p in odd) * together)


def test_render_and_query(engine):
    import orjson

    who = Who(client_id="app-9", fhir_user="Practitioner/d9", token_id="abcd", scope="user/*.rs", source_ip="10.0.0.9",
              purpose="BTG")
    store(engine, [AuditRecord("rest", "search-type", "E", 0, "rq-1", who, status=200, res_type="Observation",
                               query="subject=Patient/p9,Patient/p8", patients={"p9", "p8"})])
    with engine.connect() as c:
        body = orjson.loads(search(c, [("agent", "Practitioner/d9")], Access(None), base_url="http://x/fhir",
                                   secret="s", caller="t", default_count=10, max_count=100))
    ev = body["entry"][0]["resource"]
    assert ev["subtype"][0] == {"system": "http://hl7.org/fhir/restful-interaction", "code": "search-type",
                                "display": "search-type"}
    assert ev["purposeOfEvent"][0]["coding"][0]["code"] == "BTG"
    assert ev["meta"]["profile"] == ["https://profiles.ihe.net/ITI/BALP/StructureDefinition/IHE.BasicAudit.Query"]
    # a patient's view of the same event: only that patient, no query, no address
    with engine.connect() as c:
        mine = orjson.loads(read(c, ev["id"], Access(frozenset({"p9"})), "http://x/fhir"))
        assert [e["what"]["reference"] for e in mine["entity"] if e.get("role", {}).get("code") == "1"] == ["Patient/p9"]
        assert not any(e.get("role", {}).get("code") == "24" for e in mine["entity"])
        from app.fhir.errors import FhirError

        with pytest.raises(FhirError) as err:
            read(c, ev["id"], Access(frozenset({"p7"})), "http://x/fhir")
        assert err.value.status == 404


def test_outcome_codes():
    assert [outcome_for(s) for s in (200, 201, 204, 400, 401, 403, 404, 409, 412, 422, 429, 500, 503)] == \
        [0, 0, 0, 4, 8, 8, 4, 4, 4, 4, 4, 12, 12]


def test_patients_in_bodies():
    body = (b'{"resourceType":"Bundle","entry":[{"fullUrl":"http://h/fhir/Patient/a1","resource":{}},'
            b'{"resource":{"subject":{"reference":"Patient/a2"},"x":{"reference": "http://h/fhir/Patient/a3/_history/4"},'
            b'"note":[{"text":"Patient/a4 said"}],"y":{"reference":"RelatedPerson/Patient/a5"},'
            b'"z":{"reference":"OtherPatient/a6"}}}]}')
    assert patients_in(body) == {"a1", "a2", "a3", "a5"}
    ndjson = b'{"resourceType":"Patient","id":"n1"}\n{"resourceType":"Observation","subject":{"reference":"Patient/n2"}}\n'
    assert patients_in(ndjson, ndjson=True) == {"n1", "n2"}
    assert patients_in(None) == set() and patients_in(b"{}") == set()


def _ref(p: str) -> str:
    return f'{{"reference":"{p}"}}'


@pytest.mark.parametrize(("parts", "expected"), [
    ([_ref("Patient/p1")] * 30, {"p1"}),  # one patient's page
    (['{"text":"Patient/p1 said"}'] + [_ref("Patient/p1")] * 3, {"p1"}),  # first mention in text
    (['{"text":"Patient/p1"}'], set()),  # only in text: a whole string, but not a reference
    ([_ref("Patient/p1"), _ref("Patient/p1/_history/2"), _ref("Patient/p1")], {"p1"}),
    ([_ref("Patient/p1")] * 5 + [_ref("Patient/p2")], {"p1", "p2"}),  # a second patient, last
    ([_ref("Patient/abc"), _ref("Patient/abcd")], {"abc", "abcd"}),  # an id that extends another
    ([_ref("Patient/abc"), _ref("Patient/abc.d")], {"abc", "abc.d"}),
    ([_ref("OtherPatient/p1"), _ref("Patient/p2")], {"p2"}),
    ([_ref("Patient/" + "x" * 65), _ref("Patient/p3")], {"p3"}),  # too long to be an id
])
def test_patients_in_one_or_several_patients_pages(parts, expected):
    """A page of one patient is recognised by counting; anything else is matched one by one:
    the same answer either way."""
    body = ('{"entry":[' + ",".join(parts) + "]}").encode()
    assert patients_in(body) == expected

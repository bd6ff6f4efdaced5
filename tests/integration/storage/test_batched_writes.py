"""The set-based write path (issue 2 performance) keeps the write rules, on SQLite and PostgreSQL.

A transaction prefetches its targets' current rows in one query, takes row ids for its creates in
one more (PostgreSQL), buffers every row and writes them in ``flush()`` (``COPY`` on PostgreSQL).
These tests hold it to the same behaviour as the row-at-a-time path: all or nothing, referential
integrity, unchanged PUT = no new version, the unique constraint as referee (409).
"""

from __future__ import annotations

import uuid
from datetime import datetime

import orjson
import pytest
from sqlalchemy import func, select, text

from app.db import unit_of_work
from app.fhir.errors import FhirError
from app.interactions.bundle import transaction
from app.interactions.context import from_app
from app.storage.repository import Head, VersionConflict
from app.storage.tables import INDEX_TABLES, ref_link, resource, resource_version

COUNTED = (resource, resource_version, ref_link, *INDEX_TABLES.values())


@pytest.fixture(scope="module")
def ctx(app):
    return from_app(app, "http://test.example/fhir")


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def urn() -> str:
    return f"urn:uuid:{uuid.uuid4()}"


def counts(ctx) -> dict[str, int]:
    with ctx.engine.connect() as c:
        return {t.name: c.execute(select(func.count()).select_from(t)).scalar_one() for t in COUNTED}


def patient(pid: str, family: str = "Smith") -> dict:
    return {"resourceType": "Patient", "id": pid, "name": [{"family": family}], "gender": "female"}


def practitioner(pid: str) -> dict:
    return {"resourceType": "Practitioner", "id": pid, "name": [{"family": "Jones"}]}


def observation(subject: str, performer: str | None = None, value: float = 13.1) -> dict:
    obs = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "718-7"}]},
        "subject": {"reference": subject},
        "effectiveDateTime": "2024-03-31T01:30:00+01:00",
        "valueQuantity": {"value": value, "unit": "g/dL", "system": "http://unitsofmeasure.org", "code": "g/dL"},
    }
    if performer:
        obs["performer"] = [{"reference": performer}]
    return obs


def put(res: dict) -> dict:
    return {"resource": res, "request": {"method": "PUT", "url": f"{res['resourceType']}/{res['id']}"}}


def post(res: dict, full_url: str | None = None) -> dict:
    e: dict = {"resource": res, "request": {"method": "POST", "url": res["resourceType"]}}
    if full_url:
        e["fullUrl"] = full_url
    return e


def run(ctx, entries: list[dict], representation: bool = False) -> list[dict]:
    result = transaction(ctx, {"resourceType": "Bundle", "type": "transaction", "entry": entries}, representation)
    assert result.status == 200
    return orjson.loads(result.body)["entry"]


def versions_of(ctx, res_type: str, res_id: str) -> list[int]:
    with ctx.engine.connect() as c:
        return list(
            c.execute(
                select(resource_version.c.version)
                .where(resource_version.c.res_type == res_type, resource_version.c.res_id == res_id)
                .order_by(resource_version.c.version)
            ).scalars()
        )


def seed(ctx) -> tuple[str, str, str]:
    """A patient, a second patient and a practitioner, stored at version 1."""
    p1, p2, pr = uid("p"), uid("p"), uid("pr")
    run(ctx, [put(patient(p1)), put(patient(p2, "Brown")), put(practitioner(pr))])
    return p1, p2, pr


def test_many_entries_unchanged_changed_created_and_linked(ctx):
    p1, p2, pr = seed(ctx)
    before = counts(ctx)
    new_patient = uid("p")
    pat_url, obs_url = urn(), urn()
    entries = [
        put(patient(p1)),  # unchanged: no new version
        put(patient(p2, "Green")),  # changed: version 2
        put(practitioner(pr)),  # unchanged
        {**put(patient(new_patient, "New")), "fullUrl": pat_url},  # update-as-create
        post(observation(pat_url, f"Practitioner/{pr}"), obs_url),
        post(
            {
                "resourceType": "DiagnosticReport",
                "status": "final",
                "code": {"coding": [{"system": "http://loinc.org", "code": "58410-2"}]},
                "subject": {"reference": f"Patient/{p1}"},
                "result": [{"reference": obs_url}],
            }
        ),
    ]
    entries += [post(observation(f"Patient/{p1}", value=float(i))) for i in range(60)]
    out = run(ctx, entries)

    statuses = [e["response"]["status"] for e in out]
    assert statuses[:4] == ["200 OK", "200 OK", "200 OK", "201 Created"]
    assert set(statuses[4:]) == {"201 Created"}
    assert out[0]["response"]["etag"] == 'W/"1"' and out[2]["response"]["etag"] == 'W/"1"'
    assert out[1]["response"]["etag"] == 'W/"2"'
    assert "resource" not in out[0]  # no representation asked for
    assert versions_of(ctx, "Patient", p1) == [1]
    assert versions_of(ctx, "Practitioner", pr) == [1]
    assert versions_of(ctx, "Patient", p2) == [1, 2]

    after = counts(ctx)
    assert after["resource"] - before["resource"] == 63  # 1 patient, 61 observations, 1 report
    assert after["resource_version"] - before["resource_version"] == 64  # + version 2 of p2
    # links: obs -> new patient and practitioner; report -> p1 and obs; 60 obs -> p1
    assert after["ref_link"] - before["ref_link"] == 2 + 2 + 60
    with ctx.engine.connect() as c:
        obs_id = out[4]["response"]["location"].split("/")[1]
        report_rid = c.execute(
            select(resource.c.rid).where(resource.c.res_type == "DiagnosticReport", resource.c.res_id == out[5]["response"]["location"].split("/")[1])
        ).scalar_one()
        targets = set(
            c.execute(select(ref_link.c.target_type, ref_link.c.target_id).where(ref_link.c.rid == report_rid)).all()
        )
        assert targets == {("Patient", p1), ("Observation", obs_id)}
        # the urn:uuid references were stored resolved, and indexed
        stored = orjson.loads(
            c.execute(
                select(resource_version.c.content).where(
                    resource_version.c.res_type == "Observation", resource_version.c.res_id == obs_id
                )
            ).scalar_one()
        )
        assert stored["subject"]["reference"] == f"Patient/{new_patient}"
        assert stored["meta"]["versionId"] == "1"
        ref_rows = c.execute(
            text(
                "SELECT target_type, target_id FROM sp_reference r JOIN resource x ON x.rid = r.rid "
                "WHERE x.res_type = 'Observation' AND x.res_id = :id AND r.param = 'subject'"
            ),
            {"id": obs_id},
        ).all()
        assert [tuple(r) for r in ref_rows] == [("Patient", new_patient)]
        # every index and link row belongs to a stored resource (rids were matched up)
        for t in (*INDEX_TABLES.values(), ref_link):
            orphans = c.execute(
                select(func.count()).select_from(t).where(~t.c.rid.in_(select(resource.c.rid)))
            ).scalar_one()
            assert orphans == 0, t.name


def test_dangling_reference_refuses_the_whole_transaction(ctx):
    p1, p2, pr = seed(ctx)
    before = counts(ctx)
    pat_url = urn()
    entries = [
        put(patient(p1)),  # unchanged
        put(patient(p2, "Changed")),  # would be version 2
        {**put(patient(uid("p"))), "fullUrl": pat_url},  # would be created
        *[post(observation(pat_url, f"Practitioner/{pr}")) for _ in range(30)],
        post(observation(f"Patient/{uid('missing')}")),  # dangling
        *[post(observation(f"Patient/{p1}")) for _ in range(30)],
    ]
    with pytest.raises(FhirError) as err:
        run(ctx, entries)
    assert err.value.status == 422 and err.value.code == "business-rule"
    assert "missing" in err.value.diagnostics
    assert counts(ctx) == before  # nothing at all was written
    assert versions_of(ctx, "Patient", p2) == [1]


def test_unchanged_put_with_representation_returns_the_stored_version(ctx):
    p1, _, _ = seed(ctx)
    with ctx.engine.connect() as c:
        stored = c.execute(
            select(resource_version.c.content).where(
                resource_version.c.res_type == "Patient", resource_version.c.res_id == p1
            )
        ).scalar_one()
    out = run(ctx, [put(patient(p1))], representation=True)
    assert out[0]["response"]["status"] == "200 OK" and out[0]["response"]["etag"] == 'W/"1"'
    assert out[0]["resource"] == orjson.loads(stored)


def test_conditional_patch_in_a_transaction_sees_its_creates(ctx):
    """A conditional entry's search runs after the buffered rows are written."""
    pid = uid("p")
    patch = [{"op": "replace", "path": "/gender", "value": "male"}]
    import base64

    entries = [
        put(patient(pid)),
        {
            "resource": {
                "resourceType": "Binary",
                "contentType": "application/json-patch+json",
                "data": base64.b64encode(orjson.dumps(patch)).decode(),
            },
            "request": {"method": "PATCH", "url": f"Patient?_id={pid}"},
        },
    ]
    out = run(ctx, entries)
    assert out[0]["response"]["status"] == "201 Created"
    assert out[1]["response"]["etag"] == 'W/"2"'


def test_repository_prefetch_head_and_existing(ctx):
    p1, _, _ = seed(ctx)
    new = uid("p")
    with unit_of_work(ctx.engine, write=True) as conn:
        repo = ctx.repo(conn)
        repo.prefetch_heads([("Patient", p1), ("Patient", new)])
        head = repo.head("Patient", p1)
        assert isinstance(head, Head) and head.version == 1 and not head.deleted
        assert repo.head("Patient", new) is None
        repo.reserve_rids(2)  # PostgreSQL: the create's resource row waits for flush()
        stored = repo.create(patient(new), res_id=new, method="PUT")
        assert stored.rid is not None and stored.version == 1
        # known without a flush, then read back (flushing) once asked for its head
        assert repo.existing({("Patient", new), ("Patient", p1), ("Patient", "nobody")}) == {
            ("Patient", new),
            ("Patient", p1),
        }
        again = repo.head("Patient", new)
        assert again is not None and again.rid == stored.rid and again.version == 1
        updated = repo.update(head, patient(p1, "Other"), p1)
        assert updated.version == 2
        assert repo.head("Patient", p1).version == 2  # not the prefetched version 1
        current = repo.current(repo.head("Patient", p1), "Patient", p1, with_content=False)
        assert current.version == 2 and current.content is None
        current = repo.current(repo.head("Patient", p1), "Patient", p1)
        assert orjson.loads(current.content)["name"] == [{"family": "Other"}]
        conn.rollback()


def test_a_concurrent_create_of_the_same_id_is_a_conflict(ctx):
    """The unique (type, id) constraint referees creates whose head said 'absent': on
    PostgreSQL the row is written in flush(), which answers 409; SQLite inserts at once."""
    pid = uid("p")
    run(ctx, [put(patient(pid))])
    before = counts(ctx)
    with pytest.raises((FhirError, VersionConflict)) as err:
        with unit_of_work(ctx.engine, write=True) as conn:
            repo = ctx.repo(conn)
            repo.reserve_rids(2)  # a transaction's creates: PostgreSQL writes the row in flush()
            repo.create(patient(pid, "Late"), res_id=pid, method="PUT")  # as if head() had said None
            repo.flush()
    if ctx.engine.dialect.name == "postgresql":
        assert isinstance(err.value, FhirError)
    if isinstance(err.value, FhirError):
        assert err.value.status == 409 and err.value.code == "conflict"
        assert f"Patient/{pid}" in err.value.diagnostics
    assert counts(ctx) == before


def test_a_lone_create_conflicts_at_once(ctx):
    pid = uid("p")
    run(ctx, [put(patient(pid))])
    with pytest.raises(VersionConflict):
        with unit_of_work(ctx.engine, write=True) as conn:
            ctx.repo(conn).create(patient(pid, "Late"), res_id=pid, method="PUT")


TRICKY = [
    "tab\there",
    "new\nline and carriage\rreturn",
    "back\\slash \\N not null",
    "quote \" and comma, semicolon;",
    "unicode: Zoë Ærø 日本 \U0001f9ea",
    "",
]


def _rows_without_ids(conn, rid: int) -> dict[str, list[tuple]]:
    out = {}
    for kind, t in INDEX_TABLES.items():
        cols = [c for c in t.columns if c.name not in ("rid", "res_type")]
        out[kind] = sorted(
            (tuple(r) for r in conn.execute(select(*cols).where(t.c.rid == rid)).all()), key=repr
        )
    return out


def test_fast_paths_store_what_sqlalchemy_stores(ctx):
    """Rows go in with COPY (PostgreSQL) or the driver's executemany with SQLAlchemy's bind
    processors (SQLite); they must equal what SQLAlchemy's own INSERT stores: escaping of tabs,
    newlines, backslashes, NULLs, unicode; floats; booleans; naive UTC timestamps."""
    body = {
        "resourceType": "Patient",
        "name": [{"family": s, "given": [s + "x"]} for s in TRICKY],
        # no system: the same body is stored twice, and two Patients cannot share a system|value
        # identifier (docs/decisions/0009)
        "identifier": [{"value": s or "empty"} for s in TRICKY],
        "birthDate": "1970-03-29",
        "address": [{"line": TRICKY, "city": "Leeds"}],
        "extension": [{"url": "http://example.org/x", "valueDecimal": 0.1}],
    }
    a, b = uid("copy"), uid("insert")
    with unit_of_work(ctx.engine, write=True) as conn:
        fast = ctx.repo(conn)
        slow = ctx.repo(conn)
        fast.copy_min_rows = 1  # COPY however few rows
        fast.reserve_rids(2)  # and the resource row too
        slow._pg = slow._sqlite = False  # the generic path: INSERT ... RETURNING, executemany
        sa = fast.create(body, res_id=a)
        sb = slow.create(body, res_id=b)
        fast.flush()
        slow.flush()
        got_a, got_b = _rows_without_ids(conn, sa.rid), _rows_without_ids(conn, sb.rid)
        assert any(got_a.values())
        assert got_a == got_b
        va = conn.execute(select(resource_version).where(resource_version.c.rid == sa.rid)).one()
        vb = conn.execute(select(resource_version).where(resource_version.c.rid == sb.rid)).one()
        assert isinstance(va.last_updated, datetime) and va.last_updated == sa.last_updated
        assert orjson.loads(va.content)["name"] == orjson.loads(vb.content)["name"] == body["name"]
        ra = conn.execute(select(resource).where(resource.c.rid == sa.rid)).one()
        assert (ra.version, ra.deleted, ra.content_hash) == (1, False, conn.execute(
            select(resource.c.content_hash).where(resource.c.rid == sb.rid)).scalar_one())
        conn.rollback()


def _index_of(conn, res_type: str, res_id: str) -> tuple[dict[str, list[tuple]], set[tuple]]:
    rid = conn.execute(
        select(resource.c.rid).where(resource.c.res_type == res_type, resource.c.res_id == res_id)
    ).scalar_one()
    links = {tuple(r) for r in conn.execute(select(ref_link.c.target_type, ref_link.c.target_id).where(ref_link.c.rid == rid))}
    return _rows_without_ids(conn, rid), links


def test_updates_in_one_transaction_index_like_a_fresh_write(ctx):
    """Changed PUTs have their index and link rows changed set-based in flush(): afterwards
    each updated resource is indexed exactly as a fresh create of the same content."""
    p1, p2, pr = seed(ctx)
    ids = [uid("o") for _ in range(25)]
    first = [put({**observation(f"Patient/{p1}", f"Practitioner/{pr}", value=float(i)), "id": oid}) for i, oid in enumerate(ids)]
    run(ctx, first)
    # change: value (quantity), subject (reference + link), drop performer (link gone), add a note
    second = [
        put({**observation(f"Patient/{p2}", value=float(i) + 0.5), "id": oid, "note": [{"text": "again"}]})
        for i, oid in enumerate(ids)
    ]
    out = run(ctx, second + [put(patient(p1))])
    assert {e["response"]["etag"] for e in out[:-1]} == {'W/"2"'} and out[-1]["response"]["etag"] == 'W/"1"'
    fresh = [uid("f") for _ in ids]
    run(ctx, [put({**b["resource"], "id": fid}) for b, fid in zip(second, fresh, strict=True)])
    with ctx.engine.connect() as c:
        for oid, fid in zip(ids, fresh, strict=True):
            rows, links = _index_of(c, "Observation", oid)
            want_rows, want_links = _index_of(c, "Observation", fid)
            assert links == want_links == {("Patient", p2)}
            # _id differs by construction; every other row is the same
            drop = lambda rs: {k: [r for r in v if r[0] != "_id"] for k, v in rs.items()}  # noqa: E731
            assert drop(rows) == drop(want_rows), oid


def test_two_updates_of_one_resource_in_a_unit_of_work(ctx):
    pid = uid("p")
    run(ctx, [put(patient(pid, "First"))])
    with unit_of_work(ctx.engine, write=True) as conn:
        repo = ctx.repo(conn)
        s2 = repo.update(repo.head("Patient", pid), patient(pid, "Second"), pid)
        s3 = repo.update(repo.head("Patient", pid), patient(pid, "Third"), pid)
        assert (s2.version, s3.version) == (2, 3)
        repo.flush()
        family = conn.execute(
            text(
                "SELECT s.value FROM sp_string s JOIN resource r ON r.rid = s.rid "
                "WHERE r.res_type = 'Patient' AND r.res_id = :id AND s.param = 'family'"
            ),
            {"id": pid},
        ).scalars().all()
        assert family == ["Third"]

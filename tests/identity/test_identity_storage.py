"""The database is the referee (both back ends): the unique index itself refuses a second
Patient with an identifier even when the application's pre-check is bypassed, its violation
becomes the 409 naming the holder, and set-based flushes handle swaps and same-flush clashes."""

from __future__ import annotations

import pytest
from idhelp import HOSP_A, NHS, nhs_number, patient, uid
from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError

from app.db import unit_of_work
from app.identity import keys
from app.identity.keys import IdentityConflict
from app.interactions.context import from_app
from app.storage.tables import sp_token


@pytest.fixture(scope="module")
def ctx(app):
    return from_app(app, "http://test.example/fhir")


def _create(ctx, body: dict, res_id: str | None = None):
    with unit_of_work(ctx.engine, write=True) as conn:
        repo = ctx.repo(conn)
        stored = repo.create(body, res_id=res_id or uid())
        repo.flush()
    return stored


def test_index_refuses_a_duplicate_row_written_directly(ctx):
    n = nhs_number()
    first = _create(ctx, patient(n))
    second = _create(ctx, patient(None))
    with pytest.raises(IntegrityError), unit_of_work(ctx.engine, write=True) as conn:
        conn.execute(insert(sp_token).values(rid=second.rid, res_type="Patient", param="identifier", system=NHS,
                                             code=n, grp=None))
    # other parameters and other types are not constrained
    with unit_of_work(ctx.engine, write=True) as conn:
        conn.execute(insert(sp_token).values(rid=second.rid, res_type="Patient", param="identifier:of-type",
                                             system=NHS, code=n, grp=None))
        conn.execute(insert(sp_token).values(rid=first.rid, res_type="Observation", param="identifier",
                                             system=NHS, code=n, grp=None))
        conn.rollback()


def test_violation_without_the_precheck_is_409_naming_the_holder(ctx, monkeypatch):
    n = nhs_number()
    holder = _create(ctx, patient(n))
    monkeypatch.setattr(keys, "check_rows", lambda conn, rows: None)  # only the index decides
    with pytest.raises(IdentityConflict) as err:
        _create(ctx, patient(n))
    assert err.value.status == 409 and f"Patient/{holder.res_id}" in err.value.diagnostics
    with unit_of_work(ctx.engine) as conn:  # nothing of the loser was kept
        rows = conn.execute(select(sp_token.c.rid).where(sp_token.c.system == NHS, sp_token.c.code == n)).all()
    assert [r[0] for r in rows] == [holder.rid]


def test_two_patients_claiming_one_identifier_in_one_flush(ctx):
    mrn = uid()
    with pytest.raises(IdentityConflict) as err, unit_of_work(ctx.engine, write=True) as conn:
        repo = ctx.repo(conn)
        repo.reserve_rids(2)  # PostgreSQL: both resource rows wait for the flush too
        a = repo.create(patient(None, mrn=(HOSP_A, mrn)), res_id=uid())
        b = repo.create(patient(None, mrn=(HOSP_A, mrn)), res_id=uid())
        repo.flush()
    assert f"Patient/{a.res_id}" in err.value.diagnostics and f"Patient/{b.res_id}" in err.value.diagnostics


def test_swapping_identifiers_in_one_unit_of_work(ctx):
    x, y = uid(), uid()
    a = _create(ctx, patient(None, mrn=(HOSP_A, x)))
    b = _create(ctx, patient(None, mrn=(HOSP_A, y)))
    with unit_of_work(ctx.engine, write=True) as conn:
        repo = ctx.repo(conn)
        ha, hb = repo.head("Patient", a.res_id), repo.head("Patient", b.res_id)
        repo.update_many([(ha, patient(None, mrn=(HOSP_A, y)), a.res_id), (hb, patient(None, mrn=(HOSP_A, x)), b.res_id)])
        repo.flush()
    with unit_of_work(ctx.engine) as conn:
        got = dict(conn.execute(select(sp_token.c.code, sp_token.c.rid).where(sp_token.c.system == HOSP_A,
                                                                             sp_token.c.code.in_([x, y]))).all())
    assert got == {y: a.rid, x: b.rid}


def test_same_identifier_twice_on_one_patient_is_fine(ctx):
    mrn = uid()
    body = patient(None, mrn=(HOSP_A, mrn))
    body["identifier"].append({"system": HOSP_A, "value": mrn, "use": "official"})
    _create(ctx, body)


def test_loader_reports_a_taken_nhs_number_as_failed_at_once(app, tmp_path):
    """A Bundle file whose Patient's NHS number another Patient holds fails (no retries, no
    deferral) with the 409 naming the holder; the rest of the file's units are unaffected."""
    import orjson

    from app.loader.runner import load_paths

    n = nhs_number()
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:p1", "resource": patient(n), "request": {"method": "POST", "url": "Patient"}}]}
    path = tmp_path / "one.json"
    path.write_bytes(orjson.dumps(bundle))
    first = load_paths(app, [path])
    assert first.ok and first.created == 1
    second = load_paths(app, [path])
    assert not second.ok and second.retried == 0
    reason = second.failed[0].reason
    assert "409 duplicate" in reason and "Patient/" in reason

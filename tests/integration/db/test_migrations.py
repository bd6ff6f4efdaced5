"""Alembic owns the schema: the migrations produce exactly the tables the code declares, on
SQLite and PostgreSQL, and downgrade/upgrade round-trips."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect, select

from app.db.migrate import downgrade, upgrade
from app.storage.tables import metadata


def _diff(url: str) -> list:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return compare_metadata(MigrationContext.configure(conn), metadata)
    finally:
        engine.dispose()


def test_migrated_schema_matches_the_tables(database_url: str) -> None:
    assert _diff(database_url) == []


def test_downgrade_then_upgrade_round_trips(database_url: str) -> None:
    downgrade(database_url, "base")
    engine = create_engine(database_url)
    assert "resource" not in inspect(engine).get_table_names()
    engine.dispose()
    upgrade(database_url)
    assert _diff(database_url) == []


def test_0008_fills_the_date_envelope_of_existing_token_and_reference_rows(database_url: str) -> None:
    """Rows written before 0008 get the same envelope extract() gives new ones."""
    from datetime import datetime

    from sqlalchemy import text

    downgrade(database_url, "0007_bulk_file_patients")
    engine = create_engine(database_url)
    now = datetime(2026, 1, 1)
    try:
        with engine.begin() as c:
            for rid, rtype in ((1, "Observation"), (2, "Patient")):
                c.execute(text("INSERT INTO resource (rid, res_type, res_id, version, last_updated, deleted) "
                               "VALUES (:r, :t, :i, 1, :n, false)"), {"r": rid, "t": rtype, "i": f"x{rid}", "n": now})
                c.execute(text("INSERT INTO sp_token (rid, res_type, param, system, code) VALUES (:r, :t, 'code', 's', 'c')"),
                          {"r": rid, "t": rtype})
                c.execute(text("INSERT INTO sp_reference (rid, res_type, param, target_type, target_id) "
                               "VALUES (:r, :t, 'subject', 'Patient', 'p')"), {"r": rid, "t": rtype})
            for low, high in ((datetime(2010, 1, 2), datetime(2010, 1, 3)), (datetime(2015, 5, 5), datetime(2015, 5, 6))):
                c.execute(text("INSERT INTO sp_date (rid, res_type, param, low, high) VALUES (1, 'Observation', 'date', :l, :h)"),
                          {"l": low, "h": high})
            c.execute(text("INSERT INTO sp_date (rid, res_type, param, low, high) VALUES (1, 'Observation', 'issued', :l, :l)"),
                      {"l": datetime(2030, 1, 1)})  # not the envelope's parameter
        upgrade(database_url)
        with engine.connect() as c:
            from app.storage.tables import sp_reference, sp_token

            got = {r[0]: (r[1], r[2]) for r in c.execute(select(sp_token.c.rid, sp_token.c.date_low, sp_token.c.date_high))}
            refs = {r[0]: (r[1], r[2]) for r in c.execute(
                select(sp_reference.c.rid, sp_reference.c.date_low, sp_reference.c.date_high))}
    finally:
        engine.dispose()
    assert got == refs == {1: (datetime(2010, 1, 2), datetime(2015, 5, 6)), 2: (None, None)}
    assert _diff(database_url) == []


def test_0009_keeps_only_our_own_base_in_absolute_references(database_url: str, monkeypatch) -> None:
    """Rows written before 0009 lose the type/id of another server's URL, as extract() now
    writes them (app.indexing.extract._only_ours); relative, urn: and our own base's rows stay."""
    from datetime import datetime

    from sqlalchemy import text

    from app.storage.tables import sp_reference

    ours = "https://results.example/fhir"
    monkeypatch.setenv("PUBLIC_BASE_URL", ours + "/")
    downgrade(database_url, "0008_date_envelope")
    engine = create_engine(database_url)
    rows = {  # rid: (target_type, target_id, url) as written before, and as expected after
        901: (("Patient", "p", None), ("Patient", "p", None)),
        902: (("Patient", "p", f"{ours}/Patient/p"), ("Patient", "p", f"{ours}/Patient/p")),
        903: (("Patient", "p", "https://other.example/fhir/Patient/p"), (None, None, "https://other.example/fhir/Patient/p")),
        904: (("Patient", "p", "http://results.example/fhir/Patient/p"), (None, None, "http://results.example/fhir/Patient/p")),
        905: (("Patient", "p", f"{ours}x/Patient/p"), (None, None, f"{ours}x/Patient/p")),
        906: ((None, None, "urn:uuid:1"), (None, None, "urn:uuid:1")),
    }
    try:
        with engine.begin() as c:
            for rid, (before, _after) in rows.items():
                c.execute(text("INSERT INTO resource (rid, res_type, res_id, version, last_updated, deleted) "
                               "VALUES (:r, 'Observation', :i, 1, :n, false)"),
                          {"r": rid, "i": f"o{rid}", "n": datetime(2026, 1, 1)})
                c.execute(text("INSERT INTO sp_reference (rid, res_type, param, target_type, target_id, url) "
                               "VALUES (:r, 'Observation', 'subject', :t, :i, :u)"),
                          {"r": rid, "t": before[0], "i": before[1], "u": before[2]})
        upgrade(database_url)
        with engine.connect() as c:
            got = {r[0]: tuple(r[1:]) for r in c.execute(select(
                sp_reference.c.rid, sp_reference.c.target_type, sp_reference.c.target_id, sp_reference.c.url
            ).where(sp_reference.c.rid.in_(list(rows))))}
    finally:
        engine.dispose()
    assert got == {rid: after for rid, (_before, after) in rows.items()}

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

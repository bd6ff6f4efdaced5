"""Alembic owns the schema: the migrations produce exactly the tables the code declares, on
SQLite and PostgreSQL, and downgrade/upgrade round-trips."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect

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

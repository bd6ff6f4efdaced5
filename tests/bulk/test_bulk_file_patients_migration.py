"""Migration 0007_bulk_file_patients: export files recorded before it keep their rows with no
patient set (NULL: the download audit scans them), and it downgrades cleanly; SQLite and
PostgreSQL."""

from __future__ import annotations

from sqlalchemy import create_engine, inspect, text


def _columns(engine) -> set[str]:
    return {c["name"] for c in inspect(engine).get_columns("bulk_file")}


def test_files_from_before_the_migration_have_no_set(database_url: str) -> None:
    from app.bulk.jobs import file_patients
    from app.db.migrate import downgrade, upgrade

    downgrade(database_url, "0006_protect")
    engine = create_engine(database_url)
    try:
        assert "patients" not in _columns(engine)
        with engine.begin() as conn:
            conn.execute(text(
                "INSERT INTO bulk_job (id, client_id, state, level, request_url, params, transaction_time, "
                "created_at, attempts, exported) VALUES ('oldjob', 'c', 'completed', 'system', 'u', '{}', "
                ":t, :t, 1, 1)"), {"t": "2026-11-28 10:00:00"})
            conn.execute(text("INSERT INTO bulk_file (job_id, seq, kind, res_type, name, count, size) "
                              "VALUES ('oldjob', 1, 'output', 'Observation', 'Observation-1.ndjson', 1, 10)"))
        engine.dispose()
        upgrade(database_url)
        assert "patients" in _columns(engine)
        with engine.connect() as conn:
            row = conn.execute(text("SELECT name, patients FROM bulk_file WHERE job_id = 'oldjob'")).one()
        assert tuple(row) == ("Observation-1.ndjson", None)
        assert file_patients(engine, "oldjob", "Observation-1.ndjson") is None  # -> the audit scans the file
        engine.dispose()

        downgrade(database_url, "0006_protect")  # the column goes, the rows stay
        assert "patients" not in _columns(engine)
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM bulk_file WHERE job_id = 'oldjob'")).scalar() == 1
        engine.dispose()
    finally:
        upgrade(database_url)
        engine.dispose()

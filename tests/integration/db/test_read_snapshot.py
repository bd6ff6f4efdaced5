"""Reads that run several statements see one snapshot (app.db.engine.read_snapshot); one-statement
reads run without a transaction (single_read), on read-engine sessions that start in autocommit."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from app.db.engine import make_engine, make_read_engine, read_snapshot, single_read, unit_of_work


@pytest.fixture(scope="module")
def engine(database_url):
    e = make_engine(database_url)
    with unit_of_work(e, write=True) as c:
        c.execute(text("CREATE TABLE snap_t (x INTEGER)"))
        c.execute(text("INSERT INTO snap_t VALUES (1)"))
    yield e
    e.dispose()


def _count(conn) -> int:
    return conn.execute(text("SELECT count(*) FROM snap_t")).scalar_one()


def _commit_one_elsewhere(engine) -> None:
    with unit_of_work(engine, write=True) as other:
        other.execute(text("INSERT INTO snap_t VALUES (2)"))


def test_a_commit_between_the_statements_of_a_snapshot_read_is_not_seen(engine) -> None:
    with read_snapshot(engine) as conn:
        before = _count(conn)
        _commit_one_elsewhere(engine)
        assert _count(conn) == before
    with single_read(engine) as conn:
        assert _count(conn) == before + 1


def test_statements_on_the_driver_share_the_snapshot_too(engine) -> None:
    """Templated searches and includes run on the libpq connection (app.db.wire), not through
    psycopg's cursor: the snapshot transaction must begin for them all the same."""
    if engine.dialect.name != "postgresql":
        pytest.skip("the driver path is PostgreSQL's")
    from app.db.driver import DriverStatement, driver_rows

    count = DriverStatement("SELECT count(*) AS n FROM snap_t", {})
    for e in (engine, make_read_engine(engine, 1000)):
        with read_snapshot(e) as conn:
            before = driver_rows(conn, count, {})[0].n
            _commit_one_elsewhere(engine)
            assert driver_rows(conn, count, {})[0].n == before
            assert _count(conn) == before
        with single_read(e) as conn:
            assert driver_rows(conn, count, {})[0].n == before + 1


def test_read_committed_would_have_seen_it(engine) -> None:
    """Why read_snapshot exists: PostgreSQL's default isolation takes a snapshot per statement."""
    if engine.dialect.name != "postgresql":
        pytest.skip("a SQLite read transaction is a snapshot already")
    with unit_of_work(engine) as conn:
        before = _count(conn)
        _commit_one_elsewhere(engine)
        assert _count(conn) == before + 1


def test_a_snapshot_read_may_not_write(engine) -> None:
    if engine.dialect.name != "postgresql":
        pytest.skip("READ ONLY is PostgreSQL's")
    from sqlalchemy.exc import DBAPIError

    with pytest.raises(DBAPIError, match="read-only"), read_snapshot(engine) as conn:
        conn.execute(text("INSERT INTO snap_t VALUES (3)"))


def test_read_engine_sessions_start_in_autocommit_and_go_back_to_it(engine) -> None:
    read = make_read_engine(engine, 1000)
    if read is None:
        pytest.skip("SQLite reads use the main engine")
    try:
        with single_read(read) as conn:
            assert conn.connection.driver_connection.autocommit
            assert _count(conn) >= 1
        with read_snapshot(read) as conn:
            assert not conn.connection.driver_connection.autocommit
            assert conn.exec_driver_sql("SHOW transaction_isolation").scalar_one() == "repeatable read"
        with read.connect() as conn:  # the same pooled session, back in autocommit
            assert conn.connection.driver_connection.autocommit
            assert conn.exec_driver_sql("SHOW statement_timeout").scalar_one() == "1s"
    finally:
        read.dispose()

"""PostgreSQL pools roll back only connections that come back inside a transaction
(app.db.engine ``_roll_back_leftovers``), instead of SQLAlchemy's rollback for every checkin."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from app.db.engine import make_engine, make_read_engine


@pytest.fixture
def engines(database_url):
    if database_url.startswith("sqlite"):
        pytest.skip("PostgreSQL's pools")
    engine = make_engine(database_url)
    read = make_read_engine(engine, 5000)
    with engine.begin() as c:
        c.execute(text("CREATE TABLE IF NOT EXISTS pool_reset_t (v text)"))
        c.execute(text("DELETE FROM pool_reset_t"))
    yield engine, read
    engine.dispose()


@pytest.mark.parametrize("which", ["main", "read"])
def test_a_connection_returned_inside_a_transaction_is_rolled_back(engines, which) -> None:
    engine = engines[0] if which == "main" else engines[1]
    fairy = engine.raw_connection()
    driver = fairy.driver_connection
    driver.autocommit = False
    pid = driver.info.backend_pid
    driver.execute("INSERT INTO pool_reset_t VALUES ('left behind')")
    assert driver.pgconn.transaction_status != 0
    fairy.close()  # back to the pool mid-transaction
    again = engine.raw_connection()
    try:
        assert again.driver_connection.info.backend_pid == pid  # the same connection, handed out again
        assert again.driver_connection.pgconn.transaction_status == 0
    finally:
        again.close()
    with engines[0].connect() as c:
        assert c.execute(text("SELECT count(*) FROM pool_reset_t")).scalar_one() == 0


def test_idle_connections_go_back_untouched_and_sqlalchemy_transactions_still_end(engines) -> None:
    engine, read = engines
    with engine.connect() as c:
        c.execute(text("INSERT INTO pool_reset_t VALUES ('not committed')"))
        # closed without commit: the Connection rolls its own transaction back
    with engine.begin() as c:
        c.execute(text("INSERT INTO pool_reset_t VALUES ('committed')"))
    with read.connect() as c:
        assert c.execute(text("SELECT v FROM pool_reset_t")).scalars().all() == ["committed"]

"""Statements on the libpq connection (app.db.wire), on a real PostgreSQL: the values and rows
psycopg's cursor gives, prepared once per connection and parameter types, bounded, and the
transaction left to the caller."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import psycopg
import pytest

from app.db import wire


@pytest.fixture
def conn(database_url):
    if database_url.startswith("sqlite"):
        pytest.skip("the wire is PostgreSQL's (libpq under psycopg)")
    url = database_url.replace("postgresql+psycopg://", "postgresql://")
    c = psycopg.connect(url.split("?")[0], autocommit=False)
    yield c
    c.close()


def _prepared(c: psycopg.Connection) -> set[str]:
    with c.cursor() as cur:  # psycopg's own cursor: not one of ours
        cur.execute("SELECT name FROM pg_prepared_statements WHERE name LIKE 'rr\\_%'")
        return {r[0] for r in cur.fetchall()}


@pytest.mark.parametrize(("sql", "params", "expected"), [
    ("SELECT %(a)s::int AS a, %(b)s::text AS b", {"a": 7, "b": "x"}, (7, "x")),
    ("SELECT %(a)s::int + %(a)s::int AS twice", {"a": 4}, (8,)),  # a name used twice: one $1
    ("SELECT 'a%%b' AS pct, %(v)s::text AS v", {"v": "50%"}, ("a%b", "50%")),
    ("SELECT %(t)s::timestamptz AS t", {"t": dt.datetime(2024, 3, 1, 12, tzinfo=dt.UTC)},
     (dt.datetime(2024, 3, 1, 12, tzinfo=dt.UTC),)),
    ("SELECT %(n)s::numeric AS n, %(l)s::varchar[] AS l", {"n": Decimal("1.50"), "l": ["p", "q"]},
     (Decimal("1.50"), ["p", "q"])),
    ("SELECT %(x)s::text AS x", {"x": None}, (None,)),
    ("SELECT 1 AS one WHERE false", {}, None),
])
def test_rows_are_what_psycopgs_cursor_gives(conn, sql, params, expected) -> None:
    got = wire.rows(conn, sql, params)
    with conn.cursor() as cur:
        cur.execute(sql, params)
        theirs = cur.fetchall()
        names = tuple(d.name for d in cur.description)
    assert [tuple(r) for r in got] == theirs
    assert got == ([] if expected is None else [expected])
    if got:
        assert got[0]._fields == names
    conn.rollback()


def test_a_column_name_python_cannot_use_still_loads(conn) -> None:
    [row] = wire.rows(conn, "SELECT 1, 2 AS class, 3 AS ok", {})
    assert tuple(row) == (1, 2, 3) and row.ok == 3


def test_prepared_once_per_connection_and_parameter_types(conn) -> None:
    sql = "SELECT %(v)s::bigint AS v"
    for v in (1, 2, 3):  # psycopg dumps these as int2
        assert wire.rows(conn, sql, {"v": v})[0].v == v
    assert len(_prepared(conn)) == 1
    assert wire.rows(conn, sql, {"v": 2**40})[0].v == 2**40  # int8: another prepared statement
    assert len(_prepared(conn)) == 2


def test_at_most_max_prepared_per_connection(conn, monkeypatch) -> None:
    monkeypatch.setattr(wire, "MAX_PREPARED", 3)
    for i in range(6):
        assert wire.rows(conn, f"SELECT {i} AS i, %(v)s::text AS v", {"v": "x"})[0].i == i
    assert len(_prepared(conn)) == 3
    assert wire.rows(conn, "SELECT 0 AS i, %(v)s::text AS v", {"v": "y"})[0].v == "y"  # prepared again


def test_the_callers_transaction_holds_the_statement(conn) -> None:
    conn.execute("CREATE TEMP TABLE wire_t (v text)")
    conn.commit()
    conn.execute("SELECT 1")  # psycopg begins a transaction
    wire.execute(conn, "INSERT INTO wire_t VALUES (%(v)s)", {"v": "rolled back"})
    conn.rollback()
    assert wire.rows(conn, "SELECT count(*) AS n FROM wire_t", {})[0].n == 0
    conn.rollback()
    conn.autocommit = True  # no transaction: the statement commits by itself
    wire.execute(conn, "INSERT INTO wire_t VALUES (%(v)s)", {"v": "kept"})
    assert conn.pgconn.transaction_status == psycopg.pq.TransactionStatus.IDLE
    assert [r.v for r in wire.rows(conn, "SELECT v FROM wire_t", {})] == ["kept"]


def test_outside_autocommit_the_transaction_psycopg_would_begin_is_begun(conn) -> None:
    conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
    conn.read_only = True
    assert wire.rows(conn, "SHOW transaction_isolation", {})[0].transaction_isolation == "repeatable read"
    assert conn.pgconn.transaction_status == psycopg.pq.TransactionStatus.INTRANS
    assert wire.rows(conn, "SHOW transaction_read_only", {})[0].transaction_read_only == "on"
    with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
        wire.execute(conn, "CREATE TEMP TABLE wire_ro (v text)", {})
    conn.rollback()
    assert conn.pgconn.transaction_status == psycopg.pq.TransactionStatus.IDLE


def test_a_statement_of_its_own_commits_whatever_the_autocommit_setting(conn, database_url) -> None:
    assert not conn.autocommit
    wire.execute(conn, "CREATE TABLE IF NOT EXISTS wire_own (v text)", {}, own_transaction=True)
    wire.execute(conn, "INSERT INTO wire_own VALUES (%(v)s)", {"v": "mine"}, own_transaction=True)
    assert conn.pgconn.transaction_status == psycopg.pq.TransactionStatus.IDLE
    url = database_url.replace("postgresql+psycopg://", "postgresql://").split("?")[0]
    with psycopg.connect(url, autocommit=True) as other:
        assert other.execute("SELECT v FROM wire_own").fetchall() == [("mine",)]
        other.execute("DROP TABLE wire_own")
    conn.execute("SELECT 1")  # now inside a transaction: a statement of its own is refused
    with pytest.raises(psycopg.ProgrammingError):
        wire.execute(conn, "SELECT 1", {}, own_transaction=True)
    conn.rollback()


@pytest.mark.parametrize(("sql", "params", "error"), [
    ("SELECT %(v)s::int AS v", {"v": "abc"}, psycopg.errors.InvalidTextRepresentation),
    ("SELECT * FROM no_such_table_here", {}, psycopg.errors.UndefinedTable),
    ("SELECT pg_sleep(%(s)s)", {"s": 2}, psycopg.errors.QueryCanceled),
])
def test_failures_are_psycopgs_errors_and_the_connection_goes_on(conn, sql, params, error) -> None:
    conn.autocommit = True
    conn.execute("SET statement_timeout = 100")
    with pytest.raises(error):
        wire.rows(conn, sql, params)
    assert wire.rows(conn, "SELECT 1 AS one", {})[0].one == 1


def test_a_lone_percent_is_refused_not_sent(conn) -> None:
    with pytest.raises(ValueError, match="lone"):
        wire.rows(conn, "SELECT 5 % 2 AS m", {})


def test_statements_the_server_forgot_are_prepared_again(conn) -> None:
    sql = "SELECT %(v)s::text AS v"
    conn.autocommit = True
    assert wire.rows(conn, sql, {"v": "a"})[0].v == "a"
    conn.execute("DEALLOCATE ALL")
    assert wire.rows(conn, sql, {"v": "b"})[0].v == "b"  # no transaction: run again
    # psycopg's rollback deallocates everything when it holds prepared statements of its own;
    # the next transaction's first statement is ours: begun again and run
    conn.autocommit = False
    for _ in range(6):  # psycopg prepares a statement it runs a fifth time
        conn.execute("SELECT %s::int", (1,))
    conn.rollback()
    assert wire.rows(conn, sql, {"v": "c"})[0].v == "c"
    assert conn.pgconn.transaction_status == psycopg.pq.TransactionStatus.INTRANS
    conn.rollback()
    # inside a transaction with work of its own before: the failure aborts it and is reported
    assert wire.rows(conn, sql, {"v": "d"})[0].v == "d"
    conn.execute("DEALLOCATE ALL")
    with pytest.raises(psycopg.errors.InvalidSqlStatementName):
        wire.rows(conn, sql, {"v": "e"})
    conn.rollback()
    assert wire.rows(conn, sql, {"v": "f"})[0].v == "f"


def test_a_lost_connection_is_an_operational_error(conn, database_url) -> None:
    conn.autocommit = True
    pid = wire.rows(conn, "SELECT pg_backend_pid() AS pid", {})[0].pid
    url = database_url.replace("postgresql+psycopg://", "postgresql://").split("?")[0]
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
    with pytest.raises(psycopg.OperationalError):
        wire.rows(conn, "SELECT 1 AS one", {})
    assert conn.broken

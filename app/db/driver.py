"""Running a prepared-once statement on the pooled psycopg connection itself.

Why: a search statement that is a template (app.search.template) is compiled once and run
thousands of times with other values.  Through SQLAlchemy each run still pays for an execution
context, parameter processing, result metadata and row objects: about 0.1 ms of application CPU,
a few per cent of a whole search request (docs/performance.md).  The same SQL text run on the
libpq connection (app.db.wire: prepared once per connection, psycopg's adapters dumping the values
and loading the rows) gives the same rows for a fraction of that.

Only statements whose parameters need no SQLAlchemy processing qualify (:func:`for_driver`
returns None otherwise), so the values reach the database exactly as SQLAlchemy would send them.
Errors keep the meanings the callers rely on: a cancelled statement (``statement_timeout``) is
:class:`~app.db.deadline.QueryTimeout`; a dead connection is invalidated and reported as a
:class:`~sqlalchemy.exc.DBAPIError` with ``connection_invalidated`` set, so a read is retried
on a fresh connection as before; the pool is emptied as SQLAlchemy does on a disconnect.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.engine import Dialect, Engine
from sqlalchemy.exc import DBAPIError

from app.db import wire
from app.db.deadline import QueryTimeout


@dataclass(frozen=True)
class DriverStatement:
    """A statement compiled for psycopg: its SQL (``%(name)s`` placeholders) and the values of
    its own bind parameters (``LIMIT`` and the like); the caller supplies the others."""

    sql: str
    fixed: dict[str, Any]


def for_driver(stmt: Any, dialect: Dialect, names: Iterable[str]) -> DriverStatement | None:
    """``stmt`` compiled for running with :func:`driver_rows`, the caller giving ``names``; None
    when it cannot be (not psycopg, or a parameter SQLAlchemy would process or expand).

    A name the statement does not use is fine: a template's values follow its clauses, and a
    clause need not use them all (``date=lt2011`` binds the day's start and end, and only the
    start bounds the match).  psycopg, like SQLAlchemy, sends only the statement's own."""
    if dialect.name != "postgresql" or dialect.driver != "psycopg":
        return None
    compiled = stmt.compile(dialect=dialect)
    if compiled._bind_processors or compiled.literal_execute_params or compiled.post_compile_params:
        return None
    names = set(names)
    params = compiled.params
    return DriverStatement(str(compiled), {k: v for k, v in params.items() if k not in names})


def driver_form(forms: dict[str, DriverStatement | None], stmt: Any, dialect: Dialect,
                names: Iterable[str]) -> DriverStatement | None:
    """``stmt``'s :func:`for_driver` form for ``dialect``, compiled once and kept in ``forms`` (a
    template's own dict): the statement is the same for every database, its driver form is not
    (apps on SQLite and PostgreSQL in one process share templates, as the tests' do)."""
    name = f"{dialect.name}+{dialect.driver}"
    if name not in forms:
        forms[name] = for_driver(stmt, dialect, names)
    return forms[name]


def driver_rows(conn: Connection, st: DriverStatement, values: dict[str, Any], timeout_ms: int = 0) -> list:
    """All rows of ``st`` run on ``conn``'s psycopg connection, as named tuples (``row.rid``)."""
    import psycopg

    driver = conn.connection.driver_connection
    params = {**st.fixed, **values}
    if conn._echo:
        echo(conn.engine, st.sql, params)
    try:
        return wire.rows(driver, st.sql, params)
    except psycopg.errors.QueryCanceled as e:
        raise QueryTimeout(timeout_ms) from e
    except psycopg.Error as e:
        gone = conn.dialect.is_disconnect(e, driver, None)
        if gone:
            conn.invalidate(e)
            conn.engine.dispose(close=False)  # its other connections died with it (a restart)
        # No parameters in the error: they are patients' data.
        raise DBAPIError.instance(st.sql, None, e, psycopg.Error, hide_parameters=True,
                                  connection_invalidated=gone, dialect=conn.dialect) from e


def echo(engine: Engine, sql: str, params: dict[str, Any]) -> None:
    """Log a statement that bypasses SQLAlchemy as SQLAlchemy's echo logs its own.

    Why: ``SQL_ECHO`` is the operators' switch for "every SQL statement"; the statements on the
    wire (app.db.wire) would otherwise be the ones missing, and they are the searches.  Values
    are logged as SQLAlchemy logs them, hidden when the engine hides parameters."""
    shown = ("[SQL parameters hidden due to hide_parameters=True]" if engine.hide_parameters
             else repr(params))
    engine.logger.info("%s", sql)
    engine.logger.info("[wire] %s", shown)

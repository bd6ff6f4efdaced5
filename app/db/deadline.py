"""A time limit for the statements of one read (a search, a history): expensive queries end,
workers don't hang.

PostgreSQL: ``SET LOCAL statement_timeout`` inside the read's transaction; the server cancels a
statement that runs longer (SQLSTATE 57014, ``query_canceled``) and the setting ends with the
transaction, so pooled connections keep no state. SQLite has no statement timeout: a progress
handler, called every few thousand virtual-machine instructions, interrupts the statement once
the deadline has passed (``sqlite3.OperationalError: interrupted``) and is removed afterwards.

Either way the caller gets :class:`QueryTimeout`, which search and history map to an
OperationOutcome ``too-costly`` (docs/decisions/0012-limits-and-hardening.md and 0015).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError, OperationalError

# SQLite VM instructions between two looks at the clock: ~0.1-1 ms of work, so the clock costs
# nothing measurable and a timeout is honoured within a millisecond or so.
SQLITE_PROGRESS_STEPS = 10_000


class QueryTimeout(Exception):
    """The statement ran past its deadline and was cancelled by the database."""


def is_timeout(exc: BaseException) -> bool:
    """True for a DBAPI error that is a cancelled statement (PostgreSQL 57014, SQLite interrupt)."""
    if not isinstance(exc, DBAPIError):
        return False
    orig = exc.orig
    if getattr(orig, "sqlstate", None) == "57014":
        return True
    return isinstance(exc, OperationalError) and "interrupted" in str(orig).lower()


@contextmanager
def statement_deadline(conn: Connection, timeout_ms: int) -> Iterator[Connection]:
    """Limit every statement run on ``conn`` inside this block to ``timeout_ms`` (0: no limit).

    PostgreSQL needs ``conn`` to be in a transaction (``SET LOCAL``); on an autocommit
    connection the setting is made for the session and reset on the way out.
    """
    if timeout_ms <= 0:
        yield conn
        return
    if conn.dialect.name == "postgresql" and conn.get_execution_options().get("statement_timeout_ms") == timeout_ms:
        try:  # a read-engine session: the timeout was set when it connected (make_read_engine)
            yield conn
        except DBAPIError as exc:
            if is_timeout(exc):
                raise QueryTimeout(timeout_ms) from exc
            raise
        return
    if conn.dialect.name == "postgresql":
        # (the execution option, not get_isolation_level(): that asks the server, a round trip)
        autocommit = conn.get_execution_options().get("isolation_level") == "AUTOCOMMIT" or not conn.in_transaction()
        scope = "SESSION" if autocommit else "LOCAL"
        conn.exec_driver_sql(f"SET {scope} statement_timeout = {int(timeout_ms)}")
        try:
            yield conn
        except DBAPIError as exc:
            if is_timeout(exc):
                raise QueryTimeout(timeout_ms) from exc
            raise
        finally:
            if autocommit and not conn.invalidated:
                try:
                    conn.exec_driver_sql("RESET statement_timeout")
                except DBAPIError:
                    conn.invalidate()
        return
    if conn.dialect.name == "sqlite":
        raw = conn.connection.driver_connection
        deadline = time.monotonic() + timeout_ms / 1000.0

        def _past_deadline() -> int:
            return 1 if time.monotonic() > deadline else 0

        raw.set_progress_handler(_past_deadline, SQLITE_PROGRESS_STEPS)
        try:
            yield conn
        except DBAPIError as exc:
            if is_timeout(exc):
                raise QueryTimeout(timeout_ms) from exc
            raise
        finally:
            raw.set_progress_handler(None, 0)
        return
    yield conn


# PostgreSQL: deadlock_detected, serialization_failure. The database rolled the transaction back
# whole; the same request sent again may well succeed.
_TRANSIENT_SQLSTATES = frozenset({"40P01", "40001"})


def is_transient_conflict(exc: BaseException) -> bool:
    """True for a write that lost a deadlock or serialisation race: nothing was written, and
    the right answer is a 409 the client can retry, not a 500."""
    return isinstance(exc, DBAPIError) and getattr(exc.orig, "sqlstate", None) in _TRANSIENT_SQLSTATES

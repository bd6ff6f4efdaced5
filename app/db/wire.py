"""Statements run on the libpq connection under psycopg: prepared once per connection, then one
``PQexecPrepared`` per run.

Why: a search request runs two or three statements (its page, sometimes its includes or count,
and its audit record), and psycopg's ``cursor.execute`` costs 0.05-0.1 ms of Python per
statement here (a cursor, the connection lock, its generators and waits, its own prepared
statement bookkeeping) around a libpq call that costs about 0.02 ms (docs/performance.md,
2026-11-29).  psycopg's own parts still do the work that matters: its ``Transformer`` dumps the
parameters and loads the rows (in C, with the connection's adapters, as ``cursor.execute``
would) and its error classes report failures, so callers see what they saw before.

What this relies on:

- the caller owns the connection for the call (a pooled connection its thread checked out), as
  with a psycopg cursor;
- statements are prepared under names of our own (``rr_<n>``, never psycopg's ``_pg3_<n>``),
  per parameter types (psycopg dumps an ``int`` as int2, int4, int8 or numeric by its value),
  at most ``MAX_PREPARED`` per connection, the least recently used deallocated;
- the transaction is the caller's, as with psycopg's cursor: on a connection that is not in
  autocommit and not yet in a transaction, the transaction psycopg would begin is begun first
  (``BEGIN`` with the connection's isolation level, read-only and deferrable settings), so a
  read that must see one snapshot (app.db.engine.read_snapshot) still does; psycopg reads the
  status from libpq, so its own ``commit``/``rollback`` stay right.  ``execute(...,
  own_transaction=True)`` instead runs the statement outside any transaction, committing by
  itself (a read's audit record on a pooled connection).
"""

from __future__ import annotations

import re
from collections import OrderedDict, namedtuple
from collections.abc import Mapping
from functools import lru_cache
from typing import Any
from weakref import WeakKeyDictionary

import psycopg
from psycopg import pq
from psycopg.adapt import PyFormat, Transformer

MAX_PREPARED = 100  # as psycopg's own prepared_max: each holds a plan in the server session

_PARAM = re.compile(r"%\(([^)]+)\)s|%%|%")
_OK = (pq.ExecStatus.TUPLES_OK, pq.ExecStatus.COMMAND_OK)
_IDLE = pq.TransactionStatus.IDLE
_GONE = "26000"  # invalid_sql_statement_name: the server forgot our prepared statements


class _Prepared:
    """One connection's prepared statements, least recently used first."""

    __slots__ = ("names", "counter", "encoding")

    def __init__(self, encoding: str) -> None:
        self.names: OrderedDict[tuple[str, tuple[int, ...]], bytes] = OrderedDict()
        self.counter = 0
        self.encoding = encoding  # the session's client_encoding, which the app never changes


_BY_CONNECTION: WeakKeyDictionary[psycopg.Connection, _Prepared] = WeakKeyDictionary()


def _state(conn: psycopg.Connection) -> _Prepared:
    state = _BY_CONNECTION.get(conn)
    if state is None:
        state = _BY_CONNECTION[conn] = _Prepared(conn.info.encoding)
    return state


@lru_cache(maxsize=2048)
def _converted(sql: str, encoding: str) -> tuple[bytes, tuple[str, ...]]:
    """``sql`` with ``%(name)s`` placeholders (as SQLAlchemy compiles for psycopg) in PostgreSQL's
    ``$n`` form, and the parameter names in ``$n`` order."""
    order: dict[str, int] = {}

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "%%":
            return "%"
        if m.group(1) is None:
            raise ValueError(f"a lone '%' in a statement for the wire: {sql[:80]!r}")
        return f"${order.setdefault(m.group(1), len(order) + 1)}"

    return _PARAM.sub(sub, sql).encode(encoding), tuple(order)


@lru_cache(maxsize=512)
def _row_class(names: tuple[str, ...]) -> type:
    return namedtuple("Row", names, rename=True)  # noqa: PYI024 - the columns are only known here


def rows(conn: psycopg.Connection, sql: str, params: Mapping[str, Any]) -> list:
    """All rows of ``sql`` (``%(name)s`` placeholders) with ``params``, as named tuples."""
    state = _state(conn)
    res, tx = _run(conn, state, sql, params, False)
    if res.status != pq.ExecStatus.TUPLES_OK:
        return []
    tx.set_pgresult(res)
    names = tuple(res.fname(i).decode(state.encoding) for i in range(res.nfields))
    return tx.load_rows(0, res.ntuples, _row_class(names)._make)


def execute(conn: psycopg.Connection, sql: str, params: Mapping[str, Any], own_transaction: bool = False) -> None:
    """Run ``sql`` for its effect (its rows, if any, are dropped).  ``own_transaction``: outside
    any transaction whatever the connection's autocommit setting (it must not be in one), so the
    statement commits by itself."""
    _run(conn, _state(conn), sql, params, own_transaction)


def _run(conn: psycopg.Connection, state: _Prepared, sql: str, params: Mapping[str, Any],
         own_transaction: bool) -> tuple[pq.abc.PGresult, Transformer]:
    query, names = _converted(sql, state.encoding)
    tx = Transformer(conn)
    dumped = tx.dump_sequence([params[n] for n in names], [PyFormat.AUTO] * len(names))
    types = tuple(tx.types or ())
    formats = tx.formats
    pg = conn.pgconn
    idle = pg.transaction_status == _IDLE
    began = False
    if own_transaction:
        if not idle:
            raise psycopg.ProgrammingError("a statement of its own on a connection inside a transaction")
    elif idle and not conn.autocommit:
        _begin(conn)
        began = True
    res = pg.exec_prepared(_name(conn, state, sql, types, query), dumped, formats)
    if res.status in _OK:
        return res, tx
    err = _error(conn, res)
    if getattr(err, "sqlstate", None) == _GONE and (idle or began):
        # The server forgot every prepared statement: psycopg sends DEALLOCATE ALL when it rolls
        # back a transaction while it holds prepared statements of its own (so would DISCARD
        # ALL).  Nothing ran before this statement here (no transaction, or one begun just for
        # it): prepare it again and run it once more.
        state.names.clear()  # (the counter goes on: a name is never used twice)
        if began:
            pg.exec_(b"ROLLBACK")
            _begin(conn)
        res = pg.exec_prepared(_name(conn, state, sql, types, query), dumped, formats)
        if res.status in _OK:
            return res, tx
        err = _error(conn, res)
    raise err


def _begin(conn: psycopg.Connection) -> None:
    """The ``BEGIN`` psycopg sends before its cursor's first statement outside autocommit."""
    parts = [b"BEGIN"]
    if conn.isolation_level is not None:
        parts += [b"ISOLATION LEVEL", psycopg.IsolationLevel(conn.isolation_level).name.replace("_", " ").encode()]
    if conn.read_only is not None:
        parts.append(b"READ ONLY" if conn.read_only else b"READ WRITE")
    if conn.deferrable is not None:
        parts.append(b"DEFERRABLE" if conn.deferrable else b"NOT DEFERRABLE")
    res = conn.pgconn.exec_(b" ".join(parts))
    if res.status != pq.ExecStatus.COMMAND_OK:
        raise _error(conn, res)


def _name(conn: psycopg.Connection, prepared: _Prepared, sql: str, types: tuple[int, ...], query: bytes) -> bytes:
    """The name ``sql`` is prepared under on ``conn`` for parameters of ``types``, preparing it
    (and deallocating the least recently used one beyond ``MAX_PREPARED``) when it is not."""
    key = (sql, types)
    name = prepared.names.get(key)
    if name is not None:
        prepared.names.move_to_end(key)
        return name
    pg = conn.pgconn
    prepared.counter += 1
    name = b"rr_%d" % prepared.counter
    res = pg.prepare(name, query, types)
    if res.status != pq.ExecStatus.COMMAND_OK:
        raise _error(conn, res)
    prepared.names[key] = name
    if len(prepared.names) > MAX_PREPARED:
        _, old = prepared.names.popitem(last=False)
        pg.exec_(b"DEALLOCATE " + old)  # in a failed transaction this fails: the name is never reused
    return name


def _error(conn: psycopg.Connection, res: pq.abc.PGresult) -> psycopg.Error:
    encoding = _state(conn).encoding
    if conn.pgconn.status == pq.ConnStatus.BAD:
        return psycopg.OperationalError(f"the connection to the database was lost: "
                                        f"{res.error_message.decode(encoding, 'replace').strip()}")
    return psycopg.errors.error_from_result(res, encoding=encoding)

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
- the transaction is the caller's: the statement runs in whatever transaction the connection is
  in (psycopg reads the status from libpq, so its bookkeeping stays right); outside one it
  commits by itself.
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

MAX_PREPARED = 200

_PARAM = re.compile(r"%\(([^)]+)\)s|%%|%")
_OK = (pq.ExecStatus.TUPLES_OK, pq.ExecStatus.COMMAND_OK)
_IDLE = pq.TransactionStatus.IDLE
_GONE = "26000"  # invalid_sql_statement_name: someone ran DEALLOCATE ALL or DISCARD ALL


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
    res, tx = _run(conn, sql, params)
    if res.status != pq.ExecStatus.TUPLES_OK:
        return []
    tx.set_pgresult(res)
    encoding = _state(conn).encoding
    names = tuple(res.fname(i).decode(encoding) for i in range(res.nfields))
    return tx.load_rows(0, res.ntuples, _row_class(names)._make)


def execute(conn: psycopg.Connection, sql: str, params: Mapping[str, Any]) -> None:
    """Run ``sql`` for its effect (its rows, if any, are dropped)."""
    _run(conn, sql, params)


def _run(conn: psycopg.Connection, sql: str, params: Mapping[str, Any]) -> tuple[pq.abc.PGresult, Transformer]:
    query, names = _converted(sql, _state(conn).encoding)
    tx = Transformer(conn)
    dumped = tx.dump_sequence([params[n] for n in names], [PyFormat.AUTO] * len(names))
    types = tuple(tx.types or ())
    formats = tx.formats
    pg = conn.pgconn
    idle = pg.transaction_status == _IDLE
    res = pg.exec_prepared(_name(conn, sql, types, query), dumped, formats)
    if res.status in _OK:
        return res, tx
    err = _error(conn, res)
    if getattr(err, "sqlstate", None) == _GONE:
        _BY_CONNECTION.pop(conn, None)  # the server forgot them all; prepare again
        if idle:  # nothing to roll back: run it once more
            res = pg.exec_prepared(_name(conn, sql, types, query), dumped, formats)
            if res.status in _OK:
                return res, tx
            err = _error(conn, res)
    raise err


def _name(conn: psycopg.Connection, sql: str, types: tuple[int, ...], query: bytes) -> bytes:
    """The name ``sql`` is prepared under on ``conn`` for parameters of ``types``, preparing it
    (and deallocating the least recently used one beyond ``MAX_PREPARED``) when it is not."""
    prepared = _state(conn)
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
    if conn.pgconn.status == pq.ConnStatus.BAD:
        return psycopg.OperationalError(f"the connection to the database was lost: "
                                        f"{res.error_message.decode(conn.info.encoding, 'replace').strip()}")
    return psycopg.errors.error_from_result(res, encoding=conn.info.encoding)

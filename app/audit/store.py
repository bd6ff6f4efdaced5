"""Writing audit records: inside a caller's transaction (changes) or in their own (reads).

PostgreSQL: one statement per event, the event row and its patient links together
(``WITH e AS (INSERT ... RETURNING id) INSERT INTO audit_patient SELECT ... unnest(...)``), so a
read's audit costs one round trip; it is committed before the response goes out (asynchronously,
see :func:`store`), a change's audit rows commit with the change.  SQLite: a plain insert and an executemany, in the caller's transaction or in a short
write transaction of its own.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import Connection, Engine

from app.audit.events import AuditRecord, storable
from app.audit.tables import audit_event, audit_patient
from app.db import wire
from app.db.driver import echo
from app.db.engine import unit_of_work

_COLS = ("recorded", "type", "subtype", "action", "outcome", "status", "request_id", "client_id", "username",
         "fhir_user", "token_id", "scope", "source_ip", "res_type", "entity", "query", "purpose", "detail")
_VALUES = ", ".join(f"%({c})s" for c in _COLS)
_TYPES = {"recorded": "timestamp", "outcome": "smallint", "status": "smallint"}
_CAST_VALUES = ", ".join(f"CAST(%({c})s AS {_TYPES.get(c, 'text')})" for c in _COLS)  # a SELECT list infers nothing
_PATIENTS = ("INSERT INTO audit_patient (event_id, patient_id, recorded) "
             "SELECT e.id, u.pid, %(recorded)s FROM e, unnest(%(pids)s::varchar[]) AS u(pid)")
_PG_INSERT = f"WITH e AS (INSERT INTO audit_event ({', '.join(_COLS)}) VALUES ({_VALUES}) RETURNING id) {_PATIENTS}"
# The same, committing asynchronously: set_config(..., true) lasts for this statement's own
# transaction only, and the SELECT it sits in always runs once, before the insert.
_PG_INSERT_ASYNC = (
    f"WITH e AS (INSERT INTO audit_event ({', '.join(_COLS)}) SELECT {_CAST_VALUES} "
    "FROM (SELECT set_config('synchronous_commit', 'off', true)) AS s RETURNING id) " + _PATIENTS
)


def array_literal(items: list[str]) -> str:
    """``items`` as a PostgreSQL array literal, every element quoted (so ``NULL`` is a string
    and ``,{}"\\`` are data): psycopg's list dumper, in Python, was a fifth of the cost of a
    read's audit statement."""
    return "{" + ",".join('"' + p.replace("\\", "\\\\").replace('"', '\\"') + '"' for p in items) + "}"


def _patient_ids(rec: AuditRecord) -> list[str]:
    return sorted(storable(p, 64) for p in rec.patients)


def store_in(conn: Connection, records: Iterable[AuditRecord], asynchronous: bool = False) -> None:
    """Write ``records`` on ``conn``, inside whatever transaction it is in.  ``asynchronous``
    (PostgreSQL, only for a transaction that holds nothing but audit rows): that transaction
    commits without waiting for its WAL flush."""
    pg = conn.dialect.name == "postgresql"
    stmt = _PG_INSERT_ASYNC if asynchronous else _PG_INSERT
    for rec in records:
        row = rec.row()
        pids = _patient_ids(rec)
        if pg:
            conn.exec_driver_sql(stmt, {**row, "pids": array_literal(pids)})
            continue
        eid = conn.execute(audit_event.insert().returning(audit_event.c.id), row).scalar_one()
        if pids:
            conn.execute(audit_patient.insert(),
                         [{"event_id": eid, "patient_id": p, "recorded": rec.recorded} for p in pids])


def store(engine: Engine, records: list[AuditRecord], synchronous: bool = False) -> None:
    """Write ``records`` in a transaction of their own, committed when this returns.

    PostgreSQL: committed *asynchronously* unless ``synchronous``: the rows are in the
    database (visible, WAL-logged) before this returns, and the WAL writer flushes them to disk
    within ``wal_writer_delay`` (200 ms; at most three times that).  They survive any crash of
    the application; only a crash of the database server or machine inside that window can
    lose them.  A synchronous commit waits for the disk: 2.5-3.5 ms per request here, which no
    sync worker can overlap (docs/decisions/0010-audit-trail.md)."""
    if not records:
        return
    asynchronous = not synchronous
    if engine.dialect.name == "postgresql" and len(records) == 1:
        _store_one_pg(engine, records[0], asynchronous)
        return
    with unit_of_work(engine, write=True) as conn:
        store_in(conn, records, asynchronous)


def _store_one_pg(engine: Engine, rec: AuditRecord, asynchronous: bool) -> None:
    """One event, one statement outside any transaction (its own: no BEGIN/COMMIT round
    trips), on the pooled libpq connection (app.db.wire): this runs on every read, and the
    SQLAlchemy Connection layer costs more CPU than the statement (about 0.08 ms of 0.25), and
    psycopg's cursor most of the rest."""
    import psycopg

    fairy = engine.raw_connection()
    try:
        driver = fairy.driver_connection
        # (the pool hands out connections outside any transaction: app.db.engine rolls back any
        # that come back inside one)
        sql = _PG_INSERT_ASYNC if asynchronous else _PG_INSERT
        params = {**rec.row(), "pids": array_literal(_patient_ids(rec))}
        if engine._should_log_info():  # SQL_ECHO
            echo(engine, sql, params)
        wire.execute(driver, sql, params, own_transaction=True)
    except psycopg.OperationalError:
        fairy.invalidate()  # a dead connection must not go back to the pool
        raise
    finally:
        fairy.close()

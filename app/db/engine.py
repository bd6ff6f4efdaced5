"""Engine creation for SQLite (embedded default) and PostgreSQL (production).

SQLite gets WAL, a busy timeout and ``BEGIN IMMEDIATE`` for write units of work, so two writers
queue instead of failing half-way with "database is locked" when a read lock is upgraded.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Connection, Engine, create_engine, event


def is_sqlite(engine_or_conn: Engine | Connection) -> bool:
    return engine_or_conn.dialect.name == "sqlite"


def make_engine(url: str, echo: bool = False) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(
            url, echo=echo, connect_args={"check_same_thread": False, "timeout": 60}
        )

        @event.listens_for(engine, "connect")
        def _sqlite_connect(dbapi_conn, _record):  # noqa: ANN001
            # Let SQLAlchemy's "begin" event decide how a transaction starts.
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=60000")
            cur.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn: Connection) -> None:
            if conn.get_execution_options().get("write"):
                conn.exec_driver_sql("BEGIN IMMEDIATE")
            else:
                conn.exec_driver_sql("BEGIN")

        return engine
    # No pool_pre_ping: it costs a round trip (``SELECT 1``) on every checkout, i.e. every request.
    # Instead: connections are recycled after 30 min (before server/firewall idle timeouts), and a
    # connection found dead while executing makes SQLAlchemy invalidate the whole pool, so after a
    # database restart one request per worker sees the error (searches retry it once, being reads).
    return create_engine(url, echo=echo, pool_pre_ping=False, pool_recycle=1800, pool_size=10, max_overflow=20)


def make_read_engine(engine: Engine, statement_timeout_ms: int) -> Engine | None:
    """PostgreSQL: a second, smaller pool for searches and history whose sessions are set up
    once, when each connects (no ``SET``/``RESET`` round trips per search), with:

    - ``statement_timeout`` (when ``statement_timeout_ms`` > 0): app.db.deadline sees the
      ``statement_timeout_ms`` execution option and only maps the cancellation;
    - ``plan_cache_mode = force_custom_plan``: a search's best plan depends on its values (a
      patient's 250 results or a lab code's 50,000), and psycopg prepares a statement run five
      times, after which PostgreSQL may switch to a generic plan estimated for "any value".
      With statement templates (app.search.template) every search of a shape is the same
      prepared statement, and one generic plan probed a code's whole index range once per
      result of a patient: 29 ms instead of 0.4 (docs/decisions/0008-search-query-plans.md).

    Disposed with ``engine``. None on SQLite: reads then use ``engine``."""
    if engine.dialect.name != "postgresql":
        return None
    ms = max(0, int(statement_timeout_ms))
    read = create_engine(engine.url, echo=engine.echo, pool_pre_ping=False, pool_recycle=1800, pool_size=5,
                         max_overflow=20, execution_options={"statement_timeout_ms": ms})

    @event.listens_for(read, "connect")
    def _session(dbapi_conn, _record) -> None:  # noqa: ANN001 - after SQLAlchemy's own first-connect queries
        with dbapi_conn.cursor() as cur:
            cur.execute("SET plan_cache_mode = force_custom_plan")
            if ms:
                cur.execute(f"SET statement_timeout = {ms}")
        dbapi_conn.commit()

    event.listen(engine, "engine_disposed", lambda _engine: read.dispose())
    return read


@contextmanager
def unit_of_work(engine: Engine, write: bool = False) -> Iterator[Connection]:
    """One database transaction: commits on success, rolls back on any exception."""
    with engine.connect() as conn:
        if write:
            conn = conn.execution_options(write=True)
        with conn.begin():
            yield conn

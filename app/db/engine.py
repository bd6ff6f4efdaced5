"""Engine creation for SQLite (embedded default) and PostgreSQL (production).

SQLite gets WAL, a busy timeout and ``BEGIN IMMEDIATE`` for write units of work, so two writers
queue instead of failing half-way with "database is locked" when a read lock is upgraded.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Connection, Engine, create_engine, event

_IDLE = 0  # libpq's PQTRANS_IDLE (psycopg.pq.TransactionStatus.IDLE), without importing psycopg for SQLite


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
    engine = create_engine(url, echo=echo, pool_pre_ping=False, pool_recycle=1800, pool_size=10, max_overflow=20,
                           pool_reset_on_return=None)
    _roll_back_leftovers(engine)
    return engine


def _roll_back_leftovers(engine: Engine) -> None:
    """PostgreSQL pools: instead of SQLAlchemy's reset on return (a ``rollback()`` through the
    dialect and psycopg for every connection, every request, although nearly all come back idle:
    SQLAlchemy Connections end their own transactions, the audit writer runs outside one), roll
    back only a connection that comes back inside a transaction, as libpq reports it."""

    @event.listens_for(engine, "checkin")
    def _checkin(dbapi_conn, record) -> None:  # noqa: ANN001
        if dbapi_conn is None or dbapi_conn.closed or dbapi_conn.pgconn.transaction_status == _IDLE:
            return
        try:
            dbapi_conn.rollback()
        except Exception as e:  # noqa: BLE001 - whatever broke it, it must not be handed out again
            record.invalidate(e)


PLAN_CACHE_MODES = ("auto", "force_custom_plan", "force_generic_plan")
AUTOCOMMIT_DEFAULT = "results_repo_autocommit"  # engine execution option: its sessions start in autocommit


def make_read_engine(engine: Engine, statement_timeout_ms: int, plan_cache_mode: str = "auto") -> Engine | None:
    """PostgreSQL: a second, smaller pool for searches and history whose sessions are set up
    once, when each connects (no ``SET``/``RESET`` round trips per search), with:

    - ``statement_timeout`` (when ``statement_timeout_ms`` > 0): app.db.deadline sees the
      ``statement_timeout_ms`` execution option and only maps the cancellation;
    - ``plan_cache_mode`` when it is not ``auto`` (``SEARCH_PLAN_CACHE_MODE``): psycopg prepares
      a statement run five times, and PostgreSQL then may plan it once for any values (a generic
      plan) instead of at each execution (~0.3-0.5 ms of its CPU per search here).  Searches
      write their structure (types, parameter names) inline so that generic plans are estimated
      on the right rows (app.search.plan.const); ``force_custom_plan`` is the operator's switch
      if a generic plan still goes wrong (docs/decisions/0008-search-query-plans.md).

    Disposed with ``engine``. None on SQLite: reads then use ``engine``."""
    if plan_cache_mode not in PLAN_CACHE_MODES:
        raise ValueError(f"SEARCH_PLAN_CACHE_MODE must be one of {', '.join(PLAN_CACHE_MODES)}, "
                         f"not {plan_cache_mode[:40]!r}.")
    if engine.dialect.name != "postgresql":
        return None
    ms = max(0, int(statement_timeout_ms))
    # Autocommit by default: most searches are one statement and then need no BEGIN/COMMIT and
    # no switching per checkout (single_read); several statements switch to a snapshot
    # (read_snapshot).
    read = create_engine(engine.url, echo=engine.echo, pool_pre_ping=False, pool_recycle=1800, pool_size=5,
                         max_overflow=20, isolation_level="AUTOCOMMIT", pool_reset_on_return=None,
                         execution_options={"statement_timeout_ms": ms, AUTOCOMMIT_DEFAULT: True})
    _roll_back_leftovers(read)

    @event.listens_for(read, "connect")
    def _session(dbapi_conn, _record) -> None:  # noqa: ANN001 - after SQLAlchemy's own first-connect queries
        if not ms and plan_cache_mode == "auto":
            return
        with dbapi_conn.cursor() as cur:
            if plan_cache_mode != "auto":
                cur.execute(f"SET plan_cache_mode = {plan_cache_mode}")
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


@contextmanager
def single_read(engine: Engine) -> Iterator[Connection]:
    """For work that reads with one statement: PostgreSQL runs it in autocommit (psycopg sets
    that client-side: no BEGIN/COMMIT round trips, ~0.1 ms of CPU on each side; the read
    engine's sessions are in autocommit already); SQLite in a unit of work.  Nothing that needs
    one snapshot for two statements belongs here (read_snapshot)."""
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            if conn.get_execution_options().get(AUTOCOMMIT_DEFAULT):
                yield conn
            else:
                yield conn.execution_options(isolation_level="AUTOCOMMIT")
        return
    with unit_of_work(engine) as conn:
        yield conn


@contextmanager
def read_snapshot(engine: Engine) -> Iterator[Connection]:
    """Several reads that must agree (a page and its total or includes; a read and its row
    check): PostgreSQL, one REPEATABLE READ, READ ONLY transaction, whose statements all see one
    snapshot (under READ COMMITTED each statement takes its own; a read-only transaction never
    meets a serialization failure); SQLite, a unit of work (a WAL read transaction is a snapshot)."""
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            conn = conn.execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True)
            with conn.begin():
                yield conn
        return
    with unit_of_work(engine) as conn:
        yield conn

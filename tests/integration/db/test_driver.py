"""Statements run on the driver connection (app.db.driver): same rows as SQLAlchemy gives, and
the same meanings for what goes wrong (a cancelled statement is QueryTimeout; a dead connection
is invalidated and reported retryable, and a search retries it), on a real PostgreSQL.
SQLite and statements SQLAlchemy must process never take this path."""

from __future__ import annotations

import pytest
from sqlalchemy import bindparam, create_engine, select, text
from sqlalchemy.dialects import sqlite
from sqlalchemy.exc import DBAPIError

from app.db.deadline import QueryTimeout
from app.db.driver import DriverStatement, driver_rows, for_driver
from app.search.template import templates_for
from app.storage.tables import resource


def _pg(url: str) -> None:
    if url.startswith("sqlite"):
        pytest.skip("the driver path is PostgreSQL's (psycopg)")


def _stmt():
    return (select(resource.c.rid, resource.c.res_id)
            .where(resource.c.res_type == bindparam("sv0"))
            .order_by(resource.c.rid).limit(5))


@pytest.mark.parametrize(("case", "ok"), [
    ("sqlite dialect", False),
    ("expanding IN list", False),
    ("a value the statement does not use", True),
    ("bound values only", True),
])
def test_which_statements_go_to_the_driver(database_url, case, ok) -> None:
    _pg(database_url)
    engine = create_engine(database_url)
    try:
        dialect, stmt, names = engine.dialect, _stmt(), ["sv0"]
        if case == "sqlite dialect":
            dialect = sqlite.dialect()
        elif case == "expanding IN list":
            stmt = stmt.where(resource.c.res_id.in_(["a", "b"]))
        elif case == "a value the statement does not use":
            names = ["sv0", "sv1"]  # (date=lt binds a day's end that the match never reads)
        st = for_driver(stmt, dialect, names)
        assert (st is not None) == ok
        if ok:
            assert "%(sv0)s" in st.sql and "sv0" not in st.fixed
            assert list(st.fixed.values()) == [5]  # the LIMIT, SQLAlchemy's own parameter
    finally:
        engine.dispose()


def test_driver_rows_are_sqlalchemys_rows(database_url, app) -> None:
    _pg(database_url)
    client = app.test_client()
    for _ in range(3):
        assert client.post("/fhir/Patient", json={"resourceType": "Patient", "gender": "other"}).status_code == 201
    engine = app.extensions["results_repo"].engine
    st = for_driver(_stmt(), engine.dialect, ["sv0"])
    with engine.connect() as conn:
        expected = conn.execute(_stmt(), {"sv0": "Patient"}).all()
        got = driver_rows(conn, st, {"sv0": "Patient"})
    assert expected and [tuple(r) for r in got] == [tuple(r) for r in expected]
    assert [r.res_id for r in got] == [r.res_id for r in expected]
    # a value the statement does not use is not sent (and changes nothing)
    extra = for_driver(_stmt(), engine.dialect, ["sv0", "sv1"])
    with engine.connect() as conn:
        assert [tuple(r) for r in driver_rows(conn, extra, {"sv0": "Patient", "sv1": "x"})] == [tuple(r) for r in got]


def test_a_cancelled_statement_is_a_timeout_and_the_connection_goes_on(database_url) -> None:
    _pg(database_url)
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            conn = conn.execution_options(isolation_level="AUTOCOMMIT")
            conn.exec_driver_sql("SET statement_timeout = 50")
            with pytest.raises(QueryTimeout):
                driver_rows(conn, DriverStatement("SELECT pg_sleep(%(s)s)", {}), {"s": 2})
            assert conn.exec_driver_sql("SELECT 1").scalar_one() == 1
            conn.exec_driver_sql("RESET statement_timeout")
    finally:
        engine.dispose()


def _kill(database_url: str, pid: int) -> None:
    admin = create_engine(database_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as c:
            assert c.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid}).scalar()
    finally:
        admin.dispose()


def test_a_dead_connection_is_invalidated_and_reported_retryable(database_url) -> None:
    _pg(database_url)
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            pid = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()
        pool_before = engine.pool
        with engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one() == pid  # the pooled one
            _kill(database_url, pid)
            with pytest.raises(DBAPIError) as err:
                driver_rows(conn, DriverStatement("SELECT 1 AS one", {}), {})
            assert err.value.connection_invalidated
            assert conn.invalidated
        assert engine.pool is not pool_before  # emptied, as SQLAlchemy does on a disconnect
        with engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one() != pid
    finally:
        engine.dispose()


def test_a_templated_search_retries_once_when_its_pooled_connection_died(database_url, app) -> None:
    """A database restart between two searches: the template runs on the driver, meets the dead
    connection, and the search answers from a fresh one."""
    _pg(database_url)
    client = app.test_client()
    assert client.put("/fhir/Patient/drvdead", json={"resourceType": "Patient", "id": "drvdead", "identifier": [
        {"system": "urn:drv", "value": "dead"}]}).status_code == 201
    url = "/fhir/Patient?identifier=urn:drv|dead"
    assert [e["resource"]["id"] for e in client.get(url).json["entry"]] == ["drvdead"]
    state = app.extensions["results_repo"]
    assert any(isinstance(v[1].get("postgresql+psycopg"), DriverStatement)
               for v in templates_for(state.registry)._stmts.values())
    read = state.read_engine
    with read.connect() as conn:  # the pool's one connection, the one the search used
        pid = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()
    _kill(database_url, pid)
    r = client.get(url)
    assert r.status_code == 200, r.data[:300]
    assert [e["resource"]["id"] for e in r.json["entry"]] == ["drvdead"]


def test_a_known_include_shape_runs_without_building_a_statement(database_url, app, monkeypatch) -> None:
    """The second search with the same include runs the statement compiled for the first."""
    _pg(database_url)
    from app.search import include

    client = app.test_client()
    assert client.put("/fhir/Patient/drvinc", json={"resourceType": "Patient", "id": "drvinc"}).status_code == 201
    obs = {"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "subject": {"reference": "Patient/drvinc"}}
    assert client.post("/fhir/Observation", json=obs).status_code == 201
    url = "/fhir/Observation?subject=Patient/drvinc&_include=Observation:subject"

    def entries(b: dict) -> list[tuple[str, str]]:
        return [(e["search"]["mode"], e["resource"]["resourceType"]) for e in b["entry"]]

    first = entries(client.get(url).json)
    assert first == [("match", "Observation"), ("include", "Patient")]

    def unbuilt(*_a, **_k):
        raise AssertionError("an include statement was built for a known shape")

    monkeypatch.setattr(include, "_include_query", unbuilt)
    assert entries(client.get(url).json) == first


def test_a_date_range_search_runs_on_the_driver(database_url, app) -> None:
    """``date=ge..&date=lt..``: the ``lt`` clause binds a day's end it never reads, which kept
    this shape (10 % of the benchmark mix) off the driver until for_driver allowed unused values."""
    _pg(database_url)
    client = app.test_client()
    code = {"coding": [{"system": "urn:drv", "code": "range"}]}
    for day in ("2010-03-01", "2010-12-31", "2011-01-01", "2009-12-31"):
        obs = {"resourceType": "Observation", "status": "final", "code": code, "effectiveDateTime": day}
        assert client.post("/fhir/Observation", json=obs).status_code == 201
    templates_for(app.extensions["results_repo"].registry).clear()
    r = client.get("/fhir/Observation?code=urn:drv|range&date=ge2010-01-01&date=lt2011-01-01")
    assert r.status_code == 200, r.data[:300]
    assert sorted(e["resource"]["effectiveDateTime"] for e in r.json["entry"]) == ["2010-03-01", "2010-12-31"]
    built = list(templates_for(app.extensions["results_repo"].registry)._stmts.values())
    assert len(built) == 1 and isinstance(built[0][1].get("postgresql+psycopg"), DriverStatement)


def test_summary_count_runs_as_a_template_on_the_driver(database_url, app, monkeypatch) -> None:
    """``_summary=count`` of one clause: one count template for every code, run on the driver;
    the counts are the SQLAlchemy path's."""
    _pg(database_url)
    client = app.test_client()
    for code, n in (("a", 3), ("b", 1)):
        for _ in range(n):
            obs = {"resourceType": "Observation", "status": "final",
                   "code": {"coding": [{"system": "urn:drv", "code": code}]}}
            assert client.post("/fhir/Observation", json=obs).status_code == 201
    templates = templates_for(app.extensions["results_repo"].registry)
    templates.clear()
    got = {c: client.get(f"/fhir/Observation?code=urn:drv|{c}&_summary=count").json["total"] for c in "abz"}
    assert got == {"a": 3, "b": 1, "z": 0}
    counts = [v for k, v in templates._stmts.items() if k[0] == "count"]
    assert len(counts) == 1 and isinstance(counts[0][1].get("postgresql+psycopg"), DriverStatement)
    from app.interactions import search

    def not_here(*_a, **_k):
        raise AssertionError("counted through SQLAlchemy")

    monkeypatch.setattr(search, "_accurate", not_here)
    assert client.get("/fhir/Observation?code=urn:drv|a&_summary=count").json["total"] == 3


def test_sql_echo_shows_the_statements_on_the_wire(database_url, caplog) -> None:
    """``SQL_ECHO`` (the operators' switch, README) logs every statement: the searches, includes
    and the read's audit record that bypass SQLAlchemy too, with their values."""
    _pg(database_url)
    import logging

    from app import create_app

    app = create_app({"DATABASE_URL": database_url, "TESTING": True, "SECRET_KEY": "test-secret",
                      "AUTH_REQUIRED": False, "SQL_ECHO": True,
                      "API_RATE_LIMIT_PER_MINUTE": 0, "TOKEN_RATE_LIMIT_PER_MINUTE": 0})
    try:
        client = app.test_client()
        pid = client.post("/fhir/Patient", json={"resourceType": "Patient", "gender": "other"}).get_json()["id"]
        caplog.set_level(logging.INFO, logger="sqlalchemy.engine")
        caplog.clear()
        r = client.get(f"/fhir/Observation?subject=Patient/{pid}&_sort=-date")
        assert r.status_code == 200
        lines = [rec.getMessage() for rec in caplog.records if rec.name.startswith("sqlalchemy.engine")]
        wired = [i for i, m in enumerate(lines) if m.startswith("[wire] ")]
        assert wired, lines
        # each wire line follows its statement; the search's values are in it
        # the page, with this search's patient, and the read's audit record
        assert any(pid in lines[i] for i in wired if lines[i - 1].startswith("SELECT") and "sp_reference" in lines[i - 1])
        assert any("INSERT INTO audit_event" in lines[i - 1] for i in wired)
    finally:
        app.extensions["results_repo"].engine.dispose()

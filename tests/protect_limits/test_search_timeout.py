"""Expensive searches and histories end: a per-statement deadline (PostgreSQL statement_timeout,
SQLite progress handler) turns a long search or history into a 400 OperationOutcome
``too-costly``, and the worker and its pooled connection go on serving."""

from __future__ import annotations

import base64
import os

import pytest
import requests
from limitshelp import H, Live, make_app, outcome_codes, uid
from sqlalchemy import create_engine, text

from app.db import deadline
from app.db.deadline import QueryTimeout, statement_deadline
from app.db.engine import make_engine
from app.search.template import templates_for

SLOW_SQL = {
    "postgresql": "SELECT pg_sleep(2)",
    # ~10^8 VM steps of a recursive CTE: seconds of work, interrupted long before
    "sqlite": "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 100000000) SELECT count(*) FROM n",
}


def _dialect(url: str) -> str:
    return "sqlite" if url.startswith("sqlite") else "postgresql"


@pytest.mark.parametrize("in_transaction", [True, False])
def test_deadline_interrupts_a_long_statement(database_url, in_transaction) -> None:
    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            if not in_transaction and conn.dialect.name == "postgresql":
                conn = conn.execution_options(isolation_level="AUTOCOMMIT")
            if in_transaction:
                conn.begin()
            with pytest.raises(QueryTimeout), statement_deadline(conn, 50):
                conn.exec_driver_sql(SLOW_SQL[_dialect(database_url)]).all()
            if in_transaction:
                conn.rollback()
            # the same connection is usable again, without the limit
            assert conn.exec_driver_sql("SELECT 1").scalar_one() == 1
            if conn.dialect.name == "postgresql":
                assert conn.exec_driver_sql("SHOW statement_timeout").scalar_one() == "0"
    finally:
        engine.dispose()


def test_no_deadline_when_zero(database_url) -> None:
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn, statement_deadline(conn, 0):
            assert conn.execute(text("SELECT 1")).scalar_one() == 1
    finally:
        engine.dispose()


@pytest.fixture(scope="module")
def tiny_timeout(database_url):
    """An app whose searches may run 1 ms, over a few thousand patients."""
    app = make_app(database_url, SEARCH_TIMEOUT_MS=1, MAX_BUNDLE_ENTRIES=1000)
    srv = Live(app)
    app.config["PUBLIC_BASE_URL"] = srv.base
    tag = uid()
    for _ in range(3):
        entries = [{"resource": {"resourceType": "Patient", "meta": {"tag": [{"system": "urn:test:t", "code": tag}]},
                                 "name": [{"family": f"Fam{uid()}", "given": ["Eve"]}], "birthDate": "1980-02-03"},
                    "request": {"method": "POST", "url": "Patient"}} for _ in range(1000)]
        r = requests.post(srv.base, json={"resourceType": "Bundle", "type": "transaction", "entry": entries},
                          headers={**H, "Prefer": "return=minimal"})
        assert r.status_code == 200, r.text[:500]
    yield app, srv, tag
    srv.stop()
    app.extensions["results_repo"].engine.dispose()


def test_a_long_search_is_too_costly_not_a_hung_worker(tiny_timeout) -> None:
    app, srv, tag = tiny_timeout
    # every match counted and sorted by a string: thousands of rows, far beyond 1 ms
    r = requests.get(f"{srv.base}/Patient", params={"name:contains": "fam", "_sort": "-family,birthdate",
                                                   "_total": "accurate", "_count": "500"}, headers=H)
    assert r.status_code == 400, r.text[:300]
    assert outcome_codes(r) == ["too-costly"]
    assert "1 ms" in r.json()["issue"][0]["diagnostics"]
    _goes_on(app, srv, tag)


def test_a_templated_search_past_its_deadline_is_too_costly(tiny_timeout) -> None:
    """Token values and date sorts make a statement template, which PostgreSQL runs on the
    driver connection (app.db.driver): its cancellation is the same 400 ``too-costly``."""
    app, srv, tag = tiny_timeout
    templates = templates_for(app.extensions["results_repo"].registry)
    templates.clear()  # (shared with the other back end's app in this process)
    r = requests.get(f"{srv.base}/Patient", params={"_tag": f"urn:test:t|{tag}", "_sort": "-birthdate,-_lastUpdated",
                                                   "_count": "1000"}, headers=H)
    assert r.status_code == 400, r.text[:300]
    assert outcome_codes(r) == ["too-costly"]
    assert len(templates) == 1  # it ran as a template
    _goes_on(app, srv, tag)


def _goes_on(app, srv, tag: str) -> None:
    """After a stopped search the worker and its pool go on: with the limit lifted, a search
    over the same patients answers."""
    app.config["SEARCH_TIMEOUT_MS"] = 0
    try:
        ok = requests.get(f"{srv.base}/Patient", params={"_tag": f"urn:test:t|{tag}", "_total": "accurate",
                                                        "_count": "5"}, headers=H)
        assert ok.status_code == 200, ok.text[:300]
        assert ok.json()["total"] == 3000
    finally:
        app.config["SEARCH_TIMEOUT_MS"] = 1


@pytest.fixture(scope="module")
def long_history(tiny_timeout) -> str:
    """One Patient with 300 more versions of ~32 KB each (a photo), newer than the 3000 Patients:
    every history level then reads megabytes for a page of 1000."""
    _app, srv, _tag = tiny_timeout
    r = requests.post(f"{srv.base}/Patient", json={"resourceType": "Patient", "gender": "female"}, headers=H)
    assert r.status_code == 201, r.text[:300]
    pid = r.json()["id"]
    entries = [{"resource": {"resourceType": "Patient", "id": pid,
                             "photo": [{"contentType": "image/png", "data": base64.b64encode(os.urandom(24_000)).decode()}]},
                "request": {"method": "PUT", "url": f"Patient/{pid}"}} for _ in range(300)]
    r = requests.post(srv.base, json={"resourceType": "Bundle", "type": "batch", "entry": entries},
                      headers={**H, "Prefer": "return=minimal"})
    assert r.status_code == 200, r.text[:300]
    assert all(e["response"]["status"].startswith("200") for e in r.json()["entry"])
    return pid


@pytest.mark.parametrize("level", ["instance", "type", "system"])
def test_a_long_history_is_too_costly_not_a_hung_worker(tiny_timeout, long_history, level, monkeypatch) -> None:
    app, srv, _tag = tiny_timeout
    # SQLite looks at the clock every SQLITE_PROGRESS_STEPS VM instructions of a statement; the
    # instance history's statement sorts 301 large rows in fewer than the production 10,000, so
    # here it looks every 1,000 (the deadline itself is unchanged: 1 ms). PostgreSQL: unaffected.
    monkeypatch.setattr(deadline, "SQLITE_PROGRESS_STEPS", 1_000)
    path = {"instance": f"Patient/{long_history}/_history", "type": "Patient/_history", "system": "_history"}[level]
    r = requests.get(f"{srv.base}/{path}", params={"_count": "1000"}, headers=H)
    assert r.status_code == 400, r.text[:300]
    assert outcome_codes(r) == ["too-costly"]
    assert "history" in r.json()["issue"][0]["diagnostics"] and "1 ms" in r.json()["issue"][0]["diagnostics"]
    # the server goes on: with the limit lifted, the same history answers
    app.config["SEARCH_TIMEOUT_MS"] = 0
    try:
        ok = requests.get(f"{srv.base}/{path}", params={"_count": "1000"}, headers=H)
        assert ok.status_code == 200, ok.text[:300]
        assert len(ok.json()["entry"]) == (301 if level == "instance" else 1000)
    finally:
        app.config["SEARCH_TIMEOUT_MS"] = 1


def test_postgresql_searches_run_on_sessions_that_carry_the_timeout(database_url) -> None:
    """No SET/RESET round trips per search: the read pool's sessions start with the limit; the
    main pool's sessions (writes, tokens, audit) carry none."""
    if _dialect(database_url) != "postgresql":
        pytest.skip("SQLite bounds statements with a progress handler")
    from sqlalchemy import event

    app = make_app(database_url, SEARCH_TIMEOUT_MS=4321)
    state = app.extensions["results_repo"]
    try:
        assert state.read_engine is not None
        statements: list[str] = []
        event.listen(state.read_engine, "before_cursor_execute",
                     lambda _c, _cur, stmt, *_a: statements.append(stmt))
        client = app.test_client()
        for _ in range(3):
            r = client.get("/fhir/Patient?name=nobody&_total=accurate", headers=H)
            assert r.status_code == 200, r.data[:300]
        assert statements, "the searches did not use the read pool"
        assert not [s for s in statements if "statement_timeout" in s.lower()]
        with state.read_engine.connect() as conn:
            assert conn.exec_driver_sql("SHOW statement_timeout").scalar_one() == "4321ms"
            assert conn.exec_driver_sql("SHOW plan_cache_mode").scalar_one() == "auto"
        with state.engine.connect() as conn:
            assert conn.exec_driver_sql("SHOW statement_timeout").scalar_one() == "0"
    finally:
        state.engine.dispose()


def test_postgresql_plan_cache_mode_is_the_operators_switch(database_url) -> None:
    """SEARCH_PLAN_CACHE_MODE reaches the search sessions (with or without a timeout); anything
    but PostgreSQL's three modes is refused before a session is opened (decision 0008)."""
    if _dialect(database_url) != "postgresql":
        pytest.skip("SQLite has no plan cache")
    with pytest.raises(ValueError, match="SEARCH_PLAN_CACHE_MODE"):
        make_app(database_url, SEARCH_PLAN_CACHE_MODE="auto; DROP TABLE resource")
    app = make_app(database_url, SEARCH_TIMEOUT_MS=0, SEARCH_PLAN_CACHE_MODE="force_custom_plan")
    state = app.extensions["results_repo"]
    try:
        assert state.read_engine is not None
        r = app.test_client().get("/fhir/Patient?name=nobody", headers=H)
        assert r.status_code == 200, r.data[:300]
        with state.read_engine.connect() as conn:
            assert conn.exec_driver_sql("SHOW plan_cache_mode").scalar_one() == "force_custom_plan"
            assert conn.exec_driver_sql("SHOW statement_timeout").scalar_one() == "0"
        with state.engine.connect() as conn:  # writes, tokens and audit keep PostgreSQL's default
            assert conn.exec_driver_sql("SHOW plan_cache_mode").scalar_one() == "auto"
    finally:
        state.engine.dispose()

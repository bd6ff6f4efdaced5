"""A write that loses a deadlock is rolled back whole and answered 409 ``conflict`` (retry),
never 500. The deadlock here is a real one, made on PostgreSQL with two connections."""

from __future__ import annotations

import threading

import pytest
from limitshelp import make_app
from sqlalchemy import create_engine
from sqlalchemy.exc import DBAPIError

from app.db.deadline import is_transient_conflict


def _real_deadlock(url: str) -> DBAPIError:
    engine = create_engine(url)
    table = "dl_probe"
    with engine.begin() as c:
        c.exec_driver_sql(f"CREATE TABLE IF NOT EXISTS {table} (k INT PRIMARY KEY, v INT)")
        c.exec_driver_sql(f"DELETE FROM {table}")
        c.exec_driver_sql(f"INSERT INTO {table} VALUES (1, 0), (2, 0)")
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def tx(first: int, second: int) -> None:
        try:
            with engine.begin() as c:
                c.exec_driver_sql(f"UPDATE {table} SET v = v + 1 WHERE k = {first}")
                barrier.wait()
                c.exec_driver_sql(f"UPDATE {table} SET v = v + 1 WHERE k = {second}")
        except DBAPIError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=tx, args=(1, 2)), threading.Thread(target=tx, args=(2, 1))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    with engine.begin() as c:
        c.exec_driver_sql(f"DROP TABLE {table}")
    engine.dispose()
    assert len(errors) == 1, errors
    return errors[0]


def test_a_lost_deadlock_is_a_409(database_url) -> None:
    if database_url.startswith("sqlite"):
        pytest.skip("SQLite serialises writers (BEGIN IMMEDIATE): no deadlocks")
    exc = _real_deadlock(database_url)
    assert is_transient_conflict(exc)
    app = make_app(database_url)

    def boom():  # the route a deadlocked write would have been
        raise exc

    app.add_url_rule("/fhir/_deadlock_probe", "deadlock_probe", boom)
    with app.test_client() as c:
        r = c.get("/fhir/_deadlock_probe")
    assert r.status_code == 409
    assert r.get_json()["issue"][0]["code"] == "conflict"
    app.extensions["results_repo"].engine.dispose()


def test_other_database_errors_stay_500(database_url) -> None:
    app = make_app(database_url)

    def boom():
        from sqlalchemy import text

        with app.extensions["results_repo"].engine.connect() as c:
            c.execute(text("SELECT * FROM no_such_table_here"))

    app.add_url_rule("/fhir/_error_probe", "error_probe", boom)
    with app.test_client() as c:
        r = c.get("/fhir/_error_probe")
    assert r.status_code == 500
    assert r.get_json()["issue"][0]["code"] == "exception"
    app.extensions["results_repo"].engine.dispose()

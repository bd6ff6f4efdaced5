"""A fresh, migrated database per test, on SQLite and on a private PostgreSQL schema.

Per test rather than per module because these tests count rows: each needs an empty database.
``TEST_DATABASES`` (default ``sqlite,postgresql``) picks the back ends like the root conftest.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine, text

PG_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
BACKENDS = [
    b.strip() for b in os.environ.get("TEST_DATABASES", "sqlite,postgresql").split(",") if b.strip()
]


def pg_schema_url(schema: str) -> str:
    sep = "&" if "?" in PG_URL else "?"
    return f"{PG_URL}{sep}options=-csearch_path%3D{schema}"


@pytest.fixture(params=BACKENDS)
def db_url(request, tmp_path) -> Iterator[str]:
    from app.db.migrate import upgrade

    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'loader.db'}"
        upgrade(url)
        yield url
        return
    schema = f"loader_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as c:
            c.execute(text(f'CREATE SCHEMA "{schema}"'))
    except Exception as exc:  # noqa: BLE001
        admin.dispose()
        pytest.skip(f"PostgreSQL not reachable at {PG_URL}: {exc}")
    url = pg_schema_url(schema)
    try:
        upgrade(url)
        yield url
    finally:
        with admin.connect() as c:
            c.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture
def loader_app(db_url):
    from app import create_app

    app = create_app({"DATABASE_URL": db_url, "TESTING": True, "SECRET_KEY": "x"})
    yield app
    app.extensions["results_repo"].engine.dispose()


@pytest.fixture
def run_cli(loader_app):
    """Invoke ``results-repo ARGS`` against loader_app; returns click's Result."""
    from app.cli import main

    runner = loader_app.test_cli_runner()

    def invoke(*args: str):
        return runner.invoke(main, list(args), catch_exceptions=False)

    return invoke

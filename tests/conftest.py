"""Shared fixtures: one isolated database per test module on SQLite and on PostgreSQL, and a
live HTTP server (werkzeug, real sockets on 127.0.0.1) over it.

``TEST_DATABASES`` picks the back ends (default ``sqlite,postgresql``); ``TEST_POSTGRES_URL``
points at the PostgreSQL server (default the local trust-auth one).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

PG_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
BACKENDS = [b.strip() for b in os.environ.get("TEST_DATABASES", "sqlite,postgresql").split(",") if b.strip()]
DATA = Path(__file__).parent / "data"
# The shared app fixtures test behaviour, not limits: many fast requests from one address must not
# meet a 429 (limits are tested in tests/protect_limits with apps of their own).
NO_RATE_LIMITS = {"API_RATE_LIMIT_PER_MINUTE": 0, "TOKEN_RATE_LIMIT_PER_MINUTE": 0}


def _pg_schema_url(schema: str) -> str:
    sep = "&" if "?" in PG_URL else "?"
    return f"{PG_URL}{sep}options=-csearch_path%3D{schema}"


@pytest.fixture(scope="module", params=BACKENDS)
def database_url(request, tmp_path_factory) -> Iterator[str]:
    """A fresh, migrated database: a SQLite file, or a private PostgreSQL schema."""
    from app.db.migrate import upgrade

    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('db') / 'test.db'}"
        upgrade(url)
        yield url
        return
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE SCHEMA "{schema}"'))
    url = _pg_schema_url(schema)
    try:
        upgrade(url)
        yield url
    finally:
        with admin.connect() as c:
            c.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture(scope="module")
def app(database_url):
    from app import create_app

    # AUTH_REQUIRED=False: these fixtures test the REST/search behaviour itself, without tokens.
    # Authorisation is tested with the token-protected fixtures below (``auth_app``/``auth_server``).
    application = create_app(
        {"DATABASE_URL": database_url, "TESTING": True, "SECRET_KEY": "test-secret", "MAX_BUNDLE_ENTRIES": 200,
         "AUTH_REQUIRED": False, **NO_RATE_LIMITS}
    )
    yield application
    application.extensions["results_repo"].engine.dispose()


from livehttp import LiveServer  # noqa: E402


@pytest.fixture(scope="module")
def server(app) -> Iterator[LiveServer]:
    """The app on a real socket; tests talk to it with ``requests``."""
    srv = LiveServer(app)
    app.config["PUBLIC_BASE_URL"] = srv.base
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def http():
    import requests

    s = requests.Session()
    s.headers["Accept"] = "application/fhir+json"
    yield s
    s.close()


@pytest.fixture(scope="module")
def auth_app(database_url):
    """The app as deployed: every FHIR request needs an access token (AUTH_REQUIRED=True)."""
    from app import create_app

    application = create_app(
        {"DATABASE_URL": database_url, "TESTING": True, "SECRET_KEY": "test-secret", "MAX_BUNDLE_ENTRIES": 200,
         "AUTH_REQUIRED": True, **NO_RATE_LIMITS}
    )
    yield application
    application.extensions["results_repo"].engine.dispose()


@pytest.fixture(scope="module")
def auth_server(auth_app) -> Iterator[LiveServer]:
    """The token-protected app on a real socket."""
    srv = LiveServer(auth_app)
    auth_app.config["PUBLIC_BASE_URL"] = srv.base
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def issue_token(auth_app):
    """``issue_token(scope, patient=None, fhir_user=None, client_id="test-app", lifetime_s=3600)``
    -> a real access token from the token store (app.auth.tokens.issue_access_token)."""
    from app.auth.tokens import issue_access_token

    engine = auth_app.extensions["results_repo"].engine

    def issue(scope: str, *, patient: str | None = None, fhir_user: str | None = None,
              client_id: str = "test-app", lifetime_s: int = 3600) -> str:
        raw, _grant = issue_access_token(engine, client_id=client_id, scope=scope, patient=patient,
                                         fhir_user=fhir_user, lifetime_s=lifetime_s)
        return raw

    return issue

"""Audit trail tests: the app as deployed (tokens required) on a live server, on both databases,
with bulk export files in a temporary folder and the in-process export worker off (tests run it)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "auth"))  # smarthelp: keys, signed assertions


@pytest.fixture(scope="module")
def audit_app(database_url, tmp_path_factory):
    from flask import g, request

    from app import create_app

    application = create_app({
        "DATABASE_URL": database_url, "TESTING": True, "SECRET_KEY": "test-secret", "AUTH_REQUIRED": True,
        "BULK_EXPORT_DIR": str(tmp_path_factory.mktemp("bulk")), "BULK_INPROCESS_WORKER": False,
        "BULK_MIN_POLL_INTERVAL": 0, "MAX_BUNDLE_ENTRIES": 50,
    })

    # Stands in for the break-glass helper's switch (the interface the audit trail reads).
    @application.before_request
    def _break_glass() -> None:
        if request.headers.get("X-Test-Break-Glass") == "1":
            g.break_glass = True

    yield application
    application.extensions["results_repo"].engine.dispose()


from livehttp import LiveServer as _Live  # noqa: E402


@pytest.fixture(scope="module")
def live(audit_app) -> Iterator[_Live]:
    """The token-protected app on a real socket."""
    srv = _Live(audit_app)
    audit_app.config["PUBLIC_BASE_URL"] = srv.base
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def token(audit_app):
    from app.auth.tokens import issue_access_token

    engine = audit_app.extensions["results_repo"].engine

    def issue(scope: str, *, patient: str | None = None, fhir_user: str | None = None,
              client_id: str = "test-app") -> str:
        raw, _ = issue_access_token(engine, client_id=client_id, scope=scope, patient=patient, fhir_user=fhir_user)
        return raw

    return issue

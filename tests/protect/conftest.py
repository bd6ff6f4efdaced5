"""Sensitive-results tests: a token-protected live server whose policy labels HIV and chlamydia
test codes on arrival, with an export directory and the in-process export worker off."""

from __future__ import annotations

import pytest
from protecthelp import SENSITIVE_CODES


@pytest.fixture(scope="module")
def protect_app(database_url, tmp_path_factory):
    from app import create_app
    from app.bulk.worker import stop_inprocess_worker

    application = create_app({
        "DATABASE_URL": database_url, "TESTING": True, "SECRET_KEY": "test-secret", "AUTH_REQUIRED": True,
        "SENSITIVE_CODES": SENSITIVE_CODES,
        "BULK_EXPORT_DIR": str(tmp_path_factory.mktemp("bulk")), "BULK_INPROCESS_WORKER": False,
        "BULK_MAX_JOBS_PER_CLIENT": 1000, "BULK_RETRY_AFTER": 1,
    })
    yield application
    stop_inprocess_worker(application)
    application.extensions["results_repo"].engine.dispose()


@pytest.fixture(scope="module")
def protect_server(protect_app):
    from protecthelp import LiveServer

    srv = LiveServer(protect_app)
    protect_app.config["PUBLIC_BASE_URL"] = srv.base
    yield srv
    srv.stop()

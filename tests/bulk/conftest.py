"""Bulk export tests: a live server whose in-process worker is off, so each test decides when
the worker runs (``run_worker``); test_client_cycle.py turns it on."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def bulk_config(tmp_path_factory) -> dict:
    return {
        "BULK_EXPORT_DIR": str(tmp_path_factory.mktemp("bulk")),
        "BULK_INPROCESS_WORKER": False,
        "BULK_RETRY_AFTER": 1,
        "BULK_MIN_POLL_INTERVAL": 5,  # two polls of a running job in a row: 429
        "BULK_MAX_JOBS_PER_CLIENT": 1000,
        "BULK_STALE_AFTER": 30,
        "BULK_SWEEP_INTERVAL": 3600,
        "AUTH_REQUIRED": False,  # test_bulk_auth.py turns SMART on
    }


@pytest.fixture(scope="module")
def app(database_url, bulk_config):
    from app import create_app
    from app.bulk.worker import stop_inprocess_worker

    application = create_app({"DATABASE_URL": database_url, "TESTING": True, "SECRET_KEY": "test-secret",
                              **bulk_config})
    yield application
    stop_inprocess_worker(application)
    application.extensions["results_repo"].engine.dispose()


@pytest.fixture(scope="module")
def base(server) -> str:
    return server.base

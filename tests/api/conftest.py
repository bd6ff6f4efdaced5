"""API tests talk to a live server over HTTP (fixtures ``server``/``http`` from tests/conftest.py)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def base(server) -> str:
    return server.base

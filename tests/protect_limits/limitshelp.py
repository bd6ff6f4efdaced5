"""Helpers for the limits and hardening tests (plain functions, no fixtures)."""

from __future__ import annotations

import uuid

from livehttp import LiveServer as Live  # noqa: F401  (re-exported)
from sqlalchemy import func, select

FHIR_JSON = "application/fhir+json"
H = {"Content-Type": FHIR_JSON, "Accept": FHIR_JSON}
NHS = "https://fhir.nhs.uk/Id/nhs-number"


def uid() -> str:
    return uuid.uuid4().hex[:16]


def patient(family: str = "Test", nhs: str | None = None, **extra) -> dict:
    body = {"resourceType": "Patient", "identifier": [{"system": "urn:test:mrn", "value": uid()}],
            "name": [{"family": family, "given": ["Ada"]}], "gender": "female", "birthDate": "1970-01-01"}
    if nhs:
        body["identifier"].append({"system": NHS, "value": nhs})
    body.update(extra)
    return body


def outcome_codes(resp) -> list[str]:
    assert resp.headers.get("Content-Type", "").startswith(FHIR_JSON), (resp.status_code, resp.text[:500])
    body = resp.json()
    assert body["resourceType"] == "OperationOutcome", body
    return [i["code"] for i in body["issue"]]


def row_counts(app) -> dict[str, int]:
    """Rows in the resource and version tables: a refused write must leave both unchanged."""
    from app.storage.tables import resource, resource_version

    engine = app.extensions["results_repo"].engine
    with engine.connect() as c:
        return {"resource": c.execute(select(func.count()).select_from(resource)).scalar_one(),
                "version": c.execute(select(func.count()).select_from(resource_version)).scalar_one()}




def make_app(database_url: str, **config):  # noqa: ANN201
    from app import create_app

    base = {"DATABASE_URL": database_url, "TESTING": True, "SECRET_KEY": "test-secret", "AUTH_REQUIRED": False,
            "API_RATE_LIMIT_PER_MINUTE": 0, "TOKEN_RATE_LIMIT_PER_MINUTE": 0}
    base.update(config)
    return create_app(base)

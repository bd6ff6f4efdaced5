"""Kick-off parameter parsing and the authorisation rules (no database)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from app.bulk.jobs import check_export_allowed, client_of
from app.bulk.params import parse_export_params
from app.fhir.errors import FhirError
from app.indexing.registry import load_registry
from config import RESULTS_RESOURCE_TYPES

ENABLED = frozenset(RESULTS_RESOURCE_TYPES)
REG = load_registry(list(RESULTS_RESOURCE_TYPES))


def _p(pairs, level="system", strict=False):
    return parse_export_params(pairs, level=level, enabled=ENABLED, registry=REG, tz=None,
                               base_url="http://x/fhir", strict=strict)


def test_defaults() -> None:
    p = _p([])
    assert p.types == sorted(ENABLED) and not p.type_explicit
    assert "Practitioner" not in _p([], level="patient").types
    assert "Observation" in _p([], level="group").types


def test_type_filter_split_and_or_values() -> None:
    p = _p([("_typeFilter", "Observation?code=a,b&status=final,Patient?gender=male")])
    assert p.type_filters == {"Observation": ["code=a,b&status=final"], "Patient": ["gender=male"]}


def test_since_and_elements() -> None:
    assert _p([("_since", "2024-01-01T10:00:00+01:00")]).since == "2024-01-01T09:00:00"
    assert _p([("_elements", "Observation.status,id")]).elements == ["Observation.status", "id"]
    with pytest.raises(FhirError):
        _p([("_elements", "Nope.status")])


def _ctx(perm=None, caller="anonymous"):
    return SimpleNamespace(permission=perm, caller=caller, registry=REG)


def _perm(scope: str, client_id: str = "c1"):
    from app.auth.permission import Permission

    perm = Permission.from_scope(scope, REG)
    perm.client_id = client_id
    return perm


def test_open_server_allows_everything() -> None:
    p = _p([])
    assert check_export_allowed(_ctx(), p).types == sorted(ENABLED)
    assert client_of(_ctx(caller="x")) == "x"


@pytest.mark.parametrize("scope", ["patient/*.rs", "user/*.rs", "user/Observation.read launch/patient", "openid"])
def test_patient_and_user_tokens_cannot_export(scope) -> None:
    for level in ("system", "patient"):
        with pytest.raises(FhirError) as e:
            check_export_allowed(_ctx(_perm(scope)), _p([], level=level), level)
        assert e.value.status == 403


def test_types_narrowed_or_refused() -> None:
    perm = _perm("system/Patient.rs system/Observation.rs?category=laboratory user/*.rs")
    p = check_export_allowed(_ctx(perm), _p([]))
    assert p.types == ["Observation", "Patient"]
    assert p.scope_filters == {"Observation": ["category=laboratory"]}
    with pytest.raises(FhirError) as e:
        check_export_allowed(_ctx(perm), _p([("_type", "Observation,DiagnosticReport")]))
    assert e.value.status == 403
    assert client_of(_ctx(perm)) == "c1"
    # a Group export needs Group read
    with pytest.raises(FhirError) as e:
        check_export_allowed(_ctx(perm), _p([], level="group"), "group")
    assert e.value.status == 403


def test_unrestricted_scope_wins_over_granular() -> None:
    perm = _perm("system/Observation.rs?category=laboratory system/Observation.read")
    p = check_export_allowed(_ctx(perm), _p([("_type", "Observation")]))
    assert p.types == ["Observation"] and p.scope_filters == {}


def test_include_associated_data_values() -> None:
    p = _p([("includeAssociatedData", "LatestProvenanceResources,RelevantProvenanceResources"),
            ("includeAssociatedData", "_acme")])
    assert p.include_associated == ["LatestProvenanceResources", "RelevantProvenanceResources"]
    assert len(p.notes) == 1 and "_acme" in p.notes[0]
    with pytest.raises(FhirError) as e:
        _p([("includeAssociatedData", "_acme")], strict=True)
    assert e.value.status == 400
    with pytest.raises(FhirError) as e:
        _p([("includeAssociatedData", "Everything")])
    assert e.value.status == 400
    with pytest.raises(FhirError) as e:  # Provenance not enabled on this server
        parse_export_params([("includeAssociatedData", "LatestProvenanceResources")], level="system",
                            enabled=ENABLED - {"Provenance"}, registry=REG, tz=None, base_url="http://x/fhir",
                            strict=False)
    assert e.value.status == 400


def test_include_associated_data_needs_provenance_read() -> None:
    assoc = [("_type", "Observation"), ("includeAssociatedData", "RelevantProvenanceResources")]
    with pytest.raises(FhirError) as e:
        check_export_allowed(_ctx(_perm("system/Observation.rs")), _p(assoc))
    assert e.value.status == 403
    # without _type, Provenance is narrowed out of the types, and still refused for the stage
    with pytest.raises(FhirError) as e:
        check_export_allowed(_ctx(_perm("system/Observation.rs")), _p([assoc[1]]))
    assert e.value.status == 403
    p = check_export_allowed(_ctx(_perm("system/Observation.rs system/Provenance.rs?agent-type=author")), _p(assoc))
    assert p.types == ["Observation"] and p.scope_filters == {"Provenance": ["agent-type=author"]}


def test_job_bound_to_its_client(tmp_path) -> None:
    """Only the client that started a job can see it (404 for anyone else)."""
    from app import create_app
    from app.bulk import jobs
    from app.bulk.settings import settings_of
    from app.db.migrate import upgrade
    from app.interactions.context import from_app

    url = f"sqlite:///{tmp_path / 'b.db'}"
    upgrade(url)
    app = create_app({"DATABASE_URL": url, "SECRET_KEY": "k", "BULK_INPROCESS_WORKER": False,
                      "BULK_EXPORT_DIR": str(tmp_path / "bulk")})
    s = settings_of(app)
    mine = from_app(app)
    mine.caller = "client-a"
    res = jobs.kick_off(mine, s, level="system", group_id=None, params=_p([("_type", "Patient")]), request_url="u")
    job = res.headers["Content-Location"].rsplit("/", 1)[1]
    assert jobs.status(mine, s, job).status == 202
    other = from_app(app)
    other.caller = "client-b"
    for call in (lambda: jobs.status(other, s, job), lambda: jobs.cancel(other, s, job),
                 lambda: jobs.file_path(other, s, job, "Patient-1.ndjson")):
        with pytest.raises(FhirError) as e:
            call()
        assert e.value.status == 404
    app.extensions["results_repo"].engine.dispose()

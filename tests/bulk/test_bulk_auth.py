"""Export under SMART: only system tokens kick off, only readable types and granular filters are
exported, and a job is bound to the client that started it."""

from __future__ import annotations

import pytest
from bulkhelp import ASYNC, download, ids, manifest, observation, patient, run_worker, uid


@pytest.fixture(scope="module")
def bulk_config(tmp_path_factory) -> dict:
    return {"BULK_EXPORT_DIR": str(tmp_path_factory.mktemp("bulk")), "BULK_INPROCESS_WORKER": False,
            "BULK_RETRY_AFTER": 1, "BULK_MIN_POLL_INTERVAL": 0, "BULK_MAX_JOBS_PER_CLIENT": 100,
            "AUTH_REQUIRED": True}


def _token(app, client: str, scope: str, **kw) -> dict:
    from app.auth.tokens import issue_access_token

    raw, _grant = issue_access_token(app.extensions["results_repo"].engine, client_id=client, scope=scope, **kw)
    return {"Authorization": f"Bearer {raw}"}


@pytest.fixture(scope="module")
def data(http, base, app) -> dict:
    assert http.get(f"{base}/$export", headers=ASYNC).status_code == 401  # the SMART check applies
    admin = _token(app, "loader", "system/*.cruds")
    http.headers.update(admin)
    try:
        p = patient(http, base, uid())
        final = observation(http, base, p["id"], status="final")
        prelim = observation(http, base, p["id"], status="preliminary")
    finally:
        del http.headers["Authorization"]
    return {"p": p, "final": final, "prelim": prelim}


def test_no_token_is_401(http, base, data) -> None:
    assert http.get(f"{base}/$export", headers=ASYNC).status_code == 401


@pytest.mark.parametrize("scope,kw", [("patient/*.rs", {"patient": "x"}), ("user/*.rs", {"fhir_user": "Practitioner/1"})])
def test_patient_and_user_tokens_are_403(http, base, app, data, scope, kw) -> None:
    h = _token(app, "app", scope, **kw)
    for url in (f"{base}/$export", f"{base}/Patient/$export"):
        r = http.get(url, headers={**ASYNC, **h})
        assert r.status_code == 403, r.text


def test_granular_system_scope_and_client_binding(http, base, app, data) -> None:
    h = _token(app, "analyst", "system/Observation.rs?status=final system/Patient.rs")
    r = http.get(f"{base}/$export", headers={**ASYNC, **h})
    assert r.status_code == 202, r.text
    loc = r.headers["Content-Location"]
    r = http.get(f"{base}/$export", params={"_type": "DiagnosticReport"}, headers={**ASYNC, **h})
    assert r.status_code == 403
    run_worker(app)
    http.headers.update(h)
    try:
        m = manifest(http, loc)
        got = download(http, m)
    finally:
        del http.headers["Authorization"]
    assert set(got) == {"Observation", "Patient"}
    assert ids(got["Observation"]) == {data["final"]["id"]}
    url = m["output"][0]["url"]
    # the same client with a new token: fine; another client or no token: not
    h2 = _token(app, "analyst", "system/Observation.rs")
    assert http.get(loc, headers=h2).status_code == 200
    assert http.get(url, headers=h2).status_code == 200
    other = _token(app, "someone-else", "system/*.rs")
    assert http.get(loc, headers=other).status_code == 404
    assert http.get(url, headers=other).status_code == 404
    assert http.delete(loc, headers=other).status_code == 404
    assert http.get(url).status_code == 401
    assert http.delete(loc, headers=h2).status_code == 202

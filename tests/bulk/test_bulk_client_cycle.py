"""A bulk client's whole cycle over HTTP against the embedded default (in-process worker):
kick-off, poll honouring Retry-After, download every file, delete."""

from __future__ import annotations

import pytest
import requests
from bulkhelp import ASYNC, ids, observation, patient, report, uid, wait_done


@pytest.fixture(scope="module")
def bulk_config(tmp_path_factory) -> dict:
    return {"BULK_EXPORT_DIR": str(tmp_path_factory.mktemp("bulk")), "BULK_INPROCESS_WORKER": True,
            "BULK_RETRY_AFTER": 1, "BULK_WORKER_POLL": 0.2, "AUTH_REQUIRED": False,
            "BULK_SWEEP_INTERVAL": 0.5}


def test_job_queued_before_a_restart_runs_on_first_poll(http, base, app, database_url, bulk_config) -> None:
    """A job left queued by a previous server process is picked up by the new one's worker."""
    from app import create_app
    from app.bulk import jobs
    from app.bulk.params import ExportParams
    from app.bulk.settings import settings_of
    from app.interactions.context import from_app

    pat = patient(http, base, uid())
    old = create_app({"DATABASE_URL": database_url, "SECRET_KEY": "k", **bulk_config, "BULK_INPROCESS_WORKER": False})
    c = from_app(old, base)
    res = jobs.kick_off(c, settings_of(old), level="system", group_id=None,
                        params=ExportParams(types=["Patient"]), request_url=f"{base}/$export")
    old.extensions["results_repo"].engine.dispose()
    assert "bulk_worker" not in app.extensions  # this server's worker has not started yet
    m = wait_done(http, res.headers["Content-Location"])
    assert [o["type"] for o in m["output"]] == ["Patient"]
    got = requests.get(m["output"][0]["url"]).text
    assert pat["id"] in got


def test_kick_off_poll_download_delete(http, base, app) -> None:
    p = patient(http, base, uid())
    obs = [observation(http, base, p["id"]) for _ in range(5)]
    rep = report(http, base, p["id"], [o["id"] for o in obs])

    client = requests.Session()  # what a bulk client sends
    r = client.get(f"{base}/Patient/$export", params={"_type": "Patient,Observation,DiagnosticReport"}, headers=ASYNC)
    assert r.status_code == 202, r.text
    status_url = r.headers["Content-Location"]
    m = wait_done(client, status_url)
    assert {o["type"] for o in m["output"]} == {"Patient", "Observation", "DiagnosticReport"}
    got: dict[str, set[str]] = {}
    for o in m["output"]:
        f = client.get(o["url"], headers={"Accept": "application/fhir+ndjson"})
        assert f.status_code == 200 and f.headers["Content-Type"] == "application/fhir+ndjson"
        got.setdefault(o["type"], set()).update(ids([requests.compat.json.loads(x) for x in f.text.splitlines()]))
    assert got["Observation"] == ids(obs) and got["DiagnosticReport"] == {rep["id"]} and p["id"] in got["Patient"]
    assert client.delete(status_url).status_code == 202
    assert client.get(status_url).status_code == 404
    assert client.get(m["output"][0]["url"]).status_code == 404
    assert app.extensions["bulk_worker"].thread.is_alive()


def test_worker_thread_sweeps_expired_jobs(http, base, app) -> None:
    import time
    from datetime import timedelta

    from sqlalchemy import update

    from app.bulk.settings import settings_of
    from app.bulk.tables import bulk_job
    from app.db import unit_of_work
    from app.fhir.jsonutil import utcnow

    patient(http, base, uid())
    r = requests.get(f"{base}/$export", params={"_type": "Patient"}, headers=ASYNC)
    loc = r.headers["Content-Location"]
    m = wait_done(requests.Session(), loc)
    job_dir = settings_of(app).export_dir / m["output"][0]["url"].split("/")[-2]
    assert job_dir.is_dir()
    with unit_of_work(app.extensions["results_repo"].engine, write=True) as conn:
        conn.execute(update(bulk_job).where(bulk_job.c.id == job_dir.name).values(expires_at=utcnow() - timedelta(seconds=1)))
    app.extensions["bulk_worker"].wake.set()
    end = time.monotonic() + 20
    while job_dir.exists() and time.monotonic() < end:
        time.sleep(0.2)
    assert not job_dir.exists()

"""Worker behaviour: size splitting, exclusive claims, restart/resume, failure, expiry."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from bulkhelp import (
    FHIR_JSON,
    download,
    export,
    ids,
    kick_off,
    manifest,
    observation,
    patient,
    run_worker,
    uid,
)
from sqlalchemy import select, update

from app.bulk.settings import settings_of
from app.bulk.tables import bulk_file, bulk_job
from app.bulk.worker import Worker
from app.db import unit_of_work
from app.fhir.jsonutil import utcnow


@pytest.fixture(scope="module")
def data(http, base) -> dict:
    ps = [patient(http, base, uid()) for _ in range(3)]
    obs = [observation(http, base, ps[i % 3]["id"]) for i in range(30)]
    return {"p": ps, "o": obs}


def _engine(app):
    return app.extensions["results_repo"].engine


def _job(app, loc: str):
    with unit_of_work(_engine(app)) as conn:
        return conn.execute(select(bulk_job).where(bulk_job.c.id == loc.rsplit("/", 1)[1])).first()


def test_files_split_at_configured_size(http, base, app, data) -> None:
    app.config["BULK_FILE_MAX_BYTES"] = 2000
    try:
        _loc, m = export(http, app, f"{base}/$export", {"_type": "Observation"})
    finally:
        app.config.pop("BULK_FILE_MAX_BYTES")
    assert len(m["output"]) > 3
    sizes = [len(http.get(o["url"]).content) for o in m["output"]]
    assert all(s <= 2000 for s in sizes), sizes
    got = download(http, m)
    assert len(got["Observation"]) == len(data["o"]) == sum(o["count"] for o in m["output"])
    assert ids(got["Observation"]) == ids(data["o"])


def test_two_workers_never_share_a_job(http, base, app, data) -> None:
    locs = [kick_off(http, f"{base}/$export", {"_type": "Observation,Patient"}) for _ in range(6)]
    workers = [Worker(app), Worker(app)]
    runs: dict[str, list[str]] = {w.id: [] for w in workers}
    orig = Worker.run_job

    def spy(self, job_id):
        runs[self.id].append(job_id)
        return orig(self, job_id)

    Worker.run_job = spy
    try:
        threads = [threading.Thread(target=w.run_pending) for w in workers]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    finally:
        Worker.run_job = orig
    done = [j for w in runs.values() for j in w]
    assert sorted(done) == sorted(loc.rsplit("/", 1)[1] for loc in locs)  # each job exactly once
    for loc in locs:
        m = manifest(http, loc)
        got = download(http, m)
        assert len(got["Observation"]) == len(data["o"])
        assert _job(app, loc).attempts == 1


def test_two_worker_processes(http, base, app, database_url, data) -> None:
    """``results-repo worker --once`` twice at the same time: every job runs exactly once."""
    import os
    import subprocess
    import sys

    locs = [kick_off(http, f"{base}/$export", {"_type": "Observation"}) for _ in range(4)]
    env = {**os.environ, "DATABASE_URL": database_url, "SECRET_KEY": "x", "AUTH_REQUIRED": "false",
           "BULK_EXPORT_DIR": str(settings_of(app).export_dir), "PUBLIC_BASE_URL": base}
    cmd = [sys.executable, "-c", "from app.cli import main; main()", "worker", "--once"]
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    ran = sum(int(o.decode().split()[0]) for o, _e in outs)
    assert ran == 4, outs
    for loc in locs:
        assert _job(app, loc).attempts == 1
        got = download(http, manifest(http, loc))
        assert ids(got["Observation"]) == ids(data["o"]) and len(got["Observation"]) == len(data["o"])


def test_claims_are_exclusive(http, base, app) -> None:
    locs = [kick_off(http, f"{base}/$export", {"_type": "Patient"}) for _ in range(4)]
    a, b = Worker(app), Worker(app)
    claimed = [a.claim(), b.claim(), a.claim(), b.claim(), a.claim()]
    assert claimed[4] is None
    assert sorted(claimed[:4]) == sorted(loc.rsplit("/", 1)[1] for loc in locs)
    # a running job with a live heartbeat is not taken over
    assert Worker(app).claim() is None
    with unit_of_work(_engine(app), write=True) as conn:
        conn.execute(update(bulk_job).where(bulk_job.c.state == "running").values(state="cancelled"))


class Crash(BaseException):
    """A worker process dying (not an ordinary error: nothing is recorded)."""


def test_restart_resumes_from_last_file_without_duplicates(http, base, app, data) -> None:
    app.config["BULK_FILE_MAX_BYTES"] = 3000
    try:
        loc = kick_off(http, f"{base}/$export", {"_type": "Patient,Observation"})
        w1 = Worker(app)
        files_recorded = []
        orig = w1._owned

        def owned(conn, job_id, **values):
            orig(conn, job_id, **values)
            if "cursor" in values:
                files_recorded.append(values["cursor"])
                if len(files_recorded) == 3:  # die after the third record, mid-Observation
                    raise Crash()

        w1._owned = owned
        job_id = w1.claim()
        with pytest.raises(Crash):
            w1.run_job(job_id)
        # a half-written file may be on disk; it is never listed
        outdir = settings_of(app).export_dir / job_id
        (outdir / "Observation-99.ndjson.part").write_bytes(b'{"partial":')
        r = http.get(loc)
        assert r.status_code == 202 and "resources exported" in r.headers["X-Progress"]
        with unit_of_work(_engine(app)) as conn:
            listed_before = conn.execute(select(bulk_file.c.name).where(bulk_file.c.job_id == job_id)).scalars().all()
        assert listed_before and all(not n.endswith(".part") for n in listed_before)
        # another worker does not steal a job whose heartbeat is fresh ...
        assert Worker(app).claim() is None
        # ... but takes it over once the heartbeat is stale, and resumes
        with unit_of_work(_engine(app), write=True) as conn:
            conn.execute(update(bulk_job).where(bulk_job.c.id == job_id)
                         .values(heartbeat_at=utcnow() - timedelta(seconds=600)))
        assert run_worker(app) == 1
    finally:
        app.config.pop("BULK_FILE_MAX_BYTES")
    m = manifest(http, loc)
    got = download(http, m)
    assert len(got["Observation"]) == len(data["o"])  # no duplicates, nothing missing
    assert ids(got["Observation"]) == ids(data["o"])
    assert len(got["Patient"]) == len(ids(got["Patient"]))
    assert not list(outdir.glob("*.part"))
    assert _job(app, loc).attempts == 2


def test_delete_while_running_stops_the_worker_and_removes_files(http, base, app, data, monkeypatch) -> None:
    import contextlib

    import app.bulk.worker as worker_module

    pending: list = []
    orig_uow = worker_module.unit_of_work

    @contextlib.contextmanager
    def uow(engine, write=False):
        with orig_uow(engine, write) as conn:
            yield conn
        while pending:  # after the worker's transaction committed
            pending.pop()()

    monkeypatch.setattr(worker_module, "unit_of_work", uow)
    app.config["BULK_FILE_MAX_BYTES"] = 2000
    try:
        loc = kick_off(http, f"{base}/$export", {"_type": "Observation"})
        w = Worker(app)
        orig = w._owned
        status: list[int] = []

        def owned(conn, job_id, **values):
            orig(conn, job_id, **values)
            if "cursor" in values and not status and not pending:
                # the client cancels while the worker is between files
                pending.append(lambda: status.append(http.delete(loc).status_code))

        w._owned = owned
        job_id = w.claim()
        w.run_job(job_id)
    finally:
        app.config.pop("BULK_FILE_MAX_BYTES")
    assert status == [202]
    assert http.get(loc).status_code == 404
    assert not (settings_of(app).export_dir / job_id).exists()
    assert _job(app, loc).state == "cancelled"


def test_job_dying_too_often_fails_cleanly(http, base, app) -> None:
    loc = kick_off(http, f"{base}/$export", {"_type": "Patient"})
    job_id = loc.rsplit("/", 1)[1]
    with unit_of_work(_engine(app), write=True) as conn:
        conn.execute(update(bulk_job).where(bulk_job.c.id == job_id).values(
            state="running", attempts=3, worker_id="dead", heartbeat_at=utcnow() - timedelta(seconds=600)))
    run_worker(app)
    r = http.get(loc)
    assert r.status_code == 500
    assert r.json()["resourceType"] == "OperationOutcome"
    assert "interrupted" in r.json()["issue"][0]["diagnostics"]
    assert r.headers.get("Expires")


def test_an_error_fails_the_job_without_leaking_its_text(http, base, app, monkeypatch) -> None:
    import app.bulk.worker as worker_module

    def boom(*a, **kw):
        raise RuntimeError("SELECT secret FROM patient WHERE nhs = '9434765919'")

    monkeypatch.setattr(worker_module, "run_export", boom)
    loc = kick_off(http, f"{base}/$export", {"_type": "Patient"})
    run_worker(app)
    r = http.get(loc)
    assert r.status_code == 500
    text = r.json()["issue"][0]["diagnostics"]
    assert "RuntimeError" in text and "9434765919" not in text and "secret" not in text
    assert Worker(app).claim() is None  # failed for good, not retried


def test_expired_jobs_answer_404_and_are_swept(http, base, app) -> None:
    patient(http, base, uid())  # a file to expire, whichever tests ran before
    _loc, m = export(http, app, f"{base}/$export", {"_type": "Patient"})
    url = m["output"][0]["url"]
    job_id = url.split("/")[-2]
    outdir = settings_of(app).export_dir / job_id
    assert outdir.is_dir()
    with unit_of_work(_engine(app), write=True) as conn:
        conn.execute(update(bulk_job).where(bulk_job.c.id == job_id).values(expires_at=utcnow() - timedelta(seconds=1)))
    assert http.get(url).status_code == 404
    assert http.get(_loc).status_code == 404
    assert Worker(app).sweep() >= 1
    assert not outdir.exists()
    with unit_of_work(_engine(app)) as conn:
        assert conn.execute(select(bulk_job).where(bulk_job.c.id == job_id)).first() is None
        assert conn.execute(select(bulk_file).where(bulk_file.c.job_id == job_id)).first() is None


def test_file_ttl_sets_expires(http, base, app) -> None:
    app.config["BULK_FILE_TTL"] = 3600
    try:
        loc, _m = export(http, app, f"{base}/$export", {"_type": "Patient"})
    finally:
        app.config.pop("BULK_FILE_TTL")
    job = _job(app, loc)
    assert abs((job.expires_at - job.completed_at).total_seconds() - 3600) < 1
    r = http.get(loc, headers={"Accept": FHIR_JSON})
    from email.utils import parsedate_to_datetime

    assert abs((parsedate_to_datetime(r.headers["Expires"]).replace(tzinfo=None) - job.expires_at).total_seconds()) < 1

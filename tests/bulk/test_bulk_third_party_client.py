"""A real third-party Bulk Data client against the server: ``smart-fetch`` (SMART Health IT's
Cumulus bulk client, PyPI ``smart-fetch``), run as the program an analyst runs.

It discovers the token endpoint from ``.well-known/smart-configuration``, gets a token with
SMART Backend Services (``client_credentials`` + ``private_key_jwt``, the key registered here),
kicks off ``$export`` with its own ``_type`` and default ``_typeFilter`` (Observation categories),
polls honouring ``Retry-After``, downloads every file and DELETEs the job.

smart-fetch is kept out of the project's environment (it pulls pyarrow and aiobotocore): install
it apart, e.g. ``pipx install smart-fetch==1.0.3`` or ``python -m venv /opt/smart-fetch &&
/opt/smart-fetch/bin/pip install smart-fetch==1.0.3 && ln -s /opt/smart-fetch/bin/smart-fetch
/usr/local/bin/``. Without it on PATH these tests are skipped (and say so).
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess

import orjson
import pytest
from bulkhelp import post, uid

SMART_FETCH = shutil.which("smart-fetch")
pytestmark = pytest.mark.skipif(SMART_FETCH is None, reason="smart-fetch (a third-party bulk client) is not "
                                "installed; see this module's docstring")
CLIENT = "cumulus-analyst"


@pytest.fixture(scope="module")
def bulk_config(tmp_path_factory) -> dict:
    return {"BULK_EXPORT_DIR": str(tmp_path_factory.mktemp("bulk")), "BULK_INPROCESS_WORKER": True,
            "BULK_RETRY_AFTER": 1, "BULK_WORKER_POLL": 0.2, "AUTH_REQUIRED": True}


@pytest.fixture(scope="module")
def key_file(app, tmp_path_factory) -> str:
    from joserfc.jwk import RSAKey

    from app.auth.clients import add_client

    key = RSAKey.generate_key(2048, parameters={"kid": "analyst-1"}, private=True)
    public = dict(key.as_dict(private=False), kid="analyst-1")
    add_client(app.extensions["results_repo"].engine, client_id=CLIENT, kind="backend",
               scope="system/Patient.rs system/Observation.rs", jwks={"keys": [public]})
    path = tmp_path_factory.mktemp("keys") / "analyst.jwks"
    path.write_text(json.dumps({"keys": [dict(key.as_dict(private=True), kid="analyst-1", alg="RS384",
                                              key_ops=["sign"])]}))
    return str(path)


@pytest.fixture(scope="module")
def data(http, base, app) -> dict:
    from app.auth.tokens import issue_access_token

    raw, _ = issue_access_token(app.extensions["results_repo"].engine, client_id="loader", scope="system/*.cruds")
    http.headers["Authorization"] = f"Bearer {raw}"
    try:
        p = post(http, base, {"resourceType": "Patient", "name": [{"family": "Fetch", "given": [uid()]}]})

        def obs(category: str | None) -> dict:
            body = {"resourceType": "Observation", "status": "final",
                    "code": {"coding": [{"system": "http://loinc.org", "code": "718-7"}]},
                    "subject": {"reference": f"Patient/{p['id']}"}}
            if category:
                body["category"] = [{"coding": [{
                    "system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": category}]}]
            return post(http, base, body)

        lab = [obs("laboratory") for _ in range(3)]
        vital = obs("vital-signs")
        uncategorised = obs(None)  # outside smart-fetch's default Observation filter
    finally:
        del http.headers["Authorization"]
    return {"p": p, "in": lab + [vital], "out": uncategorised}


def _fetch(base: str, key_file: str, outdir, *extra: str) -> subprocess.CompletedProcess:
    cmd = [SMART_FETCH, "bulk", "--fhir-url", base, "--smart-client-id", CLIENT, "--smart-key", key_file,
           *extra, str(outdir)]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HTTP_PROXY", "HTTPS_PROXY", "http_proxy",
                                                                      "https_proxy"))}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)


def _read(outdir) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for path in sorted(outdir.glob("*.ndjson.gz")):
        with gzip.open(path) as fh:
            for line in fh:
                res = orjson.loads(line)
                out.setdefault(res["resourceType"], []).append(res)
    return out


def test_smart_fetch_bulk_export(base, app, data, key_file, tmp_path) -> None:
    r = _fetch(base, key_file, tmp_path / "out", "--type", "Patient,Observation")
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-3000:])
    got = _read(tmp_path / "out")
    assert [p["id"] for p in got["Patient"]] == [data["p"]["id"]]
    assert {o["id"] for o in got["Observation"]} == {o["id"] for o in data["in"]}  # its default _typeFilter
    # the client cleaned up after itself: the job was DELETEd
    from sqlalchemy import select

    from app.bulk.tables import bulk_job
    from app.db import unit_of_work

    with unit_of_work(app.extensions["results_repo"].engine) as conn:
        jobs = conn.execute(select(bulk_job.c.state, bulk_job.c.request_url).where(bulk_job.c.client_id == CLIENT)).all()
    assert [j.state for j in jobs] == ["cancelled"]
    assert "_typeFilter=Observation" in jobs[0].request_url


def test_smart_fetch_with_its_own_type_filter(base, app, data, key_file, tmp_path) -> None:
    r = _fetch(base, key_file, tmp_path / "out", "--type", "Observation",
               "--type-filter", "Observation?category=laboratory")
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-3000:])
    got = _read(tmp_path / "out")
    assert set(got) == {"Observation"}
    assert {o["id"] for o in got["Observation"]} == {o["id"] for o in data["in"][:3]}


def test_smart_fetch_group_export_needs_group_read(base, app, data, key_file, tmp_path) -> None:
    """smart-fetch asks for ``system/<type>.read`` of the exported types only, never Group; this
    server requires Group read for a Group export (decision 0007), so it refuses with a clear
    403 OperationOutcome that the client reports (see decision 0014 for the trade-off)."""
    r = _fetch(base, key_file, tmp_path / "out", "--group", "no-matter", "--type", "Observation")
    assert r.returncode != 0
    assert "403" in r.stderr and "allows reading Group" in r.stderr

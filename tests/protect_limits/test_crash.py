"""Kill the server mid-load (SIGKILL, no clean-up of any kind): the database holds only whole
transactions, and sending the same transactions again completes the load.

A real ``results-repo run`` process on the module's database (a SQLite file, or a PostgreSQL
schema), several clients sending transaction Bundles of ``SIZE`` Patients with ids of their own
(``PUT Patient/<id>``, so a re-run is idempotent); the process is killed while transactions are
in flight. Then, straight from the database: every Bundle has either all of its Patients (each
with its version row and its index rows) or none.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
import requests
from sqlalchemy import create_engine, func, select

from app.storage.tables import resource, resource_version, sp_token

SIZE = 25
BUNDLES = 60
CLIENTS = 4
ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(database_url: str, instance: Path) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    env = {**os.environ, "DATABASE_URL": database_url, "RESULTS_REPO_INSTANCE": str(instance),
           "RESULTS_REPO_ENV": "development", "API_RATE_LIMIT_PER_MINUTE": "0", "MAX_BUNDLE_ENTRIES": "1000"}
    proc = subprocess.Popen([sys.executable, "-m", "app.cli", "run", "--open", "--port", str(port)], cwd=ROOT,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}/fhir"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"results-repo run exited with {proc.returncode}")
        try:
            if requests.get(f"{base}/metadata", timeout=1).status_code == 200:
                return proc, base
        except requests.RequestException:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("results-repo run did not start within 60 s")


def _bundle(run: str, n: int) -> dict:
    entries = []
    for i in range(SIZE):
        pid = f"{run}-b{n}-{i}"
        entries.append({"resource": {"resourceType": "Patient", "id": pid,
                                     "identifier": [{"system": "urn:test:crash", "value": pid}],
                                     "name": [{"family": f"Crash{n}", "given": [str(i)]}]},
                        "request": {"method": "PUT", "url": f"Patient/{pid}"}})
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def _send_all(base: str, run: str, stop: threading.Event | None, done: list[int]) -> None:
    """Clients share the bundles out; each records the bundles answered 200."""
    lock = threading.Lock()
    todo = list(range(BUNDLES))

    def client() -> None:
        s = requests.Session()
        while True:
            with lock:
                if not todo or (stop is not None and stop.is_set()):
                    return
                n = todo.pop(0)
            try:
                r = s.post(base, json=_bundle(run, n), timeout=60,
                           headers={"Content-Type": "application/fhir+json", "Prefer": "return=minimal"})
            except requests.RequestException:
                return  # the server died under us
            if r.status_code == 200:
                with lock:
                    done.append(n)

    threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)


def _per_bundle(database_url: str, run: str) -> dict[int, tuple[int, int, int]]:
    """Bundle number -> (resources, version rows, identifier index rows) in the database."""
    engine = create_engine(database_url)
    out: dict[int, list[int]] = {}
    try:
        with engine.connect() as c:
            for table, key in ((resource, 0), (resource_version, 1)):
                rows = c.execute(select(table.c.res_id).where(table.c.res_type == "Patient",
                                                               table.c.res_id.like(f"{run}-b%"))).all()
                for (rid_text,) in rows:
                    n = int(rid_text.split("-b")[1].split("-")[0])
                    out.setdefault(n, [0, 0, 0])[key] += 1
            idx = c.execute(select(sp_token.c.code, func.count()).where(
                sp_token.c.param == "identifier", sp_token.c.system == "urn:test:crash",
                sp_token.c.code.like(f"{run}-b%")).group_by(sp_token.c.code)).all()
            for code, cnt in idx:
                n = int(code.split("-b")[1].split("-")[0])
                out.setdefault(n, [0, 0, 0])[2] += cnt
    finally:
        engine.dispose()
    return {n: tuple(v) for n, v in out.items()}


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
def test_killed_server_leaves_whole_transactions_and_a_rerun_completes(database_url, tmp_path) -> None:
    run = f"c{uuid.uuid4().hex[:8]}"
    proc, base = _start(database_url, tmp_path / "instance")
    done: list[int] = []
    stop = threading.Event()
    sender = threading.Thread(target=_send_all, args=(base, run, stop, done))
    sender.start()
    try:
        deadline = time.monotonic() + 120
        while len(done) < 5 and time.monotonic() < deadline and sender.is_alive():
            time.sleep(0.01)
        assert len(done) >= 5, "no transactions were committed before the kill"
        proc.send_signal(signal.SIGKILL)  # mid-load: other clients' transactions are in flight
        proc.wait(10)
    finally:
        stop.set()
        if proc.poll() is None:
            proc.kill()
        sender.join(120)
    committed = set(done)
    assert len(committed) < BUNDLES, "the load finished before the kill; nothing was interrupted"

    state = _per_bundle(database_url, run)
    for n, counts in state.items():
        assert counts == (SIZE, SIZE, SIZE), f"bundle {n} is partly written: {counts}"
    assert committed <= set(state), "a transaction answered 200 is missing after the crash"

    # the same load again, on a restarted server: completes, every bundle whole, nothing doubled
    proc, base = _start(database_url, tmp_path / "instance")
    try:
        done2: list[int] = []
        _send_all(base, run, None, done2)
        assert sorted(done2) == list(range(BUNDLES))
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
    state = _per_bundle(database_url, run)
    assert set(state) == set(range(BUNDLES))
    for n, (res, versions, idx) in state.items():
        assert res == SIZE and idx == SIZE, (n, res, idx)
        assert versions >= SIZE, (n, versions)  # an unchanged PUT adds no version

"""Revocations and clearance changes take effect at once in every process, although each worker
caches validated tokens and clearances (app/auth/invalidation.py, decision 0013 section 4).

"Another process" is played two ways: a separate database connection doing exactly what another
process's revocation does (row update + NOTIFY in one transaction, no call into this process's
caches), and, end to end, a real ``results-repo run`` server process whose cache is warm while
this test process revokes. On SQLite nothing is cached, so the same assertions hold there.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from smarthelp import engine_of
from sqlalchemy import create_engine, delete, text, update

from app.auth import invalidation
from app.auth.tables import auth_token
from app.auth.tokens import _cache as token_cache
from app.auth.tokens import issue_access_token, lookup_access_token, revoke_token, token_hash

ROOT = Path(__file__).resolve().parents[2]


def _is_pg(engine) -> bool:  # noqa: ANN001
    return engine.dialect.name == "postgresql"


def _listener(engine):  # noqa: ANN001, ANN202
    listener = invalidation.listener_for(engine)
    if listener is not None:
        assert listener.wait_ready(10), "the invalidation listener did not connect"
    return listener


def _elsewhere(database_url: str, *statements) -> None:  # noqa: ANN002
    """Run ``statements`` in one transaction on an engine of its own and announce them, as the
    other process's revocation code does (announce in the transaction, settle after it)."""
    other = create_engine(database_url)
    try:
        with other.begin() as conn:
            for stmt in statements:
                conn.execute(stmt)
            invalidation.announce(conn)
        invalidation.settle()
    finally:
        other.dispose()


def _cached(engine, raw: str) -> bool:  # noqa: ANN001
    """Would the next lookup of ``raw`` be answered from this process's cache?"""
    hit = token_cache.get((id(engine), token_hash(raw)))
    listener = invalidation.listener_for(engine)
    return hit is not None and listener is not None and listener.trusted(hit[2])


def _warm(engine, raw: str) -> bool:  # noqa: ANN001
    """Look ``raw`` up until this process caches it (other test processes' revocations on the
    same database invalidate caches here too, as they would in production); True once cached,
    False on SQLite (nothing is cached there)."""
    if invalidation.listener_for(engine) is None:
        assert lookup_access_token(engine, raw) is not None
        return False
    for _ in range(50):
        assert lookup_access_token(engine, raw) is not None
        if _cached(engine, raw):
            return True
        time.sleep(0.01)
    return False


def test_a_token_revoked_by_another_process_stops_at_once(auth_app, database_url) -> None:
    engine = engine_of(auth_app)
    _listener(engine)
    for _ in range(25):  # a race would show as an occasional stale hit
        raw, _grant = issue_access_token(engine, client_id="inval-app", scope="system/*.rs")
        assert _warm(engine, raw) is _is_pg(engine)  # PostgreSQL caches; SQLite never does
        _elsewhere(database_url, update(auth_token).where(auth_token.c.token_hash == token_hash(raw))
                   .values(revoked=True))
        assert lookup_access_token(engine, raw) is None


def test_a_rolled_back_revocation_changes_nothing_and_unrelated_tokens_stay_valid(auth_app, database_url) -> None:
    engine = engine_of(auth_app)
    _listener(engine)
    keep, _ = issue_access_token(engine, client_id="inval-app", scope="system/*.rs")
    assert lookup_access_token(engine, keep) is not None
    other = create_engine(database_url)
    try:
        with other.connect() as conn:
            trans = conn.begin()
            conn.execute(update(auth_token).where(auth_token.c.token_hash == token_hash(keep)).values(revoked=True))
            invalidation.announce(conn)
            trans.rollback()
    finally:
        other.dispose()
    assert lookup_access_token(engine, keep) is not None
    gone, _ = issue_access_token(engine, client_id="inval-app", scope="system/*.rs")
    revoke_token(engine, gone)
    assert lookup_access_token(engine, gone) is None
    assert lookup_access_token(engine, keep) is not None  # a revocation elsewhere only costs a lookup


def test_a_clearance_removed_by_another_process_stops_at_once(auth_app, database_url) -> None:
    from app.auth.clients import add_client
    from app.protect.clearance import NOTHING, cached_effective, parse_clearance, set_clearance
    from app.protect.tables import protect_clearance

    engine = engine_of(auth_app)
    _listener(engine)
    from joserfc.jwk import ECKey

    key = ECKey.generate_key("P-384", private=True)
    add_client(engine, client_id="inval-cleared", kind="backend", scope="system/*.rs",
               jwks={"keys": [{**key.as_dict(private=False), "kid": "k1", "alg": "ES384"}]})
    set_clearance(engine, "client", "inval-cleared", parse_clearance(["HIV"]), False)
    first = cached_effective(engine, 60, "inval-cleared", None, None)
    assert first != NOTHING and first.labels
    assert cached_effective(engine, 60, "inval-cleared", None, None) == first
    _elsewhere(database_url, delete(protect_clearance).where(protect_clearance.c.subject == "inval-cleared"))
    assert cached_effective(engine, 60, "inval-cleared", None, None) == NOTHING


def test_without_its_listener_a_worker_does_not_trust_its_cache(auth_app, database_url) -> None:
    """The listener's session is killed: until it is back, a revocation that sent no
    notification at all (a plain row update) is still seen at once; afterwards caching resumes."""
    engine = engine_of(auth_app)
    listener = _listener(engine)
    if listener is None:
        pytest.skip("SQLite has no listener (and caches nothing)")
    raw, _ = issue_access_token(engine, client_id="inval-app", scope="system/*.rs")
    assert _warm(engine, raw)
    before = listener.generation
    admin = create_engine(database_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            pid = listener.backend_pid
            killed = conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid}).scalar()
            assert killed
            # pg_terminate_backend only signals: the session is killed once it has gone (then
            # its socket is closed); on a busy machine that can come after the update below.
            gone_by = time.monotonic() + 10
            while conn.execute(text("SELECT 1 FROM pg_stat_activity WHERE pid = :pid"), {"pid": pid}).first():
                assert time.monotonic() < gone_by, "the listener's session did not end"
                time.sleep(0.01)
            # A backend leaves pg_stat_activity before its process closes the socket: until the
            # socket says so, nothing on this side can know the listener is gone.  Wait for the
            # listener to notice (it bumps its generation), as any worker would.
            while listener.generation == before:
                assert time.monotonic() < gone_by, "the listener did not notice its session ended"
                time.sleep(0.01)
            conn.execute(update(auth_token).where(auth_token.c.token_hash == token_hash(raw)).values(revoked=True))
    finally:
        admin.dispose()
    assert lookup_access_token(engine, raw) is None  # no notification was sent; still refused
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and not (listener.generation > before and listener.connected):
        time.sleep(0.05)
    assert listener.connected, "the listener did not reconnect"
    fresh, _ = issue_access_token(engine, client_id="inval-app", scope="system/*.rs")
    assert _warm(engine, fresh)


# -- end to end: a real server process with a warm cache ---------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server_process(database_url, tmp_path_factory):
    port = _free_port()
    env = {**os.environ, "DATABASE_URL": database_url, "RESULTS_REPO_ENV": "development",
           "RESULTS_REPO_INSTANCE": str(tmp_path_factory.mktemp("instance")), "API_RATE_LIMIT_PER_MINUTE": "0",
           "AUDIT_ENABLED": "false"}
    proc = subprocess.Popen([sys.executable, "-m", "app.cli", "run", "--port", str(port)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}/fhir"
    deadline = time.monotonic() + 60
    try:
        while True:
            assert proc.poll() is None, f"results-repo run exited with {proc.returncode}"
            assert time.monotonic() < deadline, "results-repo run did not start within 60 s"
            try:
                if requests.get(f"{base}/metadata", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        proc.wait(10)


def test_a_server_process_refuses_a_token_revoked_here_on_the_very_next_request(auth_app, server_process) -> None:
    engine = engine_of(auth_app)
    s = requests.Session()
    for _ in range(10):
        raw, _grant = issue_access_token(engine, client_id="inval-app", scope="system/*.rs")
        headers = {"Authorization": f"Bearer {raw}", "Accept": "application/fhir+json"}
        for _warm in range(3):  # the server's cache now holds the token
            assert s.get(f"{server_process}/Patient?_count=1", headers=headers, timeout=10).status_code == 200
        revoke_token(engine, raw)  # this process, not the server's
        r = s.get(f"{server_process}/Patient?_count=1", headers=headers, timeout=10)
        assert r.status_code == 401, r.text
        assert r.json()["resourceType"] == "OperationOutcome"

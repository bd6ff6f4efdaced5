"""Rate limits per client: 429 with Retry-After on the FHIR API (OperationOutcome ``throttled``)
and on the OAuth endpoints (JSON ``too_many_requests``); other clients are unaffected."""

from __future__ import annotations

import pytest
import requests
from limitshelp import H, Live, make_app, outcome_codes

from app.api.limits import RateLimiter


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_token_bucket_refills_at_the_configured_rate() -> None:
    clock = Clock()
    lim = RateLimiter(per_minute=60, burst=3, clock=clock)
    assert [lim.take("a") for _ in range(3)] == [0, 0, 0]
    assert lim.take("a") == 1  # one token a second: wait 1 s
    assert lim.take("b") == 0  # another key has its own bucket
    clock.t += 1.0
    assert lim.take("a") == 0
    assert lim.take("a") == 1
    clock.t += 100
    assert [lim.take("a") for _ in range(4)] == [0, 0, 0, 1]  # refills to the burst, not beyond


def test_slow_rate_gives_a_longer_retry_after() -> None:
    clock = Clock()
    lim = RateLimiter(per_minute=6, burst=1, clock=clock)  # one every 10 s
    assert lim.take("a") == 0
    assert lim.take("a") == 10
    clock.t += 4
    assert lim.take("a") == 6


def test_zero_means_off() -> None:
    lim = RateLimiter(per_minute=0, burst=1)
    assert not lim.enabled
    assert all(lim.take("a") == 0 for _ in range(1000))


@pytest.fixture(scope="module")
def limited(database_url):
    # one token back every 10 s: a slow machine cannot refill a bucket between two requests
    app = make_app(database_url, AUTH_REQUIRED=True, API_RATE_LIMIT_PER_MINUTE=6, API_RATE_LIMIT_BURST=5,
                   TOKEN_RATE_LIMIT_PER_MINUTE=6, TOKEN_RATE_LIMIT_BURST=3)
    srv = Live(app)
    app.config["PUBLIC_BASE_URL"] = srv.base
    yield app, srv
    srv.stop()
    app.extensions["results_repo"].engine.dispose()


def _token(app, client_id: str) -> str:
    from app.auth.tokens import issue_access_token

    raw, _ = issue_access_token(app.extensions["results_repo"].engine, client_id=client_id,
                                scope="system/*.rs", lifetime_s=600)
    return raw


def test_api_limit_is_per_client_with_retry_after(limited) -> None:
    app, srv = limited
    a, b = _token(app, "rate-client-a"), _token(app, "rate-client-b")
    statuses = [requests.get(f"{srv.base}/Patient", headers={**H, "Authorization": f"Bearer {a}"}).status_code
                for _ in range(5)]
    assert statuses == [200] * 5
    r = requests.get(f"{srv.base}/Patient", headers={**H, "Authorization": f"Bearer {a}"})
    assert r.status_code == 429
    assert outcome_codes(r) == ["throttled"]
    assert 1 <= int(r.headers["Retry-After"]) <= 10
    assert r.headers["Cache-Control"] == "no-store"
    # another token of the same client shares the bucket; another client does not
    a2 = _token(app, "rate-client-a")
    assert requests.get(f"{srv.base}/Patient", headers={**H, "Authorization": f"Bearer {a2}"}).status_code == 429
    assert requests.get(f"{srv.base}/Patient", headers={**H, "Authorization": f"Bearer {b}"}).status_code == 200
    # metadata is counted too (it is part of the API) but answers for other callers
    assert requests.get(f"{srv.base}/metadata", headers=H).status_code == 200


def test_token_endpoint_limit_answers_oauth_json(limited) -> None:
    _, srv = limited
    form = {"grant_type": "client_credentials", "client_id": "nobody-registered", "scope": "system/*.rs"}
    first = [requests.post(f"{srv.url}/auth/token", data=form) for _ in range(3)]
    assert all(r.status_code in (400, 401) for r in first), [(r.status_code, r.text) for r in first]
    r = requests.post(f"{srv.url}/auth/token", data=form)
    assert r.status_code == 429
    assert r.headers["Content-Type"].startswith("application/json")
    assert r.json()["error"] == "too_many_requests"
    assert int(r.headers["Retry-After"]) >= 1
    assert r.headers["Cache-Control"] == "no-store"
    # a caller naming another client id is counted apart (it cannot empty someone else's bucket)
    other = requests.post(f"{srv.url}/auth/token", data={**form, "client_id": "someone-else"})
    assert other.status_code in (400, 401)
    # introspection shares the OAuth limiter key of its caller
    for _ in range(3):
        requests.post(f"{srv.url}/auth/introspect", data={"token": "x", "client_id": "intro-client"})
    assert requests.post(f"{srv.url}/auth/introspect", data={"token": "x", "client_id": "intro-client"}).status_code == 429


def test_limits_come_from_the_environment(monkeypatch, database_url) -> None:
    monkeypatch.setenv("API_RATE_LIMIT_PER_MINUTE", "7")
    monkeypatch.setenv("RESULTS_REPO_TOKEN_RATE_LIMIT_BURST", "9")
    from app import create_app

    app = create_app({"DATABASE_URL": database_url, "SECRET_KEY": "test-secret"})
    try:
        lims = app.extensions["rate_limits"]
        assert lims["api"].rate == pytest.approx(7 / 60)
        assert lims["oauth"].burst == 9
    finally:
        app.extensions["results_repo"].engine.dispose()

"""Start-up rules: production refuses missing, default or weak keys; limits are checked everywhere;
development, the demo and the tests start without any keys at all."""

from __future__ import annotations

import pytest
import requests
from joserfc.jwk import RSAKey
from limitshelp import H, Live, make_app

from app.startup_checks import ConfigurationRefused

STRONG = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"


@pytest.fixture
def prod(monkeypatch, tmp_path):
    """Production environment with a proper signing key; tests take things away."""
    monkeypatch.setenv("RESULTS_REPO_ENV", "production")
    monkeypatch.setenv("RESULTS_REPO_INSTANCE", str(tmp_path / "instance"))
    for name in ("SECRET_KEY", "RESULTS_REPO_SECRET_KEY", "SIGNING_KEY_FILE", "RESULTS_REPO_SIGNING_KEY_FILE",
                 "RESULTS_REPO_SIGNING_KEY_PEM"):
        monkeypatch.delenv(name, raising=False)
    key = RSAKey.generate_key(2048, private=True)
    monkeypatch.setenv("SIGNING_KEY_PEM", key.as_pem(private=True).decode())
    return {"DATABASE_URL": f"sqlite:///{tmp_path / 'p.db'}"}


def _create(config: dict):  # noqa: ANN202
    from app import create_app

    app = create_app(config)
    app.extensions["results_repo"].engine.dispose()
    return app


def test_production_starts_with_proper_keys(prod) -> None:
    app = _create({**prod, "SECRET_KEY": STRONG})
    assert app.config["SECRET_KEY"] == STRONG


@pytest.mark.parametrize("secret, why", [
    (None, "must be set"),
    ("test-secret-key-not-for-production", "well-known default"),
    ("changeme", "well-known default"),
    ("short-but-random-Q8x", "shorter than 32"),
    ("a" * 40, "distinct characters"),
])
def test_production_refuses_a_weak_secret_key(prod, secret, why) -> None:
    config = dict(prod)
    if secret is not None:
        config["SECRET_KEY"] = secret
    with pytest.raises(RuntimeError, match=why):
        _create(config)


def test_production_refuses_a_weak_signing_key(prod, monkeypatch) -> None:
    small = RSAKey.generate_key(1024, private=True)
    monkeypatch.setenv("SIGNING_KEY_PEM", small.as_pem(private=True).decode())
    with pytest.raises(ConfigurationRefused, match="bits"):
        _create({**prod, "SECRET_KEY": STRONG})


def test_production_refuses_the_generated_development_key(prod, monkeypatch, tmp_path) -> None:
    dev_key = tmp_path / "instance" / "signing-key.pem"
    dev_key.parent.mkdir(parents=True)
    dev_key.write_bytes(RSAKey.generate_key(2048, private=True).as_pem(private=True))
    monkeypatch.delenv("SIGNING_KEY_PEM")
    monkeypatch.setenv("SIGNING_KEY_FILE", str(dev_key))
    with pytest.raises(ConfigurationRefused, match="development key"):
        _create({**prod, "SECRET_KEY": STRONG})


def test_development_starts_without_any_key(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("RESULTS_REPO_ENV", "development")
    monkeypatch.setenv("RESULTS_REPO_INSTANCE", str(tmp_path / "instance"))
    for name in ("SECRET_KEY", "RESULTS_REPO_SECRET_KEY", "SIGNING_KEY_PEM", "SIGNING_KEY_FILE"):
        monkeypatch.delenv(name, raising=False)
    app = _create({"DATABASE_URL": f"sqlite:///{tmp_path / 'd.db'}"})
    assert len(app.config["SECRET_KEY"]) >= 32  # random per process


def test_demo_command_still_starts(monkeypatch, tmp_path) -> None:
    """``results-repo run --demo`` in development: no keys needed (the port is taken on purpose,
    so the command stops after start-up and loading, at the socket)."""
    import socket

    from click.testing import CliRunner

    from app.cli import main

    monkeypatch.delenv("RESULTS_REPO_ENV", raising=False)
    for name in ("SECRET_KEY", "RESULTS_REPO_SECRET_KEY", "SIGNING_KEY_PEM", "SIGNING_KEY_FILE"):
        monkeypatch.delenv(name, raising=False)
    env = {"RESULTS_REPO_INSTANCE": str(tmp_path / "instance"), "DATABASE_URL": f"sqlite:///{tmp_path / 'demo.db'}"}
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        result = CliRunner().invoke(main, ["run", "--demo", "--port", str(port)], env=env)
    assert "Demo data:" in result.output, (result.output, result.exception)
    assert "SECRET_KEY" not in result.output


@pytest.mark.parametrize("key, value", [("MAX_JSON_DEPTH", 0), ("MAX_JSON_DEPTH", 101), ("MAX_BUNDLE_ENTRIES", 0),
                                        ("API_RATE_LIMIT_PER_MINUTE", -1), ("SEARCH_TIMEOUT_MS", -5)])
def test_nonsense_limits_are_refused(database_url, key, value) -> None:
    with pytest.raises(ConfigurationRefused, match=key):
        make_app(database_url, **{key: value})


def test_json_depth_is_configurable(database_url) -> None:
    app = make_app(database_url, MAX_JSON_DEPTH=10)
    live = Live(app)
    try:
        deep: dict = {"resourceType": "Patient", "extension": []}
        node = deep
        for _ in range(6):  # extension -> list -> object -> extension ... 13 levels
            child = {"url": "http://example.org/x", "extension": []}
            node["extension"].append(child)
            node = child
        r = requests.post(f"{live.base}/Patient", json=deep, headers=H)
        assert r.status_code == 400
        assert "nested more than 10 levels" in r.json()["issue"][0]["diagnostics"]
    finally:
        live.stop()
        app.extensions["results_repo"].engine.dispose()


def test_limits_are_declared_in_the_capability_statement(database_url) -> None:
    app = make_app(database_url, MAX_BUNDLE_ENTRIES=321, MAX_CONTENT_LENGTH=4567)
    with app.test_client() as c:
        doc = c.get("/fhir/metadata").get_json()["rest"][0]["documentation"]
    assert "321 entries" in doc and "4567 bytes" in doc
    app.extensions["results_repo"].engine.dispose()

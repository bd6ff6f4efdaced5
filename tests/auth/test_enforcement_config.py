"""AUTH_REQUIRED: on by default, an explicit open demo when off, refused in production."""

from __future__ import annotations

import uuid

import orjson
import pytest
import requests

import config

FHIR_JSON = "application/fhir+json"


from livehttp import LiveServer  # noqa: E402


def test_default_is_on_and_environment_can_turn_it_off() -> None:
    assert config.Config.AUTH_REQUIRED is True
    assert config.from_environment({"AUTH_REQUIRED": "false"})["AUTH_REQUIRED"] is False
    assert config.from_environment({"RESULTS_REPO_AUTH_REQUIRED": "0"})["AUTH_REQUIRED"] is False
    assert config.from_environment({"AUTH_REQUIRED": "true"})["AUTH_REQUIRED"] is True
    assert "AUTH_REQUIRED" not in config.from_environment({})


def test_an_app_without_settings_requires_tokens(database_url) -> None:
    from app import create_app

    application = create_app({"DATABASE_URL": database_url, "SECRET_KEY": "k"})
    try:
        with application.test_client() as c:
            assert c.get("/fhir/Patient").status_code == 401
            assert c.get("/fhir/metadata").status_code == 200
    finally:
        application.extensions["results_repo"].engine.dispose()


def test_open_api_is_refused_in_production(database_url, monkeypatch) -> None:
    from app import create_app

    monkeypatch.setenv("RESULTS_REPO_ENV", "production")
    with pytest.raises(RuntimeError, match="AUTH_REQUIRED"):
        create_app({"DATABASE_URL": database_url, "SECRET_KEY": "k", "AUTH_REQUIRED": False})


def test_run_open_is_refused_in_production(database_url, monkeypatch) -> None:
    from click.testing import CliRunner
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    from app.cli import main

    pem = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
    env = {"RESULTS_REPO_ENV": "production", "SECRET_KEY": "0123456789abcdef" * 4, "DATABASE_URL": database_url,
           "SIGNING_KEY_PEM": pem}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    result = CliRunner().invoke(main, ["run", "--open", "--port", "1"], env=env)
    assert result.exit_code != 0
    assert "refused" in result.output, (result.output, result.exception)


@pytest.fixture(scope="module")
def open_server(database_url):
    from app import create_app

    application = create_app({"DATABASE_URL": database_url, "TESTING": True, "SECRET_KEY": "test-secret",
                              "AUTH_REQUIRED": False})
    srv = LiveServer(application)
    application.config["PUBLIC_BASE_URL"] = srv.base
    yield srv, application
    srv.stop()
    application.extensions["results_repo"].engine.dispose()


def test_open_mode(open_server) -> None:
    from app.auth.tokens import issue_access_token

    srv, application = open_server
    base = srv.base
    h = {"Content-Type": FHIR_JSON, "Accept": FHIR_JSON}
    pid = uuid.uuid4().hex[:12]
    r = requests.put(f"{base}/Patient/{pid}", data=orjson.dumps({"resourceType": "Patient", "id": pid}), headers=h)
    assert r.status_code == 201, r.text
    assert requests.get(f"{base}/Patient/{pid}", headers=h).status_code == 200
    raw, _ = issue_access_token(application.extensions["results_repo"].engine, client_id="app",
                                scope="patient/*.rs", patient="someone-else")
    r = requests.get(f"{base}/Patient/{pid}", headers={**h, "Authorization": f"Bearer {raw}"})
    assert r.status_code == 404
    r = requests.get(f"{base}/Patient/{pid}", headers={**h, "Authorization": "Bearer nonsense"})
    assert r.status_code == 401

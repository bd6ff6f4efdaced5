"""The server's signing key: from the environment in production (refusing to start without it),
generated once into the instance folder in development."""

from __future__ import annotations

import pytest
from joserfc.jwk import RSAKey

from app.auth.keys import SigningKeyMissing


@pytest.fixture
def env(monkeypatch, tmp_path):
    monkeypatch.setenv("RESULTS_REPO_INSTANCE", str(tmp_path / "instance"))
    monkeypatch.setenv("SECRET_KEY", "0123456789abcdef" * 4)
    for name in ("SIGNING_KEY_PEM", "SIGNING_KEY_FILE", "RESULTS_REPO_SIGNING_KEY_PEM", "RESULTS_REPO_SIGNING_KEY_FILE"):
        monkeypatch.delenv(name, raising=False)
    return {"DATABASE_URL": f"sqlite:///{tmp_path / 'k.db'}"}


def _kid(app) -> str:  # noqa: ANN001
    return app.test_client().get("/auth/jwks").get_json()["keys"][0]["kid"]


def test_production_refuses_to_start_without_a_signing_key(env, monkeypatch, tmp_path):
    from app import create_app

    monkeypatch.setenv("RESULTS_REPO_ENV", "production")
    with pytest.raises(SigningKeyMissing):
        create_app(env)
    assert not (tmp_path / "instance" / "signing-key.pem").exists()


def test_production_uses_the_key_from_the_environment(env, monkeypatch, tmp_path):
    from app import create_app

    key = RSAKey.generate_key(2048, private=True)
    key.ensure_kid()
    monkeypatch.setenv("RESULTS_REPO_ENV", "production")
    monkeypatch.setenv("SIGNING_KEY_PEM", key.as_pem(private=True).decode())
    assert _kid(create_app(env)) == key.kid
    monkeypatch.delenv("SIGNING_KEY_PEM")
    pem = tmp_path / "key.pem"
    pem.write_bytes(key.as_pem(private=True))
    monkeypatch.setenv("SIGNING_KEY_FILE", str(pem))
    assert _kid(create_app(env)) == key.kid
    pem.write_bytes(key.as_pem(private=False))
    with pytest.raises(SigningKeyMissing):
        create_app(env)


def test_development_generates_one_key_and_keeps_it(env, monkeypatch, tmp_path):
    from app import create_app

    monkeypatch.setenv("RESULTS_REPO_ENV", "development")
    first = _kid(create_app(env))
    path = tmp_path / "instance" / "signing-key.pem"
    assert path.exists() and (path.stat().st_mode & 0o077) == 0
    assert _kid(create_app(env)) == first

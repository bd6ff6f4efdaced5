"""The administration commands, in the exact forms other tools script, and the demo access."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from smarthelp import ec_key, engine_of, jwks_of

from app.auth.tokens import lookup_access_token
from app.cli import main


@pytest.fixture(scope="module")
def cli(database_url, tmp_path_factory):
    inst = tmp_path_factory.mktemp("instance")
    runner = CliRunner()
    env = {"DATABASE_URL": database_url, "RESULTS_REPO_INSTANCE": str(inst), "SECRET_KEY": "cli-test"}

    def run(*args: str, input: str | None = None):  # noqa: A002, ANN202
        return runner.invoke(main, list(args), env=env, input=input, catch_exceptions=False)

    run.instance = inst
    return run


def test_clients_add_backend_list_remove(cli, tmp_path):
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps(jwks_of(ec_key("k1"))))
    r = cli("clients", "add-backend", "--client-id", "epr-1", "--jwks-file", str(jwks), "--scope", "system/*.rs")
    assert r.exit_code == 0, r.output
    r = cli("clients", "add-backend", "--client-id", "epr-1", "--jwks-file", str(jwks), "--scope", "system/*.rs")
    assert r.exit_code == 2 and "already exists" in r.output
    assert "epr-1\tbackend\tprivate_key_jwt" in cli("clients", "list").output
    assert cli("clients", "remove", "epr-1").exit_code == 0
    assert "epr-1" not in cli("clients", "list").output
    assert cli("clients", "remove", "--client-id", "epr-1").exit_code == 1


def test_backend_refuses_a_private_jwks(cli, tmp_path):
    k = ec_key("k2")
    priv = tmp_path / "priv.json"
    priv.write_text(json.dumps({"keys": [{**k.as_dict(private=True), "kid": "k2"}]}))
    r = cli("clients", "add-backend", "--client-id", "epr-2", "--jwks-file", str(priv), "--scope", "system/*.rs")
    assert r.exit_code == 2 and "private" in r.output


def test_clients_add_app_forms(cli, tmp_path):
    r = cli("clients", "add-app", "--client-id", "pub-app", "--redirect-uri", "https://a.example/cb",
            "--redirect-uri", "https://a.example/cb2", "--public", "--scope", "launch/patient patient/*.rs")
    assert r.exit_code == 0, r.output
    r = cli("clients", "add-app", "--client-id", "sec-app", "--redirect-uri", "https://b.example/cb",
            "--secret-stdin", "--scope", "user/*.rs", input="a-long-enough-client-secret\n")
    assert r.exit_code == 0, r.output
    jwks = tmp_path / "app-jwks.json"
    jwks.write_text(json.dumps(jwks_of(ec_key("k3"))))
    r = cli("clients", "add-app", "--client-id", "jwt-app", "--redirect-uri", "https://c.example/cb",
            "--jwks-file", str(jwks), "--scope", "user/*.rs")
    assert r.exit_code == 0, r.output
    out = cli("clients", "list").output
    assert "pub-app\tapp\tnone" in out and "sec-app\tapp\tclient_secret_basic" in out and "jwt-app\tapp\tprivate_key_jwt" in out
    r = cli("clients", "add-app", "--client-id", "x", "--redirect-uri", "https://c.example/cb", "--public",
            "--secret-stdin", "--scope", "user/*.rs", input="a-long-enough-client-secret\n")
    assert r.exit_code == 2
    r = cli("clients", "add-app", "--client-id", "y", "--redirect-uri", "not a uri", "--public", "--scope", "user/*.rs")
    assert r.exit_code == 2


def test_users_add_list_remove(cli):
    r = cli("users", "add", "--username", "dr-who", "--fhir-user", "Practitioner/p1", "--password-stdin",
            input="a good password\n")
    assert r.exit_code == 0, r.output
    assert "dr-who\tPractitioner/p1" in cli("users", "list").output
    r = cli("users", "add", "--username", "bad", "--fhir-user", "Organization/o1", "--password-stdin",
            input="a good password\n")
    assert r.exit_code == 2
    assert cli("users", "remove", "dr-who").exit_code == 0
    assert "dr-who" not in cli("users", "list").output


def test_demo_access_and_demo_token(cli, app, tmp_path):
    from app.auth.demo import access_instructions, setup_demo_access

    app.instance_path = str(cli.instance)  # the same instance folder as the CLI's
    info = setup_demo_access(app)
    text = access_instructions("http://127.0.0.1:8080/fhir", info)
    assert "demo-token" in text and "demo-clinician" in text and info["passwords"]["demo-patient"] in text
    r = cli("demo-token")
    assert r.exit_code == 0, r.output
    token = r.output.strip().splitlines()[-1]
    grant = lookup_access_token(engine_of(app), token)
    assert grant is not None and grant.client_id == "demo-backend" and grant.scope == "system/*.rs"
    assert "demo-app\tapp\tnone" in cli("clients", "list").output


def test_add_backend_with_a_jwks_url(cli):
    r = cli("clients", "add-backend", "--client-id", "epr-url", "--jwks-url", "https://epr.example/jwks.json",
            "--scope", "system/*.rs")
    assert r.exit_code == 0, r.output
    assert "epr-url\tbackend\tprivate_key_jwt (jwks-url)" in cli("clients", "list").output
    r = cli("clients", "add-backend", "--client-id", "epr-none", "--scope", "system/*.rs")
    assert r.exit_code == 2

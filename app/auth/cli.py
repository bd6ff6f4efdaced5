"""``results-repo clients ...``, ``results-repo users ...`` and ``results-repo demo-token``.

Forms other tools script (keep them stable)::

    results-repo clients add-backend --client-id ID --jwks-file PATH --scope "S"
    results-repo clients add-app --client-id ID --redirect-uri URI [--redirect-uri URI ...] \
        (--public | --secret-stdin | --jwks-file PATH) --scope "S"
    results-repo users add --username U --fhir-user Patient/ID|Practitioner/ID --password-stdin
    results-repo clients list | clients remove ID | users list | users remove U
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
from flask import current_app
from flask.cli import with_appcontext


def _engine():  # noqa: ANN202
    from app.db.migrate import upgrade

    url = current_app.config["DATABASE_URL"]
    if url.startswith("sqlite"):
        upgrade(url)  # like `run`: a new SQLite database is created on first use
    return current_app.extensions["results_repo"].engine


def _read_jwks(path: str) -> dict:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise click.UsageError(f"--jwks-file {path}: {exc}") from None
    if isinstance(data, dict) and "kty" in data:  # a single JWK: wrap it
        data = {"keys": [data]}
    return data


def _read_stdin_secret(what: str) -> str:
    value = sys.stdin.readline().rstrip("\r\n")
    if not value:
        raise click.UsageError(f"{what}: nothing on standard input")
    return value


@click.group("clients")
def clients() -> None:
    """Register, list and remove OAuth clients (SMART apps and backend services)."""


@clients.command("add-backend")
@click.option("--client-id", required=True, help="The client's id (iss/sub of its assertions).")
@click.option("--jwks-file", type=click.Path(exists=True, dir_okay=False), help="Its public JWKS (JSON).")
@click.option("--jwks-url", help="...or the URL where it publishes its JWKS.")
@click.option("--scope", required=True, help='Scopes it may ask for, e.g. "system/*.rs".')
@click.option("--name", help="A display name.")
@with_appcontext
def add_backend(client_id: str, jwks_file: str | None, jwks_url: str | None, scope: str, name: str | None) -> None:
    """Register a SMART Backend Services client (client_credentials + private_key_jwt)."""
    from app.auth.clients import add_client

    if bool(jwks_file) == bool(jwks_url):
        raise click.UsageError("give exactly one of --jwks-file or --jwks-url")
    try:
        add_client(
            _engine(),
            client_id=client_id,
            kind="backend",
            scope=scope,
            jwks=_read_jwks(jwks_file) if jwks_file else None,
            jwks_uri=jwks_url,
            name=name,
        )
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    click.echo(f"Registered backend client {client_id} (private_key_jwt; scope: {' '.join(scope.split())}).")


@clients.command("add-app")
@click.option("--client-id", required=True, help="The app's client id.")
@click.option("--redirect-uri", "redirect_uris", multiple=True, required=True, help="Registered redirect URI (repeat).")
@click.option("--public", is_flag=True, help="A public app (no secret; PKCE only).")
@click.option("--secret-stdin", is_flag=True, help="A confidential app: read its client secret from stdin.")
@click.option("--jwks-file", type=click.Path(exists=True, dir_okay=False), help="A confidential app using private_key_jwt.")
@click.option("--scope", required=True, help='Scopes it may ask for, e.g. "openid fhirUser launch/patient patient/*.rs".')
@click.option("--name", help="The name users see on the consent page.")
@with_appcontext
def add_app(
    client_id: str,
    redirect_uris: tuple[str, ...],
    public: bool,
    secret_stdin: bool,
    jwks_file: str | None,
    scope: str,
    name: str | None,
) -> None:
    """Register a SMART app (EHR launch or standalone launch, authorization code + PKCE)."""
    from app.auth.clients import add_client

    if sum([public, secret_stdin, bool(jwks_file)]) != 1:
        raise click.UsageError("give exactly one of --public, --secret-stdin or --jwks-file")
    secret = _read_stdin_secret("--secret-stdin") if secret_stdin else None
    try:
        client = add_client(
            _engine(),
            client_id=client_id,
            kind="app",
            scope=scope,
            redirect_uris=list(redirect_uris),
            secret=secret,
            jwks=_read_jwks(jwks_file) if jwks_file else None,
            name=name,
        )
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    click.echo(f"Registered app {client_id} ({client.auth_method}; redirect URIs: {', '.join(redirect_uris)}).")


@clients.command("list")
@with_appcontext
def list_clients_cmd() -> None:
    """List registered clients."""
    from app.auth.clients import list_clients

    rows = list_clients(_engine())
    if not rows:
        click.echo("No clients registered.")
    for c in rows:
        keys = "jwks-url" if c.jwks_uri else ("jwks" if c.jwks else "")
        click.echo(f"{c.client_id}\t{c.kind}\t{c.auth_method}{' (' + keys + ')' if keys else ''}\t{c.scope}"
                   + (f"\t{' '.join(c.redirect_uris)}" if c.redirect_uris else ""))


@clients.command("remove")
@click.argument("client_id", required=False)
@click.option("--client-id", "client_id_opt", help="The client to remove (or give it as the argument).")
@with_appcontext
def remove_client_cmd(client_id: str | None, client_id_opt: str | None) -> None:
    """Remove a client; its tokens stop working at once."""
    from app.auth.clients import remove_client

    cid = client_id or client_id_opt
    if not cid:
        raise click.UsageError("which client? results-repo clients remove ID")
    if not remove_client(_engine(), cid):
        raise click.ClickException(f"no client {cid!r}")
    click.echo(f"Removed client {cid} and revoked its tokens.")


@click.group("users")
def users() -> None:
    """Add, list and remove users who log in to SMART apps (practitioners and patients)."""


@users.command("add")
@click.option("--username", required=True)
@click.option("--fhir-user", required=True, help="Patient/ID or Practitioner/ID: who the user is in FHIR.")
@click.option("--password-stdin", is_flag=True, required=True, help="Read the password from stdin.")
@with_appcontext
def add_user_cmd(username: str, fhir_user: str, password_stdin: bool) -> None:
    """Add a user (the password is read from standard input, never from the command line)."""
    from app.auth.users import add_user

    password = _read_stdin_secret("--password-stdin")
    try:
        add_user(_engine(), username, fhir_user, password)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    click.echo(f"Added user {username} ({fhir_user}).")


@users.command("list")
@with_appcontext
def list_users_cmd() -> None:
    """List users."""
    from app.auth.users import list_users

    rows = list_users(_engine())
    if not rows:
        click.echo("No users.")
    for u in rows:
        click.echo(f"{u.username}\t{u.fhir_user}")


@users.command("remove")
@click.argument("username", required=False)
@click.option("--username", "username_opt", help="The user to remove (or give it as the argument).")
@with_appcontext
def remove_user_cmd(username: str | None, username_opt: str | None) -> None:
    """Remove a user."""
    from app.auth.users import remove_user

    name = username or username_opt
    if not name:
        raise click.UsageError("which user? results-repo users remove USERNAME")
    if not remove_user(_engine(), name):
        raise click.ClickException(f"no user {name!r}")
    click.echo(f"Removed user {name}.")


@click.command("demo-token")
@click.option("--scope", default="system/*.rs", show_default=True, help="Scopes to ask for.")
@click.option("--url", help="FHIR base of a running server to ask over HTTP (default: in-process).")
@with_appcontext
def demo_token(scope: str, url: str | None) -> None:
    """Get an access token for the demo backend client: a real client_credentials grant with a
    private_key_jwt assertion signed by the demo key from the instance folder. Prints the token."""
    from app.auth.demo import demo_backend_token

    try:
        token = demo_backend_token(current_app._get_current_object(), scope, url)
    except RuntimeError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(token)

"""The ``results-repo`` command line: run, db upgrade, load, demo."""

from __future__ import annotations

import sys

import click
from flask import current_app
from flask.cli import FlaskGroup, with_appcontext
from werkzeug.serving import run_simple

from app.auth.cli import clients as auth_clients
from app.auth.cli import demo_token
from app.auth.cli import users as auth_users
from app.loader.cli import demo, load
from app.protect.cli import alerts as protect_alerts
from app.protect.cli import clearance as protect_clearance


def _create_app():
    from app import create_app

    return create_app()


@click.group(cls=FlaskGroup, create_app=_create_app, add_default_commands=False, add_version_option=False)
def main() -> None:
    """Regional results repository: a FHIR R4 server for lab results, reports and imaging records.

    Configure with environment variables: DATABASE_URL (default: SQLite in the instance folder),
    PUBLIC_BASE_URL, SECRET_KEY.
    """


@main.group()
def db() -> None:
    """Database schema commands."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True, help="Alembic revision to upgrade to.")
@with_appcontext
def db_upgrade(revision: str) -> None:
    """Create or migrate the database schema to the latest version."""
    from app.db.migrate import upgrade

    url = current_app.config["DATABASE_URL"]
    upgrade(url, revision)
    click.echo(f"Database schema is at {revision} ({_safe_url(url)}).")


def _safe_url(url: str) -> str:
    """The URL without its password, for printing."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


@main.command("run")
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", default=8080, show_default=True, type=int, help="Port to listen on.")
@click.option("--debug/--no-debug", default=False, help="Flask debug mode (never in production).")
@click.option(
    "--demo",
    is_flag=True,
    help="Load the demo data set first (4 Synthea patients and the UK Core examples; "
    "loading twice changes nothing).",
)
@click.option(
    "--open",
    "open_api",
    is_flag=True,
    help="An OPEN demo: FHIR requests need no access token (AUTH_REQUIRED=false). Refused when "
    "RESULTS_REPO_ENV=production; never with real patient data.",
)
@with_appcontext
def run(host: str, port: int, debug: bool, demo: bool, open_api: bool) -> None:
    """Create/migrate the database if needed and serve the FHIR API (development server).

    In production run ``gunicorn wsgi:app`` instead, after ``results-repo db upgrade``.
    """
    from app.db.migrate import upgrade
    from app.loader.demo import demo_instructions, load_demo

    app = current_app._get_current_object()
    if open_api:
        import os

        from app.auth.protect import OPEN_WARNING

        if os.environ.get("RESULTS_REPO_ENV", "development").lower() == "production":
            raise click.ClickException("--open (no access tokens) is refused when RESULTS_REPO_ENV=production.")
        app.config["AUTH_REQUIRED"] = False
    if not app.config.get("AUTH_REQUIRED", True):
        click.secho(OPEN_WARNING, fg="red", bold=True, err=True)
    upgrade(app.config["DATABASE_URL"])
    base = app.config.get("PUBLIC_BASE_URL") or f"http://{host}:{port}/fhir"
    if demo:
        click.echo("Loading the demo data set ...")
        summary = load_demo(app)
        click.echo(
            f"Demo data: {summary.loaded} loaded, {summary.unchanged} already there, "
            f"{len(summary.failed)} refused (UK Core examples whose references are not in the set)."
        )
        click.echo(demo_instructions(base, serving=True))
        from app.auth.demo import access_instructions, setup_demo_access

        click.echo(access_instructions(base, setup_demo_access(app)))
    else:
        click.echo(f"Try: curl -s {base}/metadata | head -c 300")
    click.echo(f"\nServing {base}   (database: {_safe_url(app.config['DATABASE_URL'])}); Ctrl+C stops.")
    # Flask's app.run() refuses to start under a Flask CLI group, so serve with werkzeug directly;
    # the request log leaves query strings (patient data) out.
    from app.api.accesslog import PathOnlyRequestHandler

    run_simple(host, port, app, use_debugger=debug, use_reloader=False, threaded=True,
               request_handler=PathOnlyRequestHandler)


main.add_command(load)
main.add_command(demo)
main.add_command(auth_clients)
main.add_command(auth_users)
main.add_command(demo_token)
main.add_command(protect_clearance)
main.add_command(protect_alerts)


@main.command("worker")
@click.option("--once", is_flag=True, help="Run the queued export jobs, then exit.")
@with_appcontext
def worker(once: bool) -> None:
    """Run a Bulk Data $export worker (start several for more throughput; they never share a job)."""
    from app.bulk.cli import run_worker

    run_worker(current_app._get_current_object(), once)


if __name__ == "__main__":
    sys.exit(main())

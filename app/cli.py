"""The ``results-repo`` command line: run, db upgrade, load, demo."""

from __future__ import annotations

import sys

import click
from flask import current_app
from flask.cli import FlaskGroup, with_appcontext
from werkzeug.serving import run_simple

from app.loader.cli import demo, load


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
@with_appcontext
def run(host: str, port: int, debug: bool, demo: bool) -> None:
    """Create/migrate the database if needed and serve the FHIR API (development server).

    In production run ``gunicorn wsgi:app`` instead, after ``results-repo db upgrade``.
    """
    from app.db.migrate import upgrade
    from app.loader.demo import demo_instructions, load_demo

    app = current_app._get_current_object()
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
    else:
        click.echo(f"Try: curl -s {base}/metadata | head -c 300")
    click.echo(f"\nServing {base}   (database: {_safe_url(app.config['DATABASE_URL'])}); Ctrl+C stops.")
    # Flask's app.run() refuses to start under a Flask CLI group, so serve with werkzeug directly.
    run_simple(host, port, app, use_debugger=debug, use_reloader=False, threaded=True)


main.add_command(load)
main.add_command(demo)


if __name__ == "__main__":
    sys.exit(main())

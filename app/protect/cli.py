"""``results-repo clearance ...`` and ``results-repo alerts ...``.

Forms::

    results-repo clearance set --client ID|--user NAME [--labels "R HIV"|--labels "*"] [--break-glass]
    results-repo clearance list | clearance remove --client ID|--user NAME
    results-repo alerts list [--since ISO] [--unacknowledged] [--limit N] [--json]
    results-repo alerts ack ID --by NAME
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

import click
from flask.cli import with_appcontext


def _engine():  # noqa: ANN202
    from app.auth.cli import _engine as auth_engine

    return auth_engine()


def _subject(client: str | None, user: str | None) -> tuple[str, str]:
    if bool(client) == bool(user):
        raise click.UsageError("give exactly one of --client or --user")
    return ("client", client) if client else ("user", user)  # type: ignore[return-value]


@click.group("clearance")
def clearance() -> None:
    """Which sensitive labels a client or user may see, and who may break the glass."""


@clearance.command("set")
@click.option("--client", help="A registered client id.")
@click.option("--user", help="A registered user name.")
@click.option("--labels", "labels", multiple=True,
              help='Labels it may see: "R V HIV STD" (bare codes), system|code, or "*" for all. Repeatable.')
@click.option("--break-glass/--no-break-glass", default=False, show_default=True,
              help="May assert an emergency (X-Break-Glass) to see withheld results.")
@with_appcontext
def set_cmd(client: str | None, user: str | None, labels: tuple[str, ...], break_glass: bool) -> None:
    """Set (replace) a clearance. A user token needs both its app's and its user's clearance."""
    from app.protect.clearance import parse_clearance, set_clearance

    kind, subject = _subject(client, user)
    try:
        cl = set_clearance(_engine(), kind, subject, parse_clearance(labels), break_glass)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    click.echo(f"{kind} {subject}: labels {cl.labels_text}; break-glass {'yes' if cl.break_glass else 'no'}.")


@clearance.command("list")
@with_appcontext
def list_cmd() -> None:
    """List clearances."""
    from app.protect.clearance import list_clearances

    rows = list_clearances(_engine())
    if not rows:
        click.echo("No clearances: every sensitive label is withheld from every token.")
    for c in rows:
        click.echo(f"{c.kind}\t{c.subject}\t{c.labels_text}\tbreak-glass={'yes' if c.break_glass else 'no'}")


@clearance.command("remove")
@click.option("--client", help="A registered client id.")
@click.option("--user", help="A registered user name.")
@with_appcontext
def remove_cmd(client: str | None, user: str | None) -> None:
    """Remove a clearance (takes effect at the next request of tokens already issued)."""
    from app.protect.clearance import remove_clearance

    kind, subject = _subject(client, user)
    if not remove_clearance(_engine(), kind, subject):
        raise click.ClickException(f"no clearance for {kind} {subject!r}")
    click.echo(f"Removed the clearance of {kind} {subject}.")


@click.group("alerts")
def alerts() -> None:
    """Break-glass alerts for the privacy officer."""


def _since(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise click.UsageError("--since must be an ISO date or instant, e.g. 2026-01-31T00:00:00Z") from None
    return dt.astimezone(UTC).replace(tzinfo=None) if dt.tzinfo else dt


@alerts.command("list")
@click.option("--since", help="Only alerts at or after this instant (UTC unless a zone is given).")
@click.option("--unacknowledged", is_flag=True, help="Only alerts nobody has acknowledged yet.")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1, 10000))
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@with_appcontext
def alerts_list(since: str | None, unacknowledged: bool, limit: int, as_json: bool) -> None:
    """List break-glass alerts, newest first."""
    from app.protect.alerts import list_alerts

    rows = list_alerts(_engine(), since=_since(since), unacknowledged=unacknowledged, limit=limit)
    if not rows and not as_json:
        click.echo("No break-glass alerts.")
    for a in rows:
        if as_json:
            click.echo(json.dumps(a.to_json()))
            continue
        ack = f"acknowledged by {a.acknowledged_by}" if a.acknowledged_at else "NOT acknowledged"
        click.echo(f"#{a.id}\t{a.created_at.isoformat(timespec='seconds')}Z\t{a.username or '-'} ({a.fhir_user or '-'}) "
                   f"via {a.client_id}\t{a.method} {a.path}\treason: {a.reason}\t{ack}")


@alerts.command("ack")
@click.argument("alert_id", type=int)
@click.option("--by", required=True, help="Who reviewed it (the privacy officer).")
@with_appcontext
def alerts_ack(alert_id: int, by: str) -> None:
    """Record that an alert was reviewed."""
    from app.protect.alerts import acknowledge

    if not acknowledge(_engine(), alert_id, by):
        raise click.ClickException(f"no unacknowledged alert #{alert_id}")
    click.echo(f"Alert #{alert_id} acknowledged by {by}.")

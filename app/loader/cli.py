"""``results-repo load`` and ``results-repo demo``: thin click wrappers over ``load_paths``."""

from __future__ import annotations

import click
from flask import current_app
from flask.cli import with_appcontext

from app.loader.files import LoaderInputError
from app.loader.runner import DEFAULT_BATCH_SIZE, LoadSummary, format_summary, load_paths


class _Bar:
    """tqdm over resources; the total is unknown up front (counting would mean reading every
    file twice), so it shows the count and rate, plus the unit being loaded."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.bar = None

    def __call__(self, n: int, label: str) -> None:
        if not self.enabled:
            return
        if self.bar is None:  # created lazily so a path error prints no empty bar
            from tqdm import tqdm

            self.bar = tqdm(unit=" res", desc="Loading", dynamic_ncols=True, leave=True)
        self.bar.update(n)
        self.bar.set_postfix_str(_tail(label, 50), refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _tail(text: str, width: int) -> str:
    return text if len(text) <= width else "..." + text[-(width - 3) :]


def _finish(summary: LoadSummary) -> None:
    click.echo(format_summary(summary))
    if summary.failed:
        click.echo(
            f"\n{len(summary.failed)} unit(s) failed; everything else was loaded. "
            "Fix or supply what the reasons name and run the same command again "
            "(already loaded resources are left unchanged). Exit code 1.",
            err=True,
        )
        raise SystemExit(1)


@click.command("load")
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option(
    "--batch-size",
    default=DEFAULT_BATCH_SIZE,
    show_default=True,
    type=click.IntRange(min=1),
    help="NDJSON lines per transaction.",
)
@click.option(
    "--workers",
    default=1,
    show_default=True,
    type=click.IntRange(min=1),
    help="Parallel loader processes (PostgreSQL only; SQLite always uses 1).",
)
@click.option(
    "--base-url",
    default=None,
    help="FHIR base URL whose absolute references count as local (default: PUBLIC_BASE_URL).",
)
@click.option("--progress/--no-progress", default=True, help="Show a progress bar.")
@with_appcontext
def load(
    paths: tuple[str, ...], batch_size: int, workers: int, base_url: str | None, progress: bool
) -> None:
    """Load FHIR data from PATHS (files or folders, searched recursively).

    Reads .json (a Bundle of type transaction, batch, collection or searchset, or one resource),
    .json.gz, .ndjson and .ndjson.gz. Each Bundle is one transaction; NDJSON is loaded in
    transactions of --batch-size lines. Resources of types this server does not enable are
    skipped and counted; resources with ids keep them (loading twice changes nothing). A unit
    whose references are not yet stored is retried after the others, so order does not matter.
    Exits 1 if anything failed.
    """
    from app.db.migrate import upgrade

    app = current_app._get_current_object()
    upgrade(app.config["DATABASE_URL"])  # like `run`: a new database gets its schema first
    bar = _Bar(progress)
    try:
        summary = load_paths(
            app,
            list(paths),
            batch_size=batch_size,
            workers=workers,
            base_url=base_url,
            progress=bar,
        )
    except LoaderInputError as exc:
        bar.close()
        raise click.UsageError(str(exc)) from None
    bar.close()
    _finish(summary)


@click.command("demo")
@click.option(
    "--reset",
    is_flag=True,
    help="Empty the database first (drops and recreates every table; no prompt).",
)
@click.option("--progress/--no-progress", default=True, help="Show a progress bar.")
@with_appcontext
def demo(reset: bool, progress: bool) -> None:
    """Create/migrate the database and load a small demo data set (4 Synthea patients with
    imaging and lab reports, plus the UK Core examples), then print how to explore it."""
    from app.loader.demo import demo_instructions, load_demo

    app = current_app._get_current_object()
    bar = _Bar(progress)
    summary = load_demo(app, reset=reset, progress=bar)
    bar.close()
    click.echo(format_summary(summary))
    if summary.failed:
        click.echo(
            "\nThe refusals above are expected: some UK Core examples reference Organization, "
            "Practitioner, Specimen or ServiceRequest examples that are not part of the set, and "
            "this server refuses dangling references."
        )
    base = app.config.get("PUBLIC_BASE_URL") or "http://127.0.0.1:8080/fhir"
    click.echo(demo_instructions(base))
    from app.auth.demo import access_instructions, setup_demo_access

    click.echo(access_instructions(base, setup_demo_access(app)))

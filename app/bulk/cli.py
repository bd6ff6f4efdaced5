"""``results-repo worker``: the export worker as its own process (production)."""

from __future__ import annotations

import logging
import signal

import click

from app.bulk.worker import Worker


def run_worker(app, once: bool) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    w = Worker(app)
    if once:
        w.sweep()
        n = w.run_pending()
        click.echo(f"{n} export job(s) run.")
        return

    def _stop(_sig, _frame) -> None:  # finish the current batch, leave the job for a restart
        w.stop()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    click.echo(f"Export worker {w.id} waiting for jobs (Ctrl+C stops).")
    w.loop()

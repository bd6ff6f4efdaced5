"""absolute references to other servers no longer name our resources (their type/id cleared)

Revision ID: 0009_foreign_references
Revises: 0008_date_envelope
Create Date: 2026-11-29 16:30:00

Until now the indexer took the type and id from the tail of any absolute reference, so an
Observation about ``https://other.example/fhir/Patient/1`` was found by ``subject=Patient/1``
and joined our Patient/1's compartment, chains, includes and patient-scoped tokens: another
person's results.  app.indexing.extract now keeps the type/id only under our own base; this
clears them on existing rows whose URL is not under ``PUBLIC_BASE_URL`` (from the environment,
``RESULTS_REPO_`` prefix optional; without it, every absolute URL is someone else's, as for a
new write).  The rows keep their URL, so a search for the full URL still finds them.
"""
from alembic import op
import sqlalchemy as sa


revision = '0009_foreign_references'
down_revision = '0008_date_envelope'
branch_labels = None
depends_on = None


def _base() -> str | None:
    from config import from_environment

    base = from_environment().get('PUBLIC_BASE_URL')
    return base.rstrip('/') + '/' if base else None


def upgrade() -> None:
    base = _base()
    keep = ""
    params = {}
    if base:
        # (a prefix test, not LIKE: a base may hold % or _)
        keep = " AND substr(url, 1, :n) <> :base"
        params = {"n": len(base), "base": base}
    op.get_bind().execute(sa.text(
        "UPDATE sp_reference SET target_type = NULL, target_id = NULL "
        "WHERE url IS NOT NULL AND target_id IS NOT NULL "
        "AND (url LIKE 'http://%' OR url LIKE 'https://%')" + keep), params)


def downgrade() -> None:
    # The tails are not restored: they named resources that were never ours.
    pass

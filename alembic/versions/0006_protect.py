"""sensitive results, break-glass alerts, limits

Revision ID: 0006_protect
Revises: 0005_audit
Create Date: 2026-11-28 12:55:00
"""
from alembic import op  # noqa: F401
import sqlalchemy as sa  # noqa: F401


revision = '0006_protect'
down_revision = '0005_audit'
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass

"""audit trail

Revision ID: 0005_audit
Revises: 0004_identity
Create Date: 2026-11-28 12:55:00
"""
from alembic import op  # noqa: F401
import sqlalchemy as sa  # noqa: F401


revision = '0005_audit'
down_revision = '0004_identity'
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass

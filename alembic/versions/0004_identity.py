"""patient identity (NHS number and local identifier uniqueness, merges)

Revision ID: 0004_identity
Revises: 0003_bulk
Create Date: 2026-11-28 12:55:00
"""
from alembic import op  # noqa: F401
import sqlalchemy as sa  # noqa: F401


revision = '0004_identity'
down_revision = '0003_bulk'
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass

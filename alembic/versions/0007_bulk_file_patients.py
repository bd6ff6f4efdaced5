"""bulk export files record the patients they hold (for the download audit)

Revision ID: 0007_bulk_file_patients
Revises: 0006_protect
Create Date: 2026-11-28 18:00:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0007_bulk_file_patients'
down_revision = '0006_protect'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # NULL for files written before this revision: the download audit scans those (app/audit/web.py).
    with op.batch_alter_table('bulk_file', schema=None) as batch_op:
        batch_op.add_column(sa.Column('patients', sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('bulk_file', schema=None) as batch_op:
        batch_op.drop_column('patients')

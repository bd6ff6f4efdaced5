"""patient identity (NHS number and local identifier uniqueness, merges)

Revision ID: 0004_identity
Revises: 0003_bulk
Create Date: 2026-11-28 12:55:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0004_identity'
down_revision = '0003_bulk'
branch_labels = None
depends_on = None

_WHERE = sa.text("res_type = 'Patient' AND param = 'identifier'")


def upgrade() -> None:
    # One current Patient per system|value identifier (NHS number, hospital MRNs). A database
    # that already holds duplicates fails here: merge them first (docs/identity.md).
    op.create_index('uq_sp_token_patient_identifier', 'sp_token', ['system', 'code'], unique=True,
                    sqlite_where=_WHERE, postgresql_where=_WHERE)
    op.create_table('patient_merge',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('source_id', sa.String(length=64), nullable=False),
    sa.Column('target_id', sa.String(length=64), nullable=False),
    sa.Column('merged_at', sa.DateTime(), nullable=False),
    sa.Column('detail', sa.Text(), nullable=False),
    sa.Column('unmerged_at', sa.DateTime(), nullable=True),
    sa.Column('unmerge_provenance_id', sa.String(length=36), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_patient_merge'))
    )
    with op.batch_alter_table('patient_merge', schema=None) as batch_op:
        batch_op.create_index('ix_patient_merge_source', ['source_id', 'unmerged_at'], unique=False)
        batch_op.create_index('ix_patient_merge_target', ['target_id', 'unmerged_at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('patient_merge', schema=None) as batch_op:
        batch_op.drop_index('ix_patient_merge_target')
        batch_op.drop_index('ix_patient_merge_source')
    op.drop_table('patient_merge')
    op.drop_index('uq_sp_token_patient_identifier', table_name='sp_token')

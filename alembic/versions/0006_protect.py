"""sensitive results, break-glass alerts, limits

Revision ID: 0006_protect
Revises: 0005_audit
Create Date: 2026-11-28 12:55:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0006_protect'
down_revision = '0005_audit'
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')


def upgrade() -> None:
    op.create_table('protect_clearance',
    sa.Column('kind', sa.String(length=8), nullable=False),
    sa.Column('subject', sa.String(length=255), nullable=False),
    sa.Column('labels', sa.Text(), nullable=False),
    sa.Column('break_glass', sa.Boolean(), nullable=False),
    sa.Column('updated_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('kind', 'subject', name=op.f('pk_protect_clearance'))
    )
    op.create_table('protect_alert',
    sa.Column('id', _ID, autoincrement=True, nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('client_id', sa.String(length=255), nullable=False),
    sa.Column('username', sa.String(length=128), nullable=True),
    sa.Column('fhir_user', sa.String(length=140), nullable=True),
    sa.Column('token_id', sa.String(length=32), nullable=True),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('method', sa.String(length=8), nullable=False),
    sa.Column('path', sa.Text(), nullable=False),
    sa.Column('request_id', sa.String(length=64), nullable=True),
    sa.Column('acknowledged_at', sa.DateTime(), nullable=True),
    sa.Column('acknowledged_by', sa.String(length=128), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_protect_alert'))
    )
    with op.batch_alter_table('protect_alert', schema=None) as batch_op:
        batch_op.create_index('ix_protect_alert_created', ['created_at'], unique=False)
    # Labelled index rows only: the probe that withholds sensitive results (app/protect/tables.py).
    op.create_index('ix_sp_token_security', 'sp_token', ['rid', 'res_type', 'system', 'code'], unique=False,
                    postgresql_where=sa.text("param = '_security'"), sqlite_where=sa.text("param = '_security'"))


def downgrade() -> None:
    op.drop_index('ix_sp_token_security', table_name='sp_token')
    with op.batch_alter_table('protect_alert', schema=None) as batch_op:
        batch_op.drop_index('ix_protect_alert_created')
    op.drop_table('protect_alert')
    op.drop_table('protect_clearance')

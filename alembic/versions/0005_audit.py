"""audit trail

Revision ID: 0005_audit
Revises: 0004_identity
Create Date: 2026-11-28 12:55:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0005_audit'
down_revision = '0004_identity'
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')


def upgrade() -> None:
    op.create_table('audit_event',
    sa.Column('id', _ID, autoincrement=True, nullable=False),
    sa.Column('recorded', sa.DateTime(), nullable=False),
    sa.Column('type', sa.String(length=16), nullable=False),
    sa.Column('subtype', sa.String(length=32), nullable=False),
    sa.Column('action', sa.String(length=1), nullable=False),
    sa.Column('outcome', sa.SmallInteger(), nullable=False),
    sa.Column('status', sa.SmallInteger(), nullable=True),
    sa.Column('request_id', sa.String(length=64), nullable=False),
    sa.Column('client_id', sa.String(length=255), nullable=True),
    sa.Column('username', sa.String(length=128), nullable=True),
    sa.Column('fhir_user', sa.String(length=140), nullable=True),
    sa.Column('token_id', sa.String(length=32), nullable=True),
    sa.Column('scope', sa.Text(), nullable=True),
    sa.Column('source_ip', sa.String(length=64), nullable=True),
    sa.Column('res_type', sa.String(length=64), nullable=True),
    sa.Column('entity', sa.String(length=200), nullable=True),
    sa.Column('query', sa.Text(), nullable=True),
    sa.Column('purpose', sa.String(length=16), nullable=True),
    sa.Column('detail', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_audit_event'))
    )
    with op.batch_alter_table('audit_event', schema=None) as batch_op:
        batch_op.create_index('ix_audit_event_recorded', ['recorded', 'id'], unique=False)
        batch_op.create_index('ix_audit_event_user', ['fhir_user', 'recorded'], unique=False)
        batch_op.create_index('ix_audit_event_client', ['client_id', 'recorded'], unique=False)
        batch_op.create_index('ix_audit_event_entity', ['entity'], unique=False)

    op.create_table('audit_patient',
    sa.Column('event_id', _ID, autoincrement=False, nullable=False),
    sa.Column('patient_id', sa.String(length=64), nullable=False),
    sa.Column('recorded', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('event_id', 'patient_id', name=op.f('pk_audit_patient'))
    )
    with op.batch_alter_table('audit_patient', schema=None) as batch_op:
        batch_op.create_index('ix_audit_patient_patient', ['patient_id', 'recorded', 'event_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('audit_patient', schema=None) as batch_op:
        batch_op.drop_index('ix_audit_patient_patient')
    op.drop_table('audit_patient')
    with op.batch_alter_table('audit_event', schema=None) as batch_op:
        batch_op.drop_index('ix_audit_event_entity')
        batch_op.drop_index('ix_audit_event_client')
        batch_op.drop_index('ix_audit_event_user')
        batch_op.drop_index('ix_audit_event_recorded')
    op.drop_table('audit_event')

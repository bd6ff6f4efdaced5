"""bulk export jobs

Revision ID: 0003_bulk
Revises: 0002_auth
Create Date: 2026-11-28 08:40:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0003_bulk'
down_revision = '0002_auth'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('bulk_job',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('client_id', sa.String(length=255), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('level', sa.String(length=16), nullable=False),
    sa.Column('group_id', sa.String(length=64), nullable=True),
    sa.Column('request_url', sa.Text(), nullable=False),
    sa.Column('params', sa.Text(), nullable=False),
    sa.Column('transaction_time', sa.DateTime(), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('started_at', sa.DateTime(), nullable=True),
    sa.Column('completed_at', sa.DateTime(), nullable=True),
    sa.Column('expires_at', sa.DateTime(), nullable=True),
    sa.Column('last_polled_at', sa.DateTime(), nullable=True),
    sa.Column('worker_id', sa.String(length=128), nullable=True),
    sa.Column('heartbeat_at', sa.DateTime(), nullable=True),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('cursor', sa.Text(), nullable=True),
    sa.Column('exported', sa.BigInteger(), nullable=False),
    sa.Column('total_estimate', sa.BigInteger(), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_bulk_job'))
    )
    with op.batch_alter_table('bulk_job', schema=None) as batch_op:
        batch_op.create_index('ix_bulk_job_client_state', ['client_id', 'state'], unique=False)
        batch_op.create_index('ix_bulk_job_state_created', ['state', 'created_at'], unique=False)

    op.create_table('bulk_file',
    sa.Column('job_id', sa.String(length=36), nullable=False),
    sa.Column('seq', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('kind', sa.String(length=8), nullable=False),
    sa.Column('res_type', sa.String(length=64), nullable=False),
    sa.Column('name', sa.String(length=128), nullable=False),
    sa.Column('count', sa.BigInteger(), nullable=False),
    sa.Column('size', sa.BigInteger(), nullable=False),
    sa.ForeignKeyConstraint(['job_id'], ['bulk_job.id'], name=op.f('fk_bulk_file_job_id_bulk_job'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('job_id', 'seq', name=op.f('pk_bulk_file'))
    )
    op.create_table('bulk_job_patient',
    sa.Column('job_id', sa.String(length=36), nullable=False),
    sa.Column('patient_id', sa.String(length=64), nullable=False),
    sa.ForeignKeyConstraint(['job_id'], ['bulk_job.id'], name=op.f('fk_bulk_job_patient_job_id_bulk_job'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('job_id', 'patient_id', name=op.f('pk_bulk_job_patient'))
    )


def downgrade() -> None:
    op.drop_table('bulk_job_patient')
    op.drop_table('bulk_file')
    with op.batch_alter_table('bulk_job', schema=None) as batch_op:
        batch_op.drop_index('ix_bulk_job_state_created')
        batch_op.drop_index('ix_bulk_job_client_state')
    op.drop_table('bulk_job')

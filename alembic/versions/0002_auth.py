"""SMART authorization server: clients, users, codes, launch contexts, tokens, seen jtis

Revision ID: 0002_auth
Revises: 0001
Create Date: 2026-11-28 08:50:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0002_auth'
down_revision = '0001'
branch_labels = None
depends_on = None

_RID = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')


def upgrade() -> None:
    op.create_table('auth_client',
    sa.Column('client_id', sa.String(length=255), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('auth_method', sa.String(length=32), nullable=False),
    sa.Column('redirect_uris', sa.Text(), nullable=False),
    sa.Column('scope', sa.Text(), nullable=False),
    sa.Column('secret_hash', sa.Text(), nullable=True),
    sa.Column('jwks', sa.Text(), nullable=True),
    sa.Column('jwks_uri', sa.String(length=1024), nullable=True),
    sa.Column('name', sa.String(length=255), nullable=True),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('client_id', name=op.f('pk_auth_client'))
    )
    op.create_table('auth_user',
    sa.Column('username', sa.String(length=128), nullable=False),
    sa.Column('fhir_user', sa.String(length=140), nullable=False),
    sa.Column('password_hash', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('username', name=op.f('pk_auth_user'))
    )
    op.create_table('auth_login_failure',
    sa.Column('id', _RID, autoincrement=True, nullable=False),
    sa.Column('username', sa.String(length=128), nullable=False),
    sa.Column('failed_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_auth_login_failure'))
    )
    with op.batch_alter_table('auth_login_failure', schema=None) as batch_op:
        batch_op.create_index('ix_auth_login_failure_user', ['username', 'failed_at'], unique=False)

    op.create_table('auth_code',
    sa.Column('code_hash', sa.String(length=64), nullable=False),
    sa.Column('client_id', sa.String(length=255), nullable=False),
    sa.Column('redirect_uri', sa.String(length=1024), nullable=False),
    sa.Column('scope', sa.Text(), nullable=False),
    sa.Column('username', sa.String(length=128), nullable=True),
    sa.Column('fhir_user', sa.String(length=140), nullable=True),
    sa.Column('patient', sa.String(length=64), nullable=True),
    sa.Column('encounter', sa.String(length=64), nullable=True),
    sa.Column('need_patient_banner', sa.Boolean(), nullable=False),
    sa.Column('code_challenge', sa.String(length=128), nullable=False),
    sa.Column('nonce', sa.String(length=255), nullable=True),
    sa.Column('expires_at', sa.DateTime(), nullable=False),
    sa.Column('used', sa.Boolean(), nullable=False),
    sa.PrimaryKeyConstraint('code_hash', name=op.f('pk_auth_code'))
    )
    op.create_table('auth_launch',
    sa.Column('launch_hash', sa.String(length=64), nullable=False),
    sa.Column('created_by', sa.String(length=255), nullable=False),
    sa.Column('patient', sa.String(length=64), nullable=True),
    sa.Column('encounter', sa.String(length=64), nullable=True),
    sa.Column('fhir_user', sa.String(length=140), nullable=True),
    sa.Column('need_patient_banner', sa.Boolean(), nullable=False),
    sa.Column('expires_at', sa.DateTime(), nullable=False),
    sa.Column('used', sa.Boolean(), nullable=False),
    sa.PrimaryKeyConstraint('launch_hash', name=op.f('pk_auth_launch'))
    )
    op.create_table('auth_token',
    sa.Column('token_hash', sa.String(length=64), nullable=False),
    sa.Column('kind', sa.String(length=8), nullable=False),
    sa.Column('grant_id', sa.String(length=32), nullable=False),
    sa.Column('client_id', sa.String(length=255), nullable=False),
    sa.Column('scope', sa.Text(), nullable=False),
    sa.Column('username', sa.String(length=128), nullable=True),
    sa.Column('fhir_user', sa.String(length=140), nullable=True),
    sa.Column('patient', sa.String(length=64), nullable=True),
    sa.Column('encounter', sa.String(length=64), nullable=True),
    sa.Column('issued_at', sa.DateTime(), nullable=False),
    sa.Column('expires_at', sa.DateTime(), nullable=False),
    sa.Column('revoked', sa.Boolean(), nullable=False),
    sa.PrimaryKeyConstraint('token_hash', name=op.f('pk_auth_token'))
    )
    with op.batch_alter_table('auth_token', schema=None) as batch_op:
        batch_op.create_index('ix_auth_token_grant', ['grant_id'], unique=False)

    op.create_table('auth_jti',
    sa.Column('client_id', sa.String(length=255), nullable=False),
    sa.Column('jti', sa.String(length=255), nullable=False),
    sa.Column('expires_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('client_id', 'jti', name=op.f('pk_auth_jti'))
    )
    with op.batch_alter_table('auth_jti', schema=None) as batch_op:
        batch_op.create_index('ix_auth_jti_expires', ['expires_at'], unique=False)


def downgrade() -> None:
    for table in ('auth_jti', 'auth_token', 'auth_launch', 'auth_code', 'auth_login_failure',
                  'auth_user', 'auth_client'):
        op.drop_table(table)

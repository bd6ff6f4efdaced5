"""token rows carry their resource's date envelope (date_low, date_high) in the token indexes

Revision ID: 0008_token_date_envelope
Revises: 0007_bulk_file_patients
Create Date: 2026-11-29 11:30:00

Existing rows are filled from sp_date (the same min(low)/max(high) of the resource's ``date``
rows that app.indexing.extract computes on every write); docs/decisions/0016-token-date-envelope.md.
"""
from alembic import op
import sqlalchemy as sa


revision = '0008_token_date_envelope'
down_revision = '0007_bulk_file_patients'
branch_labels = None
depends_on = None

_OLD = {'ix_sp_token_0': ['res_type', 'param', 'code', 'system', 'rid'],
        'ix_sp_token_1': ['res_type', 'param', 'system', 'code', 'rid']}
_ENVELOPE = ['date_low', 'date_high']


def upgrade() -> None:
    with op.batch_alter_table('sp_token', schema=None) as batch_op:
        batch_op.add_column(sa.Column('date_low', sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column('date_high', sa.DateTime(), nullable=True))
    if op.get_bind().dialect.name == 'postgresql':
        op.execute(
            "UPDATE sp_token t SET date_low = d.lo, date_high = d.hi "
            "FROM (SELECT rid, min(low) AS lo, max(high) AS hi FROM sp_date WHERE param = 'date' GROUP BY rid) d "
            "WHERE t.rid = d.rid"
        )
    else:
        op.execute(
            "UPDATE sp_token SET "
            "date_low = (SELECT min(d.low) FROM sp_date d WHERE d.rid = sp_token.rid AND d.param = 'date'), "
            "date_high = (SELECT max(d.high) FROM sp_date d WHERE d.rid = sp_token.rid AND d.param = 'date') "
            "WHERE rid IN (SELECT rid FROM sp_date WHERE param = 'date')"
        )
    for name, cols in _OLD.items():
        op.drop_index(name, table_name='sp_token')
        op.create_index(name, 'sp_token', cols + _ENVELOPE, unique=False)


def downgrade() -> None:
    for name, cols in _OLD.items():
        op.drop_index(name, table_name='sp_token')
        op.create_index(name, 'sp_token', cols, unique=False)
    with op.batch_alter_table('sp_token', schema=None) as batch_op:
        batch_op.drop_column('date_high')
        batch_op.drop_column('date_low')

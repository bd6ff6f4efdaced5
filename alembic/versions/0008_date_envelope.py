"""token and reference rows carry their resource's date envelope (date_low, date_high) in their lookup indexes

Revision ID: 0008_date_envelope
Revises: 0007_bulk_file_patients
Create Date: 2026-11-29 11:30:00

Existing rows are filled from sp_date (the same min(low)/max(high) of the resource's ``date``
rows that app.indexing.extract computes on every write); docs/decisions/0016-date-envelope.md.
"""
from alembic import op
import sqlalchemy as sa


revision = '0008_date_envelope'
down_revision = '0007_bulk_file_patients'
branch_labels = None
depends_on = None

_OLD = {
    'sp_token': {'ix_sp_token_0': ['res_type', 'param', 'code', 'system', 'rid'],
                 'ix_sp_token_1': ['res_type', 'param', 'system', 'code', 'rid']},
    'sp_reference': {'ix_sp_reference_0': ['res_type', 'param', 'target_id', 'target_type', 'rid']},
}
_ENVELOPE = ['date_low', 'date_high']


def upgrade() -> None:
    pg = op.get_bind().dialect.name == 'postgresql'
    for table, indexes in _OLD.items():
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.add_column(sa.Column('date_low', sa.DateTime(), nullable=True))
            batch_op.add_column(sa.Column('date_high', sa.DateTime(), nullable=True))
        if pg:
            op.execute(
                f"UPDATE {table} t SET date_low = d.lo, date_high = d.hi "
                "FROM (SELECT rid, min(low) AS lo, max(high) AS hi FROM sp_date WHERE param = 'date' GROUP BY rid) d "
                "WHERE t.rid = d.rid"
            )
        else:
            op.execute(
                f"UPDATE {table} SET "
                f"date_low = (SELECT min(d.low) FROM sp_date d WHERE d.rid = {table}.rid AND d.param = 'date'), "
                f"date_high = (SELECT max(d.high) FROM sp_date d WHERE d.rid = {table}.rid AND d.param = 'date') "
                "WHERE rid IN (SELECT rid FROM sp_date WHERE param = 'date')"
            )
        for name, cols in indexes.items():
            op.drop_index(name, table_name=table)
            op.create_index(name, table, cols + _ENVELOPE, unique=False)


def downgrade() -> None:
    for table, indexes in _OLD.items():
        for name, cols in indexes.items():
            op.drop_index(name, table_name=table)
            op.create_index(name, table, cols, unique=False)
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_column('date_high')
            batch_op.drop_column('date_low')

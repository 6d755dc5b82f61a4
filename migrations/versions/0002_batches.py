"""batches: a table of their own, jobs.batch_id, webhook deliveries of batch events

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24 23:11:36.012660+00:00

Batches created before this revision lived only in their jobs' ``options.batch_id``: upgrade makes
a ``batches`` row for each (source ``archive``; its skipped entries were never stored) and points
its jobs at it; downgrade writes ``options.batch_id`` back and drops batch events' deliveries.
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

# revision identifiers, used by Alembic.
revision: str = '0002'
down_revision: Union[str, None] = '0001'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql')


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table('batches',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('tenant_id', sa.Uuid(), nullable=False),
    sa.Column('name', sa.String(length=500), nullable=True),
    sa.Column('source', sa.String(length=20), nullable=False),
    sa.Column('status', sa.String(length=20), nullable=False),
    sa.Column('options', JSON, nullable=False),
    sa.Column('skipped', JSON, nullable=False),
    sa.Column('items', sa.Integer(), nullable=False),
    sa.Column('webhook_url', sa.Text(), nullable=True),
    sa.Column('idempotency_key', sa.String(length=200), nullable=True),
    sa.Column('request_hash', sa.String(length=64), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('cancel_requested_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('tenant_id', 'idempotency_key', name='uq_batches_tenant_idempotency_key')
    )
    op.create_index('ix_batches_tenant_created', 'batches', ['tenant_id', 'created_at', 'id'], unique=False)
    op.add_column('jobs', sa.Column('batch_id', sa.Uuid(), nullable=True))
    op.create_index('ix_jobs_batch_status', 'jobs', ['batch_id', 'status'], unique=False)
    op.create_foreign_key(
        'jobs_batch_id_fkey', 'jobs', 'batches', ['batch_id'], ['id'], ondelete='SET NULL'
    )
    op.add_column('webhook_deliveries', sa.Column('batch_id', sa.Uuid(), nullable=True))
    op.alter_column('webhook_deliveries', 'job_id', existing_type=sa.UUID(), nullable=True)
    op.create_index(op.f('ix_webhook_deliveries_batch_id'), 'webhook_deliveries', ['batch_id'], unique=False)
    op.create_foreign_key(
        'webhook_deliveries_batch_id_fkey', 'webhook_deliveries', 'batches', ['batch_id'], ['id'],
        ondelete='CASCADE',
    )
    op.create_check_constraint(
        'ck_webhook_deliveries_one_subject', 'webhook_deliveries', '(job_id IS NULL) <> (batch_id IS NULL)'
    )
    # batches that lived only in their jobs' options
    op.execute("""
        INSERT INTO batches (id, tenant_id, source, status, options, skipped, items, created_at, finished_at)
        SELECT (options->>'batch_id')::uuid, tenant_id, 'archive',
               CASE WHEN bool_and(status IN ('completed', 'failed', 'cancelled'))
                    THEN 'completed' ELSE 'queued' END,
               jsonb_build_object('channels', min(options->>'channels'), 'decoder', min(options->>'decoder'),
                                  'priority', min(priority)),
               '[]'::jsonb,
               sum(CASE WHEN jsonb_typeof(options->'batch_names') = 'array'
                        THEN jsonb_array_length(options->'batch_names') ELSE 1 END),
               min(created_at),
               CASE WHEN bool_and(status IN ('completed', 'failed', 'cancelled'))
                    THEN max(coalesce(finished_at, created_at)) END
        FROM jobs WHERE options ? 'batch_id'
        GROUP BY options->>'batch_id', tenant_id
    """)
    op.execute("UPDATE jobs SET batch_id = (options->>'batch_id')::uuid WHERE options ? 'batch_id'")


def downgrade() -> None:
    """Downgrade schema."""
    op.execute("""
        UPDATE jobs SET options = options || jsonb_build_object('batch_id', batch_id::text)
        WHERE batch_id IS NOT NULL
    """)
    op.execute("DELETE FROM webhook_deliveries WHERE job_id IS NULL")
    op.drop_constraint('ck_webhook_deliveries_one_subject', 'webhook_deliveries', type_='check')
    op.drop_constraint('webhook_deliveries_batch_id_fkey', 'webhook_deliveries', type_='foreignkey')
    op.drop_index(op.f('ix_webhook_deliveries_batch_id'), table_name='webhook_deliveries')
    op.alter_column('webhook_deliveries', 'job_id', existing_type=sa.UUID(), nullable=False)
    op.drop_column('webhook_deliveries', 'batch_id')
    op.drop_constraint('jobs_batch_id_fkey', 'jobs', type_='foreignkey')
    op.drop_index('ix_jobs_batch_status', table_name='jobs')
    op.drop_column('jobs', 'batch_id')
    op.drop_index('ix_batches_tenant_created', table_name='batches')
    op.drop_table('batches')

"""search's metadata filters within the tenant: a GIN index over each job's metadata with its tenant

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06 02:10:00.000000+00:00

``GET /v1/search?metadata.k=v`` filters with ``@>`` on the expression ``tenant_metadata_sql()`` of
``shared.db.models`` (the metadata plus a "~tenant" key), so the tenant is in the index condition
and no other tenant's job row is read (before: a scan of every job). The expression is written out
here as it was when this revision was made.
"""
from typing import Sequence, Union

from alembic import op

# revision identifiers, used by Alembic.
revision: str = '0007'
down_revision: Union[str, None] = '0006'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

EXPRESSION = (
    "(COALESCE(client_metadata, '{}'::jsonb) || "
    "((('{\"~tenant\": \"'::text || tenant_id::text) || '\"}'::text)::jsonb))"
)


def upgrade() -> None:
    """Upgrade schema."""
    op.execute(f"CREATE INDEX ix_jobs_tenant_metadata ON jobs USING gin ({EXPRESSION} jsonb_path_ops)")


def downgrade() -> None:
    """Downgrade schema."""
    op.drop_index('ix_jobs_tenant_metadata', table_name='jobs')

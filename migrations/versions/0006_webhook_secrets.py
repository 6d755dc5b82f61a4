"""webhook secrets: rotation with a grace period (the previous secret and when it expires)

Revision ID: 0006
Revises: 0004
Create Date: 2026-12-02 18:10:00.000000+00:00

A rotated tenant keeps its previous ``whsec_`` secret until ``previous_webhook_secret_expires_at``;
deliveries until then carry both signatures (Standard Webhooks allows several in one header).
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa

# revision identifiers, used by Alembic.
revision: str = '0006'
down_revision: Union[str, None] = '0004'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    op.add_column('tenants', sa.Column('webhook_secret_created_at', sa.DateTime(timezone=True), nullable=True))
    op.add_column('tenants', sa.Column('previous_webhook_secret', sa.String(length=200), nullable=True))
    op.add_column(
        'tenants', sa.Column('previous_webhook_secret_expires_at', sa.DateTime(timezone=True), nullable=True)
    )


def downgrade() -> None:
    """Downgrade schema."""
    op.drop_column('tenants', 'previous_webhook_secret_expires_at')
    op.drop_column('tenants', 'previous_webhook_secret')
    op.drop_column('tenants', 'webhook_secret_created_at')

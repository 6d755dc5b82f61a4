"""a large server-folder batch is read in the background: the batch's "preparing" heartbeat

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07 05:40:00.000000+00:00

``POST /v1/batches {"directory"}`` of a folder with more recordings than
``TONE_BATCH_INLINE_FILES`` answers at once with a batch in status ``preparing`` and reads the folder
in the background, creating jobs as it goes. ``prepared_beat_at`` is when the reader last showed
it is alive; a batch whose reader stopped (its API process died) is taken over by another.
"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = '0008'
down_revision: Union[str, None] = '0007'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    op.add_column('batches', sa.Column('prepared_beat_at', sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    """Downgrade schema."""
    op.drop_column('batches', 'prepared_beat_at')

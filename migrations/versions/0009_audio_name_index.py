"""recordings no job names: an index over each job's recording's file name

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07 20:40:00.000000+00:00

Beat's ``tone.retention`` removes a recording left in the audio directory by a process that died
after writing it and before its job was committed (``worker.retention.sweep_strays``): it asks which
of the old files' names a job still names, by ``AUDIO_NAME_SQL`` of ``shared.db.models``, the file
name without its folder (written out here as it was when this revision was made).
"""
from typing import Sequence, Union

from alembic import op

# revision identifiers, used by Alembic.
revision: str = '0009'
down_revision: Union[str, None] = '0008'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

EXPRESSION = "regexp_replace(audio_path, '^.*/'::text, ''::text)"


def upgrade() -> None:
    """Upgrade schema."""
    op.execute(f"CREATE INDEX ix_jobs_audio_name ON jobs ({EXPRESSION})")


def downgrade() -> None:
    """Downgrade schema."""
    op.drop_index('ix_jobs_audio_name', table_name='jobs')

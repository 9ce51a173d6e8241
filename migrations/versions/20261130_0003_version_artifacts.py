"""version_artifacts: every private file a version keeps for the next job (issue 11)

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30 13:50:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0003'
down_revision: str | None = '0002'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('version_artifacts',
    sa.Column('version_id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=48), nullable=False),
    sa.Column('uri', sa.String(length=500), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('size_bytes', sa.BigInteger(), nullable=False),
    sa.ForeignKeyConstraint(['version_id'], ['model_versions.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('version_id', 'name')
    )
    with op.batch_alter_table('version_artifacts', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_version_artifacts_uri'), ['uri'], unique=False)
    # Existing versions: their noise-free weights become the "weights" artifact.
    op.execute(
        "INSERT INTO version_artifacts (version_id, name, uri, sha256, size_bytes) "
        "SELECT id, 'weights', private_uri, '', 0 FROM model_versions WHERE private_uri IS NOT NULL"
    )


def downgrade() -> None:
    with op.batch_alter_table('version_artifacts', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_version_artifacts_uri'))

    op.drop_table('version_artifacts')
